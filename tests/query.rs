//! `simat query` (polars SQL over runs) and `simat export`, on the README's demo run: the
//! README's recipes give the rows computed here from `results.parquet` by hand; unknown names
//! list what exists; runs union under a `run` column; exports read back equal to the store.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;

use crate::util::*;

/// The SQL of the README's recipes, verbatim (the test reads them from README.md so the two
/// cannot drift apart).
fn readme_recipe(n: usize) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let marker = format!("<!-- recipe {n} -->");
    let start = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README lacks {marker}"));
    let block = &readme[start..];
    let open = block
        .find("\"SELECT")
        .expect("a quoted SELECT after the marker")
        + 1;
    let close = open + block[open..].find('"').unwrap();
    block[open..close]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn csv_rows(out: &std::process::Output) -> Vec<BTreeMap<String, String>> {
    let mut rd = csv::Reader::from_reader(out.stdout.as_slice());
    let headers = rd.headers().unwrap().clone();
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// `results.parquet`'s rows at λ = `lam` for the first head set: (value, rel, weight, success).
fn results_at(run: &Path, lam: f64) -> Vec<(String, String, f64, bool)> {
    let b = simat::io::read_all(&run.join("score/results.parquet")).unwrap();
    let (value, rel) = (col_str(&b, "value"), col_str(&b, "rel"));
    let (l, w, ok) = (
        col_f64(&b, "lam"),
        col_f64(&b, "weight"),
        col_bool(&b, "success"),
    );
    (0..b.num_rows())
        .filter(|&i| l[i] == lam)
        .map(|i| (value[i].clone(), rel[i].clone(), w[i], ok[i]))
        .collect()
}

fn num(v: &str) -> f64 {
    v.parse().unwrap_or_else(|_| panic!("not a number: {v}"))
}

#[test]
fn recipe_relations_that_fail_most() {
    let run = demo_run();
    let sql = readme_recipe(1);
    let out = run_ok(&["query", s(&run), &sql, "--format", "csv"], 0);
    let rows = csv_rows(&out);
    // By hand: weighted success per relation at λ = 1, worst first by the rounded score the
    // query orders by, ties by name.
    let mut by_rel: BTreeMap<String, (i64, f64, f64)> = BTreeMap::new();
    for (_, rel, w, ok) in results_at(&run, 1.0) {
        let e = by_rel.entry(rel).or_default();
        e.0 += 1;
        e.1 += w;
        if ok {
            e.2 += w;
        }
    }
    let mut want: Vec<(String, i64, f64)> = by_rel
        .into_iter()
        .map(|(r, (n, w, ws))| (r, n, 100.0 * ws / w))
        .collect();
    let rounded = |x: f64| (x * 10.0).round() / 10.0;
    want.sort_by(|a, b| rounded(a.2).total_cmp(&rounded(b.2)).then(a.0.cmp(&b.0)));
    want.truncate(5);
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (row, (rel, n, score)) in rows.iter().zip(&want) {
        assert_eq!(&row["rel"], rel);
        assert_eq!(num(&row["queries"]) as i64, *n);
        assert!(
            (num(&row["score"]) - score).abs() <= 0.05 + 1e-9,
            "{row:?} vs {score}"
        );
    }
}

#[test]
fn recipe_per_word_success() {
    let run = demo_run();
    let sql = readme_recipe(2);
    let rows = csv_rows(&run_ok(&["query", s(&run), &sql, "--format", "csv"], 0));
    let mut by_word: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (value, _, _, ok) in results_at(&run, 1.0) {
        let e = by_word.entry(value).or_default();
        e.0 += 1;
        e.1 += ok as i64;
    }
    assert_eq!(rows.len(), by_word.len());
    let mut last = f64::INFINITY;
    for row in &rows {
        let (n, ok) = by_word[&row["word"]];
        assert_eq!(num(&row["queries"]) as i64, n);
        let pct = num(&row["success_pct"]);
        assert!(
            (pct - 100.0 * ok as f64 / n as f64).abs() <= 0.05 + 1e-9,
            "{row:?}"
        );
        assert!(pct <= last, "not sorted by success: {rows:?}");
        last = pct;
    }
}

/// Two runs in one query: a `run` column tells them apart, each keeps its own rows.
#[test]
fn recipe_model_comparison_unions_runs() {
    let demo = demo_run();
    let dir = tempdir();
    let other = dir.path().join("other-lambdas");
    copy_dir(&demo, &other);
    run_ok(&["retrieve", s(&other), "--lambdas", "0.5,1.5"], 0);
    run_ok(&["score", s(&other), "--oracle", "labels"], 0);
    let sql = readme_recipe(3);
    let rows = csv_rows(&run_ok(
        &["query", s(&demo), s(&other), &sql, "--format", "csv"],
        0,
    ));
    let lams = |run: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r["run"] == run)
            .map(|r| num(&r["lam"]))
            .collect()
    };
    assert_eq!(lams("demo"), vec![0.0, 0.5, 1.0, 2.0, 4.0, 8.0], "{rows:?}");
    assert_eq!(lams("other-lambdas"), vec![0.5, 1.5], "{rows:?}");
    // The scores are each run's own.
    for run in [&demo, &other] {
        let file =
            simat::tables::retrievals::ScoresFile::read(&run.join("score/scores.json")).unwrap();
        let label = run.file_name().unwrap().to_str().unwrap();
        for row in rows.iter().filter(|r| r["run"] == label) {
            let want = file
                .scores
                .iter()
                .find(|x| x.lambda == num(&row["lam"]) && x.split == "all" && x.field == "all")
                .unwrap();
            assert!((num(&row["score"]) - want.score).abs() <= 0.05 + 1e-9);
        }
    }
}

