//! Running a CLIP-family model over many files: the chunked, checkpointed image embedding that
//! the `oracle` and `embed` stages share, text embedding, `model.json`, and `simat encode` for a
//! user's own images and texts.
//!
//! Image embeddings are committed in chunks (`chunks/<n>.arrow`, with `<n>.failed.json` listing
//! the inputs of the chunk that could not be read) under a checkpoint of the stage's
//! fingerprint, so a killed run resumes at the last finished chunk. Every stored vector is the
//! tower's raw output (heads apply to raw outputs, as in the release's `eval.py`); readers
//! normalise when they compare.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use serde::{Deserialize, Serialize};

use super::clip::{ClipModel, MODEL_FILES};
use super::preprocess::ImageFailure;
use crate::error::{Error, Result};
use crate::io::chunks::{Chunks, Part};
use crate::io::store::{write_store, EmbeddingStore};
use crate::linalg::Matrix;
use crate::ui::Ui;

/// Declares a config struct whose own fields are followed by the model run's
/// (`model`, `device`, `batch_size`, `threads`, `chunk_images`, `max_pixels`), each declared
/// here once with its flag, pipeline key, default and doc, and gives it `model_run()`, the
/// [`ModelRunConfig`] those fields make. A stage that runs a model beside settings of its own
/// (`coco`) composes this way rather than by serde's `flatten`, which would lose
/// `deny_unknown_fields` and so the "unknown key" error.
macro_rules! model_run_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// The model folder (scripts/export_clip.py: open_clip or Hugging Face layout).
            /// Identified in fingerprints by its files' content, not its path.
            /// With `text_model`, it is the image model: its image tower embeds the images.
            #[arg(long)]
            pub model: Option<std::path::PathBuf>,
            /// The image model, named as such beside `text_model`: the same as `model`, which
            /// it replaces (give one of the two).
            #[arg(long, value_name = "DIR")]
            #[serde(skip_serializing_if = "Option::is_none")]
            pub image_model: Option<std::path::PathBuf>,
            /// A text model of its own (scripts/export_text_model.py: a sentence encoder, any
            /// Hugging Face tokenizer): it embeds the texts (words, captions) instead of the
            /// model's text tower. Its space is not the images': retrieve needs heads that map
            /// both to one space (`adapt --dim D`).
            #[arg(long, value_name = "DIR")]
            #[serde(skip_serializing_if = "Option::is_none")]
            pub text_model: Option<std::path::PathBuf>,
            /// `cpu`, or `cuda:N` with the GPU build of ONNX Runtime.
            #[arg(long, default_value = "cpu")]
            pub device: $crate::model::Device,
            /// Images (or texts) per inference batch.
            #[arg(long, default_value_t = 32)]
            pub batch_size: usize,
            /// ONNX Runtime intra-op threads; 0 lets it use every core.
            #[arg(long, default_value_t = 0)]
            pub threads: usize,
            /// Images per checkpointed chunk.
            #[arg(long, default_value_t = 1024)]
            pub chunk_images: usize,
            /// Images of more pixels are not decoded: counted as corrupt, with the reason
            /// (default: Pillow's decompression-bomb limit, 178,956,970).
            #[arg(long, default_value_t = $crate::model::preprocess::MAX_PIXELS)]
            pub max_pixels: u64,
        }

        impl $name {
            /// The model run these settings describe.
            pub fn model_run(&self) -> $crate::model::runner::ModelRunConfig {
                $crate::model::runner::ModelRunConfig {
                    model: self.model.clone(),
                    image_model: self.image_model.clone(),
                    text_model: self.text_model.clone(),
                    device: self.device,
                    batch_size: self.batch_size,
                    threads: self.threads,
                    chunk_images: self.chunk_images,
                    max_pixels: self.max_pixels,
                }
            }
        }
    };
}

/// The [`StageDef`](crate::engine::StageDef) items of a stage that is a model run and nothing
/// more (`embed`, `oracle`): its config is a [`ModelRunConfig`] kept in a `config` field,
/// checked in `build`, fingerprinted by its device and pixel limit, its model's files its
/// inputs. Used inside the stage's `impl StageDef`.
macro_rules! model_run_stage {
    () => {
        type Config = $crate::model::runner::ModelRunConfig;
        fn resolve_paths(c: &mut Self::Config, base: &std::path::Path) {
            c.resolve_paths(base);
        }
        fn build(config: Self::Config) -> $crate::error::Result<Self> {
            config.check(Self::NAME)?;
            Ok(Self { config })
        }
        fn fingerprint(&self) -> serde_json::Value {
            self.config.fingerprint_value("model")
        }
        fn inputs(&self) -> $crate::error::Result<Vec<(String, std::path::PathBuf)>> {
            self.config.inputs(Self::NAME)
        }
    };
}

