//! `synth`: a synthetic Visual Genome, for benchmarks, tests and the demo.
//!
//! Writes the four VG 1.4 JSON files at any scale with VG-like statistics: about 35 objects and
//! 21 relationships per image, long-tailed (Zipf) object names and predicates, and VG's quirks
//! (`name` or `names`, case and white-space noise in predicates, pairs annotated twice, null
//! COCO/Flickr ids, extra fields, boxes too small to be regions). The SIMAT vocabulary is
//! planted at a realistic rate, each planted pair of boxes arranged as its relation is drawn. With
//! `render`, one JPEG per image at its stated size under `images/`: every planted triplet legible
//! in its region (its subject's and object's icons, placed and badged as the relation says: see
//! [`crate::world`]), other objects as frames with their names; and `captions.json`, three to
//! five captions per image in COCO's format, for training a model on the world and for `coco`.
//!
//! Output is a function of the seed alone: each image draws from its own ChaCha stream, so images
//! can be generated in parallel and the bytes do not depend on the thread count.

use std::io::Write;
use std::path::{Path, PathBuf};

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::StageDef;
use crate::engine::{Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::io::atomic::AtomicFile;
use crate::tables;
use crate::vocabulary::Vocabulary;
use crate::world::{
    self, PLANT_OBJECTS, RELATIONS as RELATION_FREQUENCY, SUBJECTS as SUBJECT_FREQUENCY,
};

/// Configuration of the synthetic Visual Genome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Number of images.
    #[arg(long, default_value_t = 1000)]
    pub image_count: u64,
    /// Seed; the output is a function of it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also draw one JPEG per image under `vg/images/` (each planted triplet legible: icons per
    /// name, relations as arrangements; see `simat::world`) and write `vg/captions.json`
    /// (COCO's format).
    #[arg(long)]
    pub render: bool,
    /// Fraction of relationships that are SIMAT triplets (subject and relation in the
    /// vocabulary), between 0 and 1.
    #[arg(long, default_value_t = 0.02)]
    pub plant_rate: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// Common Visual Genome object names, most frequent first.
const NAMES: &[&str] = &[
    "man",
    "window",
    "person",
    "tree",
    "building",
    "shirt",
    "wall",
    "woman",
    "sign",
    "sky",
    "ground",
    "grass",
    "cloud",
    "pole",
    "car",
    "table",
    "leaf",
    "hand",
    "leg",
    "head",
    "water",
    "hair",
    "people",
    "ear",
    "eye",
    "shadow",
    "plate",
    "chair",
    "trees",
    "road",
    "line",
    "door",
    "fence",
    "street",
    "floor",
    "background",
    "snow",
    "light",
    "jacket",
    "hat",
    "field",
    "wheel",
    "train",
    "pants",
    "boy",
    "sidewalk",
    "giraffe",
    "clouds",
    "nose",
    "letter",
    "shoe",
    "tail",
    "face",
    "bus",
    "girl",
    "elephant",
    "umbrella",
    "arm",
    "bag",
    "zebra",
    "roof",
    "dog",
    "plane",
    "glass",
    "cat",
    "horse",
    "bench",
    "sheep",
    "boat",
    "bird",
    "cow",
    "bear",
    "kite",
    "pillow",
    "bed",
    "couch",
    "rock",
    "desk",
    "counter",
    "blanket",
    "frisbee",
    "skateboard",
    "surfboard",
    "ball",
    "motorcycle",
    "bike",
    "beach",
    "sand",
    "wave",
    "computer",
    "keyboard",
    "book",
    "bottle",
    "cup",
    "bowl",
    "pizza",
    "banana",
    "sofa",
    "rug",
    "mat",
    "log",
    "hay",
    "basket",
];

/// Common Visual Genome predicates, most frequent first; several are SIMAT surface forms.
const PREDICATES: &[&str] = &[
    "on",
    "has",
    "in",
    "of",
    "wearing",
    "with",
    "behind",
    "holding",
    "near",
    "on top of",
    "next to",
    "has a",
    "under",
    "by",
    "above",
    "sitting on",
    "in front of",
    "wears",
    "riding",
    "standing on",
    "attached to",
    "carrying",
    "over",
    "beside",
    "hanging on",
    "looking at",
    "laying on",
    "walking on",
    "playing",
    "covered in",
    "eating",
    "touching",
    "parked on",
    "leaning on",
    "inside",
    "using",
    "watching",
    "belonging to",
    "pulling",
    "against",
];

const ATTRIBUTES: &[&str] = &[
    "white", "black", "blue", "green", "red", "brown", "large", "wooden", "small", "yellow",
    "tall", "metal", "sitting", "standing", "young", "old", "smiling", "striped", "wet", "dark",
];

/// Order `items` by their rank in `frequency` (unknown ones last, in their own order).
fn by_frequency<T: Clone>(items: &[(String, T)], frequency: &[&str]) -> Vec<(String, T)> {
    let mut v = items.to_vec();
    v.sort_by_key(|(k, _)| frequency.iter().position(|f| f == k).unwrap_or(usize::MAX));
    v
}

/// Cumulative Zipf weights for sampling index `i` with probability ∝ 1/(i+1).
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    (0..n)
        .map(|i| {
            acc += 1.0 / (i as f64 + 1.0);
            acc
        })
        .collect()
}

