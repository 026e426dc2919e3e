//! CLIP's tokenizer: a Hugging Face `tokenizer.json` (built by
//! `scripts/build_clip_tokenizer.py` from the BPE vocabulary open-clip-torch ships), padded the
//! way open_clip's `tokenize` pads: `<start_of_text>`, the tokens, `<end_of_text>`, zeros; text
//! longer than the context is cut, keeping `<end_of_text>` last.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A CLIP tokenizer with its context length.
#[derive(Debug)]
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    sot: i64,
    eot: i64,
    /// Tokens per text, padding included (77 for CLIP).
    pub context_length: usize,
}

impl ClipTokenizer {
    /// Load `tokenizer.json`.
    pub fn load(path: &Path, context_length: usize) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::data(path, format!("not a tokenizer.json: {e}")))?;
        let special = |t: &str| {
            inner
                .token_to_id(t)
                .map(i64::from)
                .ok_or_else(|| Error::data(path, format!("no `{t}` token: not a CLIP tokenizer")))
        };
        let (sot, eot) = (special("<start_of_text>")?, special("<end_of_text>")?);
        if context_length < 2 {
            return Err(Error::data(path, "context length must be at least 2"));
        }
        Ok(ClipTokenizer {
            inner,
            path: path.to_path_buf(),
            sot,
            eot,
            context_length,
        })
    }

    /// Token ids of `texts`, `texts.len() × context_length`, row-major.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<i64>> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| Error::data(&self.path, format!("tokenisation failed: {e}")))?;
        let n = self.context_length;
        let mut out = vec![0i64; texts.len() * n];
        for (row, enc) in out.chunks_mut(n).zip(&encodings) {
            let ids = enc.get_ids();
            let kept = ids.len().min(n - 2);
            row[0] = self.sot;
            for (slot, &id) in row[1..=kept].iter_mut().zip(ids) {
                *slot = id as i64;
            }
            row[kept + 1] = self.eot;
        }
        Ok(out)
    }
}
