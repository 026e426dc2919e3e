//! Pipeline files: a TOML file naming the run directory and each stage's parameters.
//!
//! ```toml
//! run_dir = "../runs/demo"        # relative to this file
//!
//! [synth]                          # optional: generate a synthetic Visual Genome first
//! images = 300
//! seed = 7
//! render = true
//!
//! [ingest]
//! vg = "/data/visual_genome"       # omit to ingest the synth stage's output
//!
//! [triplets]                       # the vocabulary; omitted keys take SIMAT's values
//! min_region_side = 32
//! subjects = ["man", "woman"]
//! [triplets.relations]
//! "sitting on a" = ["sitting on", "sits on"]
//!
//! [crops]                          # optional: one PNG per region
//! images = "/data/visual_genome"   # omit when [synth] renders its images
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
//! ```
//!
//! The official benchmark replaces `[synth]`, `[ingest]`, `[triplets]` and `[select]` by
//! `[import] release = "…"` (see `pipelines/official.toml`): its regions, dataset and queries are
//! the release's. Where a run has both the release's queries and regenerated ones
//! (`[import]` with `[queries]`), `[retrieve] queries = "release"` or `"regenerated"` says which.
//!
//! Relative paths are resolved against the pipeline file's directory, so a pipeline runs the
//! same from any working directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::Stage;
use crate::error::{Error, Result};
use crate::stages::crops::{CropsConfig, CropsStage};
use crate::stages::embed::{EmbedStage, ModelRunConfig};
use crate::stages::import::{ImportConfig, ImportStage};
use crate::stages::ingest::{IngestConfig, IngestStage};
use crate::stages::oracle::OracleStage;
use crate::stages::queries::{QueriesConfig, QueriesStage};
use crate::stages::retrieve::{RetrieveConfig, RetrieveStage};
use crate::stages::score::{ScoreConfig, ScoreStage};
use crate::stages::select::{SelectConfig, SelectStage};
use crate::stages::synth::{SynthConfig, SynthStage, SYNTH_VG_DIR};
use crate::stages::triplets::{TripletsConfig, TripletsStage};
use crate::tables::dataset::QuerySet;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    run_dir: PathBuf,
    #[serde(default)]
    synth: Option<SynthConfig>,
    #[serde(default)]
    import: Option<ImportConfig>,
    #[serde(default)]
    ingest: Option<IngestSection>,
    #[serde(default)]
    triplets: Option<toml::Table>,
    #[serde(default)]
    crops: Option<CropsSection>,
    #[serde(default)]
    oracle: Option<ModelRunConfig>,
    #[serde(default)]
    select: Option<SelectConfig>,
    #[serde(default)]
    queries: Option<QueriesSection>,
    #[serde(default)]
    embed: Option<ModelRunConfig>,
    #[serde(default)]
    retrieve: Option<RetrieveSection>,
    #[serde(default)]
    score: Option<ScoreSection>,
}

/// The `[retrieve]` section: the query set is the pipeline's, named when it has two.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrieveSection {
    lambdas: Option<Vec<f64>>,
    k: Option<usize>,
    queries: Option<QuerySet>,
    heads: Option<PathBuf>,
    #[serde(default)]
    allow_normalised: bool,
}

/// The `[score]` section: queries and dataset are the pipeline's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreSection {
    oracle: Option<String>,
    threshold: Option<f64>,
    split: Option<String>,
}

/// The `[queries]` section: the dataset is always the pipeline's `select` output.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueriesSection {
    seed: Option<u64>,
    test_fraction: Option<f64>,
}

/// The `[crops]` section: `images` may be omitted when `[synth]` renders them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CropsSection {
    images: Option<PathBuf>,
    chunk_images: Option<usize>,
    outside: Option<crate::stages::crops::Outside>,
}

/// The `[ingest]` section: like [`IngestConfig`], with `vg` optional when `[synth]` is present.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestSection {
    vg: Option<PathBuf>,
    block_bytes: Option<usize>,
}