fn sample(cdf: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let u = rng.random::<f64>() * cdf[cdf.len() - 1];
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

/// One generated object.
#[derive(Debug, Clone, Serialize)]
struct SynObject {
    object_id: i64,
    x: i64,
    y: i64,
    w: i64,
    h: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    names: Option<Vec<String>>,
    synsets: Vec<String>,
}

impl SynObject {
    fn label(&self) -> &str {
        self.name
            .as_deref()
            .or_else(|| {
                self.names
                    .as_ref()
                    .and_then(|n| n.first().map(String::as_str))
            })
            .unwrap_or("")
    }
}

#[derive(Debug, Serialize)]
struct SynRelationship {
    relationship_id: i64,
    predicate: String,
    synsets: Vec<String>,
    subject: SynObject,
    object: SynObject,
}

#[derive(Debug, Serialize)]
struct SynRelationshipsOfImage<'a> {
    relationships: &'a [SynRelationship],
    image_id: i64,
}

#[derive(Debug, Serialize)]
struct SynImageData {
    width: i64,
    height: i64,
    image_id: i64,
    coco_id: Option<i64>,
    flickr_id: Option<i64>,
    url: String,
}

#[derive(Debug, Serialize)]
struct SynObjectsOfImage<'a> {
    image_id: i64,
    image_url: &'a str,
    objects: Vec<ObjectEntry<'a>>,
}

#[derive(Debug, Serialize)]
struct ObjectEntry<'a> {
    #[serde(flatten)]
    object: &'a SynObject,
    merged_object_ids: [i64; 0],
}

#[derive(Debug, Serialize)]
struct SynAttributesOfImage<'a> {
    image_id: i64,
    attributes: Vec<AttributeEntry<'a>>,
}

#[derive(Debug, Serialize)]
struct AttributeEntry<'a> {
    #[serde(flatten)]
    object: &'a SynObject,
    attributes: Vec<&'static str>,
}

