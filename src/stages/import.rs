//! `import-simat`: the official SIMAT release into the run's tables.
//!
//! Reads `retrieval_db.tsv`, `triplets.csv`, `captions.txt` and `transfos.csv` and writes, under
//! `RUN/import/`, the same tables a regenerated benchmark has: `regions.parquet`,
//! `triplets.parquet`, `dataset.parquet` and `queries.parquet`. Facts of the release this
//! relies on, each checked row by row with errors that name the row:
//!
//! - images are numbered by **`triplets.csv`'s `dataset_id` column**, as the release's
//!   `eval.py` numbers them (at its last commit, the one that reproduces the paper):
//!   `img_embs_stacked[i]` is the embedding of the region whose `dataset_id` is `i`, the query
//!   image and its excluded self are `rid2did[region_id]`, and the rows of the OSCAR matrix
//!   follow the same numbering. The column must number the regions `0..N-1`, each once;
//! - `transfos.csv`'s `dataset_id` is the row of the query's region in `triplets.csv`, a
//!   different order on 84 % of rows (indexing by it was the bug of the release's issue #3). It
//!   is checked against the row and otherwise unused; the row is kept in `dataset.parquet` as
//!   `triplets_row`;
//! - caption ids (`query_ids`, `target_ids`) number the distinct triplets of `triplets.csv` in
//!   order of first appearance (row order), which is the line order of `captions.txt`;
//! - `is_test` is constant per region.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::write_table;
use crate::release::{column, csv_reader, field, parse_box, RELEASE_FILES};
use crate::tables;
use crate::tables::dataset::{Dataset, Queries, Slot};

/// Configuration of `import-simat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {
    /// The release folder (retrieval_db.tsv, triplets.csv, captions.txt, transfos.csv). Not
    /// hashed: the files' contents are.
    #[arg(long)]
    pub release: Option<PathBuf>,
}

/// The import stage: the official release as the run's regions, triplets, dataset and queries.
#[derive(Debug, Clone)]
pub struct Import {
    /// The release folder.
    pub release: PathBuf,
}

impl StageDef for Import {
    const NAME: &'static str = "import";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "The official SIMAT release (retrieval_db.tsv, triplets.csv, captions.txt, transfos.csv) into RUN/import/{regions,triplets,dataset,queries}.parquet";
    const ALIASES: &'static [&'static str] = &["import-simat"];
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::REGIONS,
        &tables::TRIPLETS,
        &tables::DATASET,
        &tables::QUERIES,
    ];
    type Config = ImportConfig;
    fn resolve_paths(c: &mut ImportConfig, base: &Path) {
        if let Some(p) = &mut c.release {
            crate::config::resolve(p, base);
        }
    }
    fn build(c: ImportConfig) -> Result<Self> {
        let release = c.release.ok_or_else(|| {
            crate::engine::bad::<Self>("release", "is required: the release's folder")
        })?;
        let mut checks = Checks::<Self>::new();
        if checks.path("release", &release, PathKind::Folder) {
            let missing: Vec<&str> = RELEASE_FILES
                .iter()
                .copied()
                .filter(|f| !release.join(f).is_file())
                .collect();
            if !missing.is_empty() {
                checks.bad(
                    "release",
                    format!(
                        "`{}` is not the SIMAT release folder: it lacks {}",
                        release.display(),
                        missing.join(", ")
                    ),
                );
            }
        }
        checks.finish(Import { release })
    }
    fn needs(&self) -> Vec<Need> {
        vec![]
    }
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        RELEASE_FILES
            .iter()
            .map(|f| {
                let p = self.release.join(f);
                if p.is_file() {
                    Ok((f.to_string(), p))
                } else {
                    Err(Error::input_missing(
                        Self::NAME,
                        "release file",
                        &p,
                        &format!(
                            "--release (`release` in [import]) must name the SIMAT release folder ({})",
                            RELEASE_FILES.join(", ")
                        ),
                    ))
                }
            })
            .collect()
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        import(&self.release, &ctx.stage_dir)
    }
}

struct DbRegion {
    image_id: i64,
    subj_id: i64,
    obj_id: i64,
    words: [String; 3],
    attrs: [Vec<String>; 2],
    boxes: [[i32; 4]; 3],
}

