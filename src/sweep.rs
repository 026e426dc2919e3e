//! Sweeps: many models through one pipeline.
//!
//! ```toml
//! [sweep]
//! models = ["../models/vit-b-32", "../models/vit-l-14", "../models/siglip"]
//!
//! [embed]            # no `model` key: the sweep gives each branch its own
//! batch_size = 64
//! ```
//!
//! A sweep varies one thing: the model (`models`), or, beside one image model, the text model
//! (`text_models = ["tower", "../models/minilm"]`, `tower` being the image model's own text
//! tower): the paper's τ × text encoder table, with `[coco]` and `[adapt]` in each branch.
//!
//! **The shape.** The stages that do not depend on the model (import or ingest, triplets, crops,
//! select, queries, the oracle) are the *trunk* and run once, in the run directory. Each model
//! gets a *branch*: `[embed]` and `[coco]` with that model (the key `model`, or `text_model`),
//! and every stage that reads what they write, directly or not (adapt, retrieve, score), in a
//! run directory of its own, `RUN/models/NAME/`, whose
//! base is the sweep's run ([`Manifest`]). A branch reads the trunk's tables from the base, with
//! the digests the base records, so its stages are fingerprinted as they would be in a run of
//! that model alone and compute what that run computes, byte for byte; a trunk stage that reruns
//! makes every branch stale. `[report]` runs last, in each branch, with every other model beside
//! it: each model's page draws all the models' scores against λ and their leaderboard.
//!
//! **Why a `[sweep]` table** rather than `[embed] models = [...]`: a stage's section is exactly
//! its flags (one definition for both), and `simat embed --model` takes one model. What a sweep
//! repeats is not one stage but a branch of them, which is the pipeline's business, like
//! `[slurm]`. A model's `NAME` is the `name` of its `model.toml`, or else its folder's name; two
//! models of one name, a folder listed twice and a missing folder are refused when the pipeline
//! loads, before anything runs.
//!
//! **Executors.** Locally, the branches run one after the other. Under Slurm
//! ([`crate::slurm`]), the branches are one job array, task *i* running model *i*'s branch
//! (`simat run PIPELINE --model NAME`); the reports are one job after it. A branch is the unit
//! of that array, so a branch's stages run whole there (a `shards` key on them is refused).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{Engine, Manifest, RunOptions, Stage, StageOutcome, StaleReason};
use crate::error::{Error, Result};
use crate::stages::ALL;
use crate::ui::Ui;

/// The folder of a sweep's run that holds one run directory per model.
pub const MODELS_DIR: &str = "models";
/// A branch's base, relative to the branch's run directory.
pub const BASE: &str = "../..";
/// The stage that runs once per model, after every branch.
const REPORT: &str = "report";

/// One model's branch.
pub struct Branch {
    /// The model's name: its folder under `RUN/models/`.
    pub name: String,
    /// The folder the branch sets (`None`: the image model's own text tower).
    pub model: Option<PathBuf>,
    /// `RUN/models/NAME`.
    pub run_dir: PathBuf,
    /// Its stages, in order (the report aside).
    pub stages: Vec<Box<dyn Stage>>,
}

impl Branch {
    /// The stages, in order.
    pub fn stages(&self) -> Vec<&dyn Stage> {
        self.stages.iter().map(|s| s.as_ref()).collect()
    }
}

/// The stages a sweep runs once, in the sweep's run directory.
pub type Trunk = Vec<Box<dyn Stage>>;

/// A pipeline's `[sweep]`: its branches, and the report that runs in each at the end.
pub struct Sweep {
    /// One branch per model, in the order `models` lists them.
    pub branches: Vec<Branch>,
    /// The names of the branch's stages (the report aside), in order.
    pub stage_names: Vec<&'static str>,
    /// The `[report]` section, and the folder its paths are relative to.
    report: Option<(toml::Table, PathBuf)>,
}