/// One synthetic image with its annotations.
#[derive(Debug)]
struct SynImage {
    data: SynImageData,
    objects: Vec<SynObject>,
    attributes: Vec<(usize, Vec<&'static str>)>,
    relationships: Vec<SynRelationship>,
    /// The SIMAT triplets planted in it, in planting order.
    planted: Vec<Planted>,
}

/// A planted SIMAT triplet: its subject and object (indices into the image's objects), its
/// relation's canonical name and the surface form annotated.
#[derive(Debug)]
struct Planted {
    subject: usize,
    object: usize,
    relation: String,
    form: String,
}

/// Sampling tables built once.
struct Vocab {
    name_cdf: Vec<f64>,
    pred_cdf: Vec<f64>,
    plant_obj_cdf: Vec<f64>,
    subject_cdf: Vec<f64>,
    relation_cdf: Vec<f64>,
    subjects: Vec<String>,
    relations: Vec<Vec<String>>,
}

impl Vocab {
    fn new(v: &Vocabulary) -> Self {
        let subjects: Vec<(String, ())> = v.subjects.iter().map(|s| (s.clone(), ())).collect();
        let relations: Vec<(String, Vec<String>)> = v
            .relations
            .iter()
            .map(|(rel, forms)| (rel.clone(), forms.clone()))
            .collect();
        let subjects = by_frequency(&subjects, SUBJECT_FREQUENCY);
        let relations = by_frequency(&relations, RELATION_FREQUENCY);
        Vocab {
            name_cdf: zipf_cdf(NAMES.len()),
            pred_cdf: zipf_cdf(PREDICATES.len()),
            plant_obj_cdf: zipf_cdf(PLANT_OBJECTS.len()),
            subject_cdf: zipf_cdf(subjects.len()),
            relation_cdf: zipf_cdf(relations.len()),
            subjects: subjects.into_iter().map(|(s, _)| s).collect(),
            relations: relations
                .into_iter()
                .map(|(rel, forms)| {
                    let mut all = vec![rel];
                    all.extend(forms);
                    all
                })
                .collect(),
        }
    }
}

fn noisy(pred: &str, rng: &mut ChaCha8Rng) -> String {
    match rng.random_range(0..20) {
        0 | 1 => pred.to_uppercase(),
        2 => pred.replacen(' ', "  ", 1),
        3 => format!(" {pred}"),
        4 => format!("{pred} "),
        _ => pred.to_string(),
    }
}

fn make_object(id: i64, name: &str, w: i64, h: i64, rng: &mut ChaCha8Rng) -> SynObject {
    // Mostly mid-sized boxes, a few tiny ones (too small to become regions).
    let (bw, bh) = if rng.random_bool(0.04) {
        (rng.random_range(2..12), rng.random_range(2..12))
    } else {
        (
            rng.random_range(16..=(w / 2).max(17)),
            rng.random_range(16..=(h / 2).max(17)),
        )
    };
    let bw = bw.min(w);
    let bh = bh.min(h);
    let x = rng.random_range(0..=(w - bw));
    let y = rng.random_range(0..=(h - bh));
    object_at(id, name, [x, y, bw, bh], rng)
}

fn object_at(id: i64, name: &str, b: world::Bbox, rng: &mut ChaCha8Rng) -> SynObject {
    let [x, y, bw, bh] = b;
    let synsets = if rng.random_bool(0.7) {
        vec![format!("{}.n.01", name.replace(' ', "_"))]
    } else {
        vec![]
    };
    let (name, names) = if rng.random_bool(0.85) {
        (Some(name.to_string()), None)
    } else {
        (None, Some(vec![name.to_string()]))
    };
    SynObject {
        object_id: id,
        x,
        y,
        w: bw,
        h: bh,
        name,
        names,
        synsets,
    }
}

/// Swap `name`/`names` so that the same object is spelled differently in different files.
fn respell(o: &SynObject, rng: &mut ChaCha8Rng) -> SynObject {
    let mut o = o.clone();
    let label = o.label().to_string();
    if rng.random_bool(0.15) {
        o.name = None;
        o.names = Some(vec![label]);
    } else {
        o.name = Some(label);
        o.names = None;
    }
    o
}

fn generate_image(index: u64, config: &SynthConfig, vocab: &Vocab) -> SynImage {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(index);
    let image_id = index as i64 + 1;
    let long = if rng.random_bool(0.6) { 500 } else { 800 };
    let short = rng.random_range(long * 5 / 8..=long);
    let (width, height) = if rng.random_bool(0.7) {
        (long, short)
    } else {
        (short, long)
    };
    let id_base = 1_000_000 + (index as i64) * 256;
    let n_objects = rng.random_range(12..=58usize);
    let mut objects: Vec<SynObject> = (0..n_objects)
        .map(|j| {
            let name = NAMES[sample(&vocab.name_cdf, &mut rng)];
            make_object(id_base + j as i64, name, width, height, &mut rng)
        })
        .collect();
    let n_rels = rng.random_range(8..=34usize);
    let mut planted = Vec::new();
    let mut relationships = Vec::with_capacity(n_rels + 4);
    let mut rel_id = (index as i64) * 64 + 1;
    for _ in 0..n_rels {
        let (s, o, predicate) = if rng.random_bool(config.plant_rate) {
            let subj = &vocab.subjects[sample(&vocab.subject_cdf, &mut rng)];
            let obj = PLANT_OBJECTS[sample(&vocab.plant_obj_cdf, &mut rng)];
            let forms = &vocab.relations[sample(&vocab.relation_cdf, &mut rng)];
            let form = forms[rng.random_range(0..forms.len())].clone();
            // The pair is arranged as the relation is drawn, so that the region shows it.
            let look = world::relation_look(&forms[0]);
            let (obj_box, subj_box) = world::place_pair(look.placement, width, height, &mut rng);
            let si = objects.len();
            let next = id_base + si as i64;
            objects.push(object_at(next, subj, subj_box, &mut rng));
            objects.push(object_at(next + 1, obj, obj_box, &mut rng));
            planted.push(Planted {
                subject: si,
                object: si + 1,
                relation: forms[0].clone(),
                form: form.clone(),
            });
            (si, si + 1, form)
        } else {
            let s = rng.random_range(0..objects.len());
            let mut o = rng.random_range(0..objects.len());
            if o == s {
                o = (o + 1) % objects.len();
            }
            (
                s,
                o,
                PREDICATES[sample(&vocab.pred_cdf, &mut rng)].to_string(),
            )
        };
        let copies = if rng.random_bool(0.03) { 2 } else { 1 };
        for _ in 0..copies {
            relationships.push(SynRelationship {
                relationship_id: rel_id,
                predicate: noisy(&predicate, &mut rng),
                synsets: vec![],
                subject: respell(&objects[s], &mut rng),
                object: respell(&objects[o], &mut rng),
            });
            rel_id += 1;
        }
    }
    let mut attributes = Vec::new();
    for j in 0..objects.len() {
        if rng.random_bool(0.3) {
            let n = rng.random_range(1..=2);
            let attrs = (0..n)
                .map(|_| ATTRIBUTES[rng.random_range(0..ATTRIBUTES.len())])
                .collect();
            attributes.push((j, attrs));
        }
    }
    let coco_id = rng.random_bool(0.4).then(|| rng.random_range(1..600_000));
    let flickr_id = rng
        .random_bool(0.3)
        .then(|| rng.random_range(1..900_000_000));
    SynImage {
        data: SynImageData {
            width,
            height,
            image_id,
            coco_id,
            flickr_id,
            url: format!("https://example.invalid/VG_100K/{image_id}.jpg"),
        },
        objects,
        attributes,
        relationships,
        planted,
    }
}

/// The four files' bytes for a block of images.
#[derive(Default)]
struct Block {
    image_data: Vec<u8>,
    /// `captions.json`'s `images` entries and `annotations` entries (with `render`).
    caption_images: Vec<u8>,
    caption_annotations: Vec<u8>,
    relationships: Vec<u8>,
    objects: Vec<u8>,
    attributes: Vec<u8>,
    n_relationships: u64,
    n_objects: u64,
}

fn sep(buf: &mut Vec<u8>, first: bool) {
    if !first {
        buf.extend_from_slice(b", ");
    }
}

fn encode_block(images: &[SynImage], first_block: bool, config: &SynthConfig) -> Block {
    let mut b = Block::default();
    for (k, img) in images.iter().enumerate() {
        let first = first_block && k == 0;
        if config.render {
            sep(&mut b.caption_images, first);
            serde_json::to_writer(
                &mut b.caption_images,
                &serde_json::json!({
                    "id": img.data.image_id,
                    "file_name": format!("{}.jpg", img.data.image_id),
                    "width": img.data.width,
                    "height": img.data.height,
                }),
            )
            .expect("serialises");
            for (c, caption) in captions_of(img, config.seed).iter().enumerate() {
                sep(&mut b.caption_annotations, first && c == 0);
                serde_json::to_writer(
                    &mut b.caption_annotations,
                    &serde_json::json!({
                        "id": img.data.image_id * 8 + c as i64,
                        "image_id": img.data.image_id,
                        "caption": caption,
                    }),
                )
                .expect("serialises");
            }
        }
        sep(&mut b.image_data, first);
        serde_json::to_writer(&mut b.image_data, &img.data).expect("serialises");
        sep(&mut b.relationships, first);
        serde_json::to_writer(
            &mut b.relationships,
            &SynRelationshipsOfImage {
                relationships: &img.relationships,
                image_id: img.data.image_id,
            },
        )
        .expect("serialises");
        sep(&mut b.objects, first);
        serde_json::to_writer(
            &mut b.objects,
            &SynObjectsOfImage {
                image_id: img.data.image_id,
                image_url: &img.data.url,
                objects: img
                    .objects
                    .iter()
                    .map(|o| ObjectEntry {
                        object: o,
                        merged_object_ids: [],
                    })
                    .collect(),
            },
        )
        .expect("serialises");
        sep(&mut b.attributes, first);
        serde_json::to_writer(
            &mut b.attributes,
            &SynAttributesOfImage {
                image_id: img.data.image_id,
                attributes: img
                    .attributes
                    .iter()
                    .map(|(j, a)| AttributeEntry {
                        object: &img.objects[*j],
                        attributes: a.clone(),
                    })
                    .collect(),
            },
        )
        .expect("serialises");
        b.n_relationships += img.relationships.len() as u64;
        b.n_objects += img.objects.len() as u64;
    }
    b
}

/// What `synth` produced.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SynthSummary {
    /// Images written.
    pub images: u64,
    /// Objects written.
    pub objects: u64,
    /// Relationships written.
    pub relationships: u64,
    /// Bytes of `relationships.json`.
    pub relationships_bytes: u64,
    /// JPEGs rendered.
    pub rendered: u64,
}

