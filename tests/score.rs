//! `simat score`'s ranked metrics (`metrics.parquet`) against an independent numpy reference
//! written from their definitions (`tests/reference/ranked_metrics.py`), with the labels and with
//! a matrix oracle; SIMAT@1 is the SIMAT score bit for bit; a k beyond retrieve's is refused;
//! the bootstrap intervals equal a numpy reference that draws the same queries
//! (`tests/reference/bootstrap.py`).

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};

use crate::util::*;

fn reference(args: &[&str]) -> String {
    reference_script("ranked_metrics.py", args)
}

type Key = (String, u64, String, String, String, i32);

/// `metrics.parquet` of `run`: (heads, λ bits, split, field, metric, k) → (value, queries).
fn metrics_of(run: &Path) -> BTreeMap<Key, (f64, i64)> {
    let b = simat::io::read_all(&run.join("score/metrics.parquet")).unwrap();
    let st = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
    let (heads, split, field, metric) = (st("heads"), st("split"), st("field"), st("metric"));
    let lam = b
        .column_by_name("lam")
        .unwrap()
        .as_primitive::<Float64Type>();
    let k = b.column_by_name("k").unwrap().as_primitive::<Int32Type>();
    let value = b
        .column_by_name("value")
        .unwrap()
        .as_primitive::<Float64Type>();
    let n = b
        .column_by_name("n_queries")
        .unwrap()
        .as_primitive::<Int64Type>();
    (0..b.num_rows())
        .map(|i| {
            (
                (
                    heads.value(i).to_string(),
                    lam.value(i).to_bits(),
                    split.value(i).to_string(),
                    field.value(i).to_string(),
                    metric.value(i).to_string(),
                    k.value(i),
                ),
                (value.value(i), n.value(i)),
            )
        })
        .collect()
}

