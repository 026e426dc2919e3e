//! `simat run --executor slurm`, against the real one-node cluster that `scripts/setup.sh`
//! starts (see `util::slurm_conf`): the demo through job arrays gives the local run's bytes, a
//! cancelled task is all a rerun recomputes, and a failed task fails `--wait` by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::util::*;

/// The demo pipeline with its run directory in `dir` and its model at `model`, embedding in
/// chunks of 128 crops and answering blocks of 4,000 queries, so that each of three parts has
/// some (neither size changes a table).
fn demo_pipeline(dir: &Path, model: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines/demo.toml")).unwrap();
    assert!(text.contains("model = \"../data/tiny-clip-world\""));
    let text = text
        .replace("run_dir = \"../runs/demo\"", "run_dir = \"run\"")
        .replace(
            "model = \"../data/tiny-clip-world\"",
            &format!("model = \"{}\"\nchunk_images = 128", model.display()),
        )
        .replace("[retrieve]\n", "[retrieve]\nquery_block = 4000\n");
    let p = dir.join("demo.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn simat_on(conf: &Path) -> Command {
    let mut cmd = simat();
    cmd.env("SLURM_CONF", conf);
    cmd
}

/// `simat status RUN`'s stdout; it asks the cluster at `conf` about the run's jobs.
fn status_on(conf: &Path, run: &Path) -> String {
    let out = expect(
        simat_on(conf).args(["status", s(run)]).output().unwrap(),
        0,
        "simat status",
    );
    stdout(&out)
}

/// `simat [--wait] run P --executor slurm --shards 3`.
fn on_slurm(conf: &Path, p: &Path, wait: bool) -> Output {
    let mut cmd = simat_on(conf);
    if wait {
        cmd.arg("--wait");
    }
    cmd.args(["run", s(p), "--executor", "slurm", "--shards", "3"])
        .output()
        .unwrap()
}

fn expect(out: Output, code: i32, what: &str) -> Output {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}\n--- stdout\n{}\n--- stderr\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// `(task id, state)` of each task of job `id`, from `squeue`.
fn squeue(conf: &Path, id: &str) -> Vec<(String, String)> {
    let out = Command::new("squeue")
        .env("SLURM_CONF", conf)
        .args(["-h", "-r", "-t", "all", "-j", id, "-o", "%i|%T"])
        .output()
        .unwrap();
    stdout(&out)
        .lines()
        .filter_map(|l| l.trim().split_once('|'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn wait_for(what: &str, timeout_s: u64, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(timeout_s),
            "timed out after {timeout_s} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job id printed for the job whose label contains `what`.
fn job_id(out: &Output, what: &str) -> String {
    stdout(out)
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no job `{what}` in\n{}", stdout(out)))
        .to_string()
}

/// Every table of `run` equals the local demo's, byte for byte; `report.html` names its run.
fn assert_same_tables_as_the_local_demo(run: &Path) {
    let local = demo_run();
    let manifest = |r: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(r.join("manifest.json")).unwrap()).unwrap()
    };
    let (a, b) = (manifest(&local), manifest(run));
    let stages = a["stages"].as_object().unwrap();
    assert_eq!(
        stages.keys().collect::<Vec<_>>(),
        b["stages"].as_object().unwrap().keys().collect::<Vec<_>>()
    );
    for (stage, rec) in stages {
        for out in rec["outputs"].as_array().unwrap() {
            let file = out["file"].as_str().unwrap();
            if file == "report.html" {
                continue;
            }
            let theirs = b["stages"][stage]["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["file"] == out["file"])
                .unwrap_or_else(|| panic!("{stage}/{file} missing"));
            assert_eq!(out["blake3"], theirs["blake3"], "{stage}/{file}");
            assert_eq!(out["rows"], theirs["rows"], "{stage}/{file}");
        }
    }
    for file in [
        "retrieve/retrievals.parquet",
        "score/scores.parquet",
        "score/results.parquet",
    ] {
        assert!(
            std::fs::read(local.join(file)).unwrap() == std::fs::read(run.join(file)).unwrap(),
            "{file} differs from the local run's"
        );
    }
}

fn hold(path: &Path) -> std::fs::File {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    f.lock().unwrap();
    f
}

#[test]
fn the_demo_on_slurm_in_three_shards_equals_the_local_run() {
    let Some(conf) = slurm_conf() else { return };
    let _turn = slurm_turn();
    let dir = tempdir();
    let p = demo_pipeline(dir.path(), &world_clip());
    let run = dir.path().join("run");
    let out = expect(on_slurm(&conf, &p, true), 0, "the demo on Slurm");
    // A job per stage, the parts of embed as one array, and its commit.
    let text = stdout(&out);
    assert!(text.contains("\tembed parts 0,1,2 of 3"), "{text}");
    assert!(text.contains("\tembed commit"), "{text}");
    assert!(text.contains("\tretrieve parts 0,1,2 of 3"), "{text}");
    assert!(text.contains("\tsynth\n"), "{text}");
    assert!(stderr(&out).contains("tasks done"), "{}", stderr(&out));
    let script = std::fs::read_to_string(run.join(".slurm/embed.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-2",
        "#SBATCH --requeue",
        "#SBATCH --dependency=afterok:",
        "--stage embed --shard \"$SLURM_ARRAY_TASK_ID/3\"",
    ] {
        assert!(script.contains(line), "{line} not in\n{script}");
    }
    assert_same_tables_as_the_local_demo(&run);
    let status = status_on(&conf, &run);
    assert!(
        status.contains("slurm  embed (job") && status.contains("3 done (0, 1, 2)"),
        "{status}"
    );
    // Again: everything is fresh, nothing is submitted.
    let again = expect(on_slurm(&conf, &p, true), 0, "the demo on Slurm again");
    assert!(!stdout(&again).contains('\t'), "{}", stdout(&again));
    assert!(stderr(&again).contains("nothing to submit"));
}

#[test]
fn a_sweep_on_slurm_is_one_array_over_the_models_and_gives_the_local_tables() {
    let Some(conf) = slurm_conf() else { return };
    let _turn = slurm_turn();
    let models = tiny_models();
    let paths: Vec<&Path> = models.iter().map(|(p, _)| p.as_path()).collect();
    let local = tempdir();
    run_ok(
        &[
            "run",
            s(&small_demo(local.path(), "sweep.toml", &paths, true)),
        ],
        0,
    );
    let dir = tempdir();
    let p = small_demo(dir.path(), "sweep.toml", &paths, true);
    let out = expect(on_slurm(&conf, &p, true), 0, "the sweep on Slurm");
    let text = stdout(&out);
    assert!(
        text.contains("\tmodels tiny,tiny-world,tiny-clip-hf\n"),
        "{text}"
    );
    assert!(text.contains("\treport\n"), "{text}");
    let run = dir.path().join("run");
    let script = std::fs::read_to_string(run.join(".slurm/models.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-2",
        "#SBATCH --dependency=afterok:",
        "SIMAT_MODELS=(tiny tiny-world tiny-clip-hf)",
        "--model \"${SIMAT_MODELS[$SLURM_ARRAY_TASK_ID]}\"",
    ] {
        assert!(script.contains(line), "{line} not in\n{script}");
    }
    for (_, name) in &models {
        for stage in ["embed", "retrieve", "score"] {
            let a = stage_tables(&run.join("models").join(name).join(stage));
            let b = stage_tables(&local.path().join("run/models").join(name).join(stage));
            assert!(!a.is_empty());
            assert!(a == b, "{name}: {stage} differs from the local sweep's");
        }
        assert!(run
            .join("models")
            .join(name)
            .join("report/report.html")
            .is_file());
    }
    // Again: every branch and report is fresh, nothing is submitted.
    let again = expect(on_slurm(&conf, &p, true), 0, "the sweep on Slurm again");
    assert!(!stdout(&again).contains('\t'), "{}", stdout(&again));
}

#[test]
fn a_cancelled_embed_task_is_all_that_a_rerun_recomputes() {
    let Some(conf) = slurm_conf() else { return };
    let _turn = slurm_turn();
    let dir = tempdir();
    let p = demo_pipeline(dir.path(), &world_clip());
    let run = dir.path().join("run");
    run_ok(&["run", s(&p), "--until", "queries", "-q"], 0);
    // Part 1 waits for this lock, so it is running when it is cancelled, whatever the timing.
    let parts = run.join("embed/parts");
    let lock = hold(&parts.join("1-of-3.lock"));
    let out = expect(on_slurm(&conf, &p, false), 0, "submit");
    assert!(
        !stdout(&out).contains("\tsynth"),
        "fresh stages are submitted"
    );
    let array = job_id(&out, "embed parts");
    let exit = run.join(".slurm/exit");
    wait_for("parts 0 and 2 done, part 1 running", 180, || {
        let q = squeue(&conf, &array);
        q.contains(&(format!("{array}_1"), "RUNNING".into()))
            && ["0", "2"].iter().all(|t| {
                std::fs::read_to_string(exit.join(format!("{array}_{t}.rc")))
                    .is_ok_and(|c| c.trim() == "0")
            })
    });
    let record = |i: usize| std::fs::read(parts.join(format!("{i}-of-3.json")));
    let (r0, r2) = (record(0).unwrap(), record(2).unwrap());
    assert!(record(1).is_err());
    let cancel = Command::new("scancel")
        .env("SLURM_CONF", &conf)
        .arg(format!("{array}_1"))
        .output()
        .unwrap();
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let commit = job_id(&out, "embed commit");
    wait_for("the commit cancelled for its dependency", 120, || {
        squeue(&conf, &commit)
            .iter()
            .all(|(_, st)| st == "CANCELLED")
    });
    drop(lock);
    let status = status_on(&conf, &run);
    assert!(
        status.contains("2 done (0, 2)") && status.contains("1 failed (1)"),
        "{status}"
    );
    // The parts that were done stay as they were; the rerun submits part 1 alone.
    assert_eq!(record(0).unwrap(), r0);
    assert_eq!(record(2).unwrap(), r2);
    let again = expect(on_slurm(&conf, &p, true), 0, "the same command again");
    let text = stdout(&again);
    assert!(text.contains("\tembed parts 1 of 3\n"), "{text}");
    assert!(!text.contains("\tqueries"), "{text}");
    let sub: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join(".slurm/submission.json")).unwrap())
            .unwrap();
    let tasks: Vec<&serde_json::Value> = sub["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["role"] == "parts" && j["stage"] == "embed")
        .flat_map(|j| j["tasks"].as_array().unwrap())
        .collect();
    assert_eq!(tasks, [&serde_json::json!(1)]);
    // Downstream of the part that ran again, retrieve runs in its three parts.
    assert!(text.contains("\tretrieve parts 0,1,2 of 3\n"), "{text}");
    assert_same_tables_as_the_local_demo(&run);
}

#[test]
fn a_failed_task_fails_the_wait_by_name_and_a_rerun_after_the_mend_completes() {
    let Some(conf) = slurm_conf() else { return };
    let _turn = slurm_turn();
    let dir = tempdir();
    let model = dir.path().join("model");
    copy_dir(&world_clip(), &model);
    let p = demo_pipeline(dir.path(), &model);
    let run = dir.path().join("run");
    // The first stage's task waits for the run directory's lock, so the model is broken before
    // any embed part starts. (Broken, not removed: every task reads the whole pipeline, whose
    // paths are checked first, so a missing folder would fail the first task to start.)
    let lock = hold(&run.join(".lock"));
    let follower = simat_on(&conf)
        .args([
            "--wait",
            "run",
            s(&p),
            "--executor",
            "slurm",
            "--shards",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sub = run.join(".slurm/submission.json");
    wait_for("the synth job running", 120, || {
        let Ok(bytes) = std::fs::read(&sub) else {
            return false;
        };
        let sub: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let Some(id) = sub["jobs"][0]["id"].as_str() else {
            return false;
        };
        squeue(&conf, id).iter().any(|(_, st)| st == "RUNNING")
    });
    std::fs::write(model.join("image.onnx"), b"not an ONNX model").unwrap();
    drop(lock);
    let out = expect(
        follower.wait_with_output().unwrap(),
        2,
        "--wait on a failed task",
    );
    let err = stderr(&out);
    for part in 0..3 {
        assert!(
            err.contains(&format!("stage `embed`, task {part} (part {part}/3)")),
            "{err}"
        );
    }
    assert!(err.contains("exit code 2"), "{err}");
    assert!(err.contains("did not run"), "{err}");
    let log = err
        .split("log: ")
        .nth(1)
        .and_then(|l| l.split(':').next())
        .unwrap();
    assert!(log.contains("/.slurm/logs/embed-"), "{err}");
    let log_text = std::fs::read_to_string(log).unwrap();
    assert!(log_text.contains("image.onnx"), "{log_text}");
    // Mended, the same command completes the run.
    std::fs::copy(world_clip().join("image.onnx"), model.join("image.onnx")).unwrap();
    let again = expect(
        on_slurm(&conf, &p, true),
        0,
        "the same command after the mend",
    );
    assert!(stdout(&again).contains("\tembed parts 0,1,2 of 3"));
    assert!(!stdout(&again).contains("\tsynth"));
    assert_same_tables_as_the_local_demo(&run);
}

/// No cluster needed: the `[slurm]` section and `shards` keys are checked when the pipeline is
/// read, and a machine without Slurm's commands is told so.
#[test]
fn bad_slurm_settings_are_refused_before_anything_is_submitted() {
    let dir = tempdir();
    let p = demo_pipeline(dir.path(), &world_clip());
    let text = std::fs::read_to_string(&p).unwrap() + "\n[slurm]\nshard = 3\n";
    let text = text.replace("[select]\n", "[select]\nshards = 2\n");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = run_ok(&["run", s(&bad), "--executor", "slurm"], 2);
    let err = stderr(&out);
    assert!(err.contains("[slurm]") && err.contains("shard"), "{err}");
    assert!(
        err.contains("[select] shards: select does not run in parts"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists());
    let out = simat()
        .env("PATH", "/nonexistent")
        .args(["run", s(&p), "--executor", "slurm", "--shards", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--shards must be 1 to"),
        "{}",
        stderr(&out)
    );
    let out = simat()
        .env("PATH", "/nonexistent")
        .args(["run", s(&p), "--executor", "slurm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`sbatch` is not on PATH"),
        "{}",
        stderr(&out)
    );
}
