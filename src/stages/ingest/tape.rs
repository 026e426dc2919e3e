//! The fast reader of `relationships.json` elements.
//!
//! VG's JSON is dense in tokens (a node every six bytes), and serde_json's struct parsing of it
//! was over half of ingest. Here simd-json checks the whole element and lays it out as a tape
//! (its SIMD stage finds the structure; strings are unescaped and numbers parsed once), and a
//! walk over that tape fills the same [`VgRelationship`] records that serde's derive would.
//!
//! The walk accepts only what it can read exactly as serde would, and declines everything else
//! (`None`): a duplicated or missing field, a value of another type, an integer outside `i64`, an
//! unknown field holding an array or object (serde_json's recursion limit applies to those), an
//! element holding `-0` anywhere (serde_json reads it as a float), and any element simd-json
//! itself rejects. The caller then parses the element with serde_json, so
//! serde stays the definition of what ingest accepts and of every error message and byte offset;
//! the tape is only ever a faster way to the same rows (see the differential test in
//! `super::tests`).

use std::borrow::Cow;

use simd_json::{Buffers, Node, StaticNode, Tape};

use super::{Str, Strs, VgObject, VgRelationship};

/// One element of `relationships.json`, read.
pub(super) struct RelationshipsElement<'a> {
    pub image_id: Option<i64>,
    pub id: Option<i64>,
    pub relationships: Vec<VgRelationship<'a>>,
}

/// simd-json's buffers and tape, kept from one element to the next.
#[derive(Default)]
pub(super) struct TapeReader {
    /// The element's bytes and simd-json's padding: it unescapes strings in place, so the chunk
    /// itself is left as it was read, for serde_json to parse when the walk declines.
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
}

impl TapeReader {
    /// The element in `json`, or `None` when serde_json must read it.
    pub fn read<'a>(&'a mut self, json: &[u8]) -> Option<RelationshipsElement<'a>> {
        // serde_json reads `-0` as a float (so not an `i64`), simd-json as the integer 0, and
        // the tape no longer tells them apart.
        if memchr::memmem::find(json, b"-0").is_some() {
            return None;
        }
        // Padded here, so that simd-json parses the copy in place rather than copying it again.
        self.scratch.clear();
        self.scratch.extend_from_slice(json);
        self.scratch
            .resize(json.len() + simd_json::INPUT_PADDING, b' ');
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset();
        let (scratch, buffers) = (&mut self.scratch, &mut self.buffers);
        let read = match simd_json::fill_tape_padded(scratch, json.len(), buffers, &mut tape) {
            Ok(()) => element(&tape.0),
            Err(_) => None,
        };
        self.tape = Some(tape.reset());
        read
    }
}

/// An `i64` field: a JSON integer in range (serde_json refuses floats and wider integers).
fn int(n: Node) -> Option<i64> {
    match n {
        Node::Static(StaticNode::I64(v)) => Some(v),
        Node::Static(StaticNode::U64(v)) => i64::try_from(v).ok(),
        _ => None,
    }
}

/// An `Option<T>` field: null, or what `read` reads.
fn nullable<'a, T>(n: Node<'a>, read: impl Fn(Node<'a>) -> Option<T>) -> Option<Option<T>> {
    match n {
        Node::Static(StaticNode::Null) => Some(None),
        n => read(n).map(Some),
    }
}

fn string<'a>(n: Node<'a>) -> Option<Str<'a>> {
    match n {
        Node::String(s) => Some(Str(Cow::Borrowed(s))),
        _ => None,
    }
}

/// An `Option<Strs>` field at `i`: null or an array of strings; gives the next index.
fn opt_strings<'a>(t: &[Node<'a>], i: usize) -> Option<(Option<Strs<'a>>, usize)> {
    match t[i] {
        Node::Static(StaticNode::Null) => Some((None, i + 1)),
        Node::Array { len, .. } => {
            let items = t.get(i + 1..i + 1 + len)?;
            let strs = items.iter().map(|&n| string(n)).collect::<Option<Strs>>()?;
            Some((Some(strs), i + 1 + len))
        }
        _ => None,
    }
}