impl std::fmt::Debug for Sweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweep")
            .field(
                "models",
                &self.branches.iter().map(|b| &b.name).collect::<Vec<_>>(),
            )
            .field("stages", &self.stage_names)
            .field("report", &self.report.is_some())
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepSection {
    #[serde(default)]
    models: Vec<PathBuf>,
    #[serde(default)]
    text_models: Vec<PathBuf>,
}

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// The model (`[sweep] models`): the key `model` of `[embed]` and `[coco]`.
    Models,
    /// The text model beside one image model (`[sweep] text_models`): their key `text_model`.
    TextModels,
}

impl Axis {
    /// The key of `[embed]` and `[coco]` that the sweep sets.
    pub fn key(self) -> &'static str {
        match self {
            Axis::Models => "model",
            Axis::TextModels => "text_model",
        }
    }
}

/// The entry of `text_models` that means the image model's own text tower.
pub const TOWER: &str = "tower";

/// The stages whose model a sweep sets: the branch starts with them.
pub const ROOTS: [&str; 2] = ["coco", "embed"];

/// One entry of a sweep: its name, and the folder it sets (none: the model's own text tower).
pub type Entry = (String, Option<PathBuf>);

/// The axis and entries of a `[sweep]` section, each checked; every problem is said.
fn models_of(
    value: toml::Value,
    base: &Path,
) -> std::result::Result<(Axis, Vec<Entry>), Vec<String>> {
    let section =
        SweepSection::deserialize(value).map_err(|e| vec![format!("[sweep]: {}", e.message())])?;
    let (axis, list, key) = match (section.models.is_empty(), section.text_models.is_empty()) {
        (false, true) => (Axis::Models, section.models, "models"),
        (true, false) => (Axis::TextModels, section.text_models, "text_models"),
        (true, true) => {
            return Err(vec![
                "[sweep]: list the model folders in `models`, or the text models beside one image model in `text_models`".into(),
            ])
        }
        (false, false) => {
            return Err(vec![
                "[sweep]: `models` and `text_models` together: a sweep varies one of them".into(),
            ])
        }
    };
    let mut problems = Vec::new();
    let mut out: Vec<Entry> = Vec::new();
    let mut seen: BTreeMap<String, (PathBuf, PathBuf)> = BTreeMap::new();
    for (i, m) in list.iter().enumerate() {
        if axis == Axis::TextModels && m.as_os_str() == TOWER {
            if seen.contains_key(TOWER) {
                problems.push(format!("[sweep] {key}[{i}]: `{TOWER}` is listed twice"));
            }
            seen.insert(TOWER.into(), (m.clone(), m.clone()));
            out.push((TOWER.into(), None));
            continue;
        }
        let dir = if m.is_absolute() {
            m.clone()
        } else {
            base.join(m)
        };
        let checked = match axis {
            Axis::Models => crate::model::clip::check_folder(&dir),
            Axis::TextModels => crate::model::text::check_folder(&dir),
        };
        if let Err(e) = checked {
            problems.push(format!("[sweep] {key}[{i}]: {e}"));
            continue;
        }
        let name = match crate::model::clip::model_name(&dir) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("[sweep] {key}[{i}]: {e}"));
                continue;
            }
        };
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if let Some((other, other_canonical)) = seen.get(&name) {
            problems.push(if *other_canonical == canonical {
                format!("[sweep] {key}[{i}]: `{}` is listed twice", m.display())
            } else {
                format!(
                    "[sweep] {key}[{i}]: two models are named `{name}`, `{}` and `{}`; a model's branch is RUN/models/NAME, so give one of them another `name` in its model.toml",
                    other.display(),
                    m.display()
                )
            });
            continue;
        }
        // Absolute: the branch's sections resolve relative paths against the pipeline's folder
        // again.
        seen.insert(name.clone(), (m.clone(), canonical.clone()));
        out.push((name, Some(canonical)));
    }
    if problems.is_empty() {
        Ok((axis, out))
    } else {
        Err(problems)
    }
}

