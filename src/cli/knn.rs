//! `simat knn`: the retrieval kernel as a general exact inner-product k-NN tool for offline
//! scoring jobs. Output: Parquet with `query, rank, id, score`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::io::TableWriter;
use crate::linalg::Hit;

/// Schema of the k-NN output.
pub fn knn_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query", DataType::Int64, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("id", DataType::Int64, false),
        Field::new("similarity", DataType::Float32, false),
    ]))
}

/// Write `hits[query]` to `path` (atomically), in batches; returns the row count.
pub fn write_hits(path: &Path, hits: &[Vec<Hit>]) -> Result<u64> {
    let mut w = TableWriter::create(path, knn_schema())?;
    for (c, chunk) in hits.chunks(64 * 1024).enumerate() {
        let base = c * 64 * 1024;
        let (mut q, mut r, mut id, mut s) = (vec![], vec![], vec![], vec![]);
        for (i, list) in chunk.iter().enumerate() {
            for (rank, h) in list.iter().enumerate() {
                q.push((base + i) as i64);
                r.push(rank as i32);
                id.push(h.id as i64);
                s.push(h.score);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(q)),
            Arc::new(Int32Array::from(r)),
            Arc::new(Int64Array::from(id)),
            Arc::new(Float32Array::from(s)),
        ];
        w.write(&RecordBatch::try_new(knn_schema(), cols).expect("knn batch matches its schema"))?;
    }
    w.finish()
}
