//! The run engine through `simat run`: freshness, stale reasons, --force, --until, status.

use std::path::{Path, PathBuf};

use crate::util::*;

/// A small pipeline (synthetic VG, no rendering) in `dir`; returns its path.
fn pipeline(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("pipeline.toml");
    std::fs::write(
        &path,
        format!(
            "run_dir = \"run\"\n\n[synth]\nimage_count = 300\nseed = 11\nplant_rate = 0.1\n\n[ingest]\n\n[triplets]\nmin_region_side = 32\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn verbs(err: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next()) {
                (Some(v @ ("Fresh" | "Running" | "Stale")), Some(stage)) => {
                    Some(format!("{v} {}", stage.trim_end_matches(':')))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn second_run_recomputes_nothing() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    let first = run_ok(&["run", s(&p)], 0);
    assert_eq!(
        verbs(&stderr(&first)),
        ["Running synth", "Running ingest", "Running triplets"]
    );
    let manifest = dir.path().join("run/manifest.json");
    let before = std::fs::read(&manifest).unwrap();
    let mtime = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    let second = run_ok(&["run", s(&p)], 0);
    assert_eq!(
        verbs(&stderr(&second)),
        ["Fresh synth", "Fresh ingest", "Fresh triplets"]
    );
    assert_eq!(std::fs::read(&manifest).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        mtime
    );
    assert!(stdout(&second).contains("triplets; the most frequent"));
}

#[test]
fn config_change_reruns_only_downstream_with_the_exact_reason() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    run_ok(&["run", s(&p)], 0);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("min_region_side = 32", "min_region_side = 40");
    std::fs::write(&p, text).unwrap();
    let status = stdout(&run_ok(
        &["status", "--pipeline", s(&p), s(&dir.path().join("run"))],
        0,
    ));
    assert!(
        status.contains("stale  triplets")
            && status.contains("config `min_region_side` changed (32 → 40)"),
        "{status}"
    );
    let out = run_ok(&["-v", "run", s(&p)], 0);
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.trim() == "Stale triplets: config `min_region_side` changed (32 → 40)"),
        "{err}"
    );
    assert_eq!(
        verbs(&err),
        [
            "Fresh synth",
            "Fresh ingest",
            "Stale triplets",
            "Running triplets"
        ]
    );
}

#[test]
fn force_reruns_the_stage_and_its_dependents_and_until_stops() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    let out = run_ok(&["run", s(&p), "--until", "ingest"], 0);
    assert_eq!(verbs(&stderr(&out)), ["Running synth", "Running ingest"]);
    assert!(!dir.path().join("run/triplets").exists());
    run_ok(&["run", s(&p)], 0);
    let out = run_ok(&["run", s(&p), "--force", "ingest"], 0);
    assert_eq!(
        verbs(&stderr(&out)),
        ["Fresh synth", "Running ingest", "Running triplets"]
    );
    let out = run_ok(&["run", s(&p), "--force", "nonsense"], 2);
    assert!(stderr(&out).contains("`--force` names a stage that is not in this pipeline"));
}

#[test]
fn a_tampered_output_is_detected_and_rebuilt() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    run_ok(&["run", s(&p)], 0);
    let regions = dir.path().join("run/triplets/regions.parquet");
    let good = std::fs::read(&regions).unwrap();
    std::fs::remove_file(&regions).unwrap();
    let out = run_ok(&["-v", "run", s(&p)], 0);
    assert!(
        stderr(&out).contains("Stale triplets: output regions.parquet is missing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&regions).unwrap(), good);
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&regions, &bad).unwrap();
    let out = run_ok(&["-v", "run", s(&p)], 0);
    assert!(stderr(&out).contains("Stale triplets: output regions.parquet was modified"));
    assert_eq!(std::fs::read(&regions).unwrap(), good);
}

