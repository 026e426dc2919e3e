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
//!
//! `metrics.parquet` holds the ranked metrics of [`crate::metrics`] (SIMAT@k, Recall@k, MRR@k,
//! mAP@k) for each k of `at`, averaged with the same weights; SIMAT@1 is the SIMAT score, summed
//! in the same order, so the same bits.
//!
//! The queries are read a block at a time (`query_block`) beside the retrievals, whose rows
//! follow them (per query: head set, λ, rank, as `retrieve` writes them; a row out of that order
//! is refused, naming it), so that the stage holds the dataset, the oracle and one block. Each
//! cell sums its queries in query order whatever the blocks, so the scores do not depend on them.

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
use crate::metrics::{Metric, Ranked};
use crate::oracle;
use crate::tables;
use crate::tables::dataset::{Dataset, Queries, QuerySet, Slot, QUERY_BLOCK};
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
    /// Queries judged at once: the stage's memory is a block's queries and rows (beside the
    /// dataset and the oracle); the scores do not depend on it.
    #[arg(long, default_value_t = QUERY_BLOCK)]
    pub query_block: usize,
    /// The k of the ranked metrics (metrics.parquet: SIMAT@k, Recall@k, MRR@k, mAP@k), each at
    /// most retrieve's k. Default: 1 and 5, those that retrieve's k allows.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub at: Vec<usize>,
    /// Bootstrap resamples of the queries (within each split) for each score's interval
    /// (`ci_low`, `ci_high`); 0 for none.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// The seed of the resamples (SplitMix64; see the README for how a draw is made).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The intervals' confidence.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
}

