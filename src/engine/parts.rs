//! A stage run in parts, then committed.
//!
//! A shardable stage ([`Stage::shardable`]) runs as part `i` of `n`
//! ([`Engine::run_part`]): under the lock of that part alone (`STAGE/parts/<i>-of-<n>.lock`), so
//! parts of one stage run at once on a shared file system, it commits its range of the stage's
//! chunks (`io::chunks`) and then its record, `STAGE/parts/<i>-of-<n>.json`: the stage's
//! fingerprint, its input hashes, the part, and each file it committed with its BLAKE3. A part
//! whose record matches the current fingerprint and whose files are intact is fresh; a killed
//! part resumes from its committed chunks.
//!
//! The commit ([`Engine::commit`]) takes the run directory's lock, checks that every part of
//! the current fingerprint is done and intact, and then runs the stage as a whole: it finds every
//! chunk committed and only assembles them, as a resumed run does. So the tables, their hashes
//! and the manifest entry are those of a run in one go, byte for byte. Executors (local, Slurm)
//! decide where parts run, never what they compute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{fingerprint, hash_inputs, lock, Engine, Manifest, OutputRecord, RunOptions};
use super::{Stage, StageContext, StageOutcome};
use crate::error::{Error, Result};
use crate::io::chunks::Part;

/// The folder of a stage's part records and locks.
pub const PARTS_DIR: &str = "parts";

/// What a finished part committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The stage.
    pub stage: String,
    /// Which part.
    pub part: Part,
    /// The stage's fingerprint the part ran under.
    pub fingerprint: String,
    /// The BLAKE3 of each input, as the fingerprint holds them.
    pub inputs: BTreeMap<String, String>,
    /// Each file it committed, relative to the stage's folder.
    pub files: Vec<OutputRecord>,
    /// Wall time of the part, in seconds.
    pub wall_s: f64,
    /// The stage's counters for this part.
    pub counters: BTreeMap<String, u64>,
}

impl PartRecord {
    fn path(stage_dir: &Path, part: Part) -> PathBuf {
        stage_dir
            .join(PARTS_DIR)
            .join(format!("{}.json", part.name()))
    }