/// A loaded pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline file.
    pub path: PathBuf,
    /// The run directory (resolved).
    pub run_dir: PathBuf,
    /// The synth stage's config, when the pipeline generates its input.
    pub synth: Option<SynthConfig>,
    /// The import stage's config, when the pipeline scores the official release.
    pub import: Option<ImportConfig>,
    /// The ingest stage's config, when the pipeline builds from Visual Genome.
    pub ingest: Option<IngestConfig>,
    /// The triplet vocabulary, when the pipeline builds from Visual Genome.
    pub triplets: Option<TripletsConfig>,
    /// The crops stage's config, when the pipeline crops regions.
    pub crops: Option<CropsConfig>,
    /// The oracle stage's config, when a model judges the crops.
    pub oracle: Option<ModelRunConfig>,
    /// The select stage's config, when the pipeline builds a dataset.
    pub select: Option<SelectConfig>,
    /// The queries stage's config, when the pipeline generates queries.
    pub queries: Option<QueriesConfig>,
    /// The embed stage's config, when a model embeds the dataset.
    pub embed: Option<ModelRunConfig>,
    /// The retrieve stage's config.
    pub retrieve: Option<RetrieveConfig>,
    /// The score stage's config.
    pub score: Option<ScoreConfig>,
}

impl Pipeline {
    /// Load and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline> {
        Self::load_with_run_dir(path, None)
    }

    /// Load a pipeline file, with `run_dir` (as given on the command line) replacing the file's
    /// `run_dir`; paths derived from the run directory (the synth stage's output) follow it.
    pub fn load_with_run_dir(path: &Path, run_dir: Option<&Path>) -> Result<Pipeline> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("failed to read", path, e))?;
        let file: PipelineFile =
            toml::from_str(&text).map_err(|e| Error::config(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let run_dir = match run_dir {
            Some(dir) => dir.to_path_buf(),
            None => resolve(&file.run_dir),
        };
        let import = file.import.map(|mut c| {
            c.release = resolve(&c.release);
            c
        });
        if import.is_some()
            && (file.synth.is_some()
                || file.ingest.is_some()
                || file.triplets.is_some()
                || file.select.is_some())
        {
            return Err(Error::config(
                path,
                "`[import]` scores the official release, whose regions and dataset are given: it does not go with `[synth]`, `[ingest]`, `[triplets]` or `[select]`",
            ));
        }
        let (ingest, triplets) = if import.is_some() {
            (None, None)
        } else {
            let section = file.ingest.unwrap_or_default();
            let vg = match (&section.vg, &file.synth) {
                (Some(vg), _) => resolve(vg),
                (None, Some(_)) => run_dir.join("synth").join(SYNTH_VG_DIR),
                (None, None) => {
                    return Err(Error::config(
                        path,
                        "`[ingest] vg` is not set and there is no `[synth]` section: name the Visual Genome folder (or `[import] release` for the official benchmark)",
                    ))
                }
            };
            let ingest = IngestConfig {
                vg,
                block_bytes: section
                    .block_bytes
                    .unwrap_or(crate::io::json_stream::DEFAULT_BLOCK),
            };
            let triplets = match file.triplets {
                None => TripletsConfig::default(),
                Some(table) => {
                    let mut merged = toml::Table::new();
                    let defaults = TripletsConfig::default();
                    let default_table = toml::Table::try_from(&defaults)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    merged.extend(default_table);
                    merged.extend(table);
                    let text =
                        toml::to_string(&merged).map_err(|e| Error::Internal(e.to_string()))?;
                    TripletsConfig::from_toml_str(&text, path)?
                }
            };
            (Some(ingest), Some(triplets))
        };
        // Where regions, the dataset and its captions come from.
        let (regions_stage, dataset_stage) = if import.is_some() {
            ("import", "import")
        } else {
            ("triplets", "select")
        };
        let crops = match file.crops {
            None => None,
            Some(c) => {
                let images = match (&c.images, &file.synth) {
                    (Some(dir), _) => resolve(dir),
                    (None, Some(s)) if s.render => {
                        run_dir.join("synth").join(SYNTH_VG_DIR).join("images")
                    }
                    _ => {
                        return Err(Error::config(
                            path,
                            "`[crops] images` is not set and `[synth]` does not render images",
                        ))
                    }
                };
                Some(CropsConfig {
                    images,
                    regions_stage: regions_stage.into(),
                    chunk_images: c.chunk_images.unwrap_or(512),
                    outside: c.outside.unwrap_or_default(),
                })
            }
        };
        let has_dataset = import.is_some() || file.select.is_some();
        let queries = match (file.queries, has_dataset) {
            (None, _) => None,
            (Some(_), false) => return Err(Error::config(
                path,
                "`[queries]` needs a `[select]` (or `[import]`) section: queries are made for a dataset",
            )),
            (Some(q), true) => {
                let d = QueriesConfig::default();
                if !(0.0..=1.0).contains(&q.test_fraction.unwrap_or(d.test_fraction)) {
                    return Err(Error::config(
                        path,
                        "`[queries] test_fraction` must be between 0 and 1",
                    ));
                }
                Some(QueriesConfig {
                    seed: q.seed.unwrap_or(d.seed),
                    test_fraction: q.test_fraction.unwrap_or(d.test_fraction),
                    dataset_stage: dataset_stage.into(),
                })
            }
        };
        let with_model = |c: Option<ModelRunConfig>, section: &str| -> Result<_> {
            match c {
                Some(_) if crops.is_none() => Err(Error::config(
                    path,
                    format!("`[{section}]` embeds crops: it needs a `[crops]` section"),
                )),
                Some(mut c) => {
                    c.model = resolve(&c.model);
                    Ok(Some(c))
                }
                None => Ok(None),
            }
        };
        let oracle = with_model(file.oracle, "oracle")?;
        let embed = with_model(file.embed, "embed")?;
        // An oracle string of a section: `model` needs `[oracle]`, a matrix path is resolved.
        let oracle_of = |section: &str, o: String| -> Result<String> {
            if o == crate::stages::oracle::MODEL && oracle.is_none() {
                return Err(Error::config(
                    path,
                    format!("`[{section}] oracle = \"model\"` needs an `[oracle]` section naming the model"),
                ));
            }
            Ok(match crate::stages::oracle::matrix_file(&o) {
                Some(m) => resolve(&m).to_string_lossy().into_owned(),
                None => o,
            })
        };
        let mut select = file.select;
        if let Some(s) = &mut select {
            s.require_crop |= crops.is_some();
            s.oracle = oracle_of("select", std::mem::take(&mut s.oracle))?;
        }
        if embed.is_some() && !has_dataset {
            return Err(Error::config(
                path,
                "`[embed]` embeds the dataset: it needs a `[select]` (or `[import]`) section",
            ));
        }
        // The query sets this pipeline makes.
        let query_sets: Vec<QuerySet> = [
            import.as_ref().map(|_| QuerySet::Release),
            queries.as_ref().map(|_| QuerySet::Regenerated),
        ]
        .into_iter()
        .flatten()
        .collect();
        let retrieve = match file.retrieve {
            None => None,
            Some(_) if query_sets.is_empty() || embed.is_none() => return Err(Error::config(
                path,
                "`[retrieve]` needs queries (`[queries]` or `[import]`) and an `[embed]` section",
            )),
            Some(r) => {
                let set = match (r.queries, query_sets.as_slice()) {
                    (Some(q), sets) if sets.contains(&q) => q,
                    (Some(q), _) => {
                        return Err(Error::config(
                            path,
                            format!("`[retrieve] queries = \"{q}\"`, but this pipeline does not make that query set"),
                        ))
                    }
                    (None, [only]) => *only,
                    (None, _) => {
                        return Err(Error::config(
                            path,
                            "this pipeline makes both the release's queries and regenerated ones: say which to answer with `[retrieve] queries = \"release\"` or `\"regenerated\"`",
                        ))
                    }
                };
                let d = RetrieveConfig::new(set);
                let c = RetrieveConfig {
                    lambdas: r.lambdas.unwrap_or(d.lambdas),
                    k: r.k.unwrap_or(d.k),
                    queries: set,
                    heads: r.heads.as_deref().map(resolve),
                    allow_normalised: r.allow_normalised,
                };
                if c.k == 0 || c.lambdas.is_empty() || c.lambdas.iter().any(|l| !l.is_finite()) {
                    return Err(Error::config(
                        path,
                        "`[retrieve]` needs k ≥ 1 and at least one finite λ",
                    ));
                }
                if let Some(h) = &c.heads {
                    crate::model::heads::files(h)
                        .map_err(|e| Error::config(path, format!("`[retrieve] heads`: {e}")))?;
                }
                Some(c)
            }
        };
        let score = match file.score {
            None => None,
            Some(_) if retrieve.is_none() => {
                return Err(Error::config(
                    path,
                    "`[score]` needs a `[retrieve]` section",
                ))
            }
            Some(sc) => {
                let set = retrieve.as_ref().expect("checked").queries;
                let d = ScoreConfig::new(set);
                let oracle_s = oracle_of("score", sc.oracle.unwrap_or(d.oracle))?;
                let threshold = sc.threshold.unwrap_or(d.threshold);
                if !threshold.is_finite() {
                    return Err(Error::config(path, "`[score] threshold` must be a number"));
                }
                let split = sc.split.unwrap_or(d.split);
                if !["dev", "test", "all"].contains(&split.as_str()) {
                    return Err(Error::config(
                        path,
                        format!("`[score] split = \"{split}\"`: expected dev, test or all"),
                    ));
                }
                Some(ScoreConfig {
                    oracle: oracle_s,
                    threshold,
                    split,
                    queries: set,
                    dataset_stage: dataset_stage.into(),
                })
            }
        };
        Ok(Pipeline {
            path: path.to_path_buf(),
            run_dir,
            synth: file.synth,
            import,
            ingest,
            triplets,
            crops,
            oracle,
            select,
            queries,
            embed,
            retrieve,
            score,
        })
    }

    /// The pipeline's stages, in order.
    pub fn stages(&self) -> Vec<Box<dyn Stage>> {
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        if let Some(s) = &self.synth {
            stages.push(Box::new(SynthStage { config: s.clone() }));
        }
        if let Some(c) = &self.import {
            stages.push(Box::new(ImportStage { config: c.clone() }));
        }
        if let Some(c) = &self.ingest {
            stages.push(Box::new(IngestStage { config: c.clone() }));
        }
        if let Some(c) = &self.triplets {
            stages.push(Box::new(TripletsStage { config: c.clone() }));
        }
        let from = if self.import.is_some() {
            "import"
        } else {
            "triplets"
        };
        if let Some(c) = &self.crops {
            stages.push(Box::new(CropsStage { config: c.clone() }));
        }
        if let Some(c) = &self.oracle {
            stages.push(Box::new(OracleStage {
                config: c.clone(),
                regions_stage: from.into(),
            }));
        }
        if let Some(c) = &self.select {
            stages.push(Box::new(SelectStage { config: c.clone() }));
        }
        if let Some(c) = &self.queries {
            stages.push(Box::new(QueriesStage { config: c.clone() }));
        }
        if let Some(c) = &self.embed {
            stages.push(Box::new(EmbedStage {
                config: c.clone(),
                dataset_stage: if self.import.is_some() {
                    "import"
                } else {
                    "select"
                }
                .into(),
                regions_stage: from.into(),
            }));
        }
        if let Some(c) = &self.retrieve {
            stages.push(Box::new(RetrieveStage { config: c.clone() }));
        }
        if let Some(c) = &self.score {
            stages.push(Box::new(ScoreStage { config: c.clone() }));
        }
        stages
    }
}
