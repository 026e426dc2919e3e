//! What a stage is to the engine: the tables it provides and needs, what its fingerprint covers,
//! and its run.
//!
//! Stages never name each other. A stage declares the tables it *provides* (a file or folder in
//! its directory, with a schema) and the tables it *needs*; the planner ([`super::plan`]) finds,
//! for each need, the stage that provides it — in the same pipeline, or already finished in the
//! run directory — and the stage reads it through [`StageContext::input`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ui::Ui;

pub use crate::tables::{TableDecl, TableKind};

/// A table a stage reads.
#[derive(Debug, Clone)]
pub struct Need {
    /// The table.
    pub table: &'static TableDecl,
    /// The stage can run without it.
    pub optional: bool,
    /// The stage that must provide it (an explicit choice of the stage's config).
    pub from: Option<&'static str>,
    /// How a user says which provider, when two could: a flag and key of the stage.
    pub choose: Option<&'static str>,
}

impl Need {
    /// A required table.
    pub fn of(table: &'static TableDecl) -> Need {
        Need {
            table,
            optional: false,
            from: None,
            choose: None,
        }
    }

    /// A table used when present.
    pub fn optional(table: &'static TableDecl) -> Need {
        Need {
            optional: true,
            ..Need::of(table)
        }
    }

    /// Provided by this stage, by the config's explicit choice.
    pub fn from(mut self, stage: Option<&'static str>) -> Need {
        self.from = stage;
        self
    }

    /// How to choose between providers, for the message when two could.
    pub fn choose(mut self, how: &'static str) -> Need {
        self.choose = Some(how);
        self
    }
}

/// One step of a pipeline, as the engine runs it.
pub trait Stage: Sync {
    /// The stage's name: its directory in the run, its manifest key, its pipeline section and
    /// its subcommand.
    fn name(&self) -> &'static str;
    /// Bumped whenever the stage's code changes its outputs.
    fn version(&self) -> u32;
    /// The tables this configuration of the stage writes.
    fn provides(&self) -> Vec<&'static TableDecl>;
    /// The tables it reads.
    fn needs(&self) -> Vec<Need>;
    /// The settings that change its outputs, as JSON with no absolute paths (hashed into the
    /// fingerprint).
    fn fingerprint(&self) -> serde_json::Value;
    /// External source files, as (label, path); their content is hashed into the fingerprint.
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        Ok(vec![])
    }
    /// Whether `run` reads each of its inputs whole and reports the BLAKE3 of the bytes it read in
    /// [`StageReport::input_hashes`]. The engine then skips hashing them first whenever the stage
    /// must run for another reason (first run, forced, interrupted, failed, or its code, config or
    /// upstream changed), so that a large input is read once; such a run is given neither the
    /// input hashes nor a fingerprint that covers them.
    fn hashes_inputs_itself(&self) -> bool {
        false
    }
    /// Providers to prefer when several could meet a need (`--from STAGE`, `from = [...]`).
    fn prefer(&self) -> &[String] {
        &[]
    }
    /// Whether it runs in parts ([`Engine::run_part`](super::Engine::run_part)): given a
    /// [`StageContext::part`], `run` commits that part's chunks and reports their files.
    fn shardable(&self) -> bool {
        false
    }
    /// Whether it runs a model (see `StageDef::RUNS_MODEL`).
    fn runs_model(&self) -> bool {
        false
    }
    /// Run the stage, writing its outputs under `ctx.stage_dir`.
    fn run(&self, ctx: &StageContext) -> Result<StageReport>;
}

/// What a running stage is given.
#[derive(Debug)]
pub struct StageContext<'a> {
    /// The run directory.
    pub run_dir: &'a Path,
    /// This stage's name.
    pub stage: &'static str,
    /// This stage's directory, created before `run`.
    pub stage_dir: PathBuf,
    /// Terminal manners.
    pub ui: &'a Ui,
    /// This run's fingerprint of the stage: a stage that checkpoints its work in chunks records
    /// it beside them, and resumes only from chunks of the same fingerprint.
    pub fingerprint: String,
    /// The BLAKE3 of each input file (by the labels of [`Stage::inputs`]), as the fingerprint
    /// holds them, so that a stage can record them without hashing the files again.
    pub input_hashes: BTreeMap<String, String>,
    /// For each needed table that has a provider: the providing stage.
    pub providers: BTreeMap<&'static str, String>,
    /// The directory of each providing stage (in the run's base for the base's stages).
    pub dirs: BTreeMap<String, PathBuf>,
    /// The tables this stage declared it provides.
    pub provides: Vec<&'static TableDecl>,
    /// The part to run, for a shardable stage run in parts: `run` then commits only that
    /// part's chunks and reports their files (relative to `stage_dir`) as its outputs.
    pub part: Option<crate::io::chunks::Part>,
}

