//! `retrieve`: answer every transformation query for every λ.
//!
//! The embedding stores hold raw vectors. With heads, image embeddings become
//! `normalise(img_head(x))` and word embeddings `normalise(txt_head(w))`; without,
//! `normalise(x)` and `normalise(w)` — the release's `eval.py` exactly. For query `i` with image
//! `dataset_id_i`, slot word `value_i` → `target_i`:
//! `q = img[dataset_id_i] + λ·(word[target_i] − word[value_i])`, scored by inner product against
//! every dataset image, the query's own image excluded; the top `k` are written to
//! `retrievals.parquet` (`heads, query_id, lam, rank, dataset_id, score`), and `provenance.json`
//! says which queries, embeddings and heads they come from. The λ sweep shares one GEMM across
//! all λ ([`crate::linalg::Sweep`]).
//!
//! The queries are read and answered a block at a time (`query_block`), so that the stage holds
//! the embeddings, the vocabulary's scores and one block, however many queries there are. The
//! rows follow the queries table (per query: head set, λ, rank), so the table does not depend on
//! the blocks, and `score` reads it beside the queries in the same order.
//!
//! Each answered block is committed as a chunk (`chunks/<k>.parquet`), so a killed run resumes
//! at the first block not answered, and the stage runs in parts (`--shard i/n`): part `i`
//! answers its range of the blocks, and the commit writes the table from them. The table's
//! bytes depend on its rows alone ([`crate::io::WRITE_ROWS`]), so they are those of a run in one
//! go, whatever the block size and the number of parts.
//!
//! Heads trained on raw outputs (the release's) give a different space when applied to vectors
//! that are already unit-norm: such embeddings with heads are refused unless
//! `allow_normalised` says the heads were trained on normalised vectors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
};
use serde::{Deserialize, Serialize};

use crate::engine::StageDef;
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::chunks::Chunks;
use crate::io::store::EmbeddingStore;
use crate::linalg::{first_non_finite, normalised, normalize_rows, Hit, Matrix, MatrixView, Sweep};
use crate::model::heads::{self, Heads};
use crate::tables;
use crate::tables::dataset::{Queries, QuerySet, QUERY_BLOCK};
use crate::tables::retrievals::retrievals_schema;

/// λ values of a default sweep.
pub const DEFAULT_LAMBDAS: &[f64] = &[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0];

/// Configuration of retrieval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RetrieveConfig {
    /// λ values (repeat or separate with commas).
    #[arg(long = "lambdas", visible_alias = "lambda", value_delimiter = ',', num_args = 1.., default_values_t = DEFAULT_LAMBDAS.to_vec())]
    pub lambdas: Vec<f64>,
    /// Results kept per query and λ.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// The queries: `release` (transfos.csv, from import-simat) or `regenerated` (the queries
    /// stage). Needed when the run has both.
    #[arg(long, value_enum)]
    pub queries: Option<QuerySet>,
    /// The head sets to retrieve with, each a row group of the retrievals and of the scores:
    /// `none` (the raw embeddings, normalised), a PyTorch file of heads (the release's
    /// head_clip_t=0.1.pt) or the prefix of PREFIX_{img,txt}_head_{weight,bias}.npy, or `adapt`
    /// (every τ the run's adapt stage trained). Repeat or separate with commas; default `none`.
    /// Files are identified in fingerprints by content, not path.
    #[arg(long, value_name = "none|FILE_OR_PREFIX|adapt", value_delimiter = ',')]
    #[serde(deserialize_with = "one_or_many")]
    pub heads: Vec<String>,
    /// Apply heads even to embeddings that are already unit-norm (heads trained on normalised
    /// vectors).
    #[arg(long)]
    pub allow_normalised: bool,
    /// Queries answered at once: the stage's memory is a block's queries and hits (beside the
    /// embeddings); the retrievals do not depend on it.
    #[arg(long, default_value_t = QUERY_BLOCK)]
    pub query_block: usize,
    /// Also answer each query from text alone: the target triplet's caption (embed's caption
    /// embeddings) against the images, the query's own excluded; a head set `text-only` (or
    /// `text-only:HEADS`) whose rows repeat at every λ. How much of the task the image carries.
    #[arg(long)]
    pub text_baseline: bool,
}

