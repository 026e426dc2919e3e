//! Retrievals and scores.

use std::path::Path;
use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tables::dataset::{ints, strs};

/// Schema of `retrievals.parquet`.
pub fn retrievals_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("heads", DataType::Utf8, false),
        Field::new("query_id", DataType::Int64, false),
        Field::new("lam", DataType::Float64, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("dataset_id", DataType::Int64, false),
        Field::new("similarity", DataType::Float32, false),
    ]))
}

/// The first column of every score table (`results`, `breakdown`, `metrics`, `scores`): the
/// model whose embeddings were scored, so that tables of several models union by rows.
pub fn model_field() -> Field {
    Field::new("model", DataType::Utf8, false)
}

/// The `model` column of a score table of `rows` rows.
pub fn model_column(model: &str, rows: usize) -> arrow::array::ArrayRef {
    Arc::new(arrow::array::StringArray::from_iter_values(
        std::iter::repeat_n(model, rows),
    ))
}

/// The name of the model of a run's embeddings, from their provenance (retrieve's and score's
/// `embeddings`): the model's name, or else the file imported.
pub fn model_of_embeddings(embeddings: &serde_json::Value) -> String {
    embeddings["model"]["name"]
        .as_str()
        .or(embeddings["images"]["file"].as_str())
        .unwrap_or("?")
        .to_string()
}

/// Schema of `results.parquet`: one row per (head set, λ, query) — whether it succeeded, and
/// everything needed to ask why.
pub fn results_schema() -> SchemaRef {
    let i = |n: &str| Field::new(n, DataType::Int64, false);
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        model_field(),
        s("heads"),
        Field::new("lam", DataType::Float64, false),
        i("query_id"),
        s("split"),
        s("field"),
        s("value"),
        s("target"),
        s("subj"),
        s("rel"),
        s("obj"),
        i("source_triplet_id"),
        i("target_triplet_id"),
        i("source_caption_id"),
        i("target_caption_id"),
        i("region_id"),
        i("dataset_id"),
        i("retrieved_dataset_id"),
        i("retrieved_region_id"),
        Field::new("oracle_value", DataType::Float64, true),
        Field::new("success", DataType::Boolean, false),
        Field::new("weight", DataType::Float64, false),
    ]))
}

/// Schema of `breakdown.parquet`: the score within each group of queries — per source word,
/// target word, relation, subject, object and triplet — per head set, λ and split.
pub fn breakdown_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        model_field(),
        Field::new("heads", DataType::Utf8, false),
        Field::new("lam", DataType::Float64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("dimension", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("queries", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
    ]))
}

/// Schema of `metrics.parquet`: the ranked metrics ([`crate::metrics`]) per head set, λ,
/// split and field, each a weighted mean over queries ×100.
pub fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        model_field(),
        Field::new("heads", DataType::Utf8, false),
        Field::new("lam", DataType::Float64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("k", DataType::Int32, false),
        Field::new("value", DataType::Float64, false),
        Field::new("n_queries", DataType::Int64, false),
    ]))
}

/// Schema of `scores.parquet` (its metadata holds the provenance as JSON).
pub fn scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        model_field(),
        Field::new("heads", DataType::Utf8, false),
        Field::new("lam", DataType::Float64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("n_queries", DataType::Int64, false),
        Field::new("query_set", DataType::Utf8, false),
        Field::new("oracle", DataType::Utf8, false),
        Field::new("threshold", DataType::Float64, false),
        Field::new("ci_low", DataType::Float64, true),
        Field::new("ci_high", DataType::Float64, true),
    ]))
}

/// One row of the scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    /// The head set of the retrieval: `none`, a file's name, or `head_tau{τ}`.
    pub heads: String,
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
    /// The bootstrap interval of the score (see the provenance's `bootstrap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<(f64, f64)>,
}

/// `scores.json`: the scores and what they are of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoresFile {
    /// The query set, embeddings, heads, oracle, threshold and simat version.
    pub provenance: serde_json::Value,
    /// One row per λ × split × field.
    pub scores: Vec<ScoreRow>,
}

