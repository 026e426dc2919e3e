//! The embedding stores' schemas: their key columns, then `embedding`, a `FixedSizeList` of
//! `Float32` whose size is the model's dimension. The declared size 0 stands for any dimension
//! (the engine's output check and the schema documents read it so).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

fn store_schema(keys: &[(&str, DataType)]) -> SchemaRef {
    let mut fields: Vec<Field> = keys
        .iter()
        .map(|(name, ty)| Field::new(*name, ty.clone(), false))
        .collect();
    fields.push(crate::io::store::embedding_field(0));
    Arc::new(Schema::new(fields))
}

/// Schema of the `oracle_regions` store (any embedding dimension).
pub fn oracle_regions_schema() -> SchemaRef {
    store_schema(&[("region_id", DataType::Int64)])
}

/// Schema of the `oracle_captions` store (any embedding dimension).
pub fn oracle_captions_schema() -> SchemaRef {
    store_schema(&[("triplet_id", DataType::Int64)])
}

/// Schema of the `image_embeddings` store (any embedding dimension).
pub fn image_embeddings_schema() -> SchemaRef {
    store_schema(&[
        ("dataset_id", DataType::Int64),
        ("region_id", DataType::Int64),
    ])
}

/// Schema of the `word_embeddings` store (any embedding dimension).
pub fn word_embeddings_schema() -> SchemaRef {
    store_schema(&[("word", DataType::Utf8)])
}

/// Schema of the `caption_embeddings` store (any embedding dimension).
pub fn caption_embeddings_schema() -> SchemaRef {
    store_schema(&[("triplet_id", DataType::Int64)])
}

/// Schema of the `pair_images` store (any embedding dimension).
pub fn pair_images_schema() -> SchemaRef {
    store_schema(&[("image_id", DataType::Int64)])
}

/// Schema of the `pair_captions` store (any embedding dimension).
pub fn pair_captions_schema() -> SchemaRef {
    store_schema(&[
        ("image_id", DataType::Int64),
        ("caption_id", DataType::Int64),
        ("caption", DataType::Utf8),
    ])
}
