//! CLIP's tokenizer: a Hugging Face `tokenizer.json`, in either of two conventions.
//!
//! - **open_clip** (`scripts/build_clip_tokenizer.py` builds it from the BPE vocabulary
//!   open-clip-torch ships): special tokens `<start_of_text>`, `<end_of_text>`; padded with 0, as
//!   open_clip's `tokenize` pads.
//! - **Hugging Face** (`CLIPTokenizerFast`, the `tokenizer.json` of a hub repository or an optimum
//!   export): special tokens `<|startoftext|>`, `<|endoftext|>`; padded with its padding token
//!   (`padding.pad_id` of the file when set, else `<|endoftext|>`, as the openai repositories
//!   set `pad_token`), with an attention mask.
//!
//! Either way a text becomes the start token, its tokens, the end token, then padding; text
//! longer than the context is cut, keeping the end token last. Under CLIP's causal attention the
//! end token's output — the text embedding — sees only what precedes it, so both conventions give
//! the same vectors for the same weights.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which naming of the special tokens a tokenizer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// `<start_of_text>` / `<end_of_text>`, zero padding.
    OpenClip,
    /// `<|startoftext|>` / `<|endoftext|>`, padding by the pad token.
    HuggingFace,
}

/// Token ids of a batch and their attention mask, both `texts × context_length`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<i64>,
    /// 1 for the start token, the text's tokens and the end token; 0 for padding.
    pub mask: Vec<i64>,
}

/// A CLIP tokenizer with its context length.
#[derive(Debug)]
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    sot: i64,
    eot: i64,
    pad: i64,
    /// The naming of its special tokens.
    pub convention: Convention,
    /// Tokens per text, padding included (77 for CLIP).
    pub context_length: usize,
}

impl ClipTokenizer {
    /// Load `tokenizer.json`.
    pub fn load(path: &Path, context_length: usize) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::data(path, format!("not a tokenizer.json: {e}")))?;
        let id = |t: &str| inner.token_to_id(t).map(i64::from);
        let (convention, sot, eot) = match (
            id("<start_of_text>"),
            id("<end_of_text>"),
            id("<|startoftext|>"),
            id("<|endoftext|>"),
        ) {
            (Some(s), Some(e), _, _) => (Convention::OpenClip, s, e),
            (_, _, Some(s), Some(e)) => (Convention::HuggingFace, s, e),
            _ => {
                return Err(Error::data(
                    path,
                    "no `<start_of_text>`/`<end_of_text>` (open_clip) nor `<|startoftext|>`/`<|endoftext|>` (Hugging Face) tokens: not a CLIP tokenizer",
                ))
            }
        };
        let pad = match convention {
            Convention::OpenClip => 0,
            Convention::HuggingFace => inner
                .get_padding()
                .map(|p| i64::from(p.pad_id))
                .unwrap_or(eot),
        };
        if context_length < 2 {
            return Err(Error::data(path, "context length must be at least 2"));
        }
        Ok(ClipTokenizer {
            inner,
            path: path.to_path_buf(),
            sot,
            eot,
            pad,
            convention,
            context_length,
        })
    }

    /// Token ids of `texts`, `texts.len() × context_length`, row-major.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<i64>> {
        Ok(self.encode_with_mask(texts)?.ids)
    }

    /// Token ids and attention mask of `texts`.
    pub fn encode_with_mask(&self, texts: &[&str]) -> Result<Encoded> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| Error::data(&self.path, format!("tokenisation failed: {e}")))?;
        let n = self.context_length;
        let mut ids = vec![self.pad; texts.len() * n];
        let mut mask = vec![0i64; texts.len() * n];
        for ((row, m), enc) in ids.chunks_mut(n).zip(mask.chunks_mut(n)).zip(&encodings) {
            let tokens = enc.get_ids();
            let kept = tokens.len().min(n - 2);
            row[0] = self.sot;
            for (slot, &id) in row[1..=kept].iter_mut().zip(tokens) {
                *slot = id as i64;
            }
            row[kept + 1] = self.eot;
            m[..kept + 2].fill(1);
        }
        Ok(Encoded { ids, mask })
    }
}
