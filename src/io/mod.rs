//! Columnar I/O: Parquet tables written atomically, readers with projection, `inspect`, and the
//! schema descriptions kept under `schemas/`.

pub mod atomic;
pub mod chunks;
pub mod json_stream;
pub mod store;
pub mod torch;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, RecordBatchReader, StringArray,
};
use arrow::datatypes::{Field, Int32Type, Int64Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, WithPath};
use crate::io::atomic::AtomicFile;

/// Rows per Parquet row group: big enough for good compression, small enough to stream.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// A Parquet table being written under a temporary name; [`TableWriter::finish`] renames it in.
pub struct TableWriter {
    writer: ArrowWriter<AtomicFile>,
    path: PathBuf,
    rows: u64,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish()
    }
}

impl TableWriter {
    /// Start writing `path` with `schema`.
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self> {
        let file = AtomicFile::create(path)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("simat {}", crate::ENGINE_VERSION))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| e.with_path(path))?;
        Ok(TableWriter {
            writer,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    /// Append a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|e| Error::columnar(&self.path, e))
    }

    /// Write the footer and rename into place; returns the row count.
    pub fn finish(self) -> Result<u64> {
        let (file, rows) = self.close()?;
        file.commit()?;
        Ok(rows)
    }

    /// Write the footer but leave the file under its temporary name, so that several tables can
    /// be committed together once all of them are complete. Returns the file and the row count.
    pub fn close(self) -> Result<(AtomicFile, u64)> {
        let file = self
            .writer
            .into_inner()
            .map_err(|e| Error::columnar(&self.path, e))?;
        Ok((file, self.rows))
    }
}

/// Write one batch as a whole table.
pub fn write_table(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let mut w = TableWriter::create(path, batch.schema())?;
    w.write(batch)?;
    w.finish()
}

/// Read a Parquet table, keeping only `columns` (all when empty).
pub fn read_table(path: &Path, columns: &[&str]) -> Result<ParquetRecordBatchReader> {
    let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.with_path(path))?;
    let builder = if columns.is_empty() {
        builder
    } else {
        let schema = builder.parquet_schema();
        let mut indices = Vec::new();
        for name in columns {
            let idx = (0..schema.num_columns())
                .find(|&i| schema.column(i).path().parts()[0] == *name)
                .ok_or_else(|| {
                    Error::columnar(path, format!("column `{name}` is not in this table"))
                })?;
            indices.extend((0..schema.num_columns()).filter(|&i| {
                schema.column(i).path().parts()[0] == schema.column(idx).path().parts()[0]
            }));
        }
        indices.sort_unstable();
        indices.dedup();
        let mask = ProjectionMask::leaves(schema, indices);
        builder.with_projection(mask)
    };
    builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| e.with_path(path))
}

/// Read a whole Parquet table into one batch (small tables only).
pub fn read_all(path: &Path) -> Result<RecordBatch> {
    let reader = read_table(path, &[])?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.with_path(path))?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.with_path(path))
}

/// The schema of a Parquet or Arrow IPC file, without reading its rows.
pub fn read_schema(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    Ok(match sniff(path)? {
        FileKind::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| e.with_path(path))?
            .schema()
            .clone(),
        FileKind::ArrowIpc => arrow::ipc::reader::FileReader::try_new(file, None)
            .map_err(|e| e.with_path(path))?
            .schema(),
    })
}

/// A column by name, or an error naming the file and the column.
pub fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::columnar(path, format!("column `{name}` is missing")))
}

/// An Int64 column by name.
pub fn i64_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a Int64Array> {
    column(batch, name, path)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::columnar(path, format!("column `{name}` is not Int64")))
}

/// An Int32 column by name.
pub fn i32_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a Int32Array> {
    column(batch, name, path)?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| Error::columnar(path, format!("column `{name}` is not Int32")))
}

/// A Float64 column by name.
pub fn f64_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a arrow::array::Float64Array> {
    column(batch, name, path)?
        .as_primitive_opt::<arrow::datatypes::Float64Type>()
        .ok_or_else(|| Error::columnar(path, format!("column `{name}` is not Float64")))
}

