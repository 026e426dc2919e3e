//! `queries`: transformation queries for a dataset simat made (or imported).
//!
//! For each dataset region with triplet `t` and each slot (subject, relation, object), every
//! dataset triplet `t'` that differs from `t` in exactly that slot is a candidate query
//! "`t`'s image, with `value = t[slot]` replaced by `target = t'[slot]`". `n_neighbours` counts
//! the candidates of a region (the release's `norm`). A candidate is kept when `t'` is shown by
//! an image other than the query's own, so that a correct answer exists. `n_same_value` (the
//! release's `norm2`, the weight basis) counts the kept queries with the same `value` word. The
//! split is by region, `dev` or `test` with probability `test_fraction`, from a hash of the seed
//! and the region id, so it is stable when regions are added or removed.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::StageDef;
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::Result;
use crate::tables;
use crate::tables::dataset::{Dataset, Queries, Slot};

/// Configuration of query generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct QueriesConfig {
    /// Seed of the dev/test split (by region).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of regions in the test split, between 0 and 1.
    #[arg(long, default_value_t = 0.5)]
    pub test_fraction: f64,
}

impl Default for QueriesConfig {
    fn default() -> Self {
        super::clap_default()
    }
}

/// The queries stage: every one-slot transformation of the dataset with a possible answer.
#[derive(Debug, Clone)]
pub struct QueriesStage {
    /// Its configuration.
    pub config: QueriesConfig,
}

impl StageDef for QueriesStage {
    const NAME: &'static str = "queries";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "Transformation queries for the run's dataset: RUN/queries/queries.parquet";
    const PROVIDES: &'static [&'static TableDecl] = &[&tables::QUERIES];
    type Config = QueriesConfig;
    fn build(config: QueriesConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.test_fraction) {
            return Err(super::bad::<Self>(
                "test_fraction",
                format!("{} is not between 0 and 1", config.test_fraction),
            ));
        }
        Ok(QueriesStage { config })
    }
    fn needs(&self) -> Vec<Need> {
        vec![Need::of(&tables::DATASET)]
    }
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let path = ctx.input(&tables::DATASET)?;
        let dataset = Dataset::read(&path)?;
        let queries = generate(&dataset, &self.config);
        let n = crate::io::write_table(&ctx.output(&tables::QUERIES)?, &queries.to_batch())?;
        let mut report = StageReport::default();
        report.table(&tables::QUERIES, Some(n));
        report.count("queries", n);
        for slot in Slot::ALL {
            let k = queries.field.iter().filter(|f| **f == slot).count();
            report.count(&format!("queries_{}", slot.as_str()), k as u64);
        }
        report.count(
            "regions_with_queries",
            queries.region_id.iter().collect::<BTreeSet<_>>().len() as u64,
        );
        Ok(report)
    }
}

/// `dev` or `test` for a region.
pub fn split_of(seed: u64, region_id: i64, test_fraction: f64) -> &'static str {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&region_id.to_le_bytes());
    let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    if (x as f64 / u64::MAX as f64) < test_fraction {
        "test"
    } else {
        "dev"
    }
}

/// Every dataset triplet one slot away from each other, per slot: `neighbours[t][slot]`.
pub fn one_slot_neighbours(triplets: &[[String; 3]]) -> Vec<[Vec<usize>; 3]> {
    let mut by_rest: HashMap<(usize, &str, &str), Vec<usize>> = HashMap::new();
    for (i, t) in triplets.iter().enumerate() {
        for slot in Slot::ALL {
            let s = slot.index();
            let rest = [&t[(s + 1) % 3], &t[(s + 2) % 3]];
            by_rest.entry((s, rest[0], rest[1])).or_default().push(i);
        }
    }
    triplets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Slot::ALL.map(|slot| {
                let s = slot.index();
                let mut v: Vec<usize> = by_rest
                    [&(s, t[(s + 1) % 3].as_str(), t[(s + 2) % 3].as_str())]
                    .iter()
                    .copied()
                    .filter(|&j| j != i)
                    .collect();
                v.sort_by(|&a, &b| triplets[a][s].cmp(&triplets[b][s]));
                v
            })
        })
        .collect()
}

