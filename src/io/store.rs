//! Embedding stores and matrix files.
//!
//! An embedding store is an Arrow IPC file with key columns (`dataset_id: Int64`,
//! `region_id: Int64`, `word: Utf8`, `key: Utf8`, ...) and `embedding: FixedSizeList<Float32,
//! D>`. It is written as one record batch, so that [`EmbeddingStore::open`] can memory-map it and
//! hand the embeddings to the kernels as one contiguous `&[f32]` without copying.
//!
//! Stores hold a model's **raw** outputs, as its towers give them (the schema's metadata says
//! so: `simat:vectors = raw`): heads apply to raw outputs, and whoever compares vectors
//! normalises them when reading ([`EmbeddingStore::normalised`]).
//!
//! [`read_matrix`] reads a matrix from `.npy` (f16, f32 or f64), a PyTorch file holding one 2-D
//! tensor, or the embedding column of an Arrow IPC or Parquet file.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Float32Type, Schema};

use crate::error::{Error, Result, WithPath};
use crate::io::atomic::AtomicFile;
use crate::linalg::{Matrix, MatrixView};

/// Name of the embedding column.
pub const EMBEDDING: &str = "embedding";

/// The `embedding` field for dimension `d`.
pub fn embedding_field(d: usize) -> Field {
    Field::new(
        EMBEDDING,
        DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, false)),
            d as i32,
        ),
        false,
    )
}

/// Which column holds the embeddings: `embedding`, else the first `FixedSizeList` column.
pub fn embedding_column(schema: &arrow::datatypes::Schema) -> Option<usize> {
    schema.index_of(EMBEDDING).ok().or_else(|| {
        schema
            .fields()
            .iter()
            .position(|f| matches!(f.data_type(), DataType::FixedSizeList(_, _)))
    })
}

/// The embeddings of a batch whose shape [`embedding_shape`] checked, row-major.
fn embedding_values(batch: &RecordBatch, rows: usize, dim: usize) -> &[f32] {
    let list = batch
        .column(embedding_column(&batch.schema()).expect("checked by embedding_shape"))
        .as_fixed_size_list();
    let values = list.values().as_primitive::<Float32Type>().values();
    let start = list.offset() * dim;
    &values[start..start + rows * dim]
}

/// Schema metadata key saying what the vectors of a store are.
pub const VECTORS_KEY: &str = "simat:vectors";

/// Write an embedding store of raw vectors: the key columns (each `rows` long) beside the
/// matrix.
pub fn write_store(path: &Path, keys: &[(&str, ArrayRef)], m: &Matrix) -> Result<()> {
    if let Some((name, ids)) = keys.iter().find(|(_, ids)| ids.len() != m.rows) {
        return Err(Error::Internal(format!(
            "{} values of `{name}` for {} embeddings",
            ids.len(),
            m.rows
        )));
    }
    let values = Float32Array::from(m.data.clone());
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        m.cols as i32,
        Arc::new(values),
        None,
    )
    .map_err(|e| e.with_path(path))?;
    let mut fields: Vec<Field> = keys
        .iter()
        .map(|(name, ids)| Field::new(*name, ids.data_type().clone(), false))
        .collect();
    fields.push(embedding_field(m.cols));
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        std::collections::HashMap::from([(VECTORS_KEY.to_string(), "raw".to_string())]),
    ));
    let mut columns: Vec<ArrayRef> = keys.iter().map(|(_, ids)| ids.clone()).collect();
    columns.push(Arc::new(list));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.with_path(path))?;
    let mut file = AtomicFile::create(path)?;
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(file.writer(), &schema)
            .map_err(|e| e.with_path(path))?;
        w.write(&batch).map_err(|e| e.with_path(path))?;
        w.finish().map_err(|e| e.with_path(path))?;
    }
    file.commit()?;
    Ok(())
}

/// A memory-mapped embedding store.
#[derive(Debug, Clone)]
pub struct EmbeddingStore {
    /// The record batch (its buffers point into the mapping).
    pub batch: RecordBatch,
    /// Rows.
    pub rows: usize,
    /// Dimension.
    pub dim: usize,
}

