//! Oracles: what judges whether an image shows a caption. A stage names one by a string:
//! `labels` (the annotation decides: an image shows its own triplet's caption), `model` (the
//! `oracle` stage's CLIP-family model: cosine similarity of the region's crop and the caption),
//! or the path of a similarity matrix (`.npy`), which is identified in fingerprints by its
//! content, not its path.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The oracle that needs no file.
pub const LABELS: &str = "labels";

/// The matrix file an oracle string names, if it is not `labels` or `model`.
pub fn matrix_file(oracle: &str) -> Option<PathBuf> {
    (oracle != LABELS && oracle != MODEL).then(|| PathBuf::from(oracle))
}

/// The stage an oracle string depends on (`oracle` for `model`).
pub fn upstream(oracle: &str) -> Option<&'static str> {
    (oracle == MODEL).then_some("oracle")
}

/// A stage's config as JSON, with an oracle path replaced by `"matrix"` (its content is hashed
/// through [`inputs`] instead).
pub fn config_value<T: serde::Serialize>(config: &T, oracle: &str) -> serde_json::Value {
    let mut c = serde_json::to_value(config).expect("config serialises");
    if matrix_file(oracle).is_some() {
        c["oracle"] = serde_json::json!("matrix");
    }
    c
}

/// The oracle's file as a stage input, or an error naming the stage when it is missing.
pub fn inputs(stage: &str, oracle: &str) -> Result<Vec<(String, PathBuf)>> {
    match matrix_file(oracle) {
        None => Ok(vec![]),
        Some(p) if p.is_file() => Ok(vec![("oracle".into(), p)]),
        Some(p) => Err(Error::stage(
            stage,
            format!(
                "oracle `{}` not found (give a .npy matrix, `{LABELS}` or `{MODEL}`)",
                p.display()
            ),
        )),
    }
}

/// The oracle that the `oracle` stage computes with a CLIP-family model.
pub const MODEL: &str = "model";

/// The `oracle` stage: a CLIP-family model judges every cropped region against every triplet's
/// caption by cosine similarity. It writes the raw embeddings
/// (`region_embeddings.arrow` by `region_id`, `caption_embeddings.arrow` by `triplet_id`), from
/// which any region × caption similarity is one inner product once normalised, and
/// `region_scores.parquet`:
/// each embedded region's similarity with its own caption, which `select` thresholds. Regions
/// without a usable crop, or whose crop cannot be read, are counted and left out.
#[derive(Debug, Clone)]
pub struct OracleStage {
    /// How the model runs.
    pub config: crate::stages::embed::ModelRunConfig,
    /// The stage holding the regions and the triplets' captions: `triplets` or `import`.
    pub regions_stage: String,
}

/// Schema of `region_scores.parquet`.
pub fn region_scores_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("region_id", DataType::Int64, false),
        Field::new("triplet_id", DataType::Int64, false),
        Field::new("similarity", DataType::Float32, false),
    ]))
}

