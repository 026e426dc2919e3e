//! The tables stages exchange: each one's name, file, schema and what it holds — the contracts
//! between stages. A stage declares the tables it provides and needs by these declarations; the
//! planner (`engine::plan`) connects them.

pub mod adapt;
pub mod crops;
pub mod dataset;
pub mod oracle;
pub mod regions;
pub mod retrievals;
pub mod stores;
pub mod vg;

use arrow::datatypes::{DataType, Field, SchemaRef};

/// How a table is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A Parquet file.
    Parquet,
    /// An Arrow IPC file (an embedding store).
    Arrow,
    /// A JSON document.
    Json,
    /// An HTML document.
    Html,
    /// A folder of files.
    Dir,
}

/// A table stages exchange: its name (unique), its file in the providing stage's directory, and
/// its schema.
#[derive(Debug)]
pub struct TableDecl {
    /// The table's name, unique across simat.
    pub name: &'static str,
    /// Its path relative to the providing stage's directory.
    pub file: &'static str,
    /// How it is stored.
    pub kind: TableKind,
    /// Its Arrow schema, for tables (documented under `schemas/`).
    pub schema: Option<fn() -> SchemaRef>,
    /// What it holds, in a few words.
    pub about: &'static str,
}

pub(crate) fn list_field(name: &str) -> Field {
    Field::new_list(name, Field::new_list_field(DataType::Utf8, true), false)
}

pub(crate) fn xywh_fields(prefix: &str) -> Vec<Field> {
    ["x", "y", "w", "h"]
        .iter()
        .map(|c| Field::new(format!("{prefix}{c}"), DataType::Int32, false))
        .collect()
}

pub(crate) fn corner_fields(prefix: &str) -> Vec<Field> {
    ["x1", "y1", "x2", "y2"]
        .iter()
        .map(|c| Field::new(format!("{prefix}{c}"), DataType::Int32, false))
        .collect()
}

macro_rules! table {
    ($id:ident, $name:literal, $file:literal, $kind:ident, $schema:expr, $about:literal) => {
        #[doc = $about]
        pub static $id: TableDecl = TableDecl {
            name: $name,
            file: $file,
            kind: TableKind::$kind,
            schema: $schema,
            about: $about,
        };
    };
}

