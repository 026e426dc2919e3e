//! The stage framework: a stage's one declaration ([`StageDef`]) and the registry's handle on
//! it ([`Registered`], seen as an object-safe [`Entry`]). The list of stages is
//! `crate::stages::ALL`; everything else — the subcommands, the pipeline sections, the order of
//! `simat status`, the schema documents, the summary lines — is derived from it.
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use clap::{Args, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Need, Stage, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};

/// A stage's one declaration: what it is called, what it writes and reads, its settings, and
/// its run. The engine sees it through [`Stage`], which the registry implements for it.
pub trait StageDef: Sized + Send + Sync + 'static {
    /// Its name: its directory in a run, its manifest key, its pipeline section, its subcommand.
    const NAME: &'static str;
    /// Bumped whenever its code changes its outputs.
    const VERSION: u32;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// Other names of its subcommand.
    const ALIASES: &'static [&'static str] = &[];
    /// Every table it can provide.
    const PROVIDES: &'static [&'static TableDecl];
    /// Keys of its pipeline section that have no flag (tables of values), with why in their docs.
    const TOML_ONLY: &'static [&'static str] = &[];
    /// Whether it runs in parts (`--shard I/N`, then `--commit`): its `run`, given
    /// [`StageContext::part`], commits that part's chunks only.
    const SHARDABLE: bool = false;
    /// Whether it runs a model (an accelerator's work: the Slurm executor gives its tasks the
    /// GPUs it asks for, and the other stages none).
    const RUNS_MODEL: bool = false;
    /// Its settings: flags, pipeline keys, fingerprint.
    type Config: clap::Args
        + clap::FromArgMatches
        + Serialize
        + DeserializeOwned
        + Default
        + Clone
        + PartialEq
        + std::fmt::Debug
        + Send
        + 'static;
    /// Make the config's relative paths relative to `base` (a pipeline file's folder).
    fn resolve_paths(_config: &mut Self::Config, _base: &Path) {}
    /// Check the config and make the stage; a bad value is an [`Error::BadValue`].
    fn build(config: Self::Config) -> Result<Self>;
    /// Lines printed after a run in which the stage ran, from its outputs in `run_dir`.
    fn summary(_run_dir: &Path) -> Result<Option<String>> {
        Ok(None)
    }
    /// The tables this configuration writes (by default all of [`Self::PROVIDES`]).
    fn provides(&self) -> Vec<&'static TableDecl> {
        Self::PROVIDES.to_vec()
    }
    /// The tables it reads.
    fn needs(&self) -> Vec<Need>;
    /// The settings that change its outputs, as JSON without absolute paths.
    fn fingerprint(&self) -> serde_json::Value;
    /// External source files, as (label, path), hashed into the fingerprint.
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        Ok(vec![])
    }
    /// Whether `run` reads every input whole and reports its BLAKE3 (see
    /// [`Stage::hashes_inputs_itself`]).
    fn hashes_inputs_itself(&self) -> bool {
        false
    }
    /// Run it, writing its outputs under `ctx.stage_dir`.
    fn run(&self, ctx: &StageContext) -> Result<StageReport>;
}

/// An [`Error::BadValue`] for `key` of stage `S`.
pub fn bad<S: StageDef>(key: &str, message: impl Into<String>) -> Error {
    Error::BadValue {
        stage: S::NAME.to_string(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// What a path named by a stage's config must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A file.
    File,
    /// A folder.
    Folder,
}

/// The checks of one stage's config in [`StageDef::build`], collected so that every bad value
/// is reported at once, each naming its `[section] key (--flag)`.
#[derive(Debug)]
pub struct Checks<S> {
    problems: Vec<Error>,
    stage: PhantomData<fn() -> S>,
}

impl<S: StageDef> Default for Checks<S> {
    fn default() -> Self {
        Checks {
            problems: vec![],
            stage: PhantomData,
        }
    }
}

impl<S: StageDef> Checks<S> {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `key` has a bad value.
    pub fn bad(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(bad::<S>(key, message));
    }

    /// `key` is bad when `result` is an error (its message says why).
    pub fn check(&mut self, key: &str, result: std::result::Result<(), String>) {
        if let Err(m) = result {
            self.bad(key, m);
        }
    }

    /// An error from a deeper check of `key`'s value, kept whole when it already names a key.
    pub fn error(&mut self, key: &str, e: Error) {
        match e {
            Error::BadValue { .. } => self.problems.push(e),
            Error::BadValues(v) => self.problems.extend(v),
            e => self.bad(key, e.to_string()),
        }
    }

    /// The path that `key` names must exist and be a `kind`; returns whether it is.
    pub fn path(&mut self, key: &str, path: &Path, kind: PathKind) -> bool {
        let what = match kind {
            PathKind::File => "a file",
            PathKind::Folder => "a folder",
        };
        let problem = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("`{}` does not exist (expected {what})", path.display())
            }
            Err(e) => format!("`{}` cannot be read: {e}", path.display()),
            Ok(m) if kind == PathKind::File && !m.is_file() => {
                format!("`{}` is a folder, not a file", path.display())
            }
            Ok(m) if kind == PathKind::Folder && !m.is_dir() => {
                format!("`{}` is a file, not a folder", path.display())
            }
            Ok(_) => return true,
        };
        self.bad(key, problem);
        false
    }

    /// The stage, when nothing was bad; else every problem.
    pub fn finish(self, stage: S) -> Result<S> {
        match self.problems.len() {
            0 => Ok(stage),
            1 => Err(self.problems.into_iter().next().expect("one problem")),
            _ => Err(Error::BadValues(self.problems)),
        }
    }
}

