//! `triplets`: SIMAT triplet extraction from ingested Visual Genome relationships.
//!
//! A relationship becomes a *region* when its subject's name is in the subject vocabulary, its
//! predicate is a surface form of one of the vocabulary's relations, and the union of the
//! subject and object boxes is at least `min_region_side` pixels on both sides. Names and
//! predicates are compared after lower-casing, trimming and collapsing inner white space. A pair
//! annotated several times with the same relation (same image, subject object, object object)
//! gives one region: the one with the lowest `relationship_id`, with `n_annotations` counting
//! the merged ones.
//!
//! Regions are sorted by `(image_id, subj_id, obj_id, rel)` and numbered in that order, and
//! triplets by `(subj, rel, obj)`, so ids depend only on the input, never on the thread count.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, Int64Builder, ListBuilder, RecordBatch,
    StringArray, StringBuilder,
};
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result, WithPath};
use crate::io::{column, i32_column, i64_column, read_table, str_column, write_table};
use crate::tables;
use crate::tables::regions::{regions_schema, triplets_schema};
use crate::vocabulary::{normalise, Vocabulary};

/// Configuration of the triplets stage: a vocabulary file, and any of its keys given inline (a
/// pipeline's `[triplets]` section) over it. Without either, SIMAT's vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TripletsConfig {
    /// A vocabulary TOML file (subjects, objects, relations, captions, min_region_side), or a
    /// pipeline file with a `[triplets]` section. Default: SIMAT's vocabulary.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab: Option<PathBuf>,
    /// Minimum width and height, in pixels, of the union of the subject and object boxes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_region_side: Option<i64>,
    /// Subject names kept. Pipeline key only: a list has no flag form (use --vocab).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Vec<String>>,
    /// Object names kept; empty keeps every object. Pipeline key only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<String>>,
    /// Each canonical relation with its surface forms. Pipeline key only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relations: Option<BTreeMap<String, Vec<String>>>,
    /// Caption templates (`default`, or per relation). Pipeline key only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captions: Option<BTreeMap<String, String>>,
}

/// The triplets stage.
#[derive(Debug, Clone)]
pub struct Triplets {
    /// The vocabulary.
    pub vocabulary: Vocabulary,
}

impl StageDef for Triplets {
    const NAME: &'static str = "triplets";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "SIMAT triplet extraction into RUN/triplets/{regions,triplets}.parquet";
    const PROVIDES: &'static [&'static TableDecl] = &[&tables::REGIONS, &tables::TRIPLETS];
    const TOML_ONLY: &'static [&'static str] = &["subjects", "objects", "relations", "captions"];
    type Config = TripletsConfig;
    fn resolve_paths(c: &mut TripletsConfig, base: &Path) {
        if let Some(p) = &mut c.vocab {
            crate::config::resolve(p, base);
        }
    }
    fn build(c: TripletsConfig) -> Result<Self> {
        let mut v = match &c.vocab {
            Some(p) => {
                let mut checks = Checks::<Self>::new();
                if !checks.path("vocab", p, PathKind::File) {
                    return checks.finish(Triplets {
                        vocabulary: Vocabulary::default(),
                    });
                }
                Vocabulary::load(p)
                    .map_err(|e| crate::engine::bad::<Self>("vocab", e.to_string()))?
            }
            None => Vocabulary::default(),
        };
        if let Some(x) = c.min_region_side {
            v.min_region_side = x;
        }
        if let Some(x) = c.subjects {
            v.subjects = x;
        }
        if let Some(x) = c.objects {
            v.objects = x;
        }
        if let Some(x) = c.relations {
            v.relations = x;
        }
        if let Some(x) = c.captions {
            v.captions = x;
        }
        if let Some((key, message)) = v.problem() {
            return Err(crate::engine::bad::<Self>(key, message));
        }
        Ok(Triplets { vocabulary: v })
    }
    fn summary(run_dir: &Path) -> Result<Option<String>> {
        let path = run_dir.join(Self::NAME).join(tables::TRIPLETS.file);
        let batch = crate::io::read_all(&path)?;
        let n = batch.num_rows();
        let n_regions = i64_column(&batch, "n_regions", &path)?;
        let caption = str_column(&batch, "caption", &path)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(n_regions.value(i)));
        let mut out = format!("{n} triplets; the most frequent:");
        for &i in order.iter().take(8) {
            out.push_str(&format!(
                "\n  {:>6} regions  {}",
                n_regions.value(i),
                caption.value(i)
            ));
        }
        Ok(Some(out))
    }
    fn needs(&self) -> Vec<Need> {
        vec![
            Need::of(&tables::RELATIONSHIPS),
            Need::of(&tables::ATTRIBUTES),
        ]
    }
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::to_value(&self.vocabulary).expect("config serialises")
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        extract(
            &self.vocabulary,
            &ctx.input(&tables::RELATIONSHIPS)?,
            &ctx.input(&tables::ATTRIBUTES)?,
            &ctx.stage_dir,
        )
    }
}

