//! The model runtime: ONNX Runtime through `ort`, loaded at run time from a shared library.
//!
//! simat does not link ONNX Runtime: it loads `libonnxruntime.so` when a model is first used,
//! from `ORT_DYLIB_PATH` when set, else from a `.onnxruntime/` folder next to the executable, in
//! one of its ancestors (a cargo build), in the working directory, or in the source tree it was
//! built from. `scripts/setup_onnxruntime.sh` puts PyPI's `onnxruntime` wheel's library there.
//! When none is found, the error says so in one sentence, with both ways to fix it.

pub mod clip;
pub mod heads;
pub mod preprocess;
pub mod resample;
pub mod runner;
pub mod text;
pub mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{Error, Result};

/// The environment variable naming the ONNX Runtime library.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

const LIB_NAME: &str = "libonnxruntime.so";

fn not_found(detail: &str) -> Error {
    Error::Runtime(format!(
        "ONNX Runtime was not found ({detail}): run `scripts/setup_onnxruntime.sh` to fetch it from PyPI into .onnxruntime/, or set {ORT_DYLIB_PATH} to a libonnxruntime.so"
    ))
}

/// Where the ONNX Runtime library is.
pub fn library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(ORT_DYLIB_PATH) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(not_found(&format!(
                "{ORT_DYLIB_PATH} names `{}`, which does not exist",
                p.display()
            )))
        };
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|d| d.join(".onnxruntime")));
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join(".onnxruntime"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".onnxruntime"));
    candidates
        .into_iter()
        .map(|d| d.join(LIB_NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            not_found(&format!(
                "no .onnxruntime/{LIB_NAME} beside simat, above it, or in the working directory"
            ))
        })
}

static ENVIRONMENT: OnceLock<std::result::Result<(Environment, PathBuf), String>> = OnceLock::new();

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<(&'static Environment, &'static Path)> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = library_path().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "ONNX Runtime at `{}` could not be loaded: {e}",
                path.display()
            )
        })?;
        let env = builder
            .with_name("simat")
            .build()
            .map_err(|e| format!("ONNX Runtime at `{}` did not start: {e}", path.display()))?;
        Ok((env, path))
    });
    match env {
        Ok((env, path)) => Ok((env, path.as_path())),
        Err(message) => Err(Error::Runtime(message.clone())),
    }
}

/// ONNX Runtime's own description of its build (version, commit).
pub fn build_info() -> Result<String> {
    environment()?;
    Ok(ort::info().to_string())
}

/// Where inference runs: ONNX Runtime's CPU provider, or its CUDA provider on one GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// The CPU provider.
    #[default]
    Cpu,
    /// The CUDA provider on GPU `n` (needs the `onnxruntime-gpu` build of the library).
    Cuda(u32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The values of one named input.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Floats (pixels).
    F32(&'a [f32]),
    /// Integers (token ids, attention masks).
    I64(&'a [i64]),
}

/// A loaded ONNX model.
#[derive(Debug)]
pub struct OnnxModel {
    session: Session,
    path: PathBuf,
}

impl OnnxModel {
    /// Load `path` on the CPU with `threads` intra-op threads (0: ONNX Runtime's default).
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        Self::load_on(path, threads, Device::Cpu)
    }

    /// Load `path` for `device`. ONNX Runtime's thread spinning is left on: turning it off,
    /// to leave the cores to image decoding between batches, measured slower (decoding is ~2 % of
    /// the CPU time of a ViT-B/32 embedding).
    pub fn load_on(path: &Path, threads: usize, device: Device) -> Result<Self> {
        let (env, library) = environment()?;
        let onnx = |e: &dyn std::fmt::Display| Error::Onnx {
            model: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(env).map_err(|e| onnx(&e))?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| onnx(&e))?;
        }
        if let Device::Cuda(n) = device {
            let cuda = ort::ep::CUDA::default();
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(Error::Runtime(format!(
                    "--device {device}: the ONNX Runtime library at `{}` was built without CUDA; install the GPU build (`pip download --no-deps onnxruntime-gpu`, its onnxruntime/capi/libonnxruntime.so.*) and point {ORT_DYLIB_PATH} at it",
                    library.display()
                )));
            }
            builder = builder
                .with_execution_providers([cuda
                    .with_device_id(n as i32)
                    .build()
                    .error_on_failure()])
                .map_err(|e| {
                    Error::Runtime(format!(
                        "--device {device}: ONNX Runtime's CUDA provider did not start: {e}"
                    ))
                })?;
        }
        let session = builder.commit_from_file(path).map_err(|e| onnx(&e))?;
        Ok(OnnxModel {
            session,
            path: path.to_path_buf(),
        })
    }

    /// The model's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's input names.
    pub fn inputs(&self) -> Vec<String> {
        self.session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// The model's output names.
    pub fn outputs(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// Run with named inputs; returns the shape and values of the output `output`.
    pub fn run_named(
        &mut self,
        inputs: &[(&str, Vec<usize>, Input<'_>)],
        output: &str,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let path = self.path.clone();
        let onnx = |e: &dyn std::fmt::Display| Error::Onnx {
            model: path.clone(),
            message: e.to_string(),
        };
        let mut feed: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = Vec::with_capacity(inputs.len());
        for (name, shape, data) in inputs {
            let shape_i64: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let value: ort::session::SessionInputValue<'_> = match data {
                Input::F32(v) => TensorRef::from_array_view((shape_i64, *v))
                    .map_err(|e| onnx(&e))?
                    .into(),
                Input::I64(v) => TensorRef::from_array_view((shape_i64, *v))
                    .map_err(|e| onnx(&e))?
                    .into(),
            };
            feed.push((std::borrow::Cow::Owned(name.to_string()), value));
        }
        let outputs = self.session.run(feed).map_err(|e| onnx(&e))?;
        let value = outputs
            .get(output)
            .ok_or_else(|| onnx(&format!("the graph has no output `{output}`")))?;
        let (out_shape, values) = value.try_extract_tensor::<f32>().map_err(|e| onnx(&e))?;
        Ok((
            out_shape.iter().map(|&d| d as usize).collect(),
            values.to_vec(),
        ))
    }

    /// Run on one f32 input of `shape`; returns the first output's shape and values.
    pub fn run_f32(&mut self, shape: &[usize], data: Vec<f32>) -> Result<(Vec<usize>, Vec<f32>)> {
        self.run(shape, &data)
    }

    /// Run on one input of `shape` (f32 or i64); returns the first output's shape and f32 values.
    pub fn run<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        &mut self,
        shape: &[usize],
        data: &[T],
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let path = self.path.clone();
        let onnx = |e: &dyn std::fmt::Display| Error::Onnx {
            model: path.clone(),
            message: e.to_string(),
        };
        let shape_i64: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let tensor = TensorRef::from_array_view((shape_i64, data)).map_err(|e| onnx(&e))?;
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| onnx(&e))?;
        let (out_shape, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| onnx(&e))?;
        Ok((
            out_shape.iter().map(|&d| d as usize).collect(),
            values.to_vec(),
        ))
    }
}
