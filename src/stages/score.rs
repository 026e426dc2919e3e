//! `score`: the SIMAT score of the retrievals.
//!
//! A query succeeds at λ when the oracle judges its first retrieved image against the target
//! caption above `threshold` (0.5). The oracle is
//!
//! - `labels`: success when the retrieved region's triplet is the target triplet;
//! - `model`: the `oracle` stage's CLIP-family model, cosine of the crop and the caption;
//! - a matrix file, images × captions (`.npy`, or a PyTorch file holding one 2-D tensor such as
//!   the release's `oscar_similarity_matrix.pt`): rows by `dataset_id` (for the release,
//!   `triplets.csv`'s `dataset_id` column, as `eval.py` indexes its OSCAR matrix), columns by
//!   caption id (the line of `captions.txt`);
//! - a long table (Parquet, Arrow IPC or CSV) with columns `region_id, caption_id, score`
//!   (or `similarity`), joined by key: no order to get wrong. A pair a query needs and the table
//!   lacks is an error naming it.
//!
//! The SIMAT score is `100 · Σ wᵢ·successᵢ / Σ wᵢ` with `wᵢ = 1/sqrt(n_same_value)`, within a
//! split, reported per λ × split × field (`subj`, `rel`, `obj`, `all`). `scores.json` and the
//! metadata of `scores.parquet` record what the number is of: the query set, the embeddings'
//! model, the heads, the oracle, the threshold and simat's version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, Schema};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result, WithPath};
use crate::oracle;
use crate::tables;
use crate::tables::dataset::{Dataset, Queries, QuerySet, Slot};
use crate::tables::retrievals::{scores_schema, ScoreRow, ScoresFile, PROVENANCE_KEY};

/// Configuration of scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// `labels`, `model` (the oracle stage), an images × captions matrix (.npy, .pt; rows by
    /// dataset_id, columns by caption id) or a long table region_id, caption_id, score (Parquet,
    /// Arrow, CSV).
    #[arg(long, default_value = "labels")]
    pub oracle: String,
    /// Success when the oracle's similarity is above this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// The splits reported: dev, test, or all (dev, test and both together).
    #[arg(long, default_value = "all")]
    pub split: String,
    /// The queries scored, as for retrieve (the retrievals must be of the same set).
    #[arg(long, value_enum)]
    pub queries: Option<QuerySet>,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// The score stage.
#[derive(Debug, Clone)]
pub struct Score {
    /// Its configuration.
    pub config: ScoreConfig,
}

