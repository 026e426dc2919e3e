//! One training step of the adaptation heads (`simat::model::train::loss_and_grad`: two
//! 512 × 512 heads, B × B logits, the backward pass) at batch 512 and 4,096, and the fast `exp`
//! of the softmax against `f32::exp` over one row block.
//!
//! `cargo bench --bench adapt`; `SIMAT_BENCH_SECS` sets the measurement time per case. The peer
//! comparison with PyTorch is `benches/adapt_peers.py`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{RngExt, SeedableRng};
use simat::model::train::{exp_nonpositive, loss_and_grad, HeadParams};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() - 0.5).collect()
}

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("SIMAT_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5.0),
    )
}

fn step(c: &mut Criterion) {
    let d = 512;
    let mut g = c.benchmark_group("adapt_step");
    g.measurement_time(secs()).sample_size(10);
    for b in [512usize, 4096] {
        let x = random(b * d, 1);
        let y = random(b * d, 2);
        let p = HeadParams::identity(d);
        let mut grad = p.zeros_like();
        // Forward heads, logits and backward: about 12·B·D² + 6·B²·D flops.
        g.throughput(Throughput::Elements(
            (12 * b * d * d + 6 * b * b * d) as u64,
        ));
        g.bench_with_input(BenchmarkId::new("loss_and_grad", b), &b, |bch, &b| {
            bch.iter(|| loss_and_grad(&p, &x, &y, b, 0.1, Some(&mut grad)))
        });
    }
    g.finish();
}

fn exp(c: &mut Criterion) {
    let xs: Vec<f32> = (0..1 << 20).map(|i| -((i % 8700) as f32) * 0.01).collect();
    let mut out = vec![0f32; xs.len()];
    let mut g = c.benchmark_group("softmax_exp");
    g.measurement_time(secs());
    g.throughput(Throughput::Elements(xs.len() as u64));
    g.bench_function("f32::exp", |b| {
        b.iter(|| {
            for (o, x) in out.iter_mut().zip(&xs) {
                *o = x.exp();
            }
        })
    });
    g.bench_function("exp_nonpositive", |b| {
        b.iter(|| {
            for (o, x) in out.iter_mut().zip(&xs) {
                *o = exp_nonpositive(*x);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, step, exp);
criterion_main!(benches);
