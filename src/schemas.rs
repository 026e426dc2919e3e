//! The Arrow schema of every stage output, as documented under `schemas/<stage>/<file>.json`.
//!
//! A test compares these with the files in `schemas/` and with what the stages actually write;
//! `simat schemas --write DIR` regenerates the folder after an intended change.

use std::path::Path;

use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::io::SchemaDoc;
use crate::run::atomic::write_atomic;

/// Every table a stage writes: (stage, file, schema).
pub fn all() -> Vec<(&'static str, &'static str, SchemaRef)> {
    vec![
        ("ingest", "images.parquet", crate::ingest::images_schema()),
        (
            "ingest",
            "relationships.parquet",
            crate::ingest::relationships_schema(),
        ),
        ("ingest", "objects.parquet", crate::ingest::objects_schema()),
        (
            "ingest",
            "attributes.parquet",
            crate::ingest::attributes_schema(),
        ),
        (
            "triplets",
            "regions.parquet",
            crate::triplets::regions_schema(),
        ),
        (
            "triplets",
            "triplets.parquet",
            crate::triplets::triplets_schema(),
        ),
        ("crops", "crops.parquet", crate::crops::crops_schema()),
        (
            "oracle",
            "region_scores.parquet",
            crate::oracle::region_scores_schema(),
        ),
        (
            "select",
            "dataset.parquet",
            crate::dataset::dataset_schema(),
        ),
        (
            "import",
            "regions.parquet",
            crate::triplets::regions_schema(),
        ),
        (
            "import",
            "triplets.parquet",
            crate::triplets::triplets_schema(),
        ),
        (
            "import",
            "dataset.parquet",
            crate::dataset::dataset_schema(),
        ),
        (
            "import",
            "queries.parquet",
            crate::dataset::queries_schema(),
        ),
        (
            "queries",
            "queries.parquet",
            crate::dataset::queries_schema(),
        ),
        (
            "retrieve",
            "retrievals.parquet",
            crate::retrieve::retrievals_schema(),
        ),
        ("score", "scores.parquet", crate::score::scores_schema()),
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