impl StageDef for Score {
    const NAME: &'static str = "score";
    const VERSION: u32 = 3;
    const ABOUT: &'static str =
        "The SIMAT score of the retrievals: RUN/score/scores.parquet and scores.json";
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::SCORES,
        &tables::SCORES_JSON,
        &tables::RESULTS,
        &tables::BREAKDOWN,
    ];
    type Config = ScoreConfig;
    fn resolve_paths(c: &mut ScoreConfig, base: &Path) {
        c.oracle = oracle::resolve(&c.oracle, base);
    }
    fn build(config: ScoreConfig) -> Result<Self> {
        let mut checks = Checks::<Self>::new();
        if !config.threshold.is_finite() {
            checks.bad("threshold", "must be a number");
        }
        if !["dev", "test", "all"].contains(&config.split.as_str()) {
            checks.bad(
                "split",
                format!("`{}`: expected dev, test or all", config.split),
            );
        }
        checks.check("oracle", oracle::check(&config.oracle));
        checks.finish(Score { config })
    }
    fn summary(run_dir: &Path) -> Result<Option<String>> {
        let file = ScoresFile::read(&run_dir.join(Self::NAME).join(tables::SCORES_JSON.file))?;
        Ok(Some(file.summary()))
    }
    fn needs(&self) -> Vec<Need> {
        let c = &self.config;
        let mut v = vec![
            Need::of(&tables::RETRIEVALS),
            Need::of(&tables::RETRIEVAL_PROVENANCE),
            Need::of(&tables::QUERIES)
                .from(c.queries.map(QuerySet::stage))
                .choose(QuerySet::CHOOSE),
            // The release's queries are of the release's dataset.
            Need::of(&tables::DATASET)
                .from((c.queries == Some(QuerySet::Release)).then_some(QuerySet::Release.stage())),
        ];
        if c.oracle == oracle::MODEL {
            for t in [
                &tables::ORACLE_REGIONS,
                &tables::ORACLE_CAPTIONS,
                &tables::ORACLE_MODEL,
            ] {
                v.push(Need::of(t).choose("an [oracle] section naming the model"));
            }
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
        let c = &self.config;
        if !c.threshold.is_finite() {
            return Err(Error::stage(
                "score",
                format!("threshold {} is not a number", c.threshold),
            ));
        }
        let started = std::time::Instant::now();
        // The queries, the dataset and the retrievals are read at once; their errors are
        // reported in this order, the retrievals' after the provenance's.
        let qpath = ctx.input(&tables::QUERIES)?;
        let dpath = ctx.input(&tables::DATASET)?;
        let rpath = ctx.input(&tables::RETRIEVALS)?;
        let ((queries, dataset), rank0) = rayon::join(
            || rayon::join(|| Queries::read(&qpath), || Dataset::read(&dpath)),
            || read_rank0(&rpath),
        );
        let queries = queries?;
        let query_set = QuerySet::of_stage(ctx.provider(&tables::QUERIES).unwrap_or_default());
        let dataset = dataset?;
        let retrieve_provenance = read_json(&ctx.input(&tables::RETRIEVAL_PROVENANCE)?)?;
        if retrieve_provenance["query_set"] != serde_json::json!(query_set) {
            return Err(Error::stage(
                "score",
                format!(
                    "the retrievals answer the {} query set, the score counts {}: rerun retrieve with --queries {}",
                    retrieve_provenance["query_set"], query_set, query_set
                ),
            ));
        }
        let (lambdas, top1) = index_top1(&rpath, rank0?, &queries)?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "score: retrievals read"
        );
        let (judge, oracle_provenance) = match oracle::oracle_file(&self.config.oracle) {
            None if self.config.oracle == oracle::MODEL => (
                oracle::Judge::Model(oracle::ModelOracle::open(
                    &ctx.input(&tables::ORACLE_REGIONS)?,
                    &ctx.input(&tables::ORACLE_CAPTIONS)?,
                    &dataset.region_id,
                )?),
                serde_json::json!({"kind": "model", "model": read_json(&ctx.input(&tables::ORACLE_MODEL)?)?["model"]}),
            ),
            None => (oracle::Judge::Labels, serde_json::json!({"kind": "labels"})),
            Some(p) => {
                let axes = oracle::Axes {
                    rows: oracle::Rows::Dataset,
                    region_id: &dataset.region_id,
                    columns: oracle::Columns::Caption,
                    // Wide enough for every caption a query names.
                    width: queries
                        .target_caption_id
                        .iter()
                        .chain(&queries.source_caption_id)
                        .copied()
                        .max()
                        .map_or(0, |m| m as usize + 1),
                    asks: (queries.target_caption_id.iter().zip(&queries.query_id))
                        .map(|(&c, &q)| (c as usize, ("query", q)))
                        .collect(),
                };
                let file = oracle::FileOracle::read(&p, &axes)?;
                let prov = serde_json::json!({
                    "kind": file.kind,
                    "file": file.file_name(),
                    "blake3": ctx.input_hashes.get("oracle"),
                });
                (oracle::Judge::File(file), prov)
            }
        };
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "score: oracle read"
        );
        let splits: Vec<&str> = match c.split.as_str() {
            "dev" => vec!["dev"],
            "test" => vec!["test"],
            "all" => vec!["dev", "test", "all"],
            other => {
                return Err(Error::stage(
                    "score",
                    format!("--split {other}: expected dev, test or all"),
                ))
            }
        };
        // The (split, field) cells each query counts in, found once for every λ: bit
        // `s·4 + f` for split `splits[s]` and field `f` (a slot's index, or 3 for all fields).
        let fields: Vec<&str> = Slot::ALL
            .iter()
            .map(|f| f.as_str())
            .chain(["all"])
            .collect();
        let cells: Vec<u16> = (0..queries.len())
            .map(|i| {
                let own_fields = (1u16 << queries.field[i].index()) | (1 << Slot::ALL.len());
                (splits.iter().enumerate())
                    .filter(|(_, s)| **s == "all" || queries.split[i] == **s)
                    .fold(0, |m, (s, _)| m | own_fields << (s * fields.len()))
            })
            .collect();
        let mut rows = Vec::new();
        let mut results = Results::with_capacity(lambdas.len() * queries.len());
        for (l, (heads, lambda)) in lambdas.iter().enumerate() {
            let lambda = *lambda;
            // Judged in parallel; the first query in order that cannot be judged is the error.
            let judged: Vec<(Option<f64>, bool)> = (0..queries.len())
                .into_par_iter()
                .map(|i| {
                    let r = top1[l][i];
                    let target = oracle::Target {
                        triplet_id: queries.target_triplet_id[i],
                        caption_id: queries.target_caption_id[i],
                        query_id: queries.query_id[i],
                    };
                    judge.judge(
                        r,
                        dataset.triplet_id[r],
                        dataset.region_id[r],
                        target,
                        c.threshold,
                    )
                })
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Result<_>>()?;
            results.push(heads, lambda, &queries, &dataset, &top1[l], &judged);
            // (weight of successes, weight, queries) per cell, split-major; each cell sums its
            // queries in query order.
            let mut sums = vec![(0f64, 0f64, 0u64); splits.len() * fields.len()];
            for (i, &(_, ok)) in judged.iter().enumerate() {
                let w = queries.weight(i);
                let mut cell_bits = cells[i];
                while cell_bits != 0 {
                    let (num, den, n) = &mut sums[cell_bits.trailing_zeros() as usize];
                    cell_bits &= cell_bits - 1;
                    *den += w;
                    if ok {
                        *num += w;
                    }
                    *n += 1;
                }
            }
            for (cell, &(num, den, n)) in sums.iter().enumerate() {
                let score = if den > 0.0 {
                    100.0 * num / den
                } else {
                    f64::NAN
                };
                rows.push(ScoreRow {
                    heads: heads.clone(),
                    lambda,
                    split: splits[cell / fields.len()].to_string(),
                    field: fields[cell % fields.len()].into(),
                    score,
                    n_queries: n,
                });
            }
        }
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "score: judged");
        let provenance = serde_json::json!({
            "query_set": query_set,
            "queries": retrieve_provenance["queries"],
            "embeddings": retrieve_provenance["embeddings"],
            "heads": retrieve_provenance["heads"],
            "k": retrieve_provenance["k"],
            "oracle": oracle_provenance,
            "threshold": c.threshold,
            "simat_version": crate::ENGINE_VERSION,
        });

        let oracle_name = match &oracle_provenance["file"] {
            serde_json::Value::String(f) => f.clone(),
            _ => oracle_provenance["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        let n_rows = rows.len();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.heads.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.lambda),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.split.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.field.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.score))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.n_queries as i64),
            )),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                query_set.as_str(),
                n_rows,
            ))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                oracle_name.as_str(),
                n_rows,
            ))),
            Arc::new(Float64Array::from_iter_values(std::iter::repeat_n(
                c.threshold,
                n_rows,
            ))),
        ];
        let schema = scores_schema();
        let schema = Arc::new(Schema::new_with_metadata(
            schema.fields().clone(),
            HashMap::from([(PROVENANCE_KEY.to_string(), provenance.to_string())]),
        ));
        let batch =
            RecordBatch::try_new(schema, cols).map_err(|e| Error::Internal(e.to_string()))?;
        let n = crate::io::write_table(&ctx.output(&tables::SCORES)?, &batch)?;
        let file = ScoresFile {
            provenance,
            scores: rows,
        };
        crate::io::atomic::write_atomic(
            ctx.output(&tables::SCORES_JSON)?,
            (serde_json::to_string_pretty(&file).expect("json") + "\n").as_bytes(),
        )?;
        // The per-query table and the breakdowns are independent: one core each.
        let (results_path, breakdown_path) = (
            ctx.output(&tables::RESULTS)?,
            ctx.output(&tables::BREAKDOWN)?,
        );
        let (n_results, n_breakdown) = rayon::join(
            || crate::io::write_table(&results_path, &results.to_batch()?),
            || crate::io::write_table(&breakdown_path, &breakdown(&results, &splits)?),
        );
        let (n_results, n_breakdown) = (n_results?, n_breakdown?);
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "score: tables written"
        );
        let mut report = StageReport::default();
        report.table(&tables::SCORES, Some(n));
        report.table(&tables::SCORES_JSON, None);
        report.table(&tables::RESULTS, Some(n_results));
        report.table(&tables::BREAKDOWN, Some(n_breakdown));
        report.count("queries", queries.len() as u64);
        Ok(report)
    }
}

