//! A CLIP-family model folder, in one of two layouts:
//!
//! - **open_clip** (`scripts/export_clip.py`): `image.onnx` (`pixel_values [N,3,H,W] f32 →
//!   embeds [N,D]`), `text.onnx` (`input_ids [N,context] i64 → embeds [N,D]`), `tokenizer.json`
//!   (CLIP's BPE, open_clip's special tokens), `model.toml` (optional: image size, mean, std,
//!   context length; CLIP's values when absent).
//! - **Hugging Face** (an optimum export, `scripts/export_clip.py --hf`): `vision_model.onnx` and
//!   `text_model.onnx`, or one combined `model.onnx`; inputs `pixel_values`, `input_ids` and
//!   `attention_mask`; outputs `image_embeds` and `text_embeds`; `tokenizer.json` of
//!   `CLIPTokenizerFast`; `preprocessor_config.json` (`image_mean`, `image_std`, `crop_size`)
//!   when there is no `model.toml`. Note that Hugging Face's `CLIPModel` (what a combined
//!   `model.onnx` holds) normalises its embeddings, so its raw outputs are not available; the
//!   separate `*WithProjection` towers give them.
//!
//! Inputs and outputs are found by name when a tower is loaded, before its first batch, and a
//! graph that lacks them is refused with the list of what it has. A combined graph is fed a
//! one-image (or one-text) placeholder for the tower that is not wanted.
//!
//! The towers are loaded when first used, so a text-only job never loads the image tower. Image
//! files are decoded and preprocessed on a pool of decoder threads, a batch ahead of inference,
//! and handed over through a bounded channel. The decoders run at idle scheduling priority:
//! where inference leaves a core free they run ahead, and where it uses every core (ONNX Runtime's
//! default) they do not preempt its threads in the middle of an operator, which would stall the
//! others at its barrier; measured on 2 cores, decoding beside inference at normal priority cost
//! about twice its own CPU time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::preprocess::{ImageFailure, Preprocess};
use super::tokenizer::ClipTokenizer;
use super::{Device, Input, OnnxModel};
use crate::error::{Error, Result};
use crate::linalg::Matrix;

/// OpenAI CLIP's pixel mean (also open_clip's default).
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's pixel standard deviation.
#[allow(clippy::excessive_precision)] // open_clip's constants, digit for digit
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The files a model folder may hold (the fingerprint covers those present).
pub const MODEL_FILES: [&str; 8] = [
    "image.onnx",
    "text.onnx",
    "vision_model.onnx",
    "text_model.onnx",
    "model.onnx",
    "tokenizer.json",
    "model.toml",
    "preprocessor_config.json",
];

/// The graphs of a folder: (image tower, text tower), possibly the same combined file.
pub fn tower_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
    let combined = dir.join("model.onnx");
    let image = find(&["image.onnx", "vision_model.onnx"]);
    let text = find(&["text.onnx", "text_model.onnx"]);
    match (image, text) {
        (Some(i), Some(t)) => Ok((i, t)),
        (i, t) if combined.is_file() => Ok((
            i.unwrap_or_else(|| combined.clone()),
            t.unwrap_or_else(|| combined.clone()),
        )),
        _ => Err(Error::Config {
            path: dir.to_path_buf(),
            message: "not a model folder: it needs image.onnx and text.onnx (open_clip, scripts/export_clip.py), vision_model.onnx and text_model.onnx, or one model.onnx (Hugging Face / optimum), and tokenizer.json".into(),
        }),
    }
}

/// Whether `dir` is a model folder, checked before anything runs: it exists, is a folder, and
/// holds both towers' graphs and `tokenizer.json`. The message says what is wrong.
pub fn check_folder(dir: &Path) -> std::result::Result<(), String> {
    if !dir.exists() {
        return Err(format!(
            "`{}` does not exist (expected a model folder; scripts/export_clip.py makes one)",
            dir.display()
        ));
    }
    if !dir.is_dir() {
        return Err(format!("`{}` is a file, not a model folder", dir.display()));
    }
    if let Err(e) = tower_files(dir) {
        return Err(e.to_string());
    }
    if !dir.join("tokenizer.json").is_file() {
        return Err(format!(
            "`{}` has no tokenizer.json (scripts/export_clip.py writes one)",
            dir.display()
        ));
    }
    Ok(())
}