/// A Boolean column by name.
pub fn bool_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a arrow::array::BooleanArray> {
    column(batch, name, path)?
        .as_boolean_opt()
        .ok_or_else(|| Error::columnar(path, format!("column `{name}` is not Boolean")))
}

/// A Utf8 column by name.
pub fn str_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a StringArray> {
    column(batch, name, path)?
        .as_string_opt::<i32>()
        .ok_or_else(|| Error::columnar(path, format!("column `{name}` is not Utf8")))
}

/// A portable description of an Arrow schema, as kept in `schemas/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaDoc {
    /// The columns in order.
    pub fields: Vec<FieldDoc>,
}

/// One column of a [`SchemaDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDoc {
    /// Column name.
    pub name: String,
    /// Arrow data type, as Arrow displays it (`Int64`, `Utf8`, `List(Utf8)`, ...).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether nulls are allowed.
    pub nullable: bool,
}

impl SchemaDoc {
    /// Describe `schema`.
    pub fn of(schema: &Schema) -> SchemaDoc {
        SchemaDoc {
            fields: schema
                .fields()
                .iter()
                .map(|f: &Arc<Field>| FieldDoc {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect(),
        }
    }
}

/// File formats `inspect` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC file format.
    ArrowIpc,
}

/// Sniff the format of `path` from its magic bytes.
pub fn sniff(path: &Path) -> Result<FileKind> {
    let mut head = [0u8; 6];
    let mut f = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let n = f
        .read(&mut head)
        .map_err(|e| Error::io("failed to read", path, e))?;
    if n >= 4 && &head[..4] == b"PAR1" {
        Ok(FileKind::Parquet)
    } else if n >= 6 && &head[..6] == b"ARROW1" {
        Ok(FileKind::ArrowIpc)
    } else {
        Err(Error::columnar(
            path,
            "neither a Parquet file (PAR1) nor an Arrow IPC file (ARROW1)",
        ))
    }
}

/// What `simat inspect` shows of a table.
#[derive(Debug)]
pub struct Inspection {
    /// The format.
    pub kind: FileKind,
    /// Its schema.
    pub schema: SchemaRef,
    /// Total rows.
    pub rows: u64,
    /// Row groups (Parquet) or record batches (IPC).
    pub groups: usize,
    /// The first rows.
    pub head: RecordBatch,
}

/// Schema, row count and the first `n` rows of a Parquet or Arrow IPC file.
pub fn inspect(path: &Path, n: usize) -> Result<Inspection> {
    let kind = sniff(path)?;
    let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let (schema, rows, groups, batches): (SchemaRef, u64, usize, Vec<RecordBatch>) = match kind {
        FileKind::Parquet => {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.with_path(path))?;
            let meta = builder.metadata().clone();
            let rows = meta.file_metadata().num_rows() as u64;
            let groups = meta.num_row_groups();
            let reader = builder
                .with_limit(n)
                .build()
                .map_err(|e| e.with_path(path))?;
            let schema = reader.schema();
            let batches = reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| e.with_path(path))?;
            (schema, rows, groups, batches)
        }
        FileKind::ArrowIpc => {
            let reader = arrow::ipc::reader::FileReader::try_new(file, None)
                .map_err(|e| e.with_path(path))?;
            let schema = reader.schema();
            let groups = reader.num_batches();
            let mut rows = 0u64;
            let mut head = Vec::new();
            let mut taken = 0usize;
            for batch in reader {
                let batch = batch.map_err(|e| e.with_path(path))?;
                rows += batch.num_rows() as u64;
                if taken < n {
                    let k = (n - taken).min(batch.num_rows());
                    head.push(batch.slice(0, k));
                    taken += k;
                }
            }
            (schema, rows, groups, head)
        }
    };
    let head = arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.with_path(path))?;
    Ok(Inspection {
        kind,
        schema,
        rows,
        groups,
        head,
    })
}
