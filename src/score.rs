//! `score`: the SIMAT score of the retrievals.
//!
//! A query succeeds at λ when the oracle judges its first retrieved image against the target
//! caption above `threshold` (0.5): `oracle[retrieved dataset_id, target caption id]` from an
//! image × caption matrix (e.g. the release's OSCAR similarities), or, with the `labels` oracle,
//! when the retrieved region's triplet is the target triplet. The SIMAT score is
//! `100 · Σ wᵢ·successᵢ / Σ wᵢ` with `wᵢ = 1/sqrt(n_same_value)`, within a split, reported per
//! λ × split × field (`subj`, `rel`, `obj`, `all`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Queries, Slot};
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use crate::run::{Stage, StageContext, StageReport};

/// Configuration of scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// `labels`, or an images × captions similarity matrix (`.npy`, rows by `dataset_id`,
    /// columns by caption id).
    #[serde(default = "default_oracle")]
    pub oracle: String,
    /// Success when the oracle's similarity is above this.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// The splits reported: `dev`, `test`, or `all` (dev, test and both together).
    #[serde(default = "default_split")]
    pub split: String,
    /// The stage holding `queries.parquet`.
    #[serde(default = "default_stage")]
    pub queries_stage: String,
    /// The stage holding `dataset.parquet`.
    #[serde(default = "default_stage")]
    pub dataset_stage: String,
}

fn default_oracle() -> String {
    "labels".into()
}
fn default_threshold() -> f64 {
    0.5
}
fn default_split() -> String {
    "all".into()
}
fn default_stage() -> String {
    "import".into()
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            oracle: default_oracle(),
            threshold: default_threshold(),
            split: default_split(),
            queries_stage: default_stage(),
            dataset_stage: default_stage(),
        }
    }
}

/// One row of the scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    /// λ.
    pub lambda: f64,
    /// `dev`, `test` or `all`.
    pub split: String,
    /// `subj`, `rel`, `obj` or `all`.
    pub field: String,
    /// The SIMAT score, ×100.
    pub score: f64,
    /// Queries counted.
    pub n_queries: u64,
}

/// Schema of `scores.parquet`.
pub fn scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("lambda", DataType::Float64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("n_queries", DataType::Int64, false),
    ]))
}

/// The stage.
#[derive(Debug, Clone)]
pub struct ScoreStage {
    /// Its configuration.
    pub config: ScoreConfig,
}

impl Stage for ScoreStage {
    fn name(&self) -> &'static str {
        "score"
    }
    fn version(&self) -> u32 {
        1
    }
    fn upstream(&self) -> Vec<&'static str> {
        let mut v = vec![
            "retrieve",
            crate::dataset::queries_stage(&self.config.queries_stage),
        ];
        let d = crate::dataset::dataset_stage(&self.config.dataset_stage);
        if !v.contains(&d) {
            v.push(d);
        }
        v.extend(crate::oracle::upstream(&self.config.oracle));
        v
    }
    fn config(&self) -> serde_json::Value {
        crate::oracle::config_value(&self.config, &self.config.oracle)
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        crate::oracle::inputs("score", &self.config.oracle)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let c = &self.config;
        let queries = Queries::read(&ctx.upstream_output(
            crate::dataset::queries_stage(&c.queries_stage),
            "queries.parquet",
        ))?;
        let dataset = Dataset::read(&ctx.upstream_output(
            crate::dataset::dataset_stage(&c.dataset_stage),
            "dataset.parquet",
        ))?;
        let rpath = ctx.upstream_output("retrieve", "retrievals.parquet");
        let (lambdas, top1) = read_top1(&rpath, &queries)?;
        let oracle = match crate::oracle::matrix_file(&self.config.oracle) {
            None if self.config.oracle == crate::oracle::MODEL => model_oracle(ctx, &dataset)?,
            None => Oracle::Labels,
            Some(p) => {
                let m = crate::store::read_matrix(&p)?;
                if m.rows != dataset.len() {
                    return Err(Error::data(
                        &p,
                        format!(
                            "{} rows, but the dataset has {} regions",
                            m.rows,
                            dataset.len()
                        ),
                    ));
                }
                if let Some(i) =
                    (0..queries.len()).find(|&i| queries.target_caption_id[i] as usize >= m.cols)
                {
                    return Err(Error::data(
                        &p,
                        format!(
                            "{} caption columns, but query {} targets caption {}",
                            m.cols, queries.query_id[i], queries.target_caption_id[i]
                        ),
                    ));
                }
                Oracle::Matrix(m)
            }
        };
        let splits: Vec<&str> = match c.split.as_str() {
            "dev" => vec!["dev"],
            "test" => vec!["test"],
            "all" => vec!["dev", "test", "all"],
            other => {
                return Err(Error::stage(
                    "score",
                    format!("--split {other}: expected dev, test or all"),
                ))
            }
        };
        let mut rows = Vec::new();
        for (l, &lambda) in lambdas.iter().enumerate() {
            let success: Vec<bool> = (0..queries.len())
                .map(|i| oracle.success(top1[l][i], &queries, &dataset, i, c.threshold))
                .collect();
            for split in &splits {
                for field in ["subj", "rel", "obj", "all"] {
                    let keep = |i: usize| {
                        (*split == "all" || queries.split[i] == *split)
                            && (field == "all"
                                || queries.field[i] == Slot::parse(field).expect("slot"))
                    };
                    let (mut num, mut den, mut n) = (0f64, 0f64, 0u64);
                    for (i, &ok) in success.iter().enumerate() {
                        if keep(i) {
                            let w = queries.weight(i);
                            den += w;
                            if ok {
                                num += w;
                            }
                            n += 1;
                        }
                    }
                    let score = if den > 0.0 {
                        100.0 * num / den
                    } else {
                        f64::NAN
                    };
                    rows.push(ScoreRow {
                        lambda,
                        split: split.to_string(),
                        field: field.into(),
                        score,
                        n_queries: n,
                    });
                }
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.lambda),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.split.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.field.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.score))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.n_queries as i64),
            )),
        ];
        let batch = RecordBatch::try_new(scores_schema(), cols)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let n = crate::io::write_table(&ctx.output("scores.parquet"), &batch)?;
        crate::run::atomic::write_atomic(
            ctx.output("scores.json"),
            (serde_json::to_string_pretty(&rows).expect("json") + "\n").as_bytes(),
        )?;
        let mut report = StageReport::default();
        report.outputs.push(("scores.parquet".into(), Some(n)));
        report.outputs.push(("scores.json".into(), None));
        report.count("queries", queries.len() as u64);
        Ok(report)
    }
}

