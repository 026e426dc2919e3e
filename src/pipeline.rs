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
//! [select]                         # optional: the dataset (oracle, threshold, min_images)
//! oracle = "labels"
//!
//! [queries]                        # optional: transformation queries for the dataset
//! seed = 0
//! ```
//!
//! Relative paths are resolved against the pipeline file's directory, so a pipeline runs the
//! same from any working directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crops::{CropsConfig, CropsStage};
use crate::error::{Error, Result};
use crate::ingest::{IngestConfig, IngestStage};
use crate::queries::{QueriesConfig, QueriesStage};
use crate::run::Stage;
use crate::select::{SelectConfig, SelectStage};
use crate::synth::{SynthConfig, SynthStage, SYNTH_VG_DIR};
use crate::triplets::{TripletsConfig, TripletsStage};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    run_dir: PathBuf,
    #[serde(default)]
    synth: Option<SynthConfig>,
    #[serde(default)]
    ingest: Option<IngestSection>,
    #[serde(default)]
    triplets: Option<toml::Table>,
    #[serde(default)]
    crops: Option<CropsSection>,
    #[serde(default)]
    select: Option<SelectConfig>,
    #[serde(default)]
    queries: Option<QueriesSection>,
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
    /// The ingest stage's config.
    pub ingest: IngestConfig,
    /// The triplet vocabulary.
    pub triplets: TripletsConfig,
    /// The crops stage's config, when the pipeline crops regions.
    pub crops: Option<CropsConfig>,
    /// The select stage's config, when the pipeline builds a dataset.
    pub select: Option<SelectConfig>,
    /// The queries stage's config, when the pipeline generates queries.
    pub queries: Option<QueriesConfig>,
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
        let section = file.ingest.unwrap_or_default();
        let vg = match (&section.vg, &file.synth) {
            (Some(vg), _) => resolve(vg),
            (None, Some(_)) => run_dir.join("synth").join(SYNTH_VG_DIR),
            (None, None) => {
                return Err(Error::config(
                    path,
                    "`[ingest] vg` is not set and there is no `[synth]` section: name the Visual Genome folder",
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
                let default_table =
                    toml::Table::try_from(&defaults).map_err(|e| Error::Internal(e.to_string()))?;
                merged.extend(default_table);
                merged.extend(table);
                let text = toml::to_string(&merged).map_err(|e| Error::Internal(e.to_string()))?;
                TripletsConfig::from_toml_str(&text, path)?
            }
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
                    regions_stage: "triplets".into(),
                    chunk_images: c.chunk_images.unwrap_or(512),
                })
            }
        };
        let queries = match (file.queries, &file.select) {
            (None, _) => None,
            (Some(_), None) => return Err(Error::config(
                path,
                "`[queries]` needs a `[select]` section: queries are made for the selected dataset",
            )),
            (Some(q), Some(_)) => {
                let d = QueriesConfig::default();
                Some(QueriesConfig {
                    seed: q.seed.unwrap_or(d.seed),
                    test_fraction: q.test_fraction.unwrap_or(d.test_fraction),
                    dataset_stage: "select".into(),
                })
            }
        };
        Ok(Pipeline {
            path: path.to_path_buf(),
            run_dir,
            synth: file.synth,
            ingest,
            triplets,
            crops,
            select: file.select,
            queries,
        })
    }

    /// The pipeline's stages, in order.
    pub fn stages(&self) -> Vec<Box<dyn Stage>> {
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        if let Some(s) = &self.synth {
            stages.push(Box::new(SynthStage { config: s.clone() }));
        }
        stages.push(Box::new(IngestStage {
            config: self.ingest.clone(),
        }));
        stages.push(Box::new(TripletsStage {
            config: self.triplets.clone(),
        }));
        if let Some(c) = &self.crops {
            stages.push(Box::new(CropsStage { config: c.clone() }));
        }
        if let Some(c) = &self.select {
            stages.push(Box::new(SelectStage { config: c.clone() }));
        }
        if let Some(c) = &self.queries {
            stages.push(Box::new(QueriesStage { config: c.clone() }));
        }
        stages
    }
}
