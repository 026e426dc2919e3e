//! `schemas/` documents every stage output; the code and the files it writes must match it.

use std::path::Path;

use crate::util::*;

fn doc_path(stage: &str, file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(stage)
        .join(simat::schemas::doc_name(file))
}

#[test]
fn schema_documents_match_the_code() {
    for (stage, file, schema) in simat::schemas::all() {
        let path = doc_path(stage, file);
        let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} is missing; run `simat schemas --write schemas`",
                path.display()
            )
        });
        assert_eq!(
            doc,
            simat::schemas::to_json(&schema),
            "{} is out of date; run `simat schemas --write schemas`",
            path.display()
        );
    }
}

#[test]
fn written_files_match_the_schema_documents() {
    let dir = tempdir();
    let run = dir.path().join("run");
    run_ok(&["ingest", "--vg", s(&vg_sample()), "--run", s(&run)], 0);
    run_ok(&["triplets", "--run", s(&run)], 0);
    let release = shared_data().join("simat-release");
    run_ok(
        &["import-simat", "--release", s(&release), "--run", s(&run)],
        0,
    );
    // Any embeddings will do here: a deterministic pattern, one row per dataset region.
    let n = simat::io::inspect(&run.join("import/dataset.parquet"), 0)
        .unwrap()
        .rows as usize;
    let data = (0..n * 512)
        .map(|i| ((i * 7919) % 1013) as f32 - 506.0)
        .collect();
    let img = dir.path().join("img.npy");
    simat::io::store::write_npy(&img, &simat::linalg::Matrix::new(n, 512, data).unwrap()).unwrap();
    run_ok(
        &[
            "import-embeddings",
            "--run",
            s(&run),
            "--image-embeddings",
            s(&img),
            "--words",
            s(&release.join("clip_vitb32_words.txt")),
            "--word-embeddings",
            s(&release.join("clip_vitb32_word_vectors.npy")),
        ],
        0,
    );
    run_ok(&["queries", "--run", s(&run)], 0);
    run_ok(
        &[
            "retrieve",
            "--run",
            s(&run),
            "--lambdas",
            "1",
            "--queries",
            "regenerated",
        ],
        0,
    );
    run_ok(&["score", "--run", s(&run), "--queries", "regenerated"], 0);
    // Crops and selection, on a small rendered synthetic VG.
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            "run_dir = \"synth-run\"\n[synth]\nimage_count = 40\nrender = true\nplant_rate = 0.3\n[ingest]\n[triplets]\n[crops]\n[oracle]\nmodel = \"{}\"\n[select]\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tiny-clip").display()
        ),
    )
    .unwrap();
    run_ok(&["run", s(&p)], 0);
    let synth_run = dir.path().join("synth-run");
    // Heads trained on a few aligned pairs.
    let pairs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/adapt");
    run_ok(
        &[
            "adapt",
            "--run",
            s(&run),
            "--images",
            s(&pairs.join("x.npy")),
            "--texts",
            s(&pairs.join("y.npy")),
            "--epochs",
            "2",
        ],
        0,
    );
    for (stage, file, schema) in simat::schemas::all() {
        // The model stages' stores are checked against a real model in tests/embed.rs.
        if ["embed", "coco"].contains(&stage) {
            continue;
        }
        let path = match stage {
            "crops" | "select" | "oracle" => synth_run.join(stage).join(file),
            _ => run.join(stage).join(file),
        };
        let written = simat::io::inspect(&path, 0).unwrap();
        if file.ends_with(".arrow") {
            // A store's embedding has the model's dimension where the document says D.
            assert_eq!(
                simat::engine::outputs::difference(&schema, &written.schema),
                None,
                "{stage}/{file}"
            );
            continue;
        }
        let doc: simat::io::SchemaDoc =
            serde_json::from_str(&std::fs::read_to_string(doc_path(stage, file)).unwrap()).unwrap();
        assert_eq!(
            simat::io::SchemaDoc::of(&written.schema),
            doc,
            "{stage}/{file}"
        );
    }
}
