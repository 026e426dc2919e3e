//! `simat compare A B` against a numpy reference that draws the same resamples and sign flips
//! (`tests/reference/bootstrap.py compare`); a run against itself differs by nothing; runs of
//! other queries are refused naming a query.

use std::path::Path;

use crate::util::*;

const RESULTS: &str = "SELECT heads, lam, query_id, split, field, success, weight FROM results";

fn compare_json(a: &Path, b: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["compare", s(a), s(b), "--format", "json"];
    args.extend(extra);
    serde_json::from_slice(&run_ok(&args, 0).stdout).unwrap()
}

#[test]
fn compare_equals_the_numpy_reference_drawing_the_same_resamples_and_flips() {
    let demo = demo_run();
    let dir = tempdir();
    let noisy = dir.path().join("noisy");
    copy_dir(&demo, &noisy);
    // B's oracle is the labels with one entry in 200 flipped: a few queries change outcome.
    let q = query_csv(&demo, "SELECT * FROM queries", dir.path().join("q.csv"));
    let d = query_csv(&demo, "SELECT * FROM dataset", dir.path().join("d.csv"));
    let m = dir.path().join("noisy.npy");
    reference_script(
        "ranked_metrics.py",
        &["matrix", s(&d), s(&q), s(&m), "5", "0.005"],
    );
    run_ok(
        &["score", s(&noisy), "--oracle", s(&m), "--threshold", "0.5"],
        0,
    );
    let extra = [
        "--bootstrap",
        "200",
        "--permutations",
        "2000",
        "--seed",
        "3",
        "--confidence",
        "0.9",
    ];
    let ours = compare_json(&demo, &noisy, &extra);
    let (ra, rb) = (
        query_csv(&demo, RESULTS, dir.path().join("a.csv")),
        query_csv(&noisy, RESULTS, dir.path().join("b.csv")),
    );
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&reference_script(
        "bootstrap.py",
        &["compare", s(&ra), s(&rb), "200", "2000", "3", "0.9"],
    ))
    .unwrap();
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours.len(), 6 * 3, "six λ, three splits");
    let mut some_differ = false;
    for (x, y) in ours.iter().zip(&theirs) {
        for k in ["heads", "lam", "split", "n_queries", "discordant"] {
            assert_eq!(x[k], y[k], "{k}: {x} vs {y}");
        }
        for k in ["a", "b", "difference", "ci_low", "ci_high"] {
            let (u, v) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!((u - v).abs() <= 1e-9, "{k}: {x} vs {y}");
        }
        // Counts of permutations: exactly the same.
        assert_eq!(x["p_value"], y["p_value"], "{x} vs {y}");
        some_differ |= x["discordant"].as_u64().unwrap() > 0;
    }
    assert!(some_differ, "the noisy oracle changed no outcome");
    // The table names both runs and every row.
    let table = stdout(&run_ok(&["compare", s(&demo), s(&noisy), "--lam", "1"], 0));
    assert!(
        table.contains("A = ") && table.contains("interval"),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("none")).count(),
        3,
        "{table}"
    );
}

#[test]
fn a_run_against_itself_differs_by_nothing_and_other_queries_are_refused() {
    let demo = demo_run();
    let same = compare_json(&demo, &demo, &["--bootstrap", "50", "--permutations", "50"]);
    assert!(!same.is_empty());
    for x in &same {
        assert_eq!(x["difference"], 0.0, "{x}");
        assert_eq!(
            (x["ci_low"].clone(), x["ci_high"].clone()),
            (0.0.into(), 0.0.into())
        );
        assert_eq!(x["p_value"], 1.0, "{x}");
        assert_eq!(x["discordant"], 0, "{x}");
    }
    let dir = tempdir();
    let fewer = dir.path().join("fewer.parquet");
    run_ok(
        &[
            "query",
            s(&demo),
            "SELECT * EXCLUDE (run) FROM results WHERE query_id <> 17",
            "--out",
            s(&fewer),
        ],
        0,
    );
    let out = simat()
        .args(["compare", s(&demo), s(&fewer)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("query 17") && stderr(&out).contains("different query sets"),
        "{}",
        stderr(&out)
    );
}
