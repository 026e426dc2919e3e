//! `ingest`: Visual Genome 1.4 JSON into Parquet tables.
//!
//! Reads `image_data.json`, `relationships.json` and, when present, `objects.json` and
//! `attributes.json` from a Visual Genome folder, and writes `images`, `relationships` (one row
//! per relationship, subject and object flattened), `objects` and `attributes` tables under
//! `RUN/ingest/`. The large files are streamed (see [`crate::io::json_stream`]): split on one
//! thread, parsed on all cores, written on another, so memory stays bounded by a few blocks.
//!
//! Real VG quirks are accepted: `name` or `names`, `image_id` or `id`, null COCO/Flickr ids, and
//! extra fields. Syntax and type errors stop the stage with the file and byte offset, and nothing
//! is committed. Records that parse but cannot be used (a zero or negative box, an object without
//! a name) are skipped and counted, with the first example named in the stage's report.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
};
use arrow::datatypes::SchemaRef;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::atomic::AtomicFile;
use crate::io::json_stream::{spawn_splitter, ElementChunk, DEFAULT_BLOCK};
use crate::io::TableWriter;
use crate::tables;
use crate::tables::vg::{attributes_schema, images_schema, objects_schema, relationships_schema};

mod tape;

/// Configuration of the ingest stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// The Visual Genome folder (image_data.json, relationships.json, and optionally
    /// objects.json, attributes.json); without it, the synth stage's. Not hashed: the files'
    /// contents are.
    #[arg(long)]
    pub vg: Option<PathBuf>,
    /// Bytes read at once by the JSON splitter. Changes nothing in the output.
    #[arg(long, default_value_t = DEFAULT_BLOCK)]
    pub block_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// One Visual Genome file and the table ingest makes of it.
#[derive(Debug)]
pub struct VgTable {
    /// The JSON file in the VG folder.
    pub source: &'static str,
    /// Whether ingest fails without it (an absent optional file gives an empty table).
    pub required: bool,
    /// The Parquet table written under `RUN/ingest/`.
    pub table: &'static TableDecl,
    /// The counter of its rows in the stage report.
    counter: &'static str,
    /// The id of a row: a later row with an id already written is a duplicate, skipped and
    /// counted (the first in file order is kept).
    key: &'static str,
    /// The skip reason of a duplicate.
    duplicate: &'static str,
    schema: fn() -> SchemaRef,
    stream: StreamFn,
}

type StreamFn = fn(&VgTable, &Path, &Path, usize, &crate::ui::Ui) -> Result<Pending>;

/// The four files, in the order ingest reads them.
pub const VG_TABLES: [VgTable; 4] = [
    VgTable {
        source: "image_data.json",
        required: true,
        table: &tables::IMAGES,
        counter: "images",
        key: "image_id",
        duplicate: "images_duplicate_id",
        schema: images_schema,
        stream: stream_table::<ImageRows>,
    },
    VgTable {
        source: "relationships.json",
        required: true,
        table: &tables::RELATIONSHIPS,
        counter: "relationships",
        key: "relationship_id",
        duplicate: "relationships_duplicate_id",
        schema: relationships_schema,
        stream: stream_table::<RelationshipRows>,
    },
    VgTable {
        source: "objects.json",
        required: false,
        table: &tables::OBJECTS,
        counter: "objects",
        key: "object_id",
        duplicate: "objects_duplicate_id",
        schema: objects_schema,
        stream: stream_table::<ObjectRows>,
    },
    VgTable {
        source: "attributes.json",
        required: false,
        table: &tables::ATTRIBUTES,
        counter: "attribute_rows",
        key: "object_id",
        duplicate: "attributes_duplicate_id",
        schema: attributes_schema,
        stream: stream_table::<AttributeRows>,
    },
];

/// The ingest stage.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Its configuration.
    pub config: IngestConfig,
}

impl StageDef for Ingest {
    const NAME: &'static str = "ingest";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "Visual Genome 1.4 JSON into RUN/ingest/*.parquet";
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::IMAGES,
        &tables::RELATIONSHIPS,
        &tables::OBJECTS,
        &tables::ATTRIBUTES,
    ];
    type Config = IngestConfig;
    fn resolve_paths(c: &mut IngestConfig, base: &Path) {
        if let Some(p) = &mut c.vg {
            crate::config::resolve(p, base);
        }
    }
    fn build(config: IngestConfig) -> Result<Self> {
        let mut checks = Checks::<Self>::new();
        if config.block_bytes == 0 {
            checks.bad("block_bytes", "must be at least 1");
        }
        if let Some(vg) = &config.vg {
            if checks.path("vg", vg, PathKind::Folder) {
                let missing: Vec<&str> = VG_TABLES
                    .iter()
                    .filter(|t| t.required && !vg.join(t.source).is_file())
                    .map(|t| t.source)
                    .collect();
                if !missing.is_empty() {
                    checks.bad(
                        "vg",
                        format!(
                            "`{}` is not a Visual Genome 1.4 folder: {} not found in it",
                            vg.display(),
                            missing.join(", ")
                        ),
                    );
                }
            }
        }
        checks.finish(Ingest { config })
    }
    fn needs(&self) -> Vec<Need> {
        match self.config.vg {
            Some(_) => vec![],
            None => vec![Need::of(&tables::VG).choose("--vg DIR (`vg` in [ingest])")],
        }
    }
    fn fingerprint(&self) -> serde_json::Value {
        // The folder is located by path but identified by content (see `inputs`).
        serde_json::json!({})
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        let Some(vg) = &self.config.vg else {
            return Ok(vec![]); // the synth stage's output: its digest is upstream
        };
        let mut out = Vec::new();
        for t in &VG_TABLES {
            let path = vg.join(t.source);
            if path.is_file() {
                out.push((t.source.to_string(), path));
            } else if t.required {
                return Err(Error::input_missing(
                    Self::NAME,
                    "Visual Genome file",
                    &path,
                    "--vg (`vg` in [ingest]) must name a Visual Genome 1.4 folder holding image_data.json and relationships.json",
                ));
            }
        }
        Ok(out)
    }
    fn hashes_inputs_itself(&self) -> bool {
        // The splitter hashes every byte it reads: the 0.6 GB relationships.json is read once.
        true
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let vg = match &self.config.vg {
            Some(v) => v.clone(),
            None => ctx.input(&tables::VG)?,
        };
        ingest(&vg, self.config.block_bytes, &ctx.stage_dir, ctx.ui)
    }
}

