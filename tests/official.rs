//! `pipelines/official.toml`: the official benchmark end to end — import, crops of the release's
//! regions, embedding with a model, retrieval, score — on stand-in images for Visual Genome, with
//! the tiny model; its scores equal the same steps run one by one.

use std::path::{Path, PathBuf};

use crate::util::*;

fn release() -> PathBuf {
    shared_data().join("simat-release")
}

/// The committed pipeline with its three paths pointed at this test's inputs.
fn pipeline(dir: &Path, images: &Path) -> PathBuf {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/official.toml");
    let mut t: toml::Table = std::fs::read_to_string(committed).unwrap().parse().unwrap();
    // What the file must say, whatever the paths.
    assert_eq!(
        t["crops"]["outside"].as_str(),
        Some("pad"),
        "prepare_dataset.py's crops"
    );
    assert!(t.contains_key("import") && t.contains_key("embed") && t.contains_key("score"));
    let set = |t: &mut toml::Table, section: &str, key: &str, v: &Path| {
        t[section].as_table_mut().unwrap()[key] = toml::Value::String(s(v).into());
    };
    t["run_dir"] = toml::Value::String("run".into());
    set(&mut t, "import", "release", &release());
    set(&mut t, "crops", "image_dir", images);
    set(&mut t, "embed", "model", &tiny_clip());
    let p = dir.join("official.toml");
    std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
    p
}

#[test]
fn official_pipeline_equals_its_steps_one_by_one() {
    let dir = tempdir();
    let images = dir.path().join("vg-stand-in");
    run_ok(
        &["stand-ins", "--release", s(&release()), "--out", s(&images)],
        0,
    );
    let p = pipeline(dir.path(), &images);
    let out = run_ok(&["run", s(&p)], 0);
    assert!(
        stdout(&out).contains("the release's queries (transfos.csv) 17996 queries; model tiny"),
        "{}",
        stdout(&out)
    );
    let run = dir.path().join("run");
    let lambdas: Vec<String> = toml::from_str::<toml::Table>(&std::fs::read_to_string(&p).unwrap())
        .unwrap()["retrieve"]["lambdas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_float().unwrap().to_string())
        .collect();

    // The same, step by step, through the general tools: crops, `simat encode` of the crops in
    // dataset_id order and of the words, the keyed import of its stores, then score.
    let steps = dir.path().join("steps");
    run_ok(
        &[
            "import-simat",
            "--release",
            s(&release()),
            "--run",
            s(&steps),
        ],
        0,
    );
    run_ok(
        &[
            "crops",
            "--only-dataset",
            "--outside",
            "pad",
            "--image-dir",
            s(&images),
            "--run",
            s(&steps),
        ],
        0,
    );
    assert_eq!(
        std::fs::read(steps.join("crops/crops.parquet")).unwrap(),
        std::fs::read(run.join("crops/crops.parquet")).unwrap()
    );
    let d = simat::tables::dataset::Dataset::read(&steps.join("import/dataset.parquet")).unwrap();
    let crops: Vec<PathBuf> = d
        .region_id
        .iter()
        .map(|r| steps.join(format!("crops/crops/{r}.png")))
        .collect();
    let words: std::collections::BTreeSet<&str> = d
        .triplet
        .iter()
        .flat_map(|t| t.iter().map(String::as_str))
        .collect();
    let words_file = dir.path().join("words.txt");
    std::fs::write(
        &words_file,
        words.iter().copied().collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let embedded = dir.path().join("embedded");
    let mut args = vec![
        "encode".to_string(),
        "--model".into(),
        s(&tiny_clip()).into(),
        "--texts".into(),
        s(&words_file).into(),
        "--out".into(),
        s(&embedded).into(),
        "--images".into(),
    ];
    args.extend(crops.iter().map(|c| s(c).to_string()));
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    run_ok(
        &[
            "import-embeddings",
            "--run",
            s(&steps),
            "--image-embeddings",
            s(&embedded.join("image_embeddings.arrow")),
            "--word-embeddings",
            s(&embedded.join("text_embeddings.arrow")),
        ],
        0,
    );
    let l = lambdas.join(",");
    score_ok(
        &[
            "score",
            "--run",
            s(&steps),
            "--lambda",
            &l,
            "--split",
            "all",
            "--oracle",
            "labels",
        ],
        0,
    );
    let retrievals = "retrieve/retrievals.parquet";
    assert_eq!(
        simat::io::read_all(&steps.join(retrievals)).unwrap(),
        simat::io::read_all(&run.join(retrievals)).unwrap()
    );
    let a = simat::tables::retrievals::ScoresFile::read(&run.join("score/scores.json")).unwrap();
    let b = simat::tables::retrievals::ScoresFile::read(&steps.join("score/scores.json")).unwrap();
    assert_eq!(a.scores, b.scores);
    assert_eq!(a.scores.len(), lambdas.len() * 3 * 4);
    assert_eq!(a.provenance["query_set"], "release");
    assert_eq!(a.provenance["embeddings"]["model"]["name"], "tiny");
    // A second run is fresh throughout.
    let again = run_ok(&["run", s(&p)], 0);
    assert!(!stdout(&again).contains(" ran "), "{}", stdout(&again));
}