/// The world's captions in COCO's format (`images` with `id` and `file_name`, `annotations` with
/// `image_id` and `caption`), beside the VG files, with `render`.
pub const CAPTIONS_FILE: &str = "captions.json";

/// The article of a noun in a caption: none for plurals and mass nouns, else a or an.
fn article(noun: &str) -> &'static str {
    match noun {
        "people" | "grass" | "water" | "snow" | "sand" | "dirt" | "hay" => "",
        n => crate::vocabulary::article_for(n),
    }
}

fn with_article(noun: &str) -> String {
    match article(noun) {
        "" => noun.to_string(),
        a => format!("{a} {noun}"),
    }
}

/// Three to five captions of an image, as COCO annotators would write them for this world: one
/// per planted triplet (up to five, in a few phrasings), then the clutter it shows. A function of
/// the seed and the image alone.
fn captions_of(img: &SynImage, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC0C0_CA7105);
    rng.set_stream(img.data.image_id as u64);
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in &img.planted {
        let (s, o) = (
            img.objects[p.subject].label(),
            img.objects[p.object].label(),
        );
        if out.len() == 5 || !seen.insert((s, p.relation.as_str(), o)) {
            continue;
        }
        let form = p.form.trim();
        let obj = if form.ends_with(" a") {
            o.to_string()
        } else {
            format!("the {o}")
        };
        let phrase = format!("{} {form} {obj}", with_article(s));
        out.push(match rng.random_range(0..4) {
            0 => phrase,
            1 => format!("there is {phrase}"),
            2 => format!("a picture of {phrase}"),
            _ => format!("{phrase} in the scene"),
        });
    }
    let clutter: Vec<&str> = img
        .objects
        .iter()
        .map(SynObject::label)
        .filter(|l| !l.is_empty())
        .collect();
    while out.len() < 3 && clutter.len() >= 2 {
        let a = clutter[rng.random_range(0..clutter.len())];
        let b = clutter[rng.random_range(0..clutter.len())];
        out.push(format!(
            "a scene with {} and {}",
            with_article(a),
            with_article(b)
        ));
    }
    out
}

