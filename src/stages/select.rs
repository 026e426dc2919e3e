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
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::{Stage, StageContext, StageReport};
use crate::error::{Error, Result};
use crate::tables::dataset::{ints, strs, Dataset};

/// Configuration of selection. The defaults reproduce SIMAT's rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    /// `labels`, `model` (the `oracle` stage), or a regions × triplets similarity matrix
    /// (`.npy`).
    #[serde(default = "default_oracle")]
    pub oracle: String,
    /// A region is kept when its similarity with its own caption is at least this (0.5 suits
    /// SIMAT's probability-like oracle; a CLIP cosine oracle wants about 0.25).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Triplets shown by fewer distinct images are dropped.
    #[serde(default = "default_min_images")]
    pub min_images: usize,
    /// Keep only regions with a usable crop (crops status `ok` or `clamped`), so that a model
    /// can embed every selected region. A pipeline with a `[crops]` section sets it.
    #[serde(default)]
    pub require_crop: bool,
}

fn default_oracle() -> String {
    "labels".into()
}
fn default_threshold() -> f64 {
    0.5
}
fn default_min_images() -> usize {
    2
}

impl Default for SelectConfig {
    fn default() -> Self {
        SelectConfig {
            oracle: default_oracle(),
            threshold: default_threshold(),
            min_images: default_min_images(),
            require_crop: false,
        }
    }
}

/// The stage.
#[derive(Debug, Clone)]
pub struct SelectStage {
    /// Its configuration.
    pub config: SelectConfig,
}

impl Stage for SelectStage {
    fn name(&self) -> &'static str {
        "select"
    }
    fn version(&self) -> u32 {
        1
    }
    fn upstream(&self) -> Vec<&'static str> {
        let mut v = vec!["triplets"];
        if self.config.require_crop {
            v.push("crops");
        }
        v.extend(crate::stages::oracle::upstream(&self.config.oracle));
        v
    }
    fn config(&self) -> serde_json::Value {
        crate::stages::oracle::config_value(&self.config, &self.config.oracle)
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        crate::stages::oracle::inputs("select", &self.config.oracle)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let rpath = ctx.upstream_output("triplets", "regions.parquet");
        let regions = crate::io::read_all(&rpath)?;
        let region_id = ints(&regions, "region_id", &rpath)?;
        let image_id = ints(&regions, "image_id", &rpath)?;
        let triplet_id = ints(&regions, "triplet_id", &rpath)?;
        let words = [
            strs(&regions, "subj", &rpath)?,
            strs(&regions, "rel", &rpath)?,
            strs(&regions, "obj", &rpath)?,
        ];
        let mut unscored = 0u64;
        let similarity: Box<dyn Fn(usize) -> f64> =
            match crate::stages::oracle::matrix_file(&self.config.oracle) {
                None if self.config.oracle == crate::stages::oracle::MODEL => {
                    let spath = ctx.upstream_output("oracle", "region_scores.parquet");
                    let b = crate::io::read_all(&spath)?;
                    let ids = ints(&b, "region_id", &spath)?;
                    let sim = crate::io::column(&b, "similarity", &spath)?;
                    let sim =
                        arrow::array::AsArray::as_primitive::<arrow::datatypes::Float32Type>(sim);
                    let by_region: std::collections::HashMap<i64, f64> = ids
                        .into_iter()
                        .zip(sim.values().iter().map(|&v| v as f64))
                        .collect();
                    let scores: Vec<f64> = region_id
                        .iter()
                        .map(|r| by_region.get(r).copied().unwrap_or(f64::NEG_INFINITY))
                        .collect();
                    unscored = scores.iter().filter(|s| s.is_infinite()).count() as u64;
                    Box::new(move |i| scores[i])
                }
                None => Box::new(|_| 1.0),
                Some(p) => {
                    let m = crate::io::store::read_matrix(&p)?;
                    if m.rows != region_id.len() {
                        return Err(Error::data(
                            &p,
                            format!(
                            "{} rows, but there are {} regions (rows must be in region_id order)",
                            m.rows,
                            region_id.len()
                        ),
                        ));
                    }
                    if let Some(i) = triplet_id
                        .iter()
                        .position(|&t| t < 0 || t as usize >= m.cols)
                    {
                        return Err(Error::data(
                            &p,
                            format!(
                                "{} columns, but region {} has triplet {}",
                                m.cols, region_id[i], triplet_id[i]
                            ),
                        ));
                    }
                    let tids = triplet_id.clone();
                    Box::new(move |i| m.row(i)[tids[i] as usize] as f64)
                }
            };
        let cropped = if self.config.require_crop {
            let (files, _) = crate::stages::embed::crop_files(&ctx.run_dir.join("crops"))?;
            Some(files)
        } else {
            None
        };
        let has_crop = |i: usize| {
            cropped
                .as_ref()
                .is_none_or(|f| f.contains_key(&region_id[i]))
        };
        let uncropped = (0..region_id.len()).filter(|&i| !has_crop(i)).count() as u64;
        let passed: Vec<usize> = (0..region_id.len())
            .filter(|&i| has_crop(i) && similarity(i) >= self.config.threshold)
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
        let n = crate::io::write_table(&ctx.output("dataset.parquet"), &dataset.to_batch())?;
        let mut report = StageReport::default();
        report.outputs.push(("dataset.parquet".into(), Some(n)));
        report.count("regions_in", region_id.len() as u64);
        if self.config.require_crop {
            report.count("regions_without_crop", uncropped);
        }
        report.count(
            "regions_below_threshold",
            (region_id.len() as u64 - uncropped) - passed.len() as u64,
        );
        if self.config.oracle == crate::stages::oracle::MODEL {
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
