//! The official benchmark: import, embeddings, retrieval and the SIMAT score, against an
//! independent numpy reference on the real release tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};

use crate::util::*;

fn release() -> PathBuf {
    shared_data().join("simat-release")
}

fn reference_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/simat_reference.py")
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(reference_script())
        .args(args)
        .output()
        .expect("python3 is needed by the reference tests");
    assert!(
        out.status.success(),
        "reference failed (it needs numpy: pip install numpy):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Import the release and seeded random embeddings into `run`; returns the inputs folder.
fn import_release(dir: &Path, run: &Path) -> PathBuf {
    let inputs = dir.join("inputs");
    python(&["inputs", s(&release()), s(&inputs), "--seed", "7"]);
    run_ok(
        &["import-simat", "--release", s(&release()), "--run", s(run)],
        0,
    );
    run_ok(
        &[
            "import-embeddings",
            "--run",
            s(run),
            "--images",
            s(&inputs.join("img.npy")),
            "--words",
            s(&release().join("clip_vitb32_words.txt")),
            "--word-vectors",
            s(&release().join("clip_vitb32_word_vectors.npy")),
            "--heads",
            s(&release().join("head_tau0.1")),
        ],
        0,
    );
    inputs
}

#[test]
fn import_reproduces_the_release_tables() {
    let dir = tempdir();
    let run = dir.path().join("run");
    run_ok(
        &["import-simat", "--release", s(&release()), "--run", s(&run)],
        0,
    );
    let q = simat::dataset::Queries::read(&run.join("import/queries.parquet")).unwrap();
    let d = simat::dataset::Dataset::read(&run.join("import/dataset.parquet")).unwrap();
    assert_eq!((q.len(), d.len()), (17_996, 5_859));
    let triplets = simat::io::read_all(&run.join("import/triplets.parquet")).unwrap();
    assert_eq!(triplets.num_rows(), 645);
    let captions = triplets
        .column_by_name("caption")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(captions.value(0), "A bear laying against a wall.");
    // Every query starts from its region's triplet and targets a caption of the same triplet
    // with one slot changed.
    for i in 0..q.len() {
        let src = &d.triplet[q.dataset_id[i] as usize];
        assert_eq!(src[q.field[i].index()], q.value[i]);
        assert_eq!(d.region_id[q.dataset_id[i] as usize], q.region_id[i]);
    }
    let regions = simat::io::read_all(&run.join("import/regions.parquet")).unwrap();
    assert_eq!(regions.num_rows(), 11_160);
}

#[test]
fn import_errors_name_the_row() {
    let dir = tempdir();
    let rel = dir.path().join("release");
    std::fs::create_dir_all(&rel).unwrap();
    for f in simat::import::RELEASE_FILES {
        std::fs::copy(release().join(f), rel.join(f)).unwrap();
    }
    let path = rel.join("transfos.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Row 3: point the query at another region's embedding row.
    let mut cells: Vec<String> = lines[3].split(',').map(str::to_string).collect();
    cells[9] = "0".into();
    lines[3] = cells.join(",");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = run_ok(
        &[
            "import-simat",
            "--release",
            s(&rel),
            "--run",
            s(&dir.path().join("run")),
        ],
        2,
    );
    let err = stderr(&out);
    assert!(
        err.contains("transfos.csv") && err.contains("row 3: dataset_id 0"),
        "{err}"
    );
}

/// The acceptance test of the scoring issue.
#[test]
fn scores_equal_the_numpy_reference() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let inputs = import_release(dir.path(), &run);
    let lambdas = "0,0.5,1,2";
    let out = run_ok(
        &[
            "score",
            "--run",
            s(&run),
            "--oracle",
            s(&inputs.join("oracle.npy")),
            "--lambda",
            lambdas,
            "--split",
            "all",
        ],
        0,
    );
    assert!(stdout(&out).contains("lambda"), "{}", stdout(&out));

    // simat's first retrieved image per query and λ, in transfos.csv order.
    let queries = simat::dataset::Queries::read(&run.join("import/queries.parquet")).unwrap();
    let index: BTreeMap<i64, usize> = queries
        .query_id
        .iter()
        .enumerate()
        .map(|(i, &q)| (q, i))
        .collect();
    let r = simat::io::read_all(&run.join("retrieve/retrievals.parquet")).unwrap();
    let (qid, lam, rank, did) = (
        r.column_by_name("query_id")
            .unwrap()
            .as_primitive::<Int64Type>(),
        r.column_by_name("lambda")
            .unwrap()
            .as_primitive::<Float64Type>(),
        r.column_by_name("rank")
            .unwrap()
            .as_primitive::<Int32Type>(),
        r.column_by_name("dataset_id")
            .unwrap()
            .as_primitive::<Int64Type>(),
    );
    let mut picks: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for i in 0..r.num_rows() {
        if rank.value(i) == 0 {
            let v = picks
                .entry(format!("{:?}", lam.value(i)))
                .or_insert_with(|| vec![-1; queries.len()]);
            v[index[&qid.value(i)]] = did.value(i);
        }
    }
    assert_eq!(picks.len(), 4);
    let picks_path = dir.path().join("picks.json");
    std::fs::write(&picks_path, serde_json::to_vec(&picks).unwrap()).unwrap();

    let reference: serde_json::Value = serde_json::from_str(&python(&[
        "score",
        s(&release()),
        s(&inputs),
        "--heads",
        s(&release().join("head_tau0.1")),
        "--lambdas",
        "0.0,0.5,1.0,2.0",
        "--picks",
        s(&picks_path),
    ]))
    .unwrap();
    // Retrieval: every pick is the float64 best, or within 1e-5 of it (a near tie).
    let exact = reference["exact"].as_u64().unwrap();
    let ties = reference["ties"].as_u64().unwrap();
    assert!(
        exact as f64 >= 0.999 * (exact + ties) as f64,
        "{exact} exact, {ties} ties"
    );

    let ours: Vec<simat::score::ScoreRow> =
        serde_json::from_slice(&std::fs::read(run.join("score/scores.json")).unwrap()).unwrap();
    let theirs: Vec<simat::score::ScoreRow> =
        serde_json::from_value(reference["scores"].clone()).unwrap();
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours.len(), 4 * 3 * 4);
    for t in &theirs {
        let o = ours
            .iter()
            .find(|o| o.lambda == t.lambda && o.split == t.split && o.field == t.field)
            .unwrap_or_else(|| panic!("no score for {t:?}"));
        assert_eq!(o.n_queries, t.n_queries, "{t:?}");
        assert!(
            (o.score - t.score).abs() < 1e-6,
            "simat {o:?} vs numpy {t:?}"
        );
    }
}

