//! # simat
//!
//! A staged, resumable batch engine for **multimodal embedding arithmetic**: it regenerates the
//! SIMAT benchmark (Couairon et al., 2022) from raw Visual Genome annotations and leaves every
//! intermediate result as a Parquet file that an analyst can open.
//!
//! The crate is organised as the pipeline is:
//!
//! - [`run`]: the run engine (stages, fingerprints, manifest, atomic outputs);
//! - [`io`]: Parquet/Arrow I/O and the streaming JSON splitter;
//! - [`synth`], [`ingest`], [`triplets`], [`crops`], [`oracle`], [`select`], [`import`],
//!   [`embed`], [`queries`], [`retrieve`], [`score`]: one module per stage;
//! - [`model`]: ONNX Runtime, CLIP model folders, preprocessing and tokenizer; [`store`]: the
//!   memory-mapped embedding stores; [`linalg`]: the blocked GEMM, top-k and λ sweep;
//! - [`pipeline`]: pipeline TOML files; [`schemas`]: the documented output schemas.
//!
//! ```no_run
//! use simat::{pipeline::Pipeline, run::{Engine, RunOptions}, ui::Ui};
//!
//! let pipeline = Pipeline::load("pipelines/demo.toml".as_ref())?;
//! let ui = Ui::quiet();
//! let engine = Engine::new(&pipeline.run_dir, &ui)?;
//! let stages = pipeline.stages();
//! let refs: Vec<&dyn simat::engine::Stage> = stages.iter().map(|s| s.as_ref()).collect();
//! let outcomes = engine.run(&refs, &RunOptions::default())?;
//! for o in outcomes {
//!     println!("{}: {:?}", o.stage, o.ran_because);
//! }
//! # Ok::<(), simat::error::Error>(())
//! ```
#![deny(missing_docs)]

pub mod cli;
pub mod engine;
pub mod error;
pub mod io;
pub mod linalg;
pub mod model;
pub mod pipeline;
pub mod schemas;
pub mod stages;
pub mod tables;
pub mod ui;

/// simat's version, recorded in manifests and fingerprints.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");