/// The head-set label of the text-only baseline of head set `label`.
pub fn text_only_label(label: &str) -> String {
    if label == NO_HEADS {
        TEXT_ONLY.to_string()
    } else {
        format!("{TEXT_ONLY}:{label}")
    }
}

pub use crate::tables::retrievals::TEXT_ONLY;

/// A string or a list of strings (`heads = "x"` or `heads = ["none", "x"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `none`: no heads.
pub const NO_HEADS: &str = "none";
/// `adapt`: the heads the run's adapt stage trained.
pub const ADAPT_HEADS: &str = "adapt";

/// A head set of the config that names files.
fn heads_file(entry: &str) -> Option<&Path> {
    (entry != NO_HEADS && entry != ADAPT_HEADS).then(|| Path::new(entry))
}

impl Default for RetrieveConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// The retrieve stage.
#[derive(Debug, Clone)]
pub struct Retrieve {
    /// Its configuration.
    pub config: RetrieveConfig,
}

impl StageDef for Retrieve {
    const NAME: &'static str = "retrieve";
    const VERSION: u32 = 2;
    const SHARDABLE: bool = true;
    const ABOUT: &'static str =
        "Answer every transformation query for each λ: RUN/retrieve/retrievals.parquet";
    const PROVIDES: &'static [&'static TableDecl] =
        &[&tables::RETRIEVALS, &tables::RETRIEVAL_PROVENANCE];
    type Config = RetrieveConfig;
    fn resolve_paths(c: &mut RetrieveConfig, base: &Path) {
        for h in &mut c.heads {
            if let Some(p) = heads_file(h) {
                if p.is_relative() {
                    *h = base.join(p).to_string_lossy().into_owned();
                }
            }
        }
    }
    fn build(config: RetrieveConfig) -> Result<Self> {
        if config.k == 0 {
            return Err(crate::engine::bad::<Self>("k", "must be at least 1"));
        }
        if config.query_block == 0 {
            return Err(crate::engine::bad::<Self>(
                "query_block",
                "must be at least 1",
            ));
        }
        if config.lambdas.is_empty() || config.lambdas.iter().any(|l| !l.is_finite()) {
            return Err(crate::engine::bad::<Self>(
                "lambdas",
                "needs at least one λ, each a finite number",
            ));
        }
        for h in &config.heads {
            if let Some(p) = heads_file(h) {
                // Read now (they are small; a missing one is named as `heads::files` names it),
                // so that a damaged head set is reported before any stage runs rather than
                // failing this one and losing its earlier outputs.
                heads::Heads::load(p)
                    .map_err(|e| crate::engine::bad::<Self>("heads", e.to_string()))?;
            }
        }
        let mut seen = config.heads.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != config.heads.len() {
            return Err(crate::engine::bad::<Self>(
                "heads",
                "a head set is given twice",
            ));
        }
        Ok(Retrieve { config })
    }
    fn needs(&self) -> Vec<Need> {
        let mut v = vec![
            Need::of(&tables::QUERIES)
                .from(self.config.queries.map(QuerySet::stage))
                .choose(QuerySet::CHOOSE),
            Need::of(&tables::IMAGE_EMBEDDINGS),
            Need::of(&tables::WORD_EMBEDDINGS),
            Need::optional(&tables::EMBEDDING_MODEL),
        ];
        if self.config.text_baseline {
            v.push(
                Need::of(&tables::CAPTION_EMBEDDINGS)
                    .choose("an [embed] section (text_baseline needs caption embeddings)"),
            );
        }
        if self.config.heads.iter().any(|h| h == ADAPT_HEADS) {
            v.push(Need::of(&tables::HEADS).choose("an [adapt] section (heads = \"adapt\")"));
        }
        v
    }
    fn fingerprint(&self) -> serde_json::Value {
        let mut c = serde_json::to_value(&self.config).expect("config serialises");
        // The block is memory, not results.
        c.as_object_mut()
            .expect("a config is an object")
            .remove("query_block");
        // A file's content is an input; its path is not the fingerprint's business.
        c["heads"] = serde_json::json!(self
            .config
            .heads
            .iter()
            .enumerate()
            .map(|(i, h)| match heads_file(h) {
                Some(_) => format!("file {i}"),
                None => h.clone(),
            })
            .collect::<Vec<_>>());
        c
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut v = Vec::new();
        for (i, h) in self.config.heads.iter().enumerate() {
            if let Some(p) = heads_file(h) {
                let files = heads::files(p).map_err(|e| Error::stage(Self::NAME, e.to_string()))?;
                v.extend(files.into_iter().map(|(l, f)| (format!("heads{i}/{l}"), f)));
            }
        }
        Ok(v)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let c = &self.config;
        let started = std::time::Instant::now();
        let qpath = ctx.input(&tables::QUERIES)?;
        let query_set = QuerySet::of_stage(ctx.provider(&tables::QUERIES).unwrap_or_default());
        let ipath = ctx.input(&tables::IMAGE_EMBEDDINGS)?;
        let wpath = ctx.input(&tables::WORD_EMBEDDINGS)?;
        let images = EmbeddingStore::open(&ipath)?;
        let words = EmbeddingStore::open(&wpath)?;
        let word_col = words
            .batch
            .column_by_name("word")
            .ok_or_else(|| Error::columnar(&wpath, "column `word` is missing"))?
            .as_string::<i32>()
            .clone();
        let head_sets = self.head_sets(ctx)?;
        let origin = ctx
            .maybe(&tables::EMBEDDING_MODEL)
            .and_then(|p| embeddings_origin(&p));
        let (raw_images, raw_words) = (images.view(), words.view());
        let index: HashMap<&str, usize> = (0..words.rows).map(|i| (word_col.value(i), i)).collect();

        let n_queries = crate::io::table_rows(&qpath)?;
        let n_chunks = n_queries.div_ceil(c.query_block);
        // The block is not in the fingerprint (it changes no row), but it is what a chunk holds:
        // chunks of another block size are not resumed.
        let chunks = Chunks::open(
            &ctx.stage_dir,
            &format!("{} query_block {}", ctx.fingerprint, c.query_block),
            n_chunks,
            &[],
        )?;
        // A part answers its range of the blocks; the commit finds them all answered.
        let range = crate::io::chunks::Part::range_of(ctx.part, n_chunks);
        let todo = range.clone().any(|k| !chunks.file(k, "parquet").is_file());
        // Per head set, its space and the sweep over it (the database packed and the vocabulary
        // scored once, for every block); not built when every block is answered already.
        let mut spaces: Vec<(&str, Matrix, Matrix)> = Vec::with_capacity(head_sets.len());
        for (label, heads) in head_sets.iter().filter(|_| todo) {
            let (db, word_m) = embedding_space(
                raw_images,
                &ipath,
                raw_words,
                &wpath,
                heads.as_ref(),
                c.allow_normalised,
            )
            .map_err(|e| match (e, &origin) {
                (Error::Data { path, message }, Some(o)) => Error::Data {
                    path,
                    message: format!("{message} ({o}; heads {label})"),
                },
                (e, _) => e,
            })?;
            spaces.push((label.as_str(), db, word_m));
        }
        let sweeps: Vec<(&str, Sweep)> = spaces
            .iter()
            .map(|(label, db, word_m)| (*label, Sweep::new(db.view(), word_m.view())))
            .collect();
        // The text-only baseline: per head set, its captions in the words' space.
        let text_labels: Vec<String> = head_sets.iter().map(|(l, _)| text_only_label(l)).collect();
        let captions = match (c.text_baseline, todo) {
            (true, true) => Some(CaptionSpace::open(
                &ctx.input(&tables::CAPTION_EMBEDDINGS)?,
                &head_sets,
                &text_labels,
            )?),
            _ => None,
        };
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "retrieve: inputs read"
        );
        let blocks = Blocks {
            qpath: &qpath,
            index: &index,
            database: raw_images.rows,
            sweeps: &sweeps,
            lambdas: &c.lambdas,
            k: c.k,
            captions: captions.as_ref(),
        };
        let mut out = match ctx.part {
            None => Some(crate::io::TableWriter::create(
                &ctx.output(&tables::RETRIEVALS)?,
                retrievals_schema(),
            )?),
            Some(_) => None,
        };
        let first_row = |k: usize| (k * c.query_block).min(n_queries);
        let bar = ctx.ui.progress(
            (first_row(range.end) - first_row(range.start)) as u64,
            "queries",
            "retrieving",
        );
        let (mut resumed, mut files) = (0u64, Vec::new());
        for k in range {
            let rows = first_row(k)..first_row(k + 1);
            let path = chunks.file(k, "parquet");
            let batch = if path.is_file() {
                resumed += 1;
                // A part has nothing to do with a block answered already.
                out.as_ref()
                    .map(|_| crate::io::read_all(&path))
                    .transpose()?
            } else {
                let batch = blocks.answer(Queries::read_rows(&qpath, rows.clone())?)?;
                crate::io::write_table(&path, &batch)?;
                Some(batch)
            };
            if let (Some(w), Some(b)) = (out.as_mut(), batch) {
                w.write(&b)?;
            }
            let rel = path.strip_prefix(&ctx.stage_dir).unwrap_or(&path);
            files.push(rel.to_string_lossy().into_owned());
            bar.inc(rows.len() as u64);
            tracing::debug!(
                seconds = started.elapsed().as_secs_f64(),
                queries = rows.end,
                "retrieve: block written"
            );
        }
        bar.finish_and_clear();
        let Some(out) = out else {
            return Ok(StageReport::of_part(files, resumed));
        };
        let written = out.finish()?;
        chunks.finish();
        let mut set_names: Vec<String> = head_sets.iter().map(|(l, _)| l.clone()).collect();
        if c.text_baseline {
            set_names.extend(text_labels.iter().cloned());
        }
        let provenance = self.provenance(ctx, query_set, &qpath, n_queries, &set_names)?;
        crate::io::atomic::write_atomic(
            ctx.output(&tables::RETRIEVAL_PROVENANCE)?,
            (serde_json::to_string_pretty(&provenance).expect("json") + "\n").as_bytes(),
        )?;
        let mut report = StageReport::default();
        report.table(&tables::RETRIEVALS, Some(written));
        report.table(&tables::RETRIEVAL_PROVENANCE, None);
        report.count("queries", n_queries as u64);
        report.count("database", raw_images.rows as u64);
        report.count("lambdas", c.lambdas.len() as u64);
        report.count("head_sets", head_sets.len() as u64);
        report.count("chunks_resumed", resumed);
        Ok(report)
    }
}

