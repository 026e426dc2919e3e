//! Text models of their own: a sentence encoder (BERT, MiniLM, MPNet, T5's encoder, XLM-R...)
//! beside an image model, as the paper's experiment with other text encoders needs.
//!
//! A text-model folder (`scripts/export_text_model.py` writes one) holds:
//!
//! - `text.onnx`: inputs found by name, `input_ids` and `attention_mask` (and `token_type_ids`
//!   when the graph has it: zeros for one sentence), all `[N, T]` i64; outputs
//!   `last_hidden_state` `[N, T, H]` and, for `pooling = "pooled"`, `pooler_output` (or
//!   `sentence_embedding`) `[N, H]`;
//! - `tokenizer.json`: any Hugging Face fast tokenizer (WordPiece, Unigram/SentencePiece, BPE),
//!   used as it is: its normaliser, pre-tokeniser, model and post-processor (BERT's
//!   `[CLS] … [SEP]`, T5's `… </s>`). Texts are cut to `context_length` tokens and a batch is
//!   padded to its longest text with the tokenizer's padding token;
//! - `model.toml`: `kind = "text"`, `pooling` (`cls`: the first token's state; `mean`: the mean
//!   of the states over the attention mask; `pooled`: the graph's own pooled output),
//!   `normalize` (divide by the L2 norm, as a sentence-transformers `Normalize` module does),
//!   `context_length`, and optionally `name`, `pretrained`, `embed_dim`.
//!
//! The pooled vector is what simat stores as the text's raw embedding.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Device, Input, OnnxModel};
use crate::error::{Error, Result};
use crate::linalg::Matrix;

/// How a text model makes one vector of its token states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token's state (BERT's `[CLS]`).
    Cls,
    /// The mean of the states over the attention mask (sentence-transformers' default).
    Mean,
    /// The graph's own pooled output (`pooler_output`, `sentence_embedding`).
    Pooled,
}

/// A text model's `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextModelConfig {
    /// Must be `"text"`: what tells a text model from a CLIP folder.
    pub kind: String,
    /// Its name (informational; a sweep's branch name).
    #[serde(default)]
    pub name: Option<String>,
    /// Where its weights came from (informational).
    #[serde(default)]
    pub pretrained: Option<String>,
    /// How token states become one vector.
    pub pooling: Pooling,
    /// Whether to divide the pooled vector by its norm.
    #[serde(default)]
    pub normalize: bool,
    /// Tokens per text at most, special tokens included.
    pub context_length: usize,
    /// The embedding dimension, checked against the graph's output when given.
    #[serde(default)]
    pub embed_dim: Option<usize>,
}

impl Pooling {
    /// Its name in `model.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Pooled => "pooled",
        }
    }
}

const POOLED_OUTPUTS: [&str; 2] = ["pooler_output", "sentence_embedding"];

/// The files of a text model, hashed into its identity.
pub const TEXT_MODEL_FILES: &[&str] = &["text.onnx", "tokenizer.json", "model.toml"];