#[test]
fn label_oracle_and_freshness_of_score() {
    let dir = tempdir();
    let run = dir.path().join("run");
    import_release(dir.path(), &run);
    run_ok(
        &[
            "score",
            "--run",
            s(&run),
            "--lambda",
            "1",
            "--split",
            "test",
        ],
        0,
    );
    let rows: Vec<simat::score::ScoreRow> =
        serde_json::from_slice(&std::fs::read(run.join("score/scores.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|r| r.split == "test" && (0.0..=100.0).contains(&r.score)));
    // Again: retrieval and score are fresh.
    let err = stderr(&run_ok(
        &[
            "score",
            "--run",
            s(&run),
            "--lambda",
            "1",
            "--split",
            "test",
        ],
        0,
    ));
    assert!(
        err.contains("Fresh retrieve") && err.contains("Fresh score"),
        "{err}"
    );
    // A new λ reruns both.
    let err = stderr(&run_ok(
        &["-v", "score", "--run", s(&run), "--lambda", "1,2"],
        0,
    ));
    assert!(
        err.contains("Stale retrieve: config `lambdas` changed"),
        "{err}"
    );
}

/// `simat queries` on the release's dataset: `n_neighbours` equals the release's `norm` for every
/// region, and every query of `transfos.csv` is among the candidates.
#[test]
fn regenerated_queries_cover_the_release() {
    let dir = tempdir();
    let run = dir.path().join("run");
    run_ok(
        &["import-simat", "--release", s(&release()), "--run", s(&run)],
        0,
    );
    run_ok(&["queries", "--run", s(&run), "--seed", "3"], 0);
    let ours = simat::dataset::Queries::read(&run.join("queries/queries.parquet")).unwrap();
    let theirs = simat::dataset::Queries::read(&run.join("import/queries.parquet")).unwrap();
    let mut norm_of_region: BTreeMap<i64, i64> = BTreeMap::new();
    let mut ours_set = std::collections::HashSet::new();
    for i in 0..ours.len() {
        norm_of_region.insert(ours.region_id[i], ours.n_neighbours[i]);
        ours_set.insert((
            ours.region_id[i],
            ours.field[i],
            ours.value[i].clone(),
            ours.target[i].clone(),
        ));
        assert_eq!(ours.target_caption_id[i], ours.target_triplet_id[i]);
    }
    for i in 0..theirs.len() {
        assert_eq!(
            norm_of_region.get(&theirs.region_id[i]),
            Some(&theirs.n_neighbours[i]),
            "region {}",
            theirs.region_id[i]
        );
        let key = (
            theirs.region_id[i],
            theirs.field[i],
            theirs.value[i].clone(),
            theirs.target[i].clone(),
        );
        assert!(
            ours_set.contains(&key),
            "release query {} missing",
            theirs.query_id[i]
        );
    }
    // The split is by region and about half.
    let test = ours.split.iter().filter(|s| *s == "test").count() as f64 / ours.len() as f64;
    assert!((0.4..0.6).contains(&test), "{test}");
    // And retrieval/score run on the regenerated queries.
    let inputs = dir.path().join("inputs");
    python(&["inputs", s(&release()), s(&inputs), "--seed", "1"]);
    run_ok(
        &[
            "import-embeddings",
            "--run",
            s(&run),
            "--images",
            s(&inputs.join("img.npy")),
            "--words",
            s(&release().join("clip_vitb32_words.txt")),
            "--word-vectors",
            s(&release().join("clip_vitb32_word_vectors.npy")),
        ],
        0,
    );
    let out = run_ok(&["score", "--run", s(&run), "--lambda", "1"], 0);
    let rows: Vec<simat::score::ScoreRow> =
        serde_json::from_slice(&std::fs::read(run.join("score/scores.json")).unwrap()).unwrap();
    let all = rows
        .iter()
        .find(|r| r.split == "all" && r.field == "all")
        .unwrap();
    assert_eq!(all.n_queries as usize, ours.len(), "{}", stdout(&out));
}

/// `simat knn` equals a brute force over small integer vectors (exact scores, so ties are
/// real and must break by lower id), with and without `--exclude`.
#[test]
fn knn_equals_brute_force_with_ties_by_lower_id() {
    let dir = tempdir();
    let (n, m, d, k) = (700usize, 37usize, 8usize, 6usize);
    let val = |i: usize, j: usize, seed: usize| ((i * 31 + j * 17 + seed) % 7) as f32 - 3.0;
    let db: Vec<f32> = (0..n * d).map(|x| val(x / d, x % d, 1)).collect();
    let q: Vec<f32> = (0..m * d).map(|x| val(x / d, x % d, 5)).collect();
    let db = simat::linalg::Matrix::new(n, d, db).unwrap();
    let q = simat::linalg::Matrix::new(m, d, q).unwrap();
    simat::store::write_npy(&dir.path().join("db.npy"), &db).unwrap();
    simat::store::write_npy(&dir.path().join("q.npy"), &q).unwrap();
    let exclude: Vec<i64> = (0..m as i64).map(|i| (i * 13) % n as i64).collect();
    npyz::to_file_1d(dir.path().join("ex.npy"), exclude.clone()).unwrap();
    for with_exclude in [false, true] {
        let out = dir.path().join(format!("out-{with_exclude}.parquet"));
        let mut args = vec![
            "knn".to_string(),
            "--db".into(),
            s(&dir.path().join("db.npy")).into(),
            "--queries".into(),
            s(&dir.path().join("q.npy")).into(),
            "-k".into(),
            k.to_string(),
            "--out".into(),
            s(&out).into(),
        ];
        if with_exclude {
            args.extend(["--exclude".into(), s(&dir.path().join("ex.npy")).into()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&refs, 0);
        let got = simat::io::read_all(&out).unwrap();
        let ids = got
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        for (qi, &skip) in exclude.iter().enumerate() {
            let mut all: Vec<(f32, usize)> = (0..n)
                .filter(|&j| !with_exclude || j as i64 != skip)
                .map(|j| (q.row(qi).iter().zip(db.row(j)).map(|(a, b)| a * b).sum(), j))
                .collect();
            all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            let want: Vec<i64> = all[..k].iter().map(|x| x.1 as i64).collect();
            let have: Vec<i64> = (0..k).map(|r| ids.value(qi * k + r)).collect();
            assert_eq!(have, want, "query {qi}, exclude {with_exclude}");
        }
    }
}
