//! `coco`: training pairs for `adapt` from COCO's captions format (`captions_train2017.json`
//! and its image folder), embedded once by a model: `images.arrow` (`image_id`, raw embedding)
//! and `captions.arrow` (`image_id`, `caption_id`, `caption`, raw embedding), images checkpointed
//! in chunks like `embed`. Images that cannot be read are left out and counted (their captions
//! stay, and `adapt` counts them as captions without an image).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use serde::Deserialize;

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::store::write_store;
use crate::model::runner::{
    embed_images, embed_texts, model_run_config, stage_identity, ImageRun, ModelRunConfig,
};
use crate::tables;

model_run_config! {
    /// Configuration of `coco`: its sources, then the model run that embeds them.
    pub struct CocoConfig {
        /// COCO's captions file (`annotations/captions_train2017.json`: images with `id` and
        /// `file_name`, annotations with `image_id` and `caption`). Omitted, with `image_dir`:
        /// the captions and images of the synth stage's rendered world.
        #[arg(long)]
        pub captions: Option<PathBuf>,
        /// The folder of its images (`file_name` is looked up there).
        #[arg(long)]
        pub image_dir: Option<PathBuf>,
    }
}

impl Default for CocoConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// The coco stage.
#[derive(Debug, Clone)]
pub struct Coco {
    /// The captions file and its images' folder, or `None` for the synth stage's.
    source: Option<(PathBuf, PathBuf)>,
    model: ModelRunConfig,
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoCaption>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoCaption {
    #[serde(default)]
    id: i64,
    image_id: i64,
    caption: String,
}

impl StageDef for Coco {
    const NAME: &'static str = "coco";
    const SHARDABLE: bool = true;
    const RUNS_MODEL: bool = true;
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "Training pairs from COCO captions, embedded by a model: RUN/coco/{images,captions}.arrow (raw)";
    const PROVIDES: &'static [&'static TableDecl] = &[
        &tables::PAIR_IMAGES,
        &tables::PAIR_CAPTIONS,
        &tables::PAIR_MODEL,
    ];
    type Config = CocoConfig;
    fn resolve_paths(c: &mut CocoConfig, base: &Path) {
        for p in [
            &mut c.captions,
            &mut c.image_dir,
            &mut c.model,
            &mut c.image_model,
            &mut c.text_model,
        ]
        .into_iter()
        .flatten()
        {
            crate::config::resolve(p, base);
        }
    }
    fn build(c: CocoConfig) -> Result<Self> {
        let model = c.model_run();
        let mut checks = Checks::<Self>::new();
        let source = match (c.captions, c.image_dir) {
            (Some(captions), Some(image_dir)) => {
                checks.path("captions", &captions, PathKind::File);
                checks.path("image_dir", &image_dir, PathKind::Folder);
                Some((captions, image_dir))
            }
            (None, None) => None,
            (Some(_), None) => {
                checks.bad(
                    "image_dir",
                    "is required with `captions`: the folder of its images",
                );
                None
            }
            (None, Some(_)) => {
                checks.bad(
                    "captions",
                    "is required with `image_dir`: COCO's captions JSON",
                );
                None
            }
        };
        if let Err(e) = model.check(Self::NAME) {
            checks.error("model", e);
        }
        checks.finish(Coco { source, model })
    }
    fn needs(&self) -> Vec<Need> {
        if self.source.is_some() {
            return vec![];
        }
        vec![
            Need::of(&tables::VG_CAPTIONS).choose("--captions FILE --image-dir DIR"),
            Need::of(&tables::VG_IMAGES).choose("--captions FILE --image-dir DIR"),
        ]
    }
    fn fingerprint(&self) -> serde_json::Value {
        self.model.fingerprint_value("coco")
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        let Some((captions, image_dir)) = &self.source else {
            // The synth stage's tables enter through its output digest.
            return self.model.inputs(Self::NAME);
        };
        if !captions.is_file() {
            return Err(Error::input_missing(
                Self::NAME,
                "captions file",
                captions,
                "",
            ));
        }
        if !image_dir.is_dir() {
            return Err(Error::input_missing(
                Self::NAME,
                "images folder",
                image_dir,
                "",
            ));
        }
        let mut v = vec![("captions".to_string(), captions.clone())];
        v.extend(self.model.inputs(Self::NAME)?);
        Ok(v)
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let (captions, image_dir) = match &self.source {
            Some((c, d)) => (c.clone(), d.clone()),
            None => (
                ctx.input(&tables::VG_CAPTIONS)?,
                ctx.input(&tables::VG_IMAGES)?,
            ),
        };
        let text =
            std::fs::read(&captions).map_err(|e| Error::io("failed to read", &captions, e))?;
        let file: CocoFile = serde_json::from_slice(&text).map_err(|e| Error::Json {
            path: captions.clone(),
            byte_offset: 0,
            message: format!("not COCO's captions format: {e}"),
        })?;
        let mut images: BTreeMap<i64, PathBuf> = BTreeMap::new();
        for im in &file.images {
            if images
                .insert(im.id, image_dir.join(&im.file_name))
                .is_some()
            {
                return Err(Error::data(
                    &captions,
                    format!("image id {} appears twice", im.id),
                ));
            }
        }
        let ids: Vec<i64> = images.keys().copied().collect();
        let files: Vec<PathBuf> = images.values().cloned().collect();
        let mut model = self.model.open()?;
        let run = embed_images(
            &mut model,
            &files,
            &self.model,
            &ctx.stage_dir,
            &ctx.fingerprint,
            ctx.ui,
            ctx.part,
        )?;
        let (emb, chunks) = match run {
            // A part commits its chunks; the commit, run whole, finds them and writes the tables.
            ImageRun::Part(files, resumed) => {
                return Ok(StageReport::of_part(files, resumed as u64))
            }
            ImageRun::Whole(emb, chunks) => (emb, chunks),
        };
        let kept: Vec<i64> = emb.positions.iter().map(|&p| ids[p]).collect();
        write_store(
            &ctx.output(&tables::PAIR_IMAGES)?,
            &[("image_id", Arc::new(Int64Array::from(kept)) as ArrayRef)],
            &emb.matrix,
        )?;
        let texts: Vec<&str> = file
            .annotations
            .iter()
            .map(|a| a.caption.as_str())
            .collect();
        let caption_m = embed_texts(&mut model, &texts, self.model.batch_size)?;
        write_store(
            &ctx.output(&tables::PAIR_CAPTIONS)?,
            &[
                (
                    "image_id",
                    Arc::new(Int64Array::from_iter_values(
                        file.annotations.iter().map(|a| a.image_id),
                    )) as ArrayRef,
                ),
                (
                    "caption_id",
                    Arc::new(Int64Array::from_iter_values(
                        file.annotations.iter().map(|a| a.id),
                    )),
                ),
                (
                    "caption",
                    Arc::new(StringArray::from_iter_values(texts.iter().copied())),
                ),
            ],
            &caption_m,
        )?;
        crate::model::runner::write_model_json(
            &ctx.output(&tables::PAIR_MODEL)?,
            stage_identity(&model, &ctx.input_hashes),
            &self.model,
            emb.matrix.cols,
        )?;
        chunks.finish();
        let mut report = StageReport::default();
        report.table(&tables::PAIR_IMAGES, Some(emb.matrix.rows as u64));
        report.table(&tables::PAIR_CAPTIONS, Some(caption_m.rows as u64));
        report.table(&tables::PAIR_MODEL, None);
        report.count("images", emb.matrix.rows as u64);
        report.count("captions", caption_m.rows as u64);
        report.count("images_unreadable", emb.failed.len() as u64);
        report.count("chunks_resumed", emb.chunks_resumed as u64);
        if let Some((p, f)) = emb.failed.first() {
            report.skipped += emb.failed.len() as u64;
            report.notes.push(format!(
                "{} image(s) could not be read, e.g. `{}`: {f}",
                emb.failed.len(),
                files[*p].display()
            ));
        }
        Ok(report)
    }
}
