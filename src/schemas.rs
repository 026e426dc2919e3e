//! The Arrow schema of every stage output, as documented under `schemas/<stage>/<file>.json`.
//!
//! A test compares these with the files in `schemas/` and with what the stages actually write;
//! `simat schemas --write DIR` regenerates the folder after an intended change.

use std::path::Path;

use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::io::atomic::write_atomic;
use crate::io::SchemaDoc;

/// Every table a stage can write that has a schema: (stage, file, schema), from the registry.
pub fn all() -> Vec<(&'static str, &'static str, SchemaRef)> {
    crate::stages::ALL
        .iter()
        .flat_map(|e| {
            e.provides()
                .iter()
                .filter_map(move |t| t.schema.map(|schema| (e.name(), t.file, schema())))
        })
        .collect()
}

/// The JSON document describing `schema`.
pub fn to_json(schema: &SchemaRef) -> String {
    let mut s = serde_json::to_string_pretty(&SchemaDoc::of(schema)).expect("serialises");
    s.push('\n');
    s
}

/// File name of a table's schema document: `regions.parquet` → `regions.json`.
pub fn doc_name(file: &str) -> String {
    let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
    format!("{stem}.json")
}

/// Write every schema document under `dir`.
pub fn write_all(dir: &Path) -> Result<usize> {
    let all = all();
    for (stage, file, schema) in &all {
        write_atomic(
            dir.join(stage).join(doc_name(file)),
            to_json(schema).as_bytes(),
        )?;
    }
    Ok(all.len())
}
