//! The `.npy` reader: matrices, vectors and id arrays from arbitrary bytes (headers that claim
//! any shape, any dtype, truncated data). Ok or a typed error, never a panic, an abort or an
//! allocation the file does not justify.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::PathBuf::from(format!("/dev/shm/simat-fuzz-{}.npy", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let _ = simat::io::store::read_matrix(&path);
    let _ = simat::io::store::read_vector(&path);
    let _ = simat::io::store::read_npy_ids(&path);
});