pub(crate) use {model_run_config, model_run_stage};

model_run_config! {
    /// How a stage runs a model: the settings of `[embed]`, `[oracle]` and `simat encode`.
    pub struct ModelRunConfig {}
}

impl Default for ModelRunConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

impl ModelRunConfig {
    /// A config for `model` with the defaults.
    pub fn new(model: PathBuf) -> Self {
        ModelRunConfig {
            model: Some(model),
            ..Default::default()
        }
    }

    /// The model folder; an error naming the key and flag when it is not set.
    pub fn folder(&self, stage: &str) -> Result<&Path> {
        self.image_model
            .as_deref()
            .or(self.model.as_deref())
            .ok_or_else(|| Error::BadValue {
                stage: stage.into(),
                key: "model".into(),
                message: "is required: a model folder (scripts/export_clip.py writes one)".into(),
            })
    }

    /// The model folder relative to `base` (a pipeline file's folder) when relative.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.model, &mut self.image_model, &mut self.text_model]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Check the model folder (that it is one: its towers and tokenizer are there) and the
    /// numbers; every bad value is reported.
    pub fn check(&self, stage: &str) -> Result<()> {
        let bad = |key: &str, message: String| Error::BadValue {
            stage: stage.into(),
            key: key.into(),
            message,
        };
        let mut problems = vec![];
        match self.folder(stage) {
            Err(e) => problems.push(e),
            Ok(dir) => {
                if let Err(m) = crate::model::clip::check_folder(dir) {
                    problems.push(bad("model", m));
                }
            }
        }
        if self.model.is_some() && self.image_model.is_some() {
            problems.push(bad(
                "image_model",
                "`model` and `image_model` name the same folder: give one of them".into(),
            ));
        }
        if let Some(dir) = &self.text_model {
            if stage == "oracle" {
                problems.push(bad(
                    "text_model",
                    "the oracle judges crops against captions in one model's space; a text model of its own has no space in common with the images".into(),
                ));
            } else if let Err(m) = crate::model::text::check_folder(dir) {
                problems.push(bad("text_model", m));
            }
        }
        for (key, v) in [
            ("batch_size", self.batch_size),
            ("chunk_images", self.chunk_images),
        ] {
            if v == 0 {
                problems.push(bad(key, "must be at least 1".into()));
            }
        }
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(Error::BadValues(problems)),
        }
    }

    /// The fingerprinted part: the device (a GPU may round differently); the model enters by
    /// [`Self::inputs`], and batch size, threads and chunking do not change the vectors.
    pub fn fingerprint_value(&self, source: &str) -> serde_json::Value {
        serde_json::json!({
            "source": source,
            "device": self.device.to_string(),
            "max_pixels": self.max_pixels,
        })
    }

    /// The model's files as stage inputs.
    pub fn inputs(&self, stage: &str) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.folder(stage)?;
        if !dir.is_dir() {
            return Err(Error::input_missing(
                stage,
                "model folder",
                dir,
                "make one with scripts/export_clip.py",
            ));
        }
        crate::model::clip::tower_files(dir).map_err(|e| Error::stage(stage, e.to_string()))?;
        if !dir.join("tokenizer.json").is_file() {
            return Err(Error::input_missing(
                stage,
                "tokenizer",
                &dir.join("tokenizer.json"),
                "scripts/export_clip.py writes one",
            ));
        }
        let mut files: Vec<(String, PathBuf)> = MODEL_FILES
            .iter()
            .map(|f| (format!("model/{f}"), dir.join(f)))
            .filter(|(_, p)| p.is_file())
            .collect();
        if let Some(t) = &self.text_model {
            if let Err(m) = crate::model::text::check_folder(t) {
                return Err(Error::stage(stage, m));
            }
            files.extend(
                crate::model::text::TEXT_MODEL_FILES
                    .iter()
                    .map(|f| (format!("text_model/{f}"), t.join(f))),
            );
        }
        Ok(files)
    }

    /// Open the model.
    pub fn open(&self) -> Result<ClipModel> {
        let mut model = ClipModel::open(self.folder("model")?, self.device, self.threads)?;
        model.set_max_pixels(self.max_pixels);
        if let Some(t) = &self.text_model {
            model.set_text_model(crate::model::text::TextModel::open(
                t,
                self.device,
                self.threads,
            )?);
        }
        Ok(model)
    }
}