/// `results.parquet`, one row per (head set, λ, query), built column by column.
#[derive(Debug)]
struct Results<'a> {
    heads: Vec<&'a str>,
    lam: Vec<f64>,
    query_id: Vec<i64>,
    split: Vec<&'a str>,
    field: Vec<&'static str>,
    value: Vec<&'a str>,
    target: Vec<&'a str>,
    subj: Vec<&'a str>,
    rel: Vec<&'a str>,
    obj: Vec<&'a str>,
    source_triplet_id: Vec<i64>,
    target_triplet_id: Vec<i64>,
    source_caption_id: Vec<i64>,
    target_caption_id: Vec<i64>,
    region_id: Vec<i64>,
    dataset_id: Vec<i64>,
    retrieved_dataset_id: Vec<i64>,
    retrieved_region_id: Vec<i64>,
    oracle_value: Vec<Option<f64>>,
    success: Vec<bool>,
    weight: Vec<f64>,
}

impl<'a> Results<'a> {
    /// Room for `rows` rows: growing 21 columns by doubling copied each and faulted in fresh
    /// pages, a fifth of the score stage's page faults on official SIMAT.
    fn with_capacity(rows: usize) -> Self {
        Results {
            heads: Vec::with_capacity(rows),
            lam: Vec::with_capacity(rows),
            query_id: Vec::with_capacity(rows),
            split: Vec::with_capacity(rows),
            field: Vec::with_capacity(rows),
            value: Vec::with_capacity(rows),
            target: Vec::with_capacity(rows),
            subj: Vec::with_capacity(rows),
            rel: Vec::with_capacity(rows),
            obj: Vec::with_capacity(rows),
            source_triplet_id: Vec::with_capacity(rows),
            target_triplet_id: Vec::with_capacity(rows),
            source_caption_id: Vec::with_capacity(rows),
            target_caption_id: Vec::with_capacity(rows),
            region_id: Vec::with_capacity(rows),
            dataset_id: Vec::with_capacity(rows),
            retrieved_dataset_id: Vec::with_capacity(rows),
            retrieved_region_id: Vec::with_capacity(rows),
            oracle_value: Vec::with_capacity(rows),
            success: Vec::with_capacity(rows),
            weight: Vec::with_capacity(rows),
        }
    }