/// The reference's rows for `run`'s retrievals at `at`, with `oracle` (a matrix and threshold)
/// or the labels.
fn reference_of(run: &Path, dir: &Path, at: &str, oracle: &[&str]) -> BTreeMap<Key, (f64, i64)> {
    let r = query_csv(
        run,
        "SELECT heads, query_id, lam, rank, dataset_id FROM retrievals",
        dir.join("retrievals.csv"),
    );
    let q = query_csv(run, "SELECT query_id, dataset_id, target_triplet_id, target_caption_id, field, split, n_same_value FROM queries", dir.join("queries.csv"));
    let d = query_csv(
        run,
        "SELECT dataset_id, triplet_id, caption_id FROM dataset",
        dir.join("dataset.csv"),
    );
    let mut args = vec!["metrics", s(&r), s(&q), s(&d), at];
    args.extend(oracle);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&reference(&args)).unwrap();
    rows.iter()
        .map(|x| {
            let st = |k: &str| x[k].as_str().unwrap().to_string();
            (
                (
                    st("heads"),
                    x["lam"].as_f64().unwrap().to_bits(),
                    st("split"),
                    st("field"),
                    st("metric"),
                    x["k"].as_i64().unwrap() as i32,
                ),
                (
                    x["value"].as_f64().unwrap(),
                    x["n_queries"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

fn assert_same(ours: &BTreeMap<Key, (f64, i64)>, theirs: &BTreeMap<Key, (f64, i64)>) {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (key, (v, n)) in ours {
        let (rv, rn) = theirs[key];
        assert_eq!(*n, rn, "{key:?}");
        assert!((v - rv).abs() <= 1e-9, "{key:?}: simat {v}, reference {rv}");
    }
}

/// SIMAT@1 of `metrics.parquet` is `scores.parquet`'s score, bit for bit, in every cell.
fn simat_at_1_is_the_score(run: &Path, metrics: &BTreeMap<Key, (f64, i64)>) {
    let b = simat::io::read_all(&run.join("score/scores.parquet")).unwrap();
    let st = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
    let (heads, split, field) = (st("heads"), st("split"), st("field"));
    let lam = b
        .column_by_name("lam")
        .unwrap()
        .as_primitive::<Float64Type>();
    let score = b
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert!(b.num_rows() > 0);
    for i in 0..b.num_rows() {
        let key = (
            heads.value(i).to_string(),
            lam.value(i).to_bits(),
            split.value(i).to_string(),
            field.value(i).to_string(),
            "simat".to_string(),
            1,
        );
        assert_eq!(
            metrics[&key].0.to_bits(),
            score.value(i).to_bits(),
            "{key:?}"
        );
    }
}

#[test]
fn ranked_metrics_equal_the_numpy_reference() {
    let demo = demo_run();
    let dir = tempdir();
    // The demo's own score: the labels, at the default k (1 and 5).
    let labels = metrics_of(&demo);
    assert_same(&labels, &reference_of(&demo, dir.path(), "1,5", &[]));
    simat_at_1_is_the_score(&demo, &labels);
    // A matrix oracle at 0.9 accepts other images than the labels: SIMAT@k and Recall@k part.
    let run = dir.path().join("matrix");
    copy_dir(&demo, &run);
    let m = dir.path().join("oracle.npy");
    let q = query_csv(&run, "SELECT * FROM queries", dir.path().join("q.csv"));
    let d = query_csv(&run, "SELECT * FROM dataset", dir.path().join("d.csv"));
    reference(&["matrix", s(&d), s(&q), s(&m), "11"]);
    run_ok(
        &[
            "score",
            s(&run),
            "--oracle",
            s(&m),
            "--threshold",
            "0.9",
            "--at",
            "1,2,5",
        ],
        0,
    );
    let ours = metrics_of(&run);
    assert_same(
        &ours,
        &reference_of(&run, dir.path(), "1,2,5", &[s(&m), "0.9"]),
    );
    simat_at_1_is_the_score(&run, &ours);
    let at = |metric: &str, k: i32| {
        ours[&(
            "none".to_string(),
            1.0f64.to_bits(),
            "all".to_string(),
            "all".to_string(),
            metric.to_string(),
            k,
        )]
            .0
    };
    assert!(at("simat", 5) != at("recall", 5), "the oracle is not used");
    assert!(at("simat", 1) < at("simat", 2) && at("simat", 2) < at("simat", 5));
}

#[test]
fn a_k_beyond_the_retrieved_is_refused_naming_retrieves_k() {
    let demo = demo_run();
    let dir = tempdir();
    let run = dir.path().join("run");
    copy_dir(&demo, &run);
    let out = simat()
        .args(["score", s(&run), "--at", "1,10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--at 10") && stderr(&out).contains("k = 5"),
        "{}",
        stderr(&out)
    );
    let zero = run_ok(&["score", s(&run), "--at", "0"], 2);
    assert!(stderr(&zero).contains("at"), "{}", stderr(&zero));
    // Nothing was written over the demo's scores.
    assert_eq!(
        std::fs::read(run.join("score/metrics.parquet")).unwrap(),
        std::fs::read(demo.join("score/metrics.parquet")).unwrap()
    );
}

/// `(heads, λ bits, split, field)`.
type Cell = (String, u64, String, String);

/// Each cell's score and interval, from `scores.parquet`.
fn intervals_of(run: &Path) -> BTreeMap<Cell, (f64, f64, f64)> {
    let b = simat::io::read_all(&run.join("score/scores.parquet")).unwrap();
    let st = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
    let f = |name: &str| {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone()
    };
    let (heads, split, field) = (st("heads"), st("split"), st("field"));
    let (lam, score, lo, hi) = (f("lam"), f("score"), f("ci_low"), f("ci_high"));
    (0..b.num_rows())
        .map(|i| {
            (
                (
                    heads.value(i).to_string(),
                    lam.value(i).to_bits(),
                    split.value(i).to_string(),
                    field.value(i).to_string(),
                ),
                (score.value(i), lo.value(i), hi.value(i)),
            )
        })
        .collect()
}

#[test]
fn bootstrap_intervals_equal_the_numpy_reference_drawing_the_same_queries() {
    let demo = demo_run();
    let dir = tempdir();
    let run = dir.path().join("run");
    copy_dir(&demo, &run);
    let score = |threads: &str| {
        let out = simat()
            .env("RAYON_NUM_THREADS", threads)
            .args([
                "score",
                s(&run),
                "--oracle",
                "labels",
                "--bootstrap",
                "200",
                "--seed",
                "7",
                "--confidence",
                "0.9",
                "--force",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::read(run.join("score/scores.parquet")).unwrap()
    };
    // The draws do not depend on the threads.
    assert!(score("1") == score("2"), "other threads, other intervals");
    let ours = intervals_of(&run);
    let results = query_csv(
        &run,
        "SELECT heads, lam, query_id, split, field, success, weight FROM results",
        dir.path().join("results.csv"),
    );
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&reference_script(
        "bootstrap.py",
        &[s(&results), "200", "7", "0.9"],
    ))
    .unwrap();
    assert_eq!(theirs.len(), ours.len());
    for x in &theirs {
        let key = (
            x["heads"].as_str().unwrap().to_string(),
            x["lam"].as_f64().unwrap().to_bits(),
            x["split"].as_str().unwrap().to_string(),
            x["field"].as_str().unwrap().to_string(),
        );
        let (score, lo, hi) = ours[&key];
        let (rlo, rhi) = (
            x["ci_low"].as_f64().unwrap(),
            x["ci_high"].as_f64().unwrap(),
        );
        assert!(
            (lo - rlo).abs() <= 1e-9 && (hi - rhi).abs() <= 1e-9,
            "{key:?}: simat [{lo}, {hi}], reference [{rlo}, {rhi}]"
        );
        assert!(lo < hi, "{key:?}");
        // A 90 % interval of 200 resamples nearly always holds its own estimate.
        assert!(
            lo - 1.0 < score && score < hi + 1.0,
            "{key:?}: {score} [{lo}, {hi}]"
        );
    }
    // Another seed, other draws.
    run_ok(
        &[
            "score",
            s(&run),
            "--bootstrap",
            "200",
            "--seed",
            "8",
            "--confidence",
            "0.9",
        ],
        0,
    );
    assert_ne!(intervals_of(&run), ours);
}