impl EmbeddingStore {
    /// Map `path` and decode its single record batch without copying.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
        // SAFETY: stores are written once (temporary name, then rename) and never modified in
        // place; a concurrent writer would replace the file, not change the mapped pages.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::io("failed to map", path, e))?;
        let buffer = Buffer::from(bytes::Bytes::from_owner(mmap));
        let bad = |m: &str| Error::columnar(path, format!("not an Arrow IPC file: {m}"));
        if buffer.len() < 16 || &buffer[..6] != b"ARROW1" {
            return Err(bad("missing ARROW1 magic"));
        }
        let trailer = buffer.len() - 10;
        let footer_len =
            arrow::ipc::reader::read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
                .map_err(|e| e.with_path(path))?;
        if footer_len > trailer {
            return Err(bad("footer length out of range"));
        }
        let footer = arrow::ipc::root_as_footer(&buffer[trailer - footer_len..trailer])
            .map_err(|e| Error::columnar(path, e))?;
        let schema = arrow::ipc::convert::try_fb_to_schema(
            footer.schema().ok_or_else(|| bad("no schema in footer"))?,
        )
        .map_err(|e| e.with_path(path))?;
        let decoder =
            arrow::ipc::reader::FileDecoder::new(Arc::new(schema.clone()), footer.version());
        let blocks = footer
            .recordBatches()
            .ok_or_else(|| bad("no record batches"))?;
        let mut batches = Vec::new();
        for block in blocks.iter() {
            let len = block.bodyLength() as usize + block.metaDataLength() as usize;
            if block.offset() as usize + len > buffer.len() {
                return Err(bad("record batch out of range (truncated file?)"));
            }
            let data = buffer.slice_with_length(block.offset() as usize, len);
            if let Some(b) = decoder
                .read_record_batch(block, &data)
                .map_err(|e| e.with_path(path))?
            {
                batches.push(b);
            }
        }
        let batch = match batches.len() {
            1 => batches.pop().expect("one batch"),
            _ => arrow::compute::concat_batches(&Arc::new(schema), &batches)
                .map_err(|e| e.with_path(path))?,
        };
        let (rows, dim) = embedding_shape(&batch, path)?;
        Ok(EmbeddingStore { batch, rows, dim })
    }

    /// The embeddings, row-major, `rows × dim`.
    pub fn values(&self) -> &[f32] {
        embedding_values(&self.batch, self.rows, self.dim)
    }

    /// The vectors as a matrix, without a copy.
    pub fn view(&self) -> MatrixView<'_> {
        MatrixView::new(self.rows, self.dim, self.values())
    }

    /// A copy as a [`Matrix`].
    pub fn to_matrix(&self) -> Matrix {
        Matrix {
            rows: self.rows,
            cols: self.dim,
            data: self.values().to_vec(),
        }
    }

    /// A copy with every row L2-normalised, for comparing by inner product.
    pub fn normalised(&self) -> Matrix {
        let mut m = self.to_matrix();
        crate::linalg::normalize_rows(&mut m);
        m
    }
}

fn embedding_shape(batch: &RecordBatch, path: &Path) -> Result<(usize, usize)> {
    let col = embedding_column(&batch.schema())
        .map(|i| batch.column(i))
        .ok_or_else(|| {
            Error::columnar(path, "no `embedding` column (FixedSizeList<Float32, D>)")
        })?;
    match col.data_type() {
        DataType::FixedSizeList(f, d) if f.data_type() == &DataType::Float32 => {
            if col.null_count() > 0 {
                return Err(Error::columnar(path, "the embedding column holds nulls"));
            }
            Ok((col.len(), *d as usize))
        }
        other => Err(Error::columnar(
            path,
            format!("embedding column is {other}, expected FixedSizeList<Float32, D>"),
        )),
    }
}

/// Whether `path` is a `.npy` file (by its magic).
pub fn is_npy(path: &Path) -> Result<bool> {
    let mut head = [0u8; 6];
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let _ = f.read(&mut head);
    Ok(&head == b"\x93NUMPY")
}

