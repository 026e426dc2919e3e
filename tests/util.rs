//! Helpers shared by the integration tests: a fresh directory per test, the binary, the data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The real data beside the project (`../shared/data`).
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// The VG-format sample.
pub fn vg_sample() -> PathBuf {
    shared_data().join("vg-sample")
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("simat-test-")
        .tempdir()
        .unwrap()
}

/// A directory that outlives its test (for inputs made once per test process and shared by its
/// tests): under cargo's target tmpdir, named by this process; those of processes that have ended
/// are removed first, so runs do not pile up.
pub fn per_process_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let prefix = format!("{name}-");
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `simat` binary, with a clean environment for colour and logging.
pub fn simat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simat"));
    cmd.env("NO_COLOR", "1").env_remove("SIMAT_LOG");
    cmd
}

/// Run `simat ARGS`, returning its output.
pub fn run(args: &[&str]) -> Output {
    simat().args(args).output().unwrap()
}

/// Run and require an exit code; print stdout and stderr on mismatch.
pub fn run_ok(args: &[&str], code: i32) -> Output {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "simat {args:?}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// BLAKE3 of each file in `dir` (non-recursive), by name, skipping the manifest.
pub fn hashes(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Copy the VG sample's JSON files into `dir` so a test can damage them.
pub fn copy_sample(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in [
        "image_data.json",
        "relationships.json",
        "objects.json",
        "attributes.json",
    ] {
        std::fs::copy(vg_sample().join(f), dir.join(f)).unwrap();
    }
}

/// Copy a folder recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The committed tiny CLIP (`scripts/export_clip.py tiny --reference`).
pub fn tiny_clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tiny-clip")
}

/// The tiny CLIP trained on the demo world (`scripts/train_tiny_clip.py`).
pub fn world_clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tiny-clip-world")
}

/// A model folder's PyTorch references (`reference/reference.json`).
pub fn reference_of(model: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(model.join("reference/reference.json")).unwrap()).unwrap()
}

/// The tiny CLIP's PyTorch references.
pub fn clip_reference() -> serde_json::Value {
    reference_of(&tiny_clip())
}

/// A JSON array of numbers, nested or not, as f32 in row-major order.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap() as f32),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The `text` field of each reference row.
pub fn texts_of(rows: &[serde_json::Value]) -> Vec<&str> {
    rows.iter().map(|r| r["text"].as_str().unwrap()).collect()
}

/// `simat retrieve` then `simat score` on one argument list in the form `[-v] score --run RUN
/// --lambda L --heads H --oracle O ...`: each flag goes to the stage that has it (as the
/// `score` command of simat before the stage registry did both). The outputs are joined; the
/// exit status is the first failure's, else the last one's.
pub fn retrieve_and_score(args: &[&str]) -> Output {
    let mut globals = Vec::new();
    let mut retrieve = vec!["retrieve"];
    let mut score = vec!["score"];
    let mut it = args.iter().copied().peekable();
    while let Some(a) = it.next() {
        match a {
            "-v" | "-q" => globals.push(a),
            "score" => {}
            "--allow-normalised" => retrieve.push(a),
            "--lambda" | "--lambdas" | "--heads" | "-k" => {
                retrieve.push(a);
                retrieve.push(it.next().unwrap());
            }
            "--oracle" | "--split" | "--threshold" => {
                score.push(a);
                score.push(it.next().unwrap());
            }
            "--run" | "--queries" | "--query-block" => {
                let v = it.next().unwrap();
                retrieve.extend([a, v]);
                score.extend([a, v]);
            }
            other => panic!("retrieve_and_score: unknown argument {other}"),
        }
    }
    let first = run(&[globals.clone(), retrieve].concat());
    if !first.status.success() {
        return first;
    }
    let second = run(&[globals, score].concat());
    Output {
        status: second.status,
        stdout: [first.stdout, second.stdout].concat(),
        stderr: [first.stderr, second.stderr].concat(),
    }
}

