//! `adapt`: the paper's adaptation heads, trained on cached raw embeddings (frozen towers: no
//! GPU needed), one head set per τ of a sweep.
//!
//! Pairs are either (a) two matrices aligned by row — one pair per row, the one order
//! convention (`.npy`, a PyTorch 2-D tensor, Arrow or Parquet with an `embedding` column) — or
//! (b) an image store and a caption store keyed by `image_id` (Arrow/Parquet; several captions
//! per image, one drawn per image per epoch, seeded), such as the `coco` stage writes; without
//! files, the stage reads the `coco` tables of the run.
//!
//! The method is the release's `adaptation.py` as it was meant to be (see
//! [`crate::model::train`]); defaults are its settings: Adam at 1e-3, 50 epochs of batches of
//! 512, StepLR ×0.1 every 25 epochs, gradient clipping at norm 1 over both heads, heads
//! initialised to `I + 0.01·W₀` (W₀ as PyTorch's `Linear` initialises, from simat's seeded
//! generator) and bias `0.01·b₀`. Validation holds out `val_fraction` of the images.
//!
//! Outputs, per τ: `heads/head_tau{τ}_{img,txt}_head_{weight,bias}.npy` (the release's layout:
//! `--heads RUN/adapt/heads/head_tau0.1` works wherever heads are taken) and
//! `heads/head_tau{τ}.safetensors`; and `curve.parquet`, one row per step (τ, epoch, step, lr,
//! train loss, gradient norm before clipping; validation loss and recall@1 both ways on the last
//! step of each epoch). Each epoch of each τ is checkpointed: a killed sweep resumes at the last
//! finished epoch and ends with the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::chunks::Chunks;
use crate::linalg::Matrix;
use crate::model::train::{clip, loss_and_grad, recall_at_1, step_lr, Adam, HeadParams};
use crate::tables;

/// How heads start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// `I + 0.01·W₀`, bias `0.01·b₀`: the release's.
    #[default]
    Release,
    /// Exactly `I` and a zero bias (square heads only).
    Identity,
    /// Every head a seeded random sign projection (entries ±1/√D), bias 0: what a non-square head
    /// starts from under `release`, and replayable anywhere (see [`projection`]).
    Projection,
}

/// Configuration of `adapt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptConfig {
    /// Raw image embeddings: a matrix whose rows pair with --texts' rows, or an Arrow/Parquet
    /// store keyed by `image_id`. Without it, the run's `coco` tables.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Raw text embeddings: a matrix aligned by row with --images, or an Arrow/Parquet store of
    /// captions keyed by `image_id` (several per image).
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// Temperatures: one head set per τ (separate with commas).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = vec![0.1])]
    pub tau: Vec<f64>,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Epochs.
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Pairs per step (the last batch of an epoch may be smaller).
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Epochs between learning-rate drops (StepLR).
    #[arg(long, default_value_t = 25)]
    pub lr_step: usize,
    /// Factor of each drop.
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// Maximum global norm of the gradient of both heads together.
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad_norm: f64,
    /// How heads start: `release` (I + 0.01·W₀ for a square head, a random projection for
    /// another), `identity` (square heads only) or `projection`.
    #[arg(long, value_enum, default_value = "release")]
    pub init: Init,
    /// Dimension D of the space both heads map to: an image head D_img → D and a text head
    /// D_txt → D (default: the image embeddings' dimension).
    #[arg(long, value_name = "D")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Keep the pairs' order in every epoch instead of shuffling.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seed of the initialisation, the shuffles, the caption draws and the validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the images held out for validation (0 allowed).
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Threads (0: one per core). The heads do not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// The adapt stage.
#[derive(Debug, Clone)]
pub struct Adapt {
    /// Its configuration.
    pub config: AdaptConfig,
}

/// `0.1` → `"0.1"`: τ as it appears in file names.
pub fn tau_name(tau: f64) -> String {
    format!("{tau}")
}