/// A built stage with the providers its user prefers (`--from`).
struct Configured<S> {
    stage: S,
    from: Vec<String>,
}

impl<S: StageDef> Stage for Configured<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn provides(&self) -> Vec<&'static TableDecl> {
        self.stage.provides()
    }
    fn needs(&self) -> Vec<Need> {
        self.stage.needs()
    }
    fn fingerprint(&self) -> serde_json::Value {
        self.stage.fingerprint()
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        self.stage.inputs()
    }
    fn hashes_inputs_itself(&self) -> bool {
        self.stage.hashes_inputs_itself()
    }
    fn prefer(&self) -> &[String] {
        &self.from
    }
    fn shardable(&self) -> bool {
        S::SHARDABLE
    }
    fn runs_model(&self) -> bool {
        S::RUNS_MODEL
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        self.stage.run(ctx)
    }
}

/// The keys every pipeline section and every stage subcommand has, besides the config's.
pub const COMMON_KEYS: &[&str] = &["from"];

/// A stage as the registry holds it (object-safe).
pub trait Entry: Sync {
    /// Its name.
    fn name(&self) -> &'static str;
    /// Other names of its subcommand.
    fn aliases(&self) -> &'static [&'static str];
    /// Every table it can provide.
    fn provides(&self) -> &'static [&'static TableDecl];
    /// Pipeline keys without a flag.
    fn toml_only(&self) -> &'static [&'static str];
    /// Whether it runs in parts ([`StageDef::SHARDABLE`]).
    fn shardable(&self) -> bool;
    /// Its subcommand: the config's flags and `--run`, `--force`, `--from` (and `--shard`,
    /// `--commit` when it runs in parts).
    fn command(&self) -> clap::Command;
    /// Build it from its subcommand's matches.
    fn build_from_matches(&self, m: &clap::ArgMatches) -> Result<Box<dyn Stage>>;
    /// Build it from its pipeline section, paths relative to `base`.
    fn build_from_toml(&self, section: &toml::Table, base: &Path) -> Result<Box<dyn Stage>>;
    /// Its defaults as a pipeline section.
    fn default_toml(&self) -> Result<toml::Table>;
    /// Its summary lines after a run.
    fn summary(&self, run_dir: &Path) -> Result<Option<String>>;
    /// The keys of its pipeline section (the config's fields, `from` aside).
    fn keys(&self) -> Vec<&'static str>;
    /// Whether its default config survives TOML: written, read back, equal.
    fn round_trips(&self) -> std::result::Result<(), String>;
}

