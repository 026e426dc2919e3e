//! `[sweep]`: many models through one pipeline. The trunk runs once; each model's branch in
//! `RUN/models/NAME/` writes what a run of that model alone writes, byte for byte; `simat query`
//! sees the branches as one table with a `model` column; a sweep's run stands for its models in
//! `simat leaderboard`; bad sweeps are refused before anything runs.

use std::path::Path;

use crate::util::*;

fn manifest(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_sweep_of_three_models_equals_three_runs_and_queries_as_one() {
    let dir = tempdir();
    let models = tiny_models();
    let paths: Vec<&Path> = models.iter().map(|(p, _)| p.as_path()).collect();
    let sweep = small_demo(dir.path(), "sweep.toml", &paths, true);
    let out = run_ok(&["run", s(&sweep)], 0);
    let run = dir.path().join("run");
    let text = stdout(&out);
    for (_, name) in &models {
        assert!(text.contains(&format!("model {name}:")), "{text}");
    }

    // The trunk ran once, in the run; each branch has only the model's stages, and its base.
    let trunk = manifest(&run);
    let trunk_stages: Vec<&String> = trunk["stages"].as_object().unwrap().keys().collect();
    for s in ["synth", "ingest", "triplets", "crops", "select", "queries"] {
        assert!(trunk_stages.iter().any(|t| *t == s), "{trunk_stages:?}");
    }
    for s in ["embed", "retrieve", "score", "report"] {
        assert!(!trunk_stages.iter().any(|t| *t == s), "{trunk_stages:?}");
    }
    for (model, name) in &models {
        let branch = run.join("models").join(name);
        let m = manifest(&branch);
        assert_eq!(m["base"], "../..");
        let stages: Vec<&String> = m["stages"].as_object().unwrap().keys().collect();
        assert_eq!(stages, ["embed", "report", "retrieve", "score"], "{name}");
        // Each model's report draws all three models.
        assert_eq!(m["stages"]["report"]["counters"]["runs"], 3, "{name}");

        // The model alone, in a run of its own: the same tables, byte for byte.
        let alone = tempdir();
        let p = small_demo(alone.path(), "alone.toml", &[model.as_path()], false);
        run_ok(&["run", s(&p), "--until", "score"], 0);
        for stage in ["embed", "retrieve", "score"] {
            let a = stage_tables(&branch.join(stage));
            let b = stage_tables(&alone.path().join("run").join(stage));
            assert!(!a.is_empty(), "{name} {stage}");
            assert_eq!(
                a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                b.iter().map(|(n, _)| n).collect::<Vec<_>>()
            );
            for ((file, x), (_, y)) in a.iter().zip(&b) {
                assert!(
                    x == y,
                    "{name}: {stage}/{file} differs from the model's own run"
                );
            }
        }
        // And the same fingerprints: a branch is planned as its own run would be.
        let own = manifest(&alone.path().join("run"));
        for stage in ["embed", "retrieve", "score"] {
            assert_eq!(
                m["stages"][stage]["fingerprint"], own["stages"][stage]["fingerprint"],
                "{name} {stage}"
            );
        }
        // `simat query` unions the branches under `model`; a run of one model has the column
        // too, in its files.
        let sql = format!(
            "SELECT COUNT(*) AS n, SUM(CAST(success AS INT)) AS hits FROM results WHERE model = '{name}'"
        );
        let swept = stdout(&run_ok(&["query", s(&run), &sql, "--format", "csv"], 0));
        let single = stdout(&run_ok(
            &[
                "query",
                s(&alone.path().join("run")),
                &sql,
                "--format",
                "csv",
            ],
            0,
        ));
        assert_eq!(swept, single, "{name}");
        assert!(swept.lines().nth(1).is_some_and(|l| !l.starts_with("0,")));
    }
    let counts = stdout(&run_ok(
        &[
            "query",
            s(&run),
            "SELECT model, COUNT(*) AS n FROM scores GROUP BY model ORDER BY model",
            "--format",
            "csv",
        ],
        0,
    ));
    let names: Vec<&str> = counts
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(names, ["tiny", "tiny-clip-hf", "tiny-world"]);
    // Trunk tables have no model column; they are there once.
    let q = stdout(&run_ok(
        &[
            "query",
            s(&run),
            "SELECT COUNT(*) AS n FROM queries",
            "--format",
            "csv",
        ],
        0,
    ));
    let queries = stdout(&run_ok(
        &[
            "inspect",
            s(&run.join("queries/queries.parquet")),
            "-n",
            "0",
        ],
        0,
    ));
    let n: String = q.lines().nth(1).unwrap().to_string();
    assert!(queries.contains(&format!("{n} rows")), "{q}\n{queries}");

    // The leaderboard of the sweep's run ranks its three models.
    let board: serde_json::Value =
        serde_json::from_slice(&run_ok(&["leaderboard", s(&run), "--format", "json"], 0).stdout)
            .unwrap();
    let rows = board.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{board}");
    let mut labels: Vec<&str> = rows.iter().map(|r| r["run"].as_str().unwrap()).collect();
    labels.sort();
    assert_eq!(labels, ["tiny", "tiny-clip-hf", "tiny-world"]);

    let status = stdout(&run_ok(&["status", s(&run)], 0));
    for (_, name) in &models {
        assert!(
            status.contains(&format!("model  {name}: 4 of 4 stages done")),
            "{status}"
        );
    }
    let branch_status = stdout(&run_ok(&["status", s(&run.join("models/tiny"))], 0));
    assert_eq!(branch_status.matches("fresh").count(), 4, "{branch_status}");

    // Run again: every stage of the trunk and of every branch is fresh.
    let again = stdout(&run_ok(&["run", s(&sweep)], 0));
    assert!(!again.contains(" ran "), "{again}");
    assert_eq!(again.matches(" fresh ").count(), 6 + 3 * 4, "{again}");

    // A branch's lost table is all that a rerun recomputes: the same bytes again, so neither its
    // report nor the other models' reports (which read its scores) rerun.
    let lost = run.join("models/tiny-world/score/scores.parquet");
    let before = std::fs::read(&lost).unwrap();
    std::fs::remove_file(&lost).unwrap();
    let mended = stdout(&run_ok(&["run", s(&sweep)], 0));
    assert_eq!(mended.matches(" ran ").count(), 1, "{mended}");
    assert_eq!(std::fs::read(&lost).unwrap(), before);
    // A trunk stage forced reruns what depends on it in every branch (retrieve, score, report),
    // not embed, which does not read the queries.
    let forced = stdout(&run_ok(&["run", s(&sweep), "--force", "queries"], 0));
    assert_eq!(forced.matches(" ran ").count(), 1 + 3 * 3, "{forced}");
    assert_eq!(forced.matches("  embed     fresh").count(), 3, "{forced}");
}

#[test]
fn a_missing_model_two_of_one_name_and_a_model_in_embed_are_refused_before_anything_runs() {
    let dir = tempdir();
    let models = tiny_models();
    let missing = dir.path().join("no-such-model");
    let p = small_demo(dir.path(), "missing.toml", &[&models[0].0, &missing], true);
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    assert!(
        err.contains("[sweep] models[1]") && err.contains("no-such-model"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists(), "nothing may run: {err}");

    // A copy of tiny-clip is another folder with the same name.
    let copy = dir.path().join("copy");
    copy_dir(&models[0].0, &copy);
    let p = small_demo(dir.path(), "twins.toml", &[&models[0].0, &copy], true);
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    assert!(err.contains("two models are named `tiny`"), "{err}");
    let p = small_demo(
        dir.path(),
        "twice.toml",
        &[&models[0].0, &models[0].0],
        true,
    );
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    assert!(err.contains("is listed twice"), "{err}");

    let p = small_demo(dir.path(), "both.toml", &[&models[0].0], true);
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "[embed]\n",
        &format!("[embed]\nmodel = {:?}\n", s(&models[0].0)),
    );
    std::fs::write(&p, text).unwrap();
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    assert!(
        err.contains("[embed] model: a sweep gives each branch"),
        "{err}"
    );

    let p = small_demo(dir.path(), "one.toml", &[&models[0].0], true);
    let err = stderr(&run_ok(&["run", s(&p), "--model", "nope"], 2));
    assert!(err.contains("the sweep's models are tiny"), "{err}");
    assert!(!dir.path().join("run").exists(), "nothing may run: {err}");

    // The committed sweeps load from a relative path: their model folders resolve once.
    std::fs::create_dir_all(dir.path().join("fresh")).unwrap();
    for p in ["pipelines/sweep.toml", "pipelines/text_encoders.toml"] {
        let out = simat()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["status", s(&dir.path().join("fresh")), "--pipeline", p])
            .output()
            .unwrap();
        assert!(out.status.success(), "{p}: {}", stderr(&out));
    }
}

