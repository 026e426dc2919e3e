//! `oracle`: a CLIP-family model judges every cropped region against every triplet's caption by
//! cosine similarity (the `model` oracle of `select` and `score`).

use std::path::PathBuf;

use crate::engine::StageDef;
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::model::runner::ModelRunConfig;
use crate::tables;

/// The `oracle` stage: a CLIP-family model judges every cropped region against every triplet's
/// caption by cosine similarity. It writes the raw embeddings
/// (`region_embeddings.arrow` by `region_id`, `caption_embeddings.arrow` by `triplet_id`), from
/// which any region × caption similarity is one inner product once normalised, and
/// `region_scores.parquet`:
/// each embedded region's similarity with its own caption, which `select` thresholds. Regions
/// without a usable crop, or whose crop cannot be read, are counted and left out.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// How the model runs.
    pub config: ModelRunConfig,
}

impl StageDef for Oracle {
    const NAME: &'static str = "oracle";
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "A CLIP-family model judges every cropped region against every caption: RUN/oracle/{region,caption}_embeddings.arrow, region_scores.parquet";
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::ORACLE_REGIONS,
        &tables::ORACLE_CAPTIONS,
        &tables::REGION_SCORES,
        &tables::ORACLE_MODEL,
    ];
    const SHARDABLE: bool = true;
    const RUNS_MODEL: bool = true;
    crate::model::runner::model_run_stage!();
    fn needs(&self) -> Vec<Need> {
        vec![
            Need::of(&tables::REGIONS),
            Need::of(&tables::TRIPLETS),
            Need::of(&tables::CROPS),
        ]
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        use std::sync::Arc;

        use arrow::array::{Float32Array, Int64Array, RecordBatch};

        use crate::model::runner::{embed_images, embed_texts, ImageRun};
        use crate::tables::crops::crop_files;
        use crate::tables::regions::captions;

        let rpath = ctx.input(&tables::REGIONS)?;
        let regions = crate::io::read_all(&rpath)?;
        let region_id = crate::tables::dataset::ints(&regions, "region_id", &rpath)?;
        let triplet_id = crate::tables::dataset::ints(&regions, "triplet_id", &rpath)?;
        let (files, _) = crop_files(&ctx.input(&tables::CROPS)?)?;
        let cropped: Vec<usize> = (0..region_id.len())
            .filter(|&i| files.contains_key(&region_id[i]))
            .collect();
        let inputs: Vec<PathBuf> = cropped
            .iter()
            .map(|&i| files[&region_id[i]].clone())
            .collect();
        let mut model = self.config.open()?;
        let run = embed_images(
            &mut model,
            &inputs,
            &self.config,
            &ctx.stage_dir,
            &ctx.fingerprint,
            ctx.ui,
            ctx.part,
        )?;
        let (images, chunks) = match run {
            // A part commits its chunks; the commit, run whole, finds them and writes the tables.
            ImageRun::Part(files, resumed) => {
                return Ok(StageReport::of_part(files, resumed as u64))
            }
            ImageRun::Whole(images, chunks) => (images, chunks),
        };
        let all_captions = captions(&ctx.input(&tables::TRIPLETS)?)?;
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
            &ctx.output(&tables::ORACLE_REGIONS)?,
            &[("region_id", Arc::new(Int64Array::from(ids.clone())))],
            &images.matrix,
        )?;
        crate::io::store::write_store(
            &ctx.output(&tables::ORACLE_CAPTIONS)?,
            &[("triplet_id", Arc::new(Int64Array::from(caption_ids)))],
            &caption_m,
        )?;
        let batch = RecordBatch::try_new(
            tables::oracle::region_scores_schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(tids)),
                Arc::new(Float32Array::from(scores)),
            ],
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        let n = crate::io::write_table(&ctx.output(&tables::REGION_SCORES)?, &batch)?;
        crate::model::runner::write_model_json(
            &ctx.output(&tables::ORACLE_MODEL)?,
            crate::model::runner::stage_identity(&model, &ctx.input_hashes),
            &self.config,
            images.matrix.cols,
        )?;
        chunks.finish();

        let mut report = crate::engine::StageReport::default();
        report.table(&tables::ORACLE_REGIONS, Some(n));
        report.table(&tables::ORACLE_CAPTIONS, Some(caption_m.rows as u64));
        report.table(&tables::REGION_SCORES, Some(n));
        report.table(&tables::ORACLE_MODEL, None);
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
