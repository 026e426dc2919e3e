//! The leaderboard: one row per run × head set, its λ chosen by a named protocol, its test
//! SIMAT@1 with the bootstrap interval, SIMAT@5 and the score per field.
//!
//! Protocols (each row says which made its number):
//! - `best-dev`: the λ of the best dev SIMAT@1 (the smallest such λ on a tie), reported on test:
//!   λ chosen without looking at test, as later papers do (m²-mix);
//! - `lambda1`: λ = 1, reported on test (the release's `eval.py` defaults to `--lbds 1`);
//! - `best-test`: the λ of the best test score, reported on test: optimistic, named so.

use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int32Type};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::tables::retrievals::{ScoreRow, ScoresFile};

/// How a row's λ is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The best λ on dev, reported on test.
    BestDev,
    /// λ = 1, reported on test.
    Lambda1,
    /// The best λ on test, reported on test (optimistic).
    BestTest,
}

impl Protocol {
    /// Its name, as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::BestDev => "best-dev",
            Protocol::Lambda1 => "lambda1",
            Protocol::BestTest => "best-test",
        }
    }
}

/// One row.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The run's label (its folder's name).
    pub run: String,
    /// The embeddings' model (its folder's name, or the file imported), from the scores'
    /// provenance.
    pub model: String,
    /// The head set.
    pub heads: String,
    /// The protocol that chose λ.
    pub protocol: &'static str,
    /// The λ chosen.
    pub lam: f64,
    /// The dev SIMAT@1 at that λ (none without dev queries).
    pub dev: Option<f64>,
    /// The test SIMAT@1 at that λ.
    pub test: f64,
    /// Its bootstrap interval.
    pub test_ci_low: Option<f64>,
    /// Its upper end.
    pub test_ci_high: Option<f64>,
    /// Test SIMAT@5 at that λ (none when the run's metrics have no k = 5).
    pub test_at5: Option<f64>,
    /// Test SIMAT@1 per field at that λ.
    pub test_subj: Option<f64>,
    /// The relation's.
    pub test_rel: Option<f64>,
    /// The object's.
    pub test_obj: Option<f64>,
    /// Test queries.
    pub test_queries: i64,
}

/// Test SIMAT@5 per (heads, λ) from `metrics.parquet`.
fn read_at5(path: &Path) -> Result<Vec<(String, f64, f64)>> {
    if !path.is_file() {
        return Ok(vec![]);
    }
    let b = crate::io::read_all(path)?;
    let s = |n: &str| crate::io::str_column(&b, n, path).cloned();
    let (heads, split, field, metric) = (s("heads")?, s("split")?, s("field")?, s("metric")?);
    let lam = crate::io::column(&b, "lam", path)?
        .as_primitive::<Float64Type>()
        .clone();
    let k = crate::io::column(&b, "k", path)?
        .as_primitive::<Int32Type>()
        .clone();
    let value = crate::io::column(&b, "value", path)?
        .as_primitive::<Float64Type>()
        .clone();
    Ok((0..b.num_rows())
        .filter(|&i| {
            split.value(i) == "test"
                && field.value(i) == "all"
                && metric.value(i) == "simat"
                && k.value(i) == 5
        })
        .map(|i| (heads.value(i).to_string(), lam.value(i), value.value(i)))
        .collect())
}

/// The rows of `runs` (run folders with their labels) under `protocol`, best test score first.
pub fn leaderboard(runs: &[(PathBuf, String)], protocol: Protocol) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (dir, label) in runs {
        let score_dir = dir.join("score");
        let scores_path = score_dir.join("scores.json");
        if !scores_path.is_file() {
            return Err(Error::data(
                &scores_path,
                "no such file: the run's score stage has not run",
            ));
        }
        let file = ScoresFile::read(&scores_path)?;
        let at5 = read_at5(&score_dir.join("metrics.parquet"))?;
        out.extend(entries(label, &file, &at5, protocol, &scores_path)?);
    }
    out.sort_by(|a, b| b.test.total_cmp(&a.test));
    Ok(out)
}

/// The embeddings' model of a run's scores: its folder's name, or the file imported.
pub fn model_of(file: &ScoresFile) -> String {
    crate::tables::retrievals::model_of_embeddings(&file.provenance["embeddings"])
}