/// The k of the ranked metrics when `at` is not given (those up to retrieve's k).
pub const DEFAULT_AT: &[usize] = &[1, 5];

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
    const VERSION: u32 = 5;
    const ABOUT: &'static str =
        "The SIMAT score of the retrievals: RUN/score/scores.parquet and scores.json";
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::SCORES,
        &tables::SCORES_JSON,
        &tables::RESULTS,
        &tables::BREAKDOWN,
        &tables::METRICS,
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
        if config.query_block == 0 {
            checks.bad("query_block", "must be at least 1");
        }
        if !(config.confidence > 0.0 && config.confidence < 1.0) {
            checks.bad("confidence", "must be between 0 and 1, as 0.95");
        }
        if config.at.contains(&0) {
            checks.bad("at", "each k must be at least 1");
        }
        let mut at = config.at.clone();
        at.sort_unstable();
        at.dedup();
        if at.len() != config.at.len() {
            checks.bad("at", "a k is given twice");
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
        let mut c = oracle::config_value(&self.config, &self.config.oracle);
        // The block is memory, not results.
        c.as_object_mut()
            .expect("a config is an object")
            .remove("query_block");
        c
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
        // The queries are read block by block beside the retrievals, whose rows follow them.
        // Errors are reported in this order: the first block of queries, the dataset, the
        // retrieve stage's provenance, then the retrievals.
        let qpath = ctx.input(&tables::QUERIES)?;
        let dpath = ctx.input(&tables::DATASET)?;
        let rpath = ctx.input(&tables::RETRIEVALS)?;
        let mut blocks = Queries::blocks(&qpath, c.query_block)?;
        let mut first_block = blocks.next().transpose()?;
        let query_set = QuerySet::of_stage(ctx.provider(&tables::QUERIES).unwrap_or_default());
        let dataset = Dataset::read(&dpath)?;
        let retrieve_provenance = read_json(&ctx.input(&tables::RETRIEVAL_PROVENANCE)?)?;
        let model = tables::retrievals::model_of_embeddings(&retrieve_provenance["embeddings"]);
        if retrieve_provenance["query_set"] != serde_json::json!(query_set) {
            return Err(Error::stage(
                "score",
                format!(
                    "the retrievals answer the {} query set, the score counts {}: rerun retrieve with --queries {}",
                    retrieve_provenance["query_set"], query_set, query_set
                ),
            ));
        }
        let mut retrievals = Rank0Cursor::open(&rpath)?;
        let mut lists = RankedLists::open(&rpath)?;
        let at = ranked_at(&c.at, &retrieve_provenance)?;
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
                let (width, asks) = caption_asks(&qpath)?;
                let axes = oracle::Axes {
                    rows: oracle::Rows::Dataset,
                    region_id: &dataset.region_id,
                    columns: oracle::Columns::Caption,
                    width,
                    asks,
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
        let fields: Vec<&str> = Slot::ALL
            .iter()
            .map(|f| f.as_str())
            .chain(["all"])
            .collect();
        let (results_path, breakdown_path) = (
            ctx.output(&tables::RESULTS)?,
            ctx.output(&tables::BREAKDOWN)?,
        );
        let mut results_out =
            crate::io::TableWriter::create(&results_path, tables::retrievals::results_schema())?;
        let mut groups = Breakdown::default();
        // Per (head set, λ), (weight of successes, weight, queries) per cell, split-major; each
        // cell sums its queries in query order, block after block.
        let mut sums: Vec<Vec<(f64, f64, u64)>> = Vec::new();
        let mut ranked = RankedSums::new(&dataset, &at, splits.len() * fields.len());
        let mut per_query = PerQuery::default();
        let mut n_queries = 0usize;
        while let Some((first_row, queries)) = first_block
            .take()
            .map(Ok)
            .or_else(|| blocks.next())
            .transpose()?
        {
            let top1 = retrievals.top1(&queries, first_row, dataset.len())?;
            let keys = retrievals.keys();
            sums.resize_with(keys.len(), || {
                vec![(0.0, 0.0, 0); splits.len() * fields.len()]
            });
            // The (split, field) cells each query counts in, found once for every λ: bit
            // `s·4 + f` for split `splits[s]` and field `f` (a slot's index, or 3 for all fields).
            let cells: Vec<u16> = (0..queries.len())
                .map(|i| {
                    let own_fields = (1u16 << queries.field[i].index()) | (1 << Slot::ALL.len());
                    (splits.iter().enumerate())
                        .filter(|(_, s)| **s == "all" || queries.split[i] == **s)
                        .fold(0, |m, (s, _)| m | own_fields << (s * fields.len()))
                })
                .collect();
            // judged[key][query]; in parallel, the first query in order that cannot be judged is
            // the error.
            let mut judged: Vec<Vec<(Option<f64>, bool)>> = Vec::with_capacity(keys.len());
            for (l, sums) in sums.iter_mut().enumerate() {
                let j: Vec<(Option<f64>, bool)> = (0..queries.len())
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
                for (i, &(_, ok)) in j.iter().enumerate() {
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
                judged.push(j);
            }
            per_query.add(&queries, &cells, &judged, n_queries);
            let block_lists = lists.block(&queries, keys.len(), dataset.len())?;
            ranked.add(
                &block_lists,
                &top1,
                &queries,
                &cells,
                &judge,
                c.threshold,
                &lists.path,
            )?;
            // Rows follow the queries: per query, each head set and λ.
            let mut results = Results::with_capacity(keys.len() * queries.len());
            for i in 0..queries.len() {
                for (l, (heads, lambda)) in keys.iter().enumerate() {
                    results.push(
                        heads,
                        *lambda,
                        &queries,
                        &dataset,
                        i,
                        top1[l][i],
                        judged[l][i],
                    );
                }
            }
            // The block's rows and its breakdown sums are independent: one core each.
            let (batch, ()) = rayon::join(
                || results.to_batch(&model),
                || groups.add(&results, &splits),
            );
            results_out.write(&batch?)?;
            n_queries += queries.len();
        }
        retrievals.finish()?;
        let keys = retrievals.keys().to_vec();
        let n_cells = splits.len() * fields.len();
        let intervals = per_query.intervals(keys.len(), n_cells, c);
        let mut rows = Vec::new();
        for (l, ((heads, lambda), sums)) in keys.iter().zip(&sums).enumerate() {
            for (cell, &(num, den, n)) in sums.iter().enumerate() {
                let score = if den > 0.0 {
                    100.0 * num / den
                } else {
                    f64::NAN
                };
                rows.push(ScoreRow {
                    heads: heads.clone(),
                    lambda: *lambda,
                    split: splits[cell / fields.len()].to_string(),
                    field: fields[cell % fields.len()].into(),
                    score,
                    n_queries: n,
                    ci: intervals.get(l * n_cells + cell).copied().flatten(),
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
            "bootstrap": (c.bootstrap > 0).then(|| serde_json::json!({
                "resamples": c.bootstrap,
                "seed": c.seed,
                "confidence": c.confidence,
                "strata": "split",
                "generator": "splitmix64",
                "interval": "percentile (numpy's linear)",
            })),
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
            tables::retrievals::model_column(&model, n_rows),
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
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.ci.map(|(lo, _)| lo)),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.ci.map(|(_, hi)| hi)),
            )),
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
        let n_results = results_out.finish()?;
        let n_breakdown =
            crate::io::write_table(&breakdown_path, &groups.to_batch(&model, &splits)?)?;
        let n_metrics = crate::io::write_table(
            &ctx.output(&tables::METRICS)?,
            &ranked.to_batch(&model, &keys, &splits, &fields)?,
        )?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "score: tables written"
        );
        let mut report = StageReport::default();
        report.table(&tables::SCORES, Some(n));
        report.table(&tables::SCORES_JSON, None);
        report.table(&tables::RESULTS, Some(n_results));
        report.table(&tables::BREAKDOWN, Some(n_breakdown));
        report.table(&tables::METRICS, Some(n_metrics));
        report.count("queries", n_queries as u64);
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

    /// The row of query `i` of `q` at one head set and λ, whose first retrieved image is
    /// dataset row `r`.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        heads: &'a str,
        lam: f64,
        q: &'a Queries,
        d: &'a Dataset,
        i: usize,
        r: usize,
        (oracle_value, success): (Option<f64>, bool),
    ) {
        let src = &d.triplet[q.dataset_id[i] as usize];
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
        self.oracle_value.push(oracle_value);
        self.success.push(success);
        self.weight.push(q.weight(i));
    }

    fn to_batch(&self, model: &str) -> Result<RecordBatch> {
        let s = |v: &Vec<&str>| -> ArrayRef { Arc::new(StringArray::from_iter_values(v)) };
        let i = |v: &Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v.clone())) };
        type Build<'b> = Box<dyn Fn() -> ArrayRef + Send + Sync + 'b>;
        // Each column is built on whichever thread is free: one at a time they took 10 ms of
        // official SIMAT's score.
        let builds: Vec<Build> = vec![
            Box::new(|| tables::retrievals::model_column(model, self.heads.len())),
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

/// The dimensions of `breakdown.parquet`.
const DIMENSIONS: [&str; 6] = [
    "source_word",
    "target_word",
    "relation",
    "subject",
    "object",
    "triplet",
];

/// A group of `breakdown.parquet`: (head set and λ by first appearance, split, dimension, key).
type GroupKey = (u32, u8, u8, [u32; 3]);
/// Queries, Σw, Σw·success.
type Sums = (i64, f64, f64);

/// `breakdown.parquet`'s sums, added block by block: per head set, λ and split, the queries and
/// weighted score of each source word, target word, relation, subject, object and triplet (the
/// SIMAT score within the group). Its size is the vocabulary's and the triplets', not the
/// queries'.
///
/// Words are numbered once (0 is the empty word), so that a group's key is integers: hashing
/// and comparing three strings per dimension, split and row cost more than the rest of the
/// stage. A triplet's key is its three words, formatted once per group.
#[derive(Debug)]
struct Breakdown {
    order: Vec<(String, f64)>,
    words: Vec<String>,
    word_ids: rustc_hash::FxHashMap<String, u32>,
    groups: rustc_hash::FxHashMap<GroupKey, Sums>,
}

impl Default for Breakdown {
    fn default() -> Self {
        Breakdown {
            order: Vec::new(),
            words: vec![String::new()],
            word_ids: Default::default(),
            groups: Default::default(),
        }
    }
}

impl Breakdown {
    fn word_id(&mut self, w: &str) -> u32 {
        if let Some(&id) = self.word_ids.get(w) {
            return id;
        }
        self.words.push(w.to_string());
        let id = self.words.len() as u32 - 1;
        self.word_ids.insert(w.to_string(), id);
        id
    }

    /// Add a block's rows (in any order: each group sums its rows in row order).
    fn add(&mut self, r: &Results, splits: &[&str]) {
        for k in 0..r.heads.len() {
            let pos = match self
                .order
                .iter()
                .position(|(h, l)| h == r.heads[k] && *l == r.lam[k])
            {
                Some(p) => p,
                None => {
                    self.order.push((r.heads[k].to_string(), r.lam[k]));
                    self.order.len() - 1
                }
            } as u32;
            let (value, target) = (self.word_id(r.value[k]), self.word_id(r.target[k]));
            let (rel, subj, obj) = (
                self.word_id(r.rel[k]),
                self.word_id(r.subj[k]),
                self.word_id(r.obj[k]),
            );
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
                    let e = self
                        .groups
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
    }

    /// The table: rows ordered by head set and λ, then split, dimension and key by name.
    fn to_batch(&self, model: &str, splits: &[&str]) -> Result<RecordBatch> {
        let words = &self.words;
        let mut rows: Vec<(usize, &str, &str, String, Sums)> = self
            .groups
            .iter()
            .map(|(&(pos, si, di, key), &v)| {
                let di = di as usize;
                let key = if DIMENSIONS[di] == "triplet" {
                    let [s, r, o] = key.map(|w| words[w as usize].as_str());
                    format!("{s} | {r} | {o}")
                } else {
                    words[key[0] as usize].clone()
                };
                (pos as usize, splits[si as usize], DIMENSIONS[di], key, v)
            })
            .collect();
        rows.sort_unstable_by(|a, b| (a.0, a.1, a.2, &a.3).cmp(&(b.0, b.1, b.2, &b.3)));
        let (mut heads, mut lam, mut split, mut dim, mut key, mut n, mut score) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (pos, s, d, k, (q, w, ws)) in rows {
            heads.push(self.order[pos].0.as_str());
            lam.push(self.order[pos].1);
            split.push(s);
            dim.push(d);
            key.push(k);
            n.push(q);
            score.push(100.0 * ws / w);
        }
        let cols: Vec<ArrayRef> = vec![
            tables::retrievals::model_column(model, heads.len()),
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
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("failed to read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::data(path, e.to_string()))
}

/// What the bootstrap needs of every query, in table order: its weight, its cells (bits as
/// [`Score`] sets them), its position in its split's stratum, and per key whether it succeeded.
#[derive(Debug, Default)]
struct PerQuery {
    weight: Vec<f64>,
    cells: Vec<u16>,
    /// Query positions per split, each in table order; the strata in the order of their names.
    strata: std::collections::BTreeMap<String, Vec<usize>>,
    success: Vec<Vec<bool>>,
}

impl PerQuery {
    /// A block of queries whose first is query `first` of the table, judged
    /// `judged[key][query]`.
    fn add(
        &mut self,
        queries: &Queries,
        cells: &[u16],
        judged: &[Vec<(Option<f64>, bool)>],
        first: usize,
    ) {
        for i in 0..queries.len() {
            self.weight.push(queries.weight(i));
            self.strata
                .entry(queries.split[i].clone())
                .or_default()
                .push(first + i);
        }
        self.cells.extend_from_slice(cells);
        self.success.resize_with(judged.len(), Vec::new);
        for (s, j) in self.success.iter_mut().zip(judged) {
            s.extend(j.iter().map(|&(_, ok)| ok));
        }
    }

    /// Per key and cell (`key · n_cells + cell`), the score's percentile interval over
    /// `c.bootstrap` resamples ([`crate::bootstrap`]); none without resamples, or for a cell no
    /// resample has a query of.
    fn intervals(&self, n_keys: usize, n_cells: usize, c: &ScoreConfig) -> Vec<Option<(f64, f64)>> {
        if c.bootstrap == 0 {
            return vec![None; n_keys * n_cells];
        }
        let strata: Vec<Vec<usize>> = self.strata.values().cloned().collect();
        let values: Vec<Vec<f64>> = (0..c.bootstrap as u64)
            .into_par_iter()
            .map_init(Vec::new, |draws, b| {
                crate::bootstrap::resample(&strata, c.seed, b, draws);
                // A cell's weight is every key's: summed once; the successes per key.
                let mut den = vec![0.0f64; n_cells];
                let mut num = vec![0.0f64; n_keys * n_cells];
                let add = |sums: &mut [f64], mut bits: u16, w: f64| {
                    while bits != 0 {
                        sums[bits.trailing_zeros() as usize] += w;
                        bits &= bits - 1;
                    }
                };
                for &i in draws.iter() {
                    let (w, bits) = (self.weight[i], self.cells[i]);
                    add(&mut den, bits, w);
                    for (l, success) in self.success.iter().enumerate() {
                        if success[i] {
                            add(&mut num[l * n_cells..(l + 1) * n_cells], bits, w);
                        }
                    }
                }
                num.iter()
                    .enumerate()
                    .map(|(at, &num)| {
                        let den = den[at % n_cells];
                        if den > 0.0 {
                            100.0 * num / den
                        } else {
                            f64::NAN
                        }
                    })
                    .collect()
            })
            .collect();
        (0..n_keys * n_cells)
            .into_par_iter()
            .map(|at| {
                let mut v: Vec<f64> = values
                    .iter()
                    .map(|r| r[at])
                    .filter(|x| !x.is_nan())
                    .collect();
                (!v.is_empty()).then(|| crate::bootstrap::interval(&mut v, c.confidence))
            })
            .collect()
    }
}

/// The k of the ranked metrics: `at`, each within retrieve's k (`provenance["k"]`), or the
/// defaults that are.
fn ranked_at(at: &[usize], provenance: &serde_json::Value) -> Result<Vec<usize>> {
    let kept = provenance["k"].as_u64().map(|k| k as usize);
    if at.is_empty() {
        return Ok(DEFAULT_AT
            .iter()
            .copied()
            .filter(|&k| kept.is_none_or(|kept| k <= kept))
            .collect());
    }
    if let (Some(kept), Some(&big)) = (kept, at.iter().max()) {
        if big > kept {
            return Err(Error::stage(
                "score",
                format!("--at {big} needs {big} retrieved images per query; retrieve kept k = {kept} (rerun retrieve with -k {big})"),
            ));
        }
    }
    Ok(at.to_vec())
}

/// Every query's retrieved list, as `retrieve` writes them ([`RETRIEVALS_ORDER`]), for the
/// ranked metrics: the rank-0 rows are checked by [`Rank0Cursor`], the ranks after them here.
struct RankedLists {
    path: PathBuf,
    batches: Box<dyn Iterator<Item = Result<RecordBatch>>>,
    /// The batch being read (its query ids, ranks and dataset ids), its position, and the table
    /// row of its first row.
    batch: Option<(RankedColumns, usize, u64)>,
    next_row: u64,
}

type RankedColumns = (
    arrow::array::Int64Array,
    arrow::array::Int32Array,
    arrow::array::Int64Array,
);

impl RankedLists {
    fn open(path: &Path) -> Result<Self> {
        let reader = crate::io::read_table(path, &["query_id", "rank", "dataset_id"])?;
        let owned = path.to_path_buf();
        Ok(RankedLists {
            path: path.to_path_buf(),
            batches: Box::new(reader.map(move |b| b.map_err(|e| e.with_path(&owned)))),
            batch: None,
            next_row: 0,
        })
    }

    /// The next row (its table row, query id, rank, dataset id), left in place.
    fn peek(&mut self) -> Result<Option<(u64, i64, i32, i64)>> {
        loop {
            if self.batch.is_none() {
                match self.batches.next().transpose()? {
                    None => return Ok(None),
                    Some(b) => {
                        let first = self.next_row;
                        self.next_row += b.num_rows() as u64;
                        let columns = (
                            b.column(0).as_primitive::<Int64Type>().clone(),
                            b.column(1).as_primitive::<Int32Type>().clone(),
                            b.column(2).as_primitive::<Int64Type>().clone(),
                        );
                        self.batch = Some((columns, 0, first));
                    }
                }
            }
            let ((qid, rank, did), at, first) = self.batch.as_ref().expect("a batch");
            if *at == qid.len() {
                self.batch = None;
                continue;
            }
            return Ok(Some((
                first + *at as u64,
                qid.value(*at),
                rank.value(*at),
                did.value(*at),
            )));
        }
    }

    fn advance(&mut self) {
        if let Some((_, at, _)) = &mut self.batch {
            *at += 1;
        }
    }

    /// Each key's retrieved dataset rows, best first, for each query of a block:
    /// `lists[key][query]`.
    fn block(
        &mut self,
        queries: &Queries,
        n_keys: usize,
        n_dataset: usize,
    ) -> Result<Vec<Vec<Vec<usize>>>> {
        let mut out: Vec<Vec<Vec<usize>>> = vec![Vec::with_capacity(queries.len()); n_keys];
        for &q in &queries.query_id {
            let mut own: Vec<Vec<usize>> = Vec::with_capacity(n_keys);
            while let Some((row, qid, rank, did)) = self.peek()? {
                if qid != q {
                    break;
                }
                if rank == 0 {
                    own.push(Vec::new());
                }
                let expected = own.last().map_or(0, Vec::len);
                let Some(list) = own.last_mut().filter(|l| l.len() == rank as usize) else {
                    return Err(Error::data(
                        &self.path,
                        format!("row {row}: rank {rank} of query {q} where rank {expected} was expected: {RETRIEVALS_ORDER}"),
                    ));
                };
                if did < 0 || did as usize >= n_dataset {
                    return Err(Error::data(
                        &self.path,
                        format!(
                            "row {row}: dataset_id {did} is outside the dataset's {n_dataset} rows"
                        ),
                    ));
                }
                list.push(did as usize);
                self.advance();
            }
            if own.len() != n_keys {
                return Err(Error::data(
                    &self.path,
                    format!("query {q} has {} ranked lists where {n_keys} (head sets × λ) were expected: {RETRIEVALS_ORDER}", own.len()),
                ));
            }
            for (l, list) in own.into_iter().enumerate() {
                out[l].push(list);
            }
        }
        Ok(out)
    }
}

/// The sums of the ranked metrics ([`crate::metrics`]): per key, per cell (split-major, as
/// [`Score`]'s cells), per metric and k, (weighted value, weight, queries), each cell summing its
/// queries in query order.
struct RankedSums<'a> {
    dataset: &'a Dataset,
    at: &'a [usize],
    /// Dataset rows per triplet id: a query's relevant images, with its own.
    per_triplet: HashMap<i64, usize>,
    n_cells: usize,
    sums: Vec<Vec<(f64, f64, u64)>>,
}

impl<'a> RankedSums<'a> {
    fn new(dataset: &'a Dataset, at: &'a [usize], n_cells: usize) -> Self {
        let mut per_triplet = HashMap::new();
        for &t in &dataset.triplet_id {
            *per_triplet.entry(t).or_insert(0usize) += 1;
        }
        RankedSums {
            dataset,
            at,
            per_triplet,
            n_cells,
            sums: Vec::new(),
        }
    }

    fn per_cell(&self) -> usize {
        Metric::ALL.len() * self.at.len()
    }

    /// Add a block's queries: `lists[key][query]` (whose first rows must be `top1`'s), in the
    /// cells `cells[query]` (bits as [`Score`] sets them).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        lists: &[Vec<Vec<usize>>],
        top1: &[Vec<usize>],
        queries: &Queries,
        cells: &[u16],
        judge: &oracle::Judge,
        threshold: f64,
        path: &Path,
    ) -> Result<()> {
        let per_cell = self.per_cell();
        let d = self.dataset;
        self.sums
            .resize_with(lists.len(), || vec![(0.0, 0.0, 0); self.n_cells * per_cell]);
        // values[query · per_cell + metric · |at| + k's index], one list's buffers per task.
        let mut values = vec![0.0f64; queries.len() * per_cell];
        for (l, lists) in lists.iter().enumerate() {
            values
                .par_chunks_mut(per_cell)
                .enumerate()
                .try_for_each_init(
                    || (Vec::new(), Vec::new()),
                    |(accepted, relevant), (i, out)| -> Result<()> {
                        let list = &lists[i];
                        if list.first() != top1[l].get(i) {
                            return Err(Error::data(
                                path,
                                format!("query {}: its first retrieval is not its rank-0 row: {RETRIEVALS_ORDER}", queries.query_id[i]),
                            ));
                        }
                        let target = oracle::Target {
                            triplet_id: queries.target_triplet_id[i],
                            caption_id: queries.target_caption_id[i],
                            query_id: queries.query_id[i],
                        };
                        accepted.clear();
                        relevant.clear();
                        for &r in list {
                            let (_, ok) = judge.judge(
                                r,
                                d.triplet_id[r],
                                d.region_id[r],
                                target,
                                threshold,
                            )?;
                            accepted.push(ok);
                            relevant.push(d.triplet_id[r] == target.triplet_id);
                        }
                        let own =
                            d.triplet_id[queries.dataset_id[i] as usize] == target.triplet_id;
                        let n_relevant =
                            self.per_triplet.get(&target.triplet_id).copied().unwrap_or(0)
                                - usize::from(own);
                        let ranked = Ranked {
                            accepted,
                            relevant,
                            n_relevant,
                        };
                        let cells = Metric::ALL
                            .iter()
                            .flat_map(|&m| self.at.iter().map(move |&k| (m, k)));
                        for (slot, (m, k)) in out.iter_mut().zip(cells) {
                            *slot = ranked.value(m, k);
                        }
                        Ok(())
                    },
                )?;
            let sums = &mut self.sums[l];
            for (i, v) in values.chunks(per_cell).enumerate() {
                let w = queries.weight(i);
                let mut cell_bits = cells[i];
                while cell_bits != 0 {
                    let cell = cell_bits.trailing_zeros() as usize;
                    cell_bits &= cell_bits - 1;
                    for (j, &x) in v.iter().enumerate() {
                        let (num, den, n) = &mut sums[cell * per_cell + j];
                        *num += w * x;
                        *den += w;
                        *n += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// `metrics.parquet`: per key, split, field, metric and k, the weighted mean ×100.
    fn to_batch(
        &self,
        model: &str,
        keys: &[(String, f64)],
        splits: &[&str],
        fields: &[&str],
    ) -> Result<RecordBatch> {
        let per_cell = self.per_cell();
        let mut heads = Vec::new();
        let mut lam = Vec::new();
        let mut split = Vec::new();
        let mut field = Vec::new();
        let mut metric = Vec::new();
        let mut k = Vec::new();
        let mut value = Vec::new();
        let mut n_queries = Vec::new();
        for ((h, l), sums) in keys.iter().zip(&self.sums) {
            for (j, &(num, den, n)) in sums.iter().enumerate() {
                let (cell, mk) = (j / per_cell, j % per_cell);
                heads.push(h.as_str());
                lam.push(*l);
                split.push(splits[cell / fields.len()]);
                field.push(fields[cell % fields.len()]);
                metric.push(Metric::ALL[mk / self.at.len()].as_str());
                k.push(self.at[mk % self.at.len()] as i32);
                value.push(if den > 0.0 {
                    100.0 * num / den
                } else {
                    f64::NAN
                });
                n_queries.push(n as i64);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            tables::retrievals::model_column(model, heads.len()),
            Arc::new(StringArray::from_iter_values(heads)),
            Arc::new(Float64Array::from(lam)),
            Arc::new(StringArray::from_iter_values(split)),
            Arc::new(StringArray::from_iter_values(field)),
            Arc::new(StringArray::from_iter_values(metric)),
            Arc::new(arrow::array::Int32Array::from(k)),
            Arc::new(Float64Array::from(value)),
            Arc::new(Int64Array::from(n_queries)),
        ];
        RecordBatch::try_new(tables::retrievals::metrics_schema(), cols)
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

/// How the rows of a retrievals table are ordered, for the message when they are not.
const RETRIEVALS_ORDER: &str = "the rows of a retrievals table follow its queries table (for each query in order: head set, λ, rank), as retrieve writes them";

/// One rank-0 row of a retrievals table: its row, its (head set, λ) key, query and image.
#[derive(Debug, Clone, Copy)]
struct Rank0 {
    row: u64,
    key: usize,
    query_id: i64,
    dataset_id: i64,
}

/// The rank-0 rows of a retrievals table, read beside the queries table whose order they follow
/// ([`RETRIEVALS_ORDER`]): a block of queries takes its rows, and nothing else is held. A row
/// out of that order, a missing retrieval and a query the table does not have are each named.
struct Rank0Cursor {
    path: PathBuf,
    batches: Box<dyn Iterator<Item = Result<RecordBatch>>>,
    /// The batch being read, its position, and the table row of its first row.
    batch: Option<(RecordBatch, usize, u64)>,
    next_row: u64,
    /// (head set, λ) by first appearance; the first query's are every query's.
    keys: Vec<(String, f64)>,
    per_query: Option<usize>,
    /// The first query's id, for messages.
    first_query: Option<i64>,
    /// The row `peek` found, until `advance` takes it: each row is decoded and keyed once.
    peeked: Option<Rank0>,
}

impl Rank0Cursor {
    const COLUMNS: [&'static str; 5] = ["heads", "query_id", "lam", "rank", "dataset_id"];

    fn open(path: &Path) -> Result<Self> {
        let reader = crate::io::read_table(path, &Self::COLUMNS)?;
        let owned = path.to_path_buf();
        Ok(Self::new(
            path,
            Box::new(reader.map(move |b| b.map_err(|e| e.with_path(&owned)))),
        ))
    }

    fn new(path: &Path, batches: Box<dyn Iterator<Item = Result<RecordBatch>>>) -> Self {
        Rank0Cursor {
            path: path.to_path_buf(),
            batches,
            batch: None,
            next_row: 0,
            keys: Vec::new(),
            per_query: None,
            first_query: None,
            peeked: None,
        }
    }

    /// The (head set, λ) keys seen so far, in order of first appearance.
    fn keys(&self) -> &[(String, f64)] {
        &self.keys
    }

    /// The next rank-0 row, left in place.
    fn peek(&mut self) -> Result<Option<Rank0>> {
        if self.peeked.is_some() {
            return Ok(self.peeked);
        }
        loop {
            if self.batch.is_none() {
                match self.batches.next().transpose()? {
                    None => return Ok(None),
                    Some(b) => {
                        let first = self.next_row;
                        self.next_row += b.num_rows() as u64;
                        self.batch = Some((b, 0, first));
                    }
                }
            }
            let (b, at, first) = self.batch.as_mut().expect("a batch");
            let (heads, qid, lam, rank, did) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_primitive::<Int64Type>(),
                b.column(2).as_primitive::<Float64Type>(),
                b.column(3).as_primitive::<Int32Type>(),
                b.column(4).as_primitive::<Int64Type>(),
            );
            while *at < b.num_rows() && rank.value(*at) != 0 {
                *at += 1;
            }
            if *at == b.num_rows() {
                self.batch = None;
                continue;
            }
            let (h, l) = (heads.value(*at), lam.value(*at));
            let key = match self.keys.iter().position(|(kh, kl)| kh == h && *kl == l) {
                Some(k) => k,
                None => {
                    self.keys.push((h.to_string(), l));
                    self.keys.len() - 1
                }
            };
            self.peeked = Some(Rank0 {
                row: *first + *at as u64,
                key,
                query_id: qid.value(*at),
                dataset_id: did.value(*at),
            });
            return Ok(self.peeked);
        }
    }

    fn advance(&mut self) {
        self.peeked = None;
        if let Some((_, at, _)) = &mut self.batch {
            *at += 1;
        }
    }

    /// Each key's first retrieved dataset row for each query of a block whose first query is
    /// row `first_row` of the queries table: `top1[key][query]`.
    fn top1(
        &mut self,
        queries: &Queries,
        first_row: usize,
        n_dataset: usize,
    ) -> Result<Vec<Vec<usize>>> {
        let mut top1: Vec<Vec<usize>> = self
            .per_query
            .map(|n| vec![Vec::with_capacity(queries.len()); n])
            .unwrap_or_default();
        for (i, &q) in queries.query_id.iter().enumerate() {
            let mut got = 0usize;
            while let Some(r) = self.peek()? {
                if r.query_id != q {
                    break;
                }
                let expected = match self.per_query {
                    // The first query: its keys are every query's.
                    None => {
                        if r.key < got {
                            return Err(self.twice(r, q));
                        }
                        top1.push(Vec::with_capacity(queries.len()));
                        got
                    }
                    Some(n) if got < n && r.key == got => got,
                    Some(n) if r.key >= n => {
                        let (h, l) = &self.keys[r.key];
                        return Err(Error::data(
                            &self.path,
                            format!(
                                "no retrieval for query {} at λ = {l} with heads {h}",
                                self.first_query.unwrap_or(q)
                            ),
                        ));
                    }
                    Some(_) if r.key < got => return Err(self.twice(r, q)),
                    Some(_) => {
                        let (h, l) = &self.keys[got];
                        return Err(Error::data(
                            &self.path,
                            format!(
                                "row {}: query {q} at λ = {} with heads {} where λ = {l} with heads {h} was expected: {RETRIEVALS_ORDER}",
                                r.row, self.keys[r.key].1, self.keys[r.key].0
                            ),
                        ));
                    }
                };
                if r.dataset_id < 0 || r.dataset_id as usize >= n_dataset {
                    return Err(Error::data(
                        &self.path,
                        format!(
                            "row {}: dataset_id {} is outside the dataset's {n_dataset} rows",
                            r.row, r.dataset_id
                        ),
                    ));
                }
                top1[expected].push(r.dataset_id as usize);
                got += 1;
                self.advance();
            }
            let n = *self.per_query.get_or_insert(got);
            self.first_query.get_or_insert(q);
            if got < n || n == 0 {
                let row = first_row + i;
                // The first query names no key: its keys are whatever it has.
                let next = self.peek()?;
                let key = if n == 0 { None } else { self.keys.get(got) };
                return Err(match (next, key) {
                    (Some(r), Some((h, l))) => Error::data(
                        &self.path,
                        format!(
                            "row {} holds query {} where query {q} (row {row} of the queries table) at λ = {l} with heads {h} was expected: {RETRIEVALS_ORDER}",
                            r.row, r.query_id
                        ),
                    ),
                    (Some(r), None) => Error::data(
                        &self.path,
                        format!(
                            "row {} holds query {} where query {q} (row {row} of the queries table) was expected: {RETRIEVALS_ORDER}",
                            r.row, r.query_id
                        ),
                    ),
                    (None, Some((h, l))) => Error::data(
                        &self.path,
                        format!("no retrieval for query {q} at λ = {l} with heads {h}"),
                    ),
                    (None, None) => {
                        Error::data(&self.path, format!("no retrieval for query {q}"))
                    }
                });
            }
        }
        Ok(top1)
    }

    fn twice(&self, r: Rank0, q: i64) -> Error {
        let (h, l) = &self.keys[r.key];
        Error::data(
            &self.path,
            format!(
                "row {}: a second first retrieval for query {q} at λ = {l} with heads {h}",
                r.row
            ),
        )
    }

    /// Every row was taken by a query.
    fn finish(&mut self) -> Result<()> {
        match self.peek()? {
            None => Ok(()),
            Some(r) => Err(Error::data(
                &self.path,
                format!(
                    "row {}: query {} is not in the queries table, or not in its order: {RETRIEVALS_ORDER}",
                    r.row, r.query_id
                ),
            )),
        }
    }
}

/// A caption asked for, and by whom (`("query", id)`).
type CaptionAsk = (usize, (&'static str, i64));

/// The width of the caption axis the queries need (one past the highest caption id they
/// name), and each target caption with the first query that asks for it, in query order: read
/// from the queries table's id columns alone.
fn caption_asks(path: &Path) -> Result<(usize, Vec<CaptionAsk>)> {
    let mut width = 0usize;
    let mut first_ask: rustc_hash::FxHashSet<i64> = Default::default();
    let mut asks = Vec::new();
    for batch in crate::io::read_table(
        path,
        &["query_id", "source_caption_id", "target_caption_id"],
    )? {
        let b = batch.map_err(|e| e.with_path(path))?;
        let qid = crate::io::i64_column(&b, "query_id", path)?;
        let source = crate::io::i64_column(&b, "source_caption_id", path)?;
        let target = crate::io::i64_column(&b, "target_caption_id", path)?;
        for r in 0..b.num_rows() {
            let (s, t) = (source.value(r), target.value(r));
            if s.max(t) >= 0 {
                width = width.max(s.max(t) as usize + 1);
            }
            if first_ask.insert(t) {
                asks.push((t as usize, ("query", qid.value(r))));
            }
        }
    }
    Ok((width, asks))
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

    /// A cursor over rows (heads, query, λ, rank, dataset_id), cut into batches of `batch` rows.
    fn cursor(rows: &[(&str, i64, f64, i32, i64)], batch: usize) -> Rank0Cursor {
        let batches: Vec<Result<RecordBatch>> = rows
            .chunks(batch)
            .map(|c| {
                let cols: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| r.0))),
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.1))),
                    Arc::new(Float64Array::from_iter_values(c.iter().map(|r| r.2))),
                    Arc::new(arrow::array::Int32Array::from_iter_values(
                        c.iter().map(|r| r.3),
                    )),
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.4))),
                ];
                Ok(RecordBatch::try_from_iter(Rank0Cursor::COLUMNS.iter().zip(cols)).unwrap())
            })
            .collect();
        Rank0Cursor::new(
            Path::new("retrievals.parquet"),
            Box::new(batches.into_iter()),
        )
    }

    /// Rows as retrieve writes them: per query, head set, λ, rank (two ranks).
    fn written(ids: &[i64]) -> Vec<(&'static str, i64, f64, i32, i64)> {
        let mut rows = vec![];
        for (i, &q) in ids.iter().enumerate() {
            for lam in [0.0, 1.0] {
                for rank in 0..2 {
                    rows.push((
                        "none",
                        q,
                        lam,
                        rank,
                        (i as i64 + rank as i64 + lam as i64) % 4,
                    ));
                }
            }
        }
        rows
    }

    #[test]
    fn top1_follows_the_queries_in_any_blocks_and_batches() {
        let ids = [30, 10, 20];
        let rows = written(&ids);
        let want = vec![vec![0, 1, 2], vec![1, 2, 3]];
        for batch in [1, 3, 5, 100] {
            let mut c = cursor(&rows, batch);
            assert_eq!(c.top1(&queries(&ids), 0, 4).unwrap(), want, "batch {batch}");
            c.finish().unwrap();
            assert_eq!(
                c.keys(),
                &[("none".to_string(), 0.0), ("none".to_string(), 1.0)]
            );
            let mut c = cursor(&rows, batch);
            let a = c.top1(&queries(&ids[..1]), 0, 4).unwrap();
            let b = c.top1(&queries(&ids[1..]), 1, 4).unwrap();
            c.finish().unwrap();
            assert_eq!(a, vec![vec![0], vec![1]]);
            assert_eq!(b, vec![vec![1, 2], vec![2, 3]]);
        }
    }

    #[test]
    fn retrievals_out_of_order_missing_or_unknown_are_named() {
        let err = |rows: &[(&str, i64, f64, i32, i64)], ids: &[i64]| -> String {
            let mut c = cursor(rows, 2);
            match c.top1(&queries(ids), 0, 4) {
                Err(e) => e.to_string(),
                Ok(_) => c.finish().unwrap_err().to_string(),
            }
        };
        let rows = written(&[30, 10]);
        // The queries table in another order than the retrievals.
        let e = err(&rows, &[10, 30]);
        assert!(
            e.contains("row 0 holds query 30 where query 10 (row 0 of the queries table) was expected: the rows of a retrievals table follow its queries table"),
            "{e}"
        );
        // A query the queries table lacks.
        let e = err(&rows, &[30]);
        assert!(
            e.contains("row 4: query 10 is not in the queries table"),
            "{e}"
        );
        // A λ missing for the last query.
        let e = err(&rows[..6], &[30, 10]);
        assert!(
            e.contains("no retrieval for query 10 at λ = 1 with heads none"),
            "{e}"
        );
        // The λ of a query swapped.
        let mut swapped = rows.clone();
        swapped.swap(4, 6);
        swapped.swap(5, 7);
        let e = err(&swapped, &[30, 10]);
        assert!(
            e.contains(
                "row 4: query 10 at λ = 1 with heads none where λ = 0 with heads none was expected"
            ),
            "{e}"
        );
        // A retrieved image outside the dataset.
        let mut outside = rows.clone();
        outside[4].4 = 9;
        let e = err(&outside, &[30, 10]);
        assert!(
            e.contains("row 4: dataset_id 9 is outside the dataset's 4 rows"),
            "{e}"
        );
        // Two first retrievals for one key.
        let mut twice = rows.clone();
        twice[2].2 = 0.0;
        let e = err(&twice, &[30, 10]);
        assert!(
            e.contains("row 2: a second first retrieval for query 30 at λ = 0 with heads none"),
            "{e}"
        );
    }
}
