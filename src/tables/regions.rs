//! Regions and triplets: `triplets` extracts them from Visual Genome, `import` reads the
//! release's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::tables::dataset::{ints, strs};

use super::{corner_fields as box_fields, list_field};

/// Schema of `regions.parquet`.
pub fn regions_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("region_id", DataType::Int64, false),
        Field::new("image_id", DataType::Int64, false),
        Field::new("subj_id", DataType::Int64, false),
        Field::new("obj_id", DataType::Int64, false),
        Field::new("relationship_id", DataType::Int64, false),
        Field::new("n_annotations", DataType::Int64, false),
        Field::new("triplet_id", DataType::Int64, false),
        Field::new("subj", DataType::Utf8, false),
        Field::new("rel", DataType::Utf8, false),
        Field::new("obj", DataType::Utf8, false),
        Field::new("predicate", DataType::Utf8, false),
        list_field("subj_attrs"),
        list_field("obj_attrs"),
    ];
    fields.extend(box_fields("subj_"));
    fields.extend(box_fields("obj_"));
    fields.extend(box_fields(""));
    Arc::new(Schema::new(fields))
}

/// Schema of `triplets.parquet`.
pub fn triplets_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("triplet_id", DataType::Int64, false),
        Field::new("subj", DataType::Utf8, false),
        Field::new("rel", DataType::Utf8, false),
        Field::new("obj", DataType::Utf8, false),
        Field::new("n_regions", DataType::Int64, false),
        Field::new("n_images", DataType::Int64, false),
        Field::new("caption", DataType::Utf8, false),
    ]))
}

/// Captions of a triplets table (`triplets.parquet`) by `triplet_id`.
pub fn captions(triplets_table: &Path) -> Result<BTreeMap<i64, String>> {
    let path = triplets_table;
    let batch = crate::io::read_all(path)?;
    let ids = ints(&batch, "triplet_id", path)?;
    let captions = strs(&batch, "caption", path)?;
    Ok(ids.into_iter().zip(captions).collect())
}
