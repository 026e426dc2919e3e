//! The stages, one file each.

pub mod crops;
pub mod embed;
pub mod import;
pub mod import_embeddings;
pub mod ingest;
pub mod oracle;
pub mod queries;
pub mod retrieve;
pub mod score;
pub mod select;
pub mod synth;
pub mod triplets;