/// A string that borrows from the input unless it holds escapes.
#[derive(Debug, Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// A list of names, synsets or attributes, as serde reads it: VG's hold one string nearly always,
/// kept inline so that reading one does not allocate.
type Strs<'a> = smallvec::SmallVec<[Str<'a>; 1]>;

#[derive(Debug, Deserialize)]
struct VgImage<'a> {
    image_id: Option<i64>,
    id: Option<i64>,
    width: i64,
    height: i64,
    coco_id: Option<i64>,
    flickr_id: Option<i64>,
    #[serde(borrow)]
    url: Option<Str<'a>>,
}

#[derive(Debug, Deserialize)]
struct VgObject<'a> {
    object_id: i64,
    x: i64,
    y: i64,
    w: i64,
    h: i64,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    names: Option<Strs<'a>>,
    #[serde(borrow, default)]
    synsets: Option<Strs<'a>>,
    #[serde(borrow, default)]
    attributes: Option<Strs<'a>>,
}

impl VgObject<'_> {
    fn name(&self) -> Option<&str> {
        match (&self.name, &self.names) {
            (Some(n), _) => Some(&n.0),
            (None, Some(ns)) => ns.first().map(|n| n.0.as_ref()),
            _ => None,
        }
    }
    fn bbox(&self) -> [i64; 4] {
        [self.x, self.y, self.w, self.h]
    }
    fn side(&self) -> SideRow<'_, StrIter<'_>> {
        SideRow {
            object_id: self.object_id,
            bbox: self.bbox(),
            name: self.name(),
            synsets: strs(&self.synsets),
        }
    }
}

/// Whether a box `[x, y, w, h]` has an area and fits the `Int32` columns.
fn has_box(bbox: [i64; 4]) -> bool {
    bbox[2] > 0 && bbox[3] > 0 && fits_i32(&bbox)
}

fn fits_i32(values: &[i64]) -> bool {
    values
        .iter()
        .all(|v| (i32::MIN as i64..=i32::MAX as i64).contains(v))
}

#[derive(Debug, Deserialize)]
struct VgRelationship<'a> {
    relationship_id: i64,
    #[serde(borrow)]
    predicate: Str<'a>,
    #[serde(borrow, default)]
    synsets: Option<Strs<'a>>,
    #[serde(borrow)]
    subject: VgObject<'a>,
    #[serde(borrow)]
    object: VgObject<'a>,
}

impl VgRelationship<'_> {
    fn row(&self) -> RelationshipRow<'_, StrIter<'_>> {
        RelationshipRow {
            relationship_id: self.relationship_id,
            predicate: &self.predicate.0,
            synsets: strs(&self.synsets),
            subject: self.subject.side(),
            object: self.object.side(),
        }
    }
}

/// A relationship's subject or object, as its row needs it.
struct SideRow<'r, L> {
    object_id: i64,
    /// `[x, y, w, h]`.
    bbox: [i64; 4],
    /// `name`, or else the first of `names`.
    name: Option<&'r str>,
    synsets: L,
}

/// A relationship as its row needs it, from serde's record ([`VgRelationship::row`]) or straight
/// off simd-json's tape ([`tape`]); `L` iterates a list of strings.
struct RelationshipRow<'r, L> {
    relationship_id: i64,
    predicate: &'r str,
    synsets: L,
    subject: SideRow<'r, L>,
    object: SideRow<'r, L>,
}

/// An element of relationships.json, read straight into the rows: each relationship is
/// appended (or set aside as skipped) as soon as it is parsed, so no list of them is built (its
/// growth and the moves of each record into it were a tenth of ingest). VG writes the image id
/// after the relationships, so it is filled in, and the skips named, once the element is read.
/// Gives the element's `image_id` and `id`. The relationships that the tape walk appended before
/// it declined the element are read again but not appended again ([`RelationshipList`]).
struct RelationshipsSeed<'r>(RelationshipList<'r>);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum RelationshipsField {
    ImageId,
    Id,
    Relationships,
    #[serde(other)]
    Other,
}

impl<'de> serde::de::DeserializeSeed<'de> for RelationshipsSeed<'_> {
    type Value = (Option<i64>, Option<i64>);
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RelationshipsSeed<'_> {
    type Value = (Option<i64>, Option<i64>);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a relationships record (an object with image_id and relationships)")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let (mut image_id, mut id, mut listed) = (None, None, false);
        while let Some(field) = map.next_key()? {
            match field {
                RelationshipsField::ImageId if image_id.is_some() => {
                    return Err(A::Error::duplicate_field("image_id"))
                }
                RelationshipsField::ImageId => image_id = Some(map.next_value::<Option<i64>>()?),
                RelationshipsField::Id if id.is_some() => {
                    return Err(A::Error::duplicate_field("id"))
                }
                RelationshipsField::Id => id = Some(map.next_value::<Option<i64>>()?),
                RelationshipsField::Relationships if listed => {
                    return Err(A::Error::duplicate_field("relationships"))
                }
                RelationshipsField::Relationships => {
                    listed = true;
                    map.next_value_seed(RelationshipList {
                        rows: &mut *self.0.rows,
                    })?;
                }
                RelationshipsField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if !listed {
            return Err(A::Error::missing_field("relationships"));
        }
        Ok((image_id.flatten(), id.flatten()))
    }
}