/// The field names of a config, as serde deserialises it.
fn field_names<T: DeserializeOwned>() -> Vec<&'static str> {
    use serde::de::{Error as _, Visitor};
    struct Capture(Vec<&'static str>);
    impl<'de> serde::Deserializer<'de> for &mut Capture {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(
            self,
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            self.0 = fields.to_vec();
            Err(Self::Error::custom("captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut c = Capture(vec![]);
    let _ = T::deserialize(&mut c);
    c.0
}

/// The registry's handle on a [`StageDef`].
pub struct Registered<S>(PhantomData<fn() -> S>);

impl<S> Registered<S> {
    /// The handle.
    pub const fn new() -> Self {
        Registered(PhantomData)
    }
}

impl<S> Default for Registered<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: StageDef> Entry for Registered<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn aliases(&self) -> &'static [&'static str] {
        S::ALIASES
    }
    fn provides(&self) -> &'static [&'static TableDecl] {
        S::PROVIDES
    }
    fn toml_only(&self) -> &'static [&'static str] {
        S::TOML_ONLY
    }
    fn shardable(&self) -> bool {
        S::SHARDABLE
    }
    fn command(&self) -> clap::Command {
        // The run directory as `--run RUN` or as the first positional argument; added before
        // the config's own positionals (report's compared runs) so that it comes first.
        let cmd = clap::Command::new(S::NAME)
            .visible_aliases(S::ALIASES.iter().copied())
            .arg(
                clap::Arg::new("run_dir")
                    .value_name("RUN")
                    .conflicts_with("run")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("The run directory (or --run RUN)"),
            );
        let cmd = S::Config::augment_args(cmd)
            .about(S::ABOUT)
            .long_about(None)
            .arg(
                clap::Arg::new("run")
                    .long("run")
                    .value_name("RUN")
                    .required_unless_present("run_dir")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("The run directory"),
            )
            .arg(
                clap::Arg::new("force")
                    .long("force")
                    .action(clap::ArgAction::SetTrue)
                    .help("Rerun even if fresh"),
            )
            .arg(
                clap::Arg::new("from")
                    .long("from")
                    .value_name("STAGE")
                    .action(clap::ArgAction::Append)
                    .help("Read a table from this stage when two could provide it"),
            );
        if !S::SHARDABLE {
            return cmd;
        }
        cmd.arg(
            clap::Arg::new("shard")
                .long("shard")
                .value_name("I/N")
                .conflicts_with_all(["commit", "force"])
                .value_parser(clap::value_parser!(crate::io::chunks::Part))
                .help("Run part I (from 0) of N: commit its chunks under STAGE/chunks and its record under STAGE/parts, and nothing else; parts run at once, then --commit"),
        )
        .arg(
            clap::Arg::new("commit")
                .long("commit")
                .action(clap::ArgAction::SetTrue)
                .help("Once every part of a run in parts is done: check them and assemble the stage's tables, as a run in one go writes them"),
        )
    }
    fn build_from_matches(&self, m: &clap::ArgMatches) -> Result<Box<dyn Stage>> {
        let config = S::Config::from_arg_matches(m).map_err(|e| Error::BadValue {
            stage: S::NAME.into(),
            key: "?".into(),
            message: e.to_string(),
        })?;
        let from = m
            .get_many::<String>("from")
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        Ok(Box::new(Configured {
            stage: S::build(config)?,
            from,
        }))
    }
    fn build_from_toml(&self, section: &toml::Table, base: &Path) -> Result<Box<dyn Stage>> {
        let mut section = section.clone();
        let from = match section.remove("from") {
            None => vec![],
            Some(toml::Value::String(s)) => vec![s],
            Some(toml::Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    _ => Err(bad::<S>("from", "expected stage names")),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad::<S>("from", "expected a stage name or a list of them")),
        };
        let mut config: S::Config =
            toml::Value::Table(section)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let message = e.message().to_string();
                    let key = message.split('`').nth(1).unwrap_or("?").to_string();
                    Error::BadValue {
                        stage: S::NAME.into(),
                        key,
                        message,
                    }
                })?;
        S::resolve_paths(&mut config, base);
        Ok(Box::new(Configured {
            stage: S::build(config)?,
            from,
        }))
    }
    fn default_toml(&self) -> Result<toml::Table> {
        toml::Table::try_from(S::Config::default()).map_err(|e| Error::Internal(e.to_string()))
    }
    fn summary(&self, run_dir: &Path) -> Result<Option<String>> {
        S::summary(run_dir)
    }
    fn keys(&self) -> Vec<&'static str> {
        field_names::<S::Config>()
    }
    fn round_trips(&self) -> std::result::Result<(), String> {
        let default = S::Config::default();
        let text = toml::to_string(&default).map_err(|e| e.to_string())?;
        let back: S::Config = toml::from_str(&text).map_err(|e| format!("{e}\n{text}"))?;
        if back == default {
            Ok(())
        } else {
            Err(format!("{default:?} became {back:?} through\n{text}"))
        }
    }
}