    fn push(
        &mut self,
        heads: &'a str,
        lam: f64,
        q: &'a Queries,
        d: &'a Dataset,
        top1: &[usize],
        judged: &[(Option<f64>, bool)],
    ) {
        for i in 0..q.len() {
            let src = &d.triplet[q.dataset_id[i] as usize];
            let r = top1[i];
            self.heads.push(heads);
            self.lam.push(lam);
            self.query_id.push(q.query_id[i]);
            self.split.push(&q.split[i]);
            self.field.push(q.field[i].as_str());
            self.value.push(&q.value[i]);
            self.target.push(&q.target[i]);
            self.subj.push(&src[0]);
            self.rel.push(&src[1]);
            self.obj.push(&src[2]);
            self.source_triplet_id.push(q.source_triplet_id[i]);
            self.target_triplet_id.push(q.target_triplet_id[i]);
            self.source_caption_id.push(q.source_caption_id[i]);
            self.target_caption_id.push(q.target_caption_id[i]);
            self.region_id.push(q.region_id[i]);
            self.dataset_id.push(q.dataset_id[i]);
            self.retrieved_dataset_id.push(r as i64);
            self.retrieved_region_id.push(d.region_id[r]);
            self.oracle_value.push(judged[i].0);
            self.success.push(judged[i].1);
            self.weight.push(q.weight(i));
        }
    }

