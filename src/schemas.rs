//! The Arrow schema of every stage output, as documented under `schemas/<stage>/<file>.json`.
//!
//! A test compares these with the files in `schemas/` and with what the stages actually write;
//! `simat schemas --write DIR` regenerates the folder after an intended change.

use std::path::Path;

use arrow::datatypes::SchemaRef;

use crate::engine::atomic::write_atomic;
use crate::error::Result;
use crate::io::SchemaDoc;

/// Every table a stage writes: (stage, file, schema).
pub fn all() -> Vec<(&'static str, &'static str, SchemaRef)> {
    vec![
        (
            "ingest",
            "images.parquet",
            crate::stages::ingest::images_schema(),
        ),
        (
            "ingest",
            "relationships.parquet",
            crate::stages::ingest::relationships_schema(),
        ),
        (
            "ingest",
            "objects.parquet",
            crate::stages::ingest::objects_schema(),
        ),
        (
            "ingest",
            "attributes.parquet",
            crate::stages::ingest::attributes_schema(),
        ),
        (
            "triplets",
            "regions.parquet",
            crate::stages::triplets::regions_schema(),
        ),
        (
            "triplets",
            "triplets.parquet",
            crate::stages::triplets::triplets_schema(),
        ),
        (
            "crops",
            "crops.parquet",
            crate::stages::crops::crops_schema(),
        ),
        (
            "oracle",
            "region_scores.parquet",
            crate::stages::oracle::region_scores_schema(),
        ),
        (
            "select",
            "dataset.parquet",
            crate::tables::dataset::dataset_schema(),
        ),
        (
            "import",
            "regions.parquet",
            crate::stages::triplets::regions_schema(),
        ),
        (
            "import",
            "triplets.parquet",
            crate::stages::triplets::triplets_schema(),
        ),
        (
            "import",
            "dataset.parquet",
            crate::tables::dataset::dataset_schema(),
        ),
        (
            "import",
            "queries.parquet",
            crate::tables::dataset::queries_schema(),
        ),
        (
            "queries",
            "queries.parquet",
            crate::tables::dataset::queries_schema(),
        ),
        (
            "retrieve",
            "retrievals.parquet",
            crate::stages::retrieve::retrievals_schema(),
        ),
        (
            "score",
            "scores.parquet",
            crate::stages::score::scores_schema(),
        ),
    ]
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
