//! The Slurm executor: `simat run PIPELINE --executor slurm`.
//!
//! Slurm schedules; simat only says what to run. The executor plans the pipeline as a local run
//! would ([`Engine::plan`]) and submits a job for each stage that is not fresh, all at once, with
//! `afterok` dependencies between them (and `--kill-on-invalid-dep=yes`, so that the jobs after a
//! failed one end instead of waiting for ever):
//!
//! - a stage that runs in parts ([`Stage::shardable`]), split into more than one, is a job array
//!   whose task `$SLURM_ARRAY_TASK_ID` runs `simat run PIPELINE --stage STAGE --shard I/N`, then a
//!   job that runs `--commit` once every task has succeeded. The array holds only the parts not
//!   yet done for the current fingerprint;
//! - every other stage is one job, `simat run PIPELINE --stage STAGE`.
//!
//! A task runs the stage from the same pipeline file as the submission, its needs resolved among
//! the whole pipeline's stages: what a task computes is what a local run computes. Every task
//! takes its lock with `--wait`, so two submissions never run the same part at once.
//!
//! Everything lives under `RUN/.slurm/`: one sbatch script per job (`STAGE.sbatch`,
//! `STAGE-commit.sbatch`), each task's log (`logs/`), each task's exit code as the task's own
//! script wrote it (`exit/`), and `submission.json`, the jobs of the last submission. Each script
//! has `--requeue`: a task that Slurm requeues after a preemption or a node failure resumes from
//! its committed chunks.
//!
//! Running the same command again first looks at the last submission: while any of its jobs is
//! pending or running it submits nothing and follows them; otherwise it submits only what is
//! missing or stale, so a run mended after a failure, a preemption or a fixed input is simply run
//! again. [`follow`] polls `squeue` (from every second to every 15 s when nothing changes) and
//! reads the tasks' exit files; a failed task fails the run with its stage, its task index, its
//! exit code and its log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::lock::RunLock;
use crate::engine::{Engine, Freshness, Stage};
use crate::error::{Error, Result};
use crate::io::chunks::Part;
use crate::pipeline::{Pipeline, SlurmSection};
use crate::ui::Ui;

/// The executor's folder inside a run directory.
pub const SLURM_DIR: &str = ".slurm";

/// The `simat run` flags of the Slurm executor; each overrides its `[slurm]` key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SlurmOptions {
    /// Parts per stage that runs in parts (default: `[slurm] shards`, else 1; a stage's own
    /// `shards` key wins).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// The partition to submit to (default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs for each task of a stage that runs a model (embed, oracle, coco).
    #[arg(long, value_name = "N")]
    pub gpus_per_task: Option<u32>,
    /// CPUs for each task.
    #[arg(long, value_name = "N")]
    pub cpus_per_task: Option<u32>,
    /// Time limit of each task, in Slurm's format (`02:00:00`).
    #[arg(long)]
    pub time: Option<String>,
    /// One more sbatch argument, passed through; repeatable (`--sbatch-arg=--account=vision`).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
}

/// What the executor submits with: flags over `[slurm]` keys over defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Parts per shardable stage, by default.
    pub shards: usize,
    /// Parts of the stages that set their own.
    pub stage_shards: BTreeMap<String, usize>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gpus-per-task` for the stages that run a model.
    pub gpus_per_task: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--time`.
    pub time: Option<String>,
    /// Passed through to every `sbatch`.
    pub sbatch_args: Vec<String>,
}