    fn to_batch(&self) -> Result<RecordBatch> {
        let s = |v: &Vec<&str>| -> ArrayRef { Arc::new(StringArray::from_iter_values(v)) };
        let i = |v: &Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v.clone())) };
        type Build<'b> = Box<dyn Fn() -> ArrayRef + Send + Sync + 'b>;
        // Each column is built on whichever thread is free: one at a time they took 10 ms of
        // official SIMAT's score.
        let builds: Vec<Build> = vec![
            Box::new(|| s(&self.heads)),
            Box::new(|| Arc::new(Float64Array::from(self.lam.clone()))),
            Box::new(|| i(&self.query_id)),
            Box::new(|| s(&self.split)),
            Box::new(|| Arc::new(StringArray::from_iter_values(self.field.iter().copied()))),
            Box::new(|| s(&self.value)),
            Box::new(|| s(&self.target)),
            Box::new(|| s(&self.subj)),
            Box::new(|| s(&self.rel)),
            Box::new(|| s(&self.obj)),
            Box::new(|| i(&self.source_triplet_id)),
            Box::new(|| i(&self.target_triplet_id)),
            Box::new(|| i(&self.source_caption_id)),
            Box::new(|| i(&self.target_caption_id)),
            Box::new(|| i(&self.region_id)),
            Box::new(|| i(&self.dataset_id)),
            Box::new(|| i(&self.retrieved_dataset_id)),
            Box::new(|| i(&self.retrieved_region_id)),
            Box::new(|| Arc::new(Float64Array::from(self.oracle_value.clone()))),
            Box::new(|| Arc::new(arrow::array::BooleanArray::from(self.success.clone()))),
            Box::new(|| Arc::new(Float64Array::from(self.weight.clone()))),
        ];
        let cols: Vec<ArrayRef> = builds.par_iter().map(|build| build()).collect();
        RecordBatch::try_new(tables::retrievals::results_schema(), cols)
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