fn split_attrs(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Run the import.
pub fn import(release: &Path, out_dir: &Path) -> Result<StageReport> {
    // retrieval_db.tsv: every candidate region.
    let db_path = release.join("retrieval_db.tsv");
    let mut rd = csv_reader(&db_path, b'\t')?;
    let h = rd
        .headers()
        .map_err(|e| Error::data(&db_path, e.to_string()))?
        .clone();
    let c: Vec<usize> = [
        "region_id",
        "image_id",
        "subj_attr",
        "subj",
        "rel",
        "obj_attr",
        "obj",
        "subj_id",
        "obj_id",
        "subj_bbox",
        "obj_bbox",
        "bbox",
    ]
    .iter()
    .map(|n| column(&h, n, &db_path))
    .collect::<Result<_>>()?;
    let mut db: Vec<(i64, DbRegion)> = Vec::new();
    let mut db_index: HashMap<i64, usize> = HashMap::new();
    for (row, rec) in rd.records().enumerate() {
        let row = row + 1;
        let rec = rec.map_err(|e| Error::data(&db_path, format!("row {row}: {e}")))?;
        let region_id: i64 = field(&rec, c[0], "region_id", row, &db_path)?;
        let r = DbRegion {
            image_id: field(&rec, c[1], "image_id", row, &db_path)?,
            subj_id: field(&rec, c[7], "subj_id", row, &db_path)?,
            obj_id: field(&rec, c[8], "obj_id", row, &db_path)?,
            words: [
                rec[c[3]].to_string(),
                rec[c[4]].to_string(),
                rec[c[6]].to_string(),
            ],
            attrs: [split_attrs(&rec[c[2]]), split_attrs(&rec[c[5]])],
            boxes: [
                parse_box(&rec[c[9]], "subj_bbox", row, &db_path)?,
                parse_box(&rec[c[10]], "obj_bbox", row, &db_path)?,
                parse_box(&rec[c[11]], "bbox", row, &db_path)?,
            ],
        };
        if db_index.insert(region_id, db.len()).is_some() {
            return Err(Error::data(
                &db_path,
                format!("row {row}: region_id {region_id} appears twice"),
            ));
        }
        db.push((region_id, r));
    }

    // captions.txt: line number = caption id.
    let cap_path = release.join("captions.txt");
    let captions: Vec<String> = std::fs::read_to_string(&cap_path)
        .map_err(|e| Error::io("failed to read", &cap_path, e))?
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect();

    // triplets.csv: the dataset, in row order.
    let tr_path = release.join("triplets.csv");
    let mut rd = csv_reader(&tr_path, b',')?;
    let h = rd
        .headers()
        .map_err(|e| Error::data(&tr_path, e.to_string()))?
        .clone();
    let (ci, cs, cr, co, cd) = (
        column(&h, "region_id", &tr_path)?,
        column(&h, "subj", &tr_path)?,
        column(&h, "rel", &tr_path)?,
        column(&h, "obj", &tr_path)?,
        column(&h, "dataset_id", &tr_path)?,
    );
    // Built in row order, then stored in dataset_id order.
    let mut by_row = Dataset::default();
    let mut dataset_id_of_row: Vec<i64> = Vec::new();
    let mut triplet_ids: HashMap<[String; 3], i64> = HashMap::new();
    let mut triplet_words: Vec<[String; 3]> = Vec::new();
    let mut row_of_region: HashMap<i64, usize> = HashMap::new();
    for (row, rec) in rd.records().enumerate() {
        let line = row + 1;
        let rec = rec.map_err(|e| Error::data(&tr_path, format!("row {line}: {e}")))?;
        let region_id: i64 = field(&rec, ci, "region_id", line, &tr_path)?;
        dataset_id_of_row.push(field(&rec, cd, "dataset_id", line, &tr_path)?);
        let words = [
            rec[cs].to_string(),
            rec[cr].to_string(),
            rec[co].to_string(),
        ];
        let Some(&k) = db_index.get(&region_id) else {
            return Err(Error::data(
                &tr_path,
                format!("row {line}: region {region_id} is not in retrieval_db.tsv"),
            ));
        };
        if db[k].1.words != words {
            return Err(Error::data(
                &tr_path,
                format!(
                    "row {line}: region {region_id} is {:?} here but {:?} in retrieval_db.tsv",
                    words, db[k].1.words
                ),
            ));
        }
        let next = triplet_ids.len() as i64;
        let tid = *triplet_ids.entry(words.clone()).or_insert_with(|| {
            triplet_words.push(words.clone());
            next
        });
        if row_of_region.insert(region_id, row).is_some() {
            return Err(Error::data(
                &tr_path,
                format!("row {line}: region {region_id} appears twice"),
            ));
        }
        by_row.region_id.push(region_id);
        by_row.image_id.push(db[k].1.image_id);
        by_row.triplet_id.push(tid);
        by_row.caption_id.push(tid);
        by_row.triplet.push(words);
        by_row.split.push(None);
        by_row.triplets_row.push(Some(row as i64));
    }
    let row_of_dataset_id = numbering(&dataset_id_of_row, &tr_path)?;
    if triplet_words.len() != captions.len() {
        return Err(Error::data(&cap_path, format!(
            "{} captions for {} distinct triplets in triplets.csv (one caption per triplet, in order of first appearance)",
            captions.len(), triplet_words.len()
        )));
    }

    // transfos.csv: the queries.
    let q_path = release.join("transfos.csv");
    let mut rd = csv_reader(&q_path, b',')?;
    let h = rd
        .headers()
        .map_err(|e| Error::data(&q_path, e.to_string()))?
        .clone();
    let names = [
        "transfo_id",
        "region_id",
        "field",
        "value",
        "target",
        "norm",
        "query_ids",
        "target_ids",
        "dataset_id",
        "norm2",
        "is_test",
    ];
    let c: Vec<usize> = names
        .iter()
        .map(|n| column(&h, n, &q_path))
        .collect::<Result<_>>()?;
    let mut q = Queries::default();
    for (row, rec) in rd.records().enumerate() {
        let line = row + 1;
        let err = |m: String| Error::data(&q_path, format!("row {line}: {m}"));
        let rec = rec.map_err(|e| err(e.to_string()))?;
        let region_id: i64 = field(&rec, c[1], "region_id", line, &q_path)?;
        let dataset_id: i64 = field(&rec, c[8], "dataset_id", line, &q_path)?;
        let Some(&drow) = row_of_region.get(&region_id) else {
            return Err(err(format!("region {region_id} is not in triplets.csv")));
        };
        // transfos.csv's dataset_id is the region's row in triplets.csv: checked, not used.
        if dataset_id != drow as i64 {
            return Err(err(format!(
                "dataset_id {dataset_id}, but region {region_id} is row {drow} of triplets.csv (transfos.csv's dataset_id is the row of the query's region there)"
            )));
        }
        let slot = Slot::parse(&rec[c[2]])
            .ok_or_else(|| err(format!("field {:?} is not subj, rel or obj", &rec[c[2]])))?;
        let (value, target) = (rec[c[3]].to_string(), rec[c[4]].to_string());
        let source = by_row.triplet[drow].clone();
        if source[slot.index()] != value {
            return Err(err(format!(
                "value {value:?}, but the region's {} is {:?}",
                slot.as_str(),
                source[slot.index()]
            )));
        }
        let mut tgt = source.clone();
        tgt[slot.index()] = target.clone();
        let Some(&target_tid) = triplet_ids.get(&tgt) else {
            return Err(err(format!(
                "target triplet {tgt:?} is not in triplets.csv"
            )));
        };
        let source_tid = by_row.triplet_id[drow];
        let query_cap: i64 = field(&rec, c[6], "query_ids", line, &q_path)?;
        let target_cap: i64 = field(&rec, c[7], "target_ids", line, &q_path)?;
        for (name, cap, tid) in [
            ("query_ids", query_cap, source_tid),
            ("target_ids", target_cap, target_tid),
        ] {
            if cap < 0 || cap as usize >= captions.len() {
                return Err(err(format!(
                    "{name} {cap} is out of range (captions.txt has {} lines)",
                    captions.len()
                )));
            }
            if cap != tid {
                return Err(err(format!(
                    "{name} {cap} is not the caption of its triplet ({tid})"
                )));
            }
        }
        let is_test = match rec[c[10]].trim() {
            "True" | "true" | "1" => "test",
            "False" | "false" | "0" => "dev",
            other => return Err(err(format!("is_test {other:?} is not True or False"))),
        };
        match &by_row.split[drow] {
            Some(s) if s != is_test => {
                return Err(err(format!("region {region_id} is in both splits")));
            }
            _ => by_row.split[drow] = Some(is_test.to_string()),
        }
        q.query_id
            .push(field(&rec, c[0], "transfo_id", line, &q_path)?);
        q.region_id.push(region_id);
        q.dataset_id.push(dataset_id_of_row[drow]);
        q.field.push(slot);
        q.value.push(value);
        q.target.push(target);
        q.source_triplet_id.push(source_tid);
        q.target_triplet_id.push(target_tid);
        q.source_caption_id.push(query_cap);
        q.target_caption_id.push(target_cap);
        q.n_neighbours
            .push(field(&rec, c[5], "norm", line, &q_path)?);
        let norm2: i64 = field(&rec, c[9], "norm2", line, &q_path)?;
        if norm2 <= 0 {
            return Err(err(format!("norm2 {norm2} must be positive")));
        }
        q.n_same_value.push(norm2);
        q.split.push(is_test.to_string());
    }

    let dataset = by_row.reorder(&row_of_dataset_id);

    // Triplets table: id = caption id.
    let mut n_regions = vec![0i64; triplet_words.len()];
    let mut images: Vec<std::collections::BTreeSet<i64>> =
        vec![Default::default(); triplet_words.len()];
    for i in 0..dataset.len() {
        let t = dataset.triplet_id[i] as usize;
        n_regions[t] += 1;
        images[t].insert(dataset.image_id[i]);
    }
    let tcols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..triplet_words.len() as i64)),
        Arc::new(StringArray::from_iter_values(
            triplet_words.iter().map(|t| t[0].as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            triplet_words.iter().map(|t| t[1].as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            triplet_words.iter().map(|t| t[2].as_str()),
        )),
        Arc::new(Int64Array::from(n_regions)),
        Arc::new(Int64Array::from_iter_values(
            images.iter().map(|s| s.len() as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            captions.iter().map(String::as_str),
        )),
    ];
    let triplets = RecordBatch::try_new(crate::tables::regions::triplets_schema(), tcols)
        .map_err(|e| Error::Internal(e.to_string()))?;

    let regions = regions_batch(&db, &triplet_ids)?;
    let mut report = StageReport::default();
    for (table, batch) in [
        (&tables::REGIONS, regions),
        (&tables::TRIPLETS, triplets),
        (&tables::DATASET, dataset.to_batch()),
        (&tables::QUERIES, q.to_batch()),
    ] {
        let rows = write_table(&out_dir.join(table.file), &batch)?;
        report.count(table.name, rows);
        report.table(table, Some(rows));
    }
    report.count(
        "dataset_regions_without_queries",
        dataset.split.iter().filter(|s| s.is_none()).count() as u64,
    );
    Ok(report)
}

/// For each `dataset_id` `0..N-1`, the `triplets.csv` row that carries it; an error naming the
/// row when the column is not a numbering of the rows.
fn numbering(dataset_id_of_row: &[i64], path: &Path) -> Result<Vec<usize>> {
    let n = dataset_id_of_row.len();
    let mut row_of = vec![usize::MAX; n];
    for (row, &d) in dataset_id_of_row.iter().enumerate() {
        if d < 0 || d as usize >= n {
            return Err(Error::data(
                path,
                format!(
                    "row {}: dataset_id {d} is out of range: the column must number the {n} regions 0..{} (eval.py's numbering of images)",
                    row + 1,
                    n.saturating_sub(1)
                ),
            ));
        }
        let slot = &mut row_of[d as usize];
        if *slot != usize::MAX {
            return Err(Error::data(
                path,
                format!(
                    "row {}: dataset_id {d} is also the dataset_id of row {}: each region needs its own",
                    row + 1,
                    *slot + 1
                ),
            ));
        }
        *slot = row;
    }
    Ok(row_of)
}

/// The release's candidate regions in the schema of [`crate::tables::regions::regions_schema`]. The
/// release has no relationship ids nor raw predicates: `relationship_id` is −1, `n_annotations`
/// 1, `predicate` the relation; `triplet_id` is −1 for regions whose triplet is not in the
/// benchmark.
fn regions_batch(
    db: &[(i64, DbRegion)],
    triplet_ids: &HashMap<[String; 3], i64>,
) -> Result<RecordBatch> {
    let n = db.len();
    let i64s = |f: &dyn Fn(&(i64, DbRegion)) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(db.iter().map(f)))
    };
    let word = |k: usize| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            db.iter().map(|r| r.1.words[k].as_str()),
        ))
    };
    let attrs = |k: usize| -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for r in db {
            for a in &r.1.attrs[k] {
                b.values().append_value(a);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let mut cols: Vec<ArrayRef> = vec![
        i64s(&|r| r.0),
        i64s(&|r| r.1.image_id),
        i64s(&|r| r.1.subj_id),
        i64s(&|r| r.1.obj_id),
        Arc::new(Int64Array::from(vec![-1i64; n])),
        Arc::new(Int64Array::from(vec![1i64; n])),
        i64s(&|r| triplet_ids.get(&r.1.words).copied().unwrap_or(-1)),
        word(0),
        word(1),
        word(2),
        word(1),
        attrs(0),
        attrs(1),
    ];
    for b in 0..3 {
        for k in 0..4 {
            cols.push(Arc::new(Int32Array::from_iter_values(
                db.iter().map(|r| r.1.boxes[b][k]),
            )));
        }
    }
    RecordBatch::try_new(crate::tables::regions::regions_schema(), cols)
        .map_err(|e| Error::Internal(e.to_string()))
}