/// The `relationships` list of an element, appended to the rows one by one.
///
/// The list's first [`RelationshipCols::in_element`] relationships are in `rows` already: the
/// tape walk appends each relationship it has read whole, and may decline the element after some.
/// They read the same both ways, so serde reads and checks them but does not append them twice.
struct RelationshipList<'r> {
    rows: &'r mut RelationshipCols,
}

impl<'de> serde::de::DeserializeSeed<'de> for RelationshipList<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RelationshipList<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        let appended = self.rows.in_element();
        let mut at = 0;
        while let Some(r) = seq.next_element::<VgRelationship<'de>>()? {
            if at >= appended {
                self.rows.push(r.row());
            }
            at += 1;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct ObjectsOfImage<'a> {
    image_id: Option<i64>,
    id: Option<i64>,
    #[serde(borrow)]
    objects: Vec<VgObject<'a>>,
}

#[derive(Debug, Deserialize)]
struct AttributesOfImage<'a> {
    image_id: Option<i64>,
    id: Option<i64>,
    #[serde(borrow, default)]
    attributes: Option<Vec<VgObject<'a>>>,
}

/// Counts of skipped records by reason, with the first example of each.
#[derive(Debug, Default)]
struct Tally {
    counts: BTreeMap<&'static str, u64>,
    first: BTreeMap<&'static str, String>,
}

impl Tally {
    fn skip(&mut self, reason: &'static str, example: impl FnOnce() -> String) {
        *self.counts.entry(reason).or_default() += 1;
        self.first.entry(reason).or_insert_with(example);
    }
    fn merge(&mut self, other: Tally) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        for (k, v) in other.first {
            self.first.entry(k).or_insert(v);
        }
    }
}

fn image_id_of(
    image_id: Option<i64>,
    id: Option<i64>,
    path: &Path,
    chunk: &ElementChunk,
    i: usize,
) -> Result<i64> {
    image_id.or(id).ok_or_else(|| Error::Json {
        path: path.to_path_buf(),
        byte_offset: chunk.offset + chunk.elements[i].start as u64,
        message: "record has neither `image_id` nor `id`".into(),
    })
}

/// Builds one part of a table from a run of JSON elements.
trait PartBuilder: Default + Send {
    /// Records per element for sizing; used only for capacity.
    fn add(&mut self, chunk: &ElementChunk, i: usize, path: &Path, tally: &mut Tally)
        -> Result<()>;
    fn finish(self) -> RecordBatch;
}

fn push_list<'a>(b: &mut ListBuilder<StringBuilder>, items: impl IntoIterator<Item = &'a str>) {
    for s in items {
        b.values().append_value(s);
    }
    b.append(true);
}

/// The strings of a list serde read; none where it was null or absent.
fn strs<'r>(v: &'r Option<Strs<'_>>) -> StrIter<'r> {
    StrIter(v.as_deref().unwrap_or_default().iter())
}

/// The strings of a list serde read.
struct StrIter<'r>(std::slice::Iter<'r, Str<'r>>);

impl<'r> Iterator for StrIter<'r> {
    type Item = &'r str;
    fn next(&mut self) -> Option<&'r str> {
        self.0.next().map(|s| s.0.as_ref())
    }
}

#[derive(Default)]
struct ImageRows {
    image_id: Int64Builder,
    width: Int32Builder,
    height: Int32Builder,
    coco_id: Int64Builder,
    flickr_id: Int64Builder,
    url: StringBuilder,
}

impl PartBuilder for ImageRows {
    fn add(
        &mut self,
        chunk: &ElementChunk,
        i: usize,
        path: &Path,
        tally: &mut Tally,
    ) -> Result<()> {
        let img: VgImage = chunk.parse(path, i)?;
        let id = image_id_of(img.image_id, img.id, path, chunk, i)?;
        if img.width <= 0 || img.height <= 0 || !fits_i32(&[img.width, img.height]) {
            tally.skip("images_bad_size", || {
                format!("image {id} is {}x{}", img.width, img.height)
            });
            return Ok(());
        }
        self.image_id.append_value(id);
        self.width.append_value(img.width as i32);
        self.height.append_value(img.height as i32);
        self.coco_id.append_option(img.coco_id);
        self.flickr_id.append_option(img.flickr_id);
        self.url
            .append_option(img.url.as_ref().map(|u| u.0.as_ref()));
        Ok(())
    }
    fn finish(mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.image_id.finish()),
            Arc::new(self.width.finish()),
            Arc::new(self.height.finish()),
            Arc::new(self.coco_id.finish()),
            Arc::new(self.flickr_id.finish()),
            Arc::new(self.url.finish()),
        ];
        RecordBatch::try_new(images_schema(), cols).expect("images batch matches its schema")
    }
}

#[derive(Default)]
struct BoxCols {
    x: Int32Builder,
    y: Int32Builder,
    w: Int32Builder,
    h: Int32Builder,
}

