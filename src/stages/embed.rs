//! `embed`: the evaluated model embeds the dataset — the crops of its regions, in `dataset_id`
//! order, its words and its triplets' captions — into raw embedding stores, checkpointed in
//! chunks so that a killed run resumes.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};

use crate::engine::StageDef;
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::store::write_store;
use crate::model::runner::{
    embed_images, embed_texts, stage_identity, write_model_json, ImageRun, ModelRunConfig,
};
use crate::tables;
use crate::tables::crops::crop_files;
use crate::tables::dataset::Dataset;
use crate::tables::regions::captions;

/// The `embed` stage: a model embeds the dataset's crops, words and captions.
#[derive(Debug, Clone)]
pub struct Embed {
    /// How the model runs.
    pub config: ModelRunConfig,
}

impl StageDef for Embed {
    const NAME: &'static str = "embed";
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "A model embeds the dataset's crops, words and captions: RUN/embed/*.arrow (raw outputs), model.json";
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::IMAGE_EMBEDDINGS,
        &tables::WORD_EMBEDDINGS,
        &tables::CAPTION_EMBEDDINGS,
        &tables::EMBEDDING_MODEL,
    ];
    const SHARDABLE: bool = true;
    const RUNS_MODEL: bool = true;
    crate::model::runner::model_run_stage!();
    fn needs(&self) -> Vec<Need> {
        vec![
            Need::of(&tables::DATASET),
            Need::of(&tables::CROPS),
            Need::of(&tables::TRIPLETS),
        ]
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let dataset = Dataset::read(&ctx.input(&tables::DATASET)?)?;
        let (files, statuses) = crop_files(&ctx.input(&tables::CROPS)?)?;
        let mut inputs = Vec::with_capacity(dataset.len());
        for (i, r) in dataset.region_id.iter().enumerate() {
            match files.get(r) {
                Some(f) => inputs.push(f.clone()),
                None => {
                    return Err(Error::stage(
                        "embed",
                        format!(
                            "region {r} (dataset_id {i}) has no crop (status {}); a pipeline with [crops] selects only cropped regions",
                            statuses.get(r).map(String::as_str).unwrap_or("absent")
                        ),
                    ))
                }
            }
        }
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
        if let Some((i, f)) = images.failed.first() {
            return Err(Error::data(
                &inputs[*i],
                format!(
                    "crop of region {} (dataset_id {i}) cannot be embedded: {f}",
                    dataset.region_id[*i]
                ),
            ));
        }
        let words: BTreeSet<&str> = dataset
            .triplet
            .iter()
            .flat_map(|t| t.iter().map(String::as_str))
            .collect();
        let words: Vec<&str> = words.into_iter().collect();
        let word_m = embed_texts(&mut model, &words, self.config.batch_size)?;
        let all_captions = captions(&ctx.input(&tables::TRIPLETS)?)?;
        let triplet_ids: BTreeSet<i64> = dataset.triplet_id.iter().copied().collect();
        let mut caption_ids = Vec::new();
        let mut caption_texts = Vec::new();
        for t in triplet_ids {
            let c = all_captions.get(&t).ok_or_else(|| {
                Error::stage(
                    "embed",
                    format!("triplet {t} of the dataset has no caption"),
                )
            })?;
            caption_ids.push(t);
            caption_texts.push(c.as_str());
        }
        let caption_m = embed_texts(&mut model, &caption_texts, self.config.batch_size)?;

        write_store(
            &ctx.output(&tables::IMAGE_EMBEDDINGS)?,
            &[
                (
                    "dataset_id",
                    Arc::new(Int64Array::from_iter_values(0..images.matrix.rows as i64)),
                ),
                (
                    "region_id",
                    Arc::new(Int64Array::from(dataset.region_id.clone())),
                ),
            ],
            &images.matrix,
        )?;
        write_store(
            &ctx.output(&tables::WORD_EMBEDDINGS)?,
            &[(
                "word",
                Arc::new(StringArray::from_iter_values(words.iter().copied())),
            )],
            &word_m,
        )?;
        write_store(
            &ctx.output(&tables::CAPTION_EMBEDDINGS)?,
            &[("triplet_id", Arc::new(Int64Array::from(caption_ids)))],
            &caption_m,
        )?;
        write_model_json(
            &ctx.output(&tables::EMBEDDING_MODEL)?,
            stage_identity(&model, &ctx.input_hashes),
            &self.config,
            images.matrix.cols,
        )?;
        chunks.finish();
        let mut report = StageReport::default();
        report.table(&tables::IMAGE_EMBEDDINGS, Some(images.matrix.rows as u64));
        report.table(&tables::WORD_EMBEDDINGS, Some(word_m.rows as u64));
        report.table(&tables::CAPTION_EMBEDDINGS, Some(caption_m.rows as u64));
        report.table(&tables::EMBEDDING_MODEL, None);
        report.count("images", images.matrix.rows as u64);
        report.count("words", word_m.rows as u64);
        report.count("captions", caption_m.rows as u64);
        report.count("dim", images.matrix.cols as u64);
        report.count("chunks_resumed", images.chunks_resumed as u64);
        Ok(report)
    }
}
