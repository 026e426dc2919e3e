//! `simat ingest`: the sample, bad input of every kind, and a SIGKILL mid-run.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// Ingest `vg` into `run`; returns the output.
fn ingest(vg: &Path, run: &Path) -> std::process::Output {
    run_cmd(&["ingest", "--vg", s(vg), "--run", s(run)])
}

fn run_cmd(args: &[&str]) -> std::process::Output {
    crate::util::run(args)
}

fn parquet_files(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Err(_) => vec![],
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".parquet") || n.starts_with(".tmp-"))
            .collect(),
    }
}

/// Damage one file of a copy of the sample, run ingest, and return (stderr, run dir), asserting
/// that it failed with exit code 2 and committed nothing.
fn ingest_damaged(file: &str, damage: impl FnOnce(Vec<u8>) -> Vec<u8>) -> String {
    let dir = tempdir();
    let vg = dir.path().join("vg");
    copy_sample(&vg);
    let bytes = std::fs::read(vg.join(file)).unwrap();
    std::fs::write(vg.join(file), damage(bytes)).unwrap();
    let run = dir.path().join("run");
    let out = ingest(&vg, &run);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(file), "the error names the file: {err}");
    assert_eq!(
        parquet_files(&run.join("ingest")),
        Vec::<String>::new(),
        "no output may be committed after: {err}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["stages"]["ingest"]["status"], "failed");
    err
}