/// One run's rows, a row per head set, from its scores (`source`, for messages) and its test
/// SIMAT@5 per (head set, λ).
pub fn entries(
    label: &str,
    file: &ScoresFile,
    at5: &[(String, f64, f64)],
    protocol: Protocol,
    source: &Path,
) -> Result<Vec<Entry>> {
    let cells = &file.scores;
    let model = model_of(file);
    let mut heads: Vec<&str> = Vec::new();
    for c in cells {
        if !heads.contains(&c.heads.as_str()) {
            heads.push(&c.heads);
        }
    }
    let mut out = Vec::new();
    for h in heads {
        let get = |lam: f64, split: &str, field: &str| -> Option<&ScoreRow> {
            cells
                .iter()
                .find(|c| c.heads == h && c.lambda == lam && c.split == split && c.field == field)
        };
        let mut lams: Vec<f64> = cells
            .iter()
            .filter(|c| c.heads == h)
            .map(|c| c.lambda)
            .collect();
        lams.sort_by(f64::total_cmp);
        lams.dedup();
        // The smallest λ of the best score on `split`.
        let best_on = |split: &str| -> Result<f64> {
            let mut best: Option<(f64, f64)> = None;
            for &l in &lams {
                if let Some(c) = get(l, split, "all").filter(|c| c.score.is_finite()) {
                    if best.is_none_or(|(_, s)| c.score > s) {
                        best = Some((l, c.score));
                    }
                }
            }
            best.map(|(l, _)| l).ok_or_else(|| {
                Error::data(
                    source,
                    format!(
                        "no {split} scores for heads {h}: protocol {} needs them (score with --split all)",
                        protocol.as_str()
                    ),
                )
            })
        };
        let lam = match protocol {
            Protocol::BestDev => best_on("dev")?,
            Protocol::BestTest => best_on("test")?,
            Protocol::Lambda1 => {
                if !lams.contains(&1.0) {
                    return Err(Error::data(
                        source,
                        format!("no λ = 1 for heads {h}: protocol lambda1 needs it (retrieve with --lambdas including 1)"),
                    ));
                }
                1.0
            }
        };
        let test = get(lam, "test", "all").ok_or_else(|| {
            Error::data(
                source,
                format!(
                    "no test score at λ = {lam} for heads {h} (score with --split all or test)"
                ),
            )
        })?;
        let field = |f: &str| get(lam, "test", f).map(|c| c.score);
        out.push(Entry {
            run: label.to_string(),
            model: model.clone(),
            heads: h.to_string(),
            protocol: protocol.as_str(),
            lam,
            dev: get(lam, "dev", "all").map(|c| c.score),
            test: test.score,
            test_ci_low: test.ci.map(|c| c.0),
            test_ci_high: test.ci.map(|c| c.1),
            test_at5: at5
                .iter()
                .find(|(hh, l, _)| hh == h && *l == lam)
                .map(|x| x.2),
            test_subj: field("subj"),
            test_rel: field("rel"),
            test_obj: field("obj"),
            test_queries: test.n_queries as i64,
        });
    }
    Ok(out)
}

/// CLIP_benchmark's result file of one entry (`dataset`, `model`, `pretrained`, `task`,
/// `metrics`, `language`), so that tooling that reads those reads simat's.
pub fn clip_benchmark_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "dataset": "simat",
        "model": e.model,
        "pretrained": e.heads,
        "task": "embedding_arithmetic",
        "metrics": {
            "simat_at_1": e.test / 100.0,
            "simat_at_1_ci_low": e.test_ci_low.map(|v| v / 100.0),
            "simat_at_1_ci_high": e.test_ci_high.map(|v| v / 100.0),
            "simat_at_5": e.test_at5.map(|v| v / 100.0),
            "simat_at_1_subj": e.test_subj.map(|v| v / 100.0),
            "simat_at_1_rel": e.test_rel.map(|v| v / 100.0),
            "simat_at_1_obj": e.test_obj.map(|v| v / 100.0),
            "lambda": e.lam,
            "protocol": e.protocol,
            "run": e.run,
        },
        "language": "en",
    })
}
