//! The JSON splitter and the Visual Genome parsers, through `ingest`: the first byte picks the
//! file that gets the rest (image_data, relationships, objects, attributes); the others are `[]`.
//! Any input must end in Ok or a typed error, never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;

const FILES: [&str; 4] = [
    "image_data.json",
    "relationships.json",
    "objects.json",
    "attributes.json",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let dir = std::path::PathBuf::from(format!("/dev/shm/simat-fuzz-vg-{}", std::process::id()));
    let vg = dir.join("vg");
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&vg).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    for (i, f) in FILES.iter().enumerate() {
        let bytes: &[u8] = if i == pick as usize % FILES.len() { body } else { b"[]" };
        std::fs::write(vg.join(f), bytes).unwrap();
    }
    let ui = simat::ui::Ui::quiet();
    // The smallest block, so that elements straddle reads.
    let _ = simat::stages::ingest::ingest(&vg, 1 << 12, &out, &ui);
});