impl StageDef for Adapt {
    const NAME: &'static str = "adapt";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "Train the paper's adaptation heads on raw embedding pairs, one set per τ: RUN/adapt/heads/, curve.parquet";
    const PROVIDES: &'static [&'static TableDecl] = &[&tables::HEADS, &tables::CURVE];
    type Config = AdaptConfig;
    fn resolve_paths(c: &mut AdaptConfig, base: &Path) {
        for p in [&mut c.images, &mut c.texts].into_iter().flatten() {
            crate::config::resolve(p, base);
        }
    }
    fn build(c: AdaptConfig) -> Result<Self> {
        let bad = crate::engine::bad::<Self>;
        if c.images.is_some() != c.texts.is_some() {
            return Err(bad(
                "texts",
                "--images and --texts go together (or neither: the run's coco tables)",
            ));
        }
        if c.tau.is_empty() || c.tau.iter().any(|t| !(t.is_finite() && *t >= 0.003)) {
            return Err(bad(
                "tau",
                "needs at least one τ, each a number ≥ 0.003 (below, exp(1/τ) overflows)",
            ));
        }
        let mut names: Vec<String> = c.tau.iter().map(|t| tau_name(*t)).collect();
        names.sort();
        names.dedup();
        if names.len() != c.tau.len() {
            return Err(bad("tau", "a τ is given twice"));
        }
        if c.dim == Some(0) {
            return Err(bad("dim", "must be at least 1"));
        }
        if !(c.lr.is_finite() && c.lr > 0.0) {
            return Err(bad("lr", "must be a positive number"));
        }
        for (key, v) in [
            ("epochs", c.epochs),
            ("batch_size", c.batch_size),
            ("lr_step", c.lr_step),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        if c.batch_size < 2 {
            return Err(bad(
                "batch_size",
                "must be at least 2 (a contrastive batch)",
            ));
        }
        if !(c.lr_gamma.is_finite() && c.lr_gamma > 0.0) {
            return Err(bad("lr_gamma", "must be a positive number"));
        }
        if !(c.clip_grad_norm.is_finite() && c.clip_grad_norm > 0.0) {
            return Err(bad("clip_grad_norm", "must be a positive number"));
        }
        if !(0.0..1.0).contains(&c.val_fraction) {
            return Err(bad("val_fraction", "must be at least 0 and below 1"));
        }
        let mut checks = Checks::<Self>::new();
        for (key, path) in [("images", &c.images), ("texts", &c.texts)] {
            if let Some(p) = path {
                if checks.path(key, p, PathKind::File) {
                    checks.check(key, crate::io::store::check_embeddings_file(p));
                }
            }
        }
        checks.finish(Adapt { config: c })
    }
    fn needs(&self) -> Vec<Need> {
        if self.config.images.is_some() {
            vec![]
        } else {
            vec![
                Need::of(&tables::PAIR_IMAGES).choose("--images FILE --texts FILE"),
                Need::of(&tables::PAIR_CAPTIONS).choose("--images FILE --texts FILE"),
            ]
        }
    }
    fn fingerprint(&self) -> serde_json::Value {
        let mut c = serde_json::to_value(&self.config).expect("config serialises");
        for k in ["images", "texts", "threads"] {
            c.as_object_mut().expect("object").remove(k);
        }
        c
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut v = Vec::new();
        for (label, p) in [
            ("images", &self.config.images),
            ("texts", &self.config.texts),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    return Err(Error::input_missing(Self::NAME, label, p, ""));
                }
                v.push((label.to_string(), p.clone()));
            }
        }
        Ok(v)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.threads)
            .build()
            .map_err(|e| Error::Internal(format!("threads: {e}")))?;
        pool.install(|| self.train(ctx))
    }
}