/// Read a `[sweep]` section and prepare the pipeline `file` for it: each root's section (`[embed]`,
/// `[coco]`) checked for the keys the sweep sets, and given the first entry, so that the
/// pipeline's stages can be built as the first branch's. Every problem goes to `problems`.
pub(crate) fn prepare(
    value: toml::Value,
    file: &mut toml::Table,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<(Axis, Vec<Entry>)> {
    let (axis, entries) = match models_of(value, base) {
        Ok(x) => x,
        Err(p) => {
            problems.extend(p);
            return None;
        }
    };
    let key = axis.key();
    if !matches!(file.get("embed"), Some(toml::Value::Table(_))) {
        problems.push(
            "[sweep] needs an [embed] section: the stage each model's branch starts with".into(),
        );
    }
    for root in ROOTS {
        let Some(toml::Value::Table(section)) = file.get_mut(root) else {
            continue;
        };
        let named_image = section.contains_key("image_model");
        if axis == Axis::Models && named_image {
            problems.push(format!(
                "[{root}] image_model: a sweep over models gives each branch its model from [sweep]; remove this key"
            ));
        }
        if section.contains_key(key) {
            problems.push(format!(
                "[{root}] {key}: a sweep gives each branch its {key} from [sweep]; remove this key"
            ));
        } else if axis == Axis::TextModels && !section.contains_key("model") && !named_image {
            problems.push(format!(
                "[{root}] model: a sweep over text models keeps one image model: name it here"
            ));
        }
        if let Some(first) = &entries[0].1 {
            section.insert(
                key.into(),
                toml::Value::String(first.to_string_lossy().into_owned()),
            );
        }
    }
    Some((axis, entries))
}

/// The names of the stages of `stages` (a pipeline, in order) that depend on the model: embed
/// and coco, and every stage that needs a table one of them provides.
fn branch_names(stages: &[Box<dyn Stage>]) -> BTreeSet<&'static str> {
    let mut names = BTreeSet::new();
    let mut tables = BTreeSet::new();
    for s in stages {
        let depends =
            ROOTS.contains(&s.name()) || s.needs().iter().any(|n| tables.contains(n.table.name));
        if depends {
            names.insert(s.name());
            tables.extend(s.provides().iter().map(|t| t.name));
        }
    }
    names
}

impl Sweep {
    /// Split a pipeline's stages (built with the first entry in `[embed]` and `[coco]`) into
    /// the trunk and a sweep over `entries`, building each branch's stages from `file`'s
    /// sections with the axis's key set.
    pub(crate) fn split(
        stages: Vec<Box<dyn Stage>>,
        file: &toml::Table,
        base: &Path,
        run_dir: &Path,
        (axis, entries): (Axis, Vec<Entry>),
        shards: &BTreeMap<String, usize>,
    ) -> std::result::Result<(Trunk, Sweep), Vec<String>> {
        let names = branch_names(&stages);
        let mut problems = Vec::new();
        for s in names.iter().filter(|s| shards.contains_key(**s)) {
            problems.push(format!(
                "[{s}] shards: in a sweep a model's branch is one task (one Slurm array over the models); remove `shards`"
            ));
        }
        let trunk: Vec<Box<dyn Stage>> = stages
            .into_iter()
            .filter(|s| !names.contains(s.name()))
            .collect();
        let stage_names: Vec<&'static str> = ALL
            .iter()
            .map(|e| e.name())
            .filter(|n| names.contains(n) && *n != REPORT)
            .collect();
        let mut branches = Vec::new();
        for (name, model) in entries {
            let mut built = Vec::new();
            for entry in ALL.iter().filter(|e| stage_names.contains(&e.name())) {
                let Some(toml::Value::Table(section)) = file.get(entry.name()) else {
                    continue;
                };
                let mut section = section.clone();
                if ROOTS.contains(&entry.name()) {
                    section.remove(axis.key());
                    if let Some(m) = &model {
                        section.insert(
                            axis.key().into(),
                            toml::Value::String(m.to_string_lossy().into_owned()),
                        );
                    }
                }
                match entry.build_from_toml(&section, base) {
                    Ok(s) => built.push(s),
                    Err(e) => problems.push(format!("[sweep] model `{name}`: {e}")),
                }
            }
            branches.push(Branch {
                run_dir: run_dir.join(MODELS_DIR).join(&name),
                name,
                model,
                stages: built,
            });
        }
        let report = match file.get(REPORT) {
            Some(toml::Value::Table(t)) if names.contains(REPORT) => {
                Some((t.clone(), base.to_path_buf()))
            }
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok((
            trunk,
            Sweep {
                branches,
                stage_names,
                report,
            },
        ))
    }

    /// The branch of model `name`; an error that lists the models otherwise.
    pub fn branch(&self, name: &str) -> Result<&Branch> {
        self.branches
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| {
                Error::stage(
                    "sweep",
                    format!(
                        "`--model {name}`: the sweep's models are {}",
                        self.names().join(", ")
                    ),
                )
            })
    }