fn read_config(dir: &Path) -> std::result::Result<TextModelConfig, String> {
    let path = dir.join("model.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    let c: TextModelConfig =
        toml::from_str(&text).map_err(|e| format!("`{}`: {e}", path.display()))?;
    if c.kind != "text" {
        return Err(format!(
            "`{}` has kind = \"{}\": a text model's is \"text\"",
            path.display(),
            c.kind
        ));
    }
    if c.context_length < 2 || c.context_length > super::clip::MAX_CONTEXT_LENGTH {
        return Err(format!(
            "`{}`: context_length {} is not between 2 and {}",
            path.display(),
            c.context_length,
            super::clip::MAX_CONTEXT_LENGTH
        ));
    }
    Ok(c)
}

/// Whether `dir` is a text-model folder, checked before anything runs; the message says what
/// is wrong.
pub fn check_folder(dir: &Path) -> std::result::Result<(), String> {
    checked_config(dir).map(|_| ())
}

/// The `model.toml` of the text-model folder `dir`, once the folder is checked.
fn checked_config(dir: &Path) -> std::result::Result<TextModelConfig, String> {
    if !dir.is_dir() {
        return Err(format!(
            "`{}` is not a folder (expected a text model; scripts/export_text_model.py makes one)",
            dir.display()
        ));
    }
    for f in ["text.onnx", "tokenizer.json", "model.toml"] {
        if !dir.join(f).is_file() {
            return Err(format!(
                "`{}` has no {f}: a text model is text.onnx, tokenizer.json and a model.toml with kind = \"text\" (scripts/export_text_model.py)",
                dir.display()
            ));
        }
    }
    read_config(dir)
}

/// A text model, ready to embed.
#[derive(Debug)]
pub struct TextModel {
    dir: PathBuf,
    /// Its `model.toml`.
    pub config: TextModelConfig,
    /// Truncating at the context, not padding.
    tokenizer: tokenizers::Tokenizer,
    /// The tokenizer's padding id (0 when it names none).
    pad: i64,
    onnx: OnnxModel,
    inputs: Vec<String>,
    output: String,
}

/// Token ids, attention mask and type ids of a batch, `n × t` each, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// Texts.
    pub n: usize,
    /// Tokens per text (the batch's longest, at most the context length).
    pub t: usize,
    /// Token ids, padded with the tokenizer's padding token.
    pub ids: Vec<i64>,
    /// 1 for a token, 0 for padding.
    pub mask: Vec<i64>,
    /// Segment ids (0 for one sentence).
    pub type_ids: Vec<i64>,
}

