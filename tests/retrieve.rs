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

/// `rows × cols` uniform values in ±`scale`, from `seed` (f64).
fn uniform(rows: usize, cols: usize, seed: u64, scale: f64) -> Vec<f64> {
    let g = simat::bootstrap::SplitMix64::for_resample(seed, 0);
    (0..(rows * cols) as u64)
        .map(|k| ((g.output(k) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale)
        .collect()
}

/// `a` (`n × k`) times `b` (`k × m`), row-major, in f64.
fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for l in 0..k {
            let x = a[i * k + l];
            for j in 0..m {
                out[i * m + j] += x * b[l * m + j];
            }
        }
    }
    out
}

fn write_heads(prefix: &Path, img: (&[f64], usize, usize), txt: (&[f64], usize, usize), seed: u64) {
    use simat::io::store::{write_npy, write_npy_vector};
    for (part, (w, rows, cols), s) in [("img", img, seed), ("txt", txt, seed + 1)] {
        let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
        let m = simat::linalg::Matrix::new(rows, cols, f32s(w)).unwrap();
        let name = prefix.file_name().unwrap().to_str().unwrap();
        let dir = prefix.parent().unwrap();
        write_npy(&dir.join(format!("{name}_{part}_head_weight.npy")), &m).unwrap();
        let b = f32s(&uniform(1, rows, s + 10, 0.05));
        write_npy_vector(&dir.join(format!("{name}_{part}_head_bias.npy")), &b).unwrap();
    }
}

/// (dataset_id, similarity) of each query's first two retrievals, by query.
fn first_two(run: &Path) -> Vec<[(i64, f32); 2]> {
    use arrow::array::AsArray;
    let b = simat::io::read_all(&run.join("retrieve/retrievals.parquet")).unwrap();
    let ids = col_i64(&b, "dataset_id");
    let ranks = b
        .column_by_name("rank")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int32Type>();
    let sims = b
        .column_by_name("similarity")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float32Type>();
    let mut out = Vec::new();
    for r in 0..b.num_rows() {
        if ranks.value(r) == 0 {
            out.push([(ids[r], sims.value(r)), (ids[r + 1], sims.value(r + 1))]);
        }
    }
    out
}

/// A text encoder of another dimension: 96-dimensional word vectors beside 512-dimensional images
/// import, are refused by retrieve without heads, and with heads mapping both to 64 dimensions
/// (an image head 64 × 512, a text head 64 × 96) retrieve what the 512-dimensional words do
/// through the composed text head: the text head goes to the words, the image head to the images.
#[test]
fn heads_of_unequal_shapes_map_two_encoders_to_one_space() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let inputs = crate::simat::import_release(&run);
    let (words, x) = simat::stages::import_embeddings::read_words(
        &shared_data().join("simat-release/original/simat_words_clip.ptd"),
        None,
    )
    .unwrap();
    let (n, d_img, d_txt, d) = (x.rows, x.cols, 96, 64);
    assert_eq!(d_img, 512);
    // Words of another encoder: y = x·P exactly (in f64, then f32).
    let p = uniform(d_img, d_txt, 1, 1.0 / (d_img as f64).sqrt());
    let x64: Vec<f64> = x.data.iter().map(|v| *v as f64).collect();
    let y = matmul(&x64, &p, n, d_img, d_txt);
    let w_img = uniform(d, d_img, 2, 1.0 / (d_img as f64).sqrt());
    let w_txt = uniform(d, d_txt, 3, 1.0 / (d_txt as f64).sqrt());
    // The text head on x that equals w_txt on y = x·P: w_txt·Pᵀ.
    let p_t: Vec<f64> = (0..d_txt * d_img)
        .map(|k| p[(k % d_img) * d_txt + k / d_img])
        .collect();
    let composed = matmul(&w_txt, &p_t, d, d_txt, d_img);
    let square = dir.path().join("square");
    let rect = dir.path().join("rect");
    write_heads(&square, (&w_img, d, d_img), (&composed, d, d_img), 4);
    write_heads(&rect, (&w_img, d, d_img), (&w_txt, d, d_txt), 4);

    let retrieve = |heads: &Path, code: i32| {
        let mut args = vec!["retrieve", "--run", s(&run), "--lambdas", "1", "-k", "2"];
        if heads.as_os_str() != "" {
            args.extend(["--heads", s(heads)]);
        }
        stderr(&run_ok(&args, code))
    };
    retrieve(&square, 0);
    let want = first_two(&run);

    let words_txt = dir.path().join("words.txt");
    std::fs::write(&words_txt, words.join("\n") + "\n").unwrap();
    let y_npy = dir.path().join("y.npy");
    let y32 = simat::linalg::Matrix::new(n, d_txt, y.iter().map(|v| *v as f32).collect()).unwrap();
    simat::io::store::write_npy(&y_npy, &y32).unwrap();
    let img = inputs.join("img.pt");
    run_ok(
        &[
            "import-embeddings",
            "--run",
            s(&run),
            "--image-embeddings",
            s(&img),
            "--word-embeddings",
            s(&y_npy),
            "--words",
            s(&words_txt),
        ],
        0,
    );
    let err = retrieve(Path::new(""), 2);
    assert!(
        err.contains("word embeddings have dimension 96, image embeddings 512")
            && err.contains("adapt --dim D"),
        "{err}"
    );
    retrieve(&rect, 0);
    let got = first_two(&run);
    assert_eq!(got.len(), want.len());
    let mut clear = 0;
    for (q, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g[0].1 - w[0].1).abs() < 1e-4, "query {q}: {g:?} vs {w:?}");
        // Where the first two are apart, the same image.
        if w[0].1 - w[1].1 > 1e-3 {
            clear += 1;
            assert_eq!(g[0].0, w[0].0, "query {q}");
        }
    }
    assert!(clear * 10 > want.len() * 9, "{clear} of {}", want.len());
}
