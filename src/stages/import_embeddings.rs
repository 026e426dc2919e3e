//! `import-embeddings`: the embedding stores of a run, `image_embeddings.arrow` (one row per dataset region, in
//! `dataset_id` order, with its `region_id`) and `word_embeddings.arrow` (one row per
//! word), both `FixedSizeList<Float32, D>` of **raw** vectors (heads, when a retrieval uses
//! them, apply to raw outputs; vectors are normalised when compared), with `model.json` naming
//! where they came from.
//!
//! `import-embeddings` fills them from files a user already has, joined by key wherever the
//! file has keys, so that no order is ever guessed:
//!
//! | input | image embeddings | word vectors |
//! |---|---|---|
//! | PyTorch (`.pt`, `.ptd`) | a dict region id → vector (the release's `simat_img_clip.pt`) | a list of (word, vector) pairs or a dict word → vector (its `simat_words_clip.ptd`) |
//! | Arrow IPC / Parquet | an `embedding` column and a key column: `region_id`, `key` (a crop path `…/<region_id>.png`, as `simat encode` writes) or `dataset_id` | `embedding` and `word` (or `text`, as `simat encode --texts` writes) |
//! | `.npy` (no keys) | rows in `dataset_id` order — the one order convention: for the release, `triplets.csv`'s `dataset_id` column, as `eval.py` numbers images | rows in the line order of `--words` |
//!
//! A region of the dataset without an embedding, or a key given twice, is an error naming it;
//! embeddings of regions outside the dataset are counted and left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Int64Type};
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::store::{is_npy, read_matrix, read_table_embeddings, write_store};
use crate::io::torch::{self, Key};
use crate::linalg::{first_non_finite, Matrix};
use crate::tables;
use crate::tables::dataset::Dataset;

/// Configuration of `import-embeddings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ImportEmbeddingsConfig {
    /// Raw image embeddings: keyed by region (a PyTorch dict region_id → vector such as the
    /// release's simat_img_clip.pt; Arrow/Parquet with a region_id, key or dataset_id column),
    /// or a .npy with one row per dataset_id, in dataset_id order.
    #[arg(long)]
    pub image_embeddings: Option<PathBuf>,
    /// Raw word embeddings: keyed by word (the release's simat_words_clip.ptd; Arrow/Parquet
    /// with a word column), or a .npy whose rows follow --words.
    #[arg(long)]
    pub word_embeddings: Option<PathBuf>,
    /// Words, one per line: the row order of a .npy of word embeddings (with a keyed file, a
    /// check that it holds these words).
    #[arg(long)]
    pub words: Option<PathBuf>,
}

/// The stage: embeddings a user already has, as the run's embedding stores.
#[derive(Debug, Clone)]
pub struct ImportEmbeddings {
    /// The image embeddings file.
    pub images: PathBuf,
    /// The word embeddings file.
    pub word_vectors: PathBuf,
    /// The words file, if any.
    pub words: Option<PathBuf>,
}

impl StageDef for ImportEmbeddings {
    const NAME: &'static str = "import-embeddings";
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "Raw image and word embeddings from files into RUN/import-embeddings/*.arrow, joined by key";
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::IMAGE_EMBEDDINGS,
        &tables::WORD_EMBEDDINGS,
        &tables::EMBEDDING_MODEL,
    ];
    type Config = ImportEmbeddingsConfig;
    fn resolve_paths(c: &mut ImportEmbeddingsConfig, base: &Path) {
        for p in [
            &mut c.image_embeddings,
            &mut c.word_embeddings,
            &mut c.words,
        ]
        .into_iter()
        .flatten()
        {
            crate::config::resolve(p, base);
        }
    }
    fn build(c: ImportEmbeddingsConfig) -> Result<Self> {
        let images = c.image_embeddings.ok_or_else(|| {
            crate::engine::bad::<Self>(
                "image_embeddings",
                "is required: a file of raw image embeddings",
            )
        })?;
        let word_vectors = c.word_embeddings.ok_or_else(|| {
            crate::engine::bad::<Self>(
                "word_embeddings",
                "is required: a file of raw word embeddings",
            )
        })?;
        let mut checks = Checks::<Self>::new();
        for (key, path) in [
            ("image_embeddings", &images),
            ("word_embeddings", &word_vectors),
        ] {
            if checks.path(key, path, PathKind::File) {
                checks.check(key, crate::io::store::check_embeddings_file(path));
            }
        }
        if let Some(w) = &c.words {
            checks.path("words", w, PathKind::File);
        }
        checks.finish(ImportEmbeddings {
            images,
            word_vectors,
            words: c.words,
        })
    }
    fn needs(&self) -> Vec<Need> {
        vec![Need::of(&tables::DATASET)]
    }
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::json!({"source": "import-embeddings", "words": self.words.is_some()})
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut v = vec![
            ("images".to_string(), self.images.clone()),
            ("word_vectors".to_string(), self.word_vectors.clone()),
        ];
        if let Some(w) = &self.words {
            v.push(("words".to_string(), w.clone()));
        }
        for (label, p) in &v {
            if !p.is_file() {
                return Err(Error::input_missing(
                    Self::NAME,
                    &format!("{label} file"),
                    p,
                    "",
                ));
            }
        }
        Ok(v)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let dataset = Dataset::read(&ctx.input(&tables::DATASET)?)?;
        import_embeddings(self, &dataset, &ctx.stage_dir, &ctx.input_hashes)
    }
}

