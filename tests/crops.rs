//! `simat crops`: statuses for every kind of image trouble, pixels, and resume after SIGKILL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};

use crate::util::*;

fn rel(id: i64, subj: (i64, i64, i64, i64, i64), obj: (i64, i64, i64, i64, i64)) -> String {
    let o = |(oid, x, y, w, h): (i64, i64, i64, i64, i64), name: &str| {
        format!(
            r#"{{"object_id": {oid}, "x": {x}, "y": {y}, "w": {w}, "h": {h}, "name": "{name}"}}"#
        )
    };
    format!(
        r#"{{"relationship_id": {id}, "predicate": "sitting on", "subject": {}, "object": {}}}"#,
        o(subj, "man"),
        o(obj, "bench")
    )
}

/// A tiny VG: image 1 (120×80, present) with an inside, a clamped and an outside region;
/// image 2 missing; image 3 corrupt.
fn tiny_vg(dir: &Path) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let images = r#"[{"image_id": 1, "width": 120, "height": 80}, {"image_id": 2, "width": 50, "height": 50}, {"image_id": 3, "width": 50, "height": 50}]"#;
    std::fs::write(dir.join("image_data.json"), images).unwrap();
    let rels = format!(
        "[{{\"image_id\": 1, \"relationships\": [{}, {}, {}]}}, {{\"image_id\": 2, \"relationships\": [{}]}}, {{\"image_id\": 3, \"relationships\": [{}]}}]",
        rel(1, (10, 5, 5, 40, 40), (11, 20, 30, 30, 40)),
        rel(2, (12, 90, 40, 50, 60), (13, 100, 50, 10, 10)),
        rel(3, (14, 300, 300, 40, 40), (15, 310, 310, 40, 40)),
        rel(4, (16, 0, 0, 40, 40), (17, 0, 0, 40, 40)),
        rel(5, (18, 0, 0, 40, 40), (19, 0, 0, 40, 40)),
    );
    std::fs::write(dir.join("relationships.json"), rels).unwrap();
    let img = image::RgbImage::from_fn(120, 80, |x, y| {
        image::Rgb([x as u8, y as u8, (x ^ y) as u8])
    });
    img.save(dir.join("images/1.png")).unwrap();
    std::fs::write(dir.join("images/3.jpg"), b"\xff\xd8\xff not really a jpeg").unwrap();
}

/// [`tiny_vg`] ingested and extracted in a fresh directory: (directory, VG folder, run).
fn tiny_run() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempdir();
    let vg = dir.path().join("vg");
    tiny_vg(&vg);
    let run = dir.path().join("run");
    run_ok(&["ingest", "--vg", s(&vg), "--run", s(&run)], 0);
    run_ok(&["triplets", "--run", s(&run)], 0);
    (dir, vg, run)
}