impl TextModel {
    /// Open the folder `dir` for `device`, with `threads` ONNX Runtime threads (0: its default).
    pub fn open(dir: &Path, device: Device, threads: usize) -> Result<TextModel> {
        let config = checked_config(dir).map_err(|m| Error::Config {
            path: dir.to_path_buf(),
            message: m,
        })?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::data(&tok_path, format!("not a tokenizer.json: {e}")))?;
        // Cut at the context; padded by `tokens`, to the batch's longest, whatever padding the
        // file asks for.
        let pad = tokenizer
            .get_padding()
            .map(|p| i64::from(p.pad_id))
            .unwrap_or(0);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: config.context_length,
                ..Default::default()
            }))
            .map_err(|e| Error::data(&tok_path, format!("truncation: {e}")))?;
        tokenizer.with_padding(None);
        let graph = dir.join("text.onnx");
        let onnx = OnnxModel::load_on(&graph, threads, device)?;
        let names = onnx.inputs();
        let outputs = onnx.outputs();
        let bad = |m: String| Error::Onnx {
            model: graph.clone(),
            message: m,
        };
        for need in ["input_ids", "attention_mask"] {
            if !names.iter().any(|n| n == need) {
                return Err(bad(format!(
                    "the graph has inputs {names:?}; a text model takes input_ids and attention_mask (and optionally token_type_ids)"
                )));
            }
        }
        if let Some(other) = names
            .iter()
            .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str()))
        {
            return Err(bad(format!(
                "the graph has an input `{other}` simat does not feed (it feeds input_ids, attention_mask, token_type_ids)"
            )));
        }
        let output = match config.pooling {
            Pooling::Pooled => POOLED_OUTPUTS
                .iter()
                .find(|o| outputs.iter().any(|n| n == *o))
                .map(|o| o.to_string()),
            _ => outputs.iter().find(|n| *n == "last_hidden_state").cloned(),
        }
        .ok_or_else(|| {
            bad(format!(
                "the graph has outputs {outputs:?}; pooling = \"{}\" needs {}",
                config.pooling.as_str(),
                if config.pooling == Pooling::Pooled {
                    "pooler_output or sentence_embedding"
                } else {
                    "last_hidden_state"
                }
            ))
        })?;
        Ok(TextModel {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            pad,
            onnx,
            inputs: names,
            output,
        })
    }

    /// The tokens of `texts` (special tokens as the tokenizer adds them, cut to the context
    /// length, padded to the longest).
    pub fn tokens(&self, texts: &[&str]) -> Result<Tokens> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| {
                Error::data(
                    self.dir.join("tokenizer.json"),
                    format!("tokenisation failed: {e}"),
                )
            })?;
        let pad = self.pad;
        let t = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let n = texts.len();
        let (mut ids, mut mask, mut type_ids) = (vec![pad; n * t], vec![0; n * t], vec![0; n * t]);
        for (i, e) in encodings.iter().enumerate() {
            for (k, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                ids[i * t + k] = i64::from(id);
                type_ids[i * t + k] = i64::from(ty);
                mask[i * t + k] = 1;
            }
        }
        Ok(Tokens {
            n,
            t,
            ids,
            mask,
            type_ids,
        })
    }

    /// The embeddings of `texts`, `batch` at a time: pooled, normalised when the folder says.
    pub fn embed_texts(&mut self, texts: &[&str], batch: usize) -> Result<Matrix> {
        let mut data = Vec::new();
        let mut dim = self.config.embed_dim.unwrap_or(0);
        for chunk in texts.chunks(batch.max(1)) {
            let tk = self.tokens(chunk)?;
            let shape = vec![tk.n, tk.t];
            let mut feed: Vec<(&str, Vec<usize>, Input<'_>)> = Vec::new();
            for name in &self.inputs {
                let v = match name.as_str() {
                    "input_ids" => &tk.ids,
                    "attention_mask" => &tk.mask,
                    _ => &tk.type_ids,
                };
                feed.push((name, shape.clone(), Input::I64(v)));
            }
            let (out_shape, values) = self.onnx.run_named(&feed, &self.output)?;
            let m = self.pool(&tk, &out_shape, &values)?;
            dim = m.cols;
            data.extend_from_slice(&m.data);
        }
        Matrix::new(texts.len(), dim, data)
    }

    fn pool(&self, tk: &Tokens, shape: &[usize], values: &[f32]) -> Result<Matrix> {
        let bad = |m: String| Error::Onnx {
            model: self.dir.join("text.onnx"),
            message: m,
        };
        let (n, h, mut out) = match (self.config.pooling, shape) {
            (Pooling::Pooled, [n, h]) if *n == tk.n => (*n, *h, values.to_vec()),
            (Pooling::Cls | Pooling::Mean, [n, t, h]) if *n == tk.n && *t == tk.t => {
                let (n, t, h) = (*n, *t, *h);
                let mut out = vec![0f32; n * h];
                for i in 0..n {
                    let row = &mut out[i * h..(i + 1) * h];
                    if self.config.pooling == Pooling::Cls {
                        row.copy_from_slice(&values[i * t * h..i * t * h + h]);
                        continue;
                    }
                    // In f64, then once to f32, as a sum over a mask should be.
                    let mut acc = vec![0f64; h];
                    let mut count = 0f64;
                    for k in 0..t {
                        if tk.mask[i * t + k] == 1 {
                            count += 1.0;
                            let state = &values[(i * t + k) * h..(i * t + k + 1) * h];
                            for (a, v) in acc.iter_mut().zip(state) {
                                *a += f64::from(*v);
                            }
                        }
                    }
                    for (r, a) in row.iter_mut().zip(&acc) {
                        *r = (a / count.max(1.0)) as f32;
                    }
                }
                (n, h, out)
            }
            _ => {
                return Err(bad(format!(
                    "output `{}` has shape {shape:?} for {} texts of {} tokens",
                    self.output, tk.n, tk.t
                )))
            }
        };
        if let Some(d) = self.config.embed_dim.filter(|&d| d != h) {
            return Err(bad(format!(
                "embeddings have dimension {h}, model.toml says {d}"
            )));
        }
        let mut m = Matrix::new(n, h, std::mem::take(&mut out))?;
        if self.config.normalize {
            crate::linalg::normalize_rows(&mut m);
        }
        Ok(m)
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's identity: its name, pooling and the BLAKE3 of each of its files (by file
    /// name, hashed by the caller).
    pub fn identity_from(
        &self,
        files: std::collections::BTreeMap<String, String>,
    ) -> serde_json::Value {
        serde_json::json!({
            "name": self.config.name,
            "pretrained": self.config.pretrained,
            "pooling": self.config.pooling,
            "normalize": self.config.normalize,
            "files": files,
        })
    }
}