/// The name of a model folder, as a sweep names its branch (`RUN/models/NAME/`): the `name` of its
/// `model.toml`, or else the folder's own name. It must be a plain folder name (letters, digits,
/// `.`, `_`, `-`, not starting with `.`).
pub fn model_name(dir: &Path) -> std::result::Result<String, String> {
    let toml_path = dir.join("model.toml");
    let from_toml = if toml_path.is_file() {
        let text = std::fs::read_to_string(&toml_path)
            .map_err(|e| format!("`{}`: {e}", toml_path.display()))?;
        // A CLIP's model.toml or a text model's: only `name` is read here.
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("`{}`: {e}", toml_path.display()))?;
        table
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_string)
    } else {
        None
    };
    let (name, whence) = match from_toml {
        Some(n) => (n, format!("the `name` of `{}`", toml_path.display())),
        None => (
            dir.canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_default(),
            format!("the folder name of `{}`", dir.display()),
        ),
    };
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !plain {
        return Err(format!(
            "{whence} is `{name}`, which cannot name a folder: use letters, digits, `.`, `_` and `-` (set `name` in its model.toml)"
        ));
    }
    Ok(name)
}

/// How a tower's graph is fed and read, resolved from its input and output names.
#[derive(Debug, Clone)]
struct TowerIo {
    ids: Option<String>,
    mask: Option<String>,
    pixels: Option<String>,
    output: String,
}

const IDS_NAMES: [&str; 3] = ["input_ids", "text", "tokens"];
const PIXEL_NAMES: [&str; 3] = ["pixel_values", "image", "images"];
const TEXT_OUTPUTS: [&str; 3] = ["text_embeds", "text_features", "embeds"];
const IMAGE_OUTPUTS: [&str; 3] = ["image_embeds", "image_features", "embeds"];

impl TowerIo {
    fn resolve(model: &OnnxModel, image: bool) -> Result<TowerIo> {
        let (inputs, outputs) = (model.inputs(), model.outputs());
        let pick = |names: &[&str], from: &[String]| {
            names
                .iter()
                .find(|n| from.iter().any(|f| f == *n))
                .map(|n| n.to_string())
        };
        let io = TowerIo {
            ids: pick(&IDS_NAMES, &inputs),
            mask: inputs.iter().find(|i| *i == "attention_mask").cloned(),
            pixels: pick(&PIXEL_NAMES, &inputs),
            output: pick(if image { &IMAGE_OUTPUTS } else { &TEXT_OUTPUTS }, &outputs)
                .unwrap_or_default(),
        };
        let known = |i: &String| {
            Some(i) == io.ids.as_ref()
                || Some(i) == io.mask.as_ref()
                || Some(i) == io.pixels.as_ref()
        };
        let needed = if image {
            io.pixels.is_some()
        } else {
            io.ids.is_some()
        };
        if !needed || io.output.is_empty() || !inputs.iter().all(known) {
            return Err(Error::Onnx {
                model: model.path().to_path_buf(),
                message: format!(
                    "the graph has inputs {inputs:?} and outputs {outputs:?}; as the {} tower simat needs the input {} (with optionally attention_mask{}) and an output named one of {:?}",
                    if image { "image" } else { "text" },
                    if image { "pixel_values" } else { "input_ids" },
                    if image { ", input_ids for a combined graph" } else { ", pixel_values for a combined graph" },
                    if image { IMAGE_OUTPUTS } else { TEXT_OUTPUTS },
                ),
            });
        }
        Ok(io)
    }
}

/// `model.toml`. Unknown keys are refused, as in pipelines: a misspelt `image_size` would
/// otherwise preprocess at the default size without a word.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// The largest image side a model folder may ask for: CLIP-family towers take 224 to 448; a
/// batch of 4096² RGB floats is already 200 MB per image.
pub const MAX_IMAGE_SIZE: u32 = 4096;
/// The longest token context a model folder may ask for.
pub const MAX_CONTEXT_LENGTH: usize = 8192;

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

/// Hugging Face's `preprocessor_config.json` (the fields simat uses).
#[derive(Debug, Deserialize)]
struct PreprocessorConfig {
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    crop_size: Option<serde_json::Value>,
    size: Option<serde_json::Value>,
    resample: Option<u32>,
}

fn side_of(v: &serde_json::Value) -> Option<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Object(o) => o
            .get("shortest_edge")
            .or_else(|| o.get("height"))
            .and_then(|n| n.as_u64())
            .map(|n| n as u32),
        _ => None,
    }
}

