//! `crops`: one PNG per region, cut from its image at the region's union box.
//!
//! Images are looked up as `<image_dir>/<image_id>.jpg` (or `.png`), and under Visual Genome's own
//! `VG_100K/` and `VG_100K_2/` sub-folders. Each image is decoded once for all its regions, in
//! parallel. Every region gets a status in `crops.parquet`: `ok`, `clamped` (the box reached
//! outside the image and was cut to it), `padded` (the box reached outside the image and the
//! outside was filled with black, as Pillow's `Image.crop` does — the release's
//! `prepare_dataset.py` cut SIMAT's crops that way), `outside` (nothing of the box is inside the
//! image), `missing` (no image file) or `corrupt` (the file does not decode). The last three are
//! counted as skipped and make the exit code 1; they never stop the stage.
//!
//! With `only_dataset`, only the regions of the dataset are cropped: for the official release,
//! the 5,859 of `triplets.csv` (of its 11,160 candidates), at the union box of
//! `retrieval_db.tsv`.
//!
//! The work is checkpointed in chunks of images: each finished chunk's rows are committed to
//! `chunks/<n>.parquet` after its PNGs, next to `checkpoint.json` holding the stage's
//! fingerprint; a killed run resumes from the committed chunks of the same fingerprint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::atomic::AtomicFile;
use crate::io::chunks::Chunks;
use crate::tables;
use crate::tables::crops::crops_schema;
use crate::tables::dataset::ints;

/// Configuration of the crops stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct CropsConfig {
    /// The images folder (`<image_id>.jpg`, also under VG_100K/ and VG_100K_2/); without it, the
    /// synth stage's rendered images. Identified in the fingerprint by its listing (names and
    /// sizes of the image files), not by its path.
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Images per checkpointed chunk.
    #[arg(long, default_value_t = 512)]
    pub chunk_images: usize,
    /// A box reaching outside its image: `clamp` it to the image, or `pad` with black as
    /// Pillow's `Image.crop` (and the release's prepare_dataset.py) does.
    #[arg(long, value_enum, default_value = "clamp")]
    pub outside: Outside,
    /// Crop only the regions of the dataset (the official release's 5,859).
    #[arg(long)]
    pub only_dataset: bool,
    /// Images of more pixels are not decoded: their regions are `corrupt`, with the reason
    /// (default: Pillow's decompression-bomb limit, 178,956,970).
    #[arg(long, default_value_t = crate::model::preprocess::MAX_PIXELS)]
    pub max_pixels: u64,
}

impl Default for CropsConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// What a box that reaches outside its image gives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Outside {
    /// Cut the box to the image (status `clamped`).
    #[default]
    Clamp,
    /// Keep the box, black outside the image (status `padded`), as Pillow's `Image.crop`.
    Pad,
}

/// The crops stage.
#[derive(Debug, Clone)]
pub struct Crops {
    /// Its configuration.
    pub config: CropsConfig,
}
/// Where the image of `image_id` is, if anywhere.
pub fn find_image(dir: &Path, image_id: i64) -> Option<PathBuf> {
    for sub in ["", "VG_100K", "VG_100K_2"] {
        for ext in ["jpg", "png"] {
            let p = dir.join(sub).join(format!("{image_id}.{ext}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Digest of the image files' names and sizes (not their times, not the folder's path).
fn listing_digest(dir: &Path) -> String {
    let mut entries: Vec<(String, u64)> = Vec::new();
    for sub in ["", "VG_100K", "VG_100K_2"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".jpg") || name.ends_with(".png") {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    entries.push((format!("{sub}/{name}"), size));
                }
            }
        }
    }
    entries.sort();
    let mut h = blake3::Hasher::new();
    for (n, s) in &entries {
        h.update(n.as_bytes());
        h.update(&s.to_le_bytes());
    }
    format!("{} files, {}", entries.len(), &h.finalize().to_hex()[..16])
}

impl StageDef for Crops {
    const NAME: &'static str = "crops";
    const VERSION: u32 = 2;
    const ABOUT: &'static str =
        "One PNG per region, cut at its union box: RUN/crops/crops/*.png and crops.parquet";
    const PROVIDES: &'static [&'static TableDecl] = &[&tables::CROPS, &tables::CROP_FILES];
    const SHARDABLE: bool = true;
    type Config = CropsConfig;
    fn resolve_paths(c: &mut CropsConfig, base: &Path) {
        if let Some(p) = &mut c.image_dir {
            crate::config::resolve(p, base);
        }
    }
    fn build(config: CropsConfig) -> Result<Self> {
        let mut checks = Checks::<Self>::new();
        if config.chunk_images == 0 {
            checks.bad("chunk_images", "must be at least 1");
        }
        if let Some(dir) = &config.image_dir {
            checks.path("image_dir", dir, PathKind::Folder);
        }
        checks.finish(Crops { config })
    }
    fn needs(&self) -> Vec<Need> {
        let mut v = vec![Need::of(&tables::REGIONS)];
        if self.config.image_dir.is_none() {
            v.push(
                Need::of(&tables::VG_IMAGES).choose(
                    "--image-dir DIR (`image_dir` in [crops]), or render images in [synth]",
                ),
            );
        }
        if self.config.only_dataset {
            v.push(Need::of(&tables::DATASET));
        }
        v
    }
    fn fingerprint(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "images": c.image_dir.as_deref().map(listing_digest),
            "chunk_images": c.chunk_images,
            "outside": c.outside,
            "only_dataset": c.only_dataset,
            "max_pixels": c.max_pixels,
        })
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        if let Some(dir) = &self.config.image_dir {
            if !dir.is_dir() {
                return Err(Error::input_missing(Self::NAME, "images folder", dir, ""));
            }
        }
        Ok(vec![])
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let regions = ctx.input(&tables::REGIONS)?;
        let images = match &self.config.image_dir {
            Some(d) => d.clone(),
            None => ctx.input(&tables::VG_IMAGES)?,
        };
        let only = match ctx.maybe(&tables::DATASET) {
            Some(p) if self.config.only_dataset => Some(
                crate::tables::dataset::Dataset::read(&p)?
                    .region_id
                    .into_iter()
                    .collect(),
            ),
            _ => None,
        };
        crop_all(&self.config, &images, &regions, only.as_ref(), ctx)
    }
}

