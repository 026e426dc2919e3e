//! Image preprocessing, one thread: PNG decode + Pillow-exact bicubic resize + centre crop +
//! normalisation (what `simat embed` does per image before inference), per image, on the PNGs of
//! `SIMAT_BENCH_IMAGES` (a folder; default: the tiny model's four reference images).
//! `benches/preprocess_peers.py` times PIL + open_clip's transform on the same folder.
//!
//! `cargo bench --bench preprocess`; `SIMAT_BENCH_SECS` sets the measurement time per case.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use simat::model::clip::{OPENAI_MEAN, OPENAI_STD};
use simat::model::preprocess::Preprocess;

fn images() -> Vec<PathBuf> {
    let dir = std::env::var_os("SIMAT_BENCH_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/tiny-clip/reference")
        });
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("image folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    files.sort();
    files
}

fn bench(c: &mut Criterion) {
    let secs = std::env::var("SIMAT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let files = images();
    let p = Preprocess::new(224, OPENAI_MEAN, OPENAI_STD);
    let mut out = vec![0f32; p.len()];
    let mut g = c.benchmark_group("preprocess");
    g.measurement_time(Duration::from_secs_f64(secs));
    g.sample_size(10);
    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function(
        format!("{} PNGs, decode + resize + normalise", files.len()),
        |b| {
            b.iter(|| {
                for f in &files {
                    p.file(f, &mut out).unwrap();
                }
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
