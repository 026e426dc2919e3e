//! Embedding stores of a run: `RUN/embed/image_embeddings.arrow` (one row per dataset region,
//! in `dataset_id` order) and `RUN/embed/word_embeddings.arrow` (one row per word), both
//! `FixedSizeList<Float32, D>`, with `model.json` naming where they came from.
//!
//! `import-embeddings` fills them from files a user already has (`.npy` f16/f32, Arrow IPC or
//! Parquet). With heads (`PREFIX_{img,txt}_head_{weight,bias}.npy`, PyTorch `Linear` layout), the
//! stored vectors are `normalise(x·Wᵀ + b)`, as in the SIMAT release; without, `normalise(x)`.
//! Retrieval then only takes inner products.

pub mod model;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::linalg::{first_non_finite, normalize_rows, LinearHead, Matrix};
use crate::run::{Stage, StageContext, StageReport};
use crate::store::{read_matrix, read_vector, write_store};

/// Configuration of `import-embeddings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportEmbeddingsConfig {
    /// Image embeddings, rows in `dataset_id` order.
    pub images: PathBuf,
    /// Words, one per line; row `i` of `word_vectors` embeds line `i`.
    pub words: PathBuf,
    /// Word embeddings.
    pub word_vectors: PathBuf,
    /// Prefix of the linear heads' `.npy` files, if any.
    pub heads: Option<PathBuf>,
    /// The stage holding `dataset.parquet` (`import` for the release).
    #[serde(default = "default_dataset_stage")]
    pub dataset_stage: String,
}

fn default_dataset_stage() -> String {
    "import".into()
}

/// The four head files of a prefix.
pub fn head_files(prefix: &Path) -> [(String, PathBuf); 4] {
    let name = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [
        "img_head_weight",
        "img_head_bias",
        "txt_head_weight",
        "txt_head_bias",
    ]
    .map(|part| {
        (
            format!("{part}.npy"),
            prefix.with_file_name(format!("{name}_{part}.npy")),
        )
    })
}

/// The stage.
#[derive(Debug, Clone)]
pub struct ImportEmbeddingsStage {
    /// Its configuration.
    pub config: ImportEmbeddingsConfig,
}

impl Stage for ImportEmbeddingsStage {
    fn name(&self) -> &'static str {
        "embed"
    }
    fn version(&self) -> u32 {
        1
    }
    fn upstream(&self) -> Vec<&'static str> {
        vec![crate::dataset::dataset_stage(&self.config.dataset_stage)]
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "source": "import-embeddings",
            "heads": self.config.heads.is_some(),
        })
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut v = vec![
            ("images".to_string(), self.config.images.clone()),
            ("words".to_string(), self.config.words.clone()),
            ("word_vectors".to_string(), self.config.word_vectors.clone()),
        ];
        if let Some(prefix) = &self.config.heads {
            v.extend(head_files(prefix));
        }
        for (label, p) in &v {
            if !p.is_file() {
                return Err(Error::stage(
                    "embed",
                    format!("{label} file `{}` not found", p.display()),
                ));
            }
        }
        Ok(v)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let stage = crate::dataset::dataset_stage(&self.config.dataset_stage);
        let dataset = ctx.upstream_output(stage, "dataset.parquet");
        import_embeddings(&self.config, &dataset, &ctx.stage_dir)
    }
}

fn load_head(prefix: &Path, which: &str) -> Result<LinearHead> {
    let files = head_files(prefix);
    let find = |part: &str| {
        files
            .iter()
            .find(|(l, _)| l == &format!("{which}_head_{part}.npy"))
            .map(|(_, p)| p.clone())
            .expect("four files")
    };
    let wpath = find("weight");
    let weight = read_matrix(&wpath)?;
    let bpath = find("bias");
    let bias = read_vector(&bpath)?;
    if bias.len() != weight.rows {
        return Err(Error::data(
            &bpath,
            format!(
                "bias has {} values, the weight has {} output rows",
                bias.len(),
                weight.rows
            ),
        ));
    }
    Ok(LinearHead { weight, bias })
}