impl BoxCols {
    /// `[x, y, w, h]`, checked by [`has_box`].
    fn push(&mut self, [x, y, w, h]: [i64; 4]) {
        self.x.append_value(x as i32);
        self.y.append_value(y as i32);
        self.w.append_value(w as i32);
        self.h.append_value(h as i32);
    }
    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.x.finish()));
        cols.push(Arc::new(self.y.finish()));
        cols.push(Arc::new(self.w.finish()));
        cols.push(Arc::new(self.h.finish()));
    }
}

#[derive(Default)]
struct SideCols {
    id: Int64Builder,
    name: StringBuilder,
    synsets: ListBuilder<StringBuilder>,
    bbox: BoxCols,
}

impl SideCols {
    fn push<'r>(&mut self, side: SideRow<'r, impl Iterator<Item = &'r str>>, name: &str) {
        self.id.append_value(side.object_id);
        self.name.append_value(name);
        push_list(&mut self.synsets, side.synsets);
        self.bbox.push(side.bbox);
    }
    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.id.finish()));
        cols.push(Arc::new(self.name.finish()));
        cols.push(Arc::new(self.synsets.finish()));
        self.bbox.finish(cols);
    }
}

/// Skip reasons of relationships.
const UNNAMED: &str = "relationships_unnamed_object";
const BAD_BOX: &str = "relationships_bad_box";

impl RelationshipCols {
    /// Append a relationship's row (all columns but `image_id`), or note why it is skipped.
    fn push<'r>(&mut self, r: RelationshipRow<'r, impl Iterator<Item = &'r str>>) {
        let (Some(sn), Some(on)) = (r.subject.name, r.object.name) else {
            return self.skipped.push((UNNAMED, r.relationship_id));
        };
        if !has_box(r.subject.bbox) || !has_box(r.object.bbox) {
            return self.skipped.push((BAD_BOX, r.relationship_id));
        }
        self.relationship_id.append_value(r.relationship_id);
        self.predicate.append_value(r.predicate);
        push_list(&mut self.synsets, r.synsets);
        self.subj.push(r.subject, sn);
        self.obj.push(r.object, on);
    }
}

#[derive(Default)]
struct RelationshipCols {
    image_id: Int64Builder,
    relationship_id: Int64Builder,
    predicate: StringBuilder,
    synsets: ListBuilder<StringBuilder>,
    subj: SideCols,
    obj: SideCols,
    /// (reason, relationship id) of the current element's relationships skipped so far.
    skipped: Vec<(&'static str, i64)>,
}

impl RelationshipCols {
    /// Rows appended since the last element ended: those still without an `image_id`.
    fn rows_in_element(&self) -> usize {
        self.relationship_id.len() - self.image_id.len()
    }

    /// Relationships pushed since the last element ended, appended or skipped.
    fn in_element(&self) -> usize {
        self.rows_in_element() + self.skipped.len()
    }

    /// Fill in `image_id` for the element's rows (those appended since the last element ended),
    /// and count the relationships skipped in it.
    fn end_element(&mut self, image_id: i64, tally: &mut Tally) {
        self.image_id
            .append_value_n(image_id, self.rows_in_element());
        for (reason, r) in self.skipped.drain(..) {
            tally.skip(reason, || match reason {
                UNNAMED => format!("relationship {r} in image {image_id}"),
                _ => format!(
                    "relationship {r} in image {image_id} has a zero, negative or out-of-range box"
                ),
            });
        }
    }

    fn finish(mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.image_id.finish()),
            Arc::new(self.relationship_id.finish()),
            Arc::new(self.predicate.finish()),
            Arc::new(self.synsets.finish()),
        ];
        self.subj.finish(&mut cols);
        self.obj.finish(&mut cols);
        RecordBatch::try_new(relationships_schema(), cols)
            .expect("relationships batch matches its schema")
    }
}

/// The rows of relationships.json, read through simd-json's tape where it can ([`tape`]) and
/// through serde_json where it declines.
#[derive(Default)]
struct RelationshipRows {
    cols: RelationshipCols,
    reader: tape::TapeReader,
}

impl PartBuilder for RelationshipRows {
    fn add(
        &mut self,
        chunk: &ElementChunk,
        i: usize,
        path: &Path,
        tally: &mut Tally,
    ) -> Result<()> {
        let cols = &mut self.cols;
        let (image_id, id) = match self.reader.read(chunk.element(i), cols) {
            Some(ids) => ids,
            None => {
                chunk.parse_seed(path, i, RelationshipsSeed(RelationshipList { rows: cols }))?
            }
        };
        let image_id = image_id_of(image_id, id, path, chunk, i)?;
        cols.end_element(image_id, tally);
        Ok(())
    }
    fn finish(self) -> RecordBatch {
        self.cols.finish()
    }
}

#[derive(Default)]
struct ObjectRows {
    image_id: Int64Builder,
    object_id: Int64Builder,
    name: StringBuilder,
    names: ListBuilder<StringBuilder>,
    synsets: ListBuilder<StringBuilder>,
    bbox: BoxCols,
}