/// Raw image embeddings of a list of files.
#[derive(Debug)]
pub struct ImageEmbeddings {
    /// Input positions embedded, ascending; row `i` of `matrix` embeds input `positions[i]`.
    pub positions: Vec<usize>,
    /// The embeddings.
    pub matrix: Matrix,
    /// Inputs that could not be read.
    pub failed: Vec<(usize, ImageFailure)>,
    /// Chunks found committed by an earlier, interrupted run.
    pub chunks_resumed: usize,
}

#[derive(Serialize, Deserialize)]
struct FailedInput {
    position: usize,
    status: String,
    message: String,
}

/// What [`embed_images`] did.
pub enum ImageRun {
    /// Every image embedded; the chunks are kept until the caller has written its outputs and
    /// calls [`Chunks::finish`].
    Whole(ImageEmbeddings, Chunks),
    /// A part's chunks committed: their files, relative to the stage's folder, and how many
    /// were committed already.
    Part(Vec<String>, usize),
}

/// Embed a stage's `files` in checkpointed chunks of `config.chunk_images` under `dir/chunks`:
/// all of them, or with `part` only that part's range of the chunks (the commit, run whole,
/// then finds them all committed).
#[allow(clippy::too_many_arguments)]
pub fn embed_images(
    model: &mut ClipModel,
    files: &[PathBuf],
    config: &ModelRunConfig,
    dir: &Path,
    fingerprint: &str,
    ui: &Ui,
    part: Option<Part>,
) -> Result<ImageRun> {
    match part {
        Some(part) => embed_image_part(model, files, config, dir, fingerprint, ui, part)
            .map(|(files, resumed)| ImageRun::Part(files, resumed)),
        None => embed_images_chunked(model, files, config, dir, fingerprint, ui)
            .map(|(images, chunks)| ImageRun::Whole(images, chunks)),
    }
}

/// [`embed_images`] of every image.
fn embed_images_chunked(
    model: &mut ClipModel,
    files: &[PathBuf],
    config: &ModelRunConfig,
    dir: &Path,
    fingerprint: &str,
    ui: &Ui,
) -> Result<(ImageEmbeddings, Chunks)> {
    let per_chunk = config.chunk_images.max(1);
    let n_chunks = files.len().div_ceil(per_chunk);
    let chunks = Chunks::open(dir, fingerprint, n_chunks, &[])?;
    let bar = ui.progress(files.len() as u64, "images", "embedding");
    let mut positions = Vec::with_capacity(files.len());
    let mut failed = Vec::new();
    let mut chunks_resumed = 0;
    let mut data: Vec<f32> = Vec::new();
    let mut dim = model.config.embed_dim.unwrap_or(0);
    for (k, part) in files.chunks(per_chunk).enumerate() {
        let store_path = chunks.file(k, "arrow");
        let (chunk, resumed) = commit_chunk(model, &chunks, k, part, per_chunk, config, &bar)?;
        chunks_resumed += usize::from(resumed);
        if chunk.matrix.rows > 0 {
            if !data.is_empty() && chunk.matrix.cols != dim {
                return Err(Error::data(
                    &store_path,
                    format!(
                        "dimension {} after chunks of dimension {dim}",
                        chunk.matrix.cols
                    ),
                ));
            }
            dim = chunk.matrix.cols;
            data.extend_from_slice(&chunk.matrix.data);
        }
        positions.extend(chunk.positions);
        failed.extend(chunk.failed.into_iter().map(|f| {
            let failure = if f.status == "missing" {
                ImageFailure::Missing(f.message)
            } else {
                ImageFailure::Corrupt(f.message)
            };
            (f.position, failure)
        }));
    }
    bar.finish_and_clear();
    let matrix = Matrix::new(positions.len(), dim, data)?;
    let out = ImageEmbeddings {
        positions,
        matrix,
        failed,
        chunks_resumed,
    };
    Ok((out, chunks))
}

