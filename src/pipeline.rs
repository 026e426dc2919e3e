//! Pipeline files: a TOML file naming the run directory and each stage's parameters.
//!
//! ```toml
//! run_dir = "../runs/demo"        # relative to this file
//!
//! [synth]                          # optional: generate a synthetic Visual Genome first
//! image_count = 300
//! seed = 7
//! render = true
//!
//! [ingest]
//! vg = "/data/visual_genome"       # omit to ingest the synth stage's output
//!
//! [triplets]                       # the vocabulary; omitted keys take SIMAT's values
//!
//! min_region_side = 32
//! subjects = ["man", "woman"]
//! [triplets.relations]
//! "sitting on a" = ["sitting on", "sits on"]
//!
//! [crops]                          # optional: one PNG per region
//! image_dir = "/data/visual_genome"  # omit when [synth] renders its images
//!
//! [oracle]                         # optional: a CLIP-family model judges crops × captions
//! model = "../data/tiny-clip"      # a folder from scripts/export_clip.py
//!
//! [select]                         # optional: the dataset (oracle, threshold, min_images)
//! oracle = "model"                 # or "labels", or a regions × triplets .npy
//! threshold = 0.25
//!
//! [queries]                        # optional: transformation queries for the dataset
//! seed = 0
//!
//! [embed]                          # optional: the evaluated model embeds crops and words
//! model = "../data/tiny-clip"
//! device = "cpu"                   # or "cuda:0"
//!
//! [retrieve]                       # optional: λ sweep (needs queries and [embed])
//! lambdas = [0.0, 1.0, 2.0]
//! heads = "../heads/head_clip_t=0.1.pt"   # optional: linear heads on the raw embeddings
//!
//! [score]                          # optional: SIMAT scores (oracle and threshold)
//! oracle = "model"
//! threshold = 0.25
//!
//! [sweep]                          # optional: many models through one pipeline (crate::sweep):
//! models = ["../models/a", "../models/b"]   # one branch per model in RUN/models/NAME/
//! # text_models = ["tower", "../models/minilm"]  # or: text encoders beside [embed]'s model
//!
//! [slurm]                          # optional: how `simat run --executor slurm` submits
//! shards = 4                       # parts per shardable stage (crops, oracle, embed, coco); default 1
//! partition = "gpu"                # these four are omitted from the scripts when not set
//! gpus_per_task = 1                # given to the stages that run a model (embed, oracle, coco)
//! cpus_per_task = 8
//! time = "02:00:00"
//! sbatch_args = ["--account=vision"]
//! ```
//!
//! A shardable stage's section may set its own `shards = 16`. Flags of `simat run` override
//! `[slurm]`'s keys.
//!
//! The official benchmark replaces `[synth]`, `[ingest]`, `[triplets]` and `[select]` by
//! `[import] release = "…"` (see `pipelines/official.toml`): its regions, dataset and queries are
//! the release's. Where a run has both the release's queries and regenerated ones
//! (`[import]` with `[queries]`), `[retrieve] queries = "release"` or `"regenerated"` says which.
//!
//! A pipeline runs the stages whose sections it has, in simat's stage order
//! ([`crate::stages::ALL`]); a section's keys are the stage's flags (`chunk_images` for
//! `--chunk-images`), plus `from` to choose a provider where two could meet a need. Which stage
//! reads which stage's tables is worked out by the planner (`engine::plan`), not written here.
//! Every section is checked before anything runs, and every bad value is reported with its section
//! and key. Relative paths are resolved against the pipeline file's directory, so a pipeline runs
//! the same from any working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::Stage;
use crate::error::{Error, Result};
use crate::stages::{find, ALL};
use crate::sweep::Sweep;

/// A loaded pipeline.
pub struct Pipeline {
    /// The pipeline file.
    pub path: PathBuf,
    /// The run directory (resolved).
    pub run_dir: PathBuf,
    /// Its stages, built and checked, in order.
    pub stages: Vec<Box<dyn Stage>>,
    /// Its `[slurm]` section.
    pub slurm: SlurmSection,
    /// The `shards` key of each shardable stage's section that has one.
    pub shards: BTreeMap<String, usize>,
    /// Its `[sweep]`: then `stages` is the trunk, and each model has a branch.
    pub sweep: Option<Sweep>,
}

/// The most parts a stage may run in (Slurm's default `MaxArraySize` is 1001).
pub const MAX_SHARDS: usize = 10_000;

/// A pipeline's `[slurm]` section: how the Slurm executor submits (see the module's docs). Unset
/// keys are left to the executor's defaults and the cluster's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    /// Parts per shardable stage.
    pub shards: Option<usize>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gpus-per-task`, for the stages that run a model.
    pub gpus_per_task: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--time`.
    pub time: Option<String>,
    /// More `sbatch` arguments, passed through.
    #[serde(default)]
    pub sbatch_args: Vec<String>,
}