type Bbox = [i32; 4];

#[derive(Debug, Clone)]
struct Region {
    image_id: i64,
    subj_id: i64,
    obj_id: i64,
    rel: Arc<str>,
    relationship_id: i64,
    n_annotations: i64,
    subj: String,
    obj: String,
    predicate: String,
    subj_box: Bbox,
    obj_box: Bbox,
}

fn union(a: &Bbox, b: &Bbox) -> Bbox {
    [
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[2].max(b[2]),
        a[3].max(b[3]),
    ]
}

/// Both boxes and the width and height of their union, when all of it fits i32 (computed in
/// i64, so nothing wraps).
fn in_range(subj: Option<Bbox>, obj: Option<Bbox>) -> Option<(Bbox, Bbox, [i64; 2])> {
    let (subj, obj) = (subj?, obj?);
    let u = union(&subj, &obj);
    let side = [u[2] as i64 - u[0] as i64, u[3] as i64 - u[1] as i64];
    side.iter()
        .all(|&d| d <= i32::MAX as i64)
        .then_some((subj, obj, side))
}

/// Lookups built once from the vocabulary.
struct Matcher {
    subjects: HashSet<String>,
    objects: HashSet<String>,
    surface: HashMap<String, Arc<str>>,
    min_side: i64,
}

impl Matcher {
    fn new(config: &Vocabulary) -> Self {
        let mut surface = HashMap::new();
        for (rel, forms) in &config.relations {
            let canonical: Arc<str> = Arc::from(rel.as_str());
            surface.insert(normalise(rel), canonical.clone());
            for f in forms {
                surface.insert(normalise(f), canonical.clone());
            }
        }
        Matcher {
            subjects: config.subjects.iter().map(|s| normalise(s)).collect(),
            objects: config.objects.iter().map(|s| normalise(s)).collect(),
            surface,
            min_side: config.min_region_side,
        }
    }
}

/// The four box columns of one side (`subj_` or `obj_`) of a relationships batch.
struct BoxColumns<'a>([&'a Int32Array; 4]);

impl<'a> BoxColumns<'a> {
    fn of(batch: &'a RecordBatch, side: &str, path: &Path) -> Result<Self> {
        let c = |k: &str| i32_column(batch, &format!("{side}_{k}"), path);
        Ok(BoxColumns([c("x")?, c("y")?, c("w")?, c("h")?]))
    }

    /// Row `i` as `x1, y1, x2, y2`, or `None` when `x + w` or `y + h` leaves i32 (the box
    /// arithmetic is done in i64, so nothing wraps or saturates silently).
    fn xyxy(&self, i: usize) -> Option<Bbox> {
        let [x, y, w, h] = self.0.map(|c| c.value(i) as i64);
        Some([
            x as i32,
            y as i32,
            i32::try_from(x + w).ok()?,
            i32::try_from(y + h).ok()?,
        ])
    }
}

