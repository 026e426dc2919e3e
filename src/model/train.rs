//! Training the paper's adaptation heads: two linear maps (image, text) on frozen, raw
//! embeddings, with the symmetric contrastive loss at temperature τ, Adam, gradient clipping and
//! a step learning-rate schedule — the method of the release's `adaptation.py` as intended (its
//! text head is there fed the image features, a bug not reproduced here).
//!
//! For a batch of `B` pairs `(x_i, y_i)`: `u = x·W_iᵀ + b_i`, `v = y·W_tᵀ + b_t`, rows normalised
//! (`û`, `v̂`), `S = û·v̂ᵀ / τ`, and `loss = (CE(S, I) + CE(Sᵀ, I)) / 2`. The gradient is
//! analytic: with `P` the row softmax of `S` and `Q` its column softmax,
//! `∂L/∂S = (P + Q − 2I) / 2B`; then `∂L/∂û = (∂L/∂S)·v̂ / τ`, `∂L/∂v̂ = (∂L/∂S)ᵀ·û / τ`, through
//! the normalisation `∂L/∂u = (g − û(û·g)) / |u|`, and `∂L/∂W = (∂L/∂u)ᵀ·x`, `∂L/∂b = Σ ∂L/∂u`.
//! One `exp` per entry of `S`: the column sums reuse the row exponentials, scaled in f64.
//! Every product is [`gemm_par`], whose split does not depend on the thread count, so a step
//! gives the same bits on any number of threads.

use rayon::prelude::*;

use crate::linalg::{gemm_par, Op};

/// The two heads, PyTorch `Linear` layout (`W` is `out × in`, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadParams {
    /// Output dimension.
    pub d_out: usize,
    /// Image embedding dimension.
    pub d_img: usize,
    /// Text embedding dimension.
    pub d_txt: usize,
    /// Image head weight, `d_out × d_img`.
    pub img_w: Vec<f32>,
    /// Image head bias.
    pub img_b: Vec<f32>,
    /// Text head weight, `d_out × d_txt`.
    pub txt_w: Vec<f32>,
    /// Text head bias.
    pub txt_b: Vec<f32>,
}

impl HeadParams {
    /// Identity weights (`d_out = d_img = d_txt = d`) and zero biases.
    pub fn identity(d: usize) -> HeadParams {
        let mut w = vec![0f32; d * d];
        for i in 0..d {
            w[i * d + i] = 1.0;
        }
        HeadParams {
            d_out: d,
            d_img: d,
            d_txt: d,
            img_w: w.clone(),
            img_b: vec![0.0; d],
            txt_w: w,
            txt_b: vec![0.0; d],
        }
    }

    /// A zero-filled set of the same shape (gradients, Adam moments).
    pub fn zeros_like(&self) -> HeadParams {
        HeadParams {
            img_w: vec![0.0; self.img_w.len()],
            img_b: vec![0.0; self.img_b.len()],
            txt_w: vec![0.0; self.txt_w.len()],
            txt_b: vec![0.0; self.txt_b.len()],
            ..self.clone()
        }
    }

    /// The four tensors, in a fixed order.
    pub fn parts(&self) -> [&Vec<f32>; 4] {
        [&self.img_w, &self.img_b, &self.txt_w, &self.txt_b]
    }

    /// The four tensors, mutable, in the order of [`Self::parts`].
    pub fn parts_mut(&mut self) -> [&mut Vec<f32>; 4] {
        [
            &mut self.img_w,
            &mut self.img_b,
            &mut self.txt_w,
            &mut self.txt_b,
        ]
    }
}