/// The regions of one image: (region id, union box x1, y1, x2, y2).
type ImageRegions = Vec<(i64, [i32; 4])>;

/// One region's outcome.
#[derive(Debug, Clone)]
struct Row {
    region_id: i64,
    image_id: i64,
    status: &'static str,
    /// Why an image was not cropped (`corrupt`: the decoder's message).
    reason: Option<String>,
    file: Option<String>,
    bbox: [i32; 4],
    size: [i32; 2],
}

fn rows_batch(rows: &[Row]) -> RecordBatch {
    let i32s = |f: &dyn Fn(&Row) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(rows.iter().map(f)))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.region_id),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.image_id),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.status))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.reason.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.file.as_deref()),
        )),
        i32s(&|r| r.bbox[0]),
        i32s(&|r| r.bbox[1]),
        i32s(&|r| r.bbox[2]),
        i32s(&|r| r.bbox[3]),
        i32s(&|r| r.size[0]),
        i32s(&|r| r.size[1]),
    ];
    RecordBatch::try_new(crops_schema(), cols).expect("crops rows match their schema")
}

/// Crop every region of one image.
fn crop_image(
    dir: &Path,
    out_dir: &Path,
    image_id: i64,
    regions: &[(i64, [i32; 4])],
    outside: Outside,
    max_pixels: u64,
) -> Result<Vec<Row>> {
    let row = |region_id: i64, status, file, bbox, size| Row {
        region_id,
        image_id,
        status,
        reason: None,
        file,
        bbox,
        size,
    };
    let Some(path) = find_image(dir, image_id) else {
        return Ok(regions
            .iter()
            .map(|(r, b)| row(*r, "missing", None, *b, [0, 0]))
            .collect());
    };
    // Decoded as Pillow decodes (libjpeg-turbo for JPEG), so crops equal the original pipeline's.
    let decoded = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| crate::model::preprocess::decode_rgb(&b, max_pixels));
    let img = match decoded {
        Ok(i) => image::DynamicImage::ImageRgb8(i),
        Err(reason) => {
            return Ok(regions
                .iter()
                .map(|(r, b)| Row {
                    reason: Some(format!("{}: {reason}", path.display())),
                    ..row(*r, "corrupt", None, *b, [0, 0])
                })
                .collect())
        }
    };
    let (w, h) = (img.width() as i32, img.height() as i32);
    let mut out = Vec::with_capacity(regions.len());
    for &(region_id, b) in regions {
        let c = [b[0].max(0), b[1].max(0), b[2].min(w), b[3].min(h)];
        if c[2] <= c[0] || c[3] <= c[1] {
            out.push(row(region_id, "outside", None, b, [w, h]));
            continue;
        }
        let inside = img.crop_imm(
            c[0] as u32,
            c[1] as u32,
            (c[2] - c[0]) as u32,
            (c[3] - c[1]) as u32,
        );
        let (status, crop, c) = if c == b {
            ("ok", inside, c)
        } else if outside == Outside::Clamp {
            ("clamped", inside, c)
        } else {
            // Pillow's crop: the box as given, zeros where it leaves the image.
            let mut canvas = image::RgbImage::new((b[2] - b[0]) as u32, (b[3] - b[1]) as u32);
            image::imageops::replace(
                &mut canvas,
                &inside.to_rgb8(),
                (c[0] - b[0]) as i64,
                (c[1] - b[1]) as i64,
            );
            ("padded", image::DynamicImage::ImageRgb8(canvas), b)
        };
        let rel = format!("crops/{region_id}.png");
        let dest = out_dir.join(&rel);
        let mut file = AtomicFile::create(&dest)?;
        crop.write_to(file.writer(), image::ImageFormat::Png)
            .map_err(|e| Error::io("failed to encode", &dest, std::io::Error::other(e)))?;
        file.commit()?;
        out.push(row(region_id, status, Some(rel), c, [w, h]));
    }
    Ok(out)
}