impl ScoresFile {
    /// Read `scores.json`.
    pub fn read(path: &Path) -> Result<ScoresFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("failed to read", path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::data(path, e.to_string()))
    }
}

/// The head-set label of the text-only baseline without heads (`retrieve --text-baseline`);
/// with heads H, `text-only:H`.
pub const TEXT_ONLY: &str = "text-only";

/// Schema metadata key of `scores.parquet` holding the provenance as JSON.
pub const PROVENANCE_KEY: &str = "simat:provenance";

impl ScoresFile {
    /// The lines printed after a run that scored: a heading, then [`Self::table`].
    pub fn summary(&self) -> String {
        format!(
            "SIMAT scores (% of queries whose first image the oracle accepts):\n{}",
            self.table()
        )
    }

    /// What the scores are of, on one line, then the table: a row per λ × split, a column per
    /// field.
    pub fn table(&self) -> String {
        let p = &self.provenance;
        let described = match p["query_set"].as_str() {
            Some("release") => crate::tables::dataset::QuerySet::Release.describe(),
            Some("regenerated") => crate::tables::dataset::QuerySet::Regenerated.describe(),
            _ => "unknown queries",
        };
        let model = match (
            &p["embeddings"]["model"]["name"],
            &p["embeddings"]["source"],
        ) {
            (serde_json::Value::String(name), _) => format!("model {name}"),
            (_, serde_json::Value::String(source)) => format!("embeddings from {source}"),
            _ => "embeddings".to_string(),
        };
        let sets: Vec<&str> = p["heads"]["sets"]
            .as_array()
            .map(|a| a.iter().filter_map(|h| h["name"].as_str()).collect())
            .unwrap_or_default();
        let heads = match sets.as_slice() {
            [] | ["none"] => "no heads".to_string(),
            [one] => format!("heads {one}"),
            many => format!("heads {}", many.join(", ")),
        };
        let oracle = p["oracle"]["file"]
            .as_str()
            .or(p["oracle"]["kind"].as_str())
            .unwrap_or("?");
        let mut out = format!(
            "{described} {} queries; {model}, {heads}; oracle {oracle} > {}\n",
            p["queries"]["rows"], p["threshold"]
        );
        let rows = &self.scores;
        let several = rows.iter().any(|r| r.heads != rows[0].heads);
        let width = rows.iter().map(|r| r.heads.len()).max().unwrap_or(5).max(5);
        if several {
            out.push_str(&format!("{:<width$} ", "heads"));
        }
        let intervals = rows.iter().any(|r| r.ci.is_some());
        out.push_str(&format!(
            "{:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "lambda", "split", "subj", "rel", "obj", "all", "queries"
        ));
        if intervals {
            let level = self.provenance["bootstrap"]["confidence"]
                .as_f64()
                .map_or("interval".to_string(), |c| {
                    format!("{:.0} % interval", 100.0 * c)
                });
            out.push_str(&format!(" {level:>18}"));
        }
        let mut keys: Vec<(&str, f64, &str)> = Vec::new();
        for r in rows {
            if !keys
                .iter()
                .any(|(h, l, s)| *h == r.heads && *l == r.lambda && *s == r.split)
            {
                keys.push((&r.heads, r.lambda, &r.split));
            }
        }
        for (heads, lambda, split) in keys {
            let get = |f: &str| {
                rows.iter().find(|r| {
                    r.heads == heads && r.lambda == lambda && r.split == split && r.field == f
                })
            };
            let cells: Vec<String> = ["subj", "rel", "obj", "all"]
                .iter()
                .map(|f| {
                    get(f)
                        .map(|r| format!("{:8.2}", r.score))
                        .unwrap_or_default()
                })
                .collect();
            let n = get("all").map(|r| r.n_queries).unwrap_or(0);
            out.push('\n');
            if several {
                out.push_str(&format!("{heads:<width$} "));
            }
            out.push_str(&format!(
                "{lambda:>8} {split:>6} {} {n:>9}",
                cells.join(" ")
            ));
            if let Some((lo, hi)) = get("all").and_then(|r| r.ci) {
                out.push_str(&format!(" {:>18}", format!("[{lo:.2}, {hi:.2}]")));
            }
        }
        out
    }
}