#[test]
fn unknown_names_list_what_exists() {
    let run = demo_run();
    let err = stderr(&run_ok(
        &["query", s(&run), "SELECT lambda, nope FROM results"],
        2,
    ));
    assert!(err.contains("lambda"), "{err}");
    assert!(err.contains("the columns are:"), "{err}");
    assert!(
        err.contains("results: run, model, heads, lam, query_id, split, field, value, target"),
        "{err}"
    );
    let err = stderr(&run_ok(&["query", s(&run), "SELECT * FROM retrieval"], 2));
    assert!(err.contains("retrieval"), "{err}");
    assert!(err.contains("the tables are:"), "{err}");
    for t in ["breakdown", "queries", "results", "retrievals", "scores"] {
        assert!(err.contains(t), "{t} missing from: {err}");
    }
}

#[test]
fn tables_are_listed_with_their_columns() {
    let run = demo_run();
    let out = stdout(&run_ok(&["query", s(&run), "--tables"], 0));
    for line in [
        "breakdown (",
        "results (",
        "scores (",
        "queries (",
        "image_embeddings (",
        "crops (",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "no `{line}` in:\n{out}"
        );
    }
    let line = out.lines().find(|l| l.starts_with("results (")).unwrap();
    assert!(
        line.contains("lam Float64") && line.contains("success Boolean"),
        "{line}"
    );
}

