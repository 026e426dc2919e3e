//! The run engine: stages, freshness, crash safety.
//!
//! A run directory holds one folder per stage and `manifest.json`. Running a list of stages
//! walks them in order; for each one it computes a [`FingerprintDetail`], compares it with the
//! manifest, checks the recorded outputs, and either reports the stage `Fresh` or runs it:
//!
//! 1. the manifest entry is set to `running` with no fingerprint (so an interrupted stage never
//!    looks fresh), and leftover temporary files are removed;
//! 2. the stage writes each output under a temporary name and renames it into place;
//! 3. only after the stage returns are the outputs hashed and the entry written as `done`,
//!    manifest last, atomically.
//!
//! `--force STAGE` reruns that stage and every later stage that depends on it.

pub mod fingerprint;
pub mod lock;
pub mod manifest;
pub mod outputs;
pub mod parts;
pub mod plan;
pub mod registry;
pub mod stage;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::ui::Ui;
pub use fingerprint::{FingerprintDetail, StaleReason};
pub use manifest::{Manifest, OutputRecord, StageRecord, StageStatus};
pub use parts::{PartOutcome, PartRecord};
pub use plan::Catalogue;
pub use registry::{bad, Checks, Entry, PathKind, Registered, StageDef, COMMON_KEYS};
pub use stage::{Need, Stage, StageContext, StageReport, TableDecl, TableKind};

/// How to run a list of stages.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Stages to rerun even when fresh (their dependents rerun too).
    pub force: BTreeSet<String>,
    /// Stop after this stage.
    pub until: Option<String>,
    /// When another process holds the run directory, wait for it instead of failing.
    pub wait: bool,
    /// Run this stage alone (its needs resolved among all the stages given, as a run of the
    /// whole pipeline resolves them); an executor's task for one stage.
    pub only: Option<String>,
    /// Stages outside this list (a sweep's trunk) that ran because they were forced: the
    /// stages here that they provide for rerun too.
    pub forced_upstream: BTreeSet<String>,
}

/// The outcome of one stage in a run.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    /// Stage name.
    pub stage: String,
    /// `None` when fresh; why it ran otherwise.
    pub ran_because: Option<StaleReason>,
    /// The stage's manifest record after the run.
    pub record: StageRecord,
    /// Notes about skipped items.
    pub notes: Vec<String>,
    /// Skipped item count.
    pub skipped: u64,
}

/// Freshness of a stage without running it.
#[derive(Debug, Clone)]
pub enum Freshness {
    /// Fingerprint matches and outputs are intact.
    Fresh,
    /// Must run, and why.
    Stale(StaleReason),
    /// An upstream stage has no finished outputs.
    Blocked(String),
}

/// Runs stages against a run directory.
#[derive(Debug)]
pub struct Engine<'a> {
    run_dir: PathBuf,
    ui: &'a Ui,
    catalogue: Catalogue,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn no_catalogue(_: &str) -> Vec<&'static str> {
    vec![]
}