/// Commit chunk `k` of the images (`part`, from input position `k · per_chunk`), or read it when
/// it is committed already; says which.
fn commit_chunk(
    model: &mut ClipModel,
    chunks: &Chunks,
    k: usize,
    part: &[PathBuf],
    per_chunk: usize,
    config: &ModelRunConfig,
    bar: &crate::ui::Progress,
) -> Result<(ChunkEmbeddings, bool)> {
    let store_path = chunks.file(k, "arrow");
    let failed_path = chunks.file(k, "failed.json");
    if store_path.is_file() && failed_path.is_file() {
        return Ok((read_chunk(&store_path, &failed_path)?, true));
    }
    let chunk = embed_chunk(model, part, k * per_chunk, config.batch_size, bar)?;
    // The failures first: the store's presence marks the chunk committed.
    crate::io::atomic::write_atomic(
        &failed_path,
        &serde_json::to_vec(&chunk.failed).expect("json"),
    )?;
    let ids = chunk.positions.iter().map(|&p| p as i64);
    write_store(
        &store_path,
        &[("position", Arc::new(Int64Array::from_iter_values(ids)))],
        &chunk.matrix,
    )?;
    Ok((chunk, false))
}

/// [`embed_images`] of part `part`: commit its range of the chunks (those already committed are
/// kept) and nothing else. Returns the chunk files, relative to `dir`, and how many chunks were
/// resumed.
fn embed_image_part(
    model: &mut ClipModel,
    files: &[PathBuf],
    config: &ModelRunConfig,
    dir: &Path,
    fingerprint: &str,
    ui: &Ui,
    part: Part,
) -> Result<(Vec<String>, usize)> {
    let per_chunk = config.chunk_images.max(1);
    let n_chunks = files.len().div_ceil(per_chunk);
    let chunks = Chunks::open(dir, fingerprint, n_chunks, &[])?;
    let range = part.chunks(n_chunks);
    let images = (range.start * per_chunk..(range.end * per_chunk).min(files.len())).len();
    let bar = ui.progress(images as u64, "images", "embedding");
    let (mut written, mut resumed) = (Vec::new(), 0);
    for k in range {
        let inputs = &files[k * per_chunk..((k + 1) * per_chunk).min(files.len())];
        let (_, was) = commit_chunk(model, &chunks, k, inputs, per_chunk, config, &bar)?;
        resumed += usize::from(was);
        for ext in ["arrow", "failed.json"] {
            let f = chunks.file(k, ext);
            let rel = f.strip_prefix(dir).unwrap_or(&f);
            written.push(rel.to_string_lossy().into_owned());
        }
    }
    bar.finish_and_clear();
    Ok((written, resumed))
}

/// One chunk's raw embeddings, by input position, and its unreadable inputs.
struct ChunkEmbeddings {
    positions: Vec<usize>,
    matrix: Matrix,
    failed: Vec<FailedInput>,
}

fn embed_chunk(
    model: &mut ClipModel,
    part: &[PathBuf],
    start: usize,
    batch: usize,
    bar: &crate::ui::Progress,
) -> Result<ChunkEmbeddings> {
    let mut positions = Vec::with_capacity(part.len());
    let mut failed = Vec::new();
    let mut data = Vec::new();
    let mut dim = model.config.embed_dim.unwrap_or(0);
    model.embed_image_files(part, batch, |b| {
        bar.inc((b.ok.len() + b.failed.len()) as u64);
        positions.extend(b.ok.iter().map(|&i| start + i));
        failed.extend(b.failed.into_iter().map(|(i, f)| FailedInput {
            position: start + i,
            status: f.kind().to_string(),
            message: f.message().to_string(),
        }));
        if b.embeddings.rows > 0 {
            dim = b.embeddings.cols;
        }
        data.extend_from_slice(&b.embeddings.data);
        Ok(())
    })?;
    let matrix = Matrix::new(positions.len(), dim, data)?;
    Ok(ChunkEmbeddings {
        positions,
        matrix,
        failed,
    })
}

fn read_chunk(store_path: &Path, failed_path: &Path) -> Result<ChunkEmbeddings> {
    let store = EmbeddingStore::open(store_path)?;
    let pos = crate::io::i64_column(&store.batch, "position", store_path)?;
    let failed = serde_json::from_slice(
        &std::fs::read(failed_path).map_err(|e| Error::io("failed to read", failed_path, e))?,
    )
    .map_err(|e| Error::data(failed_path, e.to_string()))?;
    Ok(ChunkEmbeddings {
        positions: pos.values().iter().map(|&p| p as usize).collect(),
        matrix: store.to_matrix(),
        failed,
    })
}

/// Raw text embeddings.
pub fn embed_texts(model: &mut ClipModel, texts: &[&str], batch: usize) -> Result<Matrix> {
    model.embed_texts(texts, batch)
}