/// The byte offset an error message names.
fn offset_in(err: &str) -> u64 {
    let i = err.find("at byte ").expect("an offset") + "at byte ".len();
    err[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn sample_ingests_every_record() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let out = ingest(&vg_sample(), &run);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let counters = &manifest["stages"]["ingest"]["counters"];
    // Counted independently with Python's json module on the sample.
    assert_eq!(counters["images"], 8770);
    assert_eq!(counters["relationships"], 42769);
    let rels = simat::io::read_all(&run.join("ingest/relationships.parquet")).unwrap();
    assert_eq!(rels.num_rows(), 42769);
    // `names` (a list) and `name` are both read.
    let names = arrow::array::AsArray::as_string::<i32>(rels.column_by_name("obj_name").unwrap());
    assert!((0..rels.num_rows()).all(|i| !names.value(i).is_empty()));
}

#[test]
fn truncated_json_names_the_offset() {
    let mut cut = 0;
    let err = ingest_damaged("relationships.json", |b| {
        cut = b.len() / 2;
        b[..cut].to_vec()
    });
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(offset_in(&err), cut as u64, "{err}");
}

#[test]
fn wrong_type_names_the_offset() {
    let mut at = 0;
    let err = ingest_damaged("relationships.json", |b| {
        at = find(&b, b"\"w\": 52");
        let mut v = b[..at].to_vec();
        v.extend_from_slice(b"\"w\": \"52\"");
        v.extend_from_slice(&b[at + 7..]);
        v
    });
    assert!(err.contains("invalid type"), "{err}");
    let off = offset_in(&err) as usize;
    assert!(
        (at..at + 10).contains(&off),
        "offset {off} is not at the edit ({at}): {err}"
    );
}

#[test]
fn missing_required_field_is_an_error() {
    let err = ingest_damaged("relationships.json", |b| {
        let at = find(&b, b"\"relationship_id\": 7, ");
        let mut v = b[..at].to_vec();
        v.extend_from_slice(&b[at + 22..]);
        v
    });
    assert!(err.contains("missing field `relationship_id`"), "{err}");
}

#[test]
fn missing_image_id_is_an_error() {
    let err = ingest_damaged("image_data.json", |b| {
        let at = find(&b, b"\"image_id\": 3,");
        let mut v = b[..at].to_vec();
        v.extend_from_slice(&b[at + 14..]);
        v
    });
    assert!(err.contains("neither `image_id` nor `id`"), "{err}");
    assert_eq!(offset_in(&err), 1, "{err}");
}

#[test]
fn non_utf8_bytes_name_the_offset() {
    let mut at = 0;
    let err = ingest_damaged("relationships.json", |mut b| {
        at = find(&b, b"\"predicate\": \"WEARING\"") + 15;
        b[at] = 0xff;
        b
    });
    assert!(
        err.to_lowercase().contains("unicode") || err.contains("UTF-8"),
        "{err}"
    );
    let off = offset_in(&err) as usize;
    assert!(
        (at..at + 8).contains(&off),
        "offset {off}, edit at {at}: {err}"
    );
}

#[test]
fn empty_file_is_an_error() {
    let err = ingest_damaged("objects.json", |_| Vec::new());
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn not_an_array_is_an_error() {
    let err = ingest_damaged("attributes.json", |_| b"{\"images\": []}".to_vec());
    assert!(err.contains("expected `[`"), "{err}");
    assert_eq!(offset_in(&err), 0);
}

#[test]
fn missing_required_file_is_a_clear_error() {
    let dir = tempdir();
    let vg = dir.path().join("vg");
    copy_sample(&vg);
    std::fs::remove_file(vg.join("relationships.json")).unwrap();
    let out = ingest(&vg, &dir.path().join("run"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("relationships.json") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn bad_boxes_are_skipped_and_counted() {
    let dir = tempdir();
    let vg = dir.path().join("vg");
    copy_sample(&vg);
    let path = vg.join("relationships.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // Relationship 7 (image 3) gets a zero-width subject, relationship 9 a negative height.
    let text = text
        .replacen(
            "\"x\": 532, \"y\": 156, \"w\": 52",
            "\"x\": 532, \"y\": 156, \"w\": 0",
            1,
        )
        .replacen("\"w\": 8, \"h\": 8", "\"w\": 8, \"h\": -8", 1);
    std::fs::write(&path, text).unwrap();
    let run = dir.path().join("run");
    let out = ingest(&vg, &run);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "skips make the exit code 1: {err}"
    );
    assert!(err.contains("skipped 2 record(s)"), "{err}");
    assert!(err.contains("relationship 7 in image 3"), "{err}");
    let rels = simat::io::read_all(&run.join("ingest/relationships.parquet")).unwrap();
    assert_eq!(rels.num_rows(), 42769 - 2);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["stages"]["ingest"]["counters"]["skipped_relationships_bad_box"],
        2
    );
}

/// SIGKILL in the middle of writing relationships.parquet, then rerun: the outputs equal those of
/// an uninterrupted run, and nothing half-written was trusted in between.
#[test]
fn killed_ingest_resumes_to_identical_outputs() {
    let dir = tempdir();
    let synth = dir.path().join("synth-run");
    run_ok(
        &[
            "synth",
            "--run",
            s(&synth),
            "--image-count",
            "30000",
            "--seed",
            "5",
        ],
        0,
    );
    let vg = synth.join("synth/vg");
    let clean = dir.path().join("clean");
    let out = ingest(&vg, &clean);
    assert!(out.status.success(), "{}", stderr(&out));

    let run = dir.path().join("run");
    let mut child = simat()
        .args(["ingest", "--vg", s(&vg), "--run", s(&run)])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = run.join("ingest/.tmp-relationships.parquet");
    let start = Instant::now();
    while !tmp.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ingest never started writing"
        );
        if child.try_wait().unwrap().is_some() {
            panic!("ingest finished before it could be killed; make the input larger");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !run.join("ingest/relationships.parquet").exists(),
        "a killed run must not leave a committed output"
    );
    let status = stdout(&run_ok(&["status", s(&run)], 0));
    assert!(
        status.contains("stale") && status.contains("interrupted"),
        "{status}"
    );

    let out = ingest(&vg, &run);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hashes(&run.join("ingest")), hashes(&clean.join("ingest")));
    assert!(parquet_files(&run.join("ingest"))
        .iter()
        .all(|f| !f.starts_with(".tmp-")));

    // And a third run recomputes nothing.
    let out = ingest(&vg, &run);
    let err = stderr(&out);
    assert!(
        err.contains("Fresh ingest") && !err.contains("Running"),
        "{err}"
    );
}

/// Real VG repeats annotations: an image record twice, an id twice. The first in file order is
/// kept, every later one skipped and counted by file, and the tables equal the clean sample's.
#[test]
fn duplicate_ids_are_skipped_counted_and_the_first_kept() {
    let dir = tempdir();
    let clean_vg = dir.path().join("clean");
    copy_sample(&clean_vg);
    let clean = dir.path().join("clean-run");
    assert_eq!(ingest(&clean_vg, &clean).status.code(), Some(0));

    let vg = dir.path().join("vg");
    copy_sample(&vg);
    // The first element of a JSON array, repeated right after itself (or at the end).
    let first_element = |text: &str| -> String {
        let mut depth = 0;
        for (i, c) in text.char_indices().skip(1) {
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return text[1..=i].to_string();
                    }
                }
                _ => {}
            }
        }
        panic!("no first element");
    };
    let repeat_first = |file: &str, at_end: bool| -> usize {
        let path = vg.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let first = first_element(&text);
        let text = if at_end {
            format!("{}, {first}]", text.trim_end().trim_end_matches(']'))
        } else {
            format!("[{first}, {}", &text[1..])
        };
        std::fs::write(&path, text).unwrap();
        first.matches("\"relationship_id\"").count()
    };
    repeat_first("image_data.json", false);
    let repeated_relationships = repeat_first("relationships.json", true);
    assert!(repeated_relationships > 0);
    repeat_first("attributes.json", false);
    let run = dir.path().join("run");
    let out = ingest(&vg, &run);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("skipped 1 record(s): images duplicate id (first: image_id 3 again (in image 3); the first is kept)"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "skipped {repeated_relationships} record(s): relationships duplicate id"
        )),
        "{err}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    let counters = &manifest["stages"]["ingest"]["counters"];
    assert_eq!(counters["skipped_images_duplicate_id"], 1);
    assert_eq!(
        counters["skipped_relationships_duplicate_id"],
        repeated_relationships as u64
    );
    assert_eq!(counters["skipped_attributes_duplicate_id"], 1);
    for table in ["images", "relationships", "objects", "attributes"] {
        let got = simat::io::read_all(&run.join(format!("ingest/{table}.parquet"))).unwrap();
        let want = simat::io::read_all(&clean.join(format!("ingest/{table}.parquet"))).unwrap();
        assert_eq!(got, want, "{table}");
    }
}

