//! `simat leaderboard RUN...`: its numbers recomputed here from each run's `results.parquet`
//! (the λ of the best dev score, the test score at it), CLIP_benchmark files, and a run that
//! cannot give a protocol's number is refused naming it.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;

use crate::util::*;

/// (heads, λ bits, split) → weighted SIMAT score ×100, from `results.parquet` by hand.
fn scores_from_results(run: &Path) -> BTreeMap<(String, u64, String), f64> {
    let b = simat::io::read_all(&run.join("score/results.parquet")).unwrap();
    let heads = b.column_by_name("heads").unwrap().as_string::<i32>();
    let split = b.column_by_name("split").unwrap().as_string::<i32>();
    let lam = b
        .column_by_name("lam")
        .unwrap()
        .as_primitive::<Float64Type>();
    let w = b
        .column_by_name("weight")
        .unwrap()
        .as_primitive::<Float64Type>();
    let ok = b.column_by_name("success").unwrap().as_boolean();
    let mut sums: BTreeMap<(String, u64, String), (f64, f64)> = BTreeMap::new();
    for i in 0..b.num_rows() {
        for s in [split.value(i), "all"] {
            let e = sums
                .entry((heads.value(i).into(), lam.value(i).to_bits(), s.into()))
                .or_default();
            e.1 += w.value(i);
            if ok.value(i) {
                e.0 += w.value(i);
            }
        }
    }
    sums.into_iter()
        .map(|(k, (n, d))| (k, 100.0 * n / d))
        .collect()
}

#[test]
fn the_leaderboard_is_recomputed_from_results_under_each_protocol() {
    let demo = demo_run();
    let dir = tempdir();
    let other = dir.path().join("matrix-oracle");
    copy_dir(&demo, &other);
    // Another oracle, other numbers: a random matrix at 0.97.
    let m = dir.path().join("m.npy");
    let n_dataset = simat::io::read_all(&demo.join("select/dataset.parquet"))
        .unwrap()
        .num_rows();
    let width = 1 + simat::io::read_all(&demo.join("queries/queries.parquet"))
        .unwrap()
        .column_by_name("target_caption_id")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .iter()
        .chain(
            simat::io::read_all(&demo.join("select/dataset.parquet"))
                .unwrap()
                .column_by_name("caption_id")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values(),
        )
        .max()
        .copied()
        .unwrap() as usize;
    let data: Vec<f32> = (0..n_dataset * width)
        .map(|i| ((i as u64).wrapping_mul(2654435761) % 1000) as f32 / 1000.0)
        .collect();
    let matrix = simat::linalg::Matrix::new(n_dataset, width, data).unwrap();
    simat::io::store::write_npy(&m, &matrix).unwrap();
    run_ok(
        &["score", s(&other), "--oracle", s(&m), "--threshold", "0.97"],
        0,
    );
    for protocol in ["best-dev", "lambda1", "best-test"] {
        let out = run_ok(
            &[
                "leaderboard",
                s(&demo),
                s(&other),
                "--protocol",
                protocol,
                "--format",
                "json",
            ],
            0,
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        for row in &rows {
            let run = if row["run"] == "demo" { &demo } else { &other };
            let by_hand = scores_from_results(run);
            let at = |lam: f64, split: &str| by_hand[&("none".into(), lam.to_bits(), split.into())];
            let lams: Vec<f64> = vec![0.0, 0.5, 1.0, 2.0, 4.0, 8.0];
            let best = |split: &str| {
                lams.iter()
                    .copied()
                    .fold(None::<(f64, f64)>, |b, l| match b {
                        Some((_, s)) if s >= at(l, split) => b,
                        _ => Some((l, at(l, split))),
                    })
                    .unwrap()
                    .0
            };
            let lam = match protocol {
                "best-dev" => best("dev"),
                "best-test" => best("test"),
                _ => 1.0,
            };
            assert_eq!(row["lam"], lam, "{protocol}: {row}");
            assert_eq!(row["protocol"], protocol);
            let test = row["test"].as_f64().unwrap();
            assert!((test - at(lam, "test")).abs() < 1e-9, "{protocol}: {row}");
            let dev = row["dev"].as_f64().unwrap();
            assert!((dev - at(lam, "dev")).abs() < 1e-9, "{protocol}: {row}");
            let (lo, hi) = (
                row["test_ci_low"].as_f64().unwrap(),
                row["test_ci_high"].as_f64().unwrap(),
            );
            assert!(lo < hi, "{row}");
            assert!(row["test_at5"].as_f64().unwrap() >= test, "{row}");
        }
        // Best first.
        assert!(rows[0]["test"].as_f64() >= rows[1]["test"].as_f64());
    }
    // CLIP_benchmark-style files, one per row, and a Markdown table.
    let files = dir.path().join("cb");
    let md = run_ok(
        &[
            "leaderboard",
            s(&demo),
            s(&other),
            "--format",
            "markdown",
            "--clip-benchmark",
            s(&files),
        ],
        0,
    );
    let text = stdout(&md);
    assert!(
        text.starts_with("| run | model |") && text.lines().count() == 4,
        "{text}"
    );
    let written: Vec<_> = std::fs::read_dir(&files).unwrap().collect();
    assert_eq!(written.len(), 2);
    for f in written {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f.unwrap().path()).unwrap()).unwrap();
        assert_eq!(v["dataset"], "simat");
        assert!(v["metrics"]["simat_at_1"].as_f64().unwrap() <= 1.0);
    }
}

#[test]
fn a_protocol_a_run_cannot_follow_is_refused_naming_it() {
    let demo = demo_run();
    let dir = tempdir();
    let run = dir.path().join("test-only");
    copy_dir(&demo, &run);
    run_ok(&["score", s(&run), "--split", "test"], 0);
    let out = simat()
        .args(["leaderboard", s(&run), "--protocol", "best-dev"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no dev scores") && stderr(&out).contains("best-dev"),
        "{}",
        stderr(&out)
    );
    // lambda1 needs no dev.
    run_ok(&["leaderboard", s(&run), "--protocol", "lambda1"], 0);
}