#[test]
fn status_and_inspect_describe_a_run() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    run_ok(&["run", s(&p)], 0);
    let run = dir.path().join("run");
    let status = stdout(&run_ok(&["status", s(&run)], 0));
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines.len(), 3, "{status}");
    for (line, stage) in lines.iter().zip(["synth", "ingest", "triplets"]) {
        assert!(
            line.trim_start().starts_with(&format!("fresh  {stage} (")),
            "{line}"
        );
        assert!(line.contains("rows") && line.ends_with('s'), "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run_ok(&["status", "--json", s(&run)], 0))).unwrap();
    assert_eq!(json["stages"]["ingest"]["status"], "done");

    let out = stdout(&run_ok(
        &[
            "inspect",
            s(&run.join("triplets/triplets.parquet")),
            "-n",
            "3",
        ],
        0,
    ));
    assert!(out.contains("caption: Utf8"), "{out}");
    assert!(out.contains("first 3 rows"), "{out}");
    let rows = json["stages"]["triplets"]["outputs"][1]["rows"]
        .as_u64()
        .unwrap();
    assert!(out.contains(&format!("{rows} rows in")), "{out}");

    let out = run_ok(&["inspect", s(&p)], 2);
    assert!(stderr(&out).contains("neither a Parquet file"));
    let out = run_ok(&["status", s(dir.path())], 2);
    assert!(stderr(&out).contains("no manifest.json"));
}

#[test]
fn a_bad_pipeline_names_the_problem() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "minimum_side = 3\n");
    let out = run_ok(&["run", s(&p)], 2);
    let err = stderr(&out);
    assert!(
        err.contains("pipeline.toml") && err.contains("minimum_side"),
        "{err}"
    );
    let p = dir.path().join("novg.toml");
    std::fs::write(&p, "run_dir = \"run\"\n[ingest]\n").unwrap();
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    assert!(
        err.contains("stage `ingest`: needs `vg`") && err.contains("--vg DIR (`vg` in [ingest])"),
        "{err}"
    );
}

#[test]
fn select_keeps_triplets_with_enough_images_and_feeds_queries() {
    let dir = tempdir();
    let p = pipeline(
        dir.path(),
        "[select]\nmin_images = 3\n[queries]\nseed = 2\n",
    );
    run_ok(&["run", s(&p)], 0);
    let run = dir.path().join("run");
    let d = simat::tables::dataset::Dataset::read(&run.join("select/dataset.parquet")).unwrap();
    assert!(!d.is_empty());
    let mut images: std::collections::BTreeMap<i64, std::collections::BTreeSet<i64>> =
        Default::default();
    for i in 0..d.len() {
        images
            .entry(d.triplet_id[i])
            .or_default()
            .insert(d.image_id[i]);
    }
    assert!(images.values().all(|s| s.len() >= 3));
    // Every triplet with 3+ images among the regions is kept (labels oracle keeps all regions).
    let regions = simat::io::read_all(&run.join("triplets/regions.parquet")).unwrap();
    let tid = simat::tables::dataset::ints(&regions, "triplet_id", &run).unwrap();
    let img = simat::tables::dataset::ints(&regions, "image_id", &run).unwrap();
    let mut all: std::collections::BTreeMap<i64, std::collections::BTreeSet<i64>> =
        Default::default();
    for (t, i) in tid.iter().zip(&img) {
        all.entry(*t).or_default().insert(*i);
    }
    let want = all.values().filter(|s| s.len() >= 3).count();
    assert_eq!(images.len(), want);
    let q = simat::tables::dataset::Queries::read(&run.join("queries/queries.parquet")).unwrap();
    assert!(!q.is_empty());
    assert!(q.dataset_id.iter().all(|&i| (i as usize) < d.len()));
}

#[test]
fn run_dir_flag_moves_the_whole_run() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    let other = dir.path().join("elsewhere");
    run_ok(
        &["run", s(&p), "--run-dir", s(&other), "--until", "ingest"],
        0,
    );
    assert!(other.join("synth/vg/relationships.json").is_file());
    assert!(other.join("ingest/relationships.parquet").is_file());
    assert!(!dir.path().join("run").exists());
}