impl Settings {
    /// The settings of `pipeline` with `flags` over them.
    pub fn new(pipeline: &Pipeline, flags: &SlurmOptions) -> Result<Settings> {
        let s: &SlurmSection = &pipeline.slurm;
        let shards = flags.shards.or(s.shards).unwrap_or(1);
        if !(1..=crate::pipeline::MAX_SHARDS).contains(&shards) {
            return Err(Error::Slurm(format!(
                "--shards must be 1 to {}, not {shards}",
                crate::pipeline::MAX_SHARDS
            )));
        }
        let mut sbatch_args = s.sbatch_args.clone();
        sbatch_args.extend(flags.sbatch_arg.iter().cloned());
        Ok(Settings {
            shards,
            stage_shards: pipeline.shards.clone(),
            partition: flags.partition.clone().or(s.partition.clone()),
            gpus_per_task: flags.gpus_per_task.or(s.gpus_per_task),
            cpus_per_task: flags.cpus_per_task.or(s.cpus_per_task),
            time: flags.time.clone().or(s.time.clone()),
            sbatch_args,
        })
    }

    /// How many parts `stage` runs in (1: one job, no commit).
    pub fn shards_of(&self, stage: &dyn Stage) -> usize {
        if !stage.shardable() {
            return 1;
        }
        self.stage_shards
            .get(stage.name())
            .copied()
            .unwrap_or(self.shards)
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The whole stage.
    Stage,
    /// An array of parts.
    Parts,
    /// The commit of a stage run in parts.
    Commit,
    /// An array over a sweep's models, task *i* running model *i*'s branch.
    Models,
}

impl Role {
    /// Whether its job is an array.
    fn is_array(self) -> bool {
        matches!(self, Role::Parts | Role::Models)
    }
}

/// One submitted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The stage.
    pub stage: String,
    /// What it runs.
    pub role: Role,
    /// Slurm's job id (of the array, for parts).
    pub id: String,
    /// For parts: how many the stage runs in, and the indices this array holds.
    pub count: usize,
    /// The array's task indices (empty for one job).
    pub tasks: Vec<usize>,
    /// Its sbatch script.
    pub script: PathBuf,
    /// For an array over a sweep's models: their names, by task index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

impl Job {
    fn label(&self, task: Option<usize>) -> String {
        match (self.role, task) {
            (Role::Parts, Some(i)) => format!("{} part {i}/{}", self.stage, self.count),
            (Role::Models, Some(i)) => format!(
                "model {}",
                self.models.get(i).map(String::as_str).unwrap_or("?")
            ),
            (Role::Commit, _) => format!("{} commit", self.stage),
            _ => self.stage.clone(),
        }
    }

    fn task_id(&self, task: Option<usize>) -> String {
        match task {
            Some(i) => format!("{}_{i}", self.id),
            None => self.id.clone(),
        }
    }

    fn task_slots(&self) -> Vec<Option<usize>> {
        if self.role.is_array() {
            self.tasks.iter().map(|&i| Some(i)).collect()
        } else {
            vec![None]
        }
    }

    /// The log of one of its tasks.
    pub fn log(&self, run_dir: &Path, task: Option<usize>) -> PathBuf {
        let stem = stem(&self.stage, self.role);
        logs_dir(run_dir).join(format!("{stem}-{}.out", self.task_id(task)))
    }
}

/// The name of a job's script and, with its id, of its logs: `embed`, `embed-commit`.
fn stem(stage: &str, role: Role) -> String {
    match role {
        Role::Commit => format!("{stage}-commit"),
        _ => stage.to_string(),
    }
}

/// The jobs of one submission (`RUN/.slurm/submission.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// When it was submitted (Unix seconds).
    pub submitted_unix: u64,
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Its jobs, in stage order.
    pub jobs: Vec<Job>,
}

impl Submission {
    fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(SLURM_DIR).join("submission.json")
    }

    /// The last submission in `run_dir`, if any.
    pub fn load(run_dir: &Path) -> Result<Option<Submission>> {
        let path = Self::path(run_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("failed to read", &path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::data(&path, format!("not a Slurm submission record: {e}")))
    }

    fn save(&self, run_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("json") + "\n";
        crate::io::atomic::write_atomic(Self::path(run_dir), text.as_bytes())
    }
}

fn logs_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(SLURM_DIR).join("logs")
}

