//! End-to-end tests of the `simat` binary: one module per area.

mod util;

mod adapt;

mod crops;
mod embed;
mod engine;
mod ingest;
mod model;
mod official;
mod schemas;
mod simat;
mod triplets;