/// `y = x·Wᵀ + b` for `n` rows.
pub fn linear(x: &[f32], n: usize, d_in: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let d_out = b.len();
    let mut y = vec![0f32; n * d_out];
    gemm_par((x, Op::N), (w, Op::T), (n, d_out, d_in), &mut y);
    y.par_chunks_mut(d_out.max(1)).for_each(|row| {
        for (v, bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    });
    y
}

/// Row-normalise in place; returns the norms.
fn normalise(u: &mut [f32], d: usize) -> Vec<f32> {
    u.par_chunks_mut(d)
        .map(|row| {
            let n = row
                .iter()
                .map(|v| (*v as f64) * (*v as f64))
                .sum::<f64>()
                .sqrt() as f32;
            if n > 0.0 {
                row.iter_mut().for_each(|v| *v /= n);
            }
            n
        })
        .collect()
}

/// The symmetric contrastive loss of a batch and, when `grad` is given, its gradient with
/// respect to the heads (overwritten). `x` is `b × d_img`, `y` is `b × d_txt`.
pub fn loss_and_grad(
    p: &HeadParams,
    x: &[f32],
    y: &[f32],
    b: usize,
    tau: f32,
    grad: Option<&mut HeadParams>,
) -> f64 {
    let d = p.d_out;
    let mut u = linear(x, b, p.d_img, &p.img_w, &p.img_b);
    let mut v = linear(y, b, p.d_txt, &p.txt_w, &p.txt_b);
    let nu = normalise(&mut u, d);
    let nv = normalise(&mut v, d);
    // S = û·v̂ᵀ / τ, then E = exp(S − rowmax) in place.
    let mut s = vec![0f32; b * b];
    gemm_par((&u, Op::N), (&v, Op::T), (b, b, d), &mut s);
    let inv_tau = 1.0 / tau;
    let diag: Vec<f32> = (0..b).map(|i| s[i * b + i] * inv_tau).collect();
    let rows: Vec<(f32, f64)> = s
        .par_chunks_mut(b)
        .map(|row| {
            // Eight lanes, so that the loops vectorise (a fixed order: the same bits always).
            let mut lanes = [f32::NEG_INFINITY; 8];
            let mut chunks = row.chunks_exact_mut(8);
            for c in &mut chunks {
                for (l, v) in lanes.iter_mut().zip(c.iter_mut()) {
                    *v *= inv_tau;
                    *l = l.max(*v);
                }
            }
            let mut m = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for v in chunks.into_remainder() {
                *v *= inv_tau;
                m = m.max(*v);
            }
            for v in row.iter_mut() {
                *v = exp_nonpositive(*v - m);
            }
            let mut sums = [0f64; 8];
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                for (l, v) in sums.iter_mut().zip(c) {
                    *l += *v as f64;
                }
            }
            let sum = sums.iter().sum::<f64>()
                + chunks.remainder().iter().map(|v| *v as f64).sum::<f64>();
            (m, sum)
        })
        .collect();
    let top = rows.iter().map(|r| r.0).fold(f32::NEG_INFINITY, f32::max);
    // Column sums of exp(S) relative to `top`: Σ_i E_ij · exp(m_i − top), in f64.
    let a: Vec<f64> = rows.iter().map(|r| ((r.0 - top) as f64).exp()).collect();
    const COLS: usize = 256;
    let col_sums: Vec<f64> = (0..b.div_ceil(COLS))
        .into_par_iter()
        .flat_map_iter(|blk| {
            let (j0, j1) = (blk * COLS, ((blk + 1) * COLS).min(b));
            let mut acc = vec![0f64; j1 - j0];
            for (i, ai) in a.iter().enumerate() {
                let row = &s[i * b + j0..i * b + j1];
                for (c, e) in acc.iter_mut().zip(row) {
                    *c += *e as f64 * ai;
                }
            }
            acc.into_iter()
        })
        .collect();
    let mut loss_rows = 0f64;
    let mut loss_cols = 0f64;
    for i in 0..b {
        loss_rows += rows[i].0 as f64 + rows[i].1.ln() - diag[i] as f64;
        loss_cols += top as f64 + col_sums[i].ln() - diag[i] as f64;
    }
    let loss = (loss_rows + loss_cols) / (2.0 * b as f64);
    let Some(grad) = grad else {
        return loss;
    };
    // G = (P + Q − 2I) / 2B, in place of E.
    let scale = 1.0 / (2.0 * b as f64);
    let inv_cols: Vec<f64> = col_sums.iter().map(|c| scale / c).collect();
    s.par_chunks_mut(b).enumerate().for_each(|(i, row)| {
        let row_factor = scale / rows[i].1;
        let ai = a[i];
        for (e, ic) in row.iter_mut().zip(&inv_cols) {
            let e64 = *e as f64;
            *e = (e64 * (row_factor + ai * ic)) as f32;
        }
        row[i] -= (2.0 * scale) as f32;
    });
    // ∂L/∂û = G·v̂/τ, ∂L/∂v̂ = Gᵀ·û/τ.
    let mut gu = vec![0f32; b * d];
    let mut gv = vec![0f32; b * d];
    gemm_par((&s, Op::N), (&v, Op::N), (b, d, b), &mut gu);
    gemm_par((&s, Op::T), (&u, Op::N), (b, d, b), &mut gv);
    for (g, unit, norms) in [(&mut gu, &u, &nu), (&mut gv, &v, &nv)] {
        g.par_chunks_mut(d)
            .zip(unit.par_chunks(d))
            .zip(norms.par_iter())
            .for_each(|((gr, ur), n)| {
                let dot: f32 = gr.iter().zip(ur).map(|(a, b)| a * b).sum::<f32>() * inv_tau;
                let inv_n = if *n > 0.0 { 1.0 / n } else { 0.0 };
                for (gv, uv) in gr.iter_mut().zip(ur) {
                    *gv = (*gv * inv_tau - uv * dot) * inv_n;
                }
            });
    }
    // ∂L/∂W = (∂L/∂u)ᵀ·x, ∂L/∂b = Σ_rows ∂L/∂u.
    gemm_par((&gu, Op::T), (x, Op::N), (d, p.d_img, b), &mut grad.img_w);
    gemm_par((&gv, Op::T), (y, Op::N), (d, p.d_txt, b), &mut grad.txt_w);
    for (g, out) in [(&gu, &mut grad.img_b), (&gv, &mut grad.txt_b)] {
        out.iter_mut().for_each(|v| *v = 0.0);
        for row in g.chunks(d) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
    }
    loss
}