impl PartBuilder for ObjectRows {
    fn add(
        &mut self,
        chunk: &ElementChunk,
        i: usize,
        path: &Path,
        tally: &mut Tally,
    ) -> Result<()> {
        let img: ObjectsOfImage = chunk.parse(path, i)?;
        let image_id = image_id_of(img.image_id, img.id, path, chunk, i)?;
        for o in &img.objects {
            let Some(name) = o.name() else {
                tally.skip("objects_unnamed", || {
                    format!("object {} in image {image_id}", o.object_id)
                });
                continue;
            };
            if !has_box(o.bbox()) {
                tally.skip("objects_bad_box", || {
                    format!(
                        "object {} in image {image_id} has a zero, negative or out-of-range box",
                        o.object_id
                    )
                });
                continue;
            }
            self.image_id.append_value(image_id);
            self.object_id.append_value(o.object_id);
            self.name.append_value(name);
            match &o.names {
                Some(ns) => push_list(&mut self.names, ns.iter().map(|s| s.0.as_ref())),
                None => push_list(&mut self.names, [name]),
            }
            push_list(&mut self.synsets, strs(&o.synsets));
            self.bbox.push(o.bbox());
        }
        Ok(())
    }
    fn finish(mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.image_id.finish()),
            Arc::new(self.object_id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.names.finish()),
            Arc::new(self.synsets.finish()),
        ];
        self.bbox.finish(&mut cols);
        RecordBatch::try_new(objects_schema(), cols).expect("objects batch matches its schema")
    }
}

#[derive(Default)]
struct AttributeRows {
    image_id: Int64Builder,
    object_id: Int64Builder,
    attributes: ListBuilder<StringBuilder>,
}

impl PartBuilder for AttributeRows {
    fn add(&mut self, chunk: &ElementChunk, i: usize, path: &Path, _: &mut Tally) -> Result<()> {
        let img: AttributesOfImage = chunk.parse(path, i)?;
        let image_id = image_id_of(img.image_id, img.id, path, chunk, i)?;
        for o in img.attributes.iter().flatten() {
            self.image_id.append_value(image_id);
            self.object_id.append_value(o.object_id);
            push_list(&mut self.attributes, strs(&o.attributes));
        }
        Ok(())
    }
    fn finish(mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.image_id.finish()),
            Arc::new(self.object_id.finish()),
            Arc::new(self.attributes.finish()),
        ];
        RecordBatch::try_new(attributes_schema(), cols)
            .expect("attributes batch matches its schema")
    }
}

/// Elements per parallel part: fixed, so that batch boundaries (and so the bytes written) do not
/// depend on the thread count.
const PART_ELEMENTS: usize = 256;

/// A table written under its temporary name, with its counts and its source's BLAKE3.
struct Pending {
    file: AtomicFile,
    /// Rows written.
    rows: u64,
    /// Top-level elements of the JSON array read.
    elements: u64,
    /// Records skipped, by reason.
    tally: Tally,
    /// BLAKE3 of every byte of the source, as read; none for an absent optional source.
    digest: Option<String>,
}