/// Walks the fields of the object at `i`: `field(bit, value index)` reads a known field and
/// gives the next index; unknown fields are skipped when scalar. Declines a repeated known field
/// or an unknown one holding an array or object. Gives the set of fields seen and the next index.
fn fields<'a>(
    t: &[Node<'a>],
    mut i: usize,
    known: &[&str],
    mut field: impl FnMut(usize, usize) -> Option<usize>,
) -> Option<(u32, usize)> {
    let Node::Object { len, .. } = t[i] else {
        return None;
    };
    i += 1;
    let mut seen = 0u32;
    for _ in 0..len {
        let Node::String(key) = t[i] else {
            return None;
        };
        i += 1;
        match known.iter().position(|k| *k == key) {
            Some(bit) => {
                if seen & (1 << bit) != 0 {
                    return None;
                }
                seen |= 1 << bit;
                i = field(bit, i)?;
            }
            // A scalar takes one node.
            None => match t[i] {
                Node::Object { .. } | Node::Array { .. } => return None,
                _ => i += 1,
            },
        }
    }
    Some((seen, i))
}

/// All of the first `n` fields were seen.
fn has_first(seen: u32, n: u32) -> bool {
    seen & ((1 << n) - 1) == (1 << n) - 1
}

fn vg_object<'a>(t: &[Node<'a>], i: usize) -> Option<(VgObject<'a>, usize)> {
    // The required fields first, so that `has_first` checks them.
    const KNOWN: [&str; 9] = [
        "object_id",
        "x",
        "y",
        "w",
        "h",
        "name",
        "names",
        "synsets",
        "attributes",
    ];
    let mut o = VgObject {
        object_id: 0,
        x: 0,
        y: 0,
        w: 0,
        h: 0,
        name: None,
        names: None,
        synsets: None,
        attributes: None,
    };
    let (seen, next) = fields(t, i, &KNOWN, |bit, i| {
        match bit {
            0..=4 => {
                let v = int(t[i])?;
                *[&mut o.object_id, &mut o.x, &mut o.y, &mut o.w, &mut o.h][bit] = v;
            }
            5 => o.name = nullable(t[i], string)?,
            _ => {
                let (v, next) = opt_strings(t, i)?;
                *[&mut o.names, &mut o.synsets, &mut o.attributes][bit - 6] = v;
                return Some(next);
            }
        }
        Some(i + 1)
    })?;
    has_first(seen, 5).then_some((o, next))
}

fn relationship<'a>(t: &[Node<'a>], i: usize) -> Option<(VgRelationship<'a>, usize)> {
    const KNOWN: [&str; 5] = [
        "relationship_id",
        "predicate",
        "subject",
        "object",
        "synsets",
    ];
    let (mut id, mut predicate, mut subject, mut object, mut synsets) = (0, None, None, None, None);
    let (seen, next) = fields(t, i, &KNOWN, |bit, i| match bit {
        0 => {
            id = int(t[i])?;
            Some(i + 1)
        }
        1 => {
            predicate = Some(string(t[i])?);
            Some(i + 1)
        }
        2 | 3 => {
            let (o, next) = vg_object(t, i)?;
            *[&mut subject, &mut object][bit - 2] = Some(o);
            Some(next)
        }
        _ => {
            let (v, next) = opt_strings(t, i)?;
            synsets = v;
            Some(next)
        }
    })?;
    if !has_first(seen, 4) {
        return None;
    }
    let r = VgRelationship {
        relationship_id: id,
        predicate: predicate?,
        synsets,
        subject: subject?,
        object: object?,
    };
    Some((r, next))
}

fn element<'a>(t: &[Node<'a>]) -> Option<RelationshipsElement<'a>> {
    const KNOWN: [&str; 3] = ["relationships", "image_id", "id"];
    let mut e = RelationshipsElement {
        image_id: None,
        id: None,
        relationships: Vec::new(),
    };
    let (seen, next) = fields(t, 0, &KNOWN, |bit, i| match bit {
        0 => {
            let Node::Array { len, .. } = t[i] else {
                return None;
            };
            e.relationships.reserve(len);
            let mut i = i + 1;
            for _ in 0..len {
                let (r, next) = relationship(t, i)?;
                e.relationships.push(r);
                i = next;
            }
            Some(i)
        }
        1 => {
            e.image_id = nullable(t[i], int)?;
            Some(i + 1)
        }
        _ => {
            e.id = nullable(t[i], int)?;
            Some(i + 1)
        }
    })?;
    (has_first(seen, 1) && next == t.len()).then_some(e)
}