const REL_COLUMNS: &[&str] = &[
    "image_id",
    "relationship_id",
    "predicate",
    "subj_id",
    "subj_name",
    "subj_x",
    "subj_y",
    "subj_w",
    "subj_h",
    "obj_id",
    "obj_name",
    "obj_x",
    "obj_y",
    "obj_w",
    "obj_h",
];

/// Run extraction: read ingest's tables, write `regions.parquet` and `triplets.parquet`.
pub fn extract(
    config: &Vocabulary,
    relationships: &Path,
    attributes: &Path,
    out_dir: &Path,
) -> Result<StageReport> {
    let matcher = Matcher::new(config);
    let mut report = StageReport::default();
    let mut regions: HashMap<(i64, i64, i64, Arc<str>), Region> = HashMap::new();
    let (mut read, mut no_subject, mut no_relation, mut no_object, mut small, mut merged) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut out_of_range, mut out_of_range_first) = (0u64, None::<i64>);
    for batch in read_table(relationships, REL_COLUMNS)? {
        let batch = batch.map_err(|e| e.with_path(relationships))?;
        let image_id = i64_column(&batch, "image_id", relationships)?;
        let rel_id = i64_column(&batch, "relationship_id", relationships)?;
        let predicate = str_column(&batch, "predicate", relationships)?;
        let subj_id = i64_column(&batch, "subj_id", relationships)?;
        let subj_name = str_column(&batch, "subj_name", relationships)?;
        let obj_id = i64_column(&batch, "obj_id", relationships)?;
        let obj_name = str_column(&batch, "obj_name", relationships)?;
        let subj_boxes = BoxColumns::of(&batch, "subj", relationships)?;
        let obj_boxes = BoxColumns::of(&batch, "obj", relationships)?;
        for i in 0..batch.num_rows() {
            read += 1;
            let subj = normalise(subj_name.value(i));
            if !matcher.subjects.contains(&subj) {
                no_subject += 1;
                continue;
            }
            let Some(rel) = matcher.surface.get(&normalise(predicate.value(i))) else {
                no_relation += 1;
                continue;
            };
            let obj = normalise(obj_name.value(i));
            if !matcher.objects.is_empty() && !matcher.objects.contains(&obj) {
                no_object += 1;
                continue;
            }
            let Some((subj_box, obj_box, [uw, uh])) =
                in_range(subj_boxes.xyxy(i), obj_boxes.xyxy(i))
            else {
                out_of_range += 1;
                out_of_range_first.get_or_insert(rel_id.value(i));
                continue;
            };
            if uw < matcher.min_side || uh < matcher.min_side {
                small += 1;
                continue;
            }
            let region = Region {
                image_id: image_id.value(i),
                subj_id: subj_id.value(i),
                obj_id: obj_id.value(i),
                rel: rel.clone(),
                relationship_id: rel_id.value(i),
                n_annotations: 1,
                subj,
                obj,
                predicate: predicate.value(i).to_string(),
                subj_box,
                obj_box,
            };
            let key = (region.image_id, region.subj_id, region.obj_id, rel.clone());
            match regions.get_mut(&key) {
                None => {
                    regions.insert(key, region);
                }
                Some(kept) => {
                    merged += 1;
                    let n = kept.n_annotations + 1;
                    if region.relationship_id < kept.relationship_id {
                        *kept = region;
                    }
                    kept.n_annotations = n;
                }
            }
        }
    }
    let mut regions: Vec<Region> = regions.into_values().collect();
    regions.sort_unstable_by(|a, b| {
        (a.image_id, a.subj_id, a.obj_id, &a.rel).cmp(&(b.image_id, b.subj_id, b.obj_id, &b.rel))
    });

    let attrs = load_attributes(attributes, &regions)?;

    // Triplets, numbered in (subj, rel, obj) order.
    let mut by_triplet: BTreeMap<(&str, &str, &str), (u64, BTreeSet<i64>)> = BTreeMap::new();
    for r in &regions {
        let e = by_triplet
            .entry((r.subj.as_str(), &r.rel, r.obj.as_str()))
            .or_default();
        e.0 += 1;
        e.1.insert(r.image_id);
    }
    let triplet_ids: HashMap<(&str, &str, &str), i64> = by_triplet
        .keys()
        .enumerate()
        .map(|(i, k)| (*k, i as i64))
        .collect();

    let regions_batch = regions_batch(&regions, &triplet_ids, &attrs);
    let n_regions = write_table(&out_dir.join(tables::REGIONS.file), &regions_batch)?;

    let mut t_cols = TripletCols::default();
    for ((subj, rel, obj), (n, images)) in &by_triplet {
        t_cols.push(
            triplet_ids[&(*subj, *rel, *obj)],
            subj,
            rel,
            obj,
            *n as i64,
            images.len() as i64,
            &config.caption(subj, rel, obj),
        );
    }
    let n_triplets = write_table(&out_dir.join(tables::TRIPLETS.file), &t_cols.finish())?;

    report.table(&tables::REGIONS, Some(n_regions));
    report.table(&tables::TRIPLETS, Some(n_triplets));
    report.count("relationships_read", read);
    report.count("rejected_subject_not_in_vocabulary", no_subject);
    report.count("rejected_predicate_not_in_vocabulary", no_relation);
    report.count("rejected_object_not_in_vocabulary", no_object);
    report.count("rejected_region_too_small", small);
    report.count("skipped_region_out_of_range", out_of_range);
    if let Some(first) = out_of_range_first {
        report.skipped += out_of_range;
        report.notes.push(format!(
            "skipped {out_of_range} region(s) whose box or union box leaves the 32-bit pixel range (first: relationship {first})"
        ));
    }
    report.count("duplicates_merged", merged);
    report.count("regions", n_regions);
    report.count("triplets", n_triplets);
    Ok(report)
}

