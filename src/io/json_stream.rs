//! Streaming reader for the large JSON arrays of Visual Genome.
//!
//! `relationships.json` is one top-level array of per-image records (about 0.7 GB for 2.3 M
//! relationships). Building its whole tree in memory costs several GB, so instead a splitter
//! reads the file in blocks and finds the byte range of each top-level element (tracking strings
//! and braces only, with `memchr`), and the ranges are parsed in parallel into typed, borrowed
//! records (by `serde_json`, or for relationships by a walk over a simd-json tape). Memory stays
//! at a few blocks whatever the file size.
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
    /// The bytes of element `i`.
    pub fn element(&self, i: usize) -> &[u8] {
        &self.data[self.elements[i].clone()]
    }

    /// Parse element `i` as `T`, mapping errors to the file's byte offset.
    pub fn parse<'de, T: Deserialize<'de>>(&'de self, path: &Path, i: usize) -> Result<T> {
        self.parse_seed(path, i, std::marker::PhantomData)
    }

    /// Parse element `i` with `seed` (which may, say, append to builders as it goes), mapping
    /// errors to the file's byte offset.
    pub fn parse_seed<'de, S: serde::de::DeserializeSeed<'de>>(
        &'de self,
        path: &Path,
        i: usize,
        seed: S,
    ) -> Result<S::Value> {
        let range = self.elements[i].clone();
        let bytes = &self.data[range.clone()];
        // One UTF-8 check of the whole element, then a parser that trusts it: serde_json checks
        // each string of a byte slice on its own, and VG's many short strings made that a
        // sixth of the parse.
        let text = std::str::from_utf8(bytes).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            byte_offset: self.offset + (range.start + e.valid_up_to()) as u64,
            message: "invalid UTF-8 (JSON text must be UTF-8)".into(),
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        seed.deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| {
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
    /// BLAKE3 of every byte read so far, in order.
    hasher: blake3::Hasher,
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
            hasher: blake3::Hasher::new(),
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
        // Read into the spare capacity: zeroing each block first was 2 % of ingest.
        self.buf.reserve_exact(self.block);
        let read = (&mut self.reader)
            .take(self.block as u64)
            .read_to_end(&mut self.buf)
            .map_err(|e| Error::io("failed to read", &self.path, e))?;
        self.eof = read < self.block;
        self.total_read += read as u64;
        self.hasher.update(&self.buf[old..]);
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

    /// BLAKE3 (hex) of the whole file, once [`Self::next_chunk`] has given `None`: the splitter
    /// reads every byte, up to the end of the file, to check what follows the array.
    pub fn digest(&self) -> Option<String> {
        (self.eof && self.expect == Expect::Done)
            .then(|| self.hasher.finalize().to_hex().to_string())
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
///
/// Works on 64-byte blocks, as bitmasks (one bit per byte): the unescaped quotes' prefix XOR marks
/// the bytes inside strings, and only the braces outside them are counted. A block costs a few
/// dozen instructions instead of one `memchr` call per quote and brace, which on Visual Genome's
/// short strings was most of the splitter's time.
fn object_end(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    // All ones while the previous block ended inside a string.
    let mut in_string = 0u64;
    // Whether the next block's first byte is escaped by a backslash at the end of this one.
    let mut escape_carry = false;
    let mut padded;
    for (b, block) in bytes.chunks(64).enumerate() {
        let block: &[u8; 64] = match block.try_into() {
            Ok(full) => full,
            Err(_) => {
                // Spaces neither open nor close anything.
                padded = [b' '; 64];
                padded[..block.len()].copy_from_slice(block);
                &padded
            }
        };
        let m = classify(block);
        let escaped = escaped_bytes(m.backslash, &mut escape_carry);
        let quotes = m.quote & !escaped;
        let inside = prefix_xor(quotes) ^ in_string;
        in_string = 0u64.wrapping_sub(inside >> 63);
        let opens = m.open & !inside;
        let mut braces = (m.open | m.close) & !inside;
        while braces != 0 {
            let i = braces.trailing_zeros() as usize;
            if opens >> i & 1 == 1 {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    return Some(b * 64 + i + 1);
                }
            }
            braces &= braces - 1;
        }
    }
    None
}

/// One bit per byte of a 64-byte block, for each byte the splitter looks for.
#[derive(Debug, PartialEq)]
struct BlockMasks {
    quote: u64,
    backslash: u64,
    open: u64,
    close: u64,
}

#[cfg(target_arch = "x86_64")]
fn classify(block: &[u8; 64]) -> BlockMasks {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of x86_64; the four 16-byte loads stay inside the 64-byte array.
    unsafe {
        let lanes = [0, 16, 32, 48].map(|o| _mm_loadu_si128(block.as_ptr().add(o).cast()));
        let mask = |byte: u8| -> u64 {
            let needle = _mm_set1_epi8(byte as i8);
            lanes.iter().enumerate().fold(0u64, |acc, (j, lane)| {
                let bits = _mm_movemask_epi8(_mm_cmpeq_epi8(*lane, needle)) as u16 as u64;
                acc | bits << (16 * j)
            })
        };
        BlockMasks {
            quote: mask(b'"'),
            backslash: mask(b'\\'),
            open: mask(b'{'),
            close: mask(b'}'),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(block: &[u8; 64]) -> BlockMasks {
    classify_scalar(block)
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn classify_scalar(block: &[u8; 64]) -> BlockMasks {
    let mut m = BlockMasks {
        quote: 0,
        backslash: 0,
        open: 0,
        close: 0,
    };
    for (i, &c) in block.iter().enumerate() {
        let bit = 1u64 << i;
        match c {
            b'"' => m.quote |= bit,
            b'\\' => m.backslash |= bit,
            b'{' => m.open |= bit,
            b'}' => m.close |= bit,
            _ => {}
        }
    }
    m
}

/// The bytes escaped by a backslash: each backslash that is not itself escaped escapes the next
/// byte. Backslashes are rare in Visual Genome, so this walks them one by one.
fn escaped_bytes(mut backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = *carry as u64;
    *carry = false;
    backslash &= !escaped;
    while backslash != 0 {
        let i = backslash.trailing_zeros();
        if i == 63 {
            *carry = true;
        } else {
            escaped |= 1 << (i + 1);
        }
        // The escaped byte, if a backslash, escapes nothing.
        backslash &= !(1u64 << i) & !escaped;
    }
    escaped
}

/// Bit i = XOR of bits 0..=i: with quote bits in, set from an opening quote up to (not
/// including) its closing one.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        (b as char).to_string()
    } else {
        format!("\\x{b:02x}")
    }
}

/// The chunks of a [`spawn_splitter`], in file order.
pub type ChunkReceiver = crossbeam_channel::Receiver<Result<ElementChunk>>;

/// A [`spawn_splitter`] thread: it gives the file's BLAKE3 when it read the whole array.
pub type SplitterHandle = std::thread::JoinHandle<Option<String>>;

/// Read a whole array on a background thread, handing chunks through a bounded channel so that
/// reading and splitting overlap with parsing.
pub fn spawn_splitter(path: &Path, block: usize) -> Result<(ChunkReceiver, SplitterHandle)> {
    let mut splitter = ArraySplitter::open(path, block)?;
    let (tx, rx) = crossbeam_channel::bounded(2);
    let handle = std::thread::Builder::new()
        .name("json-splitter".into())
        .spawn(move || loop {
            match splitter.next_chunk() {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).is_err() {
                        return None;
                    }
                }
                Ok(None) => return splitter.digest(),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return None;
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

    /// The splitter's former scanner, token by token: the reference for the block scanner.
    fn object_end_reference(bytes: &[u8]) -> Option<usize> {
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

    #[test]
    fn block_scanner_equals_the_token_scanner() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        // Few letters, many of the bytes that matter, so that escapes, runs of backslashes,
        // braces inside strings and block edges all occur. Backslashes only inside strings, as
        // JSON has them (outside, the two scanners may differ, and the parse refuses the text).
        let (outside, inside) = (b"{{}}\"ab :,", b"{}ab\"\\\\");
        for case in 0..20_000 {
            let len = rng.random_range(1..400);
            let mut text = vec![b'{'];
            let mut in_string = false;
            while text.len() < len {
                let set: &[u8] = if in_string { inside } else { outside };
                let c = set[rng.random_range(0..set.len())];
                text.push(c);
                if in_string && c == b'\\' {
                    text.push(b"\"\\an{"[rng.random_range(0..5)]);
                } else if c == b'"' {
                    in_string = !in_string;
                }
            }
            for cut in [
                text.len(),
                text.len() / 2,
                63.min(text.len()),
                65.min(text.len()),
            ] {
                let t = &text[..cut.max(1)];
                assert_eq!(
                    object_end(t),
                    object_end_reference(t),
                    "case {case}: {}",
                    String::from_utf8_lossy(t)
                );
            }
        }
    }

    #[test]
    fn block_masks_equal_the_scalar_classifier() {
        let mut block = [0u8; 64];
        for (i, b) in block.iter_mut().enumerate() {
            *b = b"{}\"\\ax"[(i * 7 + i / 5) % 6];
        }
        assert_eq!(classify(&block), classify_scalar(&block));
        assert_eq!(escaped_bytes(0b1011, &mut false), 0b10010);
    }
}