/// `breakdown.parquet`: per head set, λ and split, the queries and weighted score of each source
/// word, target word, relation, subject, object and triplet (the SIMAT score within the group).
fn breakdown(r: &Results, splits: &[&str]) -> Result<RecordBatch> {
    const DIMENSIONS: [&str; 6] = [
        "source_word",
        "target_word",
        "relation",
        "subject",
        "object",
        "triplet",
    ];
    // (head set and λ by first appearance, split, dimension, key) → (queries, Σw, Σw·success).
    // Words are numbered once (0 is the empty word), so that a group's key is integers: hashing
    // and comparing three strings per dimension, split and row cost more than the rest of the
    // stage. A triplet's key is its three words, formatted once per group.
    let mut order: Vec<(&str, f64)> = Vec::new();
    let mut words: Vec<&str> = vec![""];
    let mut word_ids: rustc_hash::FxHashMap<&str, u32> = Default::default();
    let mut word_id = |w| {
        *word_ids.entry(w).or_insert_with(|| {
            words.push(w);
            words.len() as u32 - 1
        })
    };
    type GroupKey = (u32, u8, u8, [u32; 3]);
    // Queries, Σw, Σw·success.
    type Sums = (i64, f64, f64);
    let mut groups: rustc_hash::FxHashMap<GroupKey, Sums> = Default::default();
    for k in 0..r.heads.len() {
        let hl = (r.heads[k], r.lam[k]);
        let pos = order.iter().position(|o| *o == hl).unwrap_or_else(|| {
            order.push(hl);
            order.len() - 1
        }) as u32;
        let (value, target) = (word_id(r.value[k]), word_id(r.target[k]));
        let (rel, subj, obj) = (word_id(r.rel[k]), word_id(r.subj[k]), word_id(r.obj[k]));
        let keys: [[u32; 3]; 6] = [
            [value, 0, 0],
            [target, 0, 0],
            [rel, 0, 0],
            [subj, 0, 0],
            [obj, 0, 0],
            [subj, rel, obj],
        ];
        for (si, _) in splits
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == "all" || r.split[k] == **s)
        {
            for (di, key) in keys.iter().enumerate() {
                let e = groups
                    .entry((pos, si as u8, di as u8, *key))
                    .or_insert((0, 0.0, 0.0));
                e.0 += 1;
                e.1 += r.weight[k];
                if r.success[k] {
                    e.2 += r.weight[k];
                }
            }
        }
    }
    // Rows ordered by head set and λ, then split, dimension and key by name.
    let mut rows: Vec<(usize, &str, &str, String, Sums)> = groups
        .into_iter()
        .map(|((pos, si, di, key), v)| {
            let di = di as usize;
            let key = if DIMENSIONS[di] == "triplet" {
                let [s, r, o] = key.map(|w| words[w as usize]);
                format!("{s} | {r} | {o}")
            } else {
                words[key[0] as usize].to_string()
            };
            (pos as usize, splits[si as usize], DIMENSIONS[di], key, v)
        })
        .collect();
    rows.sort_unstable_by(|a, b| (a.0, a.1, a.2, &a.3).cmp(&(b.0, b.1, b.2, &b.3)));
    let (mut heads, mut lam, mut split, mut dim, mut key, mut n, mut score) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (pos, s, d, k, (q, w, ws)) in rows {
        heads.push(order[pos].0);
        lam.push(order[pos].1);
        split.push(s);
        dim.push(d);
        key.push(k);
        n.push(q);
        score.push(100.0 * ws / w);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(heads)),
        Arc::new(Float64Array::from(lam)),
        Arc::new(StringArray::from(split)),
        Arc::new(StringArray::from(dim)),
        Arc::new(StringArray::from(key)),
        Arc::new(Int64Array::from(n)),
        Arc::new(Float64Array::from(score)),
    ];
    RecordBatch::try_new(tables::retrievals::breakdown_schema(), cols)
        .map_err(|e| Error::Internal(e.to_string()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("failed to read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::data(path, e.to_string()))
}

/// (head set, λ) pairs, and per pair the first retrieved dataset_id of each query.
type Top1 = (Vec<(String, f64)>, Vec<Vec<usize>>);

/// The rank-0 rows of a retrievals table: the (heads, λ) keys in order of first appearance,
/// and per row its key, query id and retrieved dataset id. Needs no other table, so that it
/// can be read while the queries are.
type Rank0 = (Vec<(String, f64)>, Vec<(usize, i64, i64)>);

fn read_rank0(path: &Path) -> Result<Rank0> {
    let mut keys: Vec<(String, f64)> = Vec::new();
    let mut rows = Vec::new();
    for batch in crate::io::read_table(path, &["heads", "query_id", "lam", "rank", "dataset_id"])? {
        let b = batch.map_err(|e| e.with_path(path))?;
        let heads = b.column(0).as_string::<i32>();
        let qid = b.column(1).as_primitive::<Int64Type>();
        let lam = b.column(2).as_primitive::<Float64Type>();
        let rank = b.column(3).as_primitive::<Int32Type>();
        let did = b.column(4).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            if rank.value(r) != 0 {
                continue;
            }
            let (h, l) = (heads.value(r), lam.value(r));
            let k = match keys.iter().position(|(kh, kl)| kh == h && *kl == l) {
                Some(k) => k,
                None => {
                    keys.push((h.to_string(), l));
                    keys.len() - 1
                }
            };
            rows.push((k, qid.value(r), did.value(r)));
        }
    }
    Ok((keys, rows))
}

/// Each key's top-1 dataset id per query (queries in table order); every query must have one.
fn index_top1(path: &Path, (keys, rows): Rank0, queries: &Queries) -> Result<Top1> {
    let index: HashMap<i64, usize> = queries
        .query_id
        .iter()
        .enumerate()
        .map(|(i, &q)| (q, i))
        .collect();
    let mut top1: Vec<Vec<usize>> = vec![vec![usize::MAX; queries.len()]; keys.len()];
    for (k, qid, did) in rows {
        let Some(&i) = index.get(&qid) else {
            return Err(Error::data(
                path,
                format!("query {qid} is not in the queries table"),
            ));
        };
        top1[k][i] = did as usize;
    }
    for (k, t) in top1.iter().enumerate() {
        if let Some(i) = t.iter().position(|&d| d == usize::MAX) {
            return Err(Error::data(
                path,
                format!(
                    "no retrieval for query {} at λ = {} with heads {}",
                    queries.query_id[i], keys[k].1, keys[k].0
                ),
            ));
        }
    }
    Ok((keys, top1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queries(ids: &[i64]) -> Queries {
        Queries {
            query_id: ids.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn top1_is_joined_on_query_ids_and_a_missing_or_unknown_query_is_named() {
        let path = Path::new("retrievals.parquet");
        let keys = vec![("none".to_string(), 0.0), ("none".to_string(), 1.0)];
        // Rows in any order: joined on the query id, not by position.
        let rows = vec![(1, 30, 5), (0, 10, 7), (0, 30, 8), (1, 10, 9)];
        let (k, top1) =
            index_top1(path, (keys.clone(), rows.clone()), &queries(&[30, 10])).unwrap();
        assert_eq!(k, keys);
        assert_eq!(top1, vec![vec![8, 7], vec![5, 9]]);
        let unknown = index_top1(path, (keys.clone(), rows.clone()), &queries(&[30])).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("query 10 is not in the queries table"),
            "{unknown}"
        );
        let missing =
            index_top1(path, (keys, rows[..3].to_vec()), &queries(&[30, 10])).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("no retrieval for query 10 at λ = 1 with heads none"),
            "{missing}"
        );
    }
}