impl StageContext<'_> {
    /// The path of a table this stage needs.
    pub fn input(&self, table: &TableDecl) -> Result<PathBuf> {
        self.maybe(table).ok_or_else(|| {
            Error::Internal(format!(
                "stage `{}` reads `{}`, which it did not declare as a need (or which has no provider)",
                self.stage, table.name
            ))
        })
    }

    /// The path of a table this stage needs, when it has a provider.
    pub fn maybe(&self, table: &TableDecl) -> Option<PathBuf> {
        self.providers.get(table.name).map(|stage| {
            self.dirs
                .get(stage)
                .cloned()
                .unwrap_or_else(|| self.run_dir.join(stage))
                .join(table.file)
        })
    }

    /// The stage that provides a needed table.
    pub fn provider(&self, table: &TableDecl) -> Option<&str> {
        self.providers.get(table.name).map(String::as_str)
    }

    /// Where this stage writes a table it provides.
    pub fn output(&self, table: &TableDecl) -> Result<PathBuf> {
        if !self.provides.iter().any(|t| t.name == table.name) {
            return Err(Error::Internal(format!(
                "stage `{}` writes `{}`, which it did not declare",
                self.stage, table.name
            )));
        }
        Ok(self.stage_dir.join(table.file))
    }

    /// A path inside this stage's directory for a file that is not a table (a crop, a chunk).
    pub fn path(&self, file: &str) -> PathBuf {
        self.stage_dir.join(file)
    }
}

/// The directory of each stage in `providers`, as `manifest` places it (see
/// [`Manifest::stage_dir`](super::Manifest::stage_dir)).
pub fn provider_dirs(
    run_dir: &Path,
    providers: &BTreeMap<&'static str, String>,
    manifest: &super::Manifest,
) -> BTreeMap<String, PathBuf> {
    providers
        .values()
        .map(|s| (s.clone(), manifest.stage_dir(run_dir, s)))
        .collect()
}

/// What a stage reports when it finishes.
#[derive(Debug, Default, Clone)]
pub struct StageReport {
    /// The files written, relative to the stage directory, with row counts for tables.
    pub outputs: Vec<(String, Option<u64>)>,
    /// Named counts: items read, kept, skipped and why.
    pub counters: BTreeMap<String, u64>,
    /// Items skipped because they were bad (counted in `counters` too); nonzero makes the
    /// process exit with 1.
    pub skipped: u64,
    /// One line per kind of skipped item, with an example id, for the user.
    pub notes: Vec<String>,
    /// BLAKE3 (hex) of the inputs the stage read, by the labels of [`Stage::inputs`], from a
    /// stage that [hashes its inputs itself](Stage::hashes_inputs_itself).
    pub input_hashes: BTreeMap<String, String>,
}

impl StageReport {
    /// The report of a part ([`StageContext::part`]): the chunk files it committed, relative to
    /// the stage directory, and how many of them it found committed already.
    pub fn of_part(files: Vec<String>, resumed: u64) -> StageReport {
        let mut report = StageReport::default();
        report.outputs.extend(files.into_iter().map(|f| (f, None)));
        report.count("chunks_resumed", resumed);
        report
    }

    /// Add `n` to a counter.
    pub fn count(&mut self, key: &str, n: u64) {
        *self.counters.entry(key.to_string()).or_default() += n;
    }

    /// Record a written table with its row count.
    pub fn table(&mut self, table: &TableDecl, rows: Option<u64>) {
        self.outputs.push((table.file.to_string(), rows));
    }

    /// Record a folder of files written beside the tables (crop PNGs, rendered images): the
    /// manifest keeps a digest of every file in it, so that damage makes the stage stale.
    pub fn folder(&mut self, rel: &str) {
        // The trailing `/` is what marks a folder in the manifest (`is_folder_output`).
        self.outputs
            .push((format!("{}/", rel.trim_end_matches('/')), None));
    }
}
