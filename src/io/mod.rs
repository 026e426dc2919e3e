//! Columnar I/O: Parquet tables written atomically, readers with projection, `inspect`, and the
//! schema descriptions kept under `schemas/`.

pub mod atomic;
pub mod chunks;
pub mod hash;
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
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, WithPath};
use crate::io::atomic::AtomicFile;
pub use hash::hash_file;

/// Rows per Parquet row group: big enough for good compression, small enough to stream.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// How every table is written: Snappy, row groups of [`ROW_GROUP_ROWS`], simat as the creator.
///
/// Top-level `Float32` columns (every one is a `similarity`: a score, nearly all distinct) are
/// written without a dictionary: one would hold every value, and interning them was the most
/// expensive part of writing `retrievals.parquet` (270,000 scores for official SIMAT).
fn writer_properties(schema: &Schema) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("simat {}", crate::ENGINE_VERSION));
    for field in schema.fields() {
        if field.data_type() == &DataType::Float32 {
            builder = builder
                .set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
    }
    builder.build()
}

/// Rows handed to the column writers at a time. Parquet's column writers cut pages at points
/// counted from the start of each write, so a table written from batches as they come would have
/// bytes that depend on the batches' sizes; fed in slices of a fixed size at fixed offsets, a
/// table's bytes depend on its rows alone. That is what lets a stage written in blocks (retrieve
/// in parts, chunks assembled after a resume) give the bytes of a run in one go. A divisor of
/// [`ROW_GROUP_ROWS`], so that no slice straddles a row group.
pub const WRITE_ROWS: usize = 64 * 1024;

/// A Parquet table being written under a temporary name; [`TableWriter::finish`] renames it in.
///
/// The bytes are those `ArrowWriter` writes with the same properties (row groups of
/// [`ROW_GROUP_ROWS`]) when it is given the rows in slices of [`WRITE_ROWS`], whatever the
/// batches they come in; each slice's columns are encoded in parallel, one rayon task per leaf
/// column.
pub struct TableWriter {
    file: SerializedFileWriter<AtomicFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The row group being encoded, and its rows so far.
    columns: Option<(Vec<ArrowColumnWriter>, usize)>,
    /// Rows not yet encoded (fewer than [`WRITE_ROWS`]), and how many.
    pending: (Vec<RecordBatch>, usize),
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
        let props = writer_properties(&schema);
        // ArrowWriter sets up the file (schema conversion, the embedded Arrow schema); its
        // parts are driven here so that columns encode in parallel.
        let (file, factory) = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(|e| e.with_path(path))?;
        Ok(TableWriter {
            file,
            factory,
            schema,
            columns: None,
            pending: (Vec::new(), 0),
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    /// Append a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut at = 0;
        while at < batch.num_rows() {
            let left = batch.num_rows() - at;
            if self.pending.1 == 0 && left >= WRITE_ROWS {
                self.encode(&batch.slice(at, WRITE_ROWS))?;
                at += WRITE_ROWS;
                continue;
            }
            let take = (WRITE_ROWS - self.pending.1).min(left);
            self.pending.0.push(batch.slice(at, take));
            self.pending.1 += take;
            at += take;
            if self.pending.1 == WRITE_ROWS {
                self.encode_pending()?;
            }
        }
        Ok(())
    }

    fn encode_pending(&mut self) -> Result<()> {
        let (batches, rows) = std::mem::take(&mut self.pending);
        if rows == 0 {
            return Ok(());
        }
        let slice = arrow::compute::concat_batches(&self.schema, &batches)
            .map_err(|e| Error::columnar(&self.path, e))?;
        self.encode(&slice)
    }

    /// Hand `slice` (at most [`WRITE_ROWS`] rows, at a multiple of it) to the column writers.
    fn encode(&mut self, slice: &RecordBatch) -> Result<()> {
        let (writers, buffered) = match &mut self.columns {
            Some(c) => c,
            slot => {
                let index = self.file.flushed_row_groups().len();
                let writers = self
                    .factory
                    .create_column_writers(index)
                    .map_err(|e| Error::columnar(&self.path, e))?;
                slot.insert((writers, 0))
            }
        };
        debug_assert!(*buffered + slice.num_rows() <= ROW_GROUP_ROWS);
        let mut leaves = Vec::with_capacity(writers.len());
        for (field, column) in self.schema.fields().iter().zip(slice.columns()) {
            leaves
                .extend(compute_leaves(field, column).map_err(|e| Error::columnar(&self.path, e))?);
        }
        writers
            .par_iter_mut()
            .zip(leaves.par_iter())
            .try_for_each(|(w, leaf)| w.write(leaf))
            .map_err(|e| Error::columnar(&self.path, e))?;
        *buffered += slice.num_rows();
        self.rows += slice.num_rows() as u64;
        if *buffered == ROW_GROUP_ROWS {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<()> {
        let Some((writers, _)) = self.columns.take() else {
            return Ok(());
        };
        let columnar = |e| Error::columnar(&self.path, e);
        let chunks: Vec<ArrowColumnChunk> = writers
            .into_par_iter()
            .map(ArrowColumnWriter::close)
            .collect::<std::result::Result<_, _>>()
            .map_err(columnar)?;
        let mut group = self.file.next_row_group().map_err(columnar)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut group).map_err(columnar)?;
        }
        group.close().map_err(columnar)?;
        Ok(())
    }

    /// Write the footer and rename into place; returns the row count.
    pub fn finish(self) -> Result<u64> {
        let (file, rows) = self.close()?;
        file.commit()?;
        Ok(rows)
    }

    /// Write the footer but leave the file under its temporary name, so that several tables can
    /// be committed together once all of them are complete. Returns the file and the row count.
    pub fn close(mut self) -> Result<(AtomicFile, u64)> {
        self.encode_pending()?;
        self.flush_row_group()?;
        let file = self
            .file
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
    read_table_in(path, columns, 64 * 1024)
}

/// [`read_table`] in batches of `batch_rows` rows (the last may be shorter).
pub fn read_table_in(
    path: &Path,
    columns: &[&str],
    batch_rows: usize,
) -> Result<ParquetRecordBatchReader> {
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
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| e.with_path(path))
}

/// Rows `rows` of a Parquet table, as one batch: a block of a table read without decoding the
/// rows before it.
pub fn read_rows(path: &Path, rows: std::ops::Range<usize>) -> Result<RecordBatch> {
    let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.with_path(path))?;
    let schema = builder.schema().clone();
    let reader = builder
        .with_offset(rows.start)
        .with_limit(rows.len())
        .with_batch_size(rows.len().max(1))
        .build()
        .map_err(|e| e.with_path(path))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.with_path(path))?;
    let batch = arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.with_path(path))?;
    if batch.num_rows() != rows.len() {
        return Err(Error::columnar(
            path,
            format!(
                "rows {}..{} asked for, {} read (the table has fewer rows)",
                rows.start,
                rows.end,
                batch.num_rows()
            ),
        ));
    }
    Ok(batch)
}