/// How an input's rows were matched to the dataset or to words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinedBy {
    /// A region id key.
    RegionId,
    /// A crop path key, `…/<region_id>.png`.
    CropPath,
    /// A dataset id key.
    DatasetId,
    /// Row order (a `.npy`: rows in `dataset_id` order, or the words file's line order).
    RowOrder,
    /// A word key.
    Word,
}

/// Image embeddings in `dataset_id` order, and how they were matched.
#[derive(Debug)]
pub struct JoinedImages {
    /// `dataset.len() × D`, raw.
    pub matrix: Matrix,
    /// How rows were matched.
    pub joined_by: JoinedBy,
    /// Embeddings in the file for regions outside the dataset (left out).
    pub unused: usize,
}

fn keyed_error(path: &Path, m: String) -> Error {
    Error::data(path, m)
}

/// The region id in a crop path `…/<region_id>.png` (or `.jpg`).
fn region_of_path(key: &str) -> Option<i64> {
    Path::new(key).file_stem()?.to_str()?.parse().ok()
}

/// Read raw image embeddings for `dataset`, joined by key (see the module docs).
pub fn read_images(path: &Path, dataset: &Dataset) -> Result<JoinedImages> {
    let n = dataset.len();
    if is_npy(path)? {
        let m = read_matrix(path)?;
        if m.rows != n {
            return Err(Error::data(
                path,
                format!(
                    "{} rows, but the dataset has {n} regions: a .npy of image embeddings has one row per dataset_id, in dataset_id order (for the release, triplets.csv's dataset_id column, as eval.py numbers images); to give them in another order, use a keyed file (a PyTorch dict region_id → vector, or Arrow/Parquet with a region_id column)",
                    m.rows
                ),
            ));
        }
        return Ok(JoinedImages {
            matrix: m,
            joined_by: JoinedBy::RowOrder,
            unused: 0,
        });
    }
    // (region id or dataset id) per row of the file, and the vectors.
    let (keys, m, joined_by): (Vec<i64>, Matrix, JoinedBy) = if torch::is_torch_zip(path) {
        let (keys, m) = torch::read_keyed_vectors(path)?;
        let mut ids = Vec::with_capacity(keys.len());
        let mut by = JoinedBy::RegionId;
        for k in keys {
            ids.push(match k {
                Key::Int(i) => i,
                Key::Str(s) => {
                    by = JoinedBy::CropPath;
                    region_of_path(&s).ok_or_else(|| {
                        keyed_error(path, format!("key {s:?} is neither a region id nor a crop path `…/<region_id>.png`"))
                    })?
                }
            });
        }
        (ids, m, by)
    } else {
        let (batch, m) = read_table_embeddings(path)?;
        let int_column = |name: &str| -> Result<Option<Vec<i64>>> {
            let Some(col) = batch.column_by_name(name) else {
                return Ok(None);
            };
            let col = arrow::compute::cast(col, &DataType::Int64)
                .map_err(|e| Error::columnar(path, format!("column `{name}`: {e}")))?;
            if col.null_count() > 0 {
                return Err(Error::columnar(
                    path,
                    format!("column `{name}` holds nulls"),
                ));
            }
            Ok(Some(col.as_primitive::<Int64Type>().values().to_vec()))
        };
        if let Some(ids) = int_column("region_id")? {
            (ids, m, JoinedBy::RegionId)
        } else if let Some(col) = batch.column_by_name("key") {
            let col = arrow::compute::cast(col, &DataType::Utf8)
                .map_err(|e| Error::columnar(path, format!("column `key`: {e}")))?;
            let keys = col.as_string::<i32>();
            let ids = (0..keys.len())
                .map(|i| {
                    region_of_path(keys.value(i)).ok_or_else(|| {
                        keyed_error(
                            path,
                            format!(
                                "row {i}: key {:?} is not a crop path `…/<region_id>.png`",
                                keys.value(i)
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            (ids, m, JoinedBy::CropPath)
        } else if let Some(ids) = int_column("dataset_id")? {
            (ids, m, JoinedBy::DatasetId)
        } else {
            return Err(Error::columnar(
                path,
                "no key column: image embeddings in Arrow or Parquet need a `region_id`, `key` (crop path) or `dataset_id` column beside `embedding`; only a .npy is taken in dataset_id order",
            ));
        }
    };
    let what = match joined_by {
        JoinedBy::DatasetId => "dataset_id",
        _ => "region",
    };
    let mut row_of: HashMap<i64, usize> = HashMap::with_capacity(keys.len());
    for (row, &k) in keys.iter().enumerate() {
        if let Some(first) = row_of.insert(k, row) {
            return Err(keyed_error(
                path,
                format!("{what} {k} appears twice (entries {first} and {row})"),
            ));
        }
    }
    let mut rows = Vec::with_capacity(n);
    for d in 0..n {
        let key = match joined_by {
            JoinedBy::DatasetId => d as i64,
            _ => dataset.region_id[d],
        };
        let row = row_of.get(&key).copied().ok_or_else(|| {
            keyed_error(
                path,
                format!(
                    "no embedding for region {} (dataset_id {d}): every region of the dataset needs one",
                    dataset.region_id[d]
                ),
            )
        })?;
        rows.push(row);
    }
    Ok(JoinedImages {
        matrix: m.gather(&rows),
        joined_by,
        unused: keys.len() - n,
    })
}

/// Read raw word embeddings: the words and their vectors.
pub fn read_words(path: &Path, words_file: Option<&Path>) -> Result<(Vec<String>, Matrix)> {
    let listed: Option<Vec<String>> = match words_file {
        None => None,
        Some(w) => {
            let text = std::fs::read_to_string(w).map_err(|e| Error::io("failed to read", w, e))?;
            let words: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
            if let Some(dup) = (1..words.len()).find(|&i| words[..i].contains(&words[i])) {
                return Err(Error::data(
                    w,
                    format!("line {}: word `{}` appears twice", dup + 1, words[dup]),
                ));
            }
            Some(words)
        }
    };
    let (words, m) = if is_npy(path)? {
        let m = read_matrix(path)?;
        let Some(words) = listed.clone() else {
            return Err(Error::data(
                path,
                "a .npy of word vectors has no words: name them with --words (one per line, in the rows' order), or give a keyed file (the release's .ptd, or Arrow/Parquet with a `word` column)",
            ));
        };
        if m.rows != words.len() {
            return Err(Error::data(
                path,
                format!(
                    "{} rows for {} words in `{}` (row i embeds line i)",
                    m.rows,
                    words.len(),
                    words_file.expect("listed").display()
                ),
            ));
        }
        (words, m)
    } else if torch::is_torch_zip(path) {
        let (keys, m) = torch::read_keyed_vectors(path)?;
        let words = keys
            .into_iter()
            .map(|k| match k {
                Key::Str(s) => Ok(s),
                Key::Int(i) => Err(Error::data(
                    path,
                    format!("key {i} is an int: word vectors are keyed by word"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        (words, m)
    } else {
        let (batch, m) = read_table_embeddings(path)?;
        let col = batch
            .column_by_name("word")
            .or_else(|| batch.column_by_name("text"))
            .ok_or_else(|| {
                Error::columnar(
                    path,
                    "no `word` (or `text`) column beside `embedding`: word vectors in Arrow or Parquet are keyed by word",
                )
            })?;
        let col = arrow::compute::cast(col, &DataType::Utf8)
            .map_err(|e| Error::columnar(path, e.to_string()))?;
        let words: Vec<String> = col
            .as_string::<i32>()
            .iter()
            .map(|w| w.unwrap_or_default().to_string())
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, w) in words.iter().enumerate() {
            if let Some(first) = seen.insert(w, i) {
                return Err(Error::data(
                    path,
                    format!("word `{w}` appears twice (rows {first} and {i})"),
                ));
            }
        }
        (words, m)
    };
    if let (Some(listed), false) = (&listed, is_npy(path)?) {
        let mut a = listed.clone();
        let mut b = words.clone();
        a.sort();
        b.sort();
        if a != b {
            let missing: Vec<&String> = listed.iter().filter(|w| !words.contains(w)).collect();
            return Err(Error::data(
                path,
                format!(
                    "holds {} words, the words file {} (not in this file: {:?})",
                    words.len(),
                    listed.len(),
                    missing.iter().take(5).collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok((words, m))
}

/// Run `import-embeddings`: raw image embeddings in `dataset_id` order and raw word embeddings.
pub fn import_embeddings(
    config: &ImportEmbeddings,
    dataset: &Dataset,
    out_dir: &Path,
    input_hashes: &std::collections::BTreeMap<String, String>,
) -> Result<StageReport> {
    let images = read_images(&config.images, dataset)?;
    let (words, vectors) = read_words(&config.word_vectors, config.words.as_deref())?;
    for (m, p) in [
        (&images.matrix, &config.images),
        (&vectors, &config.word_vectors),
    ] {
        if let Some(row) = first_non_finite(m) {
            return Err(Error::data(p, format!("row {row} holds NaN or infinity")));
        }
    }
    // Unequal dimensions are a text encoder other than the image model's (a sentence encoder):
    // retrieve needs heads that map both to one space (`adapt --dim D`) and says so without them.
    let n = dataset.len() as i64;
    write_store(
        &out_dir.join(tables::IMAGE_EMBEDDINGS.file),
        &[
            (
                "dataset_id",
                Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            ),
            (
                "region_id",
                Arc::new(Int64Array::from(dataset.region_id.clone())),
            ),
        ],
        &images.matrix,
    )?;
    write_store(
        &out_dir.join(tables::WORD_EMBEDDINGS.file),
        &[(
            "word",
            Arc::new(StringArray::from_iter_values(
                words.iter().map(String::as_str),
            )) as ArrayRef,
        )],
        &vectors,
    )?;
    let unit_images = crate::model::heads::unit_norm(&images.matrix);
    let unit_words = crate::model::heads::unit_norm(&vectors);
    let file = |label: &str, p: &Path| serde_json::json!({"file": file_name(p), "blake3": input_hashes.get(label)});
    let mut model = serde_json::json!({
        "source": "import-embeddings",
        "dim": images.matrix.cols,
        "images": file("images", &config.images),
        "images_joined_by": images.joined_by,
        "word_vectors": file("word_vectors", &config.word_vectors),
        "vectors": "raw",
        "unit_norm": {"images": unit_images, "words": unit_words},
    });
    if let Some(w) = &config.words {
        model["words"] = file("words", w);
    }
    crate::io::atomic::write_atomic(
        out_dir.join(tables::EMBEDDING_MODEL.file),
        (serde_json::to_string_pretty(&model).expect("json") + "\n").as_bytes(),
    )?;
    let mut report = StageReport::default();
    report.table(&tables::IMAGE_EMBEDDINGS, Some(images.matrix.rows as u64));
    report.table(&tables::WORD_EMBEDDINGS, Some(vectors.rows as u64));
    report.table(&tables::EMBEDDING_MODEL, None);
    report.count("images", images.matrix.rows as u64);
    report.count("images_not_in_dataset", images.unused as u64);
    report.count("words", vectors.rows as u64);
    report.count("dim", images.matrix.cols as u64);
    report.count("word_dim", vectors.cols as u64);
    if images.unused > 0 {
        report.notes.push(format!(
            "{} image embedding(s) of regions outside the dataset left out",
            images.unused
        ));
    }
    Ok(report)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
