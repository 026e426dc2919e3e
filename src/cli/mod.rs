//! The `simat` command line: one subcommand per registered stage (derived from
//! [`crate::stages::ALL`]), `run` and `status` for pipelines, and the tools (`inspect`, `knn`,
//! `encode`, `stand-ins`, `runtime`, `query`, `export`). It parses, dispatches and reports; the work is in the
//! library.

pub mod compare;
pub mod knn;
pub mod leaderboard;
pub mod query;

/// `println!` that returns the write's error instead of panicking: a reader that closed the pipe
/// (`simat status RUN | head -1`) ends the command quietly with exit 0 (see [`main`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgMatches, Command, FromArgMatches, Parser, Subcommand};

use crate::engine::{describe, Engine, Freshness, Manifest, RunOptions, Stage, StageOutcome};
use crate::model::runner::ModelRunConfig;
use crate::pipeline::Pipeline;
use crate::stages;
use crate::ui::Ui;

/// The subcommands that are not stages.
#[derive(Debug, Subcommand)]
enum Tool {
    /// Run a pipeline file, skipping stages that are fresh.
    Run {
        /// The pipeline TOML file (see pipelines/).
        pipeline: PathBuf,
        /// Run directory, overriding the pipeline's `run_dir`.
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Stop after this stage.
        #[arg(long, value_name = "STAGE")]
        until: Option<String>,
        /// Rerun this stage (and everything downstream) even if fresh; repeatable.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Where the stages run: here, or as Slurm jobs (`sbatch` arrays for the stages that run
        /// in parts, `afterok` between them); with --wait, follow the jobs to the end.
        #[arg(long, value_enum, default_value_t = Executor::Local)]
        executor: Executor,
        #[command(flatten)]
        slurm: crate::slurm::SlurmOptions,
        /// Run this stage alone, its needs resolved in the whole pipeline (what an executor's
        /// task runs).
        #[arg(long, value_name = "STAGE", conflicts_with_all = ["until", "force"])]
        stage: Option<String>,
        /// With --stage: run part I (from 0) of N of it.
        #[arg(long, value_name = "I/N", requires = "stage", conflicts_with = "commit",
              value_parser = clap::value_parser!(crate::io::chunks::Part))]
        shard: Option<crate::io::chunks::Part>,
        /// With --stage: commit its parts once all are done.
        #[arg(long, requires = "stage")]
        commit: bool,
        /// In a sweep, run this model's branch alone (its trunk must have finished): what a
        /// task of the Slurm array over the models runs.
        #[arg(long, value_name = "NAME", conflicts_with = "stage")]
        model: Option<String>,
    },
    /// One line per stage of a run: fresh, stale, missing or failed, rows, wall time.
    Status {
        /// The run directory.
        run: PathBuf,
        /// Also compare against this pipeline's current config and inputs (stale reasons).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Print the manifest's stage records as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Schema, row count and first rows of a Parquet or Arrow IPC file.
    Inspect {
        /// The file.
        file: PathBuf,
        /// Rows to show.
        #[arg(short = 'n', long, default_value_t = 10)]
        rows: usize,
    },
    /// SQL over the tables of finished runs (polars): `simat query RUN... "SELECT ..."`. Every
    /// Parquet or Arrow table a finished stage wrote is a table by its name (`results`,
    /// `breakdown`, `scores`, `queries`, ...); several runs are unioned under a `run` column.
    Query {
        /// Run directories, then the SQL (the last argument).
        #[arg(required = true, num_args = 1.., value_name = "RUN... SQL")]
        args: Vec<String>,
        /// List the tables and their columns instead (every argument is a run).
        #[arg(long)]
        tables: bool,
        /// Output format (default: aligned columns; parquet for an --out FILE.parquet).
        #[arg(long, value_enum)]
        format: Option<query::Format>,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// At most this many rows in the aligned table on stdout.
        #[arg(long, default_value_t = 100)]
        max_rows: usize,
    },
    /// An embedding store (.arrow) for other tools: FILE.npy (float32 N × D, keys by row in
    /// FILE.keys.csv) or FILE.parquet (keys and a FLOAT[D] list column).
    Export {
        /// The embedding store, e.g. RUN/embed/image_embeddings.arrow.
        store: PathBuf,
        /// The output: .npy or .parquet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Is a difference real? Two runs' SIMAT scores (or two results.parquet), query by query:
    /// per head set, λ and split, A − B with its paired bootstrap interval and the two-sided
    /// p-value of a paired sign-flip permutation test. The runs must score the same queries.
    Compare {
        /// Run A (or its score/results.parquet).
        a: PathBuf,
        /// Run B.
        b: PathBuf,
        /// Only this head set (default: each that both runs have).
        #[arg(long)]
        heads: Option<String>,
        /// Only this λ.
        #[arg(long = "lam", visible_alias = "lambda")]
        lambda: Option<f64>,
        /// Bootstrap resamples of the interval (stratified by split).
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        /// Permutations of the test.
        #[arg(long, default_value_t = 10_000)]
        permutations: usize,
        /// The seed of the resamples and permutations (SplitMix64, as score's).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The interval's confidence.
        #[arg(long, default_value_t = 0.95)]
        confidence: f64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = compare::Format::Table)]
        format: compare::Format,
    },
    /// One row per run × head set: λ chosen by a named protocol, test SIMAT@1 with its
    /// bootstrap interval, SIMAT@5 and the score per field; best first.
    Leaderboard {
        /// Run directories (each scored; a sweep's run stands for its models).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// How λ is chosen: best-dev (the best λ on dev, reported on test), lambda1, or
        /// best-test (optimistic, named so).
        #[arg(long, value_enum, default_value_t = crate::leaderboard::Protocol::BestDev)]
        protocol: crate::leaderboard::Protocol,
        /// Output format.
        #[arg(long, value_enum, default_value_t = leaderboard::Format::Table)]
        format: leaderboard::Format,
        /// Also write one CLIP_benchmark-style JSON file per row into this folder.
        #[arg(long, value_name = "DIR")]
        clip_benchmark: Option<PathBuf>,
    },
    /// Exact inner-product k-NN between two matrices (.npy, Arrow IPC or Parquet).
    Knn {
        /// Database, n × d.
        #[arg(long)]
        db: PathBuf,
        /// Queries, m × d.
        #[arg(long)]
        queries: PathBuf,
        /// Neighbours per query.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Per query, one database row to skip (.npy of m integers; negative skips none).
        #[arg(long)]
        exclude: Option<PathBuf>,
        /// Output Parquet: query, rank, id, similarity.
        #[arg(long)]
        out: PathBuf,
        /// Scoring arithmetic: `auto` uses bf16 with an exact f32 re-rank where the CPU has
        /// bf16 units (AMX, AVX-512 BF16), f32 elsewhere; every choice returns the same results.
        #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
        precision: PrecisionArg,
    },
    /// Encode your own images and texts with a model folder: OUT/image_embeddings.arrow (key,
    /// embedding) and OUT/text_embeddings.arrow (text, embedding), rows in input order, the raw
    /// outputs of the towers.
    Encode {
        #[command(flatten)]
        model: ModelRunConfig,
        /// Image files, or folders of PNG/JPEG files (sorted by name); repeatable.
        #[arg(long, num_args = 1..)]
        images: Vec<PathBuf>,
        /// A text file: one text per line.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Render stand-in JPEGs for the images of a SIMAT release's benchmark regions (boxes and
    /// names drawn), to run the official pipeline without Visual Genome's images.
    StandIns {
        /// The release folder (retrieval_db.tsv, triplets.csv).
        #[arg(long)]
        release: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Which ONNX Runtime simat loads, and (with --model) a model's inputs and outputs.
    Runtime {
        /// An ONNX model to load.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Write the documented schema of every stage output (the schemas/ folder).
    #[command(hide = true)]
    Schemas {
        /// Output folder.
        #[arg(long)]
        write: PathBuf,
    },
}

/// `simat run --executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Executor {
    /// In this process, stage after stage.
    Local,
    /// As Slurm jobs (see the README's "On a Slurm cluster").
    Slurm,
}

/// simat: regenerate and score the SIMAT benchmark, stage by stage, into Parquet.
#[derive(Debug, Parser)]
#[command(name = "simat", version, about, long_about = None)]
struct Globals {
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Explain why stages run (stale reasons) and print stage reports.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// When another simat runs stages in the run directory, wait for it instead of exiting.
    #[arg(long, global = true)]
    wait: bool,
}

/// The whole command line: the globals, the tools, and a subcommand per stage.
pub fn command() -> Command {
    let mut cmd = Tool::augment_subcommands(
        <Globals as clap::CommandFactory>::command()
            .subcommand_required(true)
            .arg_required_else_help(true),
    )
    .about("simat: regenerate and score the SIMAT benchmark, stage by stage, into Parquet")
    .long_about(None);
    for entry in stages::ALL {
        cmd = cmd.subcommand(entry.command());
    }
    cmd
}

/// Parse the command line, run it, and return the exit code.
pub fn main() -> ExitCode {
    let matches = command().get_matches();
    let quiet = matches.get_flag("quiet");
    let verbose = matches.get_flag("verbose");
    let ui = Ui::detect(quiet, verbose);
    init_logging(&ui);
    let result = dispatch(&matches, &ui);
    log_peak_memory();
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let message = err.to_string();
            eprintln!("error: {message}");
            // Typed errors already say their cause in their message; print only what is new.
            for cause in err.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(2)
        }
    }
}

