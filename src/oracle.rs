//! The oracle: what judges whether an image shows a caption. `select` asks it whether a region
//! shows its own triplet's caption, `score` whether the retrieved image shows the query's target;
//! both go through this module, so that an oracle is checked, read and named in one place.
//!
//! A stage names one by a string:
//!
//! - `labels`: the annotation decides (an image shows its own triplet's caption);
//! - `model`: the `oracle` stage's CLIP-family model, cosine of the region's crop and the caption;
//! - the path of a file, identified in fingerprints by its content, not its path:
//!   - a matrix, `.npy` or a PyTorch file holding one 2-D tensor (such as the release's
//!     `oscar_similarity_matrix.pt`), whose rows and columns are in an order the reading stage
//!     states ([`Axes`]);
//!   - a long table (Parquet, Arrow IPC or CSV) with columns `region_id`, the column key
//!     (`triplet_id` for `select`, `caption_id` for `score`) and `score` (or `similarity`),
//!     joined by key: no order to get wrong.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int64Type, Schema};

use crate::error::{Error, Result};
use crate::linalg::Matrix;

/// The oracle that needs no file.
pub const LABELS: &str = "labels";

/// The oracle that the `oracle` stage computes with a CLIP-family model.
pub const MODEL: &str = "model";

/// The matrix or table file an oracle string names, if it is not `labels` or `model`.
pub fn oracle_file(oracle: &str) -> Option<PathBuf> {
    (oracle != LABELS && oracle != MODEL).then(|| PathBuf::from(oracle))
}

/// A stage's config as JSON, with an oracle path replaced by `"matrix"` (its content is hashed
/// through [`inputs`] instead).
pub fn config_value<T: serde::Serialize>(config: &T, oracle: &str) -> serde_json::Value {
    let mut c = serde_json::to_value(config).expect("config serialises");
    if oracle_file(oracle).is_some() {
        c["oracle"] = serde_json::json!("matrix");
    }
    c
}

/// The oracle's file as a stage input, or an error naming the stage when it is missing.
pub fn inputs(stage: &str, oracle: &str) -> Result<Vec<(String, PathBuf)>> {
    match oracle_file(oracle) {
        None => Ok(vec![]),
        Some(p) if p.is_file() => Ok(vec![("oracle".into(), p)]),
        Some(p) => Err(Error::input_missing(stage, "oracle", &p, HINT)),
    }
}

const HINT: &str = "give a matrix or table file, `labels` or `model`";

/// An oracle string with a file path made relative to `base` (a pipeline file's folder).
pub fn resolve(oracle: &str, base: &Path) -> String {
    match oracle_file(oracle) {
        Some(p) if p.is_relative() => base.join(p).to_string_lossy().into_owned(),
        _ => oracle.to_string(),
    }
}

/// Whether an oracle string can be used, checked before anything runs: `labels`, `model`, or an
/// existing file whose first bytes are those of a format the oracle reads. The message says what
/// is wrong, for the caller to put after the key that named it.
pub fn check(oracle: &str) -> std::result::Result<(), String> {
    let Some(p) = oracle_file(oracle) else {
        return Ok(());
    };
    if !p.exists() {
        return Err(format!("`{}` does not exist: {HINT}", p.display()));
    }
    if !p.is_file() {
        return Err(format!("`{}` is a folder: {HINT}", p.display()));
    }
    let mut head = [0u8; 6];
    let n = std::fs::File::open(&p)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("`{}` cannot be read: {e}", p.display()))?;
    let head = &head[..n];
    let csv = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let known = head.starts_with(b"\x93NUMPY")
        || head.starts_with(b"PK")
        || head.starts_with(b"PAR1")
        || head.starts_with(b"ARROW1")
        || csv;
    if known {
        Ok(())
    } else {
        Err(format!(
            "`{}` is neither a matrix (.npy, PyTorch) nor a table (Parquet, Arrow IPC, CSV)",
            p.display()
        ))
    }
}

/// What a file oracle's rows are, for its checks and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// One row per region, in the order of the regions table (`select`).
    Regions,
    /// One row per `dataset_id` (`score`; for the release, `triplets.csv`'s `dataset_id`
    /// column, as `eval.py` indexes the OSCAR matrix).
    Dataset,
}

