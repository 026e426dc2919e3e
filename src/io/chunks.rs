//! Chunk checkpoints of long stages: each finished chunk of work is committed as its own file
//! under `STAGE/chunks/`, beside `checkpoint.json` holding the stage's fingerprint and chunk
//! count. A killed run resumes from the committed chunks only when both match; otherwise the
//! chunks (and whatever else the stage names) are cleared and the work starts over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use crate::error::{Error, Result};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Checkpoint {
    fingerprint: String,
    chunks: usize,
}

/// The chunk folder of one run of a stage.
#[derive(Debug)]
pub struct Chunks {
    dir: PathBuf,
    checkpoint: PathBuf,
}

impl Chunks {
    /// Open `stage_dir/chunks` for `n` chunks made under `fingerprint`. When the checkpoint does
    /// not match, the folder and each of `also_clear` (paths under `stage_dir`) are removed.
    pub fn open(
        stage_dir: &Path,
        fingerprint: &str,
        n: usize,
        also_clear: &[&str],
    ) -> Result<Self> {
        let dir = stage_dir.join("chunks");
        let checkpoint = stage_dir.join("checkpoint.json");
        let want = Checkpoint {
            fingerprint: fingerprint.to_string(),
            chunks: n,
        };
        let resumable = std::fs::read(&checkpoint)
            .ok()
            .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
            .is_some_and(|c| c == want);
        if !resumable {
            for p in also_clear {
                let _ = std::fs::remove_dir_all(stage_dir.join(p));
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io("failed to create directory", &dir, e))?;
            write_atomic(&checkpoint, &serde_json::to_vec(&want).expect("json"))?;
        }
        Ok(Chunks { dir, checkpoint })
    }

    /// The file of chunk `k` (`chunks/<k>.<ext>`); it exists once the chunk is committed.
    pub fn file(&self, k: usize, ext: &str) -> PathBuf {
        self.dir.join(format!("{k:06}.{ext}"))
    }

    /// Remove the chunks and the checkpoint, once the stage's outputs are written.
    pub fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.checkpoint);
    }
}