fn check_shards(n: usize) -> std::result::Result<usize, String> {
    if (1..=MAX_SHARDS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("`shards` must be 1 to {MAX_SHARDS}, not {n}"))
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("path", &self.path)
            .field("run_dir", &self.run_dir)
            .field(
                "stages",
                &self.stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Pipeline {
    /// Load and check a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline> {
        Self::load_with_run_dir(path, None)
    }

    /// Load a pipeline file, with `run_dir` (as given on the command line) replacing the file's
    /// `run_dir`.
    pub fn load_with_run_dir(path: &Path, run_dir: Option<&Path>) -> Result<Pipeline> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("failed to read", path, e))?;
        let mut file: toml::Table =
            toml::from_str(&text).map_err(|e| Error::config(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let run_dir = match (run_dir, file.remove("run_dir")) {
            (Some(dir), _) => dir.to_path_buf(),
            (None, Some(toml::Value::String(d))) => {
                let d = PathBuf::from(d);
                if d.is_absolute() {
                    d
                } else {
                    base.join(d)
                }
            }
            (None, Some(_)) => return Err(Error::config(path, "`run_dir` must be a path")),
            (None, None) => {
                return Err(Error::config(
                    path,
                    "no `run_dir`: name the run directory (relative to this file)",
                ))
            }
        };
        let mut problems = Vec::new();
        let slurm = match file.remove("slurm") {
            None => SlurmSection::default(),
            Some(v) => match SlurmSection::deserialize(v) {
                Ok(s) => {
                    if let Some(Err(e)) = s.shards.map(check_shards) {
                        problems.push(format!("[slurm] {e}"));
                    }
                    s
                }
                Err(e) => {
                    problems.push(format!("[slurm]: {}", e.message()));
                    SlurmSection::default()
                }
            },
        };
        let sweep_section = file.remove("sweep");
        let mut shards = BTreeMap::new();
        for (key, value) in file.iter_mut() {
            let (Some(entry), toml::Value::Table(section)) = (find(key), value) else {
                continue;
            };
            let Some(n) = section.remove("shards") else {
                continue;
            };
            let shardable: Vec<&str> = ALL
                .iter()
                .filter(|e| e.shardable())
                .map(|e| e.name())
                .collect();
            match n.as_integer().map(|n| usize::try_from(n).unwrap_or(0)) {
                _ if !entry.shardable() => problems.push(format!(
                    "[{key}] shards: {key} does not run in parts; the stages that do are {}",
                    shardable.join(", ")
                )),
                Some(n) => match check_shards(n) {
                    Ok(n) => {
                        shards.insert(key.clone(), n);
                    }
                    Err(e) => problems.push(format!("[{key}] {e}")),
                },
                None => problems.push(format!("[{key}] `shards` must be a whole number")),
            }
        }
        for (key, value) in &file {
            match (find(key), value) {
                (Some(e), toml::Value::Table(_)) if e.name() == key => {}
                (Some(e), _) if e.name() != key => problems.push(format!(
                    "[{key}]: the stage is called `{}` in a pipeline",
                    e.name()
                )),
                (Some(_), _) => problems.push(format!("`{key}` must be a section ([{key}])")),
                (None, _) => problems.push(format!(
                    "[{key}] is not a stage; the stages are {}",
                    ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
        // A sweep's stages are built first with its first entry in its roots' sections, to find
        // the branch.
        let sweep_entries =
            sweep_section.and_then(|v| crate::sweep::prepare(v, &mut file, base, &mut problems));
        let mut stages = Vec::new();
        for entry in ALL {
            let Some(toml::Value::Table(section)) = file.get(entry.name()) else {
                continue;
            };
            match entry.build_from_toml(section, base) {
                Ok(s) => stages.push(s),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(Error::config(path, problems.join("; ")));
        }
        if stages.is_empty() {
            return Err(Error::config(path, "no stage sections"));
        }
        let sweep = match sweep_entries {
            None => None,
            Some(entries) => {
                let (trunk, sweep) = Sweep::split(stages, &file, base, &run_dir, entries, &shards)
                    .map_err(|p| Error::config(path, p.join("; ")))?;
                stages = trunk;
                Some(sweep)
            }
        };
        Ok(Pipeline {
            path: path.to_path_buf(),
            run_dir,
            stages,
            slurm,
            shards,
            sweep,
        })
    }

    /// The stages, in order.
    pub fn stages(&self) -> Vec<&dyn Stage> {
        self.stages.iter().map(|s| s.as_ref()).collect()
    }
}
