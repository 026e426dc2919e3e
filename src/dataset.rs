//! The benchmark tables shared by the stages that make, import and score a SIMAT dataset:
//! `dataset.parquet` (the kept regions, numbered by `dataset_id`, the row of their image
//! embedding) and `queries.parquet` (the transformation queries).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};

use crate::error::{Error, Result};

/// The stage whose `dataset.parquet` a config names: `select` (a regenerated dataset) or
/// `import` (the release's; the default).
pub fn dataset_stage(name: &str) -> &'static str {
    match name {
        "select" => "select",
        _ => "import",
    }
}

/// The stage whose `queries.parquet` a config names: `queries` (regenerated) or `import` (the
/// release's; the default).
pub fn queries_stage(name: &str) -> &'static str {
    match name {
        "queries" => "queries",
        _ => "import",
    }
}

/// Which slot of the triplet a query changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// The subject.
    Subj,
    /// The relation.
    Rel,
    /// The object.
    Obj,
}

impl Slot {
    /// All three, in SIMAT's order.
    pub const ALL: [Slot; 3] = [Slot::Subj, Slot::Rel, Slot::Obj];

    /// `subj`, `rel` or `obj`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Subj => "subj",
            Slot::Rel => "rel",
            Slot::Obj => "obj",
        }
    }

    /// Parse `subj`, `rel` or `obj`.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "subj" => Some(Slot::Subj),
            "rel" => Some(Slot::Rel),
            "obj" => Some(Slot::Obj),
            _ => None,
        }
    }

    /// Index into a `[subj, rel, obj]` triplet.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Schema of `dataset.parquet`.
pub fn dataset_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dataset_id", DataType::Int64, false),
        Field::new("region_id", DataType::Int64, false),
        Field::new("image_id", DataType::Int64, false),
        Field::new("triplet_id", DataType::Int64, false),
        Field::new("caption_id", DataType::Int64, false),
        Field::new("subj", DataType::Utf8, false),
        Field::new("rel", DataType::Utf8, false),
        Field::new("obj", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, true),
    ]))
}

/// The kept regions; row `i` has `dataset_id == i`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Region id (in the regions table).
    pub region_id: Vec<i64>,
    /// Visual Genome image id.
    pub image_id: Vec<i64>,
    /// Triplet id (in the triplets table).
    pub triplet_id: Vec<i64>,
    /// Caption id of the region's triplet.
    pub caption_id: Vec<i64>,
    /// The triplet's words.
    pub triplet: Vec<[String; 3]>,
    /// `dev`, `test`, or none (a region no query starts from).
    pub split: Vec<Option<String>>,
}

impl Dataset {
    /// Number of regions.
    pub fn len(&self) -> usize {
        self.region_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.region_id.is_empty()
    }

    /// As a record batch.
    pub fn to_batch(&self) -> RecordBatch {
        let n = self.len() as i64;
        let word = |k: usize| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                self.triplet.iter().map(|t| t[k].as_str()),
            ))
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(Int64Array::from(self.region_id.clone())),
            Arc::new(Int64Array::from(self.image_id.clone())),
            Arc::new(Int64Array::from(self.triplet_id.clone())),
            Arc::new(Int64Array::from(self.caption_id.clone())),
            word(0),
            word(1),
            word(2),
            Arc::new(StringArray::from(self.split.clone())),
        ];
        RecordBatch::try_new(dataset_schema(), cols).expect("dataset matches its schema")
    }

    /// Read `dataset.parquet`.
    pub fn read(path: &Path) -> Result<Dataset> {
        let b = crate::io::read_all(path)?;
        let ids = ints(&b, "dataset_id", path)?;
        if ids.iter().enumerate().any(|(i, &d)| d != i as i64) {
            return Err(Error::data(path, "dataset_id is not the row number"));
        }
        let (s, r, o) = (
            strs(&b, "subj", path)?,
            strs(&b, "rel", path)?,
            strs(&b, "obj", path)?,
        );
        let split = b
            .column_by_name("split")
            .ok_or_else(|| Error::columnar(path, "column `split` is missing"))?
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect();
        Ok(Dataset {
            region_id: ints(&b, "region_id", path)?,
            image_id: ints(&b, "image_id", path)?,
            triplet_id: ints(&b, "triplet_id", path)?,
            caption_id: ints(&b, "caption_id", path)?,
            triplet: s
                .into_iter()
                .zip(r)
                .zip(o)
                .map(|((s, r), o)| [s, r, o])
                .collect(),
            split,
        })
    }
}

/// Schema of `queries.parquet`.
pub fn queries_schema() -> SchemaRef {
    let i = |n: &str| Field::new(n, DataType::Int64, false);
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        i("query_id"),
        i("region_id"),
        i("dataset_id"),
        s("field"),
        s("value"),
        s("target"),
        i("source_triplet_id"),
        i("target_triplet_id"),
        i("source_caption_id"),
        i("target_caption_id"),
        i("n_neighbours"),
        i("n_same_value"),
        Field::new("weight", DataType::Float64, false),
        s("split"),
    ]))
}

