//! Retrieval kernels: the blocked-GEMM top-k against a naive scalar baseline, and the cost of a
//! λ sweep (10 λ) against a single λ at the SIMAT size (5,859 images, 17,996 queries, d = 512).
//!
//! `cargo bench --bench retrieval`; `SIMAT_BENCH_SECS` sets the measurement time per case.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{RngExt, SeedableRng};
use simat::linalg::{bf16, knn, normalize_rows, sweep, Hit, Matrix, TopK};

fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data = (0..rows * cols)
        .map(|_| rng.random::<f32>() - 0.5)
        .collect();
    let mut m = Matrix::new(rows, cols, data).unwrap();
    normalize_rows(&mut m);
    m
}

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("SIMAT_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5.0),
    )
}

/// One dot product at a time, then a top-k: what the kernel replaces.
fn naive(db: &Matrix, q: &Matrix, k: usize) -> Vec<Vec<Hit>> {
    (0..q.rows)
        .map(|i| {
            let mut top = TopK::new(k);
            for j in 0..db.rows {
                let s: f32 = q.row(i).iter().zip(db.row(j)).map(|(a, b)| a * b).sum();
                top.push(Hit {
                    id: j as u32,
                    score: s,
                });
            }
            top.into_sorted()
        })
        .collect()
}

fn bench_knn(c: &mut Criterion) {
    let db = random(20_000, 512, 1);
    let q = random(500, 512, 2);
    let mut g = c.benchmark_group("knn 20000x512, 500 queries, k=10");
    g.sample_size(10).measurement_time(secs());
    g.throughput(Throughput::Elements((db.rows * q.rows) as u64));
    g.bench_function("naive", |b| b.iter(|| naive(&db, &q, 10)));
    g.bench_function("blocked f32 kernel", |b| {
        b.iter(|| knn(db.view(), q.view(), 10, None))
    });
    // bf16 scores + the certified f32 re-rank (same results), where the CPU has bf16 units.
    if let Some(unit) = bf16::Unit::detect() {
        g.bench_function(unit.name(), |b| {
            b.iter(|| {
                let p = bf16::prepare(db.view(), q.view(), unit).expect("bounded data");
                bf16::knn(&p, 10, None)
            })
        });
    }
    g.finish();
}

fn bench_sweep(c: &mut Criterion) {
    let db = random(5_859, 512, 3);
    let words = random(131, 512, 4);
    let n_q = 17_996;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let rows: Vec<usize> = (0..n_q).map(|_| rng.random_range(0..db.rows)).collect();
    let value: Vec<usize> = (0..n_q).map(|_| rng.random_range(0..words.rows)).collect();
    let target: Vec<usize> = (0..n_q).map(|_| rng.random_range(0..words.rows)).collect();
    let exclude: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let mut g = c.benchmark_group("SIMAT sweep 5859 images, 17996 queries, k=5");
    g.sample_size(10).measurement_time(secs());
    for n_l in [1usize, 10] {
        let lambdas: Vec<f32> = (0..n_l).map(|l| l as f32 * 0.3).collect();
        g.bench_with_input(BenchmarkId::new("lambdas", n_l), &lambdas, |b, lambdas| {
            b.iter(|| {
                sweep(
                    db.view(),
                    &rows,
                    words.view(),
                    &value,
                    &target,
                    lambdas,
                    5,
                    &exclude,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_knn, bench_sweep);
criterion_main!(benches);
