//! Chunk checkpoints of long stages: each finished chunk of work is committed as its own file
//! under `STAGE/chunks/`, beside `checkpoint.json` holding the stage's fingerprint and chunk
//! count. A killed run resumes from the committed chunks only when both match; otherwise the
//! chunks (and whatever else the stage names) are cleared and the work starts over.
//!
//! Chunks are also the unit of a stage's parts ([`Part`]): part `i` of `n` commits a contiguous
//! range of the chunks, several parts at once in one folder, and the stage's commit is a run that
//! finds every chunk committed and assembles them, as a resumed run does, so a run in parts
//! writes the bytes of a run in one go.

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
        // Parts of a stage open the folder at once: one of them checks and clears at a time.
        std::fs::create_dir_all(stage_dir)
            .map_err(|e| Error::io("failed to create directory", stage_dir, e))?;
        let guard_path = stage_dir.join("chunks.lock");
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)
            .map_err(|e| Error::io("failed to open", &guard_path, e))?;
        guard
            .lock()
            .map_err(|e| Error::io("failed to lock", &guard_path, e))?;
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
        drop(guard);
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
        if let Some(stage_dir) = self.dir.parent() {
            let _ = std::fs::remove_file(stage_dir.join("chunks.lock"));
        }
    }
}

/// Part `index` of `count` of a stage's work (`--shard 3/16`; `index` from 0, as Slurm's
/// `SLURM_ARRAY_TASK_ID` of an array `0-15`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Which part, from 0.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl Part {
    /// The chunks of `n` that this part commits: a contiguous range, the parts' ranges covering
    /// `0..n` once, the first `n % count` parts one chunk longer.
    pub fn chunks(&self, n: usize) -> std::ops::Range<usize> {
        let (base, extra) = (n / self.count, n % self.count);
        let start = self.index * base + self.index.min(extra);
        let len = base + usize::from(self.index < extra);
        start..start + len
    }

    /// The chunks of `n` that a run commits: `part`'s range, or all of them in one go.
    pub fn range_of(part: Option<Part>, n: usize) -> std::ops::Range<usize> {
        part.map_or(0..n, |p| p.chunks(n))
    }

    /// Its record's file name in `STAGE/parts/`: `3-of-16`.
    pub fn name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}`: expected I/N, part I (from 0) of N parts, as 3/16");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(format!("`{s}`: part I of N needs 0 ≤ I < N"));
        }
        Ok(Part { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_chunk_once_in_order() {
        for n in [0, 1, 5, 16, 17, 100] {
            for count in [1, 2, 3, 16, 40] {
                let ranges: Vec<_> = (0..count)
                    .map(|index| Part { index, count }.chunks(n))
                    .collect();
                let flat: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>(), "{n} chunks in {count}");
                let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn a_part_is_read_as_i_of_n() {
        assert_eq!(
            "3/16".parse(),
            Ok(Part {
                index: 3,
                count: 16
            })
        );
        assert!("16/16".parse::<Part>().unwrap_err().contains("0 ≤ I < N"));
        assert!("3".parse::<Part>().unwrap_err().contains("expected I/N"));
    }
}