table!(
    VG,
    "vg",
    "vg",
    Dir,
    None,
    "a Visual Genome folder: image_data.json, relationships.json, objects.json, attributes.json"
);
table!(
    VG_IMAGES,
    "vg_images",
    "vg/images",
    Dir,
    None,
    "a folder of images `<image_id>.jpg`"
);
table!(
    VG_CAPTIONS,
    "vg_captions",
    "vg/captions.json",
    Json,
    None,
    "captions of a rendered world in COCO's format: images (id, file_name), annotations (image_id, caption)"
);
table!(
    IMAGES,
    "images",
    "images.parquet",
    Parquet,
    Some(vg::images_schema),
    "Visual Genome's images: id, size, URL"
);
table!(
    RELATIONSHIPS,
    "relationships",
    "relationships.parquet",
    Parquet,
    Some(vg::relationships_schema),
    "Visual Genome's relationships, subject and object flattened"
);
table!(
    OBJECTS,
    "objects",
    "objects.parquet",
    Parquet,
    Some(vg::objects_schema),
    "Visual Genome's objects"
);
table!(
    ATTRIBUTES,
    "attributes",
    "attributes.parquet",
    Parquet,
    Some(vg::attributes_schema),
    "Visual Genome's attributes"
);
table!(
    REGIONS,
    "regions",
    "regions.parquet",
    Parquet,
    Some(regions::regions_schema),
    "candidate regions: subject–object pairs with their triplet and boxes"
);
table!(
    TRIPLETS,
    "triplets",
    "triplets.parquet",
    Parquet,
    Some(regions::triplets_schema),
    "the triplets with their captions"
);
table!(
    CROPS,
    "crops",
    "crops.parquet",
    Parquet,
    Some(crops::crops_schema),
    "a PNG per region, with its status"
);
table!(
    CROP_FILES,
    "crop_files",
    "crops",
    Dir,
    None,
    "the crops' PNG files, `<region_id>.png`"
);
table!(
    ORACLE_REGIONS,
    "oracle_region_embeddings",
    "region_embeddings.arrow",
    Arrow,
    Some(stores::oracle_regions_schema),
    "an oracle model's raw embeddings of the cropped regions"
);
table!(
    ORACLE_CAPTIONS,
    "oracle_caption_embeddings",
    "caption_embeddings.arrow",
    Arrow,
    Some(stores::oracle_captions_schema),
    "an oracle model's raw embeddings of the captions"
);
table!(
    REGION_SCORES,
    "region_scores",
    "region_scores.parquet",
    Parquet,
    Some(oracle::region_scores_schema),
    "each region's similarity with its own caption, by the oracle model"
);
table!(
    ORACLE_MODEL,
    "oracle_model",
    "model.json",
    Json,
    None,
    "the oracle model's identity"
);
table!(
    DATASET,
    "dataset",
    "dataset.parquet",
    Parquet,
    Some(dataset::dataset_schema),
    "the benchmark's regions, numbered by dataset_id"
);
table!(
    QUERIES,
    "queries",
    "queries.parquet",
    Parquet,
    Some(dataset::queries_schema),
    "transformation queries"
);
table!(
    IMAGE_EMBEDDINGS,
    "image_embeddings",
    "image_embeddings.arrow",
    Arrow,
    Some(stores::image_embeddings_schema),
    "raw image embeddings of the dataset, by dataset_id"
);
table!(
    WORD_EMBEDDINGS,
    "word_embeddings",
    "word_embeddings.arrow",
    Arrow,
    Some(stores::word_embeddings_schema),
    "raw word embeddings"
);
table!(
    CAPTION_EMBEDDINGS,
    "caption_embeddings",
    "caption_embeddings.arrow",
    Arrow,
    Some(stores::caption_embeddings_schema),
    "raw caption embeddings, by triplet_id"
);
table!(
    EMBEDDING_MODEL,
    "embedding_model",
    "model.json",
    Json,
    None,
    "where the embeddings came from"
);
table!(
    PAIR_MODEL,
    "pair_model",
    "model.json",
    Json,
    None,
    "the model that embedded the training pairs"
);
table!(
    RETRIEVALS,
    "retrievals",
    "retrievals.parquet",
    Parquet,
    Some(retrievals::retrievals_schema),
    "the top k images per query and λ; rows follow the queries table (per query: head set, λ, rank)"
);
table!(
    RETRIEVAL_PROVENANCE,
    "retrieval_provenance",
    "provenance.json",
    Json,
    None,
    "the queries, embeddings and heads of the retrievals"
);
table!(
    SCORES,
    "scores",
    "scores.parquet",
    Parquet,
    Some(retrievals::scores_schema),
    "the SIMAT score per λ × split × field"
);
table!(
    SCORES_JSON,
    "scores_json",
    "scores.json",
    Json,
    None,
    "the scores with their provenance"
);
table!(
    RESULTS,
    "results",
    "results.parquet",
    Parquet,
    Some(retrievals::results_schema),
    "one row per query, head set and λ (rows follow the queries table): the retrieved image, the oracle's value, success"
);
table!(
    METRICS,
    "metrics",
    "metrics.parquet",
    Parquet,
    Some(retrievals::metrics_schema),
    "the ranked metrics per λ × split × field: SIMAT@k, Recall@k, MRR@k and mAP@k (CIRCO's)"
);
table!(
    BREAKDOWN,
    "breakdown",
    "breakdown.parquet",
    Parquet,
    Some(retrievals::breakdown_schema),
    "the score per source word, target word, relation, subject, object and triplet"
);
table!(
    REPORT,
    "report",
    "report.html",
    Html,
    None,
    "the run's scores as one self-contained HTML page: plots, breakdowns, contact sheets"
);
table!(
    PAIR_IMAGES,
    "pair_images",
    "images.arrow",
    Arrow,
    Some(stores::pair_images_schema),
    "raw image embeddings keyed by image_id, for training heads"
);
table!(
    PAIR_CAPTIONS,
    "pair_captions",
    "captions.arrow",
    Arrow,
    Some(stores::pair_captions_schema),
    "raw caption embeddings keyed by image_id (several per image)"
);
table!(
    HEADS,
    "heads",
    "heads",
    Dir,
    None,
    "trained heads per τ: head_tau{τ}_{img,txt}_head_{weight,bias}.npy and .safetensors"
);
table!(
    CURVE,
    "curve",
    "curve.parquet",
    Parquet,
    Some(adapt::curve_schema),
    "the training curve of the heads"
);

/// Every table, for the registry's checks.
pub static ALL_TABLES: &[&TableDecl] = &[
    &VG,
    &VG_IMAGES,
    &VG_CAPTIONS,
    &IMAGES,
    &RELATIONSHIPS,
    &OBJECTS,
    &ATTRIBUTES,
    &REGIONS,
    &TRIPLETS,
    &CROPS,
    &CROP_FILES,
    &ORACLE_REGIONS,
    &ORACLE_CAPTIONS,
    &REGION_SCORES,
    &ORACLE_MODEL,
    &DATASET,
    &QUERIES,
    &IMAGE_EMBEDDINGS,
    &WORD_EMBEDDINGS,
    &CAPTION_EMBEDDINGS,
    &EMBEDDING_MODEL,
    &RETRIEVALS,
    &RETRIEVAL_PROVENANCE,
    &SCORES,
    &SCORES_JSON,
    &RESULTS,
    &BREAKDOWN,
    &METRICS,
    &REPORT,
    &PAIR_IMAGES,
    &PAIR_CAPTIONS,
    &PAIR_MODEL,
    &HEADS,
    &CURVE,
];