fn exit_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(SLURM_DIR).join("exit")
}

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting: for its dependencies, or for resources (Slurm's reason).
    Pending(String),
    /// Running (or completing, or requeued: Slurm still holds it).
    Running,
    /// Exited 0.
    Done,
    /// Ended otherwise: its exit code when it wrote one, and Slurm's state.
    Failed {
        /// The exit code its script wrote.
        code: Option<i32>,
        /// Slurm's state and reason, when Slurm still knows the job.
        state: String,
    },
    /// Cancelled before it started, because a job it depends on failed.
    NotRun,
}

impl TaskState {
    fn is_alive(&self) -> bool {
        matches!(self, TaskState::Pending(_) | TaskState::Running)
    }
}

/// Slurm's states of a job that has ended (`squeue --states=all` shows them for `MinJobAge`).
const ENDED: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
];

/// Run a Slurm command and return its stdout, or say what went wrong.
fn slurm_command(program: &str, args: &[String]) -> Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Slurm(format!(
                "`{program}` is not on PATH: the Slurm executor runs Slurm's own commands, so run it where they are (a login node), or run without --executor slurm"
            ))
        } else {
            Error::Slurm(format!("cannot run `{program}`: {e}"))
        }
    })?;
    if !out.status.success() {
        return Err(Error::Slurm(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The state of every task of `sub`, from `squeue` and the tasks' exit files.
pub fn states(run_dir: &Path, sub: &Submission) -> Result<Vec<Vec<TaskState>>> {
    let mut queue: BTreeMap<String, (String, String)> = BTreeMap::new();
    if !sub.jobs.is_empty() {
        let ids: Vec<&str> = sub.jobs.iter().map(|j| j.id.as_str()).collect();
        let out = slurm_command(
            "squeue",
            &[
                "--noheader".into(),
                "--array".into(),
                "--states=all".into(),
                format!("--jobs={}", ids.join(",")),
                "--format=%F|%K|%T|%r".into(),
            ],
        )?;
        for line in out.lines() {
            let f: Vec<&str> = line.trim().split('|').collect();
            if let [job, task, state, reason] = f[..] {
                let id = if task == "N/A" {
                    job.to_string()
                } else {
                    format!("{job}_{task}")
                };
                queue.insert(id, (state.to_string(), reason.to_string()));
            }
        }
    }
    let exit = exit_dir(run_dir);
    Ok(sub
        .jobs
        .iter()
        .map(|job| {
            job.task_slots()
                .into_iter()
                .map(|task| {
                    let id = job.task_id(task);
                    let code = std::fs::read_to_string(exit.join(format!("{id}.rc")))
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok());
                    task_state(queue.get(&id), code)
                })
                .collect()
        })
        .collect())
}

fn task_state(queued: Option<&(String, String)>, code: Option<i32>) -> TaskState {
    match (queued, code) {
        (Some((state, reason)), _) if !ENDED.contains(&state.as_str()) => {
            if state == "PENDING" {
                TaskState::Pending(reason.clone())
            } else {
                TaskState::Running
            }
        }
        (_, Some(0)) => TaskState::Done,
        (Some((state, _)), None) if state == "COMPLETED" => TaskState::Done,
        (Some((state, reason)), None) if state == "CANCELLED" && reason.contains("Dependency") => {
            TaskState::NotRun
        }
        (q, code) => TaskState::Failed {
            code,
            state: q
                .map(|(s, r)| {
                    if r == "None" {
                        s.clone()
                    } else {
                        format!("{s}, {r}")
                    }
                })
                .unwrap_or_else(|| "no longer in Slurm's queue".into()),
        },
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn quote(s: &str) -> Result<String> {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .map_err(|e| Error::Slurm(format!("cannot quote `{s}` for a shell: {e}")))
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Slurm(format!("`{}` is not UTF-8", p.display())))
}

/// What a submission does: the jobs it submitted, or the live jobs of an earlier one.
#[derive(Debug)]
pub struct Submitted {
    /// The submission now in `RUN/.slurm/submission.json`.
    pub submission: Submission,
    /// Whether it is an earlier one still running (nothing was submitted).
    pub earlier: bool,
}

/// Submit what `pipeline` still needs (see the module's docs), up to `until`.
pub fn submit(
    pipeline: &Pipeline,
    settings: &Settings,
    until: Option<&str>,
    wait: bool,
    ui: &Ui,
) -> Result<Submitted> {
    let run_dir = &pipeline.run_dir;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| Error::io("failed to create run directory", run_dir, e))?;
    let run_dir = run_dir
        .canonicalize()
        .map_err(|e| Error::io("failed to resolve", run_dir, e))?;
    let pipeline_path = pipeline
        .path
        .canonicalize()
        .map_err(|e| Error::io("failed to resolve", &pipeline.path, e))?;
    let slurm_dir = run_dir.join(SLURM_DIR);
    let _lock = RunLock::acquire_file(&slurm_dir, "submit.lock", wait, ui)?;
    if let Some(sub) = Submission::load(&run_dir)? {
        let states = states(&run_dir, &sub)?;
        if states.iter().flatten().any(TaskState::is_alive) {
            return Ok(Submitted {
                submission: sub,
                earlier: true,
            });
        }
    }

    let mut stages = pipeline.stages();
    if let Some(until) = until {
        let Some(at) = stages.iter().position(|s| s.name() == until) else {
            return Err(Error::stage(
                until,
                "`--until` names a stage that is not in this pipeline",
            ));
        };
        stages.truncate(at + 1);
    }
    let engine = Engine::new(&run_dir, ui)?.with_catalogue(crate::stages::providers_of);
    let providers = engine.resolve(&stages)?;
    let plan = engine.plan(&stages)?;
    let simat = std::env::current_exe()
        .map_err(|e| Error::Slurm(format!("cannot find simat's own executable: {e}")))?;
    // `simat run` as a task runs it, with `args` (`--stage STAGE`, `--model NAME`).
    let task_command = |args: &str| -> Result<String> {
        Ok(format!(
            "{} --wait run {} --run-dir {} {args}",
            quote(&path_str(&simat)?)?,
            quote(&path_str(&pipeline_path)?)?,
            quote(&path_str(&run_dir)?)?,
        ))
    };
    for dir in [logs_dir(&run_dir), exit_dir(&run_dir)] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("failed to create", &dir, e))?;
    }
    let mut sub = Submission {
        submitted_unix: now_unix(),
        pipeline: pipeline_path.clone(),
        jobs: vec![],
    };
    // The job each stage's dependents wait for: its own, or its commit.
    let mut last_job: BTreeMap<&str, String> = BTreeMap::new();
    for (at, (stage, (name, freshness))) in stages.iter().zip(&plan).enumerate() {
        if matches!(freshness, Freshness::Fresh) {
            continue;
        }
        let deps: BTreeSet<String> = providers[at]
            .values()
            .filter_map(|up| last_job.get(up.as_str()).cloned())
            .collect();
        let count = settings.shards_of(*stage);
        if count == 1 {
            let job = submit_job(
                &run_dir,
                settings,
                (stage.name(), stage.runs_model()),
                Role::Stage,
                1,
                &[],
                &deps,
                &task_command(&format!("--stage {name}"))?,
            )?;
            last_job.insert(stage.name(), job.id.clone());
            sub.jobs.push(job);
            sub.save(&run_dir)?;
            continue;
        }
        // Upstream that runs in this submission changes the fingerprint: every part runs.
        let parts: Vec<Part> = if deps.is_empty() {
            engine.parts_to_run(&stages, name, count)?
        } else {
            (0..count).map(|index| Part { index, count }).collect()
        };
        let mut commit_deps = deps.clone();
        if !parts.is_empty() {
            let indices: Vec<usize> = parts.iter().map(|p| p.index).collect();
            let job = submit_job(
                &run_dir,
                settings,
                (stage.name(), stage.runs_model()),
                Role::Parts,
                count,
                &indices,
                &deps,
                &task_command(&format!(
                    "--stage {name} --shard \"$SLURM_ARRAY_TASK_ID/{count}\""
                ))?,
            )?;
            commit_deps.insert(job.id.clone());
            sub.jobs.push(job);
            sub.save(&run_dir)?;
        }
        let job = submit_job(
            &run_dir,
            settings,
            (stage.name(), stage.runs_model()),
            Role::Commit,
            count,
            &[],
            &commit_deps,
            &task_command(&format!("--stage {name} --commit"))?,
        )?;
        last_job.insert(stage.name(), job.id.clone());
        sub.jobs.push(job);
        sub.save(&run_dir)?;
    }
    if let Some(sweep) = &pipeline.sweep {
        if until.is_none() {
            let trunk_jobs: BTreeSet<String> = last_job.values().cloned().collect();
            submit_sweep(
                &run_dir,
                settings,
                sweep,
                &trunk_jobs,
                &task_command,
                &mut sub,
                ui,
            )?;
        }
    }
    // Each job was recorded as it was submitted; an empty submission is recorded too.
    if sub.jobs.is_empty() {
        sub.save(&run_dir)?;
    }
    Ok(Submitted {
        submission: sub,
        earlier: false,
    })
}

