//! The fast reader of `relationships.json` elements.
//!
//! VG's JSON is dense in tokens (a node every six bytes), and serde_json's struct parsing of it
//! was over half of ingest. Here simd-json checks the whole element and lays it out as a tape
//! (its SIMD stage finds the structure; strings are unescaped and numbers parsed once), and a
//! walk over that tape appends each relationship's row as serde's derive would read it: straight
//! from the tape, without building [`VgRelationship`](super::VgRelationship) records (moving
//! them, each about 440 bytes, into a list was a tenth of ingest).
//!
//! The walk accepts only what it can read exactly as serde would, and declines everything else:
//! a duplicated or missing field, a value of another type, an integer outside `i64`, an unknown
//! field holding an array or object (serde_json's recursion limit applies to those), an element
//! holding `-0` anywhere (serde_json reads it as a float), and any element simd-json itself
//! rejects. A relationship's row is appended only once the walk has read all of it; the
//! relationships before the one where the walk declines stay appended, and the caller parses the
//! element with serde_json, which reads them again without appending them twice. So serde stays
//! the definition of what ingest accepts and of every error message and byte offset; the tape is
//! only ever a faster way to the same rows (see the differential test in `super::tests`).

use simd_json::{Buffers, Node, StaticNode, Tape};

use super::{RelationshipCols, RelationshipRow, SideRow};

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
    /// Append the rows of the element in `json` to `rows`, as far as the walk can read it; gives
    /// the element's `image_id` and `id`, or `None` where it declined (the relationships it
    /// appended before that stay, and [`RelationshipCols::in_element`] counts them).
    pub fn read(
        &mut self,
        json: &[u8],
        rows: &mut RelationshipCols,
    ) -> Option<(Option<i64>, Option<i64>)> {
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
            Ok(()) => element(&tape.0, rows),
            Err(_) => None,
        };
        self.tape = Some(tape.reset());
        read
    }
}

/// The strings of a list on the tape, which [`opt_strings`] checked to be strings only.
pub(super) struct TapeStrs<'t, 'a>(std::slice::Iter<'t, Node<'a>>);

impl<'a> Iterator for TapeStrs<'_, 'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        self.0.find_map(|n| match *n {
            Node::String(s) => Some(s),
            _ => None,
        })
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

fn string(n: Node<'_>) -> Option<&str> {
    match n {
        Node::String(s) => Some(s),
        _ => None,
    }
}

/// A list of strings or null (read as an empty list, as serde's rows do) at `i`; gives the
/// next index.
fn opt_strings<'t, 'a>(t: &'t [Node<'a>], i: usize) -> Option<(TapeStrs<'t, 'a>, usize)> {
    match t[i] {
        Node::Static(StaticNode::Null) => Some((TapeStrs([].iter()), i + 1)),
        Node::Array { len, .. } => {
            let items = t.get(i + 1..i + 1 + len)?;
            let strings = items.iter().all(|n| matches!(n, Node::String(_)));
            strings.then(|| (TapeStrs(items.iter()), i + 1 + len))
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

/// A relationship's subject or object at `i`; gives the next index.
fn side<'t, 'a>(t: &'t [Node<'a>], i: usize) -> Option<(SideRow<'a, TapeStrs<'t, 'a>>, usize)> {
    // The required fields first, so that `has_first` checks them. `attributes` is checked but
    // not kept: the relationships table has no column for it.
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
    let mut ints = [0i64; 5];
    let (mut name, mut names, mut synsets) = (None, None, TapeStrs([].iter()));
    let (seen, next) = fields(t, i, &KNOWN, |bit, i| {
        match bit {
            0..=4 => ints[bit] = int(t[i])?,
            5 => name = nullable(t[i], string)?,
            _ => {
                let (list, next) = opt_strings(t, i)?;
                match bit {
                    6 => names = Some(list),
                    7 => synsets = list,
                    _ => {}
                }
                return Some(next);
            }
        }
        Some(i + 1)
    })?;
    let [object_id, bbox @ ..] = ints;
    // As `VgObject::name`: `name`, or else the first of `names`.
    let name = name.or_else(|| names?.next());
    let side = SideRow {
        object_id,
        bbox,
        name,
        synsets,
    };
    has_first(seen, 5).then_some((side, next))
}

/// A relationship at `i`; gives the next index.
fn relationship<'t, 'a>(
    t: &'t [Node<'a>],
    i: usize,
) -> Option<(RelationshipRow<'a, TapeStrs<'t, 'a>>, usize)> {
    const KNOWN: [&str; 5] = [
        "relationship_id",
        "predicate",
        "subject",
        "object",
        "synsets",
    ];
    let (mut id, mut predicate, mut subject, mut object) = (0, None, None, None);
    let mut synsets = TapeStrs([].iter());
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
            let (o, next) = side(t, i)?;
            *[&mut subject, &mut object][bit - 2] = Some(o);
            Some(next)
        }
        _ => {
            let (list, next) = opt_strings(t, i)?;
            synsets = list;
            Some(next)
        }
    })?;
    if !has_first(seen, 4) {
        return None;
    }
    let r = RelationshipRow {
        relationship_id: id,
        predicate: predicate?,
        synsets,
        subject: subject?,
        object: object?,
    };
    Some((r, next))
}

/// Appends the element's relationships to `rows` as they are read; gives its `image_id` and `id`.
fn element(t: &[Node<'_>], rows: &mut RelationshipCols) -> Option<(Option<i64>, Option<i64>)> {
    const KNOWN: [&str; 3] = ["relationships", "image_id", "id"];
    let (mut image_id, mut id) = (None, None);
    let (seen, next) = fields(t, 0, &KNOWN, |bit, i| match bit {
        0 => {
            let Node::Array { len, .. } = t[i] else {
                return None;
            };
            let mut i = i + 1;
            for _ in 0..len {
                let (r, next) = relationship(t, i)?;
                rows.push(r);
                i = next;
            }
            Some(i)
        }
        1 => {
            image_id = nullable(t[i], int)?;
            Some(i + 1)
        }
        _ => {
            id = nullable(t[i], int)?;
            Some(i + 1)
        }
    })?;
    (has_first(seen, 1) && next == t.len()).then_some((image_id, id))
}
