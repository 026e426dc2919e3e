//! The PyTorch reader: the fuzz input is the pickle (`archive/data.pkl`) of a `torch.save` zip,
//! beside one small storage (`archive/data/0`), read as a matrix, as heads and as keyed vectors.
//! Ok or a typed error, never a panic or an abort.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::PathBuf::from(format!("/dev/shm/simat-fuzz-{}.pt", std::process::id()));
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(data).unwrap();
        zip.start_file("archive/data/0", opts).unwrap();
        zip.write_all(&[0u8; 64]).unwrap();
        zip.start_file("archive/version", opts).unwrap();
        zip.write_all(b"3\n").unwrap();
        zip.finish().unwrap();
    }
    let _ = simat::io::torch::read_matrix(&path);
    let _ = simat::io::torch::read_heads(&path);
    let _ = simat::io::torch::read_keyed_vectors(&path);
});