/// Normalised, de-duplicated attributes of the objects that appear in `regions`.
fn load_attributes(path: &Path, regions: &[Region]) -> Result<HashMap<(i64, i64), Vec<String>>> {
    let wanted: HashSet<(i64, i64)> = regions
        .iter()
        .flat_map(|r| [(r.image_id, r.subj_id), (r.image_id, r.obj_id)])
        .collect();
    let mut out: HashMap<(i64, i64), Vec<String>> = HashMap::new();
    for batch in read_table(path, &["image_id", "object_id", "attributes"])? {
        let batch = batch.map_err(|e| e.with_path(path))?;
        let image_id = i64_column(&batch, "image_id", path)?;
        let object_id = i64_column(&batch, "object_id", path)?;
        let lists = column(&batch, "attributes", path)?
            .as_list_opt::<i32>()
            .ok_or_else(|| Error::columnar(path, "column `attributes` is not a list"))?;
        for i in 0..batch.num_rows() {
            let key = (image_id.value(i), object_id.value(i));
            if !wanted.contains(&key) {
                continue;
            }
            let values = lists.value(i);
            let values = values.as_string::<i32>();
            let entry = out.entry(key).or_default();
            for j in 0..values.len() {
                if values.is_null(j) {
                    continue;
                }
                let a = normalise(values.value(j));
                if !a.is_empty() && !entry.contains(&a) {
                    entry.push(a);
                }
            }
        }
    }
    Ok(out)
}

