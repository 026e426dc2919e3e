//! `RUN/manifest.json`: what each stage produced, with its fingerprint, timings and counters.
//!
//! The manifest is the commit point of a run: a stage's outputs are trusted only when the
//! manifest records the stage as `done` with their sizes and hashes. It is rewritten atomically
//! after each stage, and not rewritten when nothing changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fingerprint::FingerprintDetail;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

/// File name of the manifest inside a run directory.
pub const MANIFEST: &str = "manifest.json";

/// The state of a run directory.
///
/// A run directory may have a *base*: another run directory whose finished stages it reads as
/// its own where it has no stage of that name (a model's branch of a sweep, `RUN/models/NAME/`,
/// has its sweep's run as base). The base's records are loaded with the manifest, never written
/// into it: a base's stage that reruns changes the digests its dependents here are fingerprinted
/// with, so they go stale as they would in one run directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The simat version that last wrote the manifest.
    pub engine: String,
    /// The base run directory, relative to this one (`../..` for a sweep's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Per stage, by name.
    pub stages: BTreeMap<String, StageRecord>,
    /// The base's finished stages, by name (loaded with the manifest, not saved).
    #[serde(skip)]
    pub inherited: BTreeMap<String, StageRecord>,
    /// The base run directory, resolved.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageStatus {
    /// Started and not finished: running now, or killed.
    Running,
    /// Finished; outputs recorded.
    Done,
    /// Ended with an error.
    Failed,
}

/// One stage's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Running, done or failed.
    pub status: StageStatus,
    /// Short hash of `detail`; absent while running or after a failure.
    pub fingerprint: Option<String>,
    /// What the fingerprint covers.
    pub detail: Option<FingerprintDetail>,
    /// The files the stage wrote, relative to its directory.
    pub outputs: Vec<OutputRecord>,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Wall-clock duration in seconds.
    pub wall_s: f64,
    /// Counters from the stage's report (rows read, skipped and why, ...).
    pub counters: BTreeMap<String, u64>,
    /// The error of a failed attempt.
    pub error: Option<String>,
    /// The tables the stage provided (by name), for the planner.
    #[serde(default)]
    pub provides: Vec<String>,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Path relative to the stage directory.
    pub file: String,
    /// Row count, for tables.
    pub rows: Option<u64>,
    /// Size in bytes.
    pub bytes: u64,
    /// BLAKE3 of the content, hex.
    pub blake3: String,
}

/// Whether an output's name is a folder of files (crop PNGs, rendered images), recorded by the
/// digest of its files: its name ends with `/`.
pub fn is_folder_output(name: &str) -> bool {
    name.ends_with('/')
}

impl OutputRecord {
    /// Whether this output is a folder of files (see [`is_folder_output`]).
    pub fn is_folder(&self) -> bool {
        is_folder_output(&self.file)
    }

    /// Whether it is in `stage_dir` as what it was written as (a file, or a folder).
    pub fn is_present_in(&self, stage_dir: &std::path::Path) -> bool {
        std::fs::metadata(stage_dir.join(&self.file)).is_ok_and(|m| m.is_dir() == self.is_folder())
    }
}

impl StageRecord {
    /// Digest of the outputs, used as the upstream key of downstream fingerprints.
    pub fn output_digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for o in &self.outputs {
            hasher.update(o.file.as_bytes());
            hasher.update(b"\0");
            hasher.update(o.blake3.as_bytes());
            hasher.update(b"\n");
        }
        hasher.finalize().to_hex()[..16].to_string()
    }

    /// Total rows across outputs that are tables.
    pub fn total_rows(&self) -> Option<u64> {
        let rows: Vec<u64> = self.outputs.iter().filter_map(|o| o.rows).collect();
        (!rows.is_empty()).then(|| rows.iter().sum())
    }
}

impl Manifest {
    /// The record of stage `name`: this run's own, else its base's finished one.
    pub fn record(&self, name: &str) -> Option<&StageRecord> {
        self.stages.get(name).or_else(|| self.inherited.get(name))
    }

    /// The finished stages a need can be met by, own and inherited (an own stage of a name
    /// hides the base's, whatever its state), by name.
    pub fn finished(&self) -> impl Iterator<Item = (&str, &StageRecord)> {
        let own = self.stages.iter();
        let base = self
            .inherited
            .iter()
            .filter(|(n, _)| !self.stages.contains_key(*n));
        own.chain(base)
            .filter(|(_, r)| r.status == StageStatus::Done)
            .map(|(n, r)| (n.as_str(), r))
    }

    /// The directory of stage `name`: in the base when the stage is the base's.
    pub fn stage_dir(&self, run_dir: &Path, name: &str) -> PathBuf {
        match &self.base_dir {
            Some(base) if !self.stages.contains_key(name) && self.inherited.contains_key(name) => {
                base.join(name)
            }
            _ => run_dir.join(name),
        }
    }

