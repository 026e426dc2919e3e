//! `retrieve`: answer every transformation query for every λ.
//!
//! For query `i` with image `dataset_id_i`, slot word `value_i` → `target_i`:
//! `q = img[dataset_id_i] + λ·(word[target_i] − word[value_i])`, scored by inner product against
//! every dataset image, the query's own image excluded; the top `k` are written to
//! `retrievals.parquet` (`query_id, lambda, rank, dataset_id, score`). Embeddings are already
//! `normalise(head(x))` (see [`crate::embed`]). The λ sweep shares one GEMM across all λ
//! ([`crate::linalg::sweep`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::dataset::Queries;
use crate::error::{Error, Result};
use crate::linalg::{sweep, MatrixView};
use crate::run::{Stage, StageContext, StageReport};
use crate::store::EmbeddingStore;

/// λ values of a default sweep.
pub const DEFAULT_LAMBDAS: &[f64] = &[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0];

/// Configuration of retrieval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveConfig {
    /// The λ values.
    #[serde(default = "default_lambdas")]
    pub lambdas: Vec<f64>,
    /// Results kept per query and λ.
    #[serde(default = "default_k")]
    pub k: usize,
    /// The stage holding `queries.parquet`: `import` (the release) or `queries` (regenerated).
    #[serde(default = "default_queries_stage")]
    pub queries_stage: String,
}

fn default_lambdas() -> Vec<f64> {
    DEFAULT_LAMBDAS.to_vec()
}
fn default_k() -> usize {
    5
}
fn default_queries_stage() -> String {
    "import".into()
}

impl Default for RetrieveConfig {
    fn default() -> Self {
        RetrieveConfig {
            lambdas: default_lambdas(),
            k: default_k(),
            queries_stage: default_queries_stage(),
        }
    }
}

/// Schema of `retrievals.parquet`.
pub fn retrievals_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::Int64, false),
        Field::new("lambda", DataType::Float64, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("dataset_id", DataType::Int64, false),
        Field::new("score", DataType::Float32, false),
    ]))
}

/// The stage.
#[derive(Debug, Clone)]
pub struct RetrieveStage {
    /// Its configuration.
    pub config: RetrieveConfig,
}

impl Stage for RetrieveStage {
    fn name(&self) -> &'static str {
        "retrieve"
    }
    fn version(&self) -> u32 {
        1
    }
    fn upstream(&self) -> Vec<&'static str> {
        vec![
            crate::dataset::queries_stage(&self.config.queries_stage),
            "embed",
        ]
    }
    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        Ok(vec![])
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let c = &self.config;
        if c.k == 0 || c.lambdas.is_empty() {
            return Err(Error::stage(
                "retrieve",
                "k must be ≥ 1 and at least one λ given",
            ));
        }
        let qpath = ctx.upstream_output(
            crate::dataset::queries_stage(&c.queries_stage),
            "queries.parquet",
        );
        let queries = Queries::read(&qpath)?;
        let images = EmbeddingStore::open(&ctx.upstream_output("embed", "image_embeddings.arrow"))?;
        let wpath = ctx.upstream_output("embed", "word_embeddings.arrow");
        let words = EmbeddingStore::open(&wpath)?;
        let word_col = words
            .batch
            .column_by_name("word")
            .ok_or_else(|| Error::columnar(&wpath, "column `word` is missing"))?
            .as_string::<i32>()
            .clone();
        let index: HashMap<&str, usize> = (0..words.rows).map(|i| (word_col.value(i), i)).collect();
        let lookup = |w: &str, qi: usize| -> Result<usize> {
            index.get(w).copied().ok_or_else(|| {
                Error::data(
                    &qpath,
                    format!(
                        "query {}: word `{w}` has no embedding in word_embeddings.arrow (add it to the words file)",
                        queries.query_id[qi]
                    ),
                )
            })
        };
        let mut value = Vec::with_capacity(queries.len());
        let mut target = Vec::with_capacity(queries.len());
        let mut rows = Vec::with_capacity(queries.len());
        for i in 0..queries.len() {
            value.push(lookup(&queries.value[i], i)?);
            target.push(lookup(&queries.target[i], i)?);
            let d = queries.dataset_id[i];
            if d < 0 || d as usize >= images.rows {
                return Err(Error::data(
                    &qpath,
                    format!(
                        "query {}: dataset_id {d} is outside the {} image embeddings",
                        queries.query_id[i], images.rows
                    ),
                ));
            }
            rows.push(d as usize);
        }
        let db = MatrixView::new(images.rows, images.dim, images.values());
        let query_images = db.gather(&rows);
        let word_view = MatrixView::new(words.rows, words.dim, words.values());
        let lambdas: Vec<f32> = c.lambdas.iter().map(|&l| l as f32).collect();
        let exclude: Vec<i64> = queries.dataset_id.clone();
        let hits = sweep(
            db,
            query_images.view(),
            word_view,
            &value,
            &target,
            &lambdas,
            c.k,
            &exclude,
        );

        let n = hits
            .iter()
            .map(|per_q| per_q.iter().map(Vec::len).sum::<usize>())
            .sum::<usize>();
        let (mut qid, mut lam, mut rank, mut did, mut score) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (l, per_q) in hits.iter().enumerate() {
            for (i, list) in per_q.iter().enumerate() {
                for (r, h) in list.iter().enumerate() {
                    qid.push(queries.query_id[i]);
                    lam.push(c.lambdas[l]);
                    rank.push(r as i32);
                    did.push(h.id as i64);
                    score.push(h.score);
                }
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(qid)),
            Arc::new(Float64Array::from(lam)),
            Arc::new(Int32Array::from(rank)),
            Arc::new(Int64Array::from(did)),
            Arc::new(Float32Array::from(score)),
        ];
        let batch = RecordBatch::try_new(retrievals_schema(), cols)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let written = crate::io::write_table(&ctx.output("retrievals.parquet"), &batch)?;
        let mut report = StageReport::default();
        report
            .outputs
            .push(("retrievals.parquet".into(), Some(written)));
        report.count("queries", queries.len() as u64);
        report.count("database", images.rows as u64);
        report.count("lambdas", c.lambdas.len() as u64);
        Ok(report)
    }
}
