//! `simat retrieve` in blocks and in parts, on the README's demo run: the retrievals of a run
//! in parts, of any block size, and of a run resumed from answered blocks are the bytes of the
//! run in one go; the text-only baseline equals a numpy reference.

use std::path::Path;

use crate::util::*;

/// The demo's retrieve, as its pipeline configures it, with `extra` flags.
fn retrieve(run: &Path, extra: &[&str]) -> Vec<String> {
    ["retrieve", s(run), "--lambdas", "0,0.5,1,2,4,8"]
        .iter()
        .chain(extra)
        .map(|x| x.to_string())
        .collect()
}

fn go(args: Vec<String>, code: i32) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&refs, code)
}

/// The retrieve stage's fingerprint, outputs and counters in `run`'s manifest.
fn entry(run: &Path) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    m["stages"]["retrieve"].clone()
}

/// A copy of the demo run at `to` whose retrieve must run again (its folder is gone).
fn demo_without_retrievals(demo: &Path, to: &Path) {
    copy_dir(demo, to);
    std::fs::remove_dir_all(to.join("retrieve")).unwrap();
}

fn same_as_the_demo(run: &Path, demo: &Path) {
    let file = "retrieve/retrievals.parquet";
    assert!(
        std::fs::read(run.join(file)).unwrap() == std::fs::read(demo.join(file)).unwrap(),
        "{file} differs from the demo's"
    );
    let (a, b) = (entry(run), entry(demo));
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    assert_eq!(a["outputs"][0], b["outputs"][0]);
}

#[test]
fn retrieve_in_parts_equals_retrieve_in_one_go() {
    let demo = demo_run();
    let dir = tempdir();
    let run = dir.path().join("parted");
    demo_without_retrievals(&demo, &run);
    // 10,228 queries in blocks of 1,000: 11 blocks, so the four parts have 3, 3, 3 and 2.
    let part = |p: &str| retrieve(&run, &["--query-block", "1000", "--shard", p]);
    let spawn = |p: &str| {
        simat()
            .args(part(p))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Two parts at once in one run directory.
    let (a, b) = (spawn("2/4"), spawn("0/4"));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let commit = retrieve(&run, &["--query-block", "1000", "--commit"]);
    let early = go(commit.clone(), 2);
    assert!(
        stderr(&early).contains("1/4") && stderr(&early).contains("3/4"),
        "{}",
        stderr(&early)
    );
    for p in ["3/4", "1/4"] {
        go(part(p), 0);
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("retrieve/parts/3-of-4.json")).unwrap())
            .unwrap();
    let files: Vec<&str> = record["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["chunks/000009.parquet", "chunks/000010.parquet"]);
    go(commit, 0);
    same_as_the_demo(&run, &demo);
    assert_eq!(entry(&run)["counters"]["chunks_resumed"], 11);
    assert!(!run.join("retrieve/chunks").exists());
    // Committed: a part again is fresh and does nothing.
    let again = go(part("1/4"), 0);
    assert!(stderr(&again).contains("committed"), "{}", stderr(&again));
}

#[test]
fn a_retrieve_resumes_from_the_blocks_it_answered_and_blocks_change_no_byte() {
    let demo = demo_run();
    let dir = tempdir();
    let run = dir.path().join("resumed");
    demo_without_retrievals(&demo, &run);
    // A run in blocks of 700 answers the first 5 of its 15 and stops, as a killed one would.
    go(
        retrieve(&run, &["--query-block", "700", "--shard", "0/3"]),
        0,
    );
    go(retrieve(&run, &["--query-block", "700"]), 0);
    same_as_the_demo(&run, &demo);
    assert_eq!(entry(&run)["counters"]["chunks_resumed"], 5);
    // Answered blocks of another size are not taken for these: all is answered again.
    std::fs::remove_dir_all(run.join("retrieve")).unwrap();
    go(
        retrieve(&run, &["--query-block", "3000", "--shard", "1/2"]),
        0,
    );
    assert!(run.join("retrieve/chunks/000003.parquet").is_file());
    go(retrieve(&run, &["--query-block", "2000"]), 0);
    same_as_the_demo(&run, &demo);
    assert_eq!(entry(&run)["counters"]["chunks_resumed"], 0);
}

#[test]
fn the_text_only_baseline_equals_a_numpy_reference_at_every_lambda() {
    let demo = demo_run();
    let dir = tempdir();
    let run = dir.path().join("text");
    copy_dir(&demo, &run);
    go(retrieve(&run, &["--text-baseline"]), 0);
    run_ok(&["score", s(&run), "--oracle", "labels"], 0);
    let export = |store: &str, name: &str| {
        let out = dir.path().join(name);
        run_ok(
            &[
                "export",
                s(&run.join("embed").join(store)),
                "--out",
                s(&out),
            ],
            0,
        );
        out
    };
    let (img, cap) = (
        export("image_embeddings.arrow", "img.npy"),
        export("caption_embeddings.arrow", "cap.npy"),
    );
    let queries = query_csv(
        &run,
        "SELECT query_id, dataset_id, target_triplet_id FROM queries",
        dir.path().join("queries.csv"),
    );
    let keys = |p: &Path| p.with_extension("keys.csv");
    let out = reference_script(
        "text_only.py",
        &[
            s(&img),
            s(&keys(&img)),
            s(&cap),
            s(&keys(&cap)),
            s(&queries),
        ],
    );
    let reference: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first = reference["first"].as_object().unwrap();
    assert!(
        reference["skipped"].as_array().unwrap().len() * 100 < first.len(),
        "too many near-ties: {}",
        reference["skipped"]
    );
    // simat's first text-only retrieval of every query, at each λ.
    let rows = run_ok(
        &[
            "query",
            s(&run),
            "SELECT query_id, lam, dataset_id FROM retrievals WHERE heads = 'text-only' AND rank = 0",
            "--format",
            "json",
        ],
        0,
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&rows.stdout).unwrap();
    assert_eq!(rows.len(), 10_228 * 6);
    let mut checked = 0;
    for r in &rows {
        if let Some(want) = first.get(&r["query_id"].to_string()) {
            assert_eq!(&r["dataset_id"], want, "{r}");
            checked += 1;
        }
    }
    assert_eq!(checked, first.len() * 6);
    // Scored like any head set: one score at every λ, and the image's own head set unchanged.
    let scores = run_ok(
        &[
            "query",
            s(&run),
            "SELECT heads, lam, score FROM scores WHERE split = 'all' AND field = 'all'",
            "--format",
            "json",
        ],
        0,
    );
    let scores: Vec<serde_json::Value> = serde_json::from_slice(&scores.stdout).unwrap();
    let text: Vec<f64> = scores
        .iter()
        .filter(|r| r["heads"] == "text-only")
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert_eq!(text.len(), 6);
    assert!(text.iter().all(|&v| v == text[0]));
    let demo_scores = simat::tables::retrievals::ScoresFile::read(&demo.join("score/scores.json"))
        .unwrap()
        .scores;
    let ours = simat::tables::retrievals::ScoresFile::read(&run.join("score/scores.json"))
        .unwrap()
        .scores;
    let none: Vec<f64> = ours
        .iter()
        .filter(|r| r.heads == "none")
        .map(|r| r.score)
        .collect();
    assert_eq!(
        none,
        demo_scores.iter().map(|r| r.score).collect::<Vec<_>>()
    );
}