/// Images generated per parallel block.
const BLOCK_IMAGES: u64 = 512;

/// Write a synthetic Visual Genome into `out`.
pub fn synthesize(config: &SynthConfig, out: &Path, ui: &crate::ui::Ui) -> Result<SynthSummary> {
    let vocab = Vocab::new(&Vocabulary::default());
    std::fs::create_dir_all(out).map_err(|e| Error::io("failed to create directory", out, e))?;
    let names = [
        "image_data.json",
        "relationships.json",
        "objects.json",
        "attributes.json",
    ];
    let mut files: Vec<AtomicFile> = names
        .iter()
        .map(|n| AtomicFile::create(out.join(n)))
        .collect::<Result<_>>()?;
    let write = |f: &mut AtomicFile, bytes: &[u8]| -> Result<()> {
        let dest = f.dest().to_path_buf();
        f.write_all(bytes)
            .map_err(|e| Error::io("failed to write", dest, e))
    };
    for f in files.iter_mut() {
        write(f, b"[")?;
    }
    if config.render {
        std::fs::create_dir_all(out.join("images"))
            .map_err(|e| Error::io("failed to create directory", out.join("images"), e))?;
    }
    let bar = ui.progress(config.image_count, "images", "synth");
    let mut summary = SynthSummary::default();
    let (mut caption_images, mut caption_annotations) = (Vec::new(), Vec::new());
    let n_blocks = config.image_count.div_ceil(BLOCK_IMAGES);
    // Two blocks in flight per thread keeps both cores busy while the writer drains.
    let window = (rayon::current_num_threads() as u64 * 2).max(2);
    let mut start_block = 0;
    while start_block < n_blocks {
        let end_block = (start_block + window).min(n_blocks);
        let blocks: Vec<Result<Block>> = (start_block..end_block)
            .into_par_iter()
            .map(|bi| {
                let lo = bi * BLOCK_IMAGES;
                let hi = (lo + BLOCK_IMAGES).min(config.image_count);
                let images: Vec<SynImage> = (lo..hi)
                    .map(|i| generate_image(i, config, &vocab))
                    .collect();
                if config.render {
                    for img in &images {
                        render_image(img, &out.join("images"))?;
                    }
                }
                Ok(encode_block(&images, bi == 0, config))
            })
            .collect();
        for block in blocks {
            let block = block?;
            write(&mut files[0], &block.image_data)?;
            write(&mut files[1], &block.relationships)?;
            write(&mut files[2], &block.objects)?;
            write(&mut files[3], &block.attributes)?;
            summary.relationships += block.n_relationships;
            summary.objects += block.n_objects;
            summary.relationships_bytes += block.relationships.len() as u64;
            caption_images.extend_from_slice(&block.caption_images);
            caption_annotations.extend_from_slice(&block.caption_annotations);
        }
        let done = (end_block * BLOCK_IMAGES).min(config.image_count);
        bar.set_position(done);
        start_block = end_block;
    }
    bar.finish_and_clear();
    for f in files.iter_mut() {
        write(f, b"]\n")?;
    }
    for f in files {
        f.commit()?;
    }
    if config.render {
        // COCO's layout: every image, then every caption (held until the images are written;
        // a few hundred bytes per image, and rendering is for small worlds).
        let mut f = AtomicFile::create(out.join(CAPTIONS_FILE))?;
        write(&mut f, b"{\"images\": [")?;
        write(&mut f, &caption_images)?;
        write(&mut f, b"],\n\"annotations\": [")?;
        write(&mut f, &caption_annotations)?;
        write(&mut f, b"]}\n")?;
        f.commit()?;
    }
    summary.images = config.image_count;
    summary.relationships_bytes += 3;
    summary.rendered = if config.render { config.image_count } else { 0 };
    Ok(summary)
}