/// What a file oracle's columns are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// One column per `triplet_id` (`select`: a region against its own triplet's caption).
    Triplet,
    /// One column per caption id, the line of `captions.txt` (`score`: the query's target).
    Caption,
}

impl Columns {
    fn key(self) -> &'static str {
        match self {
            Columns::Triplet => "triplet_id",
            Columns::Caption => "caption_id",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Columns::Triplet => "triplet",
            Columns::Caption => "caption",
        }
    }
}

/// How a file oracle is keyed: the region of each row, and the columns that will be asked for,
/// each by whom (a region or a query, by its id), so that a matrix too narrow is refused before
/// anything is judged.
#[derive(Debug)]
pub struct Axes<'a> {
    /// What rows are.
    pub rows: Rows,
    /// The region of each row, in row order.
    pub region_id: &'a [i64],
    /// What columns are.
    pub columns: Columns,
    /// The width of a matrix built from a long table (pairs beyond it are never asked for).
    pub width: usize,
    /// Each asked column, with its asker: `("query", 17)` or `("region", 3)`.
    pub asks: Vec<(usize, (&'static str, i64))>,
}

impl Axes<'_> {
    fn row_key(&self, r: usize) -> String {
        match self.rows {
            Rows::Regions => format!("region {}", self.region_id[r]),
            Rows::Dataset => format!("dataset_id {r}"),
        }
    }
    /// Where the rows come from, and the sentence that says which order a matrix must have.
    fn order(&self) -> (&'static str, String) {
        let (rows, where_) = match self.rows {
            Rows::Regions => ("region, in the order of the regions table", "the regions table"),
            Rows::Dataset => (
                "dataset_id (for the release, triplets.csv's dataset_id column, as eval.py indexes the OSCAR matrix)",
                "the dataset",
            ),
        };
        let columns = match self.columns {
            Columns::Triplet => "triplet_id",
            Columns::Caption => "caption id (the line of captions.txt)",
        };
        (
            where_,
            format!(
                "an oracle matrix has one row per {rows} and one column per {columns}; a long table region_id, {}, score needs no order",
                self.columns.key()
            ),
        )
    }
}

/// A file oracle, read and checked: rows × columns of scores, NaN where a long table had no pair.
#[derive(Debug)]
pub struct FileOracle {
    matrix: Matrix,
    path: PathBuf,
    /// `matrix` or `table`.
    pub kind: &'static str,
    rows: Rows,
    columns: Columns,
}

impl FileOracle {
    /// Read the oracle file at `path` for `axes`: a matrix must have one row per region of the
    /// axes and a column for every one asked for, and hold only finite numbers; a long table is
    /// joined on its keys, and must name each pair once.
    pub fn read(path: &Path, axes: &Axes) -> Result<FileOracle> {
        let (matrix, kind) =
            if crate::io::store::is_npy(path)? || crate::io::torch::is_torch_zip(path) {
                (read_matrix(path, axes)?, "matrix")
            } else {
                (read_long_table(path, axes)?, "table")
            };
        Ok(FileOracle {
            matrix,
            path: path.to_path_buf(),
            kind,
            rows: axes.rows,
            columns: axes.columns,
        })
    }

    /// The score of row `row` against column `column`, or an error naming the pair and who needs
    /// it (`asker`, called only then) when a long table lacks it.
    pub fn value(
        &self,
        row: usize,
        column: usize,
        region_id: i64,
        asker: impl FnOnce() -> String,
    ) -> Result<f64> {
        let v = self.matrix.row(row)[column];
        if v.is_nan() {
            let row_key = match self.rows {
                Rows::Regions => format!("row {row}"),
                Rows::Dataset => format!("dataset_id {row}"),
            };
            return Err(Error::data(
                &self.path,
                format!(
                    "no score for region {region_id} ({row_key}) and {} {column}, which {} needs",
                    self.columns.word(),
                    asker()
                ),
            ));
        }
        Ok(v as f64)
    }

    /// The file's name, for provenance.
    pub fn file_name(&self) -> Option<String> {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }
}