/// Whether every stage of a sweep's branch is fresh in its run directory.
fn branch_is_fresh(stages: &[&dyn Stage], run_dir: &Path, ui: &Ui) -> Result<bool> {
    if !crate::engine::Manifest::path(run_dir).is_file() {
        return Ok(false);
    }
    let engine = Engine::new(run_dir, ui)?.with_catalogue(crate::stages::providers_of);
    Ok(engine
        .plan(stages)?
        .iter()
        .all(|(_, f)| matches!(f, Freshness::Fresh)))
}

/// A sweep's jobs: one array over the models whose branch is not fresh (all of them when the
/// trunk runs in this submission), task *i* running model *i*'s branch; then, after it, one job
/// for every model's report.
fn submit_sweep(
    run_dir: &Path,
    settings: &Settings,
    sweep: &crate::sweep::Sweep,
    trunk_jobs: &BTreeSet<String>,
    task_command: &dyn Fn(&str) -> Result<String>,
    sub: &mut Submission,
    ui: &Ui,
) -> Result<()> {
    sweep.check_dirs()?;
    let mut tasks = Vec::new();
    for (i, b) in sweep.branches.iter().enumerate() {
        if !trunk_jobs.is_empty() || !branch_is_fresh(&b.stages(), &b.run_dir, ui)? {
            tasks.push(i);
        }
    }
    let mut report_deps = trunk_jobs.clone();
    if !tasks.is_empty() {
        let names: Vec<String> = sweep.names().iter().map(|n| n.to_string()).collect();
        // The names are plain folder names (`model_name`), safe in a Bash array.
        let command = format!(
            "SIMAT_MODELS=({})\n{}",
            names.join(" "),
            task_command("--model \"${SIMAT_MODELS[$SLURM_ARRAY_TASK_ID]}\"")?
        );
        let mut job = submit_job(
            run_dir,
            settings,
            ("models", true),
            Role::Models,
            names.len(),
            &tasks,
            trunk_jobs,
            &command,
        )?;
        job.models = names;
        report_deps.insert(job.id.clone());
        sub.jobs.push(job);
        sub.save(run_dir)?;
    }
    let reports_fresh = || -> Result<bool> {
        for (i, b) in sweep.branches.iter().enumerate() {
            let Some(Ok(report)) = sweep.report_of(i) else {
                return Ok(false);
            };
            if !branch_is_fresh(&[report.as_ref()], &b.run_dir, ui)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    if sweep.has_report() && (!tasks.is_empty() || !reports_fresh()?) {
        let job = submit_job(
            run_dir,
            settings,
            ("report", false),
            Role::Stage,
            1,
            &[],
            &report_deps,
            &task_command("--stage report")?,
        )?;
        sub.jobs.push(job);
        sub.save(run_dir)?;
    }
    Ok(())
}

/// `0-2,5,7-9`: Slurm's array syntax for sorted indices.
fn array_spec(indices: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[allow(clippy::too_many_arguments)]
fn submit_job(
    run_dir: &Path,
    settings: &Settings,
    (name, runs_model): (&str, bool),
    role: Role,
    count: usize,
    tasks: &[usize],
    deps: &BTreeSet<String>,
    command: &str,
) -> Result<Job> {
    let stem = stem(name, role);
    let script = run_dir.join(SLURM_DIR).join(format!("{stem}.sbatch"));
    let log = logs_dir(run_dir).join(if role.is_array() {
        format!("{stem}-%A_%a.out")
    } else {
        format!("{stem}-%j.out")
    });
    let mut directives = vec![
        format!("--job-name=simat-{stem}"),
        "--requeue".to_string(),
        format!("--output={}", path_str(&log)?),
        "--open-mode=append".to_string(),
    ];
    if role.is_array() {
        directives.push(format!("--array={}", array_spec(tasks)));
    }
    if !deps.is_empty() {
        let ids: Vec<&str> = deps.iter().map(String::as_str).collect();
        directives.push(format!("--dependency=afterok:{}", ids.join(":")));
        directives.push("--kill-on-invalid-dep=yes".into());
    }
    if let Some(p) = &settings.partition {
        directives.push(format!("--partition={p}"));
    }
    if let (Some(g), true) = (settings.gpus_per_task, runs_model && role != Role::Commit) {
        directives.push(format!("--gpus-per-task={g}"));
    }
    if let Some(c) = settings.cpus_per_task {
        directives.push(format!("--cpus-per-task={c}"));
    }
    if let Some(t) = &settings.time {
        directives.push(format!("--time={t}"));
    }
    let exit = quote(&path_str(&exit_dir(run_dir))?)?;
    let mut text = format!(
        "#!/bin/bash\n# Written by `simat run --executor slurm` ({}): {}. Submitted with sbatch{} SCRIPT.\n",
        match role {
            Role::Stage => "the stage",
            Role::Parts => "its parts",
            Role::Commit => "the commit of its parts",
            Role::Models => "each model's branch",
        },
        name,
        settings
            .sbatch_args
            .iter()
            .map(|a| quote(a))
            .collect::<Result<Vec<_>>>()?
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>(),
    );
    for d in &directives {
        text += &format!("#SBATCH {d}\n");
    }
    // The exit code is written by the task itself, so that it outlives Slurm's memory of the job
    // (`MinJobAge`) and needs no accounting database.
    text += &format!(
        "id=${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}${{SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}}\n\
         rm -f {exit}/\"$id.rc\"\n\
         echo \"simat: $id on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}, $(date -Is)\"\n\
         {command}\n\
         rc=$?\n\
         echo \"$rc\" > {exit}/\"$id.rc.tmp\" && mv {exit}/\"$id.rc.tmp\" {exit}/\"$id.rc\"\n\
         exit $rc\n"
    );
    crate::io::atomic::write_atomic(&script, text.as_bytes())?;
    let mut args: Vec<String> = vec!["--parsable".into()];
    args.extend(settings.sbatch_args.iter().cloned());
    args.push(path_str(&script)?);
    let out = slurm_command("sbatch", &args)?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out
        .trim()
        .split(';')
        .next()
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Error::Slurm(format!("sbatch printed no job id: `{}`", out.trim())))?
        .to_string();
    Ok(Job {
        stage: name.to_string(),
        role,
        id,
        count,
        tasks: tasks.to_vec(),
        script,
        models: vec![],
    })
}

/// One line on the jobs of a submission: `4 of 11 done; embed: 1 of 3 parts done, 2 running;
/// waiting: retrieve, score`.
pub fn summary(sub: &Submission, states: &[Vec<TaskState>]) -> String {
    let total: usize = states.iter().map(Vec::len).sum();
    let done = states
        .iter()
        .flatten()
        .filter(|s| **s == TaskState::Done)
        .count();
    let mut line = format!("{done} of {total} tasks done");
    let mut waiting = Vec::new();
    for (job, st) in sub.jobs.iter().zip(states) {
        let count = |f: fn(&TaskState) -> bool| st.iter().filter(|s| f(s)).count();
        let running = count(|s| *s == TaskState::Running);
        let failed = count(|s| matches!(s, TaskState::Failed { .. }));
        let finished = count(|s| *s == TaskState::Done);
        let label = job.label(None);
        if job.role.is_array() && (running > 0 || failed > 0 || finished > 0) {
            let what = if job.role == Role::Models {
                "models"
            } else {
                "parts"
            };
            let mut s = format!("; {label}: {finished} of {} {what} done", st.len());
            if running > 0 {
                s += &format!(", {running} running");
            }
            if failed > 0 {
                s += &format!(", {failed} failed");
            }
            line += &s;
        } else if running > 0 {
            line += &format!("; {label}: running");
        } else if failed > 0 {
            line += &format!("; {label}: failed");
        } else if st.iter().any(|s| matches!(s, TaskState::Pending(_))) {
            waiting.push(label);
        }
    }
    if !waiting.is_empty() {
        line += &format!("; waiting: {}", waiting.join(", "));
    }
    line
}

/// Follow `sub` until every task has ended; an error names each failed task.
pub fn follow(run_dir: &Path, sub: &Submission, ui: &Ui) -> Result<()> {
    let ticker = ui.ticker("Slurm");
    let mut interval = Duration::from_secs(1);
    let states = loop {
        let states = states(run_dir, sub)?;
        let changed = ticker.set(&summary(sub, &states));
        if !states.iter().flatten().any(TaskState::is_alive) {
            break states;
        }
        interval = if changed {
            Duration::from_secs(1)
        } else {
            (interval * 3 / 2).min(Duration::from_secs(15))
        };
        std::thread::sleep(interval);
    };
    ticker.finish();
    let mut failures = Vec::new();
    let mut not_run = 0;
    for (job, st) in sub.jobs.iter().zip(&states) {
        for (task, state) in job.task_slots().into_iter().zip(st) {
            match state {
                TaskState::Failed { code, state } => {
                    failures.push(failure(run_dir, job, task, *code, state))
                }
                TaskState::NotRun => not_run += 1,
                _ => {}
            }
        }
    }
    if failures.is_empty() && not_run == 0 {
        return Ok(());
    }
    let mut message = failures.join("; ");
    if not_run > 0 {
        if !message.is_empty() {
            message += "; ";
        }
        message += &format!("{not_run} later tasks did not run (a job they depend on failed)");
    }
    message +=
        "; mend the cause and run the same command again: it submits only what is missing or stale";
    Err(Error::Slurm(message))
}

fn failure(
    run_dir: &Path,
    job: &Job,
    task: Option<usize>,
    code: Option<i32>,
    state: &str,
) -> String {
    let log = job.log(run_dir, task);
    let what = match task {
        Some(_) if job.role == Role::Models => format!("{}'s branch", job.label(task)),
        Some(i) => format!("stage `{}`, task {i} (part {i}/{})", job.stage, job.count),
        None if job.role == Role::Commit => format!("stage `{}`, its commit", job.stage),
        None => format!("stage `{}`", job.stage),
    };
    let how = match code {
        Some(c) => format!("exit code {c} ({state})"),
        None => format!("no exit code ({state})"),
    };
    // The error line simat printed, when the log has one.
    let cause = std::fs::read_to_string(&log).ok().and_then(|text| {
        text.lines()
            .rev()
            .find(|l| l.starts_with("error:"))
            .map(|l| format!(": {}", l.trim_start_matches("error:").trim()))
    });
    format!(
        "{what}, job {}, failed with {how}; log: {}{}",
        job.task_id(task),
        log.display(),
        cause.unwrap_or_default()
    )
}

/// Lines for `simat status RUN` on its last submission, or none; Slurm's commands missing is
/// said, not an error.
pub fn status_lines(run_dir: &Path) -> Result<Vec<String>> {
    let Some(sub) = Submission::load(run_dir)? else {
        return Ok(vec![]);
    };
    let states = match states(run_dir, &sub) {
        Ok(s) => s,
        Err(e) => {
            return Ok(vec![format!(
                "cannot ask Slurm about the last submission: {e}"
            )])
        }
    };
    let mut lines = Vec::new();
    for (job, st) in sub.jobs.iter().zip(&states) {
        let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (task, s) in job.task_slots().into_iter().zip(st) {
            let word = match s {
                TaskState::Pending(_) => "pending",
                TaskState::Running => "running",
                TaskState::Done => "done",
                TaskState::Failed { .. } => "failed",
                TaskState::NotRun => "not run",
            };
            by.entry(word)
                .or_default()
                .push(task.map(|i| i.to_string()).unwrap_or_default());
        }
        let parts: Vec<String> = by
            .iter()
            .map(|(word, tasks)| {
                if job.role.is_array() {
                    format!("{} {word} ({})", tasks.len(), tasks.join(", "))
                } else {
                    word.to_string()
                }
            })
            .collect();
        let mut line = format!("{} (job {}): {}", job.label(None), job.id, parts.join(", "));
        if let Some((task, TaskState::Failed { code, state })) = job
            .task_slots()
            .into_iter()
            .zip(st)
            .find(|(_, s)| matches!(s, TaskState::Failed { .. }))
        {
            line += &format!(" — {}", failure(run_dir, job, task, *code, state));
        }
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_spec_joins_runs_of_indices() {
        assert_eq!(array_spec(&[0, 1, 2, 5, 7, 8, 9]), "0-2,5,7-9");
        assert_eq!(array_spec(&[3]), "3");
        assert_eq!(array_spec(&[]), "");
    }

    #[test]
    fn a_task_state_comes_from_the_queue_and_the_exit_file() {
        let q = |s: &str, r: &str| Some((s.to_string(), r.to_string()));
        assert_eq!(
            task_state(q("RUNNING", "None").as_ref(), None),
            TaskState::Running
        );
        // A requeued task that had written a failure is alive again.
        assert_eq!(
            task_state(q("PENDING", "BeginTime").as_ref(), Some(2)),
            TaskState::Pending("BeginTime".into())
        );
        assert_eq!(
            task_state(q("FAILED", "NonZeroExitCode").as_ref(), Some(0)),
            TaskState::Done
        );
        assert_eq!(task_state(None, Some(0)), TaskState::Done);
        assert_eq!(
            task_state(q("CANCELLED", "DependencyNeverSatisfied").as_ref(), None),
            TaskState::NotRun
        );
        assert_eq!(
            task_state(q("CANCELLED", "None").as_ref(), None),
            TaskState::Failed {
                code: None,
                state: "CANCELLED".into()
            }
        );
        assert_eq!(
            task_state(q("FAILED", "NonZeroExitCode").as_ref(), Some(2)),
            TaskState::Failed {
                code: Some(2),
                state: "FAILED, NonZeroExitCode".into()
            }
        );
        assert!(matches!(
            task_state(None, None),
            TaskState::Failed { code: None, .. }
        ));
    }
}