/// Whether `path` begins as a file of embeddings does (`.npy`, a PyTorch zip, Parquet, Arrow
/// IPC), checked before anything runs; the message says what it is not.
pub fn check_embeddings_file(path: &Path) -> std::result::Result<(), String> {
    use std::io::Read;
    let mut head = [0u8; 6];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
    let head = &head[..n];
    if [&b"\x93NUMPY"[..], b"PK", b"PAR1", b"ARROW1"]
        .iter()
        .any(|m| head.starts_with(m))
    {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a file of embeddings: expected .npy, a PyTorch file, Parquet or Arrow IPC",
            path.display()
        ))
    }
}

/// Read a matrix from `.npy` (2-D, f16/f32/f64, C order), a PyTorch file holding one 2-D
/// tensor, or the embedding column of an Arrow IPC or Parquet file.
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    if is_npy(path)? {
        let (shape, data) = read_npy_f32(path)?;
        if shape.len() != 2 {
            return Err(Error::data(
                path,
                format!("expected a 2-D array, found shape {shape:?}"),
            ));
        }
        return Matrix::new(shape[0], shape[1], data);
    }
    if crate::io::torch::is_torch_zip(path) {
        return crate::io::torch::read_matrix(path);
    }
    Ok(read_table_embeddings(path)?.1)
}

/// The rows of an Arrow IPC or Parquet file with an embedding column: the whole batch (for its
/// key columns) and the embeddings as a matrix.
pub fn read_table_embeddings(path: &Path) -> Result<(RecordBatch, Matrix)> {
    let batch = match crate::io::sniff(path)? {
        crate::io::FileKind::ArrowIpc => {
            let store = EmbeddingStore::open(path)?;
            let m = store.to_matrix();
            return Ok((store.batch, m));
        }
        crate::io::FileKind::Parquet => crate::io::read_all(path)?,
    };
    let (rows, dim) = embedding_shape(&batch, path)?;
    let m = Matrix::new(rows, dim, embedding_values(&batch, rows, dim).to_vec())?;
    Ok((batch, m))
}

/// Write a matrix as a 2-D f32 `.npy` (atomically).
pub fn write_npy(path: &Path, m: &Matrix) -> Result<()> {
    use npyz::WriterBuilder;
    let mut file = AtomicFile::create(path)?;
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[m.rows as u64, m.cols as u64])
            .writer(file.writer())
            .begin_nd()
            .map_err(|e| Error::io("failed to write", path, e))?;
        w.extend(m.data.iter().copied())
            .map_err(|e| Error::io("failed to write", path, e))?;
        w.finish()
            .map_err(|e| Error::io("failed to write", path, e))?;
    }
    file.commit()?;
    Ok(())
}

/// Write a vector as a 1-D f32 `.npy` (atomically).
pub fn write_npy_vector(path: &Path, v: &[f32]) -> Result<()> {
    use npyz::WriterBuilder;
    let mut file = AtomicFile::create(path)?;
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[v.len() as u64])
            .writer(file.writer())
            .begin_nd()
            .map_err(|e| Error::io("failed to write", path, e))?;
        w.extend(v.iter().copied())
            .map_err(|e| Error::io("failed to write", path, e))?;
        w.finish()
            .map_err(|e| Error::io("failed to write", path, e))?;
    }
    file.commit()?;
    Ok(())
}

/// Read a 1-D `.npy` of floats (a bias).
pub fn read_vector(path: &Path) -> Result<Vec<f32>> {
    let (shape, data) = read_npy_f32(path)?;
    if shape.len() != 1 {
        return Err(Error::data(
            path,
            format!("expected a 1-D array, found shape {shape:?}"),
        ));
    }
    Ok(data)
}

fn npy_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(path, format!("cannot read .npy: {e}"))
}

/// The checked `.npy` reader, its shape, its dtype (`<f4`, …) and the length of its header.
type OpenNpy = (npyz::NpyFile<BufReader<File>>, Vec<usize>, String, u64);