/// Transformation queries: start from `dataset_id`'s image, replace `value` by `target` in slot
/// `field`; the answer should show the target triplet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queries {
    /// Query id.
    pub query_id: Vec<i64>,
    /// The query image's region.
    pub region_id: Vec<i64>,
    /// The query image's row in the dataset (and in the image embeddings).
    pub dataset_id: Vec<i64>,
    /// The slot changed.
    pub field: Vec<Slot>,
    /// The word replaced.
    pub value: Vec<String>,
    /// The word it becomes.
    pub target: Vec<String>,
    /// Source triplet id.
    pub source_triplet_id: Vec<i64>,
    /// Target triplet id.
    pub target_triplet_id: Vec<i64>,
    /// Caption id of the source triplet.
    pub source_caption_id: Vec<i64>,
    /// Caption id of the target triplet (the oracle's column).
    pub target_caption_id: Vec<i64>,
    /// Dataset triplets one slot away from the source triplet (the release's `norm`).
    pub n_neighbours: Vec<i64>,
    /// Queries with the same `value` word (the release's `norm2`).
    pub n_same_value: Vec<i64>,
    /// `dev` or `test`.
    pub split: Vec<String>,
}

impl Queries {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.query_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.query_id.is_empty()
    }

    /// The SIMAT weight of query `i`: `1/sqrt(n_same_value)`.
    pub fn weight(&self, i: usize) -> f64 {
        1.0 / (self.n_same_value[i] as f64).sqrt()
    }

    /// As a record batch.
    pub fn to_batch(&self) -> RecordBatch {
        let i64s = |v: &Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v.clone())) };
        let strs = |v: &Vec<String>| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(v.iter().map(String::as_str)))
        };
        let cols: Vec<ArrayRef> = vec![
            i64s(&self.query_id),
            i64s(&self.region_id),
            i64s(&self.dataset_id),
            Arc::new(StringArray::from_iter_values(
                self.field.iter().map(|f| f.as_str()),
            )),
            strs(&self.value),
            strs(&self.target),
            i64s(&self.source_triplet_id),
            i64s(&self.target_triplet_id),
            i64s(&self.source_caption_id),
            i64s(&self.target_caption_id),
            i64s(&self.n_neighbours),
            i64s(&self.n_same_value),
            Arc::new(Float64Array::from_iter_values(
                (0..self.len()).map(|i| self.weight(i)),
            )),
            strs(&self.split),
        ];
        RecordBatch::try_new(queries_schema(), cols).expect("queries match their schema")
    }

    /// Read `queries.parquet`.
    pub fn read(path: &Path) -> Result<Queries> {
        let b = crate::io::read_all(path)?;
        let field = strs(&b, "field", path)?
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                Slot::parse(&f).ok_or_else(|| {
                    Error::data(
                        path,
                        format!("row {i}: field `{f}` is not subj, rel or obj"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        // The weight column is derived; check it rather than trust it.
        let w = b
            .column_by_name("weight")
            .ok_or_else(|| Error::columnar(path, "column `weight` is missing"))?
            .as_primitive::<Float64Type>()
            .clone();
        let q = Queries {
            query_id: ints(&b, "query_id", path)?,
            region_id: ints(&b, "region_id", path)?,
            dataset_id: ints(&b, "dataset_id", path)?,
            field,
            value: strs(&b, "value", path)?,
            target: strs(&b, "target", path)?,
            source_triplet_id: ints(&b, "source_triplet_id", path)?,
            target_triplet_id: ints(&b, "target_triplet_id", path)?,
            source_caption_id: ints(&b, "source_caption_id", path)?,
            target_caption_id: ints(&b, "target_caption_id", path)?,
            n_neighbours: ints(&b, "n_neighbours", path)?,
            n_same_value: ints(&b, "n_same_value", path)?,
            split: strs(&b, "split", path)?,
        };
        if let Some(i) = (0..q.len()).find(|&i| (w.value(i) - q.weight(i)).abs() > 1e-12) {
            return Err(Error::data(
                path,
                format!("row {i}: weight is not 1/sqrt(n_same_value)"),
            ));
        }
        Ok(q)
    }
}

/// An Int64 column as a vector.
pub fn ints(b: &RecordBatch, name: &str, path: &Path) -> Result<Vec<i64>> {
    Ok(crate::io::i64_column(b, name, path)?.values().to_vec())
}

/// A Utf8 column as a vector (nulls become empty strings).
pub fn strs(b: &RecordBatch, name: &str, path: &Path) -> Result<Vec<String>> {
    let a = crate::io::str_column(b, name, path)?;
    Ok((0..a.len())
        .map(|i| {
            if a.is_null(i) {
                String::new()
            } else {
                a.value(i).to_string()
            }
        })
        .collect())
}
