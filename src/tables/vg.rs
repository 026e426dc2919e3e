//! The Visual Genome tables of `ingest`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{list_field, xywh_fields as box_fields};

/// Schema of `images.parquet`.
pub fn images_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Int64, false),
        Field::new("width", DataType::Int32, false),
        Field::new("height", DataType::Int32, false),
        Field::new("coco_id", DataType::Int64, true),
        Field::new("flickr_id", DataType::Int64, true),
        Field::new("url", DataType::Utf8, true),
    ]))
}

/// Schema of `relationships.parquet`.
pub fn relationships_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("image_id", DataType::Int64, false),
        Field::new("relationship_id", DataType::Int64, false),
        Field::new("predicate", DataType::Utf8, false),
        list_field("synsets"),
    ];
    for side in ["subj", "obj"] {
        fields.push(Field::new(format!("{side}_id"), DataType::Int64, false));
        fields.push(Field::new(format!("{side}_name"), DataType::Utf8, false));
        fields.push(list_field(&format!("{side}_synsets")));
        fields.extend(box_fields(&format!("{side}_")));
    }
    Arc::new(Schema::new(fields))
}

/// Schema of `objects.parquet`.
pub fn objects_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("image_id", DataType::Int64, false),
        Field::new("object_id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        list_field("names"),
        list_field("synsets"),
    ];
    fields.extend(box_fields(""));
    Arc::new(Schema::new(fields))
}

/// Schema of `attributes.parquet`.
pub fn attributes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Int64, false),
        Field::new("object_id", DataType::Int64, false),
        list_field("attributes"),
    ]))
}