fn open_npy(path: &Path) -> Result<OpenNpy> {
    let (header_len, text) = npy_header(path)?;
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::io("failed to read", path, e))?
        .len();
    precheck_npy_shape(path, &text, file_len)?;
    let f = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let npy = npyz::NpyFile::new(BufReader::new(f)).map_err(|e| npy_err(path, e))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(Error::data(
            path,
            "Fortran-ordered array; save it with np.ascontiguousarray first",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr().trim_matches('\'').to_string();
    let holds = file_len.saturating_sub(header_len);
    check_npy_size(
        path,
        npy.shape(),
        npy.dtype().num_bytes(),
        header_len,
        holds,
    )?;
    Ok((npy, shape, descr, header_len))
}

/// The array a `.npy` header describes must be the data the file holds: its element count
/// computed without overflow (a header can claim 2³² × 2³², which wraps to 0) and its bytes equal
/// to what follows the header, before anything is allocated for it.
fn check_npy_size(
    path: &Path,
    shape: &[u64],
    item: Option<usize>,
    header: u64,
    holds: u64,
) -> Result<()> {
    let claimed = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(item? as u64));
    match claimed {
        Some(bytes) if bytes == holds => Ok(()),
        Some(bytes) => Err(Error::data(
            path,
            format!(
                "the header's shape {shape:?} needs {bytes} bytes of data, the file holds {holds} after its {header}-byte header (truncated or not a .npy?)"
            ),
        )),
        None => Err(Error::data(
            path,
            format!("the header's shape {shape:?} is too large to exist (its size overflows 64 bits)"),
        )),
    }
}

/// The header of a `.npy`: its length in bytes (magic, version, length field and text) and its
/// text.
fn npy_header(path: &Path) -> Result<(u64, String)> {
    use std::io::{Read, Seek};
    let mut f = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
    let mut head = [0u8; 12];
    f.read_exact(&mut head)
        .map_err(|_| Error::data(path, "not a .npy file: shorter than its header"))?;
    let (start, len) = match head[6] {
        1 => (10u64, u16::from_le_bytes([head[8], head[9]]) as u64),
        _ => (
            12u64,
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64,
        ),
    };
    f.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io("failed to read", path, e))?;
    let mut text = String::new();
    f.take(len.min(1 << 20))
        .read_to_string(&mut text)
        .map_err(|_| Error::data(path, "the .npy header is not text"))?;
    Ok((start + len, text))
}

/// The deepest bracket nesting a `.npy` header may have (a plain one has two: `{…(…)}`).
const MAX_NPY_NESTING: usize = 4;