impl<'a> Engine<'a> {
    /// An engine over `run_dir` (created when missing).
    pub fn new(run_dir: impl Into<PathBuf>, ui: &'a Ui) -> Result<Self> {
        let run_dir = run_dir.into();
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| Error::io("failed to create run directory", &run_dir, e))?;
        Ok(Engine {
            run_dir,
            ui,
            catalogue: no_catalogue,
        })
    }

    /// Name, in messages about a missing table, the stages that can provide it.
    pub fn with_catalogue(mut self, catalogue: Catalogue) -> Self {
        self.catalogue = catalogue;
        self
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn detail(
        &self,
        stage: &dyn Stage,
        providers: &BTreeMap<&'static str, String>,
        manifest: &Manifest,
    ) -> Result<FingerprintDetail> {
        let mut detail = self.detail_without_inputs(stage, providers, manifest)?;
        hash_inputs(stage, &mut detail, &BTreeMap::new())?;
        Ok(detail)
    }

    /// [`Self::detail`] with no input hashed yet (though every required input must exist).
    fn detail_without_inputs(
        &self,
        stage: &dyn Stage,
        providers: &BTreeMap<&'static str, String>,
        manifest: &Manifest,
    ) -> Result<FingerprintDetail> {
        let mut upstream = BTreeMap::new();
        for up in providers.values() {
            match manifest.record(up) {
                Some(rec) if rec.status == StageStatus::Done => {
                    upstream.insert(up.to_string(), rec.output_digest());
                }
                _ => {
                    return Err(Error::Upstream {
                        stage: stage.name().to_string(),
                        message: format!(
                            "needs the outputs of `{up}`, which has not finished in `{}`; run `simat {up}` (or `simat run PIPELINE`) first",
                            self.run_dir.display()
                        ),
                    })
                }
            }
        }
        stage.inputs()?;
        Ok(FingerprintDetail {
            engine_version: crate::ENGINE_VERSION.to_string(),
            stage_version: stage.version(),
            config: stage.fingerprint(),
            inputs: BTreeMap::new(),
            upstream,
        })
    }

    /// Why `stage` must run given the manifest, or `None` when fresh.
    fn stale_reason(
        &self,
        stage: &dyn Stage,
        detail: &FingerprintDetail,
        manifest: &Manifest,
    ) -> Result<Option<StaleReason>> {
        let rec = match done_record(stage.name(), manifest) {
            Ok(rec) => rec,
            Err(reason) => return Ok(Some(reason)),
        };
        if let Some(old) = &rec.detail {
            if let Some(reason) = detail.first_difference(old) {
                return Ok(Some(reason));
            }
        }
        if rec.fingerprint.as_deref() != Some(detail.hash().as_str()) {
            return Ok(Some(StaleReason::FirstRun));
        }
        self.check_outputs(stage.name(), rec)
    }

    fn check_outputs(&self, stage: &str, rec: &StageRecord) -> Result<Option<StaleReason>> {
        let dir = self.run_dir.join(stage);
        for out in &rec.outputs {
            if !out.is_present_in(&dir) {
                return Ok(Some(StaleReason::OutputMissing {
                    file: out.file.clone(),
                }));
            }
            let (bytes, digest) = fingerprint::hash_output(&dir.join(&out.file), out.is_folder())?;
            if bytes != out.bytes || digest != out.blake3 {
                return Ok(Some(StaleReason::OutputChanged {
                    file: out.file.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// Which stage provides each need of each of `stages`; an error before anything runs.
    pub fn resolve(&self, stages: &[&dyn Stage]) -> Result<plan::Providers> {
        let manifest = Manifest::load(&self.run_dir)?;
        plan::resolve(stages, &manifest, self.catalogue)
    }

    /// Freshness of each stage, without running anything.
    pub fn plan(&self, stages: &[&dyn Stage]) -> Result<Vec<(String, Freshness)>> {
        let manifest = Manifest::load(&self.run_dir)?;
        let providers = match plan::resolve(stages, &manifest, self.catalogue) {
            Ok(p) => p,
            Err(Error::Upstream { stage, message }) => {
                return Ok(stages
                    .iter()
                    .map(|s| {
                        let f = if s.name() == stage {
                            Freshness::Blocked(message.clone())
                        } else {
                            Freshness::Blocked(format!(
                                "the pipeline cannot run: {stage}: {message}"
                            ))
                        };
                        (s.name().to_string(), f)
                    })
                    .collect())
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut stale_so_far: BTreeSet<&str> = BTreeSet::new();
        for (stage, providers) in stages.iter().zip(&providers) {
            if let Some(up) = providers
                .values()
                .find(|u| stale_so_far.contains(u.as_str()))
            {
                out.push((
                    stage.name().to_string(),
                    Freshness::Stale(StaleReason::UpstreamRerun { stage: up.clone() }),
                ));
                stale_so_far.insert(stage.name());
                continue;
            }
            let freshness = match self.detail(*stage, providers, &manifest) {
                Err(Error::Upstream { message, .. } | Error::Stage { message, .. }) => {
                    Freshness::Blocked(message)
                }
                Err(e @ Error::InputMissing { .. }) => Freshness::Blocked(e.to_string()),
                Err(e) => return Err(e),
                Ok(detail) => match self.stale_reason(*stage, &detail, &manifest)? {
                    None => Freshness::Fresh,
                    Some(r) => Freshness::Stale(r),
                },
            };
            if !matches!(freshness, Freshness::Fresh) {
                stale_so_far.insert(stage.name());
            }
            out.push((stage.name().to_string(), freshness));
        }
        Ok(out)
    }

    /// Run `stages` in order, skipping the fresh ones. Every need is resolved first.
    pub fn run(&self, stages: &[&dyn Stage], opts: &RunOptions) -> Result<Vec<StageOutcome>> {
        if let Some(until) = &opts.until {
            if !stages.iter().any(|s| s.name() == until) {
                return Err(Error::stage(
                    until,
                    "`--until` names a stage that is not in this pipeline",
                ));
            }
        }
        if let Some(only) = &opts.only {
            parts::find_stage(stages, only)?;
        }
        for f in &opts.force {
            if !stages.iter().any(|s| s.name() == f) {
                return Err(Error::stage(
                    f,
                    "`--force` names a stage that is not in this pipeline",
                ));
            }
        }
        let _lock = lock::RunLock::acquire(&self.run_dir, opts.wait, self.ui)?;
        let mut manifest = Manifest::load(&self.run_dir)?;
        let providers = plan::resolve(stages, &manifest, self.catalogue)?;
        let mut forced: BTreeSet<&str> = opts
            .force
            .iter()
            .chain(&opts.forced_upstream)
            .map(String::as_str)
            .collect();
        let mut outcomes = Vec::new();
        for (stage, providers) in stages.iter().zip(&providers) {
            let name = stage.name();
            if providers.values().any(|u| forced.contains(u.as_str())) {
                forced.insert(name);
            }
            if opts.only.as_deref().is_some_and(|only| only != name) {
                continue;
            }
            // A stage that hashes its inputs as it reads them is hashed first only when its
            // inputs alone can decide whether it is fresh.
            let mut detail = self.detail_without_inputs(*stage, providers, &manifest)?;
            let known = if forced.contains(name) {
                Some(StaleReason::Forced)
            } else if stage.hashes_inputs_itself() {
                reason_without_inputs(name, &detail, &manifest)
            } else {
                None
            };
            if known.is_none() || !stage.hashes_inputs_itself() {
                hash_inputs(*stage, &mut detail, &BTreeMap::new())?;
            }
            let reason = match known {
                Some(reason) => Some(reason),
                None => self.stale_reason(*stage, &detail, &manifest)?,
            };
            let outcome = match reason {
                None => {
                    let record = manifest.stages[name].clone();
                    self.ui.status("Fresh", describe(name, &record));
                    StageOutcome {
                        stage: name.into(),
                        ran_because: None,
                        record,
                        notes: vec![],
                        skipped: 0,
                    }
                }
                Some(reason) => self.run_one(*stage, providers, detail, reason, &mut manifest)?,
            };
            outcomes.push(outcome);
            if opts.until.as_deref() == Some(name) {
                break;
            }
        }
        Ok(outcomes)
    }

    fn run_one(
        &self,
        stage: &dyn Stage,
        providers: &BTreeMap<&'static str, String>,
        mut detail: FingerprintDetail,
        reason: StaleReason,
        manifest: &mut Manifest,
    ) -> Result<StageOutcome> {
        let name = stage.name();
        if self.ui.verbose && reason != StaleReason::FirstRun {
            self.ui.status("Stale", format!("{name}: {reason}"));
        }
        self.ui.status("Running", name);
        let stage_dir = self.run_dir.join(name);
        std::fs::create_dir_all(&stage_dir)
            .map_err(|e| Error::io("failed to create directory", &stage_dir, e))?;
        crate::io::atomic::clean_temps(&stage_dir)?;
        let started_unix = now_unix();
        let provides = stage.provides();
        // Invalidate before the work: an interrupted stage must never look fresh.
        manifest.stages.insert(
            name.to_string(),
            StageRecord {
                status: StageStatus::Running,
                fingerprint: None,
                detail: None,
                outputs: vec![],
                started_unix,
                wall_s: 0.0,
                counters: BTreeMap::new(),
                error: None,
                provides: vec![],
            },
        );
        manifest.save(&self.run_dir)?;
        let start = Instant::now();
        let ctx = StageContext {
            run_dir: &self.run_dir,
            stage: name,
            stage_dir: stage_dir.clone(),
            ui: self.ui,
            fingerprint: detail.hash(),
            input_hashes: detail.inputs.clone(),
            dirs: stage::provider_dirs(&self.run_dir, providers, manifest),
            providers: providers.clone(),
            provides: provides.clone(),
            part: None,
        };
        let result = stage.run(&ctx);
        let wall_s = start.elapsed().as_secs_f64();
        let report = match result {
            Ok(report) => report,
            Err(err) => {
                let _ = crate::io::atomic::clean_temps(&stage_dir);
                let rec = manifest.stages.get_mut(name).expect("inserted above");
                rec.status = StageStatus::Failed;
                rec.wall_s = wall_s;
                rec.error = Some(err.to_string());
                manifest.save(&self.run_dir)?;
                return Err(err);
            }
        };
        if let Err(err) = outputs::check(name, &stage_dir, &provides, &report) {
            let rec = manifest.stages.get_mut(name).expect("inserted above");
            rec.status = StageStatus::Failed;
            rec.wall_s = wall_s;
            rec.error = Some(err.to_string());
            manifest.save(&self.run_dir)?;
            return Err(err);
        }
        if detail.inputs.is_empty() {
            // Hashed by the stage as it read them, when it hashes its inputs itself.
            hash_inputs(stage, &mut detail, &report.input_hashes)?;
        }
        let mut outputs = Vec::new();
        for (file, rows) in &report.outputs {
            let path = stage_dir.join(file);
            let (bytes, blake3) =
                fingerprint::hash_output(&path, manifest::is_folder_output(file))?;
            outputs.push(OutputRecord {
                file: file.clone(),
                rows: *rows,
                bytes,
                blake3,
            });
        }
        let record = StageRecord {
            status: StageStatus::Done,
            fingerprint: Some(detail.hash()),
            detail: Some(detail),
            outputs,
            started_unix,
            wall_s,
            counters: report.counters.clone(),
            error: None,
            provides: provides.iter().map(|t| t.name.to_string()).collect(),
        };
        manifest.stages.insert(name.to_string(), record.clone());
        manifest.save(&self.run_dir)?;
        self.ui.status("Finished", describe(name, &record));
        for note in &report.notes {
            self.ui.warn(format!("{name}: {note}"));
        }
        Ok(StageOutcome {
            stage: name.into(),
            ran_because: Some(reason),
            record,
            notes: report.notes,
            skipped: report.skipped,
        })
    }
}

/// The stage's record when it finished, or why it must run whatever its fingerprint (never run,
/// interrupted, failed).
fn done_record<'m>(
    name: &str,
    manifest: &'m Manifest,
) -> std::result::Result<&'m StageRecord, StaleReason> {
    let Some(rec) = manifest.stages.get(name) else {
        return Err(StaleReason::FirstRun);
    };
    match rec.status {
        StageStatus::Running => Err(StaleReason::Interrupted),
        StageStatus::Failed => Err(StaleReason::Failed {
            error: rec.error.clone().unwrap_or_default(),
        }),
        StageStatus::Done => Ok(rec),
    }
}

/// Why a stage must run whatever its inputs hold (`detail` has none hashed), or `None` when only
/// its inputs can tell.
fn reason_without_inputs(
    name: &str,
    detail: &FingerprintDetail,
    manifest: &Manifest,
) -> Option<StaleReason> {
    let rec = match done_record(name, manifest) {
        Ok(rec) => rec,
        Err(reason) => return Some(reason),
    };
    let Some(old) = &rec.detail else {
        return Some(StaleReason::FirstRun);
    };
    // The recorded inputs stand in for the unhashed ones, so that only the rest is compared.
    let probe = FingerprintDetail {
        inputs: old.inputs.clone(),
        ..detail.clone()
    };
    probe.first_difference(old)
}

/// Put each input's BLAKE3 into `detail`: the one in `known` (the stage's own, from reading it),
/// or else hashed here.
fn hash_inputs(
    stage: &dyn Stage,
    detail: &mut FingerprintDetail,
    known: &BTreeMap<String, String>,
) -> Result<()> {
    for (label, path) in stage.inputs()? {
        let hash = match known.get(&label) {
            Some(h) => h.clone(),
            None => fingerprint::hash_file(&path)?,
        };
        detail.inputs.insert(label, hash);
    }
    Ok(())
}

/// `ingest (4 files, 1,234,567 rows) in 1.23s`
pub fn describe(name: &str, rec: &StageRecord) -> String {
    let rows = rec
        .total_rows()
        .map(|r| format!(", {} rows", thousands(r)))
        .unwrap_or_default();
    format!(
        "{name} ({} files{rows}) in {:.2}s",
        rec.outputs.len(),
        rec.wall_s
    )
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
