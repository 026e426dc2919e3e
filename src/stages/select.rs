//! `select`: the dataset of a regenerated benchmark.
//!
//! Keeps the regions whose oracle similarity with their own triplet's caption reaches
//! `threshold`, then drops the triplets shown by fewer than `min_images` distinct images (a
//! query needs another image of its target), and numbers the kept regions `dataset_id`
//! 0, 1, … in region order. The oracle is `labels` (every region matches its own caption, so
//! only the image minimum filters), `model` (the `oracle` stage's similarity of each region's crop
//! with its caption; regions it could not score are dropped and counted) or an imported
//! regions × triplets similarity matrix (`.npy`, rows by `region_id`, columns by `triplet_id`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{Checks, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::Result;
use crate::oracle;
use crate::tables;
use crate::tables::dataset::{ints, strs, Dataset};

/// Configuration of selection. The defaults reproduce SIMAT's rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct SelectConfig {
    /// `labels`, `model` (the oracle stage), a regions × triplets similarity matrix (.npy, .pt;
    /// rows in the order of the regions table, columns by triplet_id), or a long table
    /// region_id, triplet_id, score (Parquet, Arrow, CSV), joined by key.
    #[arg(long, default_value = "labels")]
    pub oracle: String,
    /// A region is kept when its similarity with its own caption is at least this (0.5 suits
    /// SIMAT's probability-like oracle; a CLIP cosine oracle wants about 0.25).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Triplets shown by fewer distinct images are dropped.
    #[arg(long, default_value_t = 2)]
    pub min_images: usize,
}

impl Default for SelectConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// The select stage. Where the run has crops, only regions with a usable crop are kept (counted
/// as `regions_without_crop`), so that a model can embed every selected region.
#[derive(Debug, Clone)]
pub struct Select {
    /// Its configuration.
    pub config: SelectConfig,
}

impl StageDef for Select {
    const NAME: &'static str = "select";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "The dataset of a regenerated benchmark: RUN/select/dataset.parquet";
    const PROVIDES: &'static [&'static TableDecl] = &[&tables::DATASET];
    type Config = SelectConfig;
    fn resolve_paths(c: &mut SelectConfig, base: &Path) {
        c.oracle = oracle::resolve(&c.oracle, base);
    }
    fn build(config: SelectConfig) -> Result<Self> {
        let mut checks = Checks::<Self>::new();
        if !config.threshold.is_finite() {
            checks.bad("threshold", "must be a number");
        }
        if config.min_images == 0 {
            checks.bad("min_images", "must be at least 1");
        }
        checks.check("oracle", oracle::check(&config.oracle));
        checks.finish(Select { config })
    }
    fn needs(&self) -> Vec<Need> {
        let mut v = vec![Need::of(&tables::REGIONS), Need::optional(&tables::CROPS)];
        if self.config.oracle == oracle::MODEL {
            v.push(Need::of(&tables::REGION_SCORES).choose("an [oracle] section naming the model"));
        }
        v
    }
    fn fingerprint(&self) -> serde_json::Value {
        oracle::config_value(&self.config, &self.config.oracle)
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        oracle::inputs(Self::NAME, &self.config.oracle)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let rpath = ctx.input(&tables::REGIONS)?;
        let regions = crate::io::read_all(&rpath)?;
        let region_id = ints(&regions, "region_id", &rpath)?;
        let image_id = ints(&regions, "image_id", &rpath)?;
        let triplet_id = ints(&regions, "triplet_id", &rpath)?;
        let words = [
            strs(&regions, "subj", &rpath)?,
            strs(&regions, "rel", &rpath)?,
            strs(&regions, "obj", &rpath)?,
        ];
        let cropped = match ctx.maybe(&tables::CROPS) {
            Some(p) => Some(crate::tables::crops::crop_files(&p)?.0),
            None => None,
        };
        let has_crop = |i: usize| {
            cropped
                .as_ref()
                .is_none_or(|f| f.contains_key(&region_id[i]))
        };
        // Each cropped region's similarity with its own caption; unscored ones never pass.
        let mut unscored = 0u64;
        let similarity: Vec<f64> = match oracle::oracle_file(&self.config.oracle) {
            None if self.config.oracle == oracle::MODEL => {
                let scores =
                    oracle::region_scores(&ctx.input(&tables::REGION_SCORES)?, &region_id)?;
                unscored = scores.iter().filter(|s| s.is_none()).count() as u64;
                scores
                    .into_iter()
                    .map(|s| s.unwrap_or(f64::NEG_INFINITY))
                    .collect()
            }
            None => vec![1.0; region_id.len()],
            Some(p) => {
                let axes = oracle::Axes {
                    rows: oracle::Rows::Regions,
                    region_id: &region_id,
                    columns: oracle::Columns::Triplet,
                    width: triplet_id.iter().max().map_or(0, |&t| t as usize + 1),
                    asks: (region_id.iter().zip(&triplet_id))
                        .map(|(&r, &t)| (t as usize, ("region", r)))
                        .collect(),
                };
                let file = oracle::FileOracle::read(&p, &axes)?;
                (0..region_id.len())
                    .map(|i| {
                        if !has_crop(i) {
                            return Ok(f64::NEG_INFINITY);
                        }
                        file.value(i, triplet_id[i] as usize, region_id[i], || {
                            format!("selecting region {}", region_id[i])
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let uncropped = (0..region_id.len()).filter(|&i| !has_crop(i)).count() as u64;
        let passed: Vec<usize> = (0..region_id.len())
            .filter(|&i| has_crop(i) && similarity[i] >= self.config.threshold)
            .collect();
        let mut images: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        for &i in &passed {
            images.entry(triplet_id[i]).or_default().insert(image_id[i]);
        }
        let kept_triplets: BTreeSet<i64> = images
            .iter()
            .filter(|(_, imgs)| imgs.len() >= self.config.min_images)
            .map(|(t, _)| *t)
            .collect();
        let mut dataset = Dataset::default();
        for &i in &passed {
            if kept_triplets.contains(&triplet_id[i]) {
                dataset.region_id.push(region_id[i]);
                dataset.image_id.push(image_id[i]);
                dataset.triplet_id.push(triplet_id[i]);
                dataset.caption_id.push(triplet_id[i]);
                dataset.triplet.push([
                    words[0][i].clone(),
                    words[1][i].clone(),
                    words[2][i].clone(),
                ]);
                dataset.split.push(None);
                dataset.triplets_row.push(None);
            }
        }
        let n = crate::io::write_table(&ctx.output(&tables::DATASET)?, &dataset.to_batch())?;
        let mut report = StageReport::default();
        report.table(&tables::DATASET, Some(n));
        report.count("regions_in", region_id.len() as u64);
        if cropped.is_some() {
            report.count("regions_without_crop", uncropped);
        }
        report.count(
            "regions_below_threshold",
            (region_id.len() as u64 - uncropped) - passed.len() as u64,
        );
        if self.config.oracle == oracle::MODEL {
            report.count("regions_unscored", unscored);
        }
        report.count("regions_kept", n);
        report.count("triplets_kept", kept_triplets.len() as u64);
        report.count(
            "triplets_below_min_images",
            (images.len() - kept_triplets.len()) as u64,
        );
        Ok(report)
    }
}