#[test]
fn formats_and_files() {
    let run = demo_run();
    let dir = tempdir();
    let sql = "SELECT split, field, lam, score, n_queries FROM scores WHERE heads = 'none' ORDER BY lam, split, field";
    let want = simat::io::read_all(&run.join("score/scores.parquet")).unwrap();
    // Aligned table on stdout: a header, a rule, one line per row.
    let table = stdout(&run_ok(&["query", s(&run), sql], 0));
    assert_eq!(table.lines().count(), 2 + want.num_rows(), "{table}");
    assert!(table.lines().next().unwrap().starts_with("split"));
    // JSON: an array of objects.
    let json: serde_json::Value =
        serde_json::from_slice(&run_ok(&["query", s(&run), sql, "--format", "json"], 0).stdout)
            .unwrap();
    assert_eq!(json.as_array().unwrap().len(), want.num_rows());
    // Parquet by extension, read back with arrow.
    let out = dir.path().join("scores.parquet");
    run_ok(&["query", s(&run), sql, "--out", s(&out)], 0);
    let back = simat::io::read_all(&out).unwrap();
    assert_eq!(back.num_rows(), want.num_rows());
    let sum = |b| col_i64(b, "n_queries").iter().sum::<i64>();
    let (n, m) = (sum(&back), sum(&want));
    assert_eq!(n, m);
    // Parquet to stdout is refused.
    let err = stderr(&run_ok(&["query", s(&run), sql, "--format", "parquet"], 2));
    assert!(err.contains("--out"), "{err}");
    // Not a run.
    let err = stderr(&run_ok(&["query", s(dir.path()), sql], 2));
    assert!(err.contains("not a simat run directory"), "{err}");
}

#[test]
fn export_to_npy_and_parquet_reads_back_equal() {
    let run = demo_run();
    let dir = tempdir();
    let store = run.join("embed/image_embeddings.arrow");
    let m = simat::io::store::read_matrix(&store).unwrap();
    let npy = dir.path().join("images.npy");
    run_ok(&["export", s(&store), "--out", s(&npy)], 0);
    let back = simat::io::store::read_matrix(&npy).unwrap();
    assert_eq!((back.rows, back.cols), (m.rows, m.cols));
    assert_eq!(back.data, m.data);
    // The keys, by row.
    let keys = std::fs::read_to_string(dir.path().join("images.keys.csv")).unwrap();
    let header = keys.lines().next().unwrap();
    assert!(header.starts_with("row,dataset_id"), "{header}");
    assert_eq!(keys.lines().count(), 1 + m.rows);
    let store_batch = simat::io::store::EmbeddingStore::open(&store)
        .unwrap()
        .batch;
    let ids = store_batch
        .column_by_name("dataset_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    for (i, line) in keys.lines().skip(1).enumerate() {
        let mut f = line.split(',');
        assert_eq!(f.next().unwrap(), i.to_string());
        assert_eq!(f.next().unwrap(), ids.value(i).to_string());
    }
    // Parquet: the keys and the vectors, as a list column.
    let pq = dir.path().join("images.parquet");
    run_ok(&["export", s(&store), "--out", s(&pq)], 0);
    let b = simat::io::read_all(&pq).unwrap();
    assert_eq!(b.num_rows(), m.rows);
    let list = b.column_by_name("embedding").unwrap().as_fixed_size_list();
    let values = list
        .values()
        .as_primitive::<arrow::datatypes::Float32Type>();
    assert_eq!(values.values().as_ref(), m.data.as_slice());
    assert_eq!(list.null_count(), 0);
    // Not a store.
    let err = stderr(&run_ok(
        &[
            "export",
            s(&run.join("score/scores.parquet")),
            "--out",
            s(&npy),
        ],
        2,
    ));
    assert!(err.contains("not an embedding store"), "{err}");
}

/// A table two finished stages of a run provide is registered once per stage, as
/// `stage_table`: the release's queries (import) and regenerated ones (queries).
#[test]
fn a_table_two_stages_write_is_qualified_by_stage() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let release = shared_data().join("simat-release");
    run_ok(&["import", "--release", s(&release), "--run", s(&run)], 0);
    run_ok(&["queries", s(&run)], 0);
    let out = stdout(&run_ok(&["query", s(&run), "--tables"], 0));
    assert!(
        out.lines().any(|l| l.starts_with("import_queries (")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("queries_queries (")),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("queries (")), "{out}");
    let rows = csv_rows(&run_ok(
        &[
            "query",
            s(&run),
            "SELECT count(*) AS n FROM import_queries",
            "--format",
            "csv",
        ],
        0,
    ));
    // transfos.csv's queries.
    assert_eq!(rows[0]["n"], "17996");
}