/// The row count of a Parquet table, from its footer.
pub fn table_rows(path: &Path) -> Result<usize> {
    let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.with_path(path))?;
    Ok(builder.metadata().file_metadata().num_rows() as usize)
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
                    data_type: match f.data_type() {
                        // An embedding of any dimension (see `tables::stores`).
                        DataType::FixedSizeList(item, 0) => {
                            format!("FixedSizeList(D x {})", item.data_type())
                        }
                        t => t.to_string(),
                    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ListBuilder, StringBuilder};

    /// Batches of uneven sizes that straddle row groups, with nulls and a list column: the
    /// parallel writer's bytes equal `ArrowWriter`'s given the rows in slices of `WRITE_ROWS`,
    /// and the same rows in other batches give the same bytes.
    #[test]
    fn the_parallel_writer_writes_arrow_writers_bytes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", arrow::datatypes::DataType::Int64, false),
            Field::new("name", arrow::datatypes::DataType::Utf8, true),
            Field::new(
                "synsets",
                arrow::datatypes::DataType::List(Arc::new(Field::new(
                    "item",
                    arrow::datatypes::DataType::Utf8,
                    true,
                ))),
                true,
            ),
        ]));
        let batch = |from: usize, rows: usize| {
            let ids = Int64Array::from_iter_values((from..from + rows).map(|i| i as i64 * 7));
            let names = StringArray::from_iter(
                (from..from + rows).map(|i| (i % 11 != 0).then(|| format!("n{}", i % 97))),
            );
            let mut lists = ListBuilder::new(StringBuilder::new());
            for i in from..from + rows {
                if i % 13 == 0 {
                    lists.append_null();
                } else {
                    for j in 0..i % 3 {
                        lists.values().append_value(format!("s{}.n.0{j}", i % 31));
                    }
                    lists.append(true);
                }
            }
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(ids), Arc::new(names), Arc::new(lists.finish())],
            )
            .unwrap()
        };
        let sizes = [
            1,
            100_000,
            ROW_GROUP_ROWS - 100_001,
            3,
            ROW_GROUP_ROWS + 5,
            70_000,
        ];
        let dir = tempfile::tempdir().unwrap();
        let write_in = |name: &str, sizes: &[usize]| {
            let path = dir.path().join(name);
            let mut w = TableWriter::create(&path, schema.clone()).unwrap();
            let mut from = 0;
            for &n in sizes {
                w.write(&batch(from, n)).unwrap();
                from += n;
            }
            assert_eq!(w.finish().unwrap(), from as u64);
            (path, from)
        };
        let (ours, from) = write_in("ours.parquet", &sizes);
        let mut reference =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties(&schema)))
                .unwrap();
        for at in (0..from).step_by(WRITE_ROWS) {
            reference
                .write(&batch(at, WRITE_ROWS.min(from - at)))
                .unwrap();
        }
        let reference = reference.into_inner().unwrap();
        let written = std::fs::read(&ours).unwrap();
        let (other, _) = write_in("other.parquet", &[from - 1000, 999, 1]);
        assert!(
            std::fs::read(other).unwrap() == written,
            "other batches of the same rows give other bytes"
        );
        let groups = ParquetRecordBatchReaderBuilder::try_new(File::open(&ours).unwrap())
            .unwrap()
            .metadata()
            .num_row_groups();
        assert_eq!(groups, from.div_ceil(ROW_GROUP_ROWS));
        assert!(written == reference, "the bytes differ from ArrowWriter's");
    }

    #[test]
    fn similarities_are_written_without_a_dictionary_and_ids_with_one() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("dataset_id", DataType::Int64, false),
            Field::new("similarity", DataType::Float32, false),
        ]));
        let ids = Int64Array::from_iter_values((0..5000).map(|i| i % 7));
        let sims = arrow::array::Float32Array::from_iter_values((0..5000).map(|i| i as f32 * 0.25));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(sims)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_table(&path, &batch).unwrap();
        let file = File::open(&path).unwrap();
        let meta = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .metadata()
            .clone();
        let chunk = |c: usize| meta.row_group(0).column(c).dictionary_page_offset();
        assert!(chunk(0).is_some(), "dataset_id lost its dictionary");
        assert!(
            chunk(1).is_none(),
            "similarity was written with a dictionary"
        );
        let back = read_all(&path).unwrap();
        assert_eq!(back, batch);
    }
}
