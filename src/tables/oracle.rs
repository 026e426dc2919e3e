//! The `oracle` stage's tables (the oracle itself, what judges whether an image shows a caption,
//! is [`crate::oracle`]).

/// Schema of `region_scores.parquet`.
pub fn region_scores_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("region_id", DataType::Int64, false),
        Field::new("triplet_id", DataType::Int64, false),
        Field::new("similarity", DataType::Float32, false),
    ]))
}