/// Training pairs: images, and per image the rows of its texts.
struct Pairs {
    images: Matrix,
    texts: Matrix,
    /// For image `i`, the rows of `texts` that caption it (one row for aligned pairs).
    captions: Vec<Vec<usize>>,
    counters: Vec<(&'static str, u64)>,
}

impl Pairs {
    /// The text of image `i` in `epoch` (`None`: the fixed draw of validation).
    fn text_of(&self, i: usize, seed: u64, epoch: Option<usize>) -> usize {
        let c = &self.captions[i];
        if c.len() == 1 {
            return c[0];
        }
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed ^ 0x5151_a7a7
                ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ epoch.map_or(u64::MAX, |e| e as u64).rotate_left(32),
        );
        c[rng.random_range(0..c.len())]
    }
}

fn keyed(path: &Path) -> Result<Option<(RecordBatch, Matrix)>> {
    if crate::io::store::is_npy(path)? || crate::io::torch::is_torch_zip(path) {
        return Ok(None);
    }
    let (batch, m) = crate::io::store::read_table_embeddings(path)?;
    Ok(batch
        .column_by_name("image_id")
        .is_some()
        .then_some((batch, m)))
}

fn image_ids(batch: &RecordBatch, path: &Path) -> Result<Vec<i64>> {
    let col = arrow::compute::cast(
        batch.column_by_name("image_id").expect("checked"),
        &DataType::Int64,
    )
    .map_err(|e| Error::columnar(path, format!("column `image_id`: {e}")))?;
    if col.null_count() > 0 {
        return Err(Error::columnar(path, "column `image_id` holds nulls"));
    }
    Ok(col.as_primitive::<Int64Type>().values().to_vec())
}

/// Read the pairs: aligned matrices, or keyed stores.
fn read_pairs(images: &Path, texts: &Path) -> Result<Pairs> {
    match (keyed(images)?, keyed(texts)?) {
        (Some((ib, im)), Some((tb, tm))) => {
            let ids = image_ids(&ib, images)?;
            let mut row_of: HashMap<i64, usize> = HashMap::with_capacity(ids.len());
            for (r, &id) in ids.iter().enumerate() {
                if let Some(first) = row_of.insert(id, r) {
                    return Err(Error::data(
                        images,
                        format!("image_id {id} appears twice (rows {first} and {r})"),
                    ));
                }
            }
            let mut captions = vec![Vec::new(); ids.len()];
            let mut orphans = 0u64;
            for (r, id) in image_ids(&tb, texts)?.into_iter().enumerate() {
                match row_of.get(&id) {
                    Some(&i) => captions[i].push(r),
                    None => orphans += 1,
                }
            }
            // Images without a caption cannot be trained on: left out, counted.
            let keep: Vec<usize> = (0..ids.len()).filter(|&i| !captions[i].is_empty()).collect();
            let uncaptioned = (ids.len() - keep.len()) as u64;
            let images_m = im.gather(&keep);
            let captions = keep.iter().map(|&i| std::mem::take(&mut captions[i])).collect();
            Ok(Pairs {
                images: images_m,
                texts: tm,
                captions,
                counters: vec![
                    ("images_without_captions", uncaptioned),
                    ("captions_without_image", orphans),
                ],
            })
        }
        (None, None) => {
            let (im, tm) = (
                crate::io::store::read_matrix(images)?,
                crate::io::store::read_matrix(texts)?,
            );
            if im.rows != tm.rows {
                return Err(Error::data(
                    texts,
                    format!(
                        "{} rows, but {} has {}: aligned pairs are one pair per row, in the same order (to pair by image, give Arrow/Parquet stores with an `image_id` column)",
                        tm.rows,
                        images.display(),
                        im.rows
                    ),
                ));
            }
            let n = im.rows;
            Ok(Pairs {
                images: im,
                texts: tm,
                captions: (0..n).map(|i| vec![i]).collect(),
                counters: vec![],
            })
        }
        _ => Err(Error::data(
            texts,
            "one of --images and --texts is keyed by `image_id` and the other is not: give two keyed stores, or two matrices aligned by row",
        )),
    }
}

