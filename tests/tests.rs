//! End-to-end tests of the `simat` binary: one module per area.

mod util;

mod adapt;
mod browser;
mod compare;

mod crops;
mod embed;
mod engine;
mod fuzz_regressions;
mod ingest;
mod knn;
mod layers;
mod leaderboard;
mod model;
mod official;
mod query;
mod report;
mod retrieve;
mod schemas;
mod score;
mod simat;
mod slurm;
mod sweep;
mod triplets;
mod world;
