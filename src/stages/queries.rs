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

use crate::engine::StageDef;
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
        crate::config::clap_default()
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
            return Err(crate::engine::bad::<Self>(
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
        let (n, per_slot, regions) = write_queries(
            &dataset,
            &self.config,
            &ctx.output(&tables::QUERIES)?,
            BATCH_QUERIES,
        )?;
        let mut report = StageReport::default();
        report.table(&tables::QUERIES, Some(n));
        report.count("queries", n);
        for slot in Slot::ALL {
            report.count(
                &format!("queries_{}", slot.as_str()),
                per_slot[slot.index()],
            );
        }
        report.count("regions_with_queries", regions);
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

/// The distinct triplets of a dataset, the images showing each, and their one-slot neighbours:
/// what query generation walks, built once and walked twice (counts, then rows).
struct QueryPlan<'a> {
    dataset: &'a Dataset,
    index: HashMap<&'a [String; 3], usize>,
    triplets: Vec<[String; 3]>,
    images: Vec<BTreeSet<i64>>,
    /// (triplet_id, caption_id) per distinct triplet.
    ids: Vec<(i64, i64)>,
    neighbours: Vec<[Vec<usize>; 3]>,
}

/// One query, borrowing its words from the plan.
struct QueryRow<'a> {
    region: usize,
    slot: Slot,
    value: &'a str,
    target: &'a str,
    source_ids: (i64, i64),
    target_ids: (i64, i64),
    n_neighbours: i64,
    split: &'static str,
}

impl<'a> QueryPlan<'a> {
    fn new(dataset: &'a Dataset) -> Self {
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
        QueryPlan {
            dataset,
            index,
            triplets,
            images,
            ids,
            neighbours,
        }
    }

    /// Every query in query_id order: by region (dataset order), slot, then target word; stops at
    /// the first error `f` returns.
    fn for_each(
        &self,
        config: &QueriesConfig,
        mut f: impl FnMut(QueryRow<'_>) -> Result<()>,
    ) -> Result<()> {
        let d = self.dataset;
        for r in 0..d.len() {
            let t = self.index[&d.triplet[r]];
            let n_neighbours: usize = self.neighbours[t].iter().map(Vec::len).sum();
            let split = split_of(config.seed, d.region_id[r], config.test_fraction);
            for slot in Slot::ALL {
                for &u in &self.neighbours[t][slot.index()] {
                    if !self.images[u].iter().any(|&img| img != d.image_id[r]) {
                        continue;
                    }
                    f(QueryRow {
                        region: r,
                        slot,
                        value: &self.triplets[t][slot.index()],
                        target: &self.triplets[u][slot.index()],
                        source_ids: self.ids[t],
                        target_ids: self.ids[u],
                        n_neighbours: n_neighbours as i64,
                        split,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Queries per `value` word (the release's `norm2`), from a first walk.
    fn per_value(&self, config: &QueriesConfig) -> HashMap<String, i64> {
        let mut per_value: HashMap<String, i64> = HashMap::new();
        let counted = self.for_each(config, |q| {
            match per_value.get_mut(q.value) {
                Some(n) => *n += 1,
                None => {
                    per_value.insert(q.value.to_string(), 1);
                }
            }
            Ok(())
        });
        counted.expect("counting cannot fail");
        per_value
    }
}

impl Queries {
    fn push_row(&mut self, query_id: u64, d: &Dataset, q: &QueryRow<'_>, n_same_value: i64) {
        self.query_id.push(query_id as i64);
        self.region_id.push(d.region_id[q.region]);
        self.dataset_id.push(q.region as i64);
        self.field.push(q.slot);
        self.value.push(q.value.to_string());
        self.target.push(q.target.to_string());
        self.source_triplet_id.push(q.source_ids.0);
        self.target_triplet_id.push(q.target_ids.0);
        self.source_caption_id.push(q.source_ids.1);
        self.target_caption_id.push(q.target_ids.1);
        self.n_neighbours.push(q.n_neighbours);
        self.n_same_value.push(n_same_value);
        self.split.push(q.split.to_string());
    }
}

/// Generate the queries of `dataset`, all in memory (the stage streams them instead).
pub fn generate(dataset: &Dataset, config: &QueriesConfig) -> Queries {
    let mut all = Queries::default();
    in_batches(dataset, config, usize::MAX, |batch| {
        all = batch;
        Ok(())
    })
    .expect("collecting in memory cannot fail");
    all
}

/// Queries per written batch: the stage holds one batch, whatever the number of queries.
const BATCH_QUERIES: usize = 1 << 16;

/// The queries of `dataset` handed to `sink` in batches of `batch_queries` (one batch, maybe
/// empty, when there are fewer); returns the report's counts: queries, queries per slot, regions
/// with queries.
fn in_batches(
    dataset: &Dataset,
    config: &QueriesConfig,
    batch_queries: usize,
    mut sink: impl FnMut(Queries) -> Result<()>,
) -> Result<(u64, [u64; 3], u64)> {
    let plan = QueryPlan::new(dataset);
    let per_value = plan.per_value(config);
    let mut batch = Queries::default();
    let (mut n, mut per_slot, mut regions, mut last_region) = (0u64, [0u64; 3], 0u64, None);
    plan.for_each(config, |row| {
        batch.push_row(n, dataset, &row, per_value[row.value]);
        n += 1;
        per_slot[row.slot.index()] += 1;
        if last_region != Some(row.region) {
            regions += 1;
            last_region = Some(row.region);
        }
        if batch.len() == batch_queries {
            sink(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    if !batch.is_empty() || n == 0 {
        sink(batch)?;
    }
    Ok((n, per_slot, regions))
}

/// Write the queries of `dataset` to `path` in batches of `batch_queries`; returns the counts of
/// [`in_batches`].
fn write_queries(
    dataset: &Dataset,
    config: &QueriesConfig,
    path: &std::path::Path,
    batch_queries: usize,
) -> Result<(u64, [u64; 3], u64)> {
    let mut w = crate::io::TableWriter::create(path, crate::tables::dataset::queries_schema())?;
    let counts = in_batches(dataset, config, batch_queries, |b| w.write(&b.to_batch()))?;
    w.finish()?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_batches_equal_the_queries_generated_in_memory() {
        let mut d = Dataset::default();
        let triplets = [
            ["man", "on", "bench"],
            ["dog", "on", "bench"],
            ["cat", "on", "bench"],
            ["man", "under", "bench"],
            ["man", "on", "chair"],
            ["dog", "under", "chair"],
        ];
        for i in 0..60i64 {
            let t = triplets[i as usize % triplets.len()];
            d.region_id.push(1000 + i);
            d.image_id.push(i / 2);
            d.triplet_id.push(i % triplets.len() as i64);
            d.caption_id.push(i % triplets.len() as i64);
            d.triplet.push(t.map(String::from));
        }
        let config = QueriesConfig::default();
        let want = generate(&d, &config);
        assert!(want.len() > 50, "{} queries", want.len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.parquet");
        let (n, per_slot, regions) = write_queries(&d, &config, &path, 7).unwrap();
        assert_eq!(n as usize, want.len());
        assert_eq!(per_slot.iter().sum::<u64>(), n);
        assert_eq!(
            regions as usize,
            want.region_id.iter().collect::<BTreeSet<_>>().len()
        );
        let got = Queries::read(&path).unwrap();
        assert_eq!(got.to_batch(), want.to_batch());
    }

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
