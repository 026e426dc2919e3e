//! Inputs the fuzzers (`fuzz/`) found to crash, hang or exhaust memory, minimized and kept in
//! `tests/data/fuzz/`: each is fed to the reader its name's prefix says (`npy-`, `torch-`,
//! `vg-<file>-`, `pipeline-`) and must give a result — Ok or a typed error — not a panic, an
//! abort or a hang.

use std::path::{Path, PathBuf};

use crate::util::*;

fn regressions() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn every_fuzz_finding_now_ends_in_a_result() {
    let files = regressions();
    assert!(!files.is_empty());
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("npy-") {
            let m = simat::io::store::read_matrix(&file);
            let _ = simat::io::store::read_vector(&file);
            let _ = simat::io::store::read_npy_ids(&file);
            if name.contains("timeout") || name.contains("crash") {
                assert!(m.is_err(), "{name} read as a matrix");
            }
        } else if name.starts_with("torch-") {
            let _ = simat::io::torch::read_matrix(&file);
            let _ = simat::io::torch::read_heads(&file);
            let _ = simat::io::torch::read_keyed_vectors(&file);
        } else if let Some(rest) = name.strip_prefix("vg-") {
            let dir = tempdir();
            let vg = dir.path().join("vg");
            std::fs::create_dir_all(&vg).unwrap();
            for f in [
                "image_data.json",
                "relationships.json",
                "objects.json",
                "attributes.json",
            ] {
                if rest.starts_with(f) {
                    std::fs::copy(&file, vg.join(f)).unwrap();
                } else {
                    std::fs::write(vg.join(f), "[]").unwrap();
                }
            }
            let out = dir.path().join("out");
            std::fs::create_dir_all(&out).unwrap();
            let _ = simat::stages::ingest::ingest(&vg, 1 << 12, &out, &simat::ui::Ui::quiet());
        } else if name.starts_with("pipeline-") {
            if let Ok(p) = simat::pipeline::Pipeline::load(&file) {
                let _ = p.stages();
            }
        } else {
            panic!("{name}: no reader for this prefix");
        }
    }
}
