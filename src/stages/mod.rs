//! The stages, one file each, and [`ALL`]: the one list of them.
//!
//! A stage declares itself once ([`StageDef`](crate::engine::StageDef)): its name (its directory in a run, its manifest
//! key, its pipeline section and its subcommand), the tables it provides, and one config struct
//! that is at once its command-line flags (clap), its pipeline section (serde) and, through the
//! stage, its fingerprinted settings. Defaults live in the clap attributes (the config's
//! `Default` is clap parsing no arguments); validation lives in [`StageDef::build`](crate::engine::StageDef::build), which the
//! command line and pipelines both go through before anything runs. Everything else — the
//! subcommands, the pipeline sections, the order of `simat status`, the schema documents, the
//! summary lines — is derived from [`ALL`].
//!
//! Adding a stage: one file here, one line in [`ALL`] (and `mod`), and its test module.

pub mod adapt;
pub mod coco;
pub mod crops;
pub mod embed;
pub mod import;
pub mod import_embeddings;
pub mod ingest;
pub mod oracle;
pub mod queries;
pub mod report;
pub mod retrieve;
pub mod score;
pub mod select;
pub mod synth;
pub mod triplets;

use crate::engine::{Entry, Registered};

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
    &Registered::<coco::Coco>::new(),
    &Registered::<adapt::Adapt>::new(),
    &Registered::<retrieve::Retrieve>::new(),
    &Registered::<score::Score>::new(),
    &Registered::<report::ReportStage>::new(),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use std::path::Path;

    use serde::Serialize;

    use super::*;
    use crate::config::clap_default;
    use crate::engine::{
        bad, Engine, Need, RunOptions, StageContext, StageDef, StageReport, TableDecl, TableKind,
    };
    use crate::error::Result;
    use crate::tables::ALL_TABLES;

    /// The registry's lint: what ARCHITECTURE.md asks of it.
    #[test]
    fn registry_is_consistent() {
        // Unique names, aliases included.
        let mut names = BTreeSet::new();
        for e in ALL {
            for n in std::iter::once(e.name()).chain(e.aliases().iter().copied()) {
                assert!(names.insert(n), "stage name `{n}` twice");
            }
        }
        // Tables: unique names; every table has a provider, and every provided table is known.
        let mut tables = BTreeSet::new();
        for t in ALL_TABLES {
            assert!(tables.insert(t.name), "table `{}` twice", t.name);
            assert!(
                !providers_of(t.name).is_empty(),
                "no stage provides `{}`",
                t.name
            );
            assert_eq!(
                t.schema.is_some(),
                matches!(t.kind, TableKind::Parquet | TableKind::Arrow),
                "`{}`: Parquet tables and Arrow stores have schemas",
                t.name
            );
        }
        for e in ALL {
            for t in e.provides() {
                assert!(
                    tables.contains(t.name),
                    "`{}` provides an unlisted table",
                    e.name()
                );
            }
        }
        // Flags are pipeline keys and back; defaults round-trip through TOML.
        for e in ALL {
            let cmd = e.command();
            // Flags, and positional arguments by their ids (report's compared runs).
            let flags: BTreeSet<String> = cmd
                .get_arguments()
                .filter_map(|a| {
                    a.get_long()
                        .map(str::to_string)
                        .or_else(|| a.is_positional().then(|| a.get_id().as_str().to_string()))
                })
                // The engine's flags, not settings: how to run, not what.
                .filter(|l| {
                    !["run", "run_dir", "force", "from", "help", "shard", "commit"]
                        .contains(&l.as_str())
                })
                .map(|l| l.replace('-', "_"))
                .collect();
            let keys: BTreeSet<String> = e
                .keys()
                .into_iter()
                .filter(|k| !e.toml_only().contains(k))
                .map(str::to_string)
                .collect();
            assert_eq!(
                flags,
                keys,
                "`{}`: flags and pipeline keys differ",
                e.name()
            );
            for k in e.toml_only() {
                assert!(
                    e.keys().contains(k),
                    "`{}`: toml-only `{k}` is not a key",
                    e.name()
                );
            }
            e.round_trips()
                .unwrap_or_else(|m| panic!("`{}`: defaults do not round-trip: {m}", e.name()));
        }
    }

    /// A stage of a test module: one type, one `StageDef`, run by the engine with no other
    /// change — what adding a stage to simat takes, besides its line in [`ALL`].
    #[derive(Debug, Clone)]
    struct CountQueries {
        config: CountConfig,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, clap::Args)]
    #[serde(default, deny_unknown_fields)]
    struct CountConfig {
        /// Count only queries of this field.
        #[arg(long, default_value = "subj")]
        field: String,
    }

    impl Default for CountConfig {
        fn default() -> Self {
            clap_default()
        }
    }

    static COUNT: TableDecl = TableDecl {
        name: "query_count",
        file: "count.json",
        kind: TableKind::Json,
        schema: None,
        about: "a count",
    };

    impl StageDef for CountQueries {
        const NAME: &'static str = "count-queries";
        const VERSION: u32 = 1;
        const ABOUT: &'static str = "Counts queries";
        const PROVIDES: &'static [&'static TableDecl] = &[&COUNT];
        type Config = CountConfig;
        fn build(config: CountConfig) -> Result<Self> {
            if !["subj", "rel", "obj"].contains(&config.field.as_str()) {
                return Err(bad::<Self>("field", "expected subj, rel or obj"));
            }
            Ok(CountQueries { config })
        }
        fn needs(&self) -> Vec<Need> {
            vec![Need::of(&crate::tables::QUERIES)]
        }
        fn fingerprint(&self) -> serde_json::Value {
            serde_json::to_value(&self.config).unwrap()
        }
        fn run(&self, ctx: &StageContext) -> Result<StageReport> {
            let q = crate::tables::dataset::Queries::read(&ctx.input(&crate::tables::QUERIES)?)?;
            let n = q
                .field
                .iter()
                .filter(|f| f.as_str() == self.config.field)
                .count();
            crate::io::atomic::write_atomic(ctx.output(&COUNT)?, n.to_string().as_bytes())?;
            let mut r = StageReport::default();
            r.table(&COUNT, None);
            Ok(r)
        }
    }

    #[test]
    fn a_stage_is_one_definition() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/simat-release");
        let entry = Registered::<CountQueries>::new();
        let mut section = toml::Table::new();
        section.insert("field".into(), "rel".into());
        let count = entry.build_from_toml(&section, run).unwrap();
        let import = find("import-simat")
            .unwrap()
            .build_from_toml(
                &toml::toml! { release = (release.to_string_lossy().into_owned()) },
                run,
            )
            .unwrap();
        let ui = crate::ui::Ui::quiet();
        let engine = Engine::new(run, &ui).unwrap();
        engine
            .run(&[import.as_ref(), count.as_ref()], &RunOptions::default())
            .unwrap();
        let n: usize = std::fs::read_to_string(run.join("count-queries/count.json"))
            .unwrap()
            .parse()
            .unwrap();
        // transfos.csv has 478 rows with field = rel.
        assert_eq!(n, 478);
        // Its flag and its validation come from the same definition.
        assert!(entry
            .command()
            .get_arguments()
            .any(|a| a.get_long() == Some("field")));
        section.insert("field".into(), "verb".into());
        let err = entry
            .build_from_toml(&section, run)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "`[count-queries] field` (--field): expected subj, rel or obj"
        );
        assert_eq!(entry.keys(), vec!["field"]);
        entry.round_trips().unwrap();
    }
}

