//! Streaming reader for the large JSON arrays of Visual Genome.
//!
//! `relationships.json` is one top-level array of per-image records (about 0.7 GB for 2.3 M
//! relationships). Building its whole tree in memory costs several GB, so instead a splitter
//! reads the file in blocks and finds the byte range of each top-level element (tracking strings
//! and braces only, with `memchr`), and the ranges are parsed in parallel by `serde_json` into
//! typed, borrowed records. Memory stays at a few blocks whatever the file size.
//!
//! Errors name the file and the byte offset from the start of the file.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default block size read at once.
pub const DEFAULT_BLOCK: usize = 8 << 20;

/// A run of complete top-level elements.
#[derive(Debug)]
pub struct ElementChunk {
    /// File offset of `data[0]`.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Each element's range within `data`.
    pub elements: Vec<Range<usize>>,
}

impl ElementChunk {
    /// Parse element `i` as `T`, mapping errors to the file's byte offset.
    pub fn parse<'de, T: Deserialize<'de>>(&'de self, path: &Path, i: usize) -> Result<T> {
        let range = self.elements[i].clone();
        let bytes = &self.data[range.clone()];
        serde_json::from_slice(bytes).map_err(|e| {
            let within = byte_offset_of(bytes, e.line(), e.column());
            Error::Json {
                path: path.to_path_buf(),
                byte_offset: self.offset + (range.start as u64) + within,
                message: strip_position(&e.to_string()),
            }
        })
    }
}

/// `serde_json` errors end with " at line L column C"; the caller replaces that with a byte offset.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The byte offset of a 1-based (line, column) position in `bytes`.
pub fn byte_offset_of(bytes: &[u8], line: usize, column: usize) -> u64 {
    let mut start = 0usize;
    for _ in 1..line {
        match memchr::memchr(b'\n', &bytes[start..]) {
            Some(i) => start += i + 1,
            None => break,
        }
    }
    (start + column.saturating_sub(1)).min(bytes.len()) as u64
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Before `[`.
    Open,
    /// After `[`: an element or `]`.
    FirstOrClose,
    /// After an element: `,` or `]`.
    CommaOrClose,
    /// After `,`: an element.
    Element,
    /// After `]`: only white space.
    Done,
}

/// Splits a JSON array read from `R` into chunks of complete elements.
#[derive(Debug)]
pub struct ArraySplitter<R> {
    path: PathBuf,
    reader: R,
    block: usize,
    buf: Vec<u8>,
    buf_offset: u64,
    expect: Expect,
    eof: bool,
    total_read: u64,
}

impl ArraySplitter<File> {
    /// Open `path`.
    pub fn open(path: &Path, block: usize) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
        Ok(Self::new(path, file, block))
    }
}

impl<R: Read> ArraySplitter<R> {
    /// Split the JSON array read from `reader` (named `path` in errors).
    pub fn new(path: &Path, reader: R, block: usize) -> Self {
        ArraySplitter {
            path: path.to_path_buf(),
            reader,
            block: block.max(16),
            buf: Vec::new(),
            buf_offset: 0,
            expect: Expect::Open,
            eof: false,
            total_read: 0,
        }
    }

    fn err(&self, at: u64, message: impl Into<String>) -> Error {
        Error::Json {
            path: self.path.clone(),
            byte_offset: at,
            message: message.into(),
        }
    }

    fn fill(&mut self) -> Result<()> {
        let old = self.buf.len();
        self.buf.resize(old + self.block, 0);
        let mut filled = old;
        while filled < self.buf.len() {
            match self.reader.read(&mut self.buf[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("failed to read", &self.path, e)),
            }
        }
        self.total_read += (filled - old) as u64;
        self.buf.truncate(filled);
        Ok(())
    }

