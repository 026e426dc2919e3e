//! The crops table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::tables::dataset::{ints, strs};

/// Schema of `crops.parquet`.
pub fn crops_schema() -> SchemaRef {
    let i32f = |n: &str| Field::new(n, DataType::Int32, false);
    Arc::new(Schema::new(vec![
        Field::new("region_id", DataType::Int64, false),
        Field::new("image_id", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("file", DataType::Utf8, true),
        i32f("x1"),
        i32f("y1"),
        i32f("x2"),
        i32f("y2"),
        i32f("width"),
        i32f("height"),
    ]))
}

/// Usable crops of a crops table (`crops.parquet`): region id → PNG path, and every region's
/// status.
pub fn crop_files(crops_table: &Path) -> Result<(BTreeMap<i64, PathBuf>, BTreeMap<i64, String>)> {
    let path = crops_table.to_path_buf();
    let crops_dir = crops_table.parent().unwrap_or(Path::new("."));
    let batch = crate::io::read_all(&path)?;
    let region = ints(&batch, "region_id", &path)?;
    let status = strs(&batch, "status", &path)?;
    let file = crate::io::column(&batch, "file", &path)?.as_string::<i32>();
    let mut files = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    for i in 0..region.len() {
        if matches!(status[i].as_str(), "ok" | "clamped" | "padded") && file.is_valid(i) {
            files.insert(region[i], crops_dir.join(file.value(i)));
        }
        statuses.insert(region[i], status[i].clone());
    }
    Ok((files, statuses))
}