/// Generate the queries of `dataset`.
pub fn generate(dataset: &Dataset, config: &QueriesConfig) -> Queries {
    // Distinct triplets, with the images that show them and their ids.
    let mut index: HashMap<&[String; 3], usize> = HashMap::new();
    let mut triplets: Vec<[String; 3]> = Vec::new();
    let mut images: Vec<BTreeSet<i64>> = Vec::new();
    let mut ids: Vec<(i64, i64)> = Vec::new();
    for i in 0..dataset.len() {
        let t = &dataset.triplet[i];
        let k = *index.entry(t).or_insert_with(|| {
            triplets.push(t.clone());
            images.push(BTreeSet::new());
            ids.push((dataset.triplet_id[i], dataset.caption_id[i]));
            triplets.len() - 1
        });
        images[k].insert(dataset.image_id[i]);
    }
    let neighbours = one_slot_neighbours(&triplets);
    let mut q = Queries::default();
    for r in 0..dataset.len() {
        let t = index[&dataset.triplet[r]];
        let n_neighbours: usize = neighbours[t].iter().map(Vec::len).sum();
        let split = split_of(config.seed, dataset.region_id[r], config.test_fraction);
        for slot in Slot::ALL {
            for &u in &neighbours[t][slot.index()] {
                let other_image = images[u].iter().any(|&img| img != dataset.image_id[r]);
                if !other_image {
                    continue;
                }
                q.query_id.push(q.query_id.len() as i64);
                q.region_id.push(dataset.region_id[r]);
                q.dataset_id.push(r as i64);
                q.field.push(slot);
                q.value.push(triplets[t][slot.index()].clone());
                q.target.push(triplets[u][slot.index()].clone());
                q.source_triplet_id.push(ids[t].0);
                q.target_triplet_id.push(ids[u].0);
                q.source_caption_id.push(ids[t].1);
                q.target_caption_id.push(ids[u].1);
                q.n_neighbours.push(n_neighbours as i64);
                q.split.push(split.to_string());
            }
        }
    }
    let mut per_value: HashMap<&str, i64> = HashMap::new();
    for v in &q.value {
        *per_value.entry(v.as_str()).or_default() += 1;
    }
    q.n_same_value = q.value.iter().map(|v| per_value[v.as_str()]).collect();
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, r: &str, o: &str) -> [String; 3] {
        [s.into(), r.into(), o.into()]
    }

    #[test]
    fn neighbours_differ_in_exactly_one_slot() {
        let ts = vec![
            t("cat", "on", "bench"),
            t("dog", "on", "bench"),
            t("cat", "under", "bench"),
            t("cat", "on", "chair"),
            t("dog", "under", "chair"),
        ];
        let n = one_slot_neighbours(&ts);
        assert_eq!(n[0], [vec![1], vec![2], vec![3]]);
        assert!(n[4].iter().all(Vec::is_empty));
    }

    #[test]
    fn queries_need_another_image_of_the_target() {
        let dataset = Dataset {
            region_id: vec![10, 11, 12],
            image_id: vec![1, 1, 2],
            triplet_id: vec![0, 1, 1],
            caption_id: vec![0, 1, 1],
            triplet: vec![
                t("cat", "on", "bench"),
                t("dog", "on", "bench"),
                t("dog", "on", "bench"),
            ],
            split: vec![None; 3],
            triplets_row: vec![None; 3],
        };
        let q = generate(&dataset, &QueriesConfig::default());
        // cat→dog from region 10 (image 1): region 12 shows the target in image 2. dog→cat from
        // region 11 (image 1): the only cat is in image 1, so no query; region 12: kept.
        assert_eq!(q.region_id, vec![10, 12]);
        assert_eq!(q.value, vec!["cat", "dog"]);
        assert_eq!(q.n_neighbours, vec![1, 1]);
        assert_eq!(q.n_same_value, vec![1, 1]);
    }
}