fn regions_batch(
    regions: &[Region],
    triplet_ids: &HashMap<(&str, &str, &str), i64>,
    attrs: &HashMap<(i64, i64), Vec<String>>,
) -> RecordBatch {
    let ints = |f: &dyn Fn(&Region) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(regions.iter().map(f)))
    };
    let strs = |f: &dyn Fn(&Region) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(regions.iter().map(f)))
    };
    let coord = |f: &dyn Fn(&Region) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(regions.iter().map(f)))
    };
    let attr_list = |side: fn(&Region) -> i64| -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for r in regions {
            for a in attrs.get(&(r.image_id, side(r))).into_iter().flatten() {
                b.values().append_value(a);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..regions.len() as i64)),
        ints(&|r| r.image_id),
        ints(&|r| r.subj_id),
        ints(&|r| r.obj_id),
        ints(&|r| r.relationship_id),
        ints(&|r| r.n_annotations),
        ints(&|r| triplet_ids[&(r.subj.as_str(), &*r.rel, r.obj.as_str())]),
        strs(&|r| &r.subj),
        strs(&|r| &r.rel),
        strs(&|r| &r.obj),
        strs(&|r| &r.predicate),
        attr_list(|r| r.subj_id),
        attr_list(|r| r.obj_id),
    ];
    for k in 0..4 {
        cols.push(coord(&|r| r.subj_box[k]));
    }
    for k in 0..4 {
        cols.push(coord(&|r| r.obj_box[k]));
    }
    for k in 0..4 {
        cols.push(coord(&|r| union(&r.subj_box, &r.obj_box)[k]));
    }
    RecordBatch::try_new(regions_schema(), cols).expect("regions batch matches its schema")
}

#[derive(Default)]
struct TripletCols {
    id: Int64Builder,
    subj: StringBuilder,
    rel: StringBuilder,
    obj: StringBuilder,
    n_regions: Int64Builder,
    n_images: Int64Builder,
    caption: StringBuilder,
}

impl TripletCols {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, id: i64, subj: &str, rel: &str, obj: &str, n: i64, imgs: i64, cap: &str) {
        self.id.append_value(id);
        self.subj.append_value(subj);
        self.rel.append_value(rel);
        self.obj.append_value(obj);
        self.n_regions.append_value(n);
        self.n_images.append_value(imgs);
        self.caption.append_value(cap);
    }
    fn finish(mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.subj.finish()),
            Arc::new(self.rel.finish()),
            Arc::new(self.obj.finish()),
            Arc::new(self.n_regions.finish()),
            Arc::new(self.n_images.finish()),
            Arc::new(self.caption.finish()),
        ];
        RecordBatch::try_new(triplets_schema(), cols).expect("triplets batch matches its schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::*;

    #[test]
    fn normalise_lowercases_trims_and_collapses() {
        assert_eq!(normalise("  Sitting   ON\tTop of "), "sitting on top of");
        assert_eq!(normalise(""), "");
    }

    #[test]
    fn captions_choose_and_fix_articles() {
        assert_eq!(
            render_caption(DEFAULT_CAPTION, "cat", "sitting on a", "bench"),
            "A cat sitting on a bench."
        );
        assert_eq!(
            render_caption(DEFAULT_CAPTION, "cat", "sitting on a", "armchair"),
            "A cat sitting on an armchair."
        );
        assert_eq!(
            render_caption(DEFAULT_CAPTION, "dog", "eating from", "owl"),
            "A dog eating from an owl."
        );
        assert_eq!(
            render_caption("{subj} {rel} the {obj}", "people", "waiting at", "bus stop"),
            "People waiting at the bus stop"
        );
    }

    #[test]
    fn default_vocabulary_is_simat() {
        let v = Vocabulary::default();
        assert_eq!(v.min_region_side, 32);
        assert_eq!(v.relations.len(), 20);
        assert!(v.subjects.contains(&"giraffe".to_string()));
    }

    #[test]
    fn ambiguous_surface_forms_are_rejected() {
        let text = r#"subjects = ["cat"]
            [relations]
            "on" = ["sitting on"]
            "sits" = ["Sitting  on"]"#;
        let err = Vocabulary::from_toml_str(text, Path::new("v.toml")).unwrap_err();
        assert!(err.to_string().contains("listed under both"), "{err}");
    }
}