/// Before npyz multiplies the header's dimensions (which wraps, or panics), check that their
/// product exists and is no more elements than the file has bytes.
fn precheck_npy_shape(path: &Path, text: &str, file_len: u64) -> Result<()> {
    // npyz's header parser backtracks: a few dozen nested brackets take it minutes (found by
    // fuzzing). The headers simat reads (a plain dtype and a shape) nest two levels.
    let mut depth = 0usize;
    for c in text.bytes() {
        match c {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NPY_NESTING {
                    return Err(Error::data(
                        path,
                        format!(
                            "the .npy header nests brackets more than {MAX_NPY_NESTING} levels deep: not an array of plain numbers"
                        ),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let Some(open) = text
        .find("'shape'")
        .and_then(|i| text[i..].find('(').map(|j| i + j))
    else {
        return Ok(()); // npyz names what is missing
    };
    let close = text[open..]
        .find(')')
        .map(|j| open + j)
        .unwrap_or(text.len());
    let mut count: Option<u64> = Some(1);
    for dim in text[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let Ok(d) = dim.parse::<u64>() else {
            return Ok(()); // not a number: npyz's error says so
        };
        count = count.and_then(|c| c.checked_mul(d));
    }
    let shape = &text[open..=close.min(text.len() - 1)];
    match count {
        None => Err(Error::data(
            path,
            format!("the header's shape {shape} is too large to exist (its size overflows 64 bits)"),
        )),
        Some(n) if n > file_len => Err(Error::data(
            path,
            format!("the header's shape {shape} has {n} elements, more than the file's {file_len} bytes (truncated or not a .npy?)"),
        )),
        Some(_) => Ok(()),
    }
}

/// Shape and values of a float `.npy`, converted to f32.
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let (npy, shape, descr, header_len) = open_npy(path)?;
    // Little-endian floats (what numpy writes on every common machine) are read straight into
    // the matrix (f4) or through a 1 MiB buffer (f8): npyz reads element by element through a
    // BufReader. open_npy has checked that the data is exactly the header's shape.
    if let Some(width) = match descr.as_str() {
        "<f4" => Some(4),
        "<f8" => Some(8),
        _ => None,
    } {
        drop(npy);
        let n: usize = shape.iter().product();
        let mut f = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
        let read_err = |e| Error::io("failed to read", path, e);
        let mut data = vec![0f32; n];
        if width == 4 {
            read_exact_at_parallel(
                &f,
                header_len,
                bytemuck::cast_slice_mut(&mut data),
                64 << 20,
            )
            .map_err(read_err)?;
            if cfg!(target_endian = "big") {
                for v in &mut data {
                    *v = f32::from_bits(v.to_bits().swap_bytes());
                }
            }
        } else {
            use std::io::{Read, Seek};
            f.seek(std::io::SeekFrom::Start(header_len))
                .map_err(read_err)?;
            let mut buf = vec![0u8; 1 << 20];
            for out in data.chunks_mut(buf.len() / 8) {
                let bytes = &mut buf[..out.len() * 8];
                f.read_exact(bytes).map_err(read_err)?;
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
                }
            }
        }
        return Ok((shape, data));
    }
    let data: Vec<f32> = match &descr[1..] {
        "f2" => npy
            .into_vec::<half::f16>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(f32::from)
            .collect(),
        "f4" => npy.into_vec::<f32>().map_err(|e| npy_err(path, e))?,
        "f8" => npy
            .into_vec::<f64>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        _ => {
            return Err(Error::data(
                path,
                format!("dtype {descr} is not a float type (f2, f4 or f8)"),
            ))
        }
    };
    Ok((shape, data))
}

/// Fill `buf` from `file` at `offset`, in pieces of `piece` bytes read by the pool: the copy out
/// of the page cache (and the first touch of each page of `buf`) runs on every core.
fn read_exact_at_parallel(
    file: &File,
    offset: u64,
    buf: &mut [u8],
    piece: usize,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use rayon::prelude::*;
        use std::os::unix::fs::FileExt;
        let piece = piece.max(1);
        buf.par_chunks_mut(piece)
            .enumerate()
            .try_for_each(|(i, part)| file.read_exact_at(part, offset + (i * piece) as u64))
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek};
        let mut f = file;
        f.seek(std::io::SeekFrom::Start(offset))?;
        let _ = piece;
        f.read_exact(buf)
    }
}

/// Values of an integer `.npy` (any shape, flattened), as i64.
pub fn read_npy_ids(path: &Path) -> Result<Vec<i64>> {
    let (npy, _, descr, _) = open_npy(path)?;
    let v: Vec<i64> = match &descr[1..] {
        "i8" => npy.into_vec::<i64>().map_err(|e| npy_err(path, e))?,
        "i4" => npy
            .into_vec::<i32>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "u4" => npy
            .into_vec::<u32>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(i64::from)
            .collect(),
        "u8" => npy
            .into_vec::<u64>()
            .map_err(|e| npy_err(path, e))?
            .into_iter()
            .map(|x| x as i64)
            .collect(),
        _ => {
            return Err(Error::data(
                path,
                format!("dtype {descr} is not an integer type (i4, i8, u4, u8)"),
            ))
        }
    };
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn store_round_trips_through_the_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.arrow");
        let m = Matrix::new(3, 4, (0..12).map(|i| i as f32 * 0.5).collect()).unwrap();
        write_store(
            &path,
            &[("dataset_id", Arc::new(Int64Array::from(vec![0, 1, 2])))],
            &m,
        )
        .unwrap();
        let store = EmbeddingStore::open(&path).unwrap();
        assert_eq!((store.rows, store.dim), (3, 4));
        assert_eq!(store.values(), &m.data[..]);
        assert_eq!(read_matrix(&path).unwrap(), m);
        let npy = dir.path().join("e.npy");
        write_npy(&npy, &m).unwrap();
        assert_eq!(read_matrix(&npy).unwrap(), m);
    }

    #[test]
    fn npy_of_every_float_width() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        npyz::to_file_1d(&p, vec![1.5f64, 2.0, -3.0, 4.25]).unwrap();
        // to_file writes 1-D; a 1-D read works as a vector.
        assert_eq!(read_vector(&p).unwrap(), vec![1.5, 2.0, -3.0, 4.25]);
        let err = read_matrix(&p).unwrap_err().to_string();
        assert!(err.contains("expected a 2-D array"), "{err}");
    }

    #[test]
    fn a_parallel_read_joins_its_pieces_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bytes");
        let bytes: Vec<u8> = (0..10_007u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let f = File::open(&p).unwrap();
        for (offset, piece) in [(0usize, 7usize), (5, 1000), (13, 1 << 20)] {
            let mut buf = vec![0u8; bytes.len() - offset];
            read_exact_at_parallel(&f, offset as u64, &mut buf, piece).unwrap();
            assert_eq!(buf, &bytes[offset..], "offset {offset}, pieces of {piece}");
        }
        // Past the end: an error, not a short read.
        let mut buf = vec![0u8; 100];
        assert!(read_exact_at_parallel(&f, 10_000, &mut buf, 7).is_err());
    }

    /// A `.npy` written by hand: version 1.0, the header padded as numpy pads it.
    fn npy_bytes(descr: &str, shape: (usize, usize), data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}",
            shape.0, shape.1
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    /// The bulk little-endian reads (f4, f8) and npyz's element reads (f2, big-endian) give the
    /// same matrix, −0 and subnormals included.
    #[test]
    fn npy_floats_read_alike_in_every_width_and_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..35)
            .map(|i| match i {
                0 => -0.0,
                1 => f32::MIN_POSITIVE / 8.0,
                _ => (i as f32 - 17.0) * 0.37,
            })
            .collect();
        let want = Matrix::new(5, 7, values.clone()).unwrap();
        let f4: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("<f4", f4.clone()),
            (">f4", values.iter().flat_map(|v| v.to_be_bytes()).collect()),
            (
                "<f8",
                values
                    .iter()
                    .flat_map(|&v| (v as f64).to_le_bytes())
                    .collect(),
            ),
            (
                ">f8",
                values
                    .iter()
                    .flat_map(|&v| (v as f64).to_be_bytes())
                    .collect(),
            ),
        ];
        for (descr, data) in cases {
            let p = dir.path().join(format!("m{}.npy", &descr[1..]));
            std::fs::write(&p, npy_bytes(descr, (5, 7), &data)).unwrap();
            let got = read_matrix(&p).unwrap();
            assert_eq!(got.rows, 5);
            let bits = |m: &Matrix| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{descr}");
        }
        // f8 larger than the 1 MiB conversion buffer: its chunks join in order.
        let long: Vec<f64> = (0..300_001).map(|i| i as f64 * 0.5 - 7.0).collect();
        let p = dir.path().join("long.npy");
        let bytes: Vec<u8> = long.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&p, npy_bytes("<f8", (300_001, 1), &bytes)).unwrap();
        let got = read_matrix(&p).unwrap();
        assert!(got.data.iter().zip(&long).all(|(g, v)| *g == *v as f32));
        // A half-precision file goes through npyz.
        let halves: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let p = dir.path().join("m2.npy");
        std::fs::write(&p, npy_bytes("<f2", (5, 7), &halves)).unwrap();
        let got = read_matrix(&p).unwrap();
        for (g, v) in got.data.iter().zip(&values) {
            assert_eq!(*g, half::f16::from_f32(*v).to_f32());
        }
        // One byte short: refused before any read, naming both sizes.
        let p = dir.path().join("short.npy");
        let mut bytes = npy_bytes("<f4", (5, 7), &f4);
        bytes.pop();
        std::fs::write(&p, bytes).unwrap();
        let err = read_matrix(&p).unwrap_err().to_string();
        assert!(err.contains("140 bytes") && err.contains("139"), "{err}");
    }
}