/// Head `head`'s (0: image, 1: text) seeded random sign projection `d_out × d_in`, row-major:
/// entry `k = i·d_in + j` is `−1/√d_out` when the top bit of output `k` of the generator
/// `SplitMix64::for_resample(seed, head)` ([`crate::bootstrap`]) is set, `+1/√d_out` otherwise
/// (in f32). Its rows are nearly orthogonal and it keeps norms in expectation
/// (`E‖Rx‖² = ‖x‖²`, Achlioptas 2003), so the first loss is that of a plain projection.
pub fn projection(d_out: usize, d_in: usize, seed: u64, head: u64) -> Vec<f32> {
    let g = crate::bootstrap::SplitMix64::for_resample(seed, head);
    let s = 1.0 / (d_out as f32).sqrt();
    (0..(d_out * d_in) as u64)
        .map(|k| if g.output(k) >> 63 == 1 { -s } else { s })
        .collect()
}

/// The initial heads mapping `d_img` and `d_txt` to `d_out`. A square head starts as the
/// release's did (`I + 0.01·W₀`, W₀ as PyTorch's `Linear` initialises it) or as `I`; a
/// non-square head, which has no identity, from [`projection`].
fn init_heads(
    init: Init,
    d_out: usize,
    d_img: usize,
    d_txt: usize,
    seed: u64,
) -> Result<HeadParams> {
    let mut p = HeadParams::identity(d_out);
    p.d_img = d_img;
    p.d_txt = d_txt;
    let square = [d_img == d_out, d_txt == d_out];
    if init == Init::Identity && square != [true, true] {
        return Err(Error::stage(
            "adapt",
            format!("--init identity needs square heads, but they map {d_img} (images) and {d_txt} (texts) to {d_out}: use --init release or projection"),
        ));
    }
    for (h, (d_in, w)) in [(d_img, &mut p.img_w), (d_txt, &mut p.txt_w)]
        .into_iter()
        .enumerate()
    {
        if init == Init::Projection || !square[h] {
            *w = projection(d_out, d_in, seed, h as u64);
        }
    }
    if init == Init::Release {
        // PyTorch's Linear: weight and bias uniform in ±1/sqrt(fan_in); then I + 0.01·W₀.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1417);
        for (h, w) in [&mut p.img_w, &mut p.txt_w].into_iter().enumerate() {
            if square[h] {
                let bound = 1.0 / (d_out as f32).sqrt();
                for v in w.iter_mut() {
                    *v += 0.01 * rng.random_range(-bound..bound);
                }
            }
        }
        for (b, d_in) in [(&mut p.img_b, d_img), (&mut p.txt_b, d_txt)] {
            let bound = 1.0 / (d_in as f32).sqrt();
            for v in b.iter_mut() {
                *v = 0.01 * rng.random_range(-bound..bound);
            }
        }
    }
    Ok(p)
}

/// One row of the curve.
#[derive(Debug, Clone, Default)]
struct CurveRow {
    tau: f64,
    epoch: i64,
    step: i64,
    lr: f64,
    train_loss: f64,
    grad_norm: f64,
    val_loss: Option<f64>,
    val_recall_image_to_text: Option<f64>,
    val_recall_text_to_image: Option<f64>,
}

fn curve_batch(rows: &[CurveRow]) -> RecordBatch {
    let f = |g: &dyn Fn(&CurveRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(g)))
    };
    let o = |g: &dyn Fn(&CurveRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(rows.iter().map(g).collect::<Vec<_>>()))
    };
    let cols: Vec<ArrayRef> = vec![
        f(&|r| r.tau),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.epoch))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.step))),
        f(&|r| r.lr),
        f(&|r| r.train_loss),
        f(&|r| r.grad_norm),
        o(&|r| r.val_loss),
        o(&|r| r.val_recall_image_to_text),
        o(&|r| r.val_recall_text_to_image),
    ];
    RecordBatch::try_new(tables::adapt::curve_schema(), cols).expect("curve matches its schema")
}

