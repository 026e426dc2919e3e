//! `simat adapt`: parity with PyTorch, resume after SIGKILL, the sweep's outputs, bad input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;

use crate::util::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/adapt")
}

/// `reference.json`, or with `prefix` `rect_` the fixture of heads of unequal shapes.
fn reference_of_fixture(prefix: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(fixture().join(format!("{prefix}reference.json"))).unwrap(),
    )
    .unwrap()
}

/// The flags of fixture `prefix` (`""`: square heads from the identity; `rect_`: 64- and
/// 96-dimensional embeddings to D = 64, from the seeded projections).
fn fixture_args(run: &Path, prefix: &str) -> Vec<String> {
    let s = &reference_of_fixture(prefix)["settings"];
    let f = fixture();
    let init: Vec<String> = if prefix.is_empty() {
        vec!["--init".into(), "identity".into()]
    } else {
        ["--init", "projection", "--dim"]
            .iter()
            .map(|x| x.to_string())
            .chain([s["dim"].to_string(), "--seed".into(), s["seed"].to_string()])
            .collect()
    };
    [
        "adapt",
        "--run",
        s_(run),
        "--images",
        s_(&f.join(format!("{prefix}x.npy"))),
        "--texts",
        s_(&f.join(format!("{prefix}y.npy"))),
        "--no-shuffle",
        "--val-fraction",
        "0",
    ]
    .iter()
    .map(|x| x.to_string())
    .chain(init)
    .chain(
        [
            ("--tau", "tau"),
            ("--lr", "lr"),
            ("--epochs", "epochs"),
            ("--batch-size", "batch_size"),
            ("--lr-step", "lr_step"),
            ("--lr-gamma", "lr_gamma"),
            ("--clip-grad-norm", "clip_grad_norm"),
        ]
        .iter()
        .flat_map(|(flag, key)| [flag.to_string(), s[*key].to_string()]),
    )
    .collect()
}