#[test]
fn status_alone_sees_an_upstream_rerun() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "[select]\n");
    run_ok(&["run", s(&p)], 0);
    let run = dir.path().join("run");
    let vocab = dir.path().join("v.toml");
    std::fs::write(
        &vocab,
        "subjects = [\"man\"]\n[relations]\n\"on\" = [\"sitting on\"]\n",
    )
    .unwrap();
    run_ok(&["triplets", "--run", s(&run), "--vocab", s(&vocab)], 0);
    let status = stdout(&run_ok(&["status", s(&run)], 0));
    let select = status.lines().find(|l| l.contains("select")).unwrap();
    assert!(
        select.trim_start().starts_with("stale") && select.ends_with("upstream `triplets` changed"),
        "{status}"
    );
}

/// Every bad value of a pipeline is reported before any stage runs, each with its section and
/// key (and flag); so is a need that nothing provides.
#[test]
fn every_bad_value_is_reported_before_anything_runs() {
    let dir = tempdir();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "run_dir = \"run\"\n[synth]\nplant_rate = 1.5\n[ingest]\n[triplets]\n[crops]\nchunk_images = 0\n[select]\nthreshold = nan\n[queries]\ntest_fraction = 2\n[embed]\nmodel = \"m\"\nbatch_size = 0\n[retrieve]\nk = 0\n[score]\nsplit = \"sometimes\"\n[sccore]\n",
    )
    .unwrap();
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    for want in [
        "`[synth] plant_rate` (--plant-rate): 1.5 is not between 0 and 1",
        "`[crops] chunk_images` (--chunk-images): must be at least 1",
        "`[select] threshold` (--threshold): must be a number",
        "`[queries] test_fraction` (--test-fraction): 2 is not between 0 and 1",
        "`[embed] batch_size` (--batch-size): must be at least 1",
        "`[retrieve] k` (--k): must be at least 1",
        "`[score] split` (--split): `sometimes`: expected dev, test or all",
        "[sccore] is not a stage; the stages are synth, import, ingest",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    assert!(!dir.path().join("run").exists(), "a stage ran");
    // A need nothing provides: before anything runs too.
    std::fs::write(
        &p,
        "run_dir = \"run\"\n[synth]\n[ingest]\n[triplets]\n[select]\noracle = \"model\"\n",
    )
    .unwrap();
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    assert!(
        err.contains("stage `select`: needs `region_scores`")
            && err.contains("`simat oracle` (or its section in a pipeline) writes it"),
        "{err}"
    );
    assert!(!dir.path().join("run/synth").exists(), "a stage ran");
}

