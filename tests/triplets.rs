//! Triplet extraction on the real Visual Genome-format sample.

use std::collections::HashSet;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};

use crate::util::*;

type Row = (i64, i64, i64, String, String, String, i32, i32, i32, i32);

fn regions_of(batch: &RecordBatch) -> Vec<Row> {
    let i64s = |n: &str| {
        batch
            .column_by_name(n)
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone()
    };
    let i32s = |n: &str| {
        batch
            .column_by_name(n)
            .unwrap()
            .as_primitive::<Int32Type>()
            .clone()
    };
    let strs = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
    let (image, subj_id, obj_id) = (i64s("image_id"), i64s("subj_id"), i64s("obj_id"));
    let (subj, rel, obj) = (strs("subj"), strs("rel"), strs("obj"));
    let (x1, y1, x2, y2) = (i32s("x1"), i32s("y1"), i32s("x2"), i32s("y2"));
    (0..batch.num_rows())
        .map(|i| {
            (
                image.value(i),
                subj_id.value(i),
                obj_id.value(i),
                subj.value(i).to_string(),
                rel.value(i).to_string(),
                obj.value(i).to_string(),
                x1.value(i),
                y1.value(i),
                x2.value(i),
                y2.value(i),
            )
        })
        .collect()
}

fn extract_sample(run: &std::path::Path, threads: &str) {
    for args in [
        vec!["ingest", "--vg", s(&vg_sample()), "--run", s(run)],
        vec![
            "triplets",
            "--vocab",
            s(&vg_sample().join("relations.toml")),
            "--run",
            s(run),
        ],
    ] {
        let out = simat()
            .args(&args)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
}

/// The acceptance test of the foundation issue: the regions equal `expected_regions.csv`
/// exactly, in order.
#[test]
fn sample_regions_equal_expected_regions() {
    let dir = tempdir();
    let run = dir.path().join("run");
    extract_sample(&run, "2");
    let batch = simat::io::read_all(&run.join("triplets/regions.parquet")).unwrap();
    let got = regions_of(&batch);

    let mut reader = csv::Reader::from_path(vg_sample().join("expected_regions.csv")).unwrap();
    let expected: Vec<Row> = reader.deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), expected.len(), "region count");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "region row {i}");
    }
    // Region ids are the row numbers.
    let ids = batch
        .column_by_name("region_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(ids
        .values()
        .iter()
        .enumerate()
        .all(|(i, &id)| id == i as i64));
}

/// Every region of the official release's retrieval database is found, by
/// (image, subject object, object object, relation).
#[test]
fn sample_regions_cover_the_release_retrieval_db() {
    let dir = tempdir();
    let run = dir.path().join("run");
    extract_sample(&run, "2");
    let batch = simat::io::read_all(&run.join("triplets/regions.parquet")).unwrap();
    let ours: HashSet<(i64, i64, i64, String)> = regions_of(&batch)
        .into_iter()
        .map(|r| (r.0, r.1, r.2, r.4))
        .collect();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .from_path(shared_data().join("simat-release/retrieval_db.tsv"))
        .unwrap();
    let mut n = 0;
    for rec in reader.records() {
        let rec = rec.unwrap();
        let key = (
            rec[1].parse().unwrap(),
            rec[7].parse().unwrap(),
            rec[8].parse().unwrap(),
            rec[4].to_string(),
        );
        assert!(
            ours.contains(&key),
            "release region {} not extracted",
            &rec[0]
        );
        n += 1;
    }
    assert!(n > 11_000);
}

/// Triplets are consistent with regions, and ids do not depend on the thread count.
#[test]
fn triplets_are_consistent_and_deterministic() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    extract_sample(&a, "2");
    extract_sample(&b, "1");
    for stage in ["ingest", "triplets"] {
        let (ha, hb) = (hashes(&a.join(stage)), hashes(&b.join(stage)));
        assert_eq!(ha, hb, "{stage} outputs differ between 1 and 2 threads");
    }
    let regions = simat::io::read_all(&a.join("triplets/regions.parquet")).unwrap();
    let triplets = simat::io::read_all(&a.join("triplets/triplets.parquet")).unwrap();
    let n_regions = triplets
        .column_by_name("n_regions")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(
        n_regions.values().iter().sum::<i64>() as usize,
        regions.num_rows()
    );
    let captions = triplets
        .column_by_name("caption")
        .unwrap()
        .as_string::<i32>();
    let subj = triplets.column_by_name("subj").unwrap().as_string::<i32>();
    let obj = triplets.column_by_name("obj").unwrap().as_string::<i32>();
    for i in 0..triplets.num_rows() {
        let c = captions.value(i);
        assert!(c.starts_with('A') && c.ends_with('.'), "{c}");
        assert!(c.contains(subj.value(i)) && c.contains(obj.value(i)), "{c}");
        assert!(!c.contains(" a a ") && !c.contains(" a an "), "{c}");
    }
}

/// A union box wider than i32 (subject at x = −2e9, object at x = +2e9, each box valid alone) is
/// skipped and counted, never wrapped or saturated into a plausible box.
#[test]
fn a_union_box_beyond_32_bits_is_skipped_and_counted() {
    let dir = crate::util::tempdir();
    let vg = dir.path().join("vg");
    std::fs::create_dir_all(&vg).unwrap();
    std::fs::write(
        vg.join("image_data.json"),
        r#"[{"image_id": 1, "width": 100, "height": 100}]"#,
    )
    .unwrap();
    let rel = |id: i64, sx: i64, ox: i64| {
        format!(
            r#"{{"relationship_id": {id}, "predicate": "sitting on", "subject": {{"object_id": {}, "x": {sx}, "y": 0, "w": 60, "h": 60, "name": "man"}}, "object": {{"object_id": {}, "x": {ox}, "y": 10, "w": 60, "h": 60, "name": "bench"}}}}"#,
            id * 10,
            id * 10 + 1
        )
    };
    std::fs::write(
        vg.join("relationships.json"),
        format!(
            r#"[{{"image_id": 1, "relationships": [{}, {}, {}]}}]"#,
            rel(1, 0, 20),
            rel(2, -2_000_000_000, 2_000_000_000),
            rel(3, 2_147_483_600, 0),
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    crate::util::run_ok(&["ingest", s(&run), "--vg", s(&vg)], 0);
    let out = crate::util::run_ok(&["triplets", s(&run)], 1);
    let err = crate::util::stderr(&out);
    assert!(
        err.contains("skipped 2 region(s) whose box or union box leaves the 32-bit pixel range (first: relationship 2)"),
        "{err}"
    );
    let regions = simat::io::read_all(&run.join("triplets/regions.parquet")).unwrap();
    assert_eq!(crate::util::col_i64(&regions, "relationship_id"), [1]);
}