    /// The next chunk of complete elements, or `None` after the closing `]`.
    pub fn next_chunk(&mut self) -> Result<Option<ElementChunk>> {
        loop {
            if self.expect == Expect::Done && self.eof {
                return self.check_trailing().map(|_| None);
            }
            if !self.eof {
                self.fill()?;
            }
            let (elements, consumed) = self.scan()?;
            if !elements.is_empty() {
                let tail = self.buf[consumed..].to_vec();
                let data = std::mem::replace(&mut self.buf, tail);
                let offset = self.buf_offset;
                self.buf_offset += consumed as u64;
                return Ok(Some(ElementChunk {
                    offset,
                    data,
                    elements,
                }));
            }
            // Nothing complete in this buffer: drop what was consumed (white space, commas).
            self.buf.drain(..consumed);
            self.buf_offset += consumed as u64;
            if self.eof {
                if self.expect == Expect::Done {
                    return self.check_trailing().map(|_| None);
                }
                return Err(self.eof_error());
            }
        }
    }

    fn check_trailing(&self) -> Result<()> {
        match self.buf.iter().position(|b| !b.is_ascii_whitespace()) {
            None => Ok(()),
            Some(i) => Err(self.err(
                self.buf_offset + i as u64,
                format!(
                    "unexpected `{}` after the closing `]` of the array",
                    show_byte(self.buf[i])
                ),
            )),
        }
    }

    fn eof_error(&self) -> Error {
        let end = self.total_read;
        if end == 0 {
            return self.err(0, "the file is empty; expected a JSON array (`[ ... ]`)");
        }
        let first = self.buf.iter().position(|b| !b.is_ascii_whitespace());
        match (self.expect, first) {
            (Expect::Open, _) => self.err(
                end,
                "the file holds only white space; expected a JSON array (`[ ... ]`)",
            ),
            (_, Some(i)) => self.err(
                end,
                format!(
                    "unexpected end of file: the element that starts at byte {} is not complete (truncated file?)",
                    self.buf_offset + i as u64
                ),
            ),
            _ => self.err(
                end,
                "unexpected end of file: expected `,` or `]` (truncated file?)",
            ),
        }
    }

    /// Scan `buf` from the start; returns complete element ranges and the bytes consumed.
    fn scan(&mut self) -> Result<(Vec<Range<usize>>, usize)> {
        let buf = &self.buf;
        let mut elements = Vec::new();
        let mut pos = 0usize;
        let mut consumed = 0usize;
        loop {
            while pos < buf.len() && buf[pos].is_ascii_whitespace() {
                pos += 1;
            }
            if pos >= buf.len() {
                return Ok((elements, consumed.max(pos)));
            }
            let at = self.buf_offset + pos as u64;
            let b = buf[pos];
            match self.expect {
                Expect::Open => {
                    if b != b'[' {
                        return Err(self.err(
                            at,
                            format!(
                                "expected `[` (a JSON array of per-image records), found `{}`",
                                show_byte(b)
                            ),
                        ));
                    }
                    pos += 1;
                    consumed = pos;
                    self.expect = Expect::FirstOrClose;
                }
                Expect::CommaOrClose | Expect::FirstOrClose if b == b']' => {
                    pos += 1;
                    consumed = pos;
                    self.expect = Expect::Done;
                }
                Expect::CommaOrClose => {
                    if b != b',' {
                        return Err(self.err(
                            at,
                            format!(
                                "expected `,` or `]` after an array element, found `{}`",
                                show_byte(b)
                            ),
                        ));
                    }
                    pos += 1;
                    consumed = pos;
                    self.expect = Expect::Element;
                }
                Expect::Element | Expect::FirstOrClose => {
                    if b != b'{' {
                        return Err(self.err(
                            at,
                            format!(
                                "expected `{{` (a per-image record), found `{}`",
                                show_byte(b)
                            ),
                        ));
                    }
                    match object_end(&buf[pos..]) {
                        Some(len) => {
                            elements.push(pos..pos + len);
                            pos += len;
                            consumed = pos;
                            self.expect = Expect::CommaOrClose;
                        }
                        // Incomplete: stop before it, it is completed by the next read.
                        None => return Ok((elements, consumed)),
                    }
                }
                Expect::Done => {
                    return Err(self.err(
                        at,
                        format!(
                            "unexpected `{}` after the closing `]` of the array",
                            show_byte(b)
                        ),
                    ));
                }
            }
        }
    }
}

