//! The pipeline loader: any TOML (or not) is a loaded pipeline or a typed error naming the
//! problem, never a panic; a loaded one builds every stage it names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::path::PathBuf::from(format!("/dev/shm/simat-fuzz-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, data).unwrap();
    if let Ok(p) = simat::pipeline::Pipeline::load(&path) {
        let _ = p.stages();
    }
});