fn prepare(mut m: Matrix, head: Option<&LinearHead>, path: &Path) -> Result<Matrix> {
    if let Some(row) = first_non_finite(&m) {
        return Err(Error::data(
            path,
            format!("row {row} holds NaN or infinity"),
        ));
    }
    if let Some(h) = head {
        if h.weight.cols != m.cols {
            return Err(Error::data(
                path,
                format!(
                    "embeddings have dimension {}, the head expects {}",
                    m.cols, h.weight.cols
                ),
            ));
        }
        m = h.apply(&m)?;
    }
    normalize_rows(&mut m);
    Ok(m)
}

/// Run `import-embeddings`.
pub fn import_embeddings(
    config: &ImportEmbeddingsConfig,
    dataset: &Path,
    out_dir: &Path,
) -> Result<StageReport> {
    let n_dataset = crate::io::inspect(dataset, 0)?.rows as usize;
    let images = read_matrix(&config.images)?;
    if images.rows != n_dataset {
        return Err(Error::data(
            &config.images,
            format!(
                "{} rows, but the dataset has {n_dataset} regions (rows must be in dataset_id order)",
                images.rows
            ),
        ));
    }
    let words_text = std::fs::read_to_string(&config.words)
        .map_err(|e| Error::io("failed to read", &config.words, e))?;
    let words: Vec<&str> = words_text.lines().map(str::trim_end).collect();
    let vectors = read_matrix(&config.word_vectors)?;
    if vectors.rows != words.len() {
        return Err(Error::data(
            &config.word_vectors,
            format!(
                "{} rows for {} words in `{}`",
                vectors.rows,
                words.len(),
                config.words.display()
            ),
        ));
    }
    if let Some(dup) = (1..words.len()).find(|&i| words[..i].contains(&words[i])) {
        return Err(Error::data(
            &config.words,
            format!("line {}: word `{}` appears twice", dup + 1, words[dup]),
        ));
    }
    let (img_head, txt_head) = match &config.heads {
        Some(p) => (Some(load_head(p, "img")?), Some(load_head(p, "txt")?)),
        None => (None, None),
    };
    let images = prepare(images, img_head.as_ref(), &config.images)?;
    let vectors = prepare(vectors, txt_head.as_ref(), &config.word_vectors)?;
    if images.cols != vectors.cols {
        return Err(Error::data(
            &config.word_vectors,
            format!(
                "word embeddings have dimension {}, image embeddings {}",
                vectors.cols, images.cols
            ),
        ));
    }
    write_store(
        &out_dir.join("image_embeddings.arrow"),
        "dataset_id",
        Arc::new(Int64Array::from_iter_values(0..images.rows as i64)),
        &images,
    )?;
    write_store(
        &out_dir.join("word_embeddings.arrow"),
        "word",
        Arc::new(StringArray::from_iter_values(words.iter().copied())),
        &vectors,
    )?;
    let hash = |p: &Path| crate::run::fingerprint::hash_file(p);
    let mut model = serde_json::json!({
        "source": "import-embeddings",
        "dim": images.cols,
        "images": {"file": file_name(&config.images), "blake3": hash(&config.images)?},
        "words": {"file": file_name(&config.words), "blake3": hash(&config.words)?},
        "word_vectors": {"file": file_name(&config.word_vectors), "blake3": hash(&config.word_vectors)?},
        "normalised": true,
    });
    if let Some(prefix) = &config.heads {
        let mut heads = serde_json::Map::new();
        for (label, p) in head_files(prefix) {
            heads.insert(label, serde_json::json!(hash(&p)?));
        }
        model["heads"] = serde_json::Value::Object(heads);
    }
    crate::run::atomic::write_atomic(
        out_dir.join("model.json"),
        (serde_json::to_string_pretty(&model).expect("json") + "\n").as_bytes(),
    )?;
    let mut report = StageReport {
        outputs: vec![
            ("image_embeddings.arrow".into(), Some(images.rows as u64)),
            ("word_embeddings.arrow".into(), Some(vectors.rows as u64)),
            ("model.json".into(), None),
        ],
        ..Default::default()
    };
    report.count("images", images.rows as u64);
    report.count("words", vectors.rows as u64);
    report.count("dim", images.cols as u64);
    Ok(report)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