/// Length of the JSON object starting at `bytes[0] == b'{'`, or `None` if it is not complete.
fn object_end(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut pos = 0usize;
    loop {
        let i = memchr::memchr3(b'"', b'{', b'}', &bytes[pos..])?;
        pos += i;
        match bytes[pos] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(pos + 1);
                }
            }
            _ => {
                // Inside a string: skip to its closing quote, honouring escapes.
                pos += 1;
                loop {
                    let j = memchr::memchr2(b'"', b'\\', &bytes[pos..])?;
                    pos += j;
                    if bytes[pos] == b'\\' {
                        pos += 2;
                        if pos > bytes.len() {
                            return None;
                        }
                    } else {
                        break;
                    }
                }
            }
        }
        pos += 1;
    }
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        (b as char).to_string()
    } else {
        format!("\\x{b:02x}")
    }
}

/// Read a whole array on a background thread, handing chunks through a bounded channel so that
/// reading and splitting overlap with parsing.
pub fn spawn_splitter(
    path: &Path,
    block: usize,
) -> Result<(
    crossbeam_channel::Receiver<Result<ElementChunk>>,
    std::thread::JoinHandle<()>,
)> {
    let mut splitter = ArraySplitter::open(path, block)?;
    let (tx, rx) = crossbeam_channel::bounded(2);
    let handle = std::thread::Builder::new()
        .name("json-splitter".into())
        .spawn(move || loop {
            match splitter.next_chunk() {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        })
        .map_err(|e| Error::io("failed to start a reader thread for", path, e))?;
    Ok((rx, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(text: &[u8], block: usize) -> Result<Vec<String>> {
        let mut s = ArraySplitter::new(Path::new("t.json"), text, block);
        let mut out = Vec::new();
        while let Some(chunk) = s.next_chunk()? {
            for r in &chunk.elements {
                out.push(String::from_utf8(chunk.data[r.clone()].to_vec()).unwrap());
            }
        }
        Ok(out)
    }

    #[test]
    fn splits_elements_whatever_the_block_size() {
        let text = br#" [ {"a": "}{\"", "b": [1, {"c": 2}]} ,{"d":"\\"},
            {"e": {}} ] "#;
        for block in [16, 17, 23, 64, 1 << 20] {
            let got = split_all(text, block).unwrap();
            assert_eq!(
                got,
                vec![
                    r#"{"a": "}{\"", "b": [1, {"c": 2}]}"#,
                    r#"{"d":"\\"}"#,
                    r#"{"e": {}}"#
                ],
                "block {block}"
            );
        }
        assert!(split_all(b"[]", 16).unwrap().is_empty());
    }

    fn err_of(text: &[u8]) -> (u64, String) {
        match split_all(text, 16) {
            Err(Error::Json {
                byte_offset,
                message,
                ..
            }) => (byte_offset, message),
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_byte_offset() {
        assert_eq!(err_of(b"").0, 0);
        assert!(err_of(b"").1.contains("empty"));
        let (at, msg) = err_of(b"[{\"a\":1}, {\"b\": 2");
        assert_eq!(at, 17);
        assert!(msg.contains("starts at byte 10"), "{msg}");
        let (at, msg) = err_of(b"[{\"a\":1} {\"b\":2}]");
        assert_eq!(at, 9);
        assert!(msg.contains("expected `,` or `]`"), "{msg}");
        let (at, _) = err_of(b"{\"a\":1}");
        assert_eq!(at, 0);
        let (at, msg) = err_of(b"[{\"a\":1}] x");
        assert_eq!(at, 10);
        assert!(msg.contains("after the closing"), "{msg}");
        let (at, _) = err_of(b"[{\"a\":1},]");
        assert_eq!(at, 9);
    }

    #[test]
    fn parse_errors_point_into_the_file() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Rec {
            x: i64,
        }
        let text = b"[{\"x\": 1},\n {\"x\": \"no\"}]";
        let mut s = ArraySplitter::new(Path::new("t.json"), &text[..], 1024);
        let chunk = s.next_chunk().unwrap().unwrap();
        assert!(chunk.parse::<Rec>(Path::new("t.json"), 0).is_ok());
        match chunk.parse::<Rec>(Path::new("t.json"), 1) {
            Err(Error::Json {
                byte_offset,
                message,
                ..
            }) => {
                // serde_json reports the last byte it read: inside the offending `"no"` (18..=21).
                assert!((18..=21).contains(&byte_offset), "{byte_offset}: {message}");
                assert!(message.contains("invalid type"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