    /// Make `base` the base of the run directory `run_dir` (created when missing): recorded in
    /// its manifest, which is saved. A run directory that already has another base is refused.
    pub fn bind_base(run_dir: &Path, base: &str) -> Result<Manifest> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| Error::io("failed to create run directory", run_dir, e))?;
        let mut m = Manifest::load(run_dir)?;
        match m.base.as_deref() {
            Some(b) if b == base => return Ok(m),
            Some(b) => {
                return Err(Error::data(
                    Self::path(run_dir),
                    format!("the run's base is `{b}`, not `{base}`: this folder belongs to another run"),
                ))
            }
            None if !m.stages.is_empty() => {
                return Err(Error::data(
                    Self::path(run_dir),
                    format!("the run has stages of its own and no base; a sweep's model folder has its sweep's run (`{base}`) as base: move this run elsewhere"),
                ))
            }
            None => {}
        }
        m.base = Some(base.to_string());
        m.save(run_dir)?;
        Manifest::load(run_dir)
    }

    /// Where a finished stage of this run holds `table`: the done stage that recorded providing
    /// it (the latest to start, where two did), or, in manifests written before `provides` was
    /// recorded, a done stage whose directory has the table's file.
    pub fn table_path(&self, run_dir: &Path, table: &crate::tables::TableDecl) -> Option<PathBuf> {
        let done = || self.finished();
        done()
            .filter(|(_, r)| r.provides.iter().any(|t| t == table.name))
            .max_by_key(|(_, r)| r.started_unix)
            .or_else(|| {
                done().find(|(stage, r)| {
                    r.provides.is_empty()
                        && self.stage_dir(run_dir, stage).join(table.file).exists()
                })
            })
            .map(|(stage, _)| self.stage_dir(run_dir, stage).join(table.file))
    }

    /// Path of the manifest in `run_dir`.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(MANIFEST)
    }

    /// Load the manifest of `run_dir`, with its base's finished records; an absent manifest is
    /// an empty one.
    pub fn load(run_dir: &Path) -> Result<Manifest> {
        let mut m = Manifest::load_without_base(run_dir)?;
        let path = Self::path(run_dir);
        if let Some(base) = &m.base {
            let dir = run_dir.join(base);
            let parent = Manifest::load_without_base(&dir)?;
            if parent.base.is_some() {
                return Err(Error::data(
                    &path,
                    format!("its base `{base}` has a base of its own; a base is one level deep"),
                ));
            }
            m.inherited = parent
                .stages
                .into_iter()
                .filter(|(_, r)| r.status == StageStatus::Done)
                .collect();
            m.base_dir = Some(dir);
        }
        Ok(m)
    }

    /// [`Self::load`] without the base's records (its own stages and the name of its base).
    pub fn load_without_base(run_dir: &Path) -> Result<Manifest> {
        let path = Self::path(run_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => return Err(Error::io("failed to read", &path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            path: path.clone(),
            byte_offset: crate::io::json_stream::byte_offset_of(&bytes, e.line(), e.column()),
            message: format!(
                "{e} (the run directory's manifest is damaged; remove it to start the run afresh)"
            ),
        })
    }

    /// Write the manifest atomically, unless the file already holds exactly these bytes.
    pub fn save(&mut self, run_dir: &Path) -> Result<()> {
        self.engine = crate::ENGINE_VERSION.to_string();
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serialises");
        bytes.push(b'\n');
        let path = Self::path(run_dir);
        if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
            return Ok(());
        }
        write_atomic(&path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: StageStatus, provides: &[&str]) -> StageRecord {
        StageRecord {
            status,
            fingerprint: Some("f".into()),
            detail: None,
            outputs: vec![],
            started_unix: 0,
            wall_s: 0.0,
            counters: BTreeMap::new(),
            error: None,
            provides: provides.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_run_with_a_base_reads_the_base_s_finished_stages_and_never_saves_them() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let mut parent = Manifest::default();
        parent
            .stages
            .insert("queries".into(), record(StageStatus::Done, &["queries"]));
        parent
            .stages
            .insert("crops".into(), record(StageStatus::Failed, &["crops"]));
        parent.stages.insert(
            "embed".into(),
            record(StageStatus::Done, &["image_embeddings"]),
        );
        parent.save(base).unwrap();
        let child = base.join("models/m");
        let mut m = Manifest::bind_base(&child, "../..").unwrap();
        // Only finished stages are inherited; a stage of the child's own hides the base's.
        assert!(m.record("queries").is_some() && m.record("crops").is_none());
        m.stages
            .insert("embed".into(), record(StageStatus::Running, &[]));
        let finished: Vec<&str> = m.finished().map(|(n, _)| n).collect();
        assert_eq!(finished, ["queries"]);
        assert_eq!(
            m.stage_dir(&child, "queries"),
            child.join("../..").join("queries")
        );
        assert_eq!(m.stage_dir(&child, "embed"), child.join("embed"));
        m.save(&child).unwrap();
        let text = std::fs::read_to_string(Manifest::path(&child)).unwrap();
        assert!(
            text.contains("\"base\": \"../..\"") && !text.contains("queries"),
            "{text}"
        );
        // The same base again is fine; another, or a run of its own without one, is refused.
        Manifest::bind_base(&child, "../..").unwrap();
        let e = Manifest::bind_base(&child, "..").unwrap_err().to_string();
        assert!(e.contains("the run's base is `../..`, not `..`"), "{e}");
        let e = Manifest::bind_base(base, "../..").unwrap_err().to_string();
        assert!(e.contains("has stages of its own and no base"), "{e}");
    }

    #[test]
    fn a_base_with_a_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mid = dir.path().join("a");
        Manifest::bind_base(&mid, "..").unwrap();
        let leaf = mid.join("b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(
            Manifest::path(&leaf),
            "{\"engine\": \"x\", \"base\": \"..\", \"stages\": {}}",
        )
        .unwrap();
        let e = Manifest::load(&leaf).unwrap_err().to_string();
        assert!(e.contains("a base is one level deep"), "{e}");
    }
}
