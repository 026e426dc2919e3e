//! The `simat` command line: parses arguments and calls the library.

pub mod knn;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::engine::{describe, Engine, Freshness, Manifest, RunOptions, Stage, StageOutcome};
use crate::pipeline::Pipeline;
use crate::stages::embed::ModelRunConfig;
use crate::stages::import::{ImportConfig, ImportStage};
use crate::stages::import_embeddings::{ImportEmbeddingsConfig, ImportEmbeddingsStage};
use crate::stages::ingest::{IngestConfig, IngestStage};
use crate::stages::queries::{QueriesConfig, QueriesStage};
use crate::stages::retrieve::{RetrieveConfig, RetrieveStage};
use crate::stages::score::{ScoreConfig, ScoreStage};
use crate::stages::synth::SynthConfig;
use crate::stages::triplets::{TripletsConfig, TripletsStage};
use crate::tables::dataset::QuerySet;
use crate::ui::Ui;

/// simat: regenerate and score the SIMAT benchmark, stage by stage, into Parquet.
#[derive(Debug, Parser)]
#[command(name = "simat", version, about, long_about = None)]
struct Cli {
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Explain why stages run (stale reasons) and print stage reports.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Visual Genome 1.4 JSON into RUN/ingest/*.parquet.
    Ingest {
        /// Visual Genome folder (image_data.json, relationships.json, objects.json, attributes.json).
        #[arg(long)]
        vg: PathBuf,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// SIMAT triplet extraction into RUN/triplets/{regions,triplets}.parquet.
    Triplets {
        /// Vocabulary TOML (subjects, relations, min_region_side, captions), or a pipeline file
        /// with a [triplets] section. Default: SIMAT's vocabulary.
        #[arg(long)]
        vocab: Option<PathBuf>,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// One PNG per region, cut at its union box: RUN/crops/crops/*.png and crops.parquet.
    Crops {
        /// Images folder (`<image_id>.jpg`, also under VG_100K/ and VG_100K_2/).
        #[arg(long)]
        images: PathBuf,
        /// Images per checkpointed chunk.
        #[arg(long, default_value_t = 512)]
        chunk_images: usize,
        /// A box reaching outside its image: `clamp` it to the image, or `pad` with black as
        /// Pillow's `Image.crop` (and the release's prepare_dataset.py) does.
        #[arg(long, value_enum, default_value = "clamp")]
        outside: crate::stages::crops::Outside,
        /// Crop the regions of the imported release's dataset instead of the triplets stage's.
        #[arg(long)]
        from_import: bool,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// Write a synthetic Visual Genome (the four JSON files, optionally JPEGs).
    Synth {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 1000)]
        images: u64,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also render one JPEG per image under OUT/images/.
        #[arg(long)]
        render: bool,
        /// Fraction of relationships planted with the SIMAT vocabulary.
        #[arg(long, default_value_t = 0.02)]
        plant_rate: f64,
        /// Instead: render stand-in JPEGs for the images of this SIMAT release's benchmark
        /// regions (boxes and names drawn), for running the official pipeline without Visual
        /// Genome's images.
        #[arg(long, value_name = "RELEASE")]
        stand_in_for: Option<PathBuf>,
    },
    /// The dataset of a regenerated benchmark: RUN/select/dataset.parquet.
    Select {
        /// `labels`, or a regions × triplets similarity matrix (.npy).
        #[arg(long, default_value = "labels")]
        oracle: String,
        /// Keep regions whose similarity with their own caption is at least this.
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
        /// Drop triplets shown by fewer distinct images.
        #[arg(long, default_value_t = 2)]
        min_images: usize,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// The official SIMAT release (retrieval_db.tsv, triplets.csv, captions.txt, transfos.csv)
    /// into RUN/import/{regions,triplets,dataset,queries}.parquet.
    ImportSimat {
        /// The release folder.
        #[arg(long)]
        release: PathBuf,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// Raw image and word embeddings from files into RUN/embed/*.arrow, joined by key.
    ImportEmbeddings {
        /// Raw image embeddings: keyed by region (a PyTorch dict region_id → vector such as the
        /// release's simat_img_clip.pt; Arrow/Parquet with a region_id, key or dataset_id
        /// column), or a .npy with one row per dataset_id, in dataset_id order.
        #[arg(long)]
        images: PathBuf,
        /// Raw word embeddings: keyed by word (the release's simat_words_clip.ptd; Arrow/Parquet
        /// with a word column), or a .npy whose rows follow --words.
        #[arg(long)]
        word_vectors: PathBuf,
        /// Words, one per line: the row order of a .npy of word vectors.
        #[arg(long)]
        words: Option<PathBuf>,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// Transformation queries for the run's dataset: RUN/queries/queries.parquet.
    Queries {
        /// Seed of the dev/test split (by region).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fraction of regions in the test split.
        #[arg(long, default_value_t = 0.5)]
        test_fraction: f64,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// Answer every transformation query for each λ: RUN/retrieve/retrievals.parquet.
    Retrieve {
        #[command(flatten)]
        retrieval: RetrievalArgs,
        #[command(flatten)]
        run: StageRunArgs,
    },
    /// The SIMAT score (retrieving first when the retrievals are missing or stale).
    Score {
        /// `labels`, or an images × captions similarity matrix (.npy).
        #[arg(long, default_value = "labels")]
        oracle: String,
        /// Which split to report: dev, test, or all (dev, test and both).
        #[arg(long, default_value = "all")]
        split: String,
        /// Success threshold on the oracle's similarity.
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
        #[command(flatten)]
        retrieval: RetrievalArgs,
        #[command(flatten)]
        run: StageRunArgs,
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
        /// Output Parquet: query, rank, id, score.
        #[arg(long)]
        out: PathBuf,
    },
    /// Embed your own images and texts with a model folder (scripts/export_clip.py):
    /// OUT/image_embeddings.arrow (key, embedding) and OUT/text_embeddings.arrow (text,
    /// embedding), rows in input order, L2-normalised.
    Embed {
        /// The model folder (image.onnx, text.onnx, tokenizer.json, model.toml).
        #[arg(long)]
        model: PathBuf,
        /// Image files, or folders of PNG/JPEG files (sorted by name); repeatable.
        #[arg(long, num_args = 1..)]
        images: Vec<PathBuf>,
        /// A text file: one text per line.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// `cpu`, or `cuda:N` (needs the onnxruntime-gpu library).
        #[arg(long, default_value = "cpu")]
        device: crate::model::Device,
        /// Images or texts per inference batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// ONNX Runtime intra-op threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
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

#[derive(Debug, Args)]
struct RetrievalArgs {
    /// λ values (repeat or separate with commas).
    #[arg(long = "lambda", value_delimiter = ',', num_args = 1..)]
    lambdas: Vec<f64>,
    /// Results kept per query and λ.
    #[arg(short, default_value_t = 5)]
    k: usize,
    /// The queries: `release` (transfos.csv, from import-simat) or `regenerated` (the queries
    /// stage). Needed when the run has both; otherwise the one it has.
    #[arg(long, value_enum)]
    queries: Option<QuerySet>,
    /// Linear heads on the raw embeddings: a PyTorch file (the release's head_clip_t=0.1.pt) or
    /// the prefix of PREFIX_{img,txt}_head_{weight,bias}.npy.
    #[arg(long, value_name = "FILE_OR_PREFIX")]
    heads: Option<PathBuf>,
    /// Apply --heads even to embeddings that are already unit-norm (heads trained on
    /// normalised vectors).
    #[arg(long)]
    allow_normalised: bool,
}

impl RetrievalArgs {
    fn config(&self, run_dir: &Path, ui: &Ui) -> Result<RetrieveConfig> {
        let have: Vec<QuerySet> = [QuerySet::Release, QuerySet::Regenerated]
            .into_iter()
            .filter(|q| stage_done(run_dir, q.stage()).unwrap_or(false))
            .collect();
        let queries = match (self.queries, have.as_slice()) {
            (Some(q), _) => q,
            (None, [only]) => {
                ui.status("Queries", only.describe());
                *only
            }
            (None, []) => anyhow::bail!(
                "`{}` has no queries: run `simat import-simat` (the release's) or `simat queries` (regenerated) first",
                run_dir.display()
            ),
            (None, _) => anyhow::bail!(
                "`{}` has both the release's queries (import) and regenerated ones (queries): say which with --queries release or --queries regenerated",
                run_dir.display()
            ),
        };
        Ok(RetrieveConfig {
            lambdas: if self.lambdas.is_empty() {
                crate::stages::retrieve::DEFAULT_LAMBDAS.to_vec()
            } else {
                self.lambdas.clone()
            },
            k: self.k,
            queries,
            heads: self.heads.clone(),
            allow_normalised: self.allow_normalised,
        })
    }
}

#[derive(Debug, Args)]
struct StageRunArgs {
    /// The run directory.
    #[arg(long = "run", value_name = "RUN")]
    run_dir: PathBuf,
    /// Rerun even if fresh.
    #[arg(long)]
    force: bool,
}

/// Parse the command line, run it, and return the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = Ui::detect(cli.quiet, cli.verbose);
    init_logging(cli.verbose);
    match run(cli.command, &ui) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIMAT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if verbose { "info" } else { "warn" })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

fn run_stages(
    run_dir: &Path,
    stages: &[&dyn Stage],
    opts: &RunOptions,
    ui: &Ui,
) -> Result<Vec<StageOutcome>> {
    let engine = Engine::new(run_dir, ui)?;
    let outcomes = engine.run(stages, opts)?;
    if ui.verbose {
        for o in &outcomes {
            for (k, v) in &o.record.counters {
                eprintln!("{:>12} {}.{k} = {v}", "", o.stage);
            }
        }
    }
    Ok(outcomes)
}

fn single(run: &StageRunArgs, stage: &dyn Stage, ui: &Ui) -> Result<ExitCode> {
    let mut opts = RunOptions::default();
    if run.force {
        opts.force.insert(stage.name().to_string());
    }
    let outcomes = run_stages(&run.run_dir, &[stage], &opts, ui)?;
    Ok(exit_of(&outcomes))
}

fn run(command: Command, ui: &Ui) -> Result<ExitCode> {
    match command {
        Command::Run {
            pipeline,
            run_dir,
            until,
            force,
        } => {
            let p = Pipeline::load_with_run_dir(&pipeline, run_dir.as_deref())?;
            let stages = p.stages();
            let refs: Vec<&dyn Stage> = stages.iter().map(|s| s.as_ref()).collect();
            let opts = RunOptions {
                force: force.into_iter().collect::<BTreeSet<_>>(),
                until,
            };
            let outcomes = run_stages(&p.run_dir, &refs, &opts, ui)?;
            if !matches!(ui.style, crate::ui::OutputStyle::Quiet) {
                print_summary(&p.run_dir, &outcomes)?;
            }
            Ok(exit_of(&outcomes))
        }
        Command::Status {
            run,
            pipeline,
            json,
        } => status(&run, pipeline.as_deref(), json, ui),
        Command::Inspect { file, rows } => inspect(&file, rows),
        Command::Ingest { vg, run } => {
            let stage = IngestStage {
                config: IngestConfig {
                    vg,
                    block_bytes: crate::io::json_stream::DEFAULT_BLOCK,
                },
            };
            single(&run, &stage, ui)
        }
        Command::Triplets { vocab, run } => {
            let config = match vocab {
                Some(path) => TripletsConfig::load(&path)?,
                None => TripletsConfig::default(),
            };
            single(&run, &TripletsStage { config }, ui)
        }
        Command::Synth {
            out,
            images,
            seed,
            render,
            plant_rate,
            stand_in_for,
        } => {
            if let Some(release) = stand_in_for {
                let start = std::time::Instant::now();
                let n = crate::stages::synth::render_stand_ins(&release, &out, ui)?;
                ui.status(
                    "Finished",
                    format!(
                        "{n} stand-in images for {} in {} in {:.2}s",
                        release.display(),
                        out.display(),
                        start.elapsed().as_secs_f64()
                    ),
                );
                return Ok(ExitCode::SUCCESS);
            }
            if !(0.0..=1.0).contains(&plant_rate) {
                anyhow::bail!("--plant-rate must be between 0 and 1, got {plant_rate}");
            }
            let config = SynthConfig {
                images,
                seed,
                render,
                plant_rate,
            };
            let start = std::time::Instant::now();
            let s = crate::stages::synth::synthesize(&config, &out, ui)?;
            ui.status(
                "Finished",
                format!(
                    "{} images, {} objects, {} relationships ({:.1} MB of relationships.json){} in {:.2}s",
                    s.images,
                    s.objects,
                    s.relationships,
                    s.relationships_bytes as f64 / 1e6,
                    if render { ", rendered" } else { "" },
                    start.elapsed().as_secs_f64()
                ),
            );
            println!("{}", serde_json::to_string(&s)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Crops {
            images,
            chunk_images,
            outside,
            from_import,
            run,
        } => single(
            &run,
            &crate::stages::crops::CropsStage {
                config: crate::stages::crops::CropsConfig {
                    images,
                    regions_stage: if from_import { "import" } else { "triplets" }.into(),
                    chunk_images,
                    outside,
                },
            },
            ui,
        ),
        Command::Select {
            oracle,
            threshold,
            min_images,
            run,
        } => single(
            &run,
            &crate::stages::select::SelectStage {
                config: crate::stages::select::SelectConfig {
                    oracle,
                    threshold,
                    min_images,
                    require_crop: false,
                },
            },
            ui,
        ),
        Command::ImportSimat { release, run } => single(
            &run,
            &ImportStage {
                config: ImportConfig { release },
            },
            ui,
        ),
        Command::ImportEmbeddings {
            images,
            words,
            word_vectors,
            run,
        } => single(
            &run,
            &ImportEmbeddingsStage {
                config: ImportEmbeddingsConfig {
                    images,
                    words,
                    word_vectors,
                    dataset_stage: dataset_stage_of(&run.run_dir)?,
                },
            },
            ui,
        ),
        Command::Queries {
            seed,
            test_fraction,
            run,
        } => single(
            &run,
            &QueriesStage {
                config: QueriesConfig {
                    seed,
                    test_fraction,
                    dataset_stage: dataset_stage_of(&run.run_dir)?,
                },
            },
            ui,
        ),
        Command::Retrieve { retrieval, run } => {
            let config = retrieval.config(&run.run_dir, ui)?;
            single(&run, &RetrieveStage { config }, ui)
        }
        Command::Score {
            oracle,
            split,
            threshold,
            retrieval,
            run,
        } => {
            let rconfig = retrieval.config(&run.run_dir, ui)?;
            let retrieve = RetrieveStage {
                config: rconfig.clone(),
            };
            let score = ScoreStage {
                config: ScoreConfig {
                    oracle,
                    threshold,
                    split,
                    queries: rconfig.queries,
                    // The release's queries are of the release's dataset.
                    dataset_stage: match rconfig.queries {
                        QuerySet::Release => "import".into(),
                        QuerySet::Regenerated => dataset_stage_of(&run.run_dir)?,
                    },
                },
            };
            let mut opts = RunOptions::default();
            if run.force {
                opts.force.insert("retrieve".into());
            }
            let outcomes = run_stages(&run.run_dir, &[&retrieve, &score], &opts, ui)?;
            print_scores(&run.run_dir.join("score").join("scores.json"))?;
            Ok(exit_of(&outcomes))
        }
        Command::Knn {
            db,
            queries,
            k,
            exclude,
            out,
        } => knn(&db, &queries, k, exclude.as_deref(), &out, ui),
        Command::Embed {
            model,
            images,
            texts,
            out,
            device,
            batch_size,
            threads,
        } => {
            anyhow::ensure!(
                !images.is_empty() || texts.is_some(),
                "nothing to embed: give --images and/or --texts"
            );
            let config = ModelRunConfig {
                device,
                batch_size,
                threads,
                ..ModelRunConfig::new(model)
            };
            let start = std::time::Instant::now();
            let r =
                crate::stages::embed::embed_files(&config, &images, texts.as_deref(), &out, ui)?;
            let secs = start.elapsed().as_secs_f64();
            ui.status(
                "Embedded",
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
        Command::Runtime { model } => {
            let (_, path) = crate::model::environment()?;
            println!("ONNX Runtime: {}", path.display());
            println!("{}", crate::model::build_info()?);
            if let Some(m) = model {
                let model = crate::model::OnnxModel::load(&m, 0)?;
                println!(
                    "{}: inputs {:?}, outputs {:?}",
                    m.display(),
                    model.inputs(),
                    model.outputs()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas { write } => {
            let n = crate::schemas::write_all(&write)?;
            ui.status("Wrote", format!("{n} schemas under {}", write.display()));
            Ok(ExitCode::SUCCESS)
        }
    }
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
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(ExitCode::SUCCESS);
    }
    let planned: Vec<(String, Freshness)> = match pipeline {
        Some(p) => {
            let p = Pipeline::load(p)?;
            let stages = p.stages();
            let refs: Vec<&dyn Stage> = stages.iter().map(|s| s.as_ref()).collect();
            Engine::new(run, ui)?.plan(&refs)?
        }
        None => vec![],
    };
    let mut names: Vec<String> = crate::engine::STAGE_ORDER
        .iter()
        .filter(|s| manifest.stages.contains_key(**s) || planned.iter().any(|(n, _)| n == *s))
        .map(|s| s.to_string())
        .collect();
    names.extend(
        manifest
            .stages
            .keys()
            .filter(|k| !crate::engine::STAGE_ORDER.contains(&k.as_str()))
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
                        let now = manifest.stages.get(up).map(|u| u.output_digest());
                        (now.as_deref() != Some(digest.as_str())).then(|| up.clone())
                    })
                });
                match (
                    r.outputs.iter().find(|o| !dir.join(&o.file).is_file()),
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
            Some(w) => println!("{word:>8}  {detail}: {w}"),
            None => println!("{word:>8}  {detail}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(file: &Path, rows: usize) -> Result<ExitCode> {
    let i = crate::io::inspect(file, rows)
        .with_context(|| format!("cannot inspect `{}`", file.display()))?;
    println!(
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
    println!("schema:");
    for f in i.schema.fields() {
        println!(
            "  {}: {}{}",
            f.name(),
            f.data_type(),
            if f.is_nullable() { " (nullable)" } else { "" }
        );
    }
    println!("first {} rows:", i.head.num_rows());
    println!("{}", arrow::util::pretty::pretty_format_batches(&[i.head])?);
    Ok(ExitCode::SUCCESS)
}

fn print_summary(run_dir: &Path, outcomes: &[StageOutcome]) -> Result<()> {
    println!("run directory: {}", run_dir.display());
    for o in outcomes {
        let state = if o.ran_because.is_some() {
            "ran"
        } else {
            "fresh"
        };
        println!(
            "  {:<9} {:<6} {}",
            o.stage,
            state,
            describe(&o.stage, &o.record)
        );
    }
    let scores = run_dir.join("score").join("scores.json");
    if outcomes.iter().any(|o| o.stage == "score") && scores.is_file() {
        println!("SIMAT scores (% of queries whose first image the oracle accepts):");
        return print_scores(&scores);
    }
    let triplets = run_dir.join("triplets").join("triplets.parquet");
    if outcomes.iter().any(|o| o.stage == "triplets") && triplets.is_file() {
        let batch = crate::io::read_all(&triplets)?;
        let n = batch.num_rows();
        let col = |name: &str| batch.column_by_name(name).cloned();
        let (Some(n_regions), Some(caption)) = (col("n_regions"), col("caption")) else {
            return Ok(());
        };
        let n_regions =
            arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&n_regions);
        let caption = arrow::array::AsArray::as_string::<i32>(&caption);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(n_regions.value(i)));
        println!("{n} triplets; the most frequent:");
        for &i in order.iter().take(8) {
            println!("  {:>6} regions  {}", n_regions.value(i), caption.value(i));
        }
    }
    Ok(())
}

/// Where a run's dataset is: `select` when that stage has run (a regenerated benchmark), else
/// `import` (the release).
fn dataset_stage_of(run_dir: &Path) -> Result<String> {
    Ok(if stage_done(run_dir, "select")? {
        "select"
    } else {
        "import"
    }
    .to_string())
}

/// Whether `stage` has finished in the run directory's manifest.
fn stage_done(run_dir: &Path, stage: &str) -> Result<bool> {
    let m = Manifest::load(run_dir)?;
    Ok(m.stages
        .get(stage)
        .is_some_and(|r| r.status == crate::engine::StageStatus::Done))
}

fn print_scores(path: &Path) -> Result<()> {
    let file = crate::stages::score::ScoresFile::read(path)?;
    let p = &file.provenance;
    let set = p["query_set"].as_str().unwrap_or("?");
    let described = match set {
        "release" => QuerySet::Release.describe(),
        "regenerated" => QuerySet::Regenerated.describe(),
        _ => "unknown queries",
    };
    let model = match (
        &p["embeddings"]["model"]["name"],
        &p["embeddings"]["source"],
    ) {
        (serde_json::Value::String(name), _) => format!("model {name}"),
        (_, serde_json::Value::String(source)) => format!("embeddings from {source}"),
        _ => "embeddings".to_string(),
    };
    let heads = p["heads"]["name"]
        .as_str()
        .map(|h| format!("heads {h}"))
        .unwrap_or_else(|| "no heads".into());
    let oracle = p["oracle"]["file"]
        .as_str()
        .or(p["oracle"]["kind"].as_str())
        .unwrap_or("?");
    println!(
        "{} {} queries; {model}, {heads}; oracle {oracle} > {}",
        described, p["queries"]["rows"], p["threshold"]
    );
    let rows = file.scores;
    let fields = ["subj", "rel", "obj", "all"];
    println!(
        "{:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "lambda", "split", "subj", "rel", "obj", "all", "queries"
    );
    let mut keys: Vec<(f64, String)> = Vec::new();
    for r in &rows {
        if !keys.iter().any(|(l, s)| *l == r.lambda && *s == r.split) {
            keys.push((r.lambda, r.split.clone()));
        }
    }
    for (lambda, split) in keys {
        let get = |f: &str| {
            rows.iter()
                .find(|r| r.lambda == lambda && r.split == split && r.field == f)
        };
        let cells: Vec<String> = fields
            .iter()
            .map(|f| {
                get(f)
                    .map(|r| format!("{:8.2}", r.score))
                    .unwrap_or_default()
            })
            .collect();
        let n = get("all").map(|r| r.n_queries).unwrap_or(0);
        println!("{lambda:>8} {split:>6} {} {n:>9}", cells.join(" "));
    }
    Ok(())
}

fn knn(
    db: &Path,
    queries: &Path,
    k: usize,
    exclude: Option<&Path>,
    out: &Path,
    ui: &Ui,
) -> Result<ExitCode> {
    anyhow::ensure!(k >= 1, "-k must be at least 1");
    let start = std::time::Instant::now();
    let db_m = crate::io::store::read_matrix(db)?;
    let q_m = crate::io::store::read_matrix(queries)?;
    anyhow::ensure!(
        db_m.cols == q_m.cols,
        "`{}` has dimension {} but `{}` has {}",
        db.display(),
        db_m.cols,
        queries.display(),
        q_m.cols
    );
    for (m, p) in [(&db_m, db), (&q_m, queries)] {
        if let Some(row) = crate::linalg::first_non_finite(m) {
            anyhow::bail!("`{}`: row {row} holds NaN or infinity", p.display());
        }
    }
    let exclude = match exclude {
        Some(p) => {
            let ids = crate::io::store::read_npy_ids(p)?;
            anyhow::ensure!(
                ids.len() == q_m.rows,
                "`{}` has {} ids for {} queries",
                p.display(),
                ids.len(),
                q_m.rows
            );
            Some(ids)
        }
        None => None,
    };
    let loaded = start.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let hits = crate::linalg::knn(db_m.view(), q_m.view(), k, exclude.as_deref());
    let search = t.elapsed().as_secs_f64();
    let rows = crate::cli::knn::write_hits(out, &hits)?;
    let gflop = 2.0 * db_m.rows as f64 * q_m.rows as f64 * db_m.cols as f64 / 1e9;
    ui.status(
        "Finished",
        format!(
            "{} queries × {} database rows (d = {}), k = {k}: search {search:.2}s ({:.0} GFLOP/s), load {loaded:.2}s, {rows} rows in `{}`",
            q_m.rows,
            db_m.rows,
            db_m.cols,
            gflop / search.max(1e-9),
            out.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}