#[test]
fn every_status_is_counted_and_pixels_are_right() {
    let (_dir, vg, run) = tiny_run();
    let out = run_ok(
        &[
            "crops",
            "--image-dir",
            s(&vg.join("images")),
            "--run",
            s(&run),
        ],
        1,
    );
    let err = stderr(&out);
    assert!(
        err.contains("1 region(s) not cropped: image missing"),
        "{err}"
    );
    assert!(
        err.contains("1 region(s) not cropped: image corrupt"),
        "{err}"
    );
    assert!(
        err.contains("1 region(s) not cropped: image outside"),
        "{err}"
    );

    let b = simat::io::read_all(&run.join("crops/crops.parquet")).unwrap();
    let status = b.column_by_name("status").unwrap().as_string::<i32>();
    let region = b
        .column_by_name("region_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let x1 = b.column_by_name("x1").unwrap().as_primitive::<Int32Type>();
    let x2 = b.column_by_name("x2").unwrap().as_primitive::<Int32Type>();
    let got: Vec<&str> = (0..b.num_rows()).map(|i| status.value(i)).collect();
    // Regions are numbered by (image, subject object, ...): image 1's three, then 2, then 3.
    assert_eq!(got, ["ok", "clamped", "outside", "missing", "corrupt"]);
    assert_eq!(
        (x1.value(1), x2.value(1)),
        (90, 120),
        "clamped to the image's width"
    );

    // The ok crop holds the source pixels of its box (5..50 × 5..70).
    let crop = image::open(
        run.join("crops")
            .join(format!("crops/{}.png", region.value(0))),
    )
    .unwrap()
    .to_rgb8();
    assert_eq!(crop.dimensions(), (45, 65));
    assert_eq!(crop.get_pixel(0, 0).0, [5, 5, 0]);
    assert_eq!(crop.get_pixel(44, 64).0, [49, 69, 49 ^ 69]);

    // `--outside pad`, as Pillow's Image.crop: the box as given, black outside the image.
    run_ok(
        &[
            "crops",
            "--image-dir",
            s(&vg.join("images")),
            "--outside",
            "pad",
            "--run",
            s(&run),
        ],
        1,
    );
    let b = simat::io::read_all(&run.join("crops/crops.parquet")).unwrap();
    let status = b.column_by_name("status").unwrap().as_string::<i32>();
    assert_eq!(status.value(1), "padded");
    let crop = image::open(
        run.join("crops")
            .join(format!("crops/{}.png", region.value(1))),
    )
    .unwrap()
    .to_rgb8();
    // The union box 90..140 × 40..100 of a 120 × 80 image.
    assert_eq!(crop.dimensions(), (50, 60));
    assert_eq!(crop.get_pixel(0, 0).0, [90, 40, 90 ^ 40]);
    assert_eq!(crop.get_pixel(29, 39).0, [119, 79, 119 ^ 79]);
    assert_eq!(crop.get_pixel(30, 0).0, [0, 0, 0]);
    assert_eq!(crop.get_pixel(0, 40).0, [0, 0, 0]);
    assert_eq!(crop.get_pixel(49, 59).0, [0, 0, 0]);
}

#[test]
fn killed_crops_resume_from_their_chunks() {
    let dir = tempdir();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "run_dir = \"run\"\n[synth]\nimage_count = 240\nseed = 4\nrender = true\nplant_rate = 0.2\n[ingest]\n[triplets]\n[crops]\nchunk_images = 8\n",
    )
    .unwrap();
    run_ok(&["run", s(&p), "--until", "triplets"], 0);
    let clean = dir.path().join("clean");
    let vg_images = dir.path().join("run/synth/vg/images");
    let regions_run = dir.path().join("run");
    // An uninterrupted crops run, into a copy of the run directory.
    copy_dir(&regions_run, &clean);
    run_ok(
        &[
            "crops",
            "--image-dir",
            s(&vg_images),
            "--chunk-images",
            "8",
            "--run",
            s(&clean),
        ],
        0,
    );

    let mut child = simat()
        .args(["run", s(&p)])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = dir.path().join("run/crops/chunks/000003.parquet");
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "crops never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "crops finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dir.path().join("run/crops/crops.parquet").exists());

    run_ok(&["run", s(&p)], 0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/manifest.json")).unwrap())
            .unwrap();
    let resumed = manifest["stages"]["crops"]["counters"]["chunks_resumed"]
        .as_u64()
        .unwrap();
    assert!(resumed >= 4, "resumed {resumed} chunks");
    assert_eq!(
        std::fs::read(dir.path().join("run/crops/crops.parquet")).unwrap(),
        std::fs::read(clean.join("crops/crops.parquet")).unwrap()
    );
    assert_eq!(
        hashes(&dir.path().join("run/crops/crops")),
        hashes(&clean.join("crops/crops"))
    );
    assert!(!dir.path().join("run/crops/chunks").exists());
}