/// [`retrieve_and_score`], requiring an exit code.
pub fn score_ok(args: &[&str], code: i32) -> Output {
    let out = retrieve_and_score(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "simat {args:?}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The README's demo (`pipelines/demo.toml`), run once per test process into a temporary run
/// directory that the tests only read.
pub fn demo_run() -> PathBuf {
    static RUN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let run = per_process_dir("demo-run").join("demo");
        let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.toml");
        run_ok(&["run", s(&pipeline), "--run-dir", s(&run)], 0);
        run
    })
    .clone()
}

/// The λ a run was scored at (its `score/scores.json`), in order, each once.
pub fn scored_lambdas(run: &Path) -> Vec<f64> {
    let file = simat::tables::retrievals::ScoresFile::read(&run.join("score/scores.json")).unwrap();
    let mut lambdas: Vec<f64> = file.scores.iter().map(|r| r.lambda).collect();
    lambdas.sort_by(f64::total_cmp);
    lambdas.dedup();
    lambdas
}

/// A Float64 column's values (through the library's typed accessors).
pub fn col_f64(b: &arrow::record_batch::RecordBatch, name: &str) -> Vec<f64> {
    simat::io::f64_column(b, name, Path::new(name))
        .unwrap()
        .values()
        .to_vec()
}

/// An Int64 column's values.
pub fn col_i64(b: &arrow::record_batch::RecordBatch, name: &str) -> Vec<i64> {
    simat::tables::dataset::ints(b, name, Path::new(name)).unwrap()
}

/// A Utf8 column's values.
pub fn col_str(b: &arrow::record_batch::RecordBatch, name: &str) -> Vec<String> {
    simat::tables::dataset::strs(b, name, Path::new(name)).unwrap()
}

/// A Boolean column's values.
pub fn col_bool(b: &arrow::record_batch::RecordBatch, name: &str) -> Vec<bool> {
    let c = simat::io::bool_column(b, name, Path::new(name)).unwrap();
    (0..c.len()).map(|i| c.value(i)).collect()
}

/// A small JPEG whose header says 30000 × 30000 (2.7 GB of RGB once decoded).
pub fn jpeg_header_bomb() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 90]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&img)
        .unwrap();
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has SOF0");
    // SOF0: marker, length (2), precision (1), height (2), width (2).
    bytes[sof + 5..sof + 7].copy_from_slice(&30000u16.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&30000u16.to_be_bytes());
    bytes
}

/// Run `simat ARGS` and return its exit code, stderr and peak RSS in MiB: the `VmHWM` simat
/// logs of itself at exit (`wait4`'s `ru_maxrss` would include this test process's peak,
/// inherited through the vfork that spawns the child).
pub fn run_measured(args: &[&str]) -> (Option<i32>, String, f64) {
    let out = simat()
        .args(args)
        .env("SIMAT_LOG", "warn,simat::progress=info,simat::memory=debug")
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    let peak_kib = err
        .split("peak_rss_kib=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("simat logged no peak_rss_kib: {err}"));
    (out.status.code(), err, peak_kib / 1024.0)
}

/// A `.npy` of float32 whose header claims `shape` over `data_bytes` zero bytes.
pub fn npy_claiming(path: &Path, shape: &str, data_bytes: usize) {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data_bytes));
    std::fs::write(path, bytes).unwrap();
}

/// The first file of a folder by name.
pub fn first_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap()
}