    /// The records in `stage_dir/parts`, in part order; an unreadable one is an error naming it.
    pub fn all(stage_dir: &Path) -> Result<Vec<(PathBuf, PartRecord)>> {
        let dir = stage_dir.join(PARTS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for e in entries {
            let p = e.map_err(|e| Error::io("failed to list", &dir, e))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                let bytes = std::fs::read(&p).map_err(|e| Error::io("failed to read", &p, e))?;
                let rec: PartRecord = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::data(&p, format!("not a part record: {e}")))?;
                out.push((p, rec));
            }
        }
        out.sort_by_key(|(_, r)| (r.part.count, r.part.index));
        Ok(out)
    }

    /// Whether every file it names is there with its recorded hash.
    fn intact(&self, stage_dir: &Path) -> Result<bool> {
        for f in &self.files {
            let path = stage_dir.join(&f.file);
            if !path.is_file() {
                return Ok(false);
            }
            let (bytes, blake3) = fingerprint::hash_output(&path, false)?;
            if bytes != f.bytes || blake3 != f.blake3 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// How a part went.
#[derive(Debug, Clone)]
pub struct PartOutcome {
    /// The stage.
    pub stage: String,
    /// The part.
    pub part: Part,
    /// Its record when it ran; `None` when it was fresh (or the stage is committed and fresh).
    pub ran: Option<PartRecord>,
}

impl Engine<'_> {
    /// Run part `part` of a shardable `stage` (see the module's docs).
    ///
    /// `stages` is the pipeline the stage is one of (or the stage alone): its needs are resolved
    /// among them, as a run of the whole pipeline resolves them.
    pub fn run_part(
        &self,
        stages: &[&dyn Stage],
        name: &str,
        part: Part,
        opts: &RunOptions,
    ) -> Result<PartOutcome> {
        let (stage, at) = find_stage(stages, name)?;
        let name = stage.name();
        if !stage.shardable() {
            return Err(Error::stage(name, "does not run in parts (no --shard)"));
        }
        let stage_dir = self.run_dir.join(name);
        let _lock = lock::RunLock::acquire_file(
            &stage_dir.join(PARTS_DIR),
            &format!("{}.lock", part.name()),
            opts.wait,
            self.ui,
        )?;
        let manifest = Manifest::load(&self.run_dir)?;
        let providers = super::plan::resolve(stages, &manifest, self.catalogue)?;
        let providers = &providers[at];
        let mut detail = self.detail_without_inputs(stage, providers, &manifest)?;
        hash_inputs(stage, &mut detail, &BTreeMap::new())?;
        let fingerprint = detail.hash();
        let label = format!("{name} part {part}");
        let fresh = PartOutcome {
            stage: name.into(),
            part,
            ran: None,
        };
        // Committed already: its chunks are gone, and nothing is left to do.
        if self.stale_reason(stage, &detail, &manifest)?.is_none() {
            self.ui
                .status("Fresh", format!("{label} (the stage is committed)"));
            return Ok(fresh);
        }
        let record_path = PartRecord::path(&stage_dir, part);
        if let Ok(bytes) = std::fs::read(&record_path) {
            if let Ok(old) = serde_json::from_slice::<PartRecord>(&bytes) {
                if old.fingerprint == fingerprint && old.intact(&stage_dir)? {
                    self.ui.status("Fresh", label);
                    return Ok(fresh);
                }
            }
        }
        // A record that does not match is no longer true: gone before the work. So are the
        // records of another number of parts: their chunks stay, and this part resumes from
        // those in its range.
        let _ = std::fs::remove_file(&record_path);
        for (p, r) in PartRecord::all(&stage_dir)? {
            if r.part.count != part.count {
                let _ = std::fs::remove_file(p);
            }
        }
        self.ui.status("Running", &label);
        let start = Instant::now();
        let ctx = StageContext {
            run_dir: &self.run_dir,
            stage: name,
            stage_dir: stage_dir.clone(),
            ui: self.ui,
            fingerprint: fingerprint.clone(),
            input_hashes: detail.inputs.clone(),
            dirs: super::stage::provider_dirs(&self.run_dir, providers, &manifest),
            providers: providers.clone(),
            provides: stage.provides(),
            part: Some(part),
        };
        let report = stage.run(&ctx)?;
        if report.outputs.is_empty() {
            self.ui.warn(format!(
                "{label} has no chunk to work on: the stage has fewer chunks than parts (a smaller `chunk_images` gives each part some)"
            ));
        }
        let mut files = Vec::new();
        for (file, rows) in &report.outputs {
            let (bytes, blake3) = fingerprint::hash_output(&stage_dir.join(file), false)?;
            files.push(OutputRecord {
                file: file.clone(),
                rows: *rows,
                bytes,
                blake3,
            });
        }
        let record = PartRecord {
            stage: name.into(),
            part,
            fingerprint,
            inputs: detail.inputs.clone(),
            files,
            wall_s: start.elapsed().as_secs_f64(),
            counters: report.counters.clone(),
        };
        crate::io::atomic::write_atomic(
            &record_path,
            (serde_json::to_string_pretty(&record).expect("json") + "\n").as_bytes(),
        )?;
        self.ui.status(
            "Finished",
            format!(
                "{label} ({} files) in {:.2}s",
                record.files.len(),
                record.wall_s
            ),
        );
        Ok(PartOutcome {
            stage: name.into(),
            part,
            ran: Some(record),
        })
    }

    /// Commit a stage run in parts: every part of its current fingerprint must be done and
    /// intact; then the stage runs as a whole over the committed chunks and its entry is written.
    /// `stages` as for [`Self::run_part`].
    pub fn commit(
        &self,
        stages: &[&dyn Stage],
        name: &str,
        opts: &RunOptions,
    ) -> Result<StageOutcome> {
        let (stage, at) = find_stage(stages, name)?;
        let name = stage.name();
        if !stage.shardable() {
            return Err(Error::stage(name, "does not run in parts (no --commit)"));
        }
        let _lock = lock::RunLock::acquire(&self.run_dir, opts.wait, self.ui)?;
        let mut manifest = Manifest::load(&self.run_dir)?;
        let providers = super::plan::resolve(stages, &manifest, self.catalogue)?;
        let providers = &providers[at];
        let mut detail = self.detail_without_inputs(stage, providers, &manifest)?;
        hash_inputs(stage, &mut detail, &BTreeMap::new())?;
        let Some(reason) = self.stale_reason(stage, &detail, &manifest)? else {
            let record = manifest.stages[name].clone();
            self.ui.status("Fresh", super::describe(name, &record));
            return Ok(StageOutcome {
                stage: name.into(),
                ran_because: None,
                record,
                notes: vec![],
                skipped: 0,
            });
        };
        let stage_dir = self.run_dir.join(name);
        let fingerprint = detail.hash();
        let records: Vec<(PathBuf, PartRecord)> = PartRecord::all(&stage_dir)?
            .into_iter()
            .filter(|(_, r)| r.fingerprint == fingerprint)
            .collect();
        let Some(count) = records.first().map(|(_, r)| r.part.count) else {
            return Err(Error::stage(
                name,
                format!(
                    "no part has run for the current settings and inputs (no record in `{}`): run `simat {name} RUN --shard I/N` for each part first",
                    stage_dir.join(PARTS_DIR).display()
                ),
            ));
        };
        if let Some((p, r)) = records.iter().find(|(_, r)| r.part.count != count) {
            return Err(Error::stage(
                name,
                format!(
                    "parts of {count} and of {} are both recorded (`{}`): run the stage in one number of parts",
                    r.part.count,
                    p.display()
                ),
            ));
        }
        let missing = not_done(&records, &stage_dir, &fingerprint, count)?;
        if let Some(first) = missing.first() {
            let list: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
            return Err(Error::stage(
                name,
                format!(
                    "{} of {count} parts are not done, or their files changed since: {}; run `simat {name} RUN --shard {first}` (and the others) first",
                    missing.len(),
                    list.join(", "),
                ),
            ));
        }
        let outcome = self.run_one(stage, providers, detail, reason, &mut manifest)?;
        let _ = std::fs::remove_dir_all(stage_dir.join(PARTS_DIR));
        Ok(outcome)
    }

    /// The parts of `count` that must still run for stage `name` of `stages`: all of them
    /// unless its upstream is done, and otherwise those without an intact record of the
    /// current fingerprint. Empty when the stage is committed and fresh.
    pub fn parts_to_run(
        &self,
        stages: &[&dyn Stage],
        name: &str,
        count: usize,
    ) -> Result<Vec<Part>> {
        let (stage, at) = find_stage(stages, name)?;
        let all: Vec<Part> = (0..count).map(|index| Part { index, count }).collect();
        let manifest = Manifest::load(&self.run_dir)?;
        let providers = super::plan::resolve(stages, &manifest, self.catalogue)?;
        let detail = match self.detail(stage, &providers[at], &manifest) {
            Ok(d) => d,
            Err(Error::Upstream { .. } | Error::InputMissing { .. }) => return Ok(all),
            Err(e) => return Err(e),
        };
        if self.stale_reason(stage, &detail, &manifest)?.is_none() {
            return Ok(vec![]);
        }
        let stage_dir = self.run_dir.join(name);
        not_done(
            &PartRecord::all(&stage_dir)?,
            &stage_dir,
            &detail.hash(),
            count,
        )
    }
}

/// The parts of `count` that have no intact record of `fingerprint` among `records`.
fn not_done(
    records: &[(PathBuf, PartRecord)],
    stage_dir: &Path,
    fingerprint: &str,
    count: usize,
) -> Result<Vec<Part>> {
    let mut out = Vec::new();
    for index in 0..count {
        let part = Part { index, count };
        let done = match records.iter().find(|(_, r)| r.part == part) {
            Some((_, r)) => r.fingerprint == fingerprint && r.intact(stage_dir)?,
            None => false,
        };
        if !done {
            out.push(part);
        }
    }
    Ok(out)
}

/// The stage called `name` among `stages`, and where.
pub(super) fn find_stage<'s>(
    stages: &[&'s dyn Stage],
    name: &str,
) -> Result<(&'s dyn Stage, usize)> {
    stages
        .iter()
        .position(|s| s.name() == name)
        .map(|at| (stages[at], at))
        .ok_or_else(|| Error::stage(name, "is not a stage of this pipeline"))
}