/// What answering a block of queries takes: the words' rows, the database's size and each head
/// set's sweep.
struct Blocks<'a> {
    qpath: &'a Path,
    index: &'a HashMap<&'a str, usize>,
    database: usize,
    sweeps: &'a [(&'a str, Sweep<'a>)],
    lambdas: &'a [f64],
    k: usize,
    captions: Option<&'a CaptionSpace>,
}

/// The captions of the text-only baseline: per head set (in order), its label and the captions
/// in its space, with the row of each triplet id.
struct CaptionSpace {
    path: PathBuf,
    row: HashMap<i64, usize>,
    spaces: Vec<(String, Matrix)>,
}

impl CaptionSpace {
    fn open(path: &Path, head_sets: &[(String, Option<Heads>)], labels: &[String]) -> Result<Self> {
        let store = EmbeddingStore::open(path)?;
        let ids = crate::io::i64_column(&store.batch, "triplet_id", path)?;
        let row = (0..store.rows).map(|i| (ids.value(i), i)).collect();
        if let Some(r) = first_non_finite(store.view()) {
            return Err(Error::data(path, format!("row {r} holds NaN or infinity")));
        }
        let mut spaces = Vec::with_capacity(head_sets.len());
        for ((_, heads), label) in head_sets.iter().zip(labels) {
            let m = match heads {
                None => normalised(store.view()),
                Some(h) => {
                    let mut m = h.texts(store.view(), path)?;
                    normalize_rows(&mut m);
                    m
                }
            };
            spaces.push((label.clone(), m));
        }
        Ok(CaptionSpace {
            path: path.to_path_buf(),
            row,
            spaces,
        })
    }
}

