//! A CLIP-family model folder, as `scripts/export_clip.py` writes it:
//!
//! - `image.onnx`: `pixel_values [N,3,H,W] f32 → embeds [N,D]`
//! - `text.onnx`: `input_ids [N,context] i64 → embeds [N,D]`
//! - `tokenizer.json`: CLIP's BPE (Hugging Face `tokenizers`)
//! - `model.toml` (optional): image size, mean, std, context length; CLIP's values when absent.
//!
//! The towers are loaded when first used, so a text-only job never loads the image tower. Image
//! files are decoded and preprocessed on a pool of decoder threads, a batch ahead of inference,
//! and handed over through a bounded channel. The decoders run at idle scheduling priority:
//! where inference leaves a core free they run ahead, and where it uses every core (ONNX Runtime's
//! default) they do not preempt its threads in the middle of an operator, which would stall the
//! others at its barrier; measured on 2 cores, decoding beside inference at normal priority cost
//! about twice its own CPU time.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::preprocess::{ImageFailure, Preprocess};
use super::tokenizer::ClipTokenizer;
use super::{Device, OnnxModel};
use crate::error::{Error, Result};
use crate::linalg::Matrix;

/// OpenAI CLIP's pixel mean (also open_clip's default).
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's pixel standard deviation.
#[allow(clippy::excessive_precision)] // open_clip's constants, digit for digit
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The files of a model folder.
pub const MODEL_FILES: [&str; 4] = ["image.onnx", "text.onnx", "tokenizer.json", "model.toml"];

/// `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The model's name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// Where its weights came from (informational).
    #[serde(default)]
    pub pretrained: Option<String>,
    /// Side of the square the image tower takes.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    /// Per-channel mean subtracted after scaling to [0, 1].
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// Tokens per text.
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    /// The embedding dimension, checked against the towers' outputs when given.
    #[serde(default)]
    pub embed_dim: Option<usize>,
}

fn default_image_size() -> u32 {
    224
}
fn default_mean() -> [f32; 3] {
    OPENAI_MEAN
}
fn default_std() -> [f32; 3] {
    OPENAI_STD
}
fn default_context_length() -> usize {
    77
}

impl Default for ModelConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// One preprocessed batch on its way to the image tower.
struct PixelBatch {
    /// Input positions that decoded, in order.
    ok: Vec<usize>,
    /// Input positions that did not, with why.
    failed: Vec<(usize, ImageFailure)>,
    pixels: Vec<f32>,
}

/// Embeddings of one batch of image files.
#[derive(Debug)]
pub struct ImageBatch {
    /// Input positions embedded, in order; row `i` of `embeddings` is input `ok[i]`.
    pub ok: Vec<usize>,
    /// Input positions that could not be read, with why.
    pub failed: Vec<(usize, ImageFailure)>,
    /// Raw (unnormalised) embeddings.
    pub embeddings: Matrix,
}

/// A CLIP-family model folder, ready to embed.
#[derive(Debug)]
pub struct ClipModel {
    dir: PathBuf,
    /// Its `model.toml`, or the defaults.
    pub config: ModelConfig,
    tokenizer: ClipTokenizer,
    preprocess: Preprocess,
    device: Device,
    threads: usize,
    image: Option<OnnxModel>,
    text: Option<OnnxModel>,
    decoders: Option<rayon::ThreadPool>,
}

/// Lower the calling thread to idle scheduling priority (Linux `SCHED_IDLE`); elsewhere, or
/// when refused, it keeps its priority.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised param.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