#[cfg(test)]
mod output_checks {
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use crate::engine::{
        Engine, Need, RunOptions, Stage, StageContext, StageReport, StageStatus, TableDecl,
    };
    use crate::error::Result;
    use crate::tables;

    /// A stage that declares `region_scores` and writes what `mode` says.
    struct Liar {
        mode: &'static str,
    }

    impl Stage for Liar {
        fn name(&self) -> &'static str {
            "liar"
        }
        fn version(&self) -> u32 {
            1
        }
        fn provides(&self) -> Vec<&'static TableDecl> {
            vec![&tables::REGION_SCORES]
        }
        fn needs(&self) -> Vec<Need> {
            vec![]
        }
        fn fingerprint(&self) -> serde_json::Value {
            serde_json::json!({ "mode": self.mode })
        }
        fn run(&self, ctx: &StageContext) -> Result<StageReport> {
            let mut r = StageReport::default();
            let path = ctx.output(&tables::REGION_SCORES)?;
            match self.mode {
                "nothing" => {}
                "unreported" | "wrong" => {
                    let schema = Arc::new(Schema::new(vec![Field::new(
                        "region_id",
                        DataType::Int32,
                        false,
                    )]));
                    let batch =
                        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![1, 2]))])
                            .unwrap();
                    crate::io::write_table(&path, &batch)?;
                    if self.mode == "wrong" {
                        r.table(&tables::REGION_SCORES, Some(2));
                    }
                }
                _ => unreachable!(),
            }
            Ok(r)
        }
    }

    #[test]
    fn a_stage_whose_outputs_are_not_its_declarations_is_not_committed() {
        for (mode, says) in [
            (
                "nothing",
                "`region_scores.parquet` (region_scores) was not written",
            ),
            (
                "unreported",
                "`region_scores.parquet` (region_scores) was written but not reported",
            ),
            (
                "wrong",
                "columns [region_id], declared [region_id, triplet_id, similarity]",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let ui = crate::ui::Ui::quiet();
            let engine = Engine::new(dir.path(), &ui).unwrap();
            let liar = Liar { mode };
            let err = engine
                .run(&[&liar as &dyn Stage], &RunOptions::default())
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("not committed") && err.contains(says),
                "{mode}: {err}"
            );
            let m = crate::engine::Manifest::load(dir.path()).unwrap();
            assert_eq!(m.stages["liar"].status, StageStatus::Failed, "{mode}");
            assert!(m.stages["liar"].outputs.is_empty(), "{mode}");
        }
    }
}