fn read_matrix(path: &Path, axes: &Axes) -> Result<Matrix> {
    let m = crate::io::store::read_matrix(path)?;
    let n = axes.region_id.len();
    if m.rows != n {
        let (where_, order) = axes.order();
        return Err(Error::data(
            path,
            format!("{} rows, but {where_} has {n} regions: {order}", m.rows),
        ));
    }
    if let Some((c, (who, id))) = axes.asks.iter().find(|(c, _)| *c >= m.cols) {
        return Err(Error::data(
            path,
            format!(
                "{} columns, but {who} {id} needs {} {c}",
                m.cols,
                axes.columns.word()
            ),
        ));
    }
    if let Some(r) = crate::linalg::first_non_finite(&m) {
        let c = m.row(r).iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(Error::data(
            path,
            format!(
                "row {r}, column {c} ({}, {} {c}) holds NaN or infinity",
                axes.row_key(r),
                axes.columns.word()
            ),
        ));
    }
    Ok(m)
}

fn read_long_table(path: &Path, axes: &Axes) -> Result<Matrix> {
    let batch = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        read_csv_table(path)?
    } else {
        crate::io::read_all(path)?
    };
    let key = axes.columns.key();
    let col = |names: &[&str], ty: &DataType| -> Result<ArrayRef> {
        let c = names
            .iter()
            .find_map(|n| batch.column_by_name(n))
            .ok_or_else(|| {
                Error::columnar(
                    path,
                    format!(
                        "no `{}` column: an oracle table has columns region_id, {key}, score",
                        names[0]
                    ),
                )
            })?;
        if c.null_count() > 0 {
            return Err(Error::columnar(
                path,
                format!("column `{}` holds nulls", names[0]),
            ));
        }
        arrow::compute::cast(c, ty).map_err(|e| Error::columnar(path, e.to_string()))
    };
    let region = col(&["region_id"], &DataType::Int64)?;
    let column = col(&[key], &DataType::Int64)?;
    let score = col(&["score", "similarity"], &DataType::Float64)?;
    let (region, column, score) = (
        region.as_primitive::<Int64Type>(),
        column.as_primitive::<Int64Type>(),
        score.as_primitive::<Float64Type>(),
    );
    let row_of: HashMap<i64, usize> = axes
        .region_id
        .iter()
        .enumerate()
        .map(|(d, &r)| (r, d))
        .collect();
    let (rows, width) = (axes.region_id.len(), axes.width);
    let mut m = Matrix::new(rows, width, vec![f32::NAN; rows * width])?;
    let word = axes.columns.word();
    for i in 0..batch.num_rows() {
        let (r, c, v) = (region.value(i), column.value(i), score.value(i));
        if !v.is_finite() {
            return Err(Error::data(
                path,
                format!("row {i}: score {v} for region {r}, {word} {c}"),
            ));
        }
        let (Some(&d), true) = (row_of.get(&r), (0..width as i64).contains(&c)) else {
            continue; // a pair nothing asks for
        };
        let cell = &mut m.data[d * width + c as usize];
        if !cell.is_nan() {
            return Err(Error::data(
                path,
                format!("row {i}: region {r} and {word} {c} appear twice"),
            ));
        }
        *cell = v as f32;
    }
    Ok(m)
}

/// A CSV file as a record batch of Int64/Float64/Utf8 columns (types inferred per column).
fn read_csv_table(path: &Path) -> Result<RecordBatch> {
    let mut rd = csv::Reader::from_path(path).map_err(|e| Error::data(path, e.to_string()))?;
    let headers = rd
        .headers()
        .map_err(|e| Error::data(path, e.to_string()))?
        .clone();
    let mut cols: Vec<Vec<String>> = vec![Vec::new(); headers.len()];
    for (row, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| Error::data(path, format!("row {}: {e}", row + 1)))?;
        for (k, v) in rec.iter().enumerate().take(headers.len()) {
            cols[k].push(v.trim().to_string());
        }
    }
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (name, values) in headers.iter().zip(cols) {
        if let Ok(v) = values
            .iter()
            .map(|x| x.parse::<i64>())
            .collect::<std::result::Result<Vec<_>, _>>()
        {
            fields.push(Field::new(name, DataType::Int64, false));
            arrays.push(Arc::new(Int64Array::from(v)));
        } else if let Ok(v) = values
            .iter()
            .map(|x| x.parse::<f64>())
            .collect::<std::result::Result<Vec<_>, _>>()
        {
            fields.push(Field::new(name, DataType::Float64, false));
            arrays.push(Arc::new(Float64Array::from(v)));
        } else {
            fields.push(Field::new(name, DataType::Utf8, false));
            arrays.push(Arc::new(StringArray::from(values)));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Error::columnar(path, e.to_string()))
}