/// Logs this process's peak resident memory at debug level (target `simat::memory`), from
/// Linux's `VmHWM`: unlike `getrusage`'s `ru_maxrss`, which keeps the peak of the process that
/// spawned simat where it was started with `vfork` (as Rust's `Command` and `posix_spawn` do),
/// it counts only simat's own memory.
fn log_peak_memory() {
    if !tracing::enabled!(target: "simat::memory", tracing::Level::DEBUG) {
        return;
    }
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
    if let Some(kib) = peak_kib {
        tracing::debug!(target: "simat::memory", peak_rss_kib = kib, "peak memory");
    }
}

/// Logs on stderr: `SIMAT_LOG` when set; else warnings, with progress events where no bar is
/// drawn (see [`Ui::progress`]), and everything at `info` with `-v`.
fn init_logging(ui: &Ui) {
    let default = match ui.style {
        crate::ui::OutputStyle::Quiet => "error",
        _ if ui.verbose => "info",
        crate::ui::OutputStyle::Plain => "warn,simat::progress=info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIMAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ui.style == crate::ui::OutputStyle::Terminal)
        .with_writer(std::io::stderr)
        .try_init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Exit code of a run: 1 when items were skipped, 0 otherwise.
fn exit_of(outcomes: &[StageOutcome]) -> ExitCode {
    if outcomes.iter().any(|o| o.skipped > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn engine<'a>(run_dir: &Path, ui: &'a Ui) -> Result<Engine<'a>> {
    Ok(Engine::new(run_dir, ui)?.with_catalogue(stages::providers_of))
}

fn run_stages(
    run_dir: &Path,
    stages: &[&dyn Stage],
    opts: &RunOptions,
    ui: &Ui,
) -> Result<Vec<StageOutcome>> {
    let outcomes = engine(run_dir, ui)?.run(stages, opts)?;
    if ui.verbose {
        for o in &outcomes {
            for (k, v) in &o.record.counters {
                eprintln!("{:>12} {}.{k} = {v}", "", o.stage);
            }
        }
    }
    Ok(outcomes)
}

fn dispatch(matches: &ArgMatches, ui: &Ui) -> Result<ExitCode> {
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    if let Some(entry) = stages::find(name) {
        let stage = entry.build_from_matches(sub)?;
        let run_dir = sub
            .get_one::<PathBuf>("run")
            .or_else(|| sub.get_one::<PathBuf>("run_dir"))
            .expect("required");
        let mut opts = RunOptions {
            wait: matches.get_flag("wait"),
            ..RunOptions::default()
        };
        if sub.get_flag("force") {
            opts.force.insert(stage.name().to_string());
        }
        // Only a shardable stage's subcommand has these.
        let shard = sub
            .try_get_one::<crate::io::chunks::Part>("shard")
            .ok()
            .flatten()
            .copied();
        let commit = sub.try_get_one::<bool>("commit").ok().flatten() == Some(&true);
        if let Some(part) = shard {
            engine(run_dir, ui)?.run_part(&[stage.as_ref()], stage.name(), part, &opts)?;
            return Ok(ExitCode::SUCCESS);
        }
        let outcomes = if commit {
            vec![engine(run_dir, ui)?.commit(&[stage.as_ref()], stage.name(), &opts)?]
        } else {
            run_stages(run_dir, &[stage.as_ref()], &opts, ui)?
        };
        if !matches!(ui.style, crate::ui::OutputStyle::Quiet) {
            if let Some(text) = entry.summary(&run_dir.clone())? {
                outln!("{text}");
            }
        }
        return Ok(exit_of(&outcomes));
    }
    match Tool::from_arg_matches(matches)? {
        Tool::Run {
            pipeline,
            run_dir,
            until,
            force,
            executor,
            slurm,
            stage,
            shard,
            commit,
            model,
        } => {
            let p = Pipeline::load_with_run_dir(&pipeline, run_dir.as_deref())?;
            let wait = matches.get_flag("wait");
            anyhow::ensure!(
                model.is_none() || p.sweep.is_some(),
                "--model: `{}` has no [sweep]; it runs the model of its [embed]",
                pipeline.display()
            );
            if let (Some(sweep), Some(name)) = (&p.sweep, &stage) {
                if sweep.has_stage(name) {
                    return run_sweep_task(sweep, name, shard.is_some() || commit, wait, ui);
                }
            }
            if let Some(name) = stage {
                return run_task(&p, &name, shard, commit, wait, ui);
            }
            if executor == Executor::Slurm {
                anyhow::ensure!(
                    force.is_empty(),
                    "--force is not taken with --executor slurm: remove the stage's folder's tables (or run `simat run ... --force STAGE` here) and submit again"
                );
                return run_on_slurm(&p, &slurm, until.as_deref(), wait, ui);
            }
            let opts = RunOptions {
                force: force.into_iter().collect::<BTreeSet<_>>(),
                until,
                wait,
                ..RunOptions::default()
            };
            if let Some(sweep) = &p.sweep {
                return run_sweep(&p, sweep, &opts, model.as_deref(), ui);
            }
            let outcomes = run_stages(&p.run_dir, &p.stages(), &opts, ui)?;
            if !matches!(ui.style, crate::ui::OutputStyle::Quiet) {
                let rows: Vec<_> = outcomes
                    .iter()
                    .map(|o| (o.stage.as_str(), o.ran_because.is_some(), &o.record))
                    .collect();
                print_summary(&p.run_dir, &rows)?;
            }
            Ok(exit_of(&outcomes))
        }
        Tool::Status {
            run,
            pipeline,
            json,
        } => status(&run, pipeline.as_deref(), json, ui),
        Tool::Inspect { file, rows } => inspect(&file, rows),
        Tool::Query {
            args,
            tables,
            format,
            out,
            max_rows,
        } => query::query(&args, tables, format, out.as_deref(), max_rows, ui),
        Tool::Export { store, out } => query::export(&store, &out, ui),
        Tool::Compare {
            a,
            b,
            heads,
            lambda,
            bootstrap,
            permutations,
            seed,
            confidence,
            format,
        } => compare::compare(
            &a,
            &b,
            &crate::compare::CompareOptions {
                heads,
                lambda,
                bootstrap,
                permutations,
                seed,
                confidence,
            },
            format,
            ui,
        ),
        Tool::Leaderboard {
            runs,
            protocol,
            format,
            clip_benchmark,
        } => leaderboard::leaderboard(&runs, protocol, format, clip_benchmark.as_deref(), ui),
        Tool::Knn {
            db,
            queries,
            k,
            exclude,
            out,
            precision,
        } => knn::knn(
            &db,
            &queries,
            k,
            exclude.as_deref(),
            &out,
            precision.into(),
            ui,
        ),
        Tool::Encode {
            model,
            images,
            texts,
            out,
        } => {
            anyhow::ensure!(
                !images.is_empty() || texts.is_some(),
                "nothing to encode: give --images and/or --texts"
            );
            model.check("encode")?;
            let start = std::time::Instant::now();
            let r = crate::model::runner::embed_files(&model, &images, texts.as_deref(), &out, ui)?;
            let secs = start.elapsed().as_secs_f64();
            ui.status(
                "Encoded",
                format!(
                    "{} images and {} texts (D = {}) in {secs:.2}s into {}",
                    r.images,
                    r.texts,
                    r.dim,
                    out.display()
                ),
            );
            for (p, f) in &r.failed {
                ui.warn(format!("skipped `{}`: {f}", p.display()));
            }
            Ok(if r.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Tool::StandIns { release, out } => {
            let start = std::time::Instant::now();
            let n = stages::synth::render_stand_ins(&release, &out, ui)?;
            ui.status(
                "Finished",
                format!(
                    "{n} stand-in images for {} in {} in {:.2}s",
                    release.display(),
                    out.display(),
                    start.elapsed().as_secs_f64()
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Tool::Runtime { model } => {
            let (_, path) = crate::model::environment()?;
            outln!("ONNX Runtime: {}", path.display());
            outln!("{}", crate::model::build_info()?);
            if let Some(m) = model {
                let model = crate::model::OnnxModel::load(&m, 0)?;
                outln!(
                    "{}: inputs {:?}, outputs {:?}",
                    m.display(),
                    model.inputs(),
                    model.outputs()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Tool::Schemas { write } => {
            let n = crate::schemas::write_all(&write)?;
            ui.status("Wrote", format!("{n} schemas under {}", write.display()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One stage of a pipeline, as an executor's task runs it: the whole stage, a part, or the commit.
fn run_task(
    p: &Pipeline,
    name: &str,
    shard: Option<crate::io::chunks::Part>,
    commit: bool,
    wait: bool,
    ui: &Ui,
) -> Result<ExitCode> {
    let stages = p.stages();
    let opts = RunOptions {
        wait,
        only: Some(name.to_string()),
        ..RunOptions::default()
    };
    let engine = engine(&p.run_dir, ui)?;
    if let Some(part) = shard {
        engine.run_part(&stages, name, part, &opts)?;
        return Ok(ExitCode::SUCCESS);
    }
    let outcomes = if commit {
        vec![engine.commit(&stages, name, &opts)?]
    } else {
        run_stages(&p.run_dir, &stages, &opts, ui)?
    };
    Ok(exit_of(&outcomes))
}

/// `simat run PIPELINE` on a pipeline with a `[sweep]`, here: the trunk, each model's branch,
/// and each model's report; a summary per run directory, then how to rank the models.
fn run_sweep(
    p: &Pipeline,
    sweep: &crate::sweep::Sweep,
    opts: &RunOptions,
    model: Option<&str>,
    ui: &Ui,
) -> Result<ExitCode> {
    let ran = crate::sweep::run_local(&p.run_dir, &p.stages(), sweep, opts, model, ui)?;
    let mut all = Vec::new();
    for (dir, name, outcomes) in &ran {
        if !matches!(ui.style, crate::ui::OutputStyle::Quiet) && !outcomes.is_empty() {
            if let Some(name) = name {
                outln!("model {name}:");
            }
            let rows: Vec<_> = outcomes
                .iter()
                .map(|o| (o.stage.as_str(), o.ran_because.is_some(), &o.record))
                .collect();
            print_summary(dir, &rows)?;
        }
        all.extend(outcomes.iter().cloned());
    }
    if model.is_none() && !matches!(ui.style, crate::ui::OutputStyle::Quiet) {
        outln!(
            "{} models under {}; `simat leaderboard {}` ranks them",
            sweep.branches.len(),
            p.run_dir.join(crate::sweep::MODELS_DIR).display(),
            p.run_dir.display()
        );
    }
    Ok(exit_of(&all))
}

/// An executor's task for a stage of a sweep's branches: `--stage report` runs every model's
/// report; the branch's other stages run in their branch (`--model NAME`).
fn run_sweep_task(
    sweep: &crate::sweep::Sweep,
    name: &str,
    in_parts: bool,
    wait: bool,
    ui: &Ui,
) -> Result<ExitCode> {
    anyhow::ensure!(
        name == "report" && !in_parts,
        "`{name}` is a stage of each model's branch in this sweep: run a model's branch with --model NAME (the models are {})",
        sweep.names().join(", ")
    );
    let opts = RunOptions {
        wait,
        ..RunOptions::default()
    };
    let outcomes: Vec<StageOutcome> = crate::sweep::run_reports(sweep, &opts, &[], ui)?
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    Ok(exit_of(&outcomes))
}

/// `simat run --executor slurm`: submit what is missing or stale (or find the jobs of an earlier
/// submission still at work), print the job ids, and with `--wait` follow them to the end.
fn run_on_slurm(
    p: &Pipeline,
    flags: &crate::slurm::SlurmOptions,
    until: Option<&str>,
    wait: bool,
    ui: &Ui,
) -> Result<ExitCode> {
    use crate::slurm::{self, Role};
    let settings = slurm::Settings::new(p, flags)?;
    let submitted = slurm::submit(p, &settings, until, wait, ui)?;
    let sub = &submitted.submission;
    let run_dir = p.run_dir.canonicalize()?;
    if submitted.earlier {
        ui.status(
            "Found",
            format!(
                "the jobs submitted {} s ago are still in Slurm's queue ({}); nothing new is submitted (scancel them to submit afresh)",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    .saturating_sub(sub.submitted_unix),
                sub.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        );
    } else if sub.jobs.is_empty() {
        ui.status("Fresh", "every stage: nothing to submit");
    } else {
        ui.status(
            "Submitted",
            format!(
                "{} jobs; scripts and logs under {}",
                sub.jobs.len(),
                run_dir.join(slurm::SLURM_DIR).display()
            ),
        );
    }
    if !submitted.earlier && !matches!(ui.style, crate::ui::OutputStyle::Quiet) {
        for job in &sub.jobs {
            let what = match job.role {
                Role::Stage => job.stage.clone(),
                Role::Parts => format!(
                    "{} parts {} of {}",
                    job.stage,
                    job.tasks
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    job.count
                ),
                Role::Commit => format!("{} commit", job.stage),
                Role::Models => format!(
                    "models {}",
                    job.tasks
                        .iter()
                        .map(|&t| job.models[t].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            outln!("{}\t{what}", job.id);
        }
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    slurm::follow(&run_dir, sub, ui)?;
    if !matches!(ui.style, crate::ui::OutputStyle::Quiet) {
        let manifest = Manifest::load(&run_dir)?;
        let rows: Vec<(&str, bool, &crate::engine::StageRecord)> = p
            .stages()
            .iter()
            .filter_map(|s| {
                let record = manifest.stages.get(s.name())?;
                let ran = sub.jobs.iter().any(|j| j.stage == s.name());
                Some((s.name(), ran, record))
            })
            .collect();
        print_summary(&run_dir, &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `run directory: …`, a line per stage (whether it ran, its outputs), and the last summary a
/// stage has to say.
fn print_summary(run_dir: &Path, rows: &[(&str, bool, &crate::engine::StageRecord)]) -> Result<()> {
    outln!("run directory: {}", run_dir.display());
    for (stage, ran, record) in rows {
        let state = if *ran { "ran" } else { "fresh" };
        outln!("  {stage:<9} {state:<6} {}", describe(stage, record));
    }
    // The last stage that has something to say.
    for (stage, _, _) in rows.iter().rev() {
        if let Some(entry) = stages::find(stage) {
            if let Some(text) = entry.summary(run_dir)? {
                outln!("{text}");
                break;
            }
        }
    }
    Ok(())
}

fn status(run: &Path, pipeline: Option<&Path>, json: bool, ui: &Ui) -> Result<ExitCode> {
    if !run.is_dir() || (!Manifest::path(run).exists() && pipeline.is_none()) {
        anyhow::bail!(
            "`{}` has no manifest.json: not a simat run directory (or nothing has run yet)",
            run.display()
        );
    }
    let manifest = Manifest::load(run)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(ExitCode::SUCCESS);
    }
    let planned: Vec<(String, Freshness)> = match pipeline {
        Some(p) => {
            let p = Pipeline::load_with_run_dir(p, Some(run))?;
            engine(run, ui)?.plan(&p.stages())?
        }
        None => vec![],
    };
    let order: Vec<&str> = stages::ALL.iter().map(|e| e.name()).collect();
    let mut names: Vec<String> = order
        .iter()
        .filter(|s| manifest.stages.contains_key(**s) || planned.iter().any(|(n, _)| n == *s))
        .map(|s| s.to_string())
        .collect();
    names.extend(
        manifest
            .stages
            .keys()
            .filter(|k| !order.contains(&k.as_str()))
            .cloned(),
    );
    for name in names {
        let rec = manifest.stages.get(&name);
        let plan = planned.iter().find(|(n, _)| *n == name).map(|(_, f)| f);
        let (word, why) = match (rec, plan) {
            (None, _) => ("missing", None),
            (Some(r), _) if r.status == crate::engine::StageStatus::Failed => {
                ("failed", r.error.clone())
            }
            (Some(r), _) if r.status == crate::engine::StageStatus::Running => {
                ("stale", Some("interrupted (or running now)".into()))
            }
            (Some(_), Some(Freshness::Stale(reason))) => ("stale", Some(reason.to_string())),
            (Some(_), Some(Freshness::Blocked(msg))) => ("stale", Some(msg.clone())),
            (Some(r), _) => {
                // Without the pipeline, what the manifest alone can tell: outputs present, and
                // upstream stages unchanged since this one ran.
                let dir = run.join(&name);
                let upstream_changed = r.detail.as_ref().and_then(|d| {
                    d.upstream.iter().find_map(|(up, digest)| {
                        let now = manifest.record(up).map(|u| u.output_digest());
                        (now.as_deref() != Some(digest.as_str())).then(|| up.clone())
                    })
                });
                match (
                    r.outputs.iter().find(|o| !o.is_present_in(&dir)),
                    upstream_changed,
                ) {
                    (Some(o), _) => ("stale", Some(format!("output {} is missing", o.file))),
                    (None, Some(up)) => ("stale", Some(format!("upstream `{up}` changed"))),
                    (None, None) => ("fresh", None),
                }
            }
        };
        let detail = rec.map(|r| describe(&name, r)).unwrap_or(name.clone());
        match why {
            Some(w) => outln!("{word:>8}  {detail}: {w}"),
            None => outln!("{word:>8}  {detail}"),
        }
    }
    for name in order {
        if let Some(line) = parts_line(run, name)? {
            outln!("{:>8}  {name}: {line}", "parts");
        }
    }
    for (name, dir) in crate::sweep::branches_of(run)? {
        let m = Manifest::load_without_base(&dir)?;
        let done = m
            .stages
            .values()
            .filter(|r| r.status == crate::engine::StageStatus::Done)
            .count();
        outln!(
            "{:>8}  {name}: {done} of {} stages done (simat status {})",
            "model",
            m.stages.len(),
            dir.display()
        );
    }
    for line in crate::slurm::status_lines(run)? {
        outln!("{:>8}  {line}", "slurm");
    }
    Ok(ExitCode::SUCCESS)
}

/// `2 of 3 done (0/3, 2/3), 1 running (1/3)`: a stage's parts not yet committed, from their
/// records and locks (a part's lock is held while it runs).
fn parts_line(run: &Path, stage: &str) -> Result<Option<String>> {
    use crate::engine::parts::PARTS_DIR;
    let dir = run.join(stage);
    let records = crate::engine::PartRecord::all(&dir)?;
    let parts_dir = dir.join(PARTS_DIR);
    let mut running = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&parts_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(part) = name.strip_suffix(".lock") else {
                continue;
            };
            let held = std::fs::File::open(e.path()).is_ok_and(|f| {
                matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
            });
            if held {
                running.push(part.replace("-of-", "/"));
            }
        }
    }
    if records.is_empty() && running.is_empty() {
        return Ok(None);
    }
    running.sort();
    let count = records.iter().map(|(_, r)| r.part.count).max().unwrap_or(0);
    let done: Vec<String> = records
        .iter()
        .filter(|(_, r)| r.part.count == count)
        .map(|(_, r)| r.part.to_string())
        .collect();
    let mut line = format!("{} of {count} done ({})", done.len(), done.join(", "));
    if !running.is_empty() {
        line += &format!(", {} running ({})", running.len(), running.join(", "));
    }
    if done.len() == count && count > 0 {
        line += &format!("; commit with `simat {stage} RUN --commit`");
    }
    Ok(Some(line))
}

fn inspect(file: &Path, rows: usize) -> Result<ExitCode> {
    let i = crate::io::inspect(file, rows)
        .with_context(|| format!("cannot inspect `{}`", file.display()))?;
    outln!(
        "{} ({:?}, {} rows in {} {})",
        file.display(),
        i.kind,
        i.rows,
        i.groups,
        match i.kind {
            crate::io::FileKind::Parquet => "row groups",
            crate::io::FileKind::ArrowIpc => "record batches",
        }
    );
    outln!("schema:");
    for f in i.schema.fields() {
        outln!(
            "  {}: {}{}",
            f.name(),
            f.data_type(),
            if f.is_nullable() { " (nullable)" } else { "" }
        );
    }
    outln!("first {} rows:", i.head.num_rows());
    outln!("{}", arrow::util::pretty::pretty_format_batches(&[i.head])?);
    Ok(ExitCode::SUCCESS)
}

/// `--precision` of `simat knn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// bf16 where the CPU has bf16 units, f32 elsewhere.
    Auto,
    /// f32 only.
    F32,
    /// bf16 (an error where the CPU lacks bf16 units).
    Bf16,
}

impl From<PrecisionArg> for crate::linalg::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Auto => crate::linalg::Precision::Auto,
            PrecisionArg::F32 => crate::linalg::Precision::F32,
            PrecisionArg::Bf16 => crate::linalg::Precision::Bf16,
        }
    }
}

/// `rows` as a pretty JSON array (`json`) or as CSV with a header, on `out`: the machine formats
/// of `compare` and `leaderboard`.
fn write_records<T: serde::Serialize>(
    out: &mut impl std::io::Write,
    rows: &[T],
    json: bool,
) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, rows)?;
        writeln!(out)?;
    } else {
        let mut w = csv::Writer::from_writer(out);
        for r in rows {
            w.serialize(r)?;
        }
        w.flush()?;
    }
    Ok(())
}
