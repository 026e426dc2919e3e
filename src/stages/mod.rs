//! The stages, one file each, and [`ALL`]: the one list of them.
//!
//! A stage declares itself once ([`StageDef`]): its name (its directory in a run, its manifest
//! key, its pipeline section and its subcommand), the tables it provides, and one config struct
//! that is at once its command-line flags (clap), its pipeline section (serde) and, through the
//! stage, its fingerprinted settings. Defaults live in the clap attributes (the config's
//! `Default` is clap parsing no arguments); validation lives in [`StageDef::build`], which the
//! command line and pipelines both go through before anything runs. Everything else — the
//! subcommands, the pipeline sections, the order of `simat status`, the schema documents, the
//! summary lines — is derived from [`ALL`].
//!
//! Adding a stage: one file here, one line in [`ALL`] (and `mod`), and its test module.

pub mod crops;
pub mod embed;
pub mod import;
pub mod import_embeddings;
pub mod ingest;
pub mod oracle;
pub mod queries;
pub mod retrieve;
pub mod score;
pub mod select;
pub mod synth;
pub mod triplets;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use clap::{Args, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::{Need, Stage, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};

/// A stage's one declaration.
pub trait StageDef: Stage + Sized + 'static {
    /// Its name.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// Other names of its subcommand.
    const ALIASES: &'static [&'static str] = &[];
    /// Every table it can provide.
    const PROVIDES: &'static [&'static TableDecl];
    /// Keys of its pipeline section that have no flag (tables of values), with why in their docs.
    const TOML_ONLY: &'static [&'static str] = &[];
    /// Its settings: flags, pipeline keys, fingerprint.
    type Config: clap::Args
        + clap::FromArgMatches
        + Serialize
        + DeserializeOwned
        + Default
        + Clone
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
}

/// The config that clap parses from no arguments: the defaults, written once in the clap
/// attributes.
pub fn clap_default<C: clap::Args + clap::FromArgMatches>() -> C {
    let cmd = C::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let m = cmd
        .try_get_matches_from(Vec::<String>::new())
        .expect("a stage config parses from no arguments");
    C::from_arg_matches(&m).expect("a stage config parses from no arguments")
}

/// An [`Error::BadValue`] for `key` of stage `S`.
pub fn bad<S: StageDef>(key: &str, message: impl Into<String>) -> Error {
    Error::BadValue {
        stage: S::NAME.to_string(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// A relative path made relative to `base`.
pub fn resolve(p: &mut PathBuf, base: &Path) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// A built stage with the providers its user prefers (`--from`).
struct Configured<S> {
    stage: S,
    from: Vec<String>,
}

impl<S: Stage> Stage for Configured<S> {
    fn name(&self) -> &'static str {
        self.stage.name()
    }
    fn version(&self) -> u32 {
        self.stage.version()
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
    fn prefer(&self) -> &[String] {
        &self.from
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
    /// Its subcommand: the config's flags and `--run`, `--force`, `--from`.
    fn command(&self) -> clap::Command;
    /// Build it from its subcommand's matches.
    fn build_from_matches(&self, m: &clap::ArgMatches) -> Result<Box<dyn Stage>>;
    /// Build it from its pipeline section, paths relative to `base`.
    fn build_from_toml(&self, section: &toml::Table, base: &Path) -> Result<Box<dyn Stage>>;
    /// Its defaults as a pipeline section.
    fn default_toml(&self) -> Result<toml::Table>;
    /// Its summary lines after a run.
    fn summary(&self, run_dir: &Path) -> Result<Option<String>>;
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
    fn command(&self) -> clap::Command {
        let cmd = clap::Command::new(S::NAME).visible_aliases(S::ALIASES.iter().copied());
        S::Config::augment_args(cmd)
            .about(S::ABOUT)
            .long_about(None)
            .arg(
                clap::Arg::new("run")
                    .long("run")
                    .value_name("RUN")
                    .required(true)
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
}

/// Every stage, in pipeline order: the table of contents of simat's stages.
pub static ALL: &[&dyn Entry] = &[
    &Registered::<synth::Synth>::new(),
    &Registered::<import::Import>::new(),
    &Registered::<ingest::Ingest>::new(),
    &Registered::<triplets::Triplets>::new(),
    &Registered::<crops::Crops>::new(),
    &Registered::<oracle::Oracle>::new(),
    &Registered::<select::Select>::new(),
    &Registered::<queries::QueriesStage>::new(),
    &Registered::<import_embeddings::ImportEmbeddings>::new(),
    &Registered::<embed::Embed>::new(),
    &Registered::<retrieve::Retrieve>::new(),
    &Registered::<score::Score>::new(),
];

/// The registered stage called `name` (or by one of its aliases).
pub fn find(name: &str) -> Option<&'static dyn Entry> {
    ALL.iter()
        .copied()
        .find(|e| e.name() == name || e.aliases().contains(&name))
}

/// The stages that can provide the table `name`.
pub fn providers_of(table: &str) -> Vec<&'static str> {
    ALL.iter()
        .filter(|e| e.provides().iter().any(|t| t.name == table))
        .map(|e| e.name())
        .collect()
}
