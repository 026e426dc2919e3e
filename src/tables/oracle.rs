//! Oracles, and the oracle stage's tables. What judges whether an image shows a caption. A stage names one by a string:
//! `labels` (the annotation decides: an image shows its own triplet's caption), `model` (the
//! `oracle` stage's CLIP-family model: cosine similarity of the region's crop and the caption),
//! or the path of a similarity matrix (`.npy`), which is identified in fingerprints by its
//! content, not its path.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The oracle that needs no file.
pub const LABELS: &str = "labels";

/// The matrix file an oracle string names, if it is not `labels` or `model`.
pub fn matrix_file(oracle: &str) -> Option<PathBuf> {
    (oracle != LABELS && oracle != MODEL).then(|| PathBuf::from(oracle))
}

/// A stage's config as JSON, with an oracle path replaced by `"matrix"` (its content is hashed
/// through [`inputs`] instead).
pub fn config_value<T: serde::Serialize>(config: &T, oracle: &str) -> serde_json::Value {
    let mut c = serde_json::to_value(config).expect("config serialises");
    if matrix_file(oracle).is_some() {
        c["oracle"] = serde_json::json!("matrix");
    }
    c
}

/// The oracle's file as a stage input, or an error naming the stage when it is missing.
pub fn inputs(stage: &str, oracle: &str) -> Result<Vec<(String, PathBuf)>> {
    match matrix_file(oracle) {
        None => Ok(vec![]),
        Some(p) if p.is_file() => Ok(vec![("oracle".into(), p)]),
        Some(p) => Err(Error::input_missing(
            stage,
            "oracle",
            &p,
            &format!("give a matrix or table file, `{LABELS}` or `{MODEL}`"),
        )),
    }
}

/// The oracle that the `oracle` stage computes with a CLIP-family model.
pub const MODEL: &str = "model";

/// Schema of `region_scores.parquet`.
pub fn region_scores_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("region_id", DataType::Int64, false),
        Field::new("triplet_id", DataType::Int64, false),
        Field::new("similarity", DataType::Float32, false),
    ]))
}

/// An oracle string with a file path made relative to `base` (a pipeline file's folder).
pub fn resolve(oracle: &str, base: &std::path::Path) -> String {
    match matrix_file(oracle) {
        Some(p) if p.is_relative() => base.join(p).to_string_lossy().into_owned(),
        _ => oracle.to_string(),
    }
}