/// One row of `breakdown.parquet`.
#[derive(Debug, Clone)]
pub struct GroupScore {
    /// Head set.
    pub heads: String,
    /// λ.
    pub lam: f64,
    /// Split.
    pub split: String,
    /// `source_word`, `relation`, ...
    pub dimension: String,
    /// The group's key.
    pub key: String,
    /// Queries in the group.
    pub queries: i64,
    /// Its score, ×100.
    pub score: f64,
}

/// One row of `results.parquet`, the columns a reader of single queries needs.
#[derive(Debug, Clone)]
pub struct ResultRow {
    /// Head set.
    pub heads: String,
    /// λ.
    pub lam: f64,
    /// Query id.
    pub query_id: i64,
    /// dev or test.
    pub split: String,
    /// Slot.
    pub field: String,
    /// Source word.
    pub value: String,
    /// Target word.
    pub target: String,
    /// The query's own region.
    pub region_id: i64,
    /// The query image's dataset id.
    pub dataset_id: i64,
    /// The target triplet.
    pub target_triplet_id: i64,
    /// The retrieved image.
    pub retrieved_dataset_id: i64,
    /// Its region.
    pub retrieved_region_id: i64,
    /// The oracle's value (none for the `labels` oracle).
    pub oracle_value: Option<f64>,
    /// Success.
    pub success: bool,
}

/// `breakdown.parquet`, read.
pub fn read_breakdown(path: &Path) -> Result<Vec<GroupScore>> {
    let b = crate::io::read_all(path)?;
    let (mut heads, mut split, mut dimension, mut key) = (
        strs(&b, "heads", path)?,
        strs(&b, "split", path)?,
        strs(&b, "dimension", path)?,
        strs(&b, "key", path)?,
    );
    let lam = crate::io::f64_column(&b, "lam", path)?;
    let score = crate::io::f64_column(&b, "score", path)?;
    let queries = crate::io::i64_column(&b, "queries", path)?;
    // The strings were copied out of the batch once; each row takes its own.
    let take = std::mem::take::<String>;
    Ok((0..b.num_rows())
        .map(|i| GroupScore {
            heads: take(&mut heads[i]),
            lam: lam.value(i),
            split: take(&mut split[i]),
            dimension: take(&mut dimension[i]),
            key: take(&mut key[i]),
            queries: queries.value(i),
            score: score.value(i),
        })
        .collect())
}

/// `results.parquet`, read.
pub fn read_results(path: &Path) -> Result<Vec<ResultRow>> {
    let b = crate::io::read_all(path)?;
    let s = |n: &str| strs(&b, n, path);
    let i = |n: &str| ints(&b, n, path);
    let (mut heads, mut split, mut field, mut value, mut target) = (
        s("heads")?,
        s("split")?,
        s("field")?,
        s("value")?,
        s("target")?,
    );
    let (query_id, region_id, dataset_id, target_triplet_id, retrieved, retrieved_region) = (
        i("query_id")?,
        i("region_id")?,
        i("dataset_id")?,
        i("target_triplet_id")?,
        i("retrieved_dataset_id")?,
        i("retrieved_region_id")?,
    );
    let lam = crate::io::f64_column(&b, "lam", path)?;
    let oracle = crate::io::f64_column(&b, "oracle_value", path)?;
    let success = crate::io::bool_column(&b, "success", path)?;
    let take = std::mem::take::<String>;
    Ok((0..b.num_rows())
        .map(|k| ResultRow {
            heads: take(&mut heads[k]),
            lam: lam.value(k),
            query_id: query_id[k],
            split: take(&mut split[k]),
            field: take(&mut field[k]),
            value: take(&mut value[k]),
            target: take(&mut target[k]),
            region_id: region_id[k],
            dataset_id: dataset_id[k],
            target_triplet_id: target_triplet_id[k],
            retrieved_dataset_id: retrieved[k],
            retrieved_region_id: retrieved_region[k],
            oracle_value: oracle.is_valid(k).then(|| oracle.value(k)),
            success: success.value(k),
        })
        .collect())
}