/// `e^x` for `x ≤ 0` (a logit minus its row's maximum), branch-free so that a loop over a row
/// vectorises: Cody–Waite reduction `x = n·ln 2 + r`, Cephes' degree-5 polynomial for `e^r`, and
/// `2^n` built in the exponent bits. Within 2 ulp of `f32::exp` on `[-87, 0]`; below, a value
/// under 1e-37 (softmax weights that small do not count).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding and subtracting it rounds to an integer
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    er * scale
}

/// The global L2 norm of a gradient (all four tensors together), computed as PyTorch's
/// `clip_grad_norm_` does: the norm of the per-tensor norms.
pub fn grad_norm(g: &HeadParams) -> f32 {
    let norms: Vec<f32> = g
        .parts()
        .iter()
        .map(|t| t.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    norms.iter().map(|n| n * n).sum::<f32>().sqrt()
}

/// Scale the gradient as `clip_grad_norm_(max_norm)` does; returns the norm before clipping.
pub fn clip(g: &mut HeadParams, max_norm: f32) -> f32 {
    let total = grad_norm(g);
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        for t in g.parts_mut() {
            t.iter_mut().for_each(|v| *v *= coef);
        }
    }
    total
}

/// Adam as PyTorch's `torch.optim.Adam` (β₁ 0.9, β₂ 0.999, ε 1e-8, bias correction, no weight
/// decay).
#[derive(Debug, Clone, PartialEq)]
pub struct Adam {
    /// Steps taken.
    pub step: u64,
    /// First moments.
    pub m: HeadParams,
    /// Second moments.
    pub v: HeadParams,
}

impl Adam {
    /// β₁.
    pub const BETA1: f32 = 0.9;
    /// β₂.
    pub const BETA2: f32 = 0.999;
    /// ε.
    pub const EPS: f32 = 1e-8;

    /// A fresh optimiser for parameters shaped as `p`.
    pub fn new(p: &HeadParams) -> Adam {
        Adam {
            step: 0,
            m: p.zeros_like(),
            v: p.zeros_like(),
        }
    }

