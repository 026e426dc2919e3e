//! # simat
//!
//! A staged, resumable batch engine for **multimodal embedding arithmetic**: it regenerates the
//! SIMAT benchmark (Couairon et al., 2022) from raw Visual Genome annotations and leaves every
//! intermediate result as a Parquet file that an analyst can open.
//!
//! The crate is layered; each layer uses only those before it:
//!
//! - [`error`], [`ui`], [`config`]: typed errors, terminal manners, config defaults and paths;
//! - [`io`] (Parquet, Arrow IPC stores, `.npy`, PyTorch files, atomic files, chunks) and
//!   [`linalg`] (the blocked GEMM, top-k, λ sweep, linear heads);
//! - [`model`] (ONNX Runtime, CLIP folders, preprocessing, tokenizer, heads, the chunked runner)
//!   and [`tables`] (what stages exchange: names, files, schemas, readers);
//! - the domain: [`vocabulary`] (SIMAT's words and captions), [`release`] (the release's CSV
//!   readers), [`world`] (the synthetic world), [`report`] (the HTML report's parts) and
//!   [`oracle`] (what judges whether an image shows a caption, for `select` and `score`);
//! - [`engine`]: the stage contract and registry, the planner, fingerprints, the manifest and
//!   the check of a stage's outputs against its declarations;
//! - [`stages`]: one module per stage, and [`stages::ALL`], the one list of them;
//! - [`pipeline`] (pipeline TOML files), [`query`] (SQL over a run's tables), [`schemas`]
//!   (the documented output schemas) and [`slurm`] (the Slurm executor);
//! - [`cli`]: the command line.
//!
//! ```no_run
//! use simat::{engine::{Engine, RunOptions}, pipeline::Pipeline, ui::Ui};
//!
//! let pipeline = Pipeline::load("pipelines/demo.toml".as_ref())?;
//! let ui = Ui::quiet();
//! let engine = Engine::new(&pipeline.run_dir, &ui)?.with_catalogue(simat::stages::providers_of);
//! let outcomes = engine.run(&pipeline.stages(), &RunOptions::default())?;
//! for o in outcomes {
//!     println!("{}: {:?}", o.stage, o.ran_because);
//! }
//! # Ok::<(), simat::error::Error>(())
//! ```
#![deny(missing_docs)]

pub mod bootstrap;
pub mod cli;
pub mod compare;
pub mod config;
pub mod engine;
pub mod error;
pub mod io;
pub mod leaderboard;
pub mod linalg;
pub mod metrics;
pub mod model;
pub mod oracle;
pub mod pipeline;
pub mod query;
pub mod release;
pub mod report;
pub mod schemas;
pub mod slurm;
pub mod stages;
pub mod sweep;
pub mod tables;
pub mod ui;
pub mod vocabulary;
pub mod world;

/// simat's version, recorded in manifests and fingerprints.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");