/// A relationships record is read whatever the order of its keys: the image id after the list
/// (as VG writes it), `id` for `image_id`, unknown keys; a skipped relationship is still named
/// with its image. A repeated or missing list is an error with the offset of the record.
#[test]
fn relationship_records_read_in_any_key_order() {
    let dir = tempdir();
    let vg = dir.path().join("vg");
    std::fs::create_dir_all(&vg).unwrap();
    std::fs::write(
        vg.join("image_data.json"),
        r#"[{"width": 10, "height": 10, "image_id": 4}, {"width": 10, "height": 10, "image_id": 5}]"#,
    )
    .unwrap();
    let side = |id: u32, w: i32| {
        format!(r#"{{"object_id": {id}, "x": 1, "y": 1, "w": {w}, "h": 2, "name": "n{id}"}}"#)
    };
    let rel = |id: u32, w: i32| {
        format!(
            r#"{{"relationship_id": {id}, "predicate": "on", "subject": {}, "object": {}}}"#,
            side(id * 10, 3),
            side(id * 10 + 1, w)
        )
    };
    let records = [
        // The list first, a bad box in it, an unknown key, the id last.
        format!(
            r#"{{"relationships": [{}, {}, {}], "extra": {{"a": [1]}}, "image_id": 4}}"#,
            rel(1, 3),
            rel(2, 0),
            rel(3, 3)
        ),
        format!(r#"{{"id": 5, "relationships": [{}]}}"#, rel(4, 3)),
    ];
    std::fs::write(
        vg.join("relationships.json"),
        format!("[{}]", records.join(", ")),
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = ingest(&vg, &run);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "one skip: {err}");
    assert!(
        err.contains("relationship 2 in image 4 has a zero, negative or out-of-range box"),
        "{err}"
    );
    let rels = simat::io::read_all(&run.join("ingest/relationships.parquet")).unwrap();
    let col = |name: &str| -> Vec<i64> {
        arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
            rels.column_by_name(name).unwrap(),
        )
        .values()
        .to_vec()
    };
    assert_eq!(col("relationship_id"), vec![1, 3, 4]);
    assert_eq!(col("image_id"), vec![4, 4, 5]);
    assert_eq!(col("obj_id"), vec![11, 31, 41]);

    for (record, want) in [
        (
            format!(
                r#"{{"image_id": 4, "relationships": [], "relationships": [{}]}}"#,
                rel(1, 3)
            ),
            "duplicate field `relationships`",
        ),
        (
            r#"{"image_id": 4}"#.to_string(),
            "missing field `relationships`",
        ),
        (
            r#"{"image_id": 4, "relationships": null}"#.to_string(),
            "invalid type: null",
        ),
    ] {
        let bad = dir.path().join("bad");
        let _ = std::fs::remove_dir_all(&bad);
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(vg.join("image_data.json"), bad.join("image_data.json")).unwrap();
        std::fs::write(
            bad.join("relationships.json"),
            format!("[{}, {record}]", records[1]),
        )
        .unwrap();
        let out = ingest(&bad, &dir.path().join("bad-run"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{record}: {err}");
        assert!(err.contains(want), "{record}: {err}");
        assert!(offset_in(&err) > records[1].len() as u64, "{record}: {err}");
    }
}

#[test]
fn ingest_hashes_what_it_reads_and_a_changed_file_makes_it_stale() {
    let dir = tempdir();
    let vg = dir.path().join("vg");
    copy_sample(&vg);
    let run = dir.path().join("run");
    let inputs = |run: &Path| -> serde_json::Value {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
        manifest["stages"]["ingest"]["detail"]["inputs"].clone()
    };
    let digest = |file: &str| {
        blake3::hash(&std::fs::read(vg.join(file)).unwrap())
            .to_hex()
            .to_string()
    };
    // A first run hashes the files as it reads them: the digests are the files' own.
    let out = ingest(&vg, &run);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let first = inputs(&run);
    for file in [
        "image_data.json",
        "relationships.json",
        "objects.json",
        "attributes.json",
    ] {
        assert_eq!(first[file], digest(file).as_str(), "{file}: {first}");
    }
    // The engine, hashing the files itself, finds the same digests: fresh.
    let out = run_cmd(&["-v", "ingest", "--vg", s(&vg), "--run", s(&run)]);
    let err = stderr(&out);
    assert!(
        err.contains("Fresh ingest") && !err.contains("Running"),
        "{err}"
    );
    // A forced run reads and hashes them again, to the same digests.
    let out = run_cmd(&["ingest", "--vg", s(&vg), "--run", s(&run), "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(inputs(&run), first);
    // A changed file (white space after the array) makes it stale, naming the file.
    let rel = vg.join("relationships.json");
    let mut bytes = std::fs::read(&rel).unwrap();
    bytes.extend_from_slice(b"\n\n");
    std::fs::write(&rel, bytes).unwrap();
    let out = run_cmd(&["-v", "ingest", "--vg", s(&vg), "--run", s(&run)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("input relationships.json changed"), "{err}");
    let after = inputs(&run);
    assert_eq!(
        after["relationships.json"],
        digest("relationships.json").as_str()
    );
    assert_ne!(after["relationships.json"], first["relationships.json"]);
    assert_eq!(after["objects.json"], first["objects.json"]);
}