    /// One update of `p` by `g` at learning rate `lr`.
    pub fn update(&mut self, p: &mut HeadParams, g: &HeadParams, lr: f64) {
        self.step += 1;
        // As PyTorch: the scalars in double, the tensors in float.
        let bc1 = 1.0 - (Self::BETA1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (Self::BETA2 as f64).powi(self.step as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let gs = g.parts();
        let ms = self.m.parts_mut();
        let vs = self.v.parts_mut();
        for (((param, grad), m), v) in p.parts_mut().into_iter().zip(gs).zip(ms).zip(vs) {
            param
                .par_iter_mut()
                .zip(grad.par_iter())
                .zip(m.par_iter_mut())
                .zip(v.par_iter_mut())
                .for_each(|(((pv, gv), mv), vv)| {
                    *mv = Self::BETA1 * *mv + (1.0 - Self::BETA1) * gv;
                    *vv = Self::BETA2 * *vv + (1.0 - Self::BETA2) * gv * gv;
                    let denom = vv.sqrt() / bc2_sqrt + Self::EPS;
                    *pv -= step_size * *mv / denom;
                });
        }
    }
}

/// StepLR: `lr0 · γ^⌊epoch / step⌋`.
pub fn step_lr(lr0: f64, gamma: f64, step: usize, epoch: usize) -> f64 {
    lr0 * gamma.powi((epoch / step.max(1)) as i32)
}

/// Recall@1 both ways over a set of pairs: the fraction of images whose own text is their
/// nearest text (cosine), and of texts whose own image is theirs. Ties go to the lower index.
pub fn recall_at_1(p: &HeadParams, x: &[f32], y: &[f32], n: usize) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let d = p.d_out;
    let mut u = linear(x, n, p.d_img, &p.img_w, &p.img_b);
    let mut v = linear(y, n, p.d_txt, &p.txt_w, &p.txt_b);
    normalise(&mut u, d);
    normalise(&mut v, d);
    let top1 = |a: &[f32], b: &[f32]| -> usize {
        let hits = crate::linalg::knn(
            crate::linalg::MatrixView::new(n, d, b),
            crate::linalg::MatrixView::new(n, d, a),
            1,
            None,
        );
        hits.iter()
            .enumerate()
            .filter(|(i, h)| h.first().is_some_and(|h| h.id as usize == *i))
            .count()
    };
    (
        top1(&u, &v) as f64 / n as f64,
        top1(&v, &u) as f64 / n as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The analytic gradient equals central finite differences (the loss evaluated in f64 by
    /// a direct, independent implementation) on a small case, for every tensor.
    #[test]
    fn gradient_equals_finite_differences() {
        let (b, d_img, d_txt, d) = (7usize, 5usize, 4usize, 3usize);
        let x = random(b * d_img, 1);
        let y = random(b * d_txt, 2);
        let p = HeadParams {
            d_out: d,
            d_img,
            d_txt,
            img_w: random(d * d_img, 3),
            img_b: random(d, 4),
            txt_w: random(d * d_txt, 5),
            txt_b: random(d, 6),
        };
        let tau = 0.3f64;
        // The loss straight from its definition, in f64.
        let direct = |p: &[Vec<f64>; 4]| -> f64 {
            let head = |w: &[f64], bias: &[f64], z: &[f32], din: usize| -> Vec<Vec<f64>> {
                (0..b)
                    .map(|r| {
                        let o: Vec<f64> = (0..d)
                            .map(|k| {
                                bias[k]
                                    + (0..din)
                                        .map(|c| w[k * din + c] * z[r * din + c] as f64)
                                        .sum::<f64>()
                            })
                            .collect();
                        let n = o.iter().map(|v| v * v).sum::<f64>().sqrt();
                        o.iter().map(|v| v / n).collect()
                    })
                    .collect()
            };
            let u = head(&p[0], &p[1], &x, d_img);
            let v = head(&p[2], &p[3], &y, d_txt);
            let s: Vec<Vec<f64>> = (0..b)
                .map(|i| {
                    (0..b)
                        .map(|j| (0..d).map(|k| u[i][k] * v[j][k]).sum::<f64>() / tau)
                        .collect()
                })
                .collect();
            let ce = |f: &dyn Fn(usize, usize) -> f64| -> f64 {
                (0..b)
                    .map(|i| {
                        let lse = (0..b).map(|j| f(i, j).exp()).sum::<f64>().ln();
                        lse - f(i, i)
                    })
                    .sum::<f64>()
                    / b as f64
            };
            (ce(&|i, j| s[i][j]) + ce(&|i, j| s[j][i])) / 2.0
        };
        let as64 = |p: &HeadParams| -> [Vec<f64>; 4] {
            p.parts().map(|t| t.iter().map(|&v| v as f64).collect())
        };
        let mut g = p.zeros_like();
        let loss = loss_and_grad(&p, &x, &y, b, tau as f32, Some(&mut g));
        assert!((loss - direct(&as64(&p))).abs() < 1e-5, "{loss}");
        let h = 1e-5;
        for t in 0..4 {
            for k in 0..p.parts()[t].len() {
                let mut plus = as64(&p);
                let mut minus = as64(&p);
                plus[t][k] += h;
                minus[t][k] -= h;
                let fd = (direct(&plus) - direct(&minus)) / (2.0 * h);
                let an = g.parts()[t][k] as f64;
                assert!(
                    (fd - an).abs() < 1e-4 * (1.0 + fd.abs()),
                    "tensor {t}, entry {k}: analytic {an}, finite differences {fd}"
                );
            }
        }
    }

    #[test]
    fn a_step_is_the_same_on_any_number_of_threads() {
        let (b, d) = (300usize, 24usize);
        let x = random(b * d, 7);
        let y = random(b * d, 8);
        let p = HeadParams::identity(d);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut g = p.zeros_like();
                    let l = loss_and_grad(&p, &x, &y, b, 0.1, Some(&mut g));
                    (l, g)
                })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn fast_exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert!(exp_nonpositive(-200.0) < 1e-37);
    }

    #[test]
    fn adam_matches_its_formula_on_one_value() {
        let mut p = HeadParams::identity(1);
        let mut g = p.zeros_like();
        g.img_w[0] = 0.5;
        let mut adam = Adam::new(&p);
        adam.update(&mut p, &g, 0.1);
        // Step 1: m̂ = g, v̂ = g², update = lr · g/(|g| + ε).
        assert!((p.img_w[0] - (1.0 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-7);
        assert_eq!(step_lr(1e-3, 0.1, 25, 24), 1e-3);
        assert!((step_lr(1e-3, 0.1, 25, 25) - 1e-4).abs() < 1e-15);
        assert!((step_lr(1e-3, 0.1, 25, 50) - 1e-5).abs() < 1e-15);
    }
}