impl ModelConfig {
    /// The preprocessing of a Hugging Face `preprocessor_config.json`: shortest side to
    /// `size`, centre crop of `crop_size` (they must be equal, as CLIP's are), bicubic.
    pub fn from_preprocessor_config(path: &Path) -> Result<ModelConfig> {
        let bad = |m: String| Error::Config {
            path: path.to_path_buf(),
            message: m,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("failed to read", path, e))?;
        let p: PreprocessorConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut c = ModelConfig::default();
        if let Some(m) = p.image_mean {
            c.mean = m;
        }
        if let Some(s) = p.image_std {
            c.std = s;
        }
        let crop = p.crop_size.as_ref().and_then(side_of);
        let size = p.size.as_ref().and_then(side_of);
        if let (Some(a), Some(b)) = (crop, size) {
            if a != b {
                return Err(bad(format!(
                    "resize to {b} then crop {a}: simat's preprocessing resizes the short side to the crop size (CLIP's)"
                )));
            }
        }
        if let Some(side) = crop.or(size) {
            c.image_size = side;
        }
        if p.resample.is_some_and(|r| r != 3) {
            return Err(bad(format!(
                "resample {} is not bicubic (3), which simat's preprocessing is",
                p.resample.unwrap_or_default()
            )));
        }
        Ok(c)
    }
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
    image_file: PathBuf,
    text_file: PathBuf,
    image: Option<(OnnxModel, TowerIo)>,
    text: Option<(OnnxModel, TowerIo)>,
    decoders: Option<rayon::ThreadPool>,
    /// A text model of its own, which embeds the texts instead of the text tower.
    own_text: Option<super::text::TextModel>,
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
        let (image_file, text_file) = tower_files(dir)?;
        if !dir.join("tokenizer.json").is_file() {
            return Err(Error::Config {
                path: dir.to_path_buf(),
                message: "not a model folder: no tokenizer.json".into(),
            });
        }
        let toml_path = dir.join("model.toml");
        let hf_path = dir.join("preprocessor_config.json");
        let mut config: ModelConfig = if toml_path.is_file() {
            let text = std::fs::read_to_string(&toml_path)
                .map_err(|e| Error::io("failed to read", &toml_path, e))?;
            toml::from_str(&text).map_err(|e| Error::Config {
                path: toml_path.clone(),
                message: e.to_string(),
            })?
        } else if hf_path.is_file() {
            ModelConfig::from_preprocessor_config(&hf_path)?
        } else {
            ModelConfig::default()
        };
        // A folder without a `name` (a Hugging Face export) is named as a sweep names it.
        if config.name.is_none() {
            config.name = model_name(dir).ok();
        }
        let bad = |message: String| Error::Config {
            path: toml_path.clone(),
            message,
        };
        if config.image_size == 0 || config.image_size > MAX_IMAGE_SIZE {
            return Err(bad(format!(
                "image_size {} is not between 1 and {MAX_IMAGE_SIZE} pixels",
                config.image_size
            )));
        }
        if config.context_length == 0 || config.context_length > MAX_CONTEXT_LENGTH {
            return Err(bad(format!(
                "context_length {} is not between 1 and {MAX_CONTEXT_LENGTH} tokens",
                config.context_length
            )));
        }
        if config.std.iter().any(|&v| v == 0.0 || !v.is_finite())
            || config.mean.iter().any(|v| !v.is_finite())
        {
            return Err(bad(format!(
                "mean {:?} and std {:?} must be finite, std non-zero",
                config.mean, config.std
            )));
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
            image_file,
            text_file,
            image: None,
            text: None,
            decoders: None,
            own_text: None,
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

    /// Refuse images of more than `max_pixels` pixels, undecoded (default: Pillow's limit).
    pub fn set_max_pixels(&mut self, max_pixels: u64) {
        self.preprocess.set_max_pixels(max_pixels);
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The model's identity: its name and the BLAKE3 of each of its files (and of its text
    /// model's, when it has one).
    pub fn identity(&self) -> Result<serde_json::Value> {
        let hashes = |dir: &Path, names: &[&str]| -> Result<BTreeMap<String, String>> {
            let mut files = BTreeMap::new();
            for f in names {
                let p = dir.join(f);
                if p.is_file() {
                    files.insert(f.to_string(), crate::io::hash_file(&p)?);
                }
            }
            Ok(files)
        };
        let text = match &self.own_text {
            Some(t) => hashes(t.dir(), super::text::TEXT_MODEL_FILES)?,
            None => BTreeMap::new(),
        };
        Ok(self.identity_from(hashes(&self.dir, &MODEL_FILES)?, text))
    }

    /// The identity from file hashes already computed (by file name): the model's, and its text
    /// model's.
    pub fn identity_from(
        &self,
        file_hashes: BTreeMap<String, String>,
        text_hashes: BTreeMap<String, String>,
    ) -> serde_json::Value {
        let mut id = serde_json::json!({
            "name": self.config.name,
            "pretrained": self.config.pretrained,
            "files": file_hashes,
        });
        if let Some(t) = &self.own_text {
            id["text_model"] = t.identity_from(text_hashes);
        }
        id
    }

    /// Embed texts with `text` instead of this model's text tower: the image tower and a text
    /// model of its own (a sentence encoder).
    pub fn set_text_model(&mut self, text: super::text::TextModel) {
        self.own_text = Some(text);
    }

    /// Load a tower and resolve its inputs and outputs (before its first batch).
    fn tower(&mut self, image: bool) -> Result<&mut (OnnxModel, TowerIo)> {
        let (slot, file) = if image {
            (&mut self.image, &self.image_file)
        } else {
            (&mut self.text, &self.text_file)
        };
        if slot.is_none() {
            let model = OnnxModel::load_on(file, self.threads, self.device)?;
            let io = TowerIo::resolve(&model, image)?;
            *slot = Some((model, io));
        }
        Ok(slot.as_mut().expect("loaded"))
    }

    /// Run a tower on `n` texts (`ids`, `mask`) or `n` images (`pixels`), with placeholders for
    /// the other inputs of a combined graph.
    fn run_tower(
        &mut self,
        image: bool,
        n: usize,
        ids: &[i64],
        mask: &[i64],
        pixels: &[f32],
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let context = self.config.context_length;
        let side = self.config.image_size as usize;
        // Placeholders: one start/end text, one black image.
        let one_text = self.tokenizer.encode_with_mask(&[""])?;
        let one_image = vec![0f32; 3 * side * side];
        let (model, io) = self.tower(image)?;
        let (text_n, ids, mask) = if image {
            (1, &one_text.ids[..], &one_text.mask[..])
        } else {
            (n, ids, mask)
        };
        let (image_n, pixels) = if image {
            (n, pixels)
        } else {
            (1, &one_image[..])
        };
        let mut feed: Vec<(&str, Vec<usize>, Input<'_>)> = Vec::new();
        if let Some(name) = &io.ids {
            feed.push((name, vec![text_n, context], Input::I64(ids)));
        }
        if let Some(name) = &io.mask {
            feed.push((name, vec![text_n, context], Input::I64(mask)));
        }
        if let Some(name) = &io.pixels {
            feed.push((name, vec![image_n, 3, side, side], Input::F32(pixels)));
        }
        let output = io.output.clone();
        model.run_named(&feed, &output)
    }

    fn check_output(
        &self,
        image: bool,
        n: usize,
        shape: &[usize],
        values: Vec<f32>,
    ) -> Result<Matrix> {
        let bad = |m: String| Error::Onnx {
            model: if image {
                self.image_file.clone()
            } else {
                self.text_file.clone()
            },
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
        if let Some(t) = &mut self.own_text {
            return t.embed_texts(texts, batch);
        }
        let context = self.config.context_length;
        let mut data = Vec::new();
        let mut dim = self.config.embed_dim.unwrap_or(0);
        for chunk in texts.chunks(batch.max(1)) {
            let enc = self.tokenizer.encode_with_mask(chunk)?;
            debug_assert_eq!(enc.ids.len(), chunk.len() * context);
            let (shape, values) = self.run_tower(false, chunk.len(), &enc.ids, &enc.mask, &[])?;
            let m = self.check_output(false, chunk.len(), &shape, values)?;
            dim = m.cols;
            data.extend_from_slice(&m.data);
        }
        Matrix::new(texts.len(), dim, data)
    }

    /// Raw image embeddings of preprocessed pixels (`n × 3 × size × size`).
    pub fn embed_pixels(&mut self, n: usize, pixels: &[f32]) -> Result<Matrix> {
        let (shape, values) = self.run_tower(true, n, &[], &[], pixels)?;
        self.check_output(true, n, &shape, values)
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
