//! Oracles: what judges whether an image shows a caption. A stage names one by a string, either
//! `labels` (the annotation decides: an image shows its own triplet's caption) or the path of a
//! similarity matrix (`.npy`), which is identified in fingerprints by its content, not its path.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The oracle that needs no file.
pub const LABELS: &str = "labels";

/// The matrix file an oracle string names, if it is not `labels`.
pub fn matrix_file(oracle: &str) -> Option<PathBuf> {
    (oracle != LABELS).then(|| PathBuf::from(oracle))
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
        Some(p) => Err(Error::stage(
            stage,
            format!(
                "oracle `{}` not found (give a .npy matrix or `{LABELS}`)",
                p.display()
            ),
        )),
    }
}