impl Blocks<'_> {
    /// The retrievals of `queries`: per query, head set, λ and rank, in the queries' order.
    fn answer(&self, queries: Queries) -> Result<RecordBatch> {
        let lookup = |w: &str, qi: usize| -> Result<usize> {
            self.index.get(w).copied().ok_or_else(|| {
                Error::data(
                    self.qpath,
                    format!(
                        "query {}: word `{w}` has no embedding in word_embeddings.arrow (add it to the words file)",
                        queries.query_id[qi]
                    ),
                )
            })
        };
        let mut value = Vec::with_capacity(queries.len());
        let mut target = Vec::with_capacity(queries.len());
        let mut rows = Vec::with_capacity(queries.len());
        for i in 0..queries.len() {
            value.push(lookup(&queries.value[i], i)?);
            target.push(lookup(&queries.target[i], i)?);
            let d = queries.dataset_id[i];
            if d < 0 || d as usize >= self.database {
                return Err(Error::data(
                    self.qpath,
                    format!(
                        "query {}: dataset_id {d} is outside the {} image embeddings",
                        queries.query_id[i], self.database
                    ),
                ));
            }
            rows.push(d as usize);
        }
        let lambdas: Vec<f32> = self.lambdas.iter().map(|&l| l as f32).collect();
        // Per head set, hits[λ][query].
        let mut swept: Vec<(&str, Vec<Vec<Vec<Hit>>>)> = self
            .sweeps
            .iter()
            .map(|(label, sweep)| {
                let hits = sweep.search(
                    &rows,
                    &value,
                    &target,
                    &lambdas,
                    self.k,
                    &queries.dataset_id,
                );
                (*label, hits)
            })
            .collect();
        if let Some(cap) = self.captions {
            let rows: Vec<usize> = (0..queries.len())
                .map(|i| {
                    let t = queries.target_triplet_id[i];
                    cap.row.get(&t).copied().ok_or_else(|| {
                        Error::data(
                            &cap.path,
                            format!(
                                "query {}: target triplet {t} has no caption embedding",
                                queries.query_id[i]
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            for ((label, captions), (_, sweep)) in cap.spaces.iter().zip(self.sweeps) {
                let hits = sweep.knn(captions.gather(&rows).view(), self.k, &queries.dataset_id);
                // The same hits at every λ: the baseline does not depend on it.
                swept.push((label.as_str(), vec![hits; self.lambdas.len()]));
            }
        }
        let cols = retrieval_columns(&swept, self.lambdas, &queries.query_id);
        RecordBatch::try_new(retrievals_schema(), cols).map_err(|e| Error::Internal(e.to_string()))
    }
}

impl Retrieve {
    /// The head sets, labelled: `none`, a file's name, or `head_tau{τ}` for the adapt stage's.
    fn head_sets(&self, ctx: &StageContext) -> Result<Vec<(String, Option<Heads>)>> {
        let entries: Vec<String> = if self.config.heads.is_empty() {
            vec![NO_HEADS.to_string()]
        } else {
            self.config.heads.clone()
        };
        let mut out = Vec::new();
        for h in &entries {
            match h.as_str() {
                NO_HEADS => out.push((NO_HEADS.to_string(), None)),
                ADAPT_HEADS => {
                    let dir = ctx.input(&tables::HEADS)?;
                    let mut found: Vec<(f64, String)> = std::fs::read_dir(&dir)
                        .map_err(|e| Error::io("failed to list", &dir, e))?
                        .filter_map(|e| e.ok())
                        .filter_map(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            let prefix = name.strip_suffix("_img_head_weight.npy")?.to_string();
                            let tau: f64 = prefix.strip_prefix("head_tau")?.parse().ok()?;
                            Some((tau, prefix))
                        })
                        .collect();
                    found.sort_by(|a, b| a.0.total_cmp(&b.0));
                    if found.is_empty() {
                        return Err(Error::data(&dir, "no trained heads here"));
                    }
                    for (_, prefix) in found {
                        out.push((prefix.clone(), Some(Heads::load(&dir.join(&prefix))?)));
                    }
                }
                file => {
                    let p = Path::new(file);
                    let label = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| file.to_string());
                    out.push((label, Some(Heads::load(p)?)));
                }
            }
        }
        let mut labels: Vec<&String> = out.iter().map(|(l, _)| l).collect();
        labels.sort();
        labels.dedup();
        if labels.len() != out.len() {
            return Err(Error::stage(
                Self::NAME,
                "two head sets have the same name: give files of different names",
            ));
        }
        Ok(out)
    }

    /// What the retrievals come from: the query set, the embeddings (`embed/model.json`), the
    /// heads (file names and BLAKE3), λ and k.
    fn provenance(
        &self,
        ctx: &StageContext,
        query_set: QuerySet,
        qpath: &Path,
        n_queries: usize,
        head_sets: &[String],
    ) -> Result<serde_json::Value> {
        let c = &self.config;
        let embeddings: serde_json::Value = match ctx.maybe(&tables::EMBEDDING_MODEL) {
            Some(p) => {
                let b = std::fs::read(&p).map_err(|e| Error::io("failed to read", &p, e))?;
                serde_json::from_slice(&b).map_err(|e| Error::data(&p, e.to_string()))?
            }
            None => serde_json::Value::Null,
        };
        let heads: Vec<serde_json::Value> = head_sets
            .iter()
            .map(|label| serde_json::json!({"name": label}))
            .collect();
        let heads = serde_json::json!({"sets": heads, "files": ctx.input_hashes});
        Ok(serde_json::json!({
            "query_set": query_set,
            "queries": {
                "file": format!("{}/{}", ctx.provider(&tables::QUERIES).unwrap_or_default(), tables::QUERIES.file),
                "rows": n_queries,
                "blake3": crate::io::hash_file(qpath)?,
            },
            "embeddings": embeddings,
            "heads": heads,
            "lambdas": c.lambdas,
            "k": c.k,
            "simat_version": crate::ENGINE_VERSION,
        }))
    }
}

/// Where the embed stage's vectors came from, for messages: `imported from img.pt and
/// words.ptd`, or the model's name.
fn embeddings_origin(model_json: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(model_json).ok()?).ok()?;
    match (
        v["images"]["file"].as_str(),
        v["word_vectors"]["file"].as_str(),
    ) {
        (Some(i), Some(w)) => Some(format!("imported from {i} and {w}")),
        _ => v["model"]["name"]
            .as_str()
            .map(|m| format!("embedded by the model {m}")),
    }
}

/// The retrievals table's columns, in row order (query, head set, λ, rank: the rows follow the
/// queries table, so that `score` reads them beside it block by block, and a table made of
/// blocks is the table made at once), each built on its own thread: one pass over the hits per
/// column.
fn retrieval_columns(
    swept: &[(&str, Vec<Vec<Vec<Hit>>>)],
    lambdas: &[f64],
    query_id: &[i64],
) -> Vec<ArrayRef> {
    // Every list, in row order: (head set, λ index, query index, hits).
    let lists: Vec<(&str, usize, usize, &[Hit])> = (0..query_id.len())
        .flat_map(|q| {
            swept.iter().flat_map(move |(label, hits)| {
                hits.iter()
                    .enumerate()
                    .map(move |(l, per_q)| (*label, l, q, per_q[q].as_slice()))
            })
        })
        .collect();
    let rows: usize = lists.iter().map(|l| l.3.len()).sum();
    fn column<T>(
        lists: &[(&str, usize, usize, &[Hit])],
        rows: usize,
        value: impl Fn(&(&str, usize, usize, &[Hit]), usize, &Hit) -> T,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(rows);
        for list in lists {
            out.extend(list.3.iter().enumerate().map(|(r, h)| value(list, r, h)));
        }
        out
    }
    let (mut label, mut qid, mut lam, mut rank, mut did, mut score) =
        (None, vec![], vec![], vec![], vec![], vec![]);
    rayon::scope(|s| {
        s.spawn(|_| {
            label = Some(arrow::array::StringArray::from_iter_values(
                lists
                    .iter()
                    .flat_map(|l| std::iter::repeat_n(l.0, l.3.len())),
            ))
        });
        s.spawn(|_| qid = column(&lists, rows, |l, _, _| query_id[l.2]));
        s.spawn(|_| lam = column(&lists, rows, |l, _, _| lambdas[l.1]));
        s.spawn(|_| rank = column(&lists, rows, |_, r, _| r as i32));
        s.spawn(|_| did = column(&lists, rows, |_, _, h| h.id as i64));
        s.spawn(|_| score = column(&lists, rows, |_, _, h| h.score));
    });
    vec![
        Arc::new(label.expect("built")),
        Arc::new(Int64Array::from(qid)),
        Arc::new(Float64Array::from(lam)),
        Arc::new(Int32Array::from(rank)),
        Arc::new(Int64Array::from(did)),
        Arc::new(Float32Array::from(score)),
    ]
}

/// The space retrieval compares in: `normalise(head(x))` with heads, `normalise(x)` without,
/// for the raw image and word embeddings. Refuses unit-norm embeddings with heads unless
/// `allow_normalised`, and NaN anywhere.
pub fn embedding_space(
    images: MatrixView,
    image_file: &Path,
    words: MatrixView,
    word_file: &Path,
    heads: Option<&Heads>,
    allow_normalised: bool,
) -> Result<(Matrix, Matrix)> {
    for (m, p) in [(images, image_file), (words, word_file)] {
        if let Some(row) = first_non_finite(m) {
            return Err(Error::data(p, format!("row {row} holds NaN or infinity")));
        }
    }
    let (img, wrd) = match heads {
        None => (normalised(images), normalised(words)),
        Some(h) => {
            for (m, p) in [(images, image_file), (words, word_file)] {
                if !allow_normalised && heads::unit_norm(m) {
                    return Err(Error::data(
                        p,
                        "these embeddings are already unit-norm, and heads like the release's were trained on raw (unnormalised) model outputs: applied to normalised vectors they give a different space. Import the raw outputs (simat's model stages keep them), or pass --allow-normalised (allow_normalised = true) if these heads were trained on normalised vectors",
                    ));
                }
            }
            let (mut img, mut wrd) = (h.images(images, image_file)?, h.texts(words, word_file)?);
            normalize_rows(&mut img);
            normalize_rows(&mut wrd);
            (img, wrd)
        }
    };
    if img.cols != wrd.cols {
        return Err(Error::data(
            word_file,
            format!(
                "word embeddings have dimension {}, image embeddings {}{}",
                wrd.cols,
                img.cols,
                if heads.is_none() {
                    ": without heads they must be equal; heads that map both to one space (`simat adapt --dim D` on pairs of these encoders, then --heads) make them comparable"
                } else {
                    ": the heads map them to spaces of different dimensions"
                }
            ),
        ));
    }
    Ok((img, wrd))
}