/// Flip bits of the middle byte of `path` (same size, other content); returns the bytes it had.
pub fn damage_middle_byte(path: &Path) -> Vec<u8> {
    let good = std::fs::read(path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(path, &bad).unwrap();
    good
}

/// The Slurm cluster the tests submit to: `SLURM_CONF`'s, or the one `scripts/setup.sh` starts
/// in `target/slurm`; `None` (the test says it is skipped) where none answers, unless
/// `SIMAT_REQUIRE_SLURM` is set (as `.ci/run` sets it), which makes that a failure.
pub fn slurm_conf() -> Option<PathBuf> {
    let conf = std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/slurm/slurm.conf"));
    let have = conf.is_file()
        && Command::new("sinfo")
            .env("SLURM_CONF", &conf)
            .args(["-h", "-o", "%t"])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !have {
        assert!(
            std::env::var_os("SIMAT_REQUIRE_SLURM").is_none(),
            "SIMAT_REQUIRE_SLURM is set, but no Slurm cluster answers (SLURM_CONF, sbatch)"
        );
        eprintln!("skipped: no Slurm cluster (scripts/slurm_local.sh DIR starts one)");
        return None;
    }
    Some(conf)
}

/// Held by each test that submits to Slurm, so that they take the one-node cluster's two CPUs
/// in turn (some hold a task blocked on purpose).
pub fn slurm_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// `python3 tests/reference/SCRIPT ARGS…`'s stdout: an independent reference (it needs numpy,
/// which `scripts/setup.sh` installs).
pub fn reference_script(script: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(script);
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 is needed by the reference tests");
    assert!(
        out.status.success(),
        "{} failed (it needs numpy):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sql` over `run` as CSV (`simat query --format csv`), written to `path`.
pub fn query_csv(run: &Path, sql: &str, path: PathBuf) -> PathBuf {
    let out = run_ok(&["query", s(run), sql, "--format", "csv"], 0);
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// The three committed tiny models, and the names a sweep gives them.
pub fn tiny_models() -> Vec<(PathBuf, &'static str)> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    vec![
        (data.join("tiny-clip"), "tiny"),
        (data.join("tiny-clip-world"), "tiny-world"),
        (data.join("tiny-clip-hf"), "tiny-clip-hf"),
    ]
}

/// A smaller world (160 images) through `pipelines/sweep.toml` with its run directory `run`
/// beside it in `dir`: a `[sweep]` over `models`, or, without `sweep`, the run of the one model
/// alone (the same pipeline with `[embed] model` and no `[sweep]`).
pub fn small_demo(dir: &Path, file: &str, models: &[&Path], sweep: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines/sweep.toml")).unwrap();
    let committed =
        "models = [\"../data/tiny-clip\", \"../data/tiny-clip-world\", \"../data/tiny-clip-hf\"]\n";
    assert!(text.contains(committed) && text.contains("image_count = 400"));
    let list: Vec<String> = models.iter().map(|m| format!("{:?}", s(m))).collect();
    let text = text
        .replace("run_dir = \"../runs/sweep\"", "run_dir = \"run\"")
        .replace("image_count = 400", "image_count = 160");
    let text = if sweep {
        text.replace(committed, &format!("models = [{}]\n", list.join(", ")))
    } else {
        text.replace(&format!("[sweep]\n{committed}"), "")
            .replace("[embed]\n", &format!("[embed]\nmodel = {}\n", list[0]))
    };
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// The tables of a stage folder (Parquet and Arrow files), by name, with their bytes.
pub fn stage_tables(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "parquet" || x == "arrow")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `pipelines/text_encoders.toml` on a 160-image world with 5 epochs per τ, its run directory
/// `run` beside it in `dir`.
pub fn small_text_encoders(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines/text_encoders.toml")).unwrap();
    for part in [
        "run_dir = \"../runs/text-encoders\"",
        "image_count = 400",
        "epochs = 20",
    ] {
        assert!(text.contains(part), "{part}");
    }
    let text = text
        .replace("run_dir = \"../runs/text-encoders\"", "run_dir = \"run\"")
        .replace("image_count = 400", "image_count = 160")
        .replace("epochs = 20", "epochs = 5")
        .replace("\"../data/", &format!("\"{}/data/", root.display()));
    let p = dir.join("text_encoders.toml");
    std::fs::write(&p, text).unwrap();
    p
}