#[test]
fn a_header_bomb_is_corrupt_with_its_reason_and_never_decoded() {
    let dir = tempdir();
    let vg = dir.path().join("vg");
    tiny_vg(&vg);
    let bomb = jpeg_header_bomb();
    assert!(bomb.len() < 10_000);
    std::fs::write(vg.join("images/3.jpg"), &bomb).unwrap();
    let run = dir.path().join("run");
    run_ok(&["ingest", "--vg", s(&vg), "--run", s(&run)], 0);
    run_ok(&["triplets", "--run", s(&run)], 0);
    let (code, err, peak_mib) = run_measured(&[
        "crops",
        "--image-dir",
        s(&vg.join("images")),
        "--run",
        s(&run),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("1 region(s) not cropped: image corrupt"),
        "{err}"
    );
    eprintln!("crops with a 30000 × 30000 JPEG header: peak RSS {peak_mib:.0} MiB");
    assert!(peak_mib < 200.0, "peak RSS {peak_mib:.0} MiB");
    let b = simat::io::read_all(&run.join("crops/crops.parquet")).unwrap();
    let status = col_str(&b, "status");
    let reason = b.column_by_name("reason").unwrap().as_string::<i32>();
    let i = status.iter().position(|s| s == "corrupt").unwrap();
    assert!(
        reason
            .value(i)
            .contains("3.jpg: 30000 × 30000 = 900000000 pixels is over the limit of 178956970"),
        "{}",
        reason.value(i)
    );
    assert!(status
        .iter()
        .enumerate()
        .all(|(j, s)| (s == "corrupt") == reason.is_valid(j)));

    // The same image under a limit it fits is decoded (and found short of its claimed rows).
    let (code, err, _) = run_measured(&[
        "crops",
        "--image-dir",
        s(&vg.join("images")),
        "--run",
        s(&run),
        "--max-pixels",
        "1000",
    ]);
    assert_eq!(code, Some(1), "{err}");
    let b = simat::io::read_all(&run.join("crops/crops.parquet")).unwrap();
    let reason = b.column_by_name("reason").unwrap().as_string::<i32>();
    let over: Vec<_> = (0..b.num_rows())
        .filter(|&j| reason.is_valid(j) && reason.value(j).contains("over the limit of 1000"))
        .collect();
    assert_eq!(
        over.len(),
        4,
        "image 1 (120 × 80, three regions) and image 3 are over 1,000 pixels"
    );
}

/// Crop PNGs are outputs too: one rewritten at the same size after `crops` finished makes the
/// stage stale ("output crops/ was modified"), and the rerun writes the same bytes back.
#[test]
fn a_damaged_crop_png_makes_crops_stale() {
    let (_dir, vg, run) = tiny_run();
    let images = vg.join("images");
    let crops = ["crops", s(&run), "--image-dir", s(&images)];
    run_ok(&crops, 1);
    let png = first_file(&run.join("crops/crops"));
    let err = stderr(&run_ok(&crops, 0));
    assert!(err.contains("Fresh crops (2 files"), "{err}");
    let good = damage_middle_byte(&png);
    let mut verbose = vec!["-v"];
    verbose.extend(crops);
    let err = stderr(&run_ok(&verbose, 1));
    assert!(
        err.contains("Stale crops: output crops/ was modified"),
        "{err}"
    );
    assert_eq!(std::fs::read(&png).unwrap(), good);
    // Removed, the same.
    std::fs::remove_file(&png).unwrap();
    let err = stderr(&run_ok(&verbose, 1));
    assert!(
        err.contains("Stale crops: output crops/ was modified"),
        "{err}"
    );
    assert_eq!(std::fs::read(&png).unwrap(), good);
}

/// `crops` in three parts (two of them at once, then the third), committed, writes the table, its
/// manifest entry and every PNG of a run in one go.
#[test]
fn crops_in_parts_equal_crops_in_one_go() {
    let dir = tempdir();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "run_dir = \"run\"\n[synth]\nimage_count = 120\nseed = 5\nrender = true\nplant_rate = 0.2\n[ingest]\n[triplets]\n",
    )
    .unwrap();
    run_ok(&["run", s(&p)], 0);
    let parted = dir.path().join("run");
    let whole = dir.path().join("whole");
    copy_dir(&parted, &whole);
    let images = parted.join("synth/vg/images");
    let crops = |run: &Path, extra: &[&str]| -> Vec<String> {
        let a: Vec<String> = [
            "crops",
            s(run),
            "--image-dir",
            s(&images),
            "--chunk-images",
            "10",
        ]
        .iter()
        .chain(extra)
        .map(|x| x.to_string())
        .collect();
        a
    };
    let go = |args: Vec<String>, code: i32| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&refs, code)
    };
    go(crops(&whole, &[]), 0);
    let spawn = |part: &str| {
        simat()
            .args(crops(&parted, &["--shard", part]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("2/3"), spawn("0/3"));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let early = go(crops(&parted, &["--commit"]), 2);
    assert!(stderr(&early).contains("1/3"), "{}", stderr(&early));
    go(crops(&parted, &["--shard", "1/3"]), 0);
    go(crops(&parted, &["--commit"]), 0);
    assert_eq!(
        std::fs::read(parted.join("crops/crops.parquet")).unwrap(),
        std::fs::read(whole.join("crops/crops.parquet")).unwrap()
    );
    assert_eq!(
        hashes(&parted.join("crops/crops")),
        hashes(&whole.join("crops/crops"))
    );
    let entry = |run: &Path| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
        (
            m["stages"]["crops"]["fingerprint"].clone(),
            m["stages"]["crops"]["outputs"].clone(),
        )
    };
    assert_eq!(entry(&parted), entry(&whole));
}
