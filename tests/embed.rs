//! Embedding with the committed tiny CLIP (data/tiny-clip): `simat embed`, the model oracle,
//! selection, and a killed embed stage resuming.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::AsArray;

use crate::util::*;

/// The largest difference between `got` and PyTorch's raw embedding `want`, relative to its
/// norm (at least 1).
fn rel_diff(got: &[f32], want: &serde_json::Value) -> f32 {
    let want = floats(want);
    let n = want.iter().map(|x| x * x).sum::<f32>().sqrt().max(1.0);
    max_abs_diff(got, &want) / n
}

fn store(path: &Path) -> simat::io::store::EmbeddingStore {
    simat::io::store::EmbeddingStore::open(path).unwrap()
}

/// `simat encode`: rows in input order keyed by path and text, PyTorch's raw embeddings;
/// a corrupt image is skipped, named, and makes the exit code 1.
#[test]
fn embed_command_writes_stores_in_input_order() {
    let dir = tempdir();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let r = clip_reference();
    let refs = tiny_clip().join("reference");
    for im in r["images"].as_array().unwrap() {
        let f = im["file"].as_str().unwrap();
        std::fs::copy(refs.join(f), images.join(f)).unwrap();
    }
    std::fs::write(images.join("image_9_bad.png"), b"not an image").unwrap();
    let texts = texts_of(r["texts"].as_array().unwrap());
    let tfile = dir.path().join("texts.txt");
    std::fs::write(&tfile, texts.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let o = run_ok(
        &[
            "encode",
            "--model",
            s(&tiny_clip()),
            "--images",
            s(&images),
            "--texts",
            s(&tfile),
            "--out",
            s(&out),
            "--batch-size",
            "3",
        ],
        1,
    );
    assert!(stderr(&o).contains("image_9_bad.png"), "{}", stderr(&o));

    let st = store(&out.join("text_embeddings.arrow"));
    assert_eq!(st.rows, texts.len());
    let col = st.batch.column_by_name("text").unwrap().as_string::<i32>();
    for (i, t) in r["texts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(col.value(i), texts[i]);
        let d = rel_diff(&st.values()[i * 32..(i + 1) * 32], &t["embedding"]);
        assert!(d < 1e-4, "text {i}: {d}");
    }

    let si = store(&out.join("image_embeddings.arrow"));
    assert_eq!(si.rows, 5);
    let keys = si.batch.column_by_name("key").unwrap().as_string::<i32>();
    for (i, im) in r["images"].as_array().unwrap().iter().enumerate() {
        let want = images.join(im["file"].as_str().unwrap());
        assert_eq!(keys.value(i), want.to_str().unwrap());
        // From the file through simat's preprocessing: within the preprocessing tolerance.
        let d = rel_diff(&si.values()[i * 32..(i + 1) * 32], &im["embedding"]);
        assert!(d < 1e-2, "image {i}: {d}");
    }
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["model"]["name"], "tiny");
    assert_eq!(model["vectors"], "raw");
    assert_eq!(
        si.batch
            .schema()
            .metadata()
            .get(simat::io::store::VECTORS_KEY)
            .map(String::as_str),
        Some("raw")
    );
    assert_eq!(
        model["model"]["files"]["image.onnx"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(!out.join("chunks").exists());
}

fn pipeline(dir: &Path, chunk: usize) -> PathBuf {
    let p = dir.join("p.toml");
    let model = tiny_clip();
    std::fs::write(
        &p,
        format!(
            r#"run_dir = "run"
[synth]
image_count = 160
seed = 3
render = true
plant_rate = 0.2
[ingest]
[triplets]
[crops]
[oracle]
model = "{m}"
threads = 1
batch_size = 4
chunk_images = {chunk}
[select]
oracle = "model"
threshold = -0.05
min_images = 2
[queries]
[embed]
model = "{m}"
threads = 1
batch_size = 4
chunk_images = {chunk}
[retrieve]
lambdas = [0.0, 1.0]
[score]
oracle = "model"
threshold = 0.0
"#,
            m = model.display()
        ),
    )
    .unwrap();
    p
}

/// Selection with the model oracle keeps exactly the scored regions at or above the threshold
/// in triplets with two images; embed stores one row per dataset region; the run ends in scores
/// and a second run finds every stage fresh.
#[test]
fn model_oracle_selects_and_the_run_scores() {
    let dir = tempdir();
    let p = pipeline(dir.path(), 64);
    run_ok(&["run", s(&p)], 0);
    let run = dir.path().join("run");
    let scores = simat::io::read_all(&run.join("oracle/region_scores.parquet")).unwrap();
    let ids = scores
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>();
    let sims = scores
        .column(2)
        .as_primitive::<arrow::datatypes::Float32Type>();
    let regions = simat::io::read_all(&run.join("triplets/regions.parquet")).unwrap();
    let rid = simat::io::i64_column(&regions, "region_id", Path::new("r")).unwrap();
    let iid = simat::io::i64_column(&regions, "image_id", Path::new("r")).unwrap();
    let tid = simat::io::i64_column(&regions, "triplet_id", Path::new("r")).unwrap();
    let sim: std::collections::HashMap<i64, f32> = ids
        .values()
        .iter()
        .copied()
        .zip(sims.values().iter().copied())
        .collect();
    let mut images: std::collections::HashMap<i64, std::collections::BTreeSet<i64>> =
        Default::default();
    let passed: Vec<usize> = (0..rid.len())
        .filter(|&i| sim.get(&rid.value(i)).is_some_and(|&s| s as f64 >= -0.05))
        .collect();
    for &i in &passed {
        images.entry(tid.value(i)).or_default().insert(iid.value(i));
    }
    let want: Vec<i64> = passed
        .iter()
        .filter(|&&i| images[&tid.value(i)].len() >= 2)
        .map(|&i| rid.value(i))
        .collect();
    let dataset =
        simat::tables::dataset::Dataset::read(&run.join("select/dataset.parquet")).unwrap();
    assert!(!want.is_empty() && want.len() < rid.len());
    assert_eq!(dataset.region_id, want);

    let images = store(&run.join("embed/image_embeddings.arrow"));
    assert_eq!(images.rows, dataset.len());
    // Raw outputs are kept (heads apply to them); they are not unit-norm.
    let norms: Vec<f32> = images
        .values()
        .chunks(images.dim)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>())
        .collect();
    assert!(norms.iter().any(|n| (n - 1.0).abs() > 1e-2), "{norms:?}");
    // The evaluated model is the oracle model here: the embed stage's vector of a region equals
    // the oracle stage's.
    let oracle = store(&run.join("oracle/region_embeddings.arrow"));
    let orow = (0..oracle.rows)
        .find(|&r| {
            oracle
                .batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(r)
                == dataset.region_id[0]
        })
        .unwrap();
    assert!(
        max_abs_diff(
            &images.values()[..images.dim],
            &oracle.values()[orow * oracle.dim..(orow + 1) * oracle.dim]
        ) < 1e-5
    );
    assert!(run.join("score/scores.json").is_file());
    let second = run_ok(&["run", s(&p)], 0);
    assert!(!stdout(&second).contains(" ran "), "{}", stdout(&second));
}

/// A killed embed stage resumes at its last committed chunk and writes the same store as an
/// uninterrupted run.
#[test]
fn killed_embed_resumes_to_the_same_store() {
    let dir = tempdir();
    let p = pipeline(dir.path(), 8);
    run_ok(&["run", s(&p), "--until", "queries"], 0);
    let run = dir.path().join("run");
    let clean_dir = dir.path().join("clean");
    std::fs::create_dir(&clean_dir).unwrap();
    copy_dir(&run, &clean_dir.join("run"));
    let clean_p = pipeline(&clean_dir, 8);
    run_ok(&["run", s(&clean_p), "--until", "embed"], 0);

    let mut child = simat()
        .args(["run", s(&p), "--until", "embed"])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = run.join("embed/chunks/000002.arrow");
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "embed never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "embed finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run.join("embed/image_embeddings.arrow").exists());

    run_ok(&["run", s(&p), "--until", "embed"], 0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let resumed = manifest["stages"]["embed"]["counters"]["chunks_resumed"]
        .as_u64()
        .unwrap();
    assert!(resumed >= 3, "resumed {resumed} chunks");
    for f in [
        "image_embeddings.arrow",
        "word_embeddings.arrow",
        "caption_embeddings.arrow",
    ] {
        assert_eq!(
            std::fs::read(run.join("embed").join(f)).unwrap(),
            std::fs::read(clean_dir.join("run/embed").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!run.join("embed/chunks").exists());
}

/// With `labels` selection in a pipeline that crops, regions whose image is missing are not
/// selected (counted), so the model can embed every selected region.
#[test]
fn labels_selection_keeps_only_cropped_regions() {
    let dir = tempdir();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "run_dir = \"run\"\n[synth]\nimage_count = 120\nseed = 5\nrender = true\nplant_rate = 0.3\n[ingest]\n[triplets]\n[crops]\n[select]\noracle = \"labels\"\n[queries]\n[embed]\nmodel = \"{}\"\nthreads = 1\n",
            tiny_clip().display()
        ),
    )
    .unwrap();
    run_ok(&["run", s(&p), "--until", "triplets"], 0);
    let run = dir.path().join("run");
    let regions = simat::io::read_all(&run.join("triplets/regions.parquet")).unwrap();
    let image = simat::io::i64_column(&regions, "image_id", Path::new("r"))
        .unwrap()
        .value(0);
    // The images from a folder of the user's where one is missing (synth's own folder is an
    // output: removing a file there makes synth render it again).
    let images = dir.path().join("images");
    copy_dir(&run.join("synth/vg/images"), &images);
    std::fs::remove_file(images.join(format!("{image}.jpg"))).unwrap();
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "[crops]\n",
        &format!("[crops]\nimage_dir = \"{}\"\n", images.display()),
    );
    std::fs::write(&p, text).unwrap();
    // crops counts the missing image (exit 1); the rest goes on.
    run_ok(&["run", s(&p)], 1);
    run_ok(&["run", s(&p)], 0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let without = manifest["stages"]["select"]["counters"]["regions_without_crop"]
        .as_u64()
        .unwrap();
    assert!(without >= 1);
    let dataset =
        simat::tables::dataset::Dataset::read(&run.join("select/dataset.parquet")).unwrap();
    assert!(!dataset.image_id.contains(&image));
    assert_eq!(
        store(&run.join("embed/image_embeddings.arrow")).rows,
        dataset.len()
    );
}

/// A 5 KB JPEG whose header claims 30000 × 30000 among the images to encode: skipped as corrupt
/// with the reason, the others encoded, and the process never holds the 2.6 GB it claims.
#[test]
fn encode_skips_a_header_bomb_without_decoding_it() {
    let dir = tempdir();
    let good = dir.path().join("a.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8, y as u8, 3]))
        .save(&good)
        .unwrap();
    let bomb = dir.path().join("b.jpg");
    std::fs::write(&bomb, jpeg_header_bomb()).unwrap();
    let out = dir.path().join("out");
    let (code, err, peak_mib) = run_measured(&[
        "encode",
        "--model",
        s(&world_clip()),
        "--images",
        s(&good),
        s(&bomb),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "b.jpg`: corrupt: 30000 × 30000 = 900000000 pixels is over the limit of 178956970"
        ),
        "{err}"
    );
    assert!(peak_mib < 200.0, "peak RSS {peak_mib:.0} MiB");
    assert_eq!(store(&out.join("image_embeddings.arrow")).rows, 1);
}

/// `embed RUN` with the tiny model in chunks of 8, and `extra`.
fn embed_args(run: &Path, model: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["embed", s(run), "--model", s(model)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(EMBED_FLAGS.split(' ').map(str::to_string));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The run settings of the tests of `embed` in parts.
const EMBED_FLAGS: &str = "--threads 1 --batch-size 4 --chunk-images 8";

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `embed --shard I/N` then `--commit`, with no scheduler: two parts at once in one run
/// directory, a part run again is fresh, a commit before every part is done names the missing
/// ones, and the committed stores and manifest entry are those of a run in one go.
#[test]
fn embed_in_parts_equals_embed_in_one_go() {
    let dir = tempdir();
    let p = pipeline(dir.path(), 8);
    run_ok(&["run", s(&p), "--until", "queries"], 0);
    let parted = dir.path().join("run");
    let whole = dir.path().join("whole");
    copy_dir(&parted, &whole);
    let model = tiny_clip();
    let embed = |run: &Path, extra: &[&str]| embed_args(run, &model, extra);
    run_ok(&strs(&embed(&whole, &[])), 0);

    // Two parts at once.
    let children: Vec<_> = ["0/3", "2/3"]
        .iter()
        .map(|part| {
            simat()
                .args(embed(&parted, &["--shard", part]))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = stdout(&run_ok(&["status", s(&parted)], 0));
    assert!(
        status.contains("parts  embed: 2 of 3 done (0/3, 2/3)"),
        "{status}"
    );
    let early = run(&strs(&embed(&parted, &["--commit"])));
    assert!(!early.status.success());
    let err = stderr(&early);
    assert!(
        err.contains("1 of 3 parts are not done") && err.contains("--shard 1/3"),
        "{err}"
    );
    run_ok(&strs(&embed(&parted, &["--shard", "1/3"])), 0);
    let record = parted.join("embed/parts/1-of-3.json");
    let before = std::fs::read(&record).unwrap();
    let again = run_ok(&strs(&embed(&parted, &["--shard", "1/3"])), 0);
    assert!(
        stderr(&again).contains("Fresh embed part 1/3"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(&record).unwrap(), before);
    let status = stdout(&run_ok(&["status", s(&parted)], 0));
    assert!(
        status.contains("3 of 3 done (0/3, 1/3, 2/3); commit with `simat embed RUN --commit`"),
        "{status}"
    );
    let parts: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            let f = parted.join(format!("embed/parts/{i}-of-3.json"));
            serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()
        })
        .collect();
    let chunk_files: usize = parts
        .iter()
        .map(|p| p["files"].as_array().unwrap().len())
        .sum();
    assert!(chunk_files >= 6, "{chunk_files} chunk files in the parts");

    run_ok(&strs(&embed(&parted, &["--commit"])), 0);
    for f in [
        "image_embeddings.arrow",
        "word_embeddings.arrow",
        "caption_embeddings.arrow",
        "model.json",
    ] {
        assert_eq!(
            std::fs::read(parted.join("embed").join(f)).unwrap(),
            std::fs::read(whole.join("embed").join(f)).unwrap(),
            "{f}"
        );
    }
    let entry = |run: &Path| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
        let e = &m["stages"]["embed"];
        (e["fingerprint"].clone(), e["outputs"].clone())
    };
    assert_eq!(entry(&parted), entry(&whole));
    assert!(!parted.join("embed/parts").exists() && !parted.join("embed/chunks").exists());
    // Committed: a part and a commit are fresh.
    let fresh = run_ok(&strs(&embed(&parted, &["--shard", "0/3"])), 0);
    assert!(
        stderr(&fresh).contains("the stage is committed"),
        "{}",
        stderr(&fresh)
    );
    run_ok(&strs(&embed(&parted, &["--commit"])), 0);
}

/// The parts of `embed` as a real Slurm job array, and the commit as a job that waits for it
/// (`afterok`): the stores are those of a run in one go. Needs a cluster: the one
/// `scripts/setup.sh` starts in `target/slurm`, or `SLURM_CONF`'s; `.ci/run` sets
/// `SIMAT_REQUIRE_SLURM=1`, so that CI cannot skip it. Elsewhere it says it is skipped.
#[test]
fn embed_parts_as_a_slurm_array_equal_embed_in_one_go() {
    let Some(conf) = slurm_conf() else { return };
    let _turn = slurm_turn();
    let dir = tempdir();
    let p = pipeline(dir.path(), 8);
    run_ok(&["run", s(&p), "--until", "queries"], 0);
    let parted = dir.path().join("run");
    let whole = dir.path().join("whole");
    copy_dir(&parted, &whole);
    let model = tiny_clip();
    let flags = format!("--model {} {EMBED_FLAGS}", s(&model));
    run_ok(&strs(&embed_args(&whole, &model, &[])), 0);
    let bin = env!("CARGO_BIN_EXE_simat");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let sbatch = |args: &[&str], script: String| -> String {
        let out = std::process::Command::new("sbatch")
            .env("SLURM_CONF", &conf)
            .args(["--parsable", "--requeue", "--cpus-per-task=1"])
            .args(args)
            .args([
                &format!("--output={}/%x-%A_%a.log", s(&logs)),
                "--wrap",
                &script,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sbatch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let array = sbatch(
        &["--array=0-2", "--job-name=embed-part"],
        format!(
            "{bin} -q embed {} {flags} --shard $SLURM_ARRAY_TASK_ID/3",
            s(&parted)
        ),
    );
    sbatch(
        &[
            &format!("--dependency=afterok:{array}"),
            // A failed part cancels the commit rather than leaving it pending for ever.
            "--kill-on-invalid-dep=yes",
            "--job-name=embed-commit",
            "--wait",
        ],
        format!("{bin} -q embed {} {flags} --commit", s(&parted)),
    );
    let listing: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listing.len(), 4, "one log per task: {listing:?}");
    for f in [
        "image_embeddings.arrow",
        "word_embeddings.arrow",
        "caption_embeddings.arrow",
    ] {
        let got = std::fs::read(parted.join("embed").join(f)).unwrap_or_else(|e| {
            let text: Vec<String> = listing
                .iter()
                .map(|l| std::fs::read_to_string(logs.join(l)).unwrap_or_default())
                .collect();
            panic!("{f}: {e}; the tasks' logs:\n{}", text.join("\n"))
        });
        assert_eq!(
            got,
            std::fs::read(whole.join("embed").join(f)).unwrap(),
            "{f}"
        );
    }
}

/// `oracle` in parts: the committed tables are those of a run in one go.
#[test]
fn oracle_in_parts_equals_oracle_in_one_go() {
    let dir = tempdir();
    let p = pipeline(dir.path(), 8);
    run_ok(&["run", s(&p), "--until", "crops"], 0);
    let parted = dir.path().join("run");
    let whole = dir.path().join("whole");
    copy_dir(&parted, &whole);
    let model = tiny_clip();
    let oracle = |run: &Path, extra: &[&str]| {
        let mut args = embed_args(run, &model, extra);
        args[0] = "oracle".into();
        args
    };
    run_ok(&strs(&oracle(&whole, &[])), 0);
    for part in ["1/2", "0/2"] {
        run_ok(&strs(&oracle(&parted, &["--shard", part])), 0);
    }
    run_ok(&strs(&oracle(&parted, &["--commit"])), 0);
    for f in [
        "region_embeddings.arrow",
        "caption_embeddings.arrow",
        "region_scores.parquet",
    ] {
        assert_eq!(
            std::fs::read(parted.join("oracle").join(f)).unwrap(),
            std::fs::read(whole.join("oracle").join(f)).unwrap(),
            "{f}"
        );
    }
}