/// A reader that is gone before the first line (`simat status RUN | head -0`) ends the command
/// quietly: exit 0 and no panic, for the tools that print to stdout.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    let run = demo_run();
    let results = run.join("score/results.parquet");
    for args in [
        vec!["status", s(&run)],
        vec!["inspect", s(&results)],
        vec!["query", s(&run), "SELECT * FROM results"],
        vec!["query", s(&run), "--tables"],
    ] {
        let mut child = simat()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `status RUN --pipeline P` plans P against RUN, not against P's own `run_dir`: the README's demo,
/// run elsewhere with `--run-dir`, is fresh stage by stage.
#[test]
fn status_with_a_pipeline_honours_the_run_directory_given() {
    let run = demo_run();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The demo's pipeline with a run_dir that does not exist (and its model path absolute).
    let dir = tempdir();
    let text = std::fs::read_to_string(root.join("pipelines/demo.toml"))
        .unwrap()
        .replace("\"../runs/demo\"", "\"no-such-run\"")
        .replace("\"../data/", &format!("\"{}/data/", root.display()));
    let pipeline = dir.path().join("demo.toml");
    std::fs::write(&pipeline, text).unwrap();
    let out = stdout(&run_ok(&["status", s(&run), "--pipeline", s(&pipeline)], 0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    for line in lines {
        assert!(line.trim_start().starts_with("fresh"), "{out}");
    }
}

/// The stage outputs of a run of [`pipeline`], by stage and file.
fn outputs(run: &Path) -> Vec<(String, Vec<(String, String)>)> {
    ["ingest", "triplets"]
        .iter()
        .map(|s| (s.to_string(), hashes(&run.join(s))))
        .collect()
}

/// Hold `RUN/.lock` as another simat would: flock on it, with its text.
fn hold_lock(run: &Path) -> std::fs::File {
    std::fs::create_dir_all(run).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(run.join(".lock"))
        .unwrap();
    file.lock().unwrap();
    std::fs::write(
        run.join(".lock"),
        "pid 4242\ncommand simat run other.toml\nsince 2026-11-28T10:00:00Z\n",
    )
    .unwrap();
    file
}

#[test]
fn a_held_run_directory_refuses_a_second_run_naming_the_holder() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    let run = dir.path().join("run");
    let held = hold_lock(&run);
    let out = run_ok(&["run", s(&p)], 2);
    let err = stderr(&out);
    assert!(
        err.contains(
            "is in use by process 4242 (`simat run other.toml`, since 2026-11-28T10:00:00Z)"
        ) && err.contains("--wait"),
        "{err}"
    );
    assert!(!run.join("manifest.json").exists() && !run.join("synth").exists());
    drop(held);

    // On a finished run: a forced rerun and a single stage's subcommand are refused and change
    // nothing; readers do not take the lock.
    run_ok(&["run", s(&p)], 0);
    let manifest = std::fs::read(run.join("manifest.json")).unwrap();
    let before = outputs(&run);
    let held = hold_lock(&run);
    let out = run_ok(&["run", s(&p), "--force", "ingest"], 2);
    assert!(stderr(&out).contains("in use by process 4242"));
    let out = run_ok(&["triplets", s(&run), "--force"], 2);
    assert!(stderr(&out).contains("in use by process 4242"));
    assert_eq!(std::fs::read(run.join("manifest.json")).unwrap(), manifest);
    assert_eq!(outputs(&run), before);
    run_ok(&["status", s(&run)], 0);
    run_ok(&["query", s(&run), "SELECT count(*) AS n FROM triplets"], 0);
    drop(held);
}

#[test]
fn wait_runs_after_the_holder_and_gives_a_single_runs_outputs() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    let run = dir.path().join("run");
    let held = hold_lock(&run);
    let mut child = simat()
        .args(["run", "--wait", s(&p)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "--wait should still be waiting for the holder"
    );
    assert!(!run.join("manifest.json").exists());
    // The holder ends cleanly: it empties the file, then lets go.
    held.set_len(0).unwrap();
    drop(held);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("Waiting for process 4242"), "{err}");
    assert!(!err.contains("took over"), "{err}");

    let single = tempdir();
    let q = pipeline(single.path(), "");
    run_ok(&["run", s(&q)], 0);
    assert_eq!(outputs(&run), outputs(&single.path().join("run")));
}

#[test]
fn two_concurrent_runs_one_runs_the_other_waits_or_is_refused() {
    let single = tempdir();
    let q = pipeline(single.path(), "");
    run_ok(&["run", s(&q)], 0);
    let want = outputs(&single.path().join("run"));

    for wait in [false, true] {
        let dir = tempdir();
        let p = pipeline(dir.path(), "");
        let spawn = || {
            let mut cmd = simat();
            cmd.arg("run");
            if wait {
                cmd.arg("--wait");
            }
            cmd.arg(s(&p))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
        for o in &outs {
            let err = String::from_utf8_lossy(&o.stderr);
            match o.status.code() {
                Some(0) => {}
                Some(2) if !wait => assert!(err.contains("is in use by process"), "{err}"),
                c => panic!("exit {c:?} (wait = {wait}): {err}"),
            }
        }
        assert!(codes.contains(&Some(0)), "{codes:?}");
        assert_eq!(outputs(&dir.path().join("run")), want, "wait = {wait}");
        // Whatever happened, the run is whole: a third run finds everything fresh.
        let out = run_ok(&["run", s(&p)], 0);
        assert_eq!(
            verbs(&stderr(&out)),
            ["Fresh synth", "Fresh ingest", "Fresh triplets"]
        );
    }
}

#[test]
fn the_lock_of_a_killed_run_is_taken_over_and_said() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    // What a SIGKILLed holder leaves: its text, and no lock (the kernel dropped it).
    std::fs::write(
        run.join(".lock"),
        "pid 4243\ncommand simat run killed.toml\nsince 2026-11-28T09:00:00Z\n",
    )
    .unwrap();
    let out = run_ok(&["run", s(&p)], 0);
    let err = stderr(&out);
    assert!(
        err.contains("took over the lock") && err.contains("process 4243"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(run.join(".lock")).unwrap(), "");
    let out = run_ok(&["run", s(&p)], 0);
    assert!(!stderr(&out).contains("took over"));
}

#[test]
fn select_refuses_an_oracle_matrix_with_nan_naming_the_cell() {
    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    run_ok(&["run", s(&p)], 0);
    let run = dir.path().join("run");
    let regions = simat::io::read_all(&run.join("triplets/regions.parquet")).unwrap();
    let tid = col_i64(&regions, "triplet_id");
    let rid = col_i64(&regions, "region_id");
    let cols = *tid.iter().max().unwrap() as usize + 1;
    let mut m = simat::linalg::Matrix::new(tid.len(), cols, vec![1.0; tid.len() * cols]).unwrap();
    let row = tid.len() / 2;
    m.data[row * cols + tid[row] as usize] = f32::NAN;
    let oracle = dir.path().join("oracle.npy");
    simat::io::store::write_npy(&oracle, &m).unwrap();
    let err = stderr(&run_ok(&["select", s(&run), "--oracle", s(&oracle)], 2));
    assert!(
        err.contains(&format!(
            "oracle.npy`: row {row}, column {} (region {}, triplet {}) holds NaN or infinity",
            tid[row], rid[row], tid[row]
        )),
        "{err}"
    );
    assert!(!run.join("select/dataset.parquet").exists());

    // 192 bytes whose header says 2³² × 2³² (the element count wraps to 0 in 64 bits).
    npy_claiming(&oracle, "(4294967296, 4294967296)", 64);
    let err = stderr(&run_ok(&["select", s(&run), "--oracle", s(&oracle)], 2));
    assert!(
        err.contains(
            "oracle.npy`: the header's shape (4294967296, 4294967296) is too large to exist"
        ),
        "{err}"
    );
}

/// Rendered images are outputs: a JPEG rewritten after `synth` makes it stale, and the rerun
/// renders the same bytes.
#[test]
fn a_damaged_rendered_image_makes_synth_stale() {
    let dir = tempdir();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "run_dir = \"run\"\n[synth]\nimage_count = 12\nseed = 3\nrender = true\n",
    )
    .unwrap();
    run_ok(&["run", s(&p)], 0);
    let images = dir.path().join("run/synth/vg/images");
    let jpeg = first_file(&images);
    let good = damage_middle_byte(&jpeg);
    let err = stderr(&run_ok(&["-v", "run", s(&p)], 0));
    assert!(
        err.contains("Stale synth: output vg/images/ was modified"),
        "{err}"
    );
    assert_eq!(std::fs::read(&jpeg).unwrap(), good);
    let status = stdout(&run_ok(&["status", s(&dir.path().join("run"))], 0));
    assert!(status.trim_start().starts_with("fresh  synth"), "{status}");
}

/// A stage that runs out of disk fails with an error naming the file, leaves no temporary file
/// behind, and the rerun once space is back writes what a clean run writes. (A file-size limit
/// makes writes fail with EFBIG where a full disk gives ENOSPC, through the same code.)
#[test]
fn a_full_disk_fails_cleanly_and_the_rerun_completes_identically() {
    let clean = tempdir();
    run_ok(&["run", s(&pipeline(clean.path(), ""))], 0);

    let dir = tempdir();
    let p = pipeline(dir.path(), "");
    run_ok(&["run", s(&p), "--until", "synth"], 0);
    let bin = env!("CARGO_BIN_EXE_simat");
    // 200 blocks: room for the manifest and small tables, not for objects.parquet (~170 KB).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 200; exec {bin} run {}",
            s(&p)
        ))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ingest") && err.contains(".parquet") && err.contains("too large"),
        "{err}"
    );
    let leftovers: Vec<_> = walk(&dir.path().join("run"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let status = stdout(&run_ok(&["status", s(&dir.path().join("run"))], 0));
    assert!(status.contains("failed  ingest"), "{status}");

    let out = run_ok(&["run", s(&p)], 0);
    assert_eq!(
        verbs(&stderr(&out)),
        ["Fresh synth", "Running ingest", "Running triplets"]
    );
    assert_eq!(
        outputs(&dir.path().join("run")),
        outputs(&clean.path().join("run"))
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every path a pipeline names is checked before any stage runs, and every bad one is reported
/// with its section, key and flag.
#[test]
fn a_bad_path_in_every_section_is_refused_before_anything_runs() {
    let dir = tempdir();
    let d = dir.path();
    let text_file = d.join("notes.txt");
    std::fs::write(&text_file, "not a matrix\n").unwrap();
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let p = d.join("bad.toml");
    let t = s(&text_file);
    std::fs::write(
        &p,
        format!(
            r#"run_dir = "run"
[import]
release = "no-release"
[ingest]
vg = "{t}"
[triplets]
vocab = "no-vocab.toml"
[crops]
image_dir = "no-images"
[select]
oracle = "oscar"
[embed]
model = "no-model"
[oracle]
model = "empty"
[coco]
captions = "no-captions.json"
image_dir = "{t}"
model = "no-model"
[import-embeddings]
image_embeddings = "{t}"
word_embeddings = "no-words.ptd"
[adapt]
images = "no-images.npy"
texts = "no-texts.npy"
[retrieve]
heads = ["no-heads.pt"]
[score]
oracle = "{t}"
[report]
compare = ["no-run"]
"#
        ),
    )
    .unwrap();
    let err = stderr(&run_ok(&["run", s(&p)], 2));
    for key in [
        "`[import] release` (--release): `",
        "`[ingest] vg` (--vg): `",
        "`[triplets] vocab` (--vocab): `",
        "`[crops] image_dir` (--image-dir): `",
        "`[select] oracle` (--oracle): `",
        "`[embed] model` (--model): `",
        "`[oracle] model` (--model): `",
        "`[coco] captions` (--captions): `",
        "`[coco] image_dir` (--image-dir): `",
        "`[coco] model` (--model): `",
        "`[import-embeddings] image_embeddings` (--image-embeddings): `",
        "`[import-embeddings] word_embeddings` (--word-embeddings): `",
        "`[adapt] images` (--images): `",
        "`[adapt] texts` (--texts): `",
        "`[retrieve] heads` (--heads): ",
        "`[score] oracle` (--oracle): `",
        "`[report] compare` (--compare): `",
    ] {
        assert!(err.contains(key), "{key} is not reported in\n{err}");
    }
    // What is wrong with each, in its own words.
    assert!(err.contains("oscar` does not exist"), "{err}");
    assert!(err.contains("notes.txt` is a file, not a folder"), "{err}");
    assert!(err.contains("not a model folder"), "{err}");
    assert!(err.contains("is neither a matrix"), "{err}");
    assert!(err.contains("is not a file of embeddings"), "{err}");
    // Nothing ran: no run directory, no manifest.
    assert!(!d.join("run").exists(), "{err}");

    // A stage's subcommand checks the same way.
    let run = d.join("run2");
    let err = stderr(&run_ok(&["select", s(&run), "--oracle", "oscar"], 2));
    assert!(
        err.contains("`[select] oracle` (--oracle): `oscar` does not exist"),
        "{err}"
    );
}