    /// The models' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.branches.iter().map(|b| b.name.as_str()).collect()
    }

    /// Whether the sweep ends with a report in each branch.
    pub fn has_report(&self) -> bool {
        self.report.is_some()
    }

    /// The report of branch `at`, with every other branch beside it (their scores must exist:
    /// it is built once they have run).
    pub fn report_of(&self, at: usize) -> Option<Result<Box<dyn Stage>>> {
        let (section, base) = self.report.as_ref()?;
        let mut section = section.clone();
        let mut compare: Vec<toml::Value> = self
            .branches
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, b)| toml::Value::String(b.run_dir.to_string_lossy().into_owned()))
            .collect();
        if let Some(toml::Value::Array(more)) = section.get("compare") {
            compare.extend(more.iter().cloned());
        }
        section.insert("compare".into(), toml::Value::Array(compare));
        let entry = crate::stages::find(REPORT).expect("report is a stage");
        Some(entry.build_from_toml(&section, base))
    }

    /// Whether `stage` is one of the branch's stages (the report included).
    pub fn has_stage(&self, stage: &str) -> bool {
        self.stage_names.contains(&stage) || (stage == REPORT && self.report.is_some())
    }

    /// Check, before anything runs, that every branch's run directory is the sweep's or new (a
    /// folder there that is another run is refused).
    pub fn check_dirs(&self) -> Result<()> {
        for b in &self.branches {
            if !Manifest::path(&b.run_dir).is_file() {
                continue;
            }
            let m = Manifest::load_without_base(&b.run_dir)?;
            if m.base.as_deref() != Some(BASE) {
                return Err(Error::data(
                    Manifest::path(&b.run_dir),
                    format!(
                        "model `{}`'s folder holds a run whose base is not the sweep's run (`{BASE}`): move it elsewhere",
                        b.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The branches of a sweep's run directory `dir`: each `dir/models/NAME/` whose manifest has
/// `dir` as base, by name.
pub fn branches_of(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let models = dir.join(MODELS_DIR);
    let entries = match std::fs::read_dir(&models) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io("failed to list", &models, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io("failed to list", &models, e))?;
        let path = e.path();
        if !Manifest::path(&path).is_file() {
            continue;
        }
        if Manifest::load_without_base(&path)?.base.as_deref() == Some(BASE) {
            out.push((e.file_name().to_string_lossy().into_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

/// `runs` with each sweep's run replaced by its models' run directories (in name order).
pub fn expand_runs(runs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for r in runs {
        let branches = branches_of(r)?;
        if branches.is_empty() {
            out.push(r.clone());
        } else {
            out.extend(branches.into_iter().map(|(_, p)| p));
        }
    }
    Ok(out)
}

fn engine<'a>(dir: &Path, ui: &'a Ui) -> Result<Engine<'a>> {
    Ok(Engine::new(dir, ui)?.with_catalogue(crate::stages::providers_of))
}

/// What a local sweep ran: each run directory's outcomes (the trunk's first, then each model's,
/// reports included).
pub type SweepOutcomes = Vec<(PathBuf, Option<String>, Vec<StageOutcome>)>;

/// `opts` for a run of `stages` alone: the `--force` and `--until` that name one of them, and
/// as forced upstream the stages of `ran` (what ran before it) that ran because they were forced.
fn scoped<'a>(
    opts: &RunOptions,
    stages: &[&str],
    ran: impl IntoIterator<Item = &'a StageOutcome>,
) -> RunOptions {
    RunOptions {
        force: opts
            .force
            .iter()
            .filter(|f| stages.contains(&f.as_str()))
            .cloned()
            .collect(),
        until: opts.until.clone().filter(|u| stages.contains(&u.as_str())),
        wait: opts.wait,
        only: None,
        forced_upstream: ran
            .into_iter()
            .filter(|o| o.ran_because == Some(StaleReason::Forced))
            .map(|o| o.stage.clone())
            .collect(),
    }
}

/// Run a sweep here: the trunk (`trunk`, in `run_dir`), then each branch, then each report. With
/// `model`, only that model's branch (the trunk must have finished). Every need of the trunk and
/// of a branch is resolved before the first stage runs.
pub fn run_local(
    run_dir: &Path,
    trunk: &[&dyn Stage],
    sweep: &Sweep,
    opts: &RunOptions,
    model: Option<&str>,
    ui: &Ui,
) -> Result<SweepOutcomes> {
    let engine = |dir: &Path| engine(dir, ui);
    for name in opts.force.iter().chain(opts.until.iter()) {
        if !trunk.iter().any(|s| s.name() == name) && !sweep.has_stage(name) {
            return Err(Error::stage(
                name,
                "`--force` or `--until` names a stage that is not in this pipeline",
            ));
        }
    }
    let chosen: Vec<&Branch> = match model {
        Some(m) => vec![sweep.branch(m)?],
        None => sweep.branches.iter().collect(),
    };
    sweep.check_dirs()?;
    let first = &sweep.branches[0];
    let mut all: Vec<&dyn Stage> = trunk.to_vec();
    all.extend(first.stages());
    engine(run_dir)?.resolve(&all)?;

    let mut out: SweepOutcomes = Vec::new();
    let trunk_outcomes = if model.is_none() {
        let names: Vec<&str> = trunk.iter().map(|s| s.name()).collect();
        let trunk_opts = scoped(opts, &names, []);
        let outcomes = engine(run_dir)?.run(trunk, &trunk_opts)?;
        if trunk_opts.until.is_some() {
            out.push((run_dir.to_path_buf(), None, outcomes));
            return Ok(out);
        }
        outcomes
    } else {
        vec![]
    };
    let branch_opts = scoped(opts, &sweep.stage_names, &trunk_outcomes);
    out.push((run_dir.to_path_buf(), None, trunk_outcomes));
    for b in &chosen {
        Manifest::bind_base(&b.run_dir, BASE)?;
        let what = b
            .model
            .as_ref()
            .map_or("the model's own text tower".into(), |m| {
                m.display().to_string()
            });
        ui.status("Model", format!("{} ({what})", b.name));
        let outcomes = engine(&b.run_dir)?.run(&b.stages(), &branch_opts)?;
        out.push((b.run_dir.clone(), Some(b.name.clone()), outcomes));
    }
    let until_report = opts.until.as_deref().is_none_or(|u| u == REPORT);
    if model.is_none() && until_report {
        let mut reports = run_reports(sweep, opts, &out, ui)?;
        for (dir, _, outcomes) in out.iter_mut() {
            if let Some(i) = reports.iter().position(|(d, _)| d == dir) {
                outcomes.push(reports.remove(i).1);
            }
        }
    }
    Ok(out)
}

/// Run each branch's report, with the other models beside it; `ran` (what ran before, if
/// anything) says which stages were forced upstream.
pub fn run_reports(
    sweep: &Sweep,
    opts: &RunOptions,
    ran: &[(PathBuf, Option<String>, Vec<StageOutcome>)],
    ui: &Ui,
) -> Result<Vec<(PathBuf, StageOutcome)>> {
    let engine = |dir: &Path| engine(dir, ui);
    let mut out = Vec::new();
    for (i, b) in sweep.branches.iter().enumerate() {
        let Some(report) = sweep.report_of(i) else {
            return Ok(out);
        };
        let report = report?;
        // What ran before it in its branch and in the trunk.
        let before = ran
            .iter()
            .filter(|(dir, name, _)| name.is_none() || *dir == b.run_dir)
            .flat_map(|(_, _, o)| o);
        let report_opts = scoped(opts, &[REPORT], before);
        let mut outcomes = engine(&b.run_dir)?.run(&[report.as_ref()], &report_opts)?;
        out.push((b.run_dir.clone(), outcomes.remove(0)));
    }
    Ok(out)
}