fn s_(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn curve(run: &Path) -> arrow::array::RecordBatch {
    simat::io::read_all(&run.join("adapt/curve.parquet")).unwrap()
}

/// The heads and the loss curve equal PyTorch's (`torch.optim.Adam`, `clip_grad_norm_`,
/// `StepLR`, a partial last batch, clipping on some steps and not others).
#[test]
fn adapt_equals_pytorch() {
    equals_pytorch("");
}

/// Heads of unequal shapes (an image head 64 → 64 and a text head 96 → 64, as for a sentence
/// encoder beside an image model) from the seeded projections equal PyTorch's too.
#[test]
fn heads_of_unequal_shapes_equal_pytorch() {
    let h = equals_pytorch("rect_");
    assert_eq!((h.img.weight.rows, h.img.weight.cols), (64, 64));
    assert_eq!((h.txt.weight.rows, h.txt.weight.cols), (64, 96));
}

fn equals_pytorch(prefix: &str) -> simat::model::heads::Heads {
    let dir = tempdir();
    let run = dir.path().join("run");
    let args = fixture_args(&run, prefix);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    let r = reference_of_fixture(prefix);
    let c = curve(&run);
    let loss = c
        .column_by_name("train_loss")
        .unwrap()
        .as_primitive::<Float64Type>();
    let norm = c
        .column_by_name("grad_norm")
        .unwrap()
        .as_primitive::<Float64Type>();
    let lr = c
        .column_by_name("lr")
        .unwrap()
        .as_primitive::<Float64Type>();
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(c.num_rows(), steps.len());
    for (i, st) in steps.iter().enumerate() {
        let want = st["loss"].as_f64().unwrap();
        assert!(
            (loss.value(i) - want).abs() < 1e-5,
            "{prefix}step {i}: loss {} vs PyTorch {want}",
            loss.value(i)
        );
        assert!((norm.value(i) - st["grad_norm"].as_f64().unwrap()).abs() < 1e-4);
        assert!((lr.value(i) - st["lr"].as_f64().unwrap()).abs() < 1e-12);
    }
    let heads = run.join("adapt/heads/head_tau0.1");
    let h = simat::model::heads::Heads::load(&heads).unwrap();
    for (got, key) in [
        (&h.img.weight.data, "img_head.weight"),
        (&h.img.bias, "img_head.bias"),
        (&h.txt.weight.data, "txt_head.weight"),
        (&h.txt.bias, "txt_head.bias"),
    ] {
        let d = max_abs_diff(got, &floats(&r["heads"][key]));
        assert!(d < 1e-4, "{prefix}{key}: {d}");
    }
    // The safetensors file holds the same heads.
    let st = std::fs::read(run.join("adapt/heads/head_tau0.1.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let w: Vec<f32> = st
        .tensor("txt_head.weight")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(w, h.txt.weight.data);
    h
}

/// A sweep writes one head set per τ and a curve with validation; a SIGKILL in the middle of it
/// resumes at the last finished epoch and ends with the same bytes.
#[test]
fn killed_sweep_resumes_to_the_same_heads() {
    let dir = tempdir();
    let f = fixture();
    let args = |run: &Path| -> Vec<String> {
        [
            "adapt",
            "--run",
            s_(run),
            "--images",
            s_(&f.join("x.npy")),
            "--texts",
            s_(&f.join("y.npy")),
            "--tau",
            "0.1,0.05",
            "--epochs",
            "40",
            "--batch-size",
            "32",
            "--lr-step",
            "15",
            "--val-fraction",
            "0.2",
            "--seed",
            "3",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let clean = dir.path().join("clean");
    run_ok(
        &args(&clean).iter().map(String::as_str).collect::<Vec<_>>(),
        0,
    );
    let c = curve(&clean);
    assert_eq!(c.num_rows(), 2 * 40 * 8); // 240 training pairs in batches of 32
    let recall = c
        .column_by_name("val_recall_image_to_text")
        .unwrap()
        .as_primitive::<Float64Type>();
    let filled: Vec<f64> = recall.iter().flatten().collect();
    assert_eq!(filled.len(), 2 * 40, "one validation per epoch and τ");
    assert!(filled.iter().all(|r| (0.0..=1.0).contains(r)));

    let run = dir.path().join("run");
    let mut child = simat()
        .args(args(&run))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = run.join("adapt/chunks/000045.safetensors");
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "adapt never got there"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "adapt finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run.join("adapt/curve.parquet").exists());
    run_ok(
        &args(&run).iter().map(String::as_str).collect::<Vec<_>>(),
        0,
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let resumed = manifest["stages"]["adapt"]["counters"]["epochs_resumed"]
        .as_u64()
        .unwrap();
    assert!(resumed >= 46, "resumed {resumed} epochs");
    assert_eq!(
        hashes(&run.join("adapt/heads")),
        hashes(&clean.join("adapt/heads"))
    );
    assert_eq!(
        std::fs::read(run.join("adapt/curve.parquet")).unwrap(),
        std::fs::read(clean.join("adapt/curve.parquet")).unwrap()
    );
    // The trained heads are heads where heads are taken.
    simat::model::heads::Heads::load(&run.join("adapt/heads/head_tau0.05")).unwrap();
}

#[test]
fn bad_input_is_named() {
    let dir = tempdir();
    let f = fixture();
    let run = dir.path().join("run");
    let short = dir.path().join("short.npy");
    let m = simat::io::store::read_matrix(&f.join("y.npy")).unwrap();
    simat::io::store::write_npy(&short, &m.gather(&(0..10).collect::<Vec<_>>())).unwrap();
    let err = stderr(&run_ok(
        &[
            "adapt",
            "--run",
            s_(&run),
            "--images",
            s_(&f.join("x.npy")),
            "--texts",
            s_(&short),
        ],
        2,
    ));
    assert!(
        err.contains("short.npy")
            && err.contains("10 rows, but")
            && err.contains("one pair per row"),
        "{err}"
    );
    let err = stderr(&run_ok(&["adapt", "--run", s_(&run), "--tau", "0.001"], 2));
    assert!(err.contains("`[adapt] tau` (--tau)"), "{err}");
    let err = stderr(&run_ok(&["adapt", "--run", s_(&run)], 2));
    assert!(
        err.contains("needs `pair_images`") && err.contains("simat coco"),
        "{err}"
    );
}

/// Twelve COCO-format images (the last one broken) with one to three captions each under `dir`:
/// the captions file, the image folder and the captions.
fn coco_fixture(dir: &Path) -> (PathBuf, PathBuf, Vec<serde_json::Value>) {
    let images = dir.join("coco/train2017");
    std::fs::create_dir_all(&images).unwrap();
    let mut imgs = Vec::new();
    let mut anns = Vec::new();
    for id in 1..=12i64 {
        let name = format!("{id:012}.jpg");
        let img = image::RgbImage::from_fn(64 + id as u32, 48, |x, y| {
            image::Rgb([(x * id as u32) as u8, (y * 3) as u8, (id * 20) as u8])
        });
        img.save(images.join(&name)).unwrap();
        imgs.push(serde_json::json!({"id": id, "file_name": name}));
        for k in 0..(1 + id % 3) {
            anns.push(serde_json::json!({"id": id * 10 + k, "image_id": id, "caption": format!("a picture number {id}, take {k}")}));
        }
    }
    std::fs::write(images.join("000000000012.jpg"), b"\xff\xd8\xff broken").unwrap();
    let captions = dir.join("coco/captions_train2017.json");
    std::fs::write(
        &captions,
        serde_json::to_vec(&serde_json::json!({"images": imgs, "annotations": anns})).unwrap(),
    )
    .unwrap();
    (captions, images, anns)
}

/// COCO's captions format → `coco` (a model embeds images and every caption, raw) → `adapt` on
/// the keyed pairs (one caption drawn per image per epoch), as a pipeline; an unreadable image is
/// counted and left out.
#[test]
fn coco_pairs_feed_adapt() {
    let dir = tempdir();
    let (captions, images, anns) = coco_fixture(dir.path());
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "run_dir = \"run\"\n[coco]\ncaptions = \"{}\"\nimage_dir = \"{}\"\nmodel = \"{}\"\nthreads = 1\n[adapt]\ntau = [0.1]\nepochs = 3\nbatch_size = 4\nval_fraction = 0.25\n",
            s_(&captions),
            s_(&images),
            s_(&tiny_clip())
        ),
    )
    .unwrap();
    let out = run_ok(&["run", s_(&p)], 1);
    assert!(
        stderr(&out).contains("1 image(s) could not be read"),
        "{}",
        stderr(&out)
    );
    let run = dir.path().join("run");
    let im = simat::io::store::EmbeddingStore::open(&run.join("coco/images.arrow")).unwrap();
    let cap = simat::io::store::EmbeddingStore::open(&run.join("coco/captions.arrow")).unwrap();
    assert_eq!(im.rows, 11);
    assert_eq!(cap.rows, anns.len());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let counters = &manifest["stages"]["adapt"]["counters"];
    assert_eq!(counters["pairs"], 11);
    assert_eq!(counters["val_images"], 3);
    // Image 12's captions have no image.
    assert_eq!(counters["captions_without_image"], 1);
    assert!(run
        .join("adapt/heads/head_tau0.1_txt_head_bias.npy")
        .is_file());
}

/// `coco` in two parts, run in reverse order and committed, writes the stores of a run in one go.
#[test]
fn coco_in_parts_equals_coco_in_one_go() {
    let dir = tempdir();
    let (captions, images, _) = coco_fixture(dir.path());
    let model = tiny_clip();
    let coco = |run: &Path, extra: &[&str], code: i32| {
        let mut args = vec![
            "coco",
            s_(run),
            "--captions",
            s_(&captions),
            "--image-dir",
            s_(&images),
            "--model",
            s_(&model),
            "--threads",
            "1",
            "--chunk-images",
            "4",
        ];
        args.extend(extra);
        run_ok(&args, code)
    };
    let (whole, parted) = (dir.path().join("whole"), dir.path().join("parted"));
    // The broken image is counted (exit 1) by the run in one go and by the commit.
    coco(&whole, &[], 1);
    coco(&parted, &["--shard", "1/2"], 0);
    coco(&parted, &["--shard", "0/2"], 0);
    coco(&parted, &["--commit"], 1);
    for f in ["images.arrow", "captions.arrow", "model.json"] {
        assert_eq!(
            std::fs::read(parted.join("coco").join(f)).unwrap(),
            std::fs::read(whole.join("coco").join(f)).unwrap(),
            "{f}"
        );
    }
}