/// Stream the JSON array at `src` into the Parquet table `dest`, left under its temporary
/// name.
fn stream_table<B: PartBuilder>(
    table: &VgTable,
    src: &Path,
    dest: &Path,
    block: usize,
    ui: &crate::ui::Ui,
) -> Result<Pending> {
    let (schema, key, duplicate) = ((table.schema)(), table.key, table.duplicate);
    let total = std::fs::metadata(src)
        .map_err(|e| Error::io("failed to read", src, e))?
        .len();
    let label = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = ui.progress(total, "bytes", &label);
    let (chunks, splitter) = spawn_splitter(src, block)?;
    let (tx, rx) = crossbeam_channel::bounded::<Vec<RecordBatch>>(2);
    let dest_owned = dest.to_path_buf();
    let writer = std::thread::Builder::new()
        .name("parquet-writer".into())
        .spawn(move || -> Result<(TableWriter, Tally)> {
            let mut w = TableWriter::create(&dest_owned, schema)?;
            let mut unique = UniqueIds::new(key, duplicate);
            for batches in rx {
                for b in &batches {
                    w.write(&unique.keep_first(b))?;
                }
            }
            Ok((w, unique.tally))
        })
        .map_err(|e| Error::io("failed to start a writer thread for", dest, e))?;

    let mut tally = Tally::default();
    let mut elements = 0u64;
    let mut failure: Option<Error> = None;
    for chunk in chunks.iter() {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        elements += chunk.elements.len() as u64;
        let parts: Vec<Range<usize>> = (0..chunk.elements.len())
            .step_by(PART_ELEMENTS)
            .map(|s| s..(s + PART_ELEMENTS).min(chunk.elements.len()))
            .collect();
        let built: Vec<Result<(RecordBatch, Tally)>> = parts
            .into_par_iter()
            .map(|range| {
                let mut b = B::default();
                let mut t = Tally::default();
                for i in range {
                    b.add(&chunk, i, src, &mut t)?;
                }
                Ok((b.finish(), t))
            })
            .collect();
        let mut batches = Vec::with_capacity(built.len());
        for part in built {
            match part {
                Ok((batch, t)) => {
                    tally.merge(t);
                    batches.push(batch);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if failure.is_some() {
            break;
        }
        bar.inc(chunk.data.len() as u64);
        if tx.send(batches).is_err() {
            break; // the writer failed; its error is reported below
        }
    }
    drop(tx);
    drop(chunks);
    let digest = splitter.join().ok().flatten();
    bar.finish_and_clear();
    let written = writer
        .join()
        .map_err(|_| Error::Internal("the Parquet writer thread panicked".into()))?;
    if let Some(e) = failure {
        return Err(e); // `written` is dropped: its temporary file is removed
    }
    let (written, duplicates) = written?;
    tally.merge(duplicates);
    let digest = digest.ok_or_else(|| {
        Error::Internal(format!(
            "the JSON splitter of {} stopped early",
            src.display()
        ))
    })?;
    let (file, rows) = written.close()?;
    Ok(Pending {
        file,
        rows,
        elements,
        tally,
        digest: Some(digest),
    })
}

/// The ids a table has written, to skip later rows that repeat one. Runs on the writer thread,
/// which sees the batches in file order, so "first" means first in the file.
struct UniqueIds {
    key: &'static str,
    reason: &'static str,
    seen: IdSet,
    tally: Tally,
}

/// A set of ids: a bitmap for the small non-negative ids that VG uses (a few million, so a few
/// hundred KiB), a hash set for the rest. Inserting 2.3 M relationship ids into a hash set, with
/// its rehashes as it grew, was 4 % of ingest.
#[derive(Default)]
struct IdSet {
    bits: Vec<u64>,
    others: rustc_hash::FxHashSet<i64>,
}

impl IdSet {
    /// Ids below this are kept in the bitmap (at most 32 MiB of it).
    const DENSE: i64 = 1 << 28;

    /// Whether `id` was absent (and is now present).
    fn insert(&mut self, id: i64) -> bool {
        if !(0..Self::DENSE).contains(&id) {
            return self.others.insert(id);
        }
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        if word >= self.bits.len() {
            self.bits.resize((word + 1).next_power_of_two(), 0);
        }
        let fresh = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        fresh
    }
}

impl UniqueIds {
    fn new(key: &'static str, reason: &'static str) -> Self {
        UniqueIds {
            key,
            reason,
            seen: Default::default(),
            tally: Tally::default(),
        }
    }

    /// `batch` without the rows whose id was written before (or earlier in it).
    fn keep_first(&mut self, batch: &RecordBatch) -> RecordBatch {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let ids = batch
            .column_by_name(self.key)
            .expect("every VG table has its key column")
            .as_primitive::<Int64Type>();
        let images = batch
            .column_by_name("image_id")
            .expect("every VG table has image_id")
            .as_primitive::<Int64Type>();
        let keep: arrow::array::BooleanArray = (0..batch.num_rows())
            .map(|r| {
                let fresh = self.seen.insert(ids.value(r));
                if !fresh {
                    let (key, id, image) = (self.key, ids.value(r), images.value(r));
                    self.tally.skip(self.reason, || {
                        format!("{key} {id} again (in image {image}); the first is kept")
                    });
                }
                Some(fresh)
            })
            .collect();
        if keep.true_count() == batch.num_rows() {
            return batch.clone();
        }
        arrow::compute::filter_record_batch(batch, &keep).expect("a mask of the batch's length")
    }
}

/// Run ingest: read the folder `vg`, write the four tables into `out_dir`.
pub fn ingest(
    vg: &Path,
    block_bytes: usize,
    out_dir: &Path,
    ui: &crate::ui::Ui,
) -> Result<StageReport> {
    let mut report = StageReport::default();
    let mut tally = Tally::default();
    let block = block_bytes.max(1 << 12);
    // All four tables are completed under temporary names before any is renamed into place, so
    // a malformed file commits no output at all.
    let mut pending = Vec::new();
    for t in &VG_TABLES {
        let src = vg.join(t.source);
        let dest = out_dir.join(t.table.file);
        let Pending {
            file,
            rows,
            elements,
            tally: tally_of_file,
            digest,
        } = if src.is_file() {
            (t.stream)(t, &src, &dest, block, ui)?
        } else if t.required {
            return Err(Error::io(
                "failed to open",
                &src,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        } else {
            report.notes.push(format!(
                "{} not found in the VG folder; {} is empty",
                t.source, t.table.file
            ));
            let (file, rows) = TableWriter::create(&dest, (t.schema)())?.close()?;
            Pending {
                file,
                rows,
                elements: 0,
                tally: Tally::default(),
                digest: None,
            }
        };
        if let Some(digest) = digest {
            report.input_hashes.insert(t.source.to_string(), digest);
        }
        report.count(t.counter, rows);
        report.count(&format!("{}_records", t.source), elements);
        report.table(t.table, Some(rows));
        tally.merge(tally_of_file);
        pending.push(file);
    }
    for file in pending {
        file.commit()?;
    }
    for (reason, n) in &tally.counts {
        report.count(&format!("skipped_{reason}"), *n);
        report.skipped += n;
        report.notes.push(format!(
            "skipped {n} record(s): {} (first: {})",
            reason.replace('_', " "),
            tally.first[reason]
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn the_id_set_answers_as_a_hash_set_does() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let edges = [
            0,
            1,
            63,
            64,
            65,
            IdSet::DENSE - 1,
            IdSet::DENSE,
            -1,
            i64::MIN,
            i64::MAX,
        ];
        let mut ids: Vec<i64> = edges.to_vec();
        ids.extend((0..20_000).map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(0..5_000),
            1 => rng.random_range(0..IdSet::DENSE + 10),
            2 => rng.random_range(-100..0),
            _ => rng.random::<i64>(),
        }));
        // Every id twice, in shuffled order.
        let mut twice: Vec<i64> = ids.iter().chain(&ids).copied().collect();
        for i in (1..twice.len()).rev() {
            twice.swap(i, rng.random_range(0..=i));
        }
        let (mut set, mut want) = (IdSet::default(), std::collections::HashSet::new());
        for id in twice {
            assert_eq!(set.insert(id), want.insert(id), "id {id}");
        }
    }

    /// A relationships.json element: mostly VG's shapes, often with one thing serde refuses or
    /// reads in its own way (nulls, repeats, wrong types, escapes, wide integers, unknown keys).
    fn random_element(rng: &mut rand_chacha::ChaCha8Rng) -> String {
        // Half the elements are VG's plain shapes; in the other half, each field may be odd.
        let odd = rng.random_range(0..2) == 0;
        const STRINGS: [&str; 8] = [
            r#""person""#,
            r#""man.n.01""#,
            r#""caf\u00e9 \"x\" \\ \/""#,
            r#""\ud83d\ude00 smile""#,
            r#""""#,
            r#""tab\there""#,
            r#""\ud800 lone""#,
            r#""bad \q escape""#,
        ];
        const INTS: [&str; 10] = [
            "0",
            "-0",
            "7",
            "-3",
            "1e2",
            "2.0",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "null",
        ];
        type Rng = rand_chacha::ChaCha8Rng;
        let rare = |rng: &mut Rng, n: u32| odd && rng.random_range(0..n) == 0;
        let text = |rng: &mut Rng| -> String {
            let i = if rare(rng, 6) {
                rng.random_range(0..STRINGS.len())
            } else {
                rng.random_range(0..2)
            };
            STRINGS[i].to_string()
        };
        let int = |rng: &mut Rng| -> String {
            if rare(rng, 12) {
                INTS[rng.random_range(0..INTS.len())].to_string()
            } else {
                rng.random_range(1..1000).to_string()
            }
        };
        let list = |rng: &mut Rng| -> String {
            match rng.random_range(0..14) {
                0 => "null".into(),
                1 if odd => "[1]".into(),
                2 if odd => "\"x\"".into(),
                _ => {
                    let n = rng.random_range(0..3);
                    let items: Vec<String> = (0..n).map(|_| text(rng)).collect();
                    format!("[{}]", items.join(","))
                }
            }
        };
        let shuffle = |rng: &mut Rng, f: &mut Vec<String>| {
            for i in (1..f.len()).rev() {
                f.swap(i, rng.random_range(0..=i));
            }
        };
        let side = |rng: &mut Rng| -> String {
            let mut f: Vec<String> = Vec::new();
            for key in ["object_id", "x", "y", "w", "h"] {
                if !rare(rng, 40) {
                    f.push(format!("\"{key}\":{}", int(rng)));
                }
            }
            match rng.random_range(0..8) {
                0 => f.push(format!("\"names\":{}", list(rng))),
                1 => {}
                2 => f.push("\"name\":null".into()),
                _ => f.push(format!("\"name\":{}", text(rng))),
            }
            if rng.random_range(0..6) != 0 {
                f.push(format!("\"synsets\":{}", list(rng)));
            }
            match rng.random_range(0..30) {
                0 if odd => f.push("\"x\":5".into()),
                1 if odd => f.push("\"extra\":{\"deep\":[1,2]}".into()),
                2 => f.push("\"extra\":\"scalar\"".into()),
                3 => f.push("\"attributes\":[\"red\"]".into()),
                4 if odd => f.push("\"\\u0078\":1".into()),
                _ => {}
            }
            shuffle(rng, &mut f);
            format!("{{{}}}", f.join(","))
        };
        let n = rng.random_range(0..4);
        let rels: Vec<String> = (0..n)
            .map(|_| {
                let predicate = if rare(rng, 30) {
                    "null".to_string()
                } else {
                    text(rng)
                };
                let mut f = vec![
                    format!("\"relationship_id\":{}", int(rng)),
                    format!("\"predicate\":{predicate}"),
                    format!("\"subject\":{}", side(rng)),
                    format!("\"object\":{}", side(rng)),
                ];
                if rng.random_range(0..3) != 0 {
                    f.push(format!("\"synsets\":{}", list(rng)));
                }
                if rare(rng, 25) {
                    f.remove(rng.random_range(0..f.len()));
                }
                if rare(rng, 25) {
                    f.push("\"predicate\":\"again\"".into());
                }
                shuffle(rng, &mut f);
                format!("{{{}}}", f.join(", "))
            })
            .collect();
        let mut fields: Vec<String> = Vec::new();
        match rng.random_range(0..20) {
            0 if odd => {}
            1 if odd => fields.push("\"relationships\":null".into()),
            _ => fields.push(format!("\"relationships\":[{}]", rels.join(","))),
        }
        match rng.random_range(0..6) {
            0 => fields.push(format!("\"id\":{}", int(rng))),
            1 => {}
            _ => fields.push(format!("\"image_id\":{}", int(rng))),
        }
        if rare(rng, 15) {
            fields.push("\"image_id\":null".into());
        }
        if rare(rng, 15) {
            fields.push("\"note\":[{\"a\":1}]".into());
        }
        if rng.random_range(0..2) == 0 {
            fields.reverse();
        }
        format!("{{{}}}", fields.join(" , "))
    }

    type Read = (
        RecordBatch,
        (Option<i64>, Option<i64>),
        Vec<(&'static str, i64)>,
    );

    /// The rows (with `image_id` 0) and the skips.
    fn finish_cols(mut cols: RelationshipCols) -> (RecordBatch, Vec<(&'static str, i64)>) {
        let rows = cols.relationship_id.len();
        cols.image_id.append_value_n(0, rows);
        let skipped = std::mem::take(&mut cols.skipped);
        (cols.finish(), skipped)
    }

    /// The element read by the tape walk alone or, where it declined, the rows it appended.
    fn read_by_tape(json: &str) -> std::result::Result<Read, Box<RelationshipCols>> {
        let mut cols = RelationshipCols::default();
        match tape::TapeReader::default().read(json.as_bytes(), &mut cols) {
            Some(ids) => {
                let (rows, skipped) = finish_cols(cols);
                Ok((rows, ids, skipped))
            }
            None => Err(Box::new(cols)),
        }
    }

    /// The element read by serde into `cols`, which holds what the tape walk appended of it.
    fn read_by_serde_after(json: &str, mut cols: RelationshipCols) -> Result<Read> {
        let chunk = ElementChunk {
            offset: 0,
            data: json.as_bytes().to_vec(),
            elements: std::iter::once(0..json.len()).collect(),
        };
        let ids = chunk.parse_seed(
            Path::new("relationships.json"),
            0,
            RelationshipsSeed(RelationshipList { rows: &mut cols }),
        )?;
        let (rows, skipped) = finish_cols(cols);
        Ok((rows, ids, skipped))
    }

    fn read_by_serde(json: &str) -> Result<Read> {
        read_by_serde_after(json, RelationshipCols::default())
    }

    /// The element read as ingest reads it: the tape walk, then serde where the walk declines.
    fn read_by_both(json: &str) -> Result<Read> {
        read_by_tape(json).or_else(|declined| read_by_serde_after(json, *declined))
    }

    #[test]
    fn the_tape_reads_what_serde_reads_and_declines_the_rest() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let (mut read, mut declined_valid, mut declined_invalid) = (0, 0, 0);
        let mut declined_after_rows = 0;
        for case in 0..20_000 {
            let json = random_element(&mut rng);
            let serde = read_by_serde(&json);
            match (read_by_tape(&json), &serde) {
                (Ok(tape), Ok(serde)) => {
                    assert_eq!(tape.0, serde.0, "case {case}: rows differ for {json}");
                    assert_eq!(
                        (&tape.1, &tape.2),
                        (&serde.1, &serde.2),
                        "case {case}: {json}"
                    );
                    read += 1;
                }
                (Ok(_), Err(e)) => {
                    panic!("case {case}: the tape read what serde refuses ({e}): {json}")
                }
                (Err(declined), serde) => {
                    declined_after_rows += usize::from(declined.in_element() > 0);
                    match serde {
                        Ok(_) => declined_valid += 1,
                        Err(_) => declined_invalid += 1,
                    }
                }
            }
            // Ingest's reading (the rows the walk appended, then serde's) is serde's own, rows,
            // skips and error alike.
            match (read_by_both(&json), serde) {
                (Ok(both), Ok(serde)) => {
                    assert_eq!(both.0, serde.0, "case {case}: rows differ for {json}");
                    assert_eq!((both.1, both.2), (serde.1, serde.2), "case {case}: {json}");
                }
                (Err(both), Err(serde)) => {
                    assert_eq!(both.to_string(), serde.to_string(), "case {case}: {json}")
                }
                (both, serde) => panic!(
                    "case {case}: ingest read {:?} where serde read {:?}: {json}",
                    both.err(),
                    serde.err()
                ),
            }
        }
        // Most elements are VG's shapes, which the tape must read itself; the rest must exercise
        // both kinds of decline.
        assert!(read > 9_000, "the tape read only {read}");
        assert!(
            declined_invalid > 1_000,
            "{declined_invalid} invalid elements"
        );
        assert!(
            declined_valid > 100,
            "{declined_valid} valid elements declined"
        );
        assert!(
            declined_after_rows > 100,
            "{declined_after_rows} elements declined after a relationship was appended"
        );
    }

    #[test]
    fn the_tape_declines_each_thing_serde_refuses() {
        let ok = r#"{"relationships":[{"relationship_id":1,"predicate":"on","synsets":[],"subject":{"object_id":2,"x":1,"y":1,"w":3,"h":4,"name":"cat","synsets":["cat.n.01"]},"object":{"object_id":3,"x":0,"y":0,"w":5,"h":6,"names":["mat"]}}],"image_id":9}"#;
        assert!(read_by_tape(ok).is_ok() && read_by_serde(ok).is_ok());
        for (from, to) in [
            (
                r#""relationship_id":1,"#,
                r#""relationship_id":1,"relationship_id":2,"#,
            ),
            (r#""relationship_id":1,"#, ""),
            (r#""relationship_id":1"#, r#""relationship_id":1.0"#),
            (
                r#""relationship_id":1"#,
                r#""relationship_id":9223372036854775808"#,
            ),
            (r#""predicate":"on""#, r#""predicate":null"#),
            (r#""x":1"#, r#""x":-0"#),
            (r#""synsets":[]"#, r#""synsets":[null]"#),
            (r#""x":1,"y":1"#, r#""x":1,"x":1,"y":1"#),
            (r#""name":"cat""#, r#""name":"cat","name":"dog""#),
            (r#""image_id":9"#, r#""image_id":"9""#),
            (
                r#"[{"relationship_id""#,
                r#"[{"a":[[[]]]},{"relationship_id""#,
            ),
            (r#""cat""#, r#""\ud800""#),
            (r#""cat""#, "\"c\u{1}t\""),
        ] {
            let json = ok.replacen(from, to, 1);
            assert_ne!(json, ok, "{from} is in the element");
            assert!(read_by_tape(&json).is_err(), "the tape read {json}");
        }
        // What serde reads its own way, the tape reads the same way.
        for (from, to) in [
            (r#""image_id":9"#, r#""id":9"#),
            (r#""image_id":9"#, r#""image_id":null,"id":4"#),
            (r#""synsets":[]"#, r#""synsets":null"#),
            (r#""synsets":[],"#, ""),
            (r#""name":"cat""#, r#""name":"c\"a\\t\u00e9\ud83d\ude00""#),
            (r#""x":1"#, r#""x":0,"note":2.5e3,"flag":true,"t":"a-b""#),
        ] {
            let json = ok.replacen(from, to, 1);
            let (tape, serde) = (read_by_tape(&json), read_by_serde(&json));
            match (tape, serde) {
                (Ok(t), Ok(s)) => assert_eq!((t.0, t.1), (s.0, s.1), "{json}"),
                (t, s) => panic!("tape {} serde {:?} for {json}", t.is_ok(), s.err()),
            }
        }
    }
}