/// A name drawn as clutter: a frame of the box `x1, y1, x2, y2` with the name inside, in the
/// name's colour.
fn draw_named_box(img: &mut RgbImage, name: &str, b: [i64; 4]) {
    let colour = world::clutter_colour(name);
    draw_box(img, b, colour);
    draw_text(img, name, b[0].max(0) + 3, b[1].max(0) + 3, colour);
}

/// Write `canvas` as a JPEG at `path` (atomically).
fn write_jpeg(canvas: &RgbImage, path: &Path, quality: u8) -> Result<PathBuf> {
    let mut file = AtomicFile::create(path)?;
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(file.writer(), quality);
    canvas
        .write_with_encoder(encoder)
        .map_err(|e| Error::io("failed to encode", path, std::io::Error::other(e)))?;
    file.commit()
}

/// A two-pixel frame of the box `x1, y1, x2, y2` (exclusive ends), cut to the image.
fn draw_box(img: &mut RgbImage, b: [i64; 4], colour: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x1, y1) = (b[0], b[1]);
    let x2 = b[2].min(w) - 1;
    let y2 = b[3].min(h) - 1;
    for t in 0..2 {
        for x in x1..=x2 {
            for y in [y1 + t, y2 - t] {
                if (0..h).contains(&y) && (0..w).contains(&x) {
                    img.put_pixel(x as u32, y as u32, colour);
                }
            }
        }
        for y in y1..=y2 {
            for x in [x1 + t, x2 - t] {
                if (0..h).contains(&y) && (0..w).contains(&x) {
                    img.put_pixel(x as u32, y as u32, colour);
                }
            }
        }
    }
}