impl ClipModel {
    /// Open the folder `dir` for `device`, with `threads` ONNX Runtime intra-op threads
    /// (0: its default).
    pub fn open(dir: &Path, device: Device, threads: usize) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Config {
                path: dir.to_path_buf(),
                message: "model folder not found (make one with scripts/export_clip.py)".into(),
            });
        }
        for f in &MODEL_FILES[..3] {
            if !dir.join(f).is_file() {
                return Err(Error::Config {
                    path: dir.to_path_buf(),
                    message: format!(
                        "not a model folder: no {f} (expected {}; scripts/export_clip.py writes them)",
                        MODEL_FILES.join(", ")
                    ),
                });
            }
        }
        let toml_path = dir.join("model.toml");
        let config: ModelConfig = if toml_path.is_file() {
            let text = std::fs::read_to_string(&toml_path)
                .map_err(|e| Error::io("failed to read", &toml_path, e))?;
            toml::from_str(&text).map_err(|e| Error::Config {
                path: toml_path.clone(),
                message: e.to_string(),
            })?
        } else {
            ModelConfig::default()
        };
        if config.image_size == 0 || config.std.contains(&0.0) {
            return Err(Error::Config {
                path: toml_path,
                message: "image_size and std must be non-zero".into(),
            });
        }
        let tokenizer = ClipTokenizer::load(&dir.join("tokenizer.json"), config.context_length)?;
        let preprocess = Preprocess::new(config.image_size, config.mean, config.std);
        Ok(ClipModel {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            preprocess,
            device,
            threads,
            image: None,
            text: None,
            decoders: None,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The preprocessing of the image tower.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The model's identity: its name and the BLAKE3 of each of its files.
    pub fn identity(&self) -> Result<serde_json::Value> {
        let mut files = std::collections::BTreeMap::new();
        for f in MODEL_FILES {
            let p = self.dir.join(f);
            if p.is_file() {
                files.insert(f.to_string(), crate::run::fingerprint::hash_file(&p)?);
            }
        }
        Ok(self.identity_from(files))
    }

    /// The identity from file hashes already computed (by file name).
    pub fn identity_from(
        &self,
        file_hashes: std::collections::BTreeMap<String, String>,
    ) -> serde_json::Value {
        serde_json::json!({
            "name": self.config.name,
            "pretrained": self.config.pretrained,
            "files": file_hashes,
        })
    }

    fn tower(&mut self, image: bool) -> Result<&mut OnnxModel> {
        let (slot, file) = if image {
            (&mut self.image, "image.onnx")
        } else {
            (&mut self.text, "text.onnx")
        };
        if slot.is_none() {
            *slot = Some(OnnxModel::load_on(
                &self.dir.join(file),
                self.threads,
                self.device,
            )?);
        }
        Ok(slot.as_mut().expect("loaded"))
    }

    fn check_output(
        &self,
        file: &str,
        n: usize,
        shape: &[usize],
        values: Vec<f32>,
    ) -> Result<Matrix> {
        let bad = |m: String| Error::Onnx {
            model: self.dir.join(file),
            message: m,
        };
        if shape.len() != 2 || shape[0] != n {
            return Err(bad(format!(
                "output shape {shape:?} for a batch of {n} (expected [N, D] embeddings)"
            )));
        }
        if let Some(d) = self.config.embed_dim.filter(|&d| d != shape[1]) {
            return Err(bad(format!(
                "embeddings have dimension {}, model.toml says {d}",
                shape[1]
            )));
        }
        Matrix::new(n, shape[1], values)
    }

    /// Raw text embeddings of `texts`, `batch` at a time.
    pub fn embed_texts(&mut self, texts: &[&str], batch: usize) -> Result<Matrix> {
        let context = self.config.context_length;
        let mut data = Vec::new();
        let mut dim = self.config.embed_dim.unwrap_or(0);
        for chunk in texts.chunks(batch.max(1)) {
            let ids = self.tokenizer.encode(chunk)?;
            let (shape, values) = self.tower(false)?.run(&[chunk.len(), context], &ids)?;
            let m = self.check_output("text.onnx", chunk.len(), &shape, values)?;
            dim = m.cols;
            data.extend_from_slice(&m.data);
        }
        Matrix::new(texts.len(), dim, data)
    }

    /// Raw image embeddings of preprocessed pixels (`n × 3 × size × size`).
    pub fn embed_pixels(&mut self, n: usize, pixels: &[f32]) -> Result<Matrix> {
        let side = self.config.image_size as usize;
        let (shape, values) = self.tower(true)?.run(&[n, 3, side, side], pixels)?;
        self.check_output("image.onnx", n, &shape, values)
    }

    /// Embed image files `batch` at a time, calling `sink` with each batch in input order.
    /// Files that are missing or do not decode are reported in their batch, not fatal. Decoding
    /// of the next batch runs on the rayon pool while the current one is inferred.
    pub fn embed_image_files(
        &mut self,
        paths: &[PathBuf],
        batch: usize,
        mut sink: impl FnMut(ImageBatch) -> Result<()>,
    ) -> Result<()> {
        let batch = batch.max(1);
        if self.decoders.is_none() {
            self.decoders = Some(
                rayon::ThreadPoolBuilder::new()
                    .thread_name(|i| format!("simat-decode-{i}"))
                    .start_handler(|_| idle_priority())
                    .build()
                    .map_err(|e| Error::Internal(format!("decoder threads: {e}")))?,
            );
        }
        let decoders = self.decoders.take().expect("built");
        let result = self.embed_files_on(&decoders, paths, batch, &mut sink);
        self.decoders = Some(decoders);
        result
    }

    fn embed_files_on(
        &mut self,
        decoders: &rayon::ThreadPool,
        paths: &[PathBuf],
        batch: usize,
        sink: &mut impl FnMut(ImageBatch) -> Result<()>,
    ) -> Result<()> {
        let preprocess = self.preprocess.clone();
        let per_image = preprocess.len();
        let (tx, rx) = crossbeam_channel::bounded::<PixelBatch>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for (k, chunk) in paths.chunks(batch).enumerate() {
                    let decoded: Vec<std::result::Result<Vec<f32>, ImageFailure>> = decoders
                        .install(|| {
                            chunk
                                .par_iter()
                                .map(|path| {
                                    let mut out = vec![0f32; per_image];
                                    preprocess.file(path, &mut out).map(|_| out)
                                })
                                .collect()
                        });
                    let start = k * batch;
                    let mut b = PixelBatch {
                        ok: Vec::with_capacity(chunk.len()),
                        failed: Vec::new(),
                        pixels: Vec::with_capacity(chunk.len() * per_image),
                    };
                    for (i, d) in decoded.into_iter().enumerate() {
                        match d {
                            Ok(px) => {
                                b.ok.push(start + i);
                                b.pixels.extend_from_slice(&px);
                            }
                            Err(f) => b.failed.push((start + i, f)),
                        }
                    }
                    if tx.send(b).is_err() {
                        return; // inference stopped on an error
                    }
                }
            });
            let result = (|| {
                for b in rx.iter() {
                    let embeddings = if b.ok.is_empty() {
                        Matrix::new(0, self.config.embed_dim.unwrap_or(0), vec![])?
                    } else {
                        self.embed_pixels(b.ok.len(), &b.pixels)?
                    };
                    sink(ImageBatch {
                        ok: b.ok,
                        failed: b.failed,
                        embeddings,
                    })?;
                }
                Ok(())
            })();
            drop(rx);
            result
        })
    }
}