enum Oracle {
    Labels,
    Matrix(Matrix),
    /// The `oracle` stage's embeddings: regions by dataset_id, captions by triplet_id.
    Model {
        regions: Matrix,
        captions: Matrix,
        caption_row: HashMap<i64, usize>,
    },
}

/// The `model` oracle for a dataset: the `oracle` stage's region embeddings gathered into
/// dataset_id order, and its caption embeddings.
fn model_oracle(ctx: &StageContext, dataset: &Dataset) -> Result<Oracle> {
    use crate::store::EmbeddingStore;
    let rpath = ctx.upstream_output("oracle", "region_embeddings.arrow");
    let regions = EmbeddingStore::open(&rpath)?;
    let ids = crate::io::i64_column(&regions.batch, "region_id", &rpath)?;
    let row: HashMap<i64, usize> = ids
        .values()
        .iter()
        .enumerate()
        .map(|(r, &id)| (id, r))
        .collect();
    let mut idx = Vec::with_capacity(dataset.len());
    for (i, r) in dataset.region_id.iter().enumerate() {
        idx.push(*row.get(r).ok_or_else(|| {
            Error::data(
                &rpath,
                format!("no embedding for region {r} (dataset_id {i}): the dataset was not selected with this oracle"),
            )
        })?);
    }
    let regions =
        crate::linalg::MatrixView::new(regions.rows, regions.dim, regions.values()).gather(&idx);
    let cpath = ctx.upstream_output("oracle", "caption_embeddings.arrow");
    let captions = EmbeddingStore::open(&cpath)?;
    let tids = crate::io::i64_column(&captions.batch, "triplet_id", &cpath)?;
    let caption_row = tids
        .values()
        .iter()
        .enumerate()
        .map(|(r, &t)| (t, r))
        .collect();
    Ok(Oracle::Model {
        regions,
        captions: captions.to_matrix(),
        caption_row,
    })
}

impl Oracle {
    fn success(
        &self,
        retrieved: usize,
        q: &Queries,
        d: &Dataset,
        i: usize,
        threshold: f64,
    ) -> bool {
        match self {
            Oracle::Labels => d.triplet_id[retrieved] == q.target_triplet_id[i],
            Oracle::Matrix(m) => {
                m.row(retrieved)[q.target_caption_id[i] as usize] as f64 > threshold
            }
            Oracle::Model {
                regions,
                captions,
                caption_row,
            } => caption_row.get(&q.target_triplet_id[i]).is_some_and(|&c| {
                crate::linalg::dot(regions.row(retrieved), captions.row(c)) as f64 > threshold
            }),
        }
    }
}

/// The λ values of the retrievals, and per λ the first retrieved dataset_id of each query (in
/// the queries' order).
fn read_top1(path: &Path, queries: &Queries) -> Result<(Vec<f64>, Vec<Vec<usize>>)> {
    let index: HashMap<i64, usize> = queries
        .query_id
        .iter()
        .enumerate()
        .map(|(i, &q)| (q, i))
        .collect();
    let mut lambdas: Vec<f64> = Vec::new();
    let mut top1: Vec<Vec<usize>> = Vec::new();
    for batch in crate::io::read_table(path, &["query_id", "lambda", "rank", "dataset_id"])? {
        let b = batch.map_err(|e| Error::columnar(path, e))?;
        let qid = b.column(0).as_primitive::<Int64Type>();
        let lam = b.column(1).as_primitive::<Float64Type>();
        let rank = b.column(2).as_primitive::<Int32Type>();
        let did = b.column(3).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            if rank.value(r) != 0 {
                continue;
            }
            let l = match lambdas.iter().position(|&x| x == lam.value(r)) {
                Some(l) => l,
                None => {
                    lambdas.push(lam.value(r));
                    top1.push(vec![usize::MAX; queries.len()]);
                    lambdas.len() - 1
                }
            };
            let Some(&i) = index.get(&qid.value(r)) else {
                return Err(Error::data(
                    path,
                    format!("query {} is not in the queries table", qid.value(r)),
                ));
            };
            top1[l][i] = did.value(r) as usize;
        }
    }
    for (l, t) in top1.iter().enumerate() {
        if let Some(i) = t.iter().position(|&d| d == usize::MAX) {
            return Err(Error::data(
                path,
                format!(
                    "no retrieval for query {} at λ = {}",
                    queries.query_id[i], lambdas[l]
                ),
            ));
        }
    }
    Ok((lambdas, top1))
}
