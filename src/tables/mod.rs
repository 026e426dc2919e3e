//! The tables stages exchange: their files, schemas and typed readers.

pub mod dataset;
