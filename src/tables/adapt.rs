//! The tables of `adapt` and of the pairs it trains on.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Schema of `curve.parquet`: one row per training step; validation on each epoch's last step.
pub fn curve_schema() -> SchemaRef {
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    let o = |n: &str| Field::new(n, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        f("tau"),
        Field::new("epoch", DataType::Int64, false),
        Field::new("step", DataType::Int64, false),
        f("lr"),
        f("train_loss"),
        f("grad_norm"),
        o("val_loss"),
        o("val_recall_image_to_text"),
        o("val_recall_text_to_image"),
    ]))
}