fn draw_text(img: &mut RgbImage, text: &str, x0: i64, y0: i64, colour: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for (k, c) in text.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(c) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let x = x0 + (k as i64 * 8 + col) * 2 + dx;
                            let y = y0 + row as i64 * 2 + dy;
                            if (0..w).contains(&x) && (0..h).contains(&y) {
                                img.put_pixel(x as u32, y as u32, colour);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Draw an image: clutter objects as frames with their names, then each planted triplet as its
/// object's icon, its subject's icon placed as the relation says, and the relation's badge
/// (`crate::world`).
fn render_image(img: &SynImage, dir: &Path) -> Result<PathBuf> {
    let (w, h) = (img.data.width as u32, img.data.height as u32);
    let tint = (img.data.image_id % 40) as u8;
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([215 + tint, 220, 225 - tint]));
    let planted: std::collections::HashSet<usize> = img
        .planted
        .iter()
        .flat_map(|p| [p.subject, p.object])
        .collect();
    for (i, o) in img.objects.iter().enumerate() {
        if planted.contains(&i) {
            continue;
        }
        draw_named_box(&mut canvas, o.label(), [o.x, o.y, o.x + o.w, o.y + o.h]);
    }
    for p in &img.planted {
        let bbox = |o: &SynObject| [o.x, o.y, o.w, o.h];
        let (s, o) = (&img.objects[p.subject], &img.objects[p.object]);
        world::draw_icon(&mut canvas, bbox(o), o.label());
        world::draw_icon(&mut canvas, bbox(s), s.label());
        world::draw_badge(&mut canvas, bbox(s), world::relation_look(&p.relation));
    }
    write_jpeg(&canvas, &dir.join(format!("{}.jpg", img.data.image_id)), 90)
}

/// Stand-in images for the official release: one JPEG `<image_id>.jpg` per image of its
/// benchmark regions (the regions of `triplets.csv`), large enough for every box of the image in
/// `retrieval_db.tsv`, each subject and object drawn as a box in a colour of its name with the
/// name written in it. They let the official pipeline run end to end where Visual Genome's
/// images are not at hand; scores on them say nothing about a model. Returns the images written.
pub fn render_stand_ins(release: &Path, out: &Path, ui: &crate::ui::Ui) -> Result<u64> {
    use crate::release::{column, csv_reader, parse_box};
    use std::collections::{BTreeMap, HashSet};
    let tr = release.join("triplets.csv");
    let mut rd = csv_reader(&tr, b',')?;
    let h = rd
        .headers()
        .map_err(|e| Error::data(&tr, e.to_string()))?
        .clone();
    let ci = column(&h, "region_id", &tr)?;
    let mut benchmark: HashSet<i64> = HashSet::new();
    for (row, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| Error::data(&tr, format!("row {}: {e}", row + 1)))?;
        let id = rec[ci]
            .trim()
            .parse()
            .map_err(|_| Error::data(&tr, format!("row {}: region_id {:?}", row + 1, &rec[ci])))?;
        benchmark.insert(id);
    }
    let db = release.join("retrieval_db.tsv");
    let mut rd = csv_reader(&db, b'\t')?;
    let h = rd
        .headers()
        .map_err(|e| Error::data(&db, e.to_string()))?
        .clone();
    let c: Vec<usize> = [
        "region_id",
        "image_id",
        "subj",
        "obj",
        "subj_bbox",
        "obj_bbox",
    ]
    .iter()
    .map(|n| column(&h, n, &db))
    .collect::<Result<_>>()?;
    type Drawn = Vec<(String, [i64; 4])>;
    let mut images: BTreeMap<i64, Drawn> = BTreeMap::new();
    for (row, rec) in rd.records().enumerate() {
        let row = row + 1;
        let rec = rec.map_err(|e| Error::data(&db, format!("row {row}: {e}")))?;
        let (Ok(region), Ok(image)) = (
            rec[c[0]].trim().parse::<i64>(),
            rec[c[1]].trim().parse::<i64>(),
        ) else {
            return Err(Error::data(
                &db,
                format!("row {row}: region_id or image_id is not a number"),
            ));
        };
        if !benchmark.contains(&region) {
            continue;
        }
        let e = images.entry(image).or_default();
        for (word, bbox, name) in [(c[2], c[4], "subj_bbox"), (c[3], c[5], "obj_bbox")] {
            let b = parse_box(&rec[bbox], name, row, &db)?;
            e.push((rec[word].to_string(), b.map(i64::from)));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io("failed to create directory", out, e))?;
    let images: Vec<(i64, Drawn)> = images.into_iter().collect();
    let bar = ui.progress(images.len() as u64, "images", "rendering");
    images
        .par_iter()
        .try_for_each(|(image_id, boxes)| -> Result<()> {
            let w = boxes
                .iter()
                .map(|b| b.1[2])
                .max()
                .unwrap_or(64)
                .clamp(64, 4096)
                + 16;
            let h = boxes
                .iter()
                .map(|b| b.1[3])
                .max()
                .unwrap_or(64)
                .clamp(64, 4096)
                + 16;
            let tint = (image_id % 40) as u8;
            let mut canvas =
                RgbImage::from_pixel(w as u32, h as u32, Rgb([215 + tint, 220, 225 - tint]));
            for (name, b) in boxes {
                draw_named_box(&mut canvas, name, *b);
            }
            write_jpeg(&canvas, &out.join(format!("{image_id}.jpg")), 85)?;
            bar.inc(1);
            Ok(())
        })?;
    bar.finish_and_clear();
    Ok(images.len() as u64)
}

/// The synth stage: a synthetic Visual Genome under `RUN/synth/vg/`.
#[derive(Debug, Clone)]
pub struct Synth {
    /// Its configuration.
    pub config: SynthConfig,
}

impl StageDef for Synth {
    const NAME: &'static str = "synth";
    // 3: planted pairs arranged by relation and drawn as icons; captions.json.
    const VERSION: u32 = 3;
    const ABOUT: &'static str =
        "A synthetic Visual Genome (the four JSON files, and JPEGs with --render) in RUN/synth/vg";
    const PROVIDES: &'static [&'static TableDecl] =
        &[&tables::VG, &tables::VG_IMAGES, &tables::VG_CAPTIONS];
    type Config = SynthConfig;
    fn build(config: SynthConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.plant_rate) {
            return Err(crate::engine::bad::<Self>(
                "plant_rate",
                format!("{} is not between 0 and 1", config.plant_rate),
            ));
        }
        if config.image_count == 0 {
            return Err(crate::engine::bad::<Self>(
                "image_count",
                "must be at least 1",
            ));
        }
        Ok(Synth { config })
    }
    fn provides(&self) -> Vec<&'static TableDecl> {
        if self.config.render {
            Self::PROVIDES.to_vec()
        } else {
            vec![&tables::VG]
        }
    }
    fn needs(&self) -> Vec<Need> {
        vec![]
    }
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let out = ctx.output(&tables::VG)?;
        let s = synthesize(&self.config, &out, ctx.ui)?;
        let mut report = StageReport::default();
        report.count("images", s.images);
        report.count("objects", s.objects);
        report.count("relationships", s.relationships);
        report.count("rendered", s.rendered);
        for (file, rows) in [
            ("image_data.json", s.images),
            ("relationships.json", s.images),
            ("objects.json", s.images),
            ("attributes.json", s.images),
        ] {
            report
                .outputs
                .push((format!("{}/{file}", tables::VG.file), Some(rows)));
        }
        if self.config.render {
            report
                .outputs
                .push((tables::VG_CAPTIONS.file.to_string(), Some(s.images)));
            report.folder(tables::VG_IMAGES.file);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_whatever_the_threads() {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            image_count: 700,
            seed: 3,
            ..Default::default()
        };
        let ui = crate::ui::Ui::quiet();
        synthesize(&config, &dir.path().join("a"), &ui).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| synthesize(&config, &dir.path().join("b"), &ui))
            .unwrap();
        for f in ["image_data.json", "relationships.json", "objects.json"] {
            let a = std::fs::read(dir.path().join("a").join(f)).unwrap();
            let b = std::fs::read(dir.path().join("b").join(f)).unwrap();
            assert!(a == b, "{f} differs between thread counts");
        }
        let other = SynthConfig { seed: 4, ..config };
        synthesize(&other, &dir.path().join("c"), &ui).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join("a/relationships.json")).unwrap(),
            std::fs::read(dir.path().join("c/relationships.json")).unwrap()
        );
    }

    #[test]
    fn a_rendered_world_has_coco_captions_of_its_planted_triplets() {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            image_count: 40,
            seed: 5,
            render: true,
            plant_rate: 0.2,
        };
        synthesize(&config, dir.path(), &crate::ui::Ui::quiet()).unwrap();
        let coco: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CAPTIONS_FILE)).unwrap())
                .unwrap();
        let images = coco["images"].as_array().unwrap();
        assert_eq!(images.len(), 40);
        for im in images {
            let file = dir
                .path()
                .join("images")
                .join(im["file_name"].as_str().unwrap());
            assert!(file.exists(), "{file:?}");
        }
        let vocab = Vocab::new(&Vocabulary::default());
        let mut per_image = std::collections::BTreeMap::<i64, Vec<String>>::new();
        let mut ids = std::collections::HashSet::new();
        for a in coco["annotations"].as_array().unwrap() {
            assert!(
                ids.insert(a["id"].as_i64().unwrap()),
                "duplicate caption id"
            );
            per_image
                .entry(a["image_id"].as_i64().unwrap())
                .or_default()
                .push(a["caption"].as_str().unwrap().to_string());
        }
        assert_eq!(per_image.len(), 40);
        let mut mentioned = 0;
        for i in 0..40u64 {
            let img = generate_image(i, &config, &vocab);
            let caps = &per_image[&img.data.image_id];
            assert!((3..=5).contains(&caps.len()), "{caps:?}");
            // Each of the first planted triplets is worded in one caption: subject, the surface
            // form annotated, object.
            for p in img.planted.iter().take(2) {
                let (s, o) = (
                    img.objects[p.subject].label(),
                    img.objects[p.object].label(),
                );
                assert!(
                    caps.iter()
                        .any(|c| c.contains(s) && c.contains(p.form.trim()) && c.contains(o)),
                    "{s} {} {o} not in {caps:?}",
                    p.form
                );
                mentioned += 1;
            }
        }
        assert!(mentioned > 40, "{mentioned} planted triplets checked");
    }

    #[test]
    fn statistics_look_like_visual_genome() {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            image_count: 400,
            seed: 1,
            ..Default::default()
        };
        let s = synthesize(&config, dir.path(), &crate::ui::Ui::quiet()).unwrap();
        let per_image_rels = s.relationships as f64 / s.images as f64;
        let per_image_objs = s.objects as f64 / s.images as f64;
        assert!((19.0..24.0).contains(&per_image_rels), "{per_image_rels}");
        assert!((32.0..39.0).contains(&per_image_objs), "{per_image_objs}");
        let bytes_per_rel = s.relationships_bytes as f64 / s.relationships as f64;
        // VG: ~0.7 GB for 2.3 M relationships, about 300 bytes each.
        assert!((220.0..380.0).contains(&bytes_per_rel), "{bytes_per_rel}");
        let text: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("relationships.json")).unwrap())
                .unwrap();
        assert_eq!(text.as_array().unwrap().len(), 400);
    }
}