/// The `model` oracle's similarity of each region with its own caption (`region_scores.parquet`
/// of the `oracle` stage), in the order of `region_id`; `None` for a region it could not score.
pub fn region_scores(path: &Path, region_id: &[i64]) -> Result<Vec<Option<f64>>> {
    let b = crate::io::read_all(path)?;
    let ids = crate::io::i64_column(&b, "region_id", path)?;
    let sim = crate::io::column(&b, "similarity", path)?;
    let sim = sim.as_primitive::<Float32Type>();
    let by_region: HashMap<i64, f64> = ids
        .values()
        .iter()
        .copied()
        .zip(sim.values().iter().map(|&v| v as f64))
        .collect();
    Ok(region_id
        .iter()
        .map(|r| by_region.get(r).copied())
        .collect())
}

/// The `model` oracle for a dataset: the `oracle` stage's region embeddings gathered into
/// dataset_id order, and its caption embeddings by triplet_id, both normalised.
#[derive(Debug)]
pub struct ModelOracle {
    regions: Matrix,
    captions: Matrix,
    caption_row: HashMap<i64, usize>,
}

impl ModelOracle {
    /// Open the `oracle` stage's stores for the regions `region_id` (in dataset_id order).
    pub fn open(regions: &Path, captions: &Path, region_id: &[i64]) -> Result<ModelOracle> {
        use crate::io::store::EmbeddingStore;
        let store = EmbeddingStore::open(regions)?;
        let ids = crate::io::i64_column(&store.batch, "region_id", regions)?;
        let row: HashMap<i64, usize> = ids
            .values()
            .iter()
            .enumerate()
            .map(|(r, &id)| (id, r))
            .collect();
        let mut idx = Vec::with_capacity(region_id.len());
        for (i, r) in region_id.iter().enumerate() {
            idx.push(*row.get(r).ok_or_else(|| {
                Error::data(
                    regions,
                    format!("no embedding for region {r} (dataset_id {i}): the dataset was not selected with this oracle"),
                )
            })?);
        }
        let gathered = store.normalised().gather(&idx);
        let cstore = EmbeddingStore::open(captions)?;
        let tids = crate::io::i64_column(&cstore.batch, "triplet_id", captions)?;
        let caption_row = tids
            .values()
            .iter()
            .enumerate()
            .map(|(r, &t)| (t, r))
            .collect();
        Ok(ModelOracle {
            regions: gathered,
            captions: cstore.normalised(),
            caption_row,
        })
    }

    /// The cosine of region row `row` and the caption of `triplet`, if the oracle embedded it.
    pub fn similarity(&self, row: usize, triplet: i64) -> Option<f64> {
        let c = *self.caption_row.get(&triplet)?;
        Some(crate::linalg::dot(self.regions.row(row), self.captions.row(c)) as f64)
    }
}

/// An oracle ready to judge retrieved images against the queries' targets.
#[derive(Debug)]
pub enum Judge {
    /// Success when the retrieved region's triplet is the target triplet.
    Labels,
    /// A file's score of the retrieved row against the target caption.
    File(FileOracle),
    /// The `oracle` stage's cosine of the retrieved crop and the target triplet's caption.
    Model(ModelOracle),
}

/// What a judged image is asked against: the target's triplet and caption, and who asks.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target triplet.
    pub triplet_id: i64,
    /// The target caption (the line of `captions.txt`).
    pub caption_id: i64,
    /// The asking query.
    pub query_id: i64,
}

impl Judge {
    /// The oracle's value for the image at `row` (showing `row_triplet`, of region `region_id`)
    /// against `target` (none for `labels`, or where the model has no caption), and whether it
    /// is above `threshold`.
    pub fn judge(
        &self,
        row: usize,
        row_triplet: i64,
        region_id: i64,
        target: Target,
        threshold: f64,
    ) -> Result<(Option<f64>, bool)> {
        Ok(match self {
            Judge::Labels => (None, row_triplet == target.triplet_id),
            Judge::File(f) => {
                let v = f.value(row, target.caption_id as usize, region_id, || {
                    format!("query {}", target.query_id)
                })?;
                (Some(v), v > threshold)
            }
            Judge::Model(m) => match m.similarity(row, target.triplet_id) {
                Some(v) => (Some(v), v > threshold),
                None => (None, false),
            },
        })
    }
}