fn crop_all(
    config: &CropsConfig,
    image_dir: &Path,
    regions: &Path,
    only: Option<&std::collections::HashSet<i64>>,
    ctx: &StageContext,
) -> Result<StageReport> {
    let batch = crate::io::read_all(regions)?;
    let ids = ints(&batch, "region_id", regions)?;
    let images = ints(&batch, "image_id", regions)?;
    let coord = |n: &str| -> Result<Vec<i32>> {
        Ok(crate::io::i32_column(&batch, n, regions)?.values().to_vec())
    };
    let (x1, y1, x2, y2) = (coord("x1")?, coord("y1")?, coord("x2")?, coord("y2")?);
    let mut by_image: BTreeMap<i64, ImageRegions> = BTreeMap::new();
    for i in 0..ids.len() {
        if only.is_some_and(|o| !o.contains(&ids[i])) {
            continue;
        }
        by_image
            .entry(images[i])
            .or_default()
            .push((ids[i], [x1[i], y1[i], x2[i], y2[i]]));
    }
    let by_image: Vec<(i64, ImageRegions)> = by_image.into_iter().collect();
    let chunk = config.chunk_images.max(1);
    let n_chunks = by_image.len().div_ceil(chunk);

    // Crops of an earlier configuration must not linger beside the new ones.
    let chunks = Chunks::open(&ctx.stage_dir, &ctx.fingerprint, n_chunks, &["crops"])?;
    // A part cuts its range of the chunks and nothing else; the commit finds them all cut.
    let range = crate::io::chunks::Part::range_of(ctx.part, n_chunks);
    let images = (range.start * chunk..(range.end * chunk).min(by_image.len())).len();
    let bar = ctx.ui.progress(images as u64, "images", "crops");
    let mut resumed = 0u64;
    let mut written = Vec::new();
    for k in range {
        let part = &by_image[k * chunk..((k + 1) * chunk).min(by_image.len())];
        let path = chunks.file(k, "parquet");
        if path.is_file() {
            resumed += 1;
        } else {
            let rows: Vec<Vec<Row>> = part
                .par_iter()
                .map(|(image_id, regs)| {
                    crop_image(
                        image_dir,
                        &ctx.stage_dir,
                        *image_id,
                        regs,
                        config.outside,
                        config.max_pixels,
                    )
                })
                .collect::<Result<_>>()?;
            let rows: Vec<Row> = rows.into_iter().flatten().collect();
            crate::io::write_table(&path, &rows_batch(&rows))?;
        }
        let rel = path.strip_prefix(&ctx.stage_dir).unwrap_or(&path);
        written.push(rel.to_string_lossy().into_owned());
        bar.inc(part.len() as u64);
    }
    if ctx.part.is_some() {
        bar.finish_and_clear();
        return Ok(StageReport::of_part(written, resumed));
    }
    bar.finish_and_clear();

    // Concatenate the chunks into the table, then drop the checkpoint.
    let schema = crops_schema();
    let mut w = crate::io::TableWriter::create(&ctx.output(&tables::CROPS)?, schema)?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for k in 0..n_chunks {
        let b = crate::io::read_all(&chunks.file(k, "parquet"))?;
        let status = arrow::array::AsArray::as_string::<i32>(b.column(2));
        for v in status.iter().flatten() {
            *counts.entry(v.to_string()).or_default() += 1;
        }
        w.write(&b)?;
    }
    let n = w.finish()?;
    chunks.finish();

    let mut report = StageReport::default();
    report.table(&tables::CROPS, Some(n));
    // The folder is declared, so it is there even when no crop could be cut.
    let folder = ctx.output(&tables::CROP_FILES)?;
    std::fs::create_dir_all(&folder)
        .map_err(|e| Error::io("failed to create directory", &folder, e))?;
    report.folder(tables::CROP_FILES.file);
    report.count("chunks_resumed", resumed);
    for status in ["ok", "clamped", "padded", "outside", "missing", "corrupt"] {
        let c = counts.get(status).copied().unwrap_or(0);
        report.count(&format!("regions_{status}"), c);
        if matches!(status, "outside" | "missing" | "corrupt") && c > 0 {
            report.skipped += c;
            report
                .notes
                .push(format!("{c} region(s) not cropped: image {status}"));
        }
    }
    Ok(report)
}