/// Write `model.json`: where a stage's embeddings came from (`identity` from
/// [`ClipModel::identity`] or [`stage_identity`]).
pub fn write_model_json(
    path: &Path,
    identity: serde_json::Value,
    config: &ModelRunConfig,
    dim: usize,
) -> Result<()> {
    let doc = serde_json::json!({
        "source": "model",
        "model": identity,
        "device": config.device.to_string(),
        "dim": dim,
        "vectors": "raw",
    });
    crate::io::atomic::write_atomic(
        path,
        (serde_json::to_string_pretty(&doc).expect("json") + "\n").as_bytes(),
    )
}

/// A stage's model identity from the hashes the engine took of the model files (its inputs
/// labelled `model/<file>`, and `text_model/<file>`), not hashing them a second time.
pub fn stage_identity(
    model: &ClipModel,
    input_hashes: &std::collections::BTreeMap<String, String>,
) -> serde_json::Value {
    let files = |prefix: &str| {
        input_hashes
            .iter()
            .filter_map(|(label, h)| {
                label
                    .strip_prefix(prefix)
                    .map(|f| (f.to_string(), h.clone()))
            })
            .collect()
    };
    model.identity_from(files("model/"), files("text_model/"))
}

/// What `simat encode` did.
#[derive(Debug, Default)]
pub struct EmbedFilesReport {
    /// Images embedded.
    pub images: usize,
    /// Images that could not be read: the path and why.
    pub failed: Vec<(PathBuf, ImageFailure)>,
    /// Texts embedded.
    pub texts: usize,
    /// The embedding dimension.
    pub dim: usize,
    /// Chunks of images resumed from an interrupted run.
    pub chunks_resumed: usize,
}

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The image files named by `inputs`: files as given, folders as their PNG and JPEG files
/// sorted by name (not recursive).
pub fn list_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io("failed to list", p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension().is_some_and(|x| {
                            IMAGE_EXTENSIONS.contains(&x.to_string_lossy().to_lowercase().as_str())
                        })
                })
                .collect();
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::data(p, "no such image file or folder"));
        }
    }
    Ok(out)
}

/// `simat encode`: `out/image_embeddings.arrow` (`key` = the image path, `embedding`) and
/// `out/text_embeddings.arrow` (`text`, `embedding`, one row per line of `texts`), rows in input
/// order, the raw outputs of the towers. Images that cannot be read are left out and reported; the image work is
/// checkpointed under `out/chunks` and resumes after a crash.
pub fn embed_files(
    config: &ModelRunConfig,
    images: &[PathBuf],
    texts: Option<&Path>,
    out: &Path,
    ui: &Ui,
) -> Result<EmbedFilesReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io("failed to create directory", out, e))?;
    let mut model = config.open()?;
    let identity = model.identity()?;
    let mut report = EmbedFilesReport::default();
    if !images.is_empty() {
        let files = list_images(images)?;
        let mut h = blake3::Hasher::new();
        // Chunks of an older simat (normalised vectors) must not be resumed.
        h.update(b"raw vectors\0");
        h.update(identity.to_string().as_bytes());
        for f in &files {
            h.update(f.to_string_lossy().as_bytes());
            h.update(b"\0");
        }
        let fingerprint = h.finalize().to_hex().to_string();
        let (emb, chunks) =
            embed_images_chunked(&mut model, &files, config, out, &fingerprint, ui)?;
        let keys = StringArray::from_iter_values(
            emb.positions
                .iter()
                .map(|&p| files[p].to_string_lossy().into_owned()),
        );
        write_store(
            &out.join("image_embeddings.arrow"),
            &[("key", Arc::new(keys))],
            &emb.matrix,
        )?;
        chunks.finish();
        report.images = emb.matrix.rows;
        report.dim = emb.matrix.cols;
        report.chunks_resumed = emb.chunks_resumed;
        report.failed = emb
            .failed
            .into_iter()
            .map(|(p, f)| (files[p].clone(), f))
            .collect();
    }
    if let Some(path) = texts {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("failed to read", path, e))?;
        let lines: Vec<&str> = text.lines().collect();
        let m = embed_texts(&mut model, &lines, config.batch_size)?;
        write_store(
            &out.join("text_embeddings.arrow"),
            &[(
                "text",
                Arc::new(StringArray::from_iter_values(lines.iter().copied())),
            )],
            &m,
        )?;
        report.texts = m.rows;
        report.dim = m.cols;
    }
    write_model_json(&out.join("model.json"), identity, config, report.dim)?;
    Ok(report)
}