impl crate::engine::Stage for OracleStage {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn version(&self) -> u32 {
        2
    }
    fn upstream(&self) -> Vec<&'static str> {
        if self.regions_stage == "import" {
            vec!["import", "crops"]
        } else {
            vec!["triplets", "crops"]
        }
    }
    fn config(&self) -> serde_json::Value {
        self.config.fingerprint_value("model")
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        self.config.inputs("oracle")
    }
    fn run(&self, ctx: &crate::engine::StageContext) -> Result<crate::engine::StageReport> {
        use std::sync::Arc;

        use arrow::array::{Float32Array, Int64Array, RecordBatch};

        use crate::stages::embed::{captions, crop_files, embed_images_chunked, embed_texts};

        let from = self.upstream()[0];
        let rpath = ctx.upstream_output(from, "regions.parquet");
        let regions = crate::io::read_all(&rpath)?;
        let region_id = crate::tables::dataset::ints(&regions, "region_id", &rpath)?;
        let triplet_id = crate::tables::dataset::ints(&regions, "triplet_id", &rpath)?;
        let (files, _) = crop_files(&ctx.run_dir.join("crops"))?;
        let cropped: Vec<usize> = (0..region_id.len())
            .filter(|&i| files.contains_key(&region_id[i]))
            .collect();
        let inputs: Vec<PathBuf> = cropped
            .iter()
            .map(|&i| files[&region_id[i]].clone())
            .collect();
        let mut model = self.config.open()?;
        let (images, chunks) = embed_images_chunked(
            &mut model,
            &inputs,
            &self.config,
            &ctx.stage_dir,
            &ctx.fingerprint,
            ctx.ui,
        )?;
        let all_captions = captions(&ctx.run_dir.join(from))?;
        let caption_ids: Vec<i64> = all_captions.keys().copied().collect();
        let texts: Vec<&str> = all_captions.values().map(String::as_str).collect();
        let caption_m = embed_texts(&mut model, &texts, self.config.batch_size)?;
        let caption_row: std::collections::HashMap<i64, usize> = caption_ids
            .iter()
            .enumerate()
            .map(|(r, &t)| (t, r))
            .collect();

        let embedded: Vec<usize> = images.positions.iter().map(|&p| cropped[p]).collect();
        let mut scores = Vec::with_capacity(embedded.len());
        // Cosine similarity: the stores keep raw vectors.
        let mut unit_images = images.matrix.clone();
        crate::linalg::normalize_rows(&mut unit_images);
        let mut unit_captions = caption_m.clone();
        crate::linalg::normalize_rows(&mut unit_captions);
        for (row, &i) in embedded.iter().enumerate() {
            let c = caption_row.get(&triplet_id[i]).ok_or_else(|| {
                Error::data(
                    &rpath,
                    format!(
                        "region {} has triplet {}, which has no caption",
                        region_id[i], triplet_id[i]
                    ),
                )
            })?;
            scores.push(crate::linalg::dot(
                unit_images.row(row),
                unit_captions.row(*c),
            ));
        }
        let ids: Vec<i64> = embedded.iter().map(|&i| region_id[i]).collect();
        let tids: Vec<i64> = embedded.iter().map(|&i| triplet_id[i]).collect();
        crate::io::store::write_store(
            &ctx.output("region_embeddings.arrow"),
            &[("region_id", Arc::new(Int64Array::from(ids.clone())))],
            &images.matrix,
        )?;
        crate::io::store::write_store(
            &ctx.output("caption_embeddings.arrow"),
            &[("triplet_id", Arc::new(Int64Array::from(caption_ids)))],
            &caption_m,
        )?;
        let batch = RecordBatch::try_new(
            region_scores_schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(tids)),
                Arc::new(Float32Array::from(scores)),
            ],
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        let n = crate::io::write_table(&ctx.output("region_scores.parquet"), &batch)?;
        crate::stages::embed::write_model_json(
            &ctx.stage_dir,
            crate::stages::embed::stage_identity(&model, ctx),
            &self.config,
            images.matrix.cols,
        )?;
        chunks.finish();

        let mut report = crate::engine::StageReport {
            outputs: vec![
                ("region_embeddings.arrow".into(), Some(n)),
                (
                    "caption_embeddings.arrow".into(),
                    Some(caption_m.rows as u64),
                ),
                ("region_scores.parquet".into(), Some(n)),
                ("model.json".into(), None),
            ],
            ..Default::default()
        };
        let uncropped = (region_id.len() - cropped.len()) as u64;
        report.count("regions_scored", n);
        report.count("regions_without_crop", uncropped);
        report.count("crops_unreadable", images.failed.len() as u64);
        report.count("captions", caption_m.rows as u64);
        report.count("chunks_resumed", images.chunks_resumed as u64);
        if !images.failed.is_empty() {
            report.skipped += images.failed.len() as u64;
            let (p, f) = &images.failed[0];
            report.notes.push(format!(
                "{} crop(s) could not be read, e.g. `{}`: {f}",
                images.failed.len(),
                inputs[*p].display()
            ));
        }
        Ok(report)
    }
}