/// `[sweep] text_models`: one image model, the CLIP's own text tower and the tiny BERT. Each
/// branch trains its pairs' heads at every τ: square for the tower, 64 × 32 for the BERT's
/// 32-dimensional texts. The report's "Score vs τ" has a line per text encoder, each point the
/// test score at the λ of the best dev score, which is the leaderboard's best-dev number.
#[test]
fn a_sweep_over_text_encoders_trains_heads_for_each_and_plots_simat_against_tau() {
    let dir = tempdir();
    let p = small_text_encoders(dir.path());
    run_ok(&["run", s(&p)], 0);
    let run = dir.path().join("run");
    let trunk = manifest(&run);
    assert!(trunk["stages"].get("coco").is_none() && trunk["stages"].get("adapt").is_none());
    for (name, d_txt) in [("tower", 64), ("tiny-bert", 32)] {
        let branch = run.join("models").join(name);
        let h = simat::model::heads::Heads::load(&branch.join("adapt/heads/head_tau0.1")).unwrap();
        assert_eq!((h.img.weight.rows, h.img.weight.cols), (64, 64), "{name}");
        assert_eq!(
            (h.txt.weight.rows, h.txt.weight.cols),
            (64, d_txt),
            "{name}"
        );
        let words =
            simat::io::store::EmbeddingStore::open(&branch.join("embed/word_embeddings.arrow"))
                .unwrap()
                .to_matrix();
        assert_eq!(
            words.cols, d_txt,
            "{name}: the words come from the branch's text encoder"
        );
        let m = manifest(&branch);
        assert_eq!(m["stages"]["adapt"]["counters"]["text_dim"], d_txt);
    }

    let board: serde_json::Value =
        serde_json::from_slice(&run_ok(&["leaderboard", s(&run), "--format", "json"], 0).stdout)
            .unwrap();
    let labels = ["tower", "tiny-bert"];
    let runs: Vec<simat::report::RunScores> = labels
        .iter()
        .map(|l| simat::report::RunScores {
            label: l.to_string(),
            file: simat::tables::retrievals::ScoresFile::read(
                &run.join("models").join(l).join("score/scores.json"),
            )
            .unwrap(),
            scored_at: None,
        })
        .collect();
    let report = simat::report::Report {
        runs,
        breakdown: vec![],
        max_rows: 0,
        heads: "none".into(),
        sheets: vec![],
        has_pixels: false,
    };
    let points = report.tau_points();
    for (r, label) in labels.iter().enumerate() {
        let taus: Vec<f64> = points[r].iter().map(|p| p.0).collect();
        assert_eq!(taus, [0.01, 0.03, 0.1, 0.3, 1.0], "{label}");
        for (tau, score, _) in &points[r] {
            let row = board
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["run"] == *label && e["heads"] == format!("head_tau{tau}"))
                .unwrap_or_else(|| panic!("{label} τ = {tau} not in {board}"));
            assert!(
                (row["test"].as_f64().unwrap() - score).abs() < 1e-9,
                "{label} τ = {tau}"
            );
        }
    }
    let html = std::fs::read_to_string(run.join("models/tower/report/report.html")).unwrap();
    let tau = &html[html.find("<section id=\"tau\">").expect("a τ section")..];
    let tau = &tau[..tau.find("</section>").unwrap()];
    assert!(tau.contains("tower") && tau.contains("tiny-bert"), "{tau}");
}
