//! Typed errors of the simat library.
//!
//! Every variant that concerns a file names it, and where the format allows, the place inside it
//! (a JSON byte offset, a Parquet row group, a row number or an id). The CLI adds context at the
//! edge and prints the chain once.

use std::path::{Path, PathBuf};

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside simat.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file or directory.
    #[error("{op} `{}`: {source}", path.display())]
    Io {
        /// What we were doing ("failed to read", "failed to create", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Malformed JSON, with the byte offset in the file where parsing failed.
    #[error("`{}`: invalid JSON at byte {byte_offset}: {message}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// Byte offset from the start of the file.
        byte_offset: u64,
        /// What was found and what was expected.
        message: String,
    },

    /// A Parquet or Arrow failure on a named file.
    #[error("`{}`: {message}", path.display())]
    Columnar {
        /// The Parquet or Arrow IPC file.
        path: PathBuf,
        /// What failed.
        message: String,
    },

    /// An Arrow failure on a named file, with Arrow's error kept.
    #[error("`{}`: {source}", path.display())]
    Arrow {
        /// The Arrow IPC or Parquet file.
        path: PathBuf,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A Parquet failure on a named file, with Parquet's error kept.
    #[error("`{}`: {source}", path.display())]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// Parquet's error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// A configuration file (pipeline or vocabulary) that cannot be used.
    #[error("`{}`: {message}", path.display())]
    Config {
        /// The TOML file.
        path: PathBuf,
        /// What is wrong and, where possible, how to fix it.
        message: String,
    },

    /// An input table that is structurally valid but semantically wrong.
    #[error("`{}`: {message}", path.display())]
    Data {
        /// The offending file.
        path: PathBuf,
        /// What is wrong, naming the row or id.
        message: String,
    },

    /// A setting that cannot be used: names the pipeline key and the flag.
    #[error("`[{stage}] {key}` ({}): {message}", flag_of(.key))]
    BadValue {
        /// The stage (its pipeline section and subcommand).
        stage: String,
        /// The key (the flag is the same with dashes).
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },

    /// Several bad values of one stage's config, reported together.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    BadValues(Vec<Error>),

    /// A table a stage needs has no provider, or two.
    #[error("stage `{stage}`: {message}")]
    Upstream {
        /// The stage that needs it.
        stage: String,
        /// Which table, and how to provide or choose it.
        message: String,
    },

    /// An input file or folder a stage's config names is not there.
    #[error("stage `{stage}`: {what} `{}` not found{hint}", path.display())]
    InputMissing {
        /// The stage.
        stage: String,
        /// What the file is.
        what: String,
        /// The path as given.
        path: PathBuf,
        /// How to fix it (starts with `: ` when present).
        hint: String,
    },

    /// Another process runs stages in the run directory.
    #[error("`{}` is in use by {holder}; wait for it to finish, or pass --wait to wait here", run_dir.display())]
    Locked {
        /// The run directory.
        run_dir: PathBuf,
        /// Who holds it: PID, command line and start time, from the lock file.
        holder: String,
    },

    /// A stage cannot run because something it needs is not there.
    #[error("stage `{stage}`: {message}")]
    Stage {
        /// The stage name.
        stage: String,
        /// What is missing and which command produces it.
        message: String,
    },

    /// The ONNX Runtime library is missing or does not load.
    #[error("{0}")]
    Runtime(String),

    /// ONNX Runtime failed on a model.
    #[error("model `{}`: {message}", model.display())]
    Onnx {
        /// The model file.
        model: PathBuf,
        /// ONNX Runtime's message.
        message: String,
    },

    /// A SQL query over runs that cannot be answered: the reason, and what exists.
    #[error("{0}")]
    Query(String),

    /// What was asked for cannot run on this CPU or these data (e.g. bf16 scoring without bf16
    /// units): the reason and the alternative.
    #[error("{0}")]
    Unsupported(String),

    /// Slurm refused, or a job of a run submitted to it failed: what, and where its log is.
    #[error("slurm: {0}")]
    Slurm(String),

    /// A bug in simat.
    #[error(
        "internal error: {0} (this is a bug in simat; please report it with the command you ran)"
    )]
    Internal(String),
}

/// `chunk_images` → `--chunk-images`.
fn flag_of(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An [`Error::Columnar`] for `path`.
    pub fn columnar(path: impl AsRef<Path>, message: impl std::fmt::Display) -> Self {
        Error::Columnar {
            path: path.as_ref().to_path_buf(),
            message: message.to_string(),
        }
    }

    /// An [`Error::Config`] for `path`.
    pub fn config(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// An [`Error::Data`] for `path`.
    pub fn data(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// An [`Error::InputMissing`].
    pub fn input_missing(stage: &str, what: &str, path: &Path, hint: &str) -> Self {
        Error::InputMissing {
            stage: stage.to_string(),
            what: what.to_string(),
            path: path.to_path_buf(),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!(": {hint}")
            },
        }
    }

    /// An [`Error::Stage`].
    pub fn stage(stage: &str, message: impl Into<String>) -> Self {
        Error::Stage {
            stage: stage.to_string(),
            message: message.into(),
        }
    }
}

/// An Arrow or Parquet error, given the file it concerns.
pub trait WithPath {
    /// The error as an [`Error`] naming `path`.
    fn with_path(self, path: impl AsRef<Path>) -> Error;
}

impl WithPath for arrow::error::ArrowError {
    fn with_path(self, path: impl AsRef<Path>) -> Error {
        Error::Arrow {
            path: path.as_ref().to_path_buf(),
            source: self,
        }
    }
}

impl WithPath for parquet::errors::ParquetError {
    fn with_path(self, path: impl AsRef<Path>) -> Error {
        Error::Parquet {
            path: path.as_ref().to_path_buf(),
            source: self,
        }
    }
}