const PARTS: [&str; 4] = [
    "img_head.weight",
    "img_head.bias",
    "txt_head.weight",
    "txt_head.bias",
];

/// Write heads (and, for a checkpoint, Adam's moments and step) as safetensors.
fn write_safetensors(path: &Path, p: &HeadParams, adam: Option<&Adam>) -> Result<()> {
    use safetensors::tensor::TensorView;
    let shape = |k: usize, p: &HeadParams| -> Vec<usize> {
        match k {
            0 => vec![p.d_out, p.d_img],
            2 => vec![p.d_out, p.d_txt],
            _ => vec![p.d_out],
        }
    };
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |prefix: &str, t: &HeadParams| {
        for (k, (name, data)) in PARTS.iter().zip(t.parts()).enumerate() {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            owned.push((format!("{prefix}{name}"), shape(k, p), bytes));
        }
    };
    add("", p);
    let mut meta = std::collections::HashMap::new();
    if let Some(a) = adam {
        add("adam_m.", &a.m);
        add("adam_v.", &a.v);
        meta.insert("adam_step".to_string(), a.step.to_string());
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("shape matches"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))?;
    crate::io::atomic::write_atomic(path, &bytes)
}

/// Read a checkpoint written by [`write_safetensors`] with Adam's state.
fn read_checkpoint(path: &Path, like: &HeadParams) -> Result<(HeadParams, Adam)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("failed to read", path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(path, format!("not a checkpoint: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::data(path, format!("not a checkpoint: {e}")))?;
    let get = |prefix: &str| -> Result<HeadParams> {
        let mut p = like.clone();
        for (name, t) in PARTS.iter().zip(p.parts_mut()) {
            let view = st
                .tensor(&format!("{prefix}{name}"))
                .map_err(|e| Error::data(path, format!("checkpoint: {e}")))?;
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            if data.len() != t.len() {
                return Err(Error::data(
                    path,
                    format!("checkpoint: `{name}` has another shape"),
                ));
            }
            *t = data;
        }
        Ok(p)
    };
    let step = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("adam_step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::data(path, "checkpoint without adam_step"))?;
    Ok((
        get("")?,
        Adam {
            step,
            m: get("adam_m.")?,
            v: get("adam_v.")?,
        },
    ))
}

impl Adapt {
    fn train(&self, ctx: &StageContext) -> Result<StageReport> {
        let c = &self.config;
        let (ipath, tpath) = match (&c.images, &c.texts) {
            (Some(i), Some(t)) => (i.clone(), t.clone()),
            _ => (
                ctx.input(&tables::PAIR_IMAGES)?,
                ctx.input(&tables::PAIR_CAPTIONS)?,
            ),
        };
        let pairs = read_pairs(&ipath, &tpath)?;
        let (n, d_img, d_txt) = (pairs.images.rows, pairs.images.cols, pairs.texts.cols);
        let d = c.dim.unwrap_or(d_img);
        for (m, p) in [(&pairs.images, &ipath), (&pairs.texts, &tpath)] {
            if let Some(r) = crate::linalg::first_non_finite(m) {
                return Err(Error::data(p, format!("row {r} holds NaN or infinity")));
            }
        }
        // The validation images: a seeded choice.
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed ^ 0x7a11d);
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let n_val = (c.val_fraction * n as f64).ceil() as usize;
        let mut val: Vec<usize> = order[..n_val].to_vec();
        let mut train: Vec<usize> = order[n_val..].to_vec();
        val.sort_unstable();
        train.sort_unstable();
        if train.len() < 2 {
            return Err(Error::data(
                &ipath,
                format!("{n} pairs: too few to train on"),
            ));
        }
        let val_x = pairs.images.gather(&val);
        let val_y_rows: Vec<usize> = val
            .iter()
            .map(|&i| pairs.text_of(i, c.seed, None))
            .collect();
        let val_y = pairs.texts.gather(&val_y_rows);

        let n_chunks = c.tau.len() * c.epochs;
        let chunks = Chunks::open(&ctx.stage_dir, &ctx.fingerprint, n_chunks, &["heads"])?;
        let heads_dir = ctx.output(&tables::HEADS)?;
        std::fs::create_dir_all(&heads_dir)
            .map_err(|e| Error::io("failed to create directory", &heads_dir, e))?;
        let mut curve: Vec<RecordBatch> = Vec::new();
        let mut report = StageReport::default();
        let mut resumed = 0u64;
        let steps_per_epoch = train.len().div_ceil(c.batch_size);
        let bar = ctx.ui.progress(n_chunks as u64, "epochs", "adapt");
        let started = std::time::Instant::now();
        for (ti, &tau) in c.tau.iter().enumerate() {
            let mut p = init_heads(c.init, d, d_img, d_txt, c.seed)?;
            let mut adam = Adam::new(&p);
            for epoch in 0..c.epochs {
                let k = ti * c.epochs + epoch;
                let state = chunks.file(k, "safetensors");
                let rows_file = chunks.file(k, "parquet");
                if state.is_file() && rows_file.is_file() {
                    (p, adam) = read_checkpoint(&state, &p)?;
                    curve.push(crate::io::read_all(&rows_file)?);
                    resumed += 1;
                    bar.inc(1);
                    continue;
                }
                let lr = step_lr(c.lr, c.lr_gamma, c.lr_step, epoch);
                let mut idx = train.clone();
                if !c.no_shuffle {
                    let mut rng = ChaCha8Rng::seed_from_u64(
                        c.seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37_79b9),
                    );
                    for i in (1..idx.len()).rev() {
                        idx.swap(i, rng.random_range(0..=i));
                    }
                }
                let mut rows = Vec::with_capacity(steps_per_epoch);
                let mut grad = p.zeros_like();
                for (s, batch) in idx.chunks(c.batch_size).enumerate() {
                    let x = pairs.images.gather(batch);
                    let y_rows: Vec<usize> = batch
                        .iter()
                        .map(|&i| pairs.text_of(i, c.seed, Some(epoch)))
                        .collect();
                    let y = pairs.texts.gather(&y_rows);
                    let loss = loss_and_grad(
                        &p,
                        &x.data,
                        &y.data,
                        batch.len(),
                        tau as f32,
                        Some(&mut grad),
                    );
                    let norm = clip(&mut grad, c.clip_grad_norm as f32);
                    adam.update(&mut p, &grad, lr);
                    rows.push(CurveRow {
                        tau,
                        epoch: epoch as i64,
                        step: (epoch * steps_per_epoch + s) as i64,
                        lr,
                        train_loss: loss,
                        grad_norm: norm as f64,
                        ..Default::default()
                    });
                }
                if !val.is_empty() {
                    let mut total = 0f64;
                    for (xb, yb) in val_x
                        .data
                        .chunks(c.batch_size * d_img)
                        .zip(val_y.data.chunks(c.batch_size * d_txt))
                    {
                        let b = xb.len() / d_img;
                        if b >= 2 {
                            total += loss_and_grad(&p, xb, yb, b, tau as f32, None) * b as f64;
                        }
                    }
                    let (i2t, t2i) = recall_at_1(&p, &val_x.data, &val_y.data, val.len());
                    let last = rows.last_mut().expect("at least one step");
                    last.val_loss = Some(total / val.len() as f64);
                    last.val_recall_image_to_text = Some(i2t);
                    last.val_recall_text_to_image = Some(t2i);
                }
                // The rows first: the state's presence commits the epoch.
                let batch = curve_batch(&rows);
                crate::io::write_table(&rows_file, &batch)?;
                write_safetensors(&state, &p, Some(&adam))?;
                curve.push(batch);
                bar.inc(1);
            }
            let name = format!("head_tau{}", tau_name(tau));
            for (part, data, rows, cols) in [
                ("img_head_weight", &p.img_w, d, d_img),
                ("img_head_bias", &p.img_b, d, 0),
                ("txt_head_weight", &p.txt_w, d, d_txt),
                ("txt_head_bias", &p.txt_b, d, 0),
            ] {
                let file = heads_dir.join(format!("{name}_{part}.npy"));
                if cols == 0 {
                    crate::io::store::write_npy_vector(&file, data)?;
                } else {
                    crate::io::store::write_npy(&file, &Matrix::new(rows, cols, data.clone())?)?;
                }
                report
                    .outputs
                    .push((format!("heads/{name}_{part}.npy"), None));
            }
            write_safetensors(&heads_dir.join(format!("{name}.safetensors")), &p, None)?;
            report
                .outputs
                .push((format!("heads/{name}.safetensors"), None));
        }
        bar.finish_and_clear();
        report.count("train_ms", started.elapsed().as_millis() as u64);
        let schema = tables::adapt::curve_schema();
        let all = arrow::compute::concat_batches(&schema, &curve)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let n_rows = crate::io::write_table(&ctx.output(&tables::CURVE)?, &all)?;
        report.table(&tables::CURVE, Some(n_rows));
        chunks.finish();
        report.count("pairs", n as u64);
        report.count("image_dim", d_img as u64);
        report.count("text_dim", d_txt as u64);
        report.count("dim", d as u64);
        report.count("train_images", train.len() as u64);
        report.count("val_images", val.len() as u64);
        report.count("epochs_resumed", resumed);
        for (k, v) in pairs.counters {
            report.count(k, v);
            if v > 0 {
                report.notes.push(format!("{v} {}", k.replace('_', " ")));
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_square_head_starts_near_the_identity_and_another_from_the_projection() {
        let p = init_heads(Init::Release, 8, 8, 12, 3).unwrap();
        assert_eq!((p.d_out, p.d_img, p.d_txt), (8, 8, 12));
        assert_eq!((p.img_w.len(), p.txt_w.len()), (64, 96));
        for i in 0..8 {
            for j in 0..8 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((p.img_w[i * 8 + j] - want).abs() < 0.01);
            }
        }
        assert_eq!(p.txt_w, projection(8, 12, 3, 1));
        assert!(p
            .img_b
            .iter()
            .chain(&p.txt_b)
            .all(|b| b.abs() < 0.01 && *b != 0.0));
        // The square case draws what it always drew.
        let square = init_heads(Init::Release, 8, 8, 8, 3).unwrap();
        assert_eq!(square.img_w, p.img_w);
        // Identity has no rectangular form; projection starts every head from its projection.
        let e = init_heads(Init::Identity, 8, 8, 12, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--init identity needs square heads"), "{e}");
        let q = init_heads(Init::Projection, 8, 8, 12, 3).unwrap();
        assert_eq!(q.img_w, projection(8, 8, 3, 0));
        assert!(q.img_b.iter().all(|b| *b == 0.0));
    }

    #[test]
    fn the_projection_is_signs_that_keep_norms_in_expectation() {
        let (d_out, d_in) = (64, 96);
        let r = projection(d_out, d_in, 0, 1);
        let s = 1.0 / (d_out as f32).sqrt();
        assert!(r.iter().all(|v| *v == s || *v == -s));
        let negative = r.iter().filter(|v| **v < 0.0).count();
        assert!((negative as f64 / r.len() as f64 - 0.5).abs() < 0.03);
        // Columns of norm 1: E‖Rx‖² = ‖x‖².
        for j in 0..d_in {
            let n: f32 = (0..d_out).map(|i| r[i * d_in + j].powi(2)).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        assert_ne!(r, projection(d_out, d_in, 0, 0));
        assert_ne!(r, projection(d_out, d_in, 1, 1));
    }
}
