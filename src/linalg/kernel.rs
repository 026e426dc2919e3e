//! The f32 score kernel: a block of query rows times a block of database rows, every score
//! computed the same way on every CPU and in every block shape.
//!
//! **The f32 score of a pair is defined** as the sequential fused multiply-add chain over the
//! dimensions in order, `s = fma(q[d−1], x[d−1], … fma(q[1], x[1], fma(q[0], x[0], 0)))`, one
//! rounding per dimension ([`chain`]). The vector kernels keep one accumulator per (query,
//! database row) and run that chain across the SIMD lanes, so a score does not depend on the
//! instruction set (AVX-512, AVX2, scalar), on the block it falls in, on the thread count, nor
//! on which other queries share the batch. General GEMM libraries do not promise this: `gemm`
//! splits the dimension in two above 512 and takes other paths for small shapes, so the same
//! pair scored differently by an ulp depending on where it fell. A canonical score is what lets
//! the bf16 path (`super::bf16`) re-score its candidates and return exactly the f32 results.
//!
//! Layout, as BLIS: the database block is packed into panels of `NR` rows, dimension-major
//! (`panel[k·NR + j]` = row `j`'s value `k`), zero-padded; `MR` query rows are packed the same
//! way; the micro-kernel holds `MR × NR` accumulators in registers and streams one panel of each.
//! The query panel (`MR·d` floats) stays in L1 while the database panels of a sub-block (sized
//! for L2) stream past it.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// The canonical f32 score of one pair: the fused multiply-add chain in dimension order.
#[inline]
pub fn chain(q: &[f32], x: &[f32]) -> f32 {
    let mut s = 0f32;
    for (a, b) in q.iter().zip(x) {
        s = a.mul_add(*b, s);
    }
    s
}

/// The instruction set the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 16 lanes, 32 registers: 8 query rows × 48 database rows per micro-tile.
    Avx512,
    /// 8 lanes with FMA, 16 registers: 6 × 16.
    Avx2,
    /// No vector FMA: one chain at a time (`mul_add`).
    Scalar,
}

impl Isa {
    /// The best this CPU has (checked once), or a lesser one named by `SIMAT_KERNEL_ISA`
    /// (`avx2`, `scalar`), to compare kernels on one machine; the scores are the same.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::best();
            match std::env::var("SIMAT_KERNEL_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") if best != Isa::Scalar => Isa::Avx2,
                _ => best,
            }
        })
    }

    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Database rows per panel.
    pub(crate) fn nr(self) -> usize {
        match self {
            Isa::Avx512 => 48,
            Isa::Avx2 | Isa::Scalar => 16,
        }
    }

    /// Query rows per micro-tile.
    fn mr(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 | Isa::Scalar => 6,
        }
    }

    /// Dimensions per piece. On AVX-512 a database micro-panel piece (48 × 128 floats, 24 KB)
    /// stays in L1 (48 KB on Sapphire Rapids). On AVX2 pieces of 512 ran 14 % faster than
    /// pieces of 128 on Zen 3 (d = 512, 50,000 × 5,000: 1.88 s against 2.19 s, median of 8
    /// alternated runs, pieces of 256: 2.05 s), though a 16-row panel of 512 (32 KB) fills
    /// Zen 3's L1: each piece costs a store and reload of the accumulators and a new pass over
    /// the query panels.
    fn kc(self) -> usize {
        match self {
            Isa::Avx512 => 128,
            Isa::Avx2 | Isa::Scalar => 512,
        }
    }

    /// Bytes of packed database a sub-block may take: about half the L2 of the cores that
    /// have this instruction set (2 MB on Sapphire Rapids, 512 KB on Zen 3).
    fn sub_block_bytes(self) -> usize {
        match self {
            Isa::Avx512 => 512 << 10,
            Isa::Avx2 | Isa::Scalar => 128 << 10,
        }
    }
}

/// The padded row stride [`scores`] writes with for `n` database rows.
pub fn out_stride(n: usize, isa: Isa) -> usize {
    n.next_multiple_of(isa.nr())
}

/// `out[i·ldo + j]` = [`chain`]`(q_i, x_j)` for the `m` query rows `q` and the `n` database
/// rows `x`, both `d` wide and row-major; `ldo` is [`out_stride`]`(n, isa)` (columns past `n`
/// are scratch). Packs both sides; searches pack once and call [`scores_packed`].
#[allow(clippy::too_many_arguments)]
pub fn scores(isa: Isa, q: &[f32], m: usize, x: &[f32], n: usize, d: usize, out: &mut [f32]) {
    let (mut qp, mut xp) = (Vec::new(), Vec::new());
    pack_rows(isa, q, m, d, &mut qp);
    pack_block(isa, x, n, d, &mut xp);
    scores_packed(isa, &qp, m, &xp, n, d, out);
}

/// Pack `m` query rows (row-major, `d` wide) for [`scores_packed`]: panels of `mr` rows,
/// dimension-major, the last as wide as its rows.
pub fn pack_rows(isa: Isa, q: &[f32], m: usize, d: usize, out: &mut Vec<f32>) {
    pack(isa, &q[..m * d], m, d, isa.mr(), false, out);
}

/// Pack `n` database rows for [`scores_packed`]: panels of `nr` rows, dimension-major, the last
/// padded with zero rows.
pub fn pack_block(isa: Isa, x: &[f32], n: usize, d: usize, out: &mut Vec<f32>) {
    pack(isa, &x[..n * d], n, d, isa.nr(), true, out);
}

/// [`scores`] on sides already packed by [`pack_rows`] and [`pack_block`].
pub fn scores_packed(
    isa: Isa,
    qp: &[f32],
    m: usize,
    xp: &[f32],
    n: usize,
    d: usize,
    out: &mut [f32],
) {
    let ldo = out_stride(n, isa);
    assert!(out.len() >= m * ldo);
    if m == 0 || n == 0 {
        return;
    }
    let (nr, mr, kc) = (isa.nr(), isa.mr(), isa.kc());
    assert!(qp.len() >= m * d && xp.len() >= n.div_ceil(nr) * nr * d);
    if isa == Isa::Scalar || d == 0 {
        // Scalar panels: row `r` value `k` of panel `p` at `p·w·d + k·width + r`.
        for i in 0..m {
            let (pi, ri) = (i / mr, i % mr);
            let wi = mr.min(m - pi * mr);
            for j in 0..n {
                let (pj, rj) = (j / nr, j % nr);
                let mut s = 0f32;
                for k in 0..d {
                    s = qp[pi * mr * d + k * wi + ri].mul_add(xp[pj * nr * d + k * nr + rj], s);
                }
                out[i * ldo + j] = s;
            }
        }
        return;
    }
    let panels = n.div_ceil(nr);
    // Sub-blocks of the database panels sized for L2; within one, the dimension in pieces of
    // `kc`: a database micro-panel piece stays in L1 while the query panels stream past it.
    // Each accumulator is stored after a piece and reloaded for the next, so the chain goes on
    // unchanged.
    let sub = (isa.sub_block_bytes() / (d * 4 * nr)).max(1);
    let mut p0 = 0;
    while p0 < panels {
        let p1 = (p0 + sub).min(panels);
        let mut k0 = 0;
        while k0 < d {
            let k1 = (k0 + kc).min(d);
            for p in p0..p1 {
                let panel = &xp[p * nr * d + k0 * nr..p * nr * d + k1 * nr];
                let mut i0 = 0;
                while i0 < m {
                    let rows = mr.min(m - i0);
                    let q = &qp[i0 * d + k0 * rows..i0 * d + k1 * rows];
                    let o = &mut out[i0 * ldo + p * nr..];
                    // SAFETY: the ISA was detected on this CPU; `q` holds `rows·(k1 − k0)`
                    // floats and `panel` `nr·(k1 − k0)`; `o` has `rows` rows of stride `ldo`
                    // with `nr` columns each, since `p·nr + nr ≤ ldo`.
                    unsafe { micro(isa, rows, q, panel, k1 - k0, o, ldo, k0 > 0) };
                    i0 += rows;
                }
            }
            k0 = k1;
        }
        p0 = p1;
    }
}

/// Pack `rows` rows of `src` (each `d` wide) into panels of `w` rows, dimension-major (panel
/// `p` starts at `p·w·d`). With `pad`, the last panel is `w` wide with zero rows; without, it is
/// as wide as the rows it holds.
fn pack(isa: Isa, src: &[f32], rows: usize, d: usize, w: usize, pad: bool, out: &mut Vec<f32>) {
    let panels = rows.div_ceil(w);
    let len = if pad { panels * w * d } else { rows * d };
    out.clear();
    out.resize(len, 0.0);
    // Whole 8 × 8 squares in AVX registers (AVX2 and AVX-512 imply AVX) where the panel is a
    // multiple of 8 rows wide (the element-wise copy ran at about 10 cycles a value: 5 % of
    // official SIMAT's retrieve on Zen 4); the rest value by value. A copy either way: the
    // same bits.
    let squares = cfg!(target_arch = "x86_64") && isa != Isa::Scalar && w.is_multiple_of(8);
    let d8 = if squares { d / 8 * 8 } else { 0 };
    for p in 0..panels {
        let held = w.min(rows - p * w);
        let width = if pad { w } else { held };
        let panel = &mut out[p * w * d..p * w * d + width * d];
        let rows_src = &src[p * w * d..(p * w + held) * d];
        let held8 = if squares { held / 8 * 8 } else { 0 };
        #[cfg(target_arch = "x86_64")]
        if held8 > 0 && d8 > 0 {
            // SAFETY: `isa` is AVX2 or AVX-512, so this CPU has AVX; the squares stay inside
            // rows `..held8` of `rows_src` and, as `held8 ≤ width`, inside `panel` (see
            // `transpose_squares`).
            unsafe { transpose_squares(rows_src, d, held8, d8, panel, width) };
        }
        // Sixteen values (a cache line) of each row at a time: the panel lines they land in
        // stay in L1 across the panel's rows.
        for k0 in (0..d).step_by(16) {
            let k1 = (k0 + 16).min(d);
            for r in 0..held {
                // Rows of whole squares have their first `d8` values placed already.
                let from = if r < held8 { k0.max(d8) } else { k0 };
                for k in from..k1 {
                    panel[k * width + r] = rows_src[r * d + k];
                }
            }
        }
    }
}

/// `panel[k·width + r] = rows[r·d + k]` for `r < rows8`, `k < d8` (both multiples of 8), as
/// 8 × 8 transposes in registers.
///
/// # Safety
/// AVX must be available; `rows` holds `rows8·d` floats and `panel` `d8·width` with
/// `rows8 ≤ width`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_squares(
    rows: &[f32],
    d: usize,
    rows8: usize,
    d8: usize,
    panel: &mut [f32],
    width: usize,
) {
    assert!(rows.len() >= rows8 * d && d8 <= d && rows8 <= width);
    assert!(panel.len() >= d8 * width);
    let (src, dst) = (rows.as_ptr(), panel.as_mut_ptr());
    for r0 in (0..rows8).step_by(8) {
        for k0 in (0..d8).step_by(8) {
            // SAFETY (whole block): row `r0 + i` value `k0 + j` is in bounds as `r0 + 8 ≤
            // rows8` and `k0 + 8 ≤ d8 ≤ d`; panel row `k0 + j` columns `r0..r0 + 8` as `k0 + 8
            // ≤ d8` and `r0 + 8 ≤ width`.
            unsafe {
                let load = |i: usize| _mm256_loadu_ps(src.add((r0 + i) * d + k0));
                let (a0, a1, a2, a3) = (load(0), load(1), load(2), load(3));
                let (a4, a5, a6, a7) = (load(4), load(5), load(6), load(7));
                // Pairs of rows interleaved, then quadruples: each 128-bit half holds four
                // rows of one column.
                let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
                let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
                let c04 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let c15 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let c26 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let c37 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let d04 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let d15 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let d26 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let d37 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let store =
                    |j: usize, v: __m256| _mm256_storeu_ps(dst.add((k0 + j) * width + r0), v);
                store(0, _mm256_permute2f128_ps::<0x20>(c04, d04));
                store(1, _mm256_permute2f128_ps::<0x20>(c15, d15));
                store(2, _mm256_permute2f128_ps::<0x20>(c26, d26));
                store(3, _mm256_permute2f128_ps::<0x20>(c37, d37));
                store(4, _mm256_permute2f128_ps::<0x31>(c04, d04));
                store(5, _mm256_permute2f128_ps::<0x31>(c15, d15));
                store(6, _mm256_permute2f128_ps::<0x31>(c26, d26));
                store(7, _mm256_permute2f128_ps::<0x31>(c37, d37));
            }
        }
    }
}

/// One micro-tile: `rows ≤ mr` query rows (packed `qp`) × one database panel, over `kc`
/// dimensions, starting from zero or, when `resume`, from the scores already in `out`.
///
/// # Safety
/// `isa` must be supported by the CPU; `qp` holds `rows·kc` floats (packed `rows` wide), `panel`
/// `nr·kc`, and `out` reaches `(rows − 1)·ldo + nr` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn micro(
    isa: Isa,
    rows: usize,
    qp: &[f32],
    panel: &[f32],
    kc: usize,
    out: &mut [f32],
    ldo: usize,
    resume: bool,
) {
    debug_assert!(out.len() >= (rows - 1) * ldo + isa.nr());
    let (q, b, o) = (qp.as_ptr(), panel.as_ptr(), out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    macro_rules! dispatch {
        ($f:ident, $($r:literal)*) => {
            match rows {
                $($r => unsafe { $f::<$r>(q, b, kc, o, ldo, resume) },)*
                _ => unreachable!("a micro-tile has 1..=mr rows"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => dispatch!(micro_avx512, 1 2 3 4 5 6 7 8),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => dispatch!(micro_avx2, 1 2 3 4 5 6),
        _ => unreachable!("the scalar path does not pack"),
    }
}

/// The body of a micro-kernel: `R` query rows (packed `R` wide) × `V` vectors of database
/// rows, `kc` steps unrolled by four (the unrolled form ran 20–25 % faster on Sapphire Rapids).
macro_rules! micro_kernel {
    ($name:ident, $feature:literal, $vec:ty, $lanes:literal, $v:literal, $zero:ident, $load:ident, $store:ident, $splat:ident, $fma:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name<const R: usize>(
            q: *const f32,
            b: *const f32,
            kc: usize,
            o: *mut f32,
            ldo: usize,
            resume: bool,
        ) {
            // SAFETY (whole body): the caller guarantees `q` holds R·kc floats, `b`
            // lanes·V·kc, and `o` reaches (R − 1)·ldo + lanes·V floats.
            unsafe {
                let mut acc: [[$vec; $v]; R] = [[$zero(); $v]; R];
                if resume {
                    for (i, a) in acc.iter_mut().enumerate() {
                        for (v, av) in a.iter_mut().enumerate() {
                            *av = $load(o.add(i * ldo + $lanes * v));
                        }
                    }
                }
                let step = |acc: &mut [[$vec; $v]; R], k: usize| {
                    let mut bv: [$vec; $v] = [$zero(); $v];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = $load(b.add((k * $v + v) * $lanes));
                    }
                    for (i, a) in acc.iter_mut().enumerate() {
                        let qk = $splat(*q.add(k * R + i));
                        for (av, x) in a.iter_mut().zip(&bv) {
                            *av = $fma(qk, *x, *av);
                        }
                    }
                };
                let mut k = 0;
                while k + 4 <= kc {
                    step(&mut acc, k);
                    step(&mut acc, k + 1);
                    step(&mut acc, k + 2);
                    step(&mut acc, k + 3);
                    k += 4;
                }
                while k < kc {
                    step(&mut acc, k);
                    k += 1;
                }
                for (i, a) in acc.iter().enumerate() {
                    for (v, av) in a.iter().enumerate() {
                        $store(o.add(i * ldo + $lanes * v), *av);
                    }
                }
            }
        }
    };
}

micro_kernel!(
    micro_avx512,
    "avx512f",
    __m512,
    16,
    3,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps
);
micro_kernel!(
    micro_avx2,
    "avx2,fma",
    __m256,
    8,
    2,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2);
            }
        }
        v
    }

    #[test]
    fn every_isa_and_shape_gives_the_chain_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for &(m, n, d) in &[
            (1, 1, 1),
            (3, 5, 3),
            (14, 32, 64),
            (15, 33, 17),
            (29, 70, 513),
            (40, 100, 31),
            (6, 16, 1000),
        ] {
            // Magnitudes spread over 2⁻²⁰..2²⁰ so that the order of the additions shows.
            let mut gen = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| {
                        (rng.random::<f32>() * 2.0 - 1.0) * 2f32.powi(rng.random_range(-20..20))
                    })
                    .collect()
            };
            let (q, x) = (gen(m * d), gen(n * d));
            for isa in isas() {
                let ldo = out_stride(n, isa);
                let mut out = vec![f32::NAN; m * ldo];
                scores(isa, &q, m, &x, n, d, &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let want = chain(&q[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
                        assert_eq!(
                            out[i * ldo + j].to_bits(),
                            want.to_bits(),
                            "{isa:?} {m}×{n}×{d} at ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packing_places_every_value_as_the_element_wise_copy_does() {
        // Widths with and without whole 8 × 8 squares, rows and dimensions with remainders.
        for &(rows, d, w) in &[
            (1, 1, 8),
            (7, 9, 8),
            (8, 8, 8),
            (29, 67, 8),
            (50, 130, 48),
            (100, 512, 48),
            (13, 40, 6),
            (40, 17, 16),
        ] {
            let src: Vec<f32> = (0..rows * d).map(|i| i as f32 + 0.5).collect();
            for (isa, pad) in isas().into_iter().flat_map(|i| [(i, false), (i, true)]) {
                let mut got = Vec::new();
                pack(isa, &src, rows, d, w, pad, &mut got);
                let panels = rows.div_ceil(w);
                let len = if pad { panels * w * d } else { rows * d };
                let mut want = vec![0f32; len];
                for r in 0..rows {
                    let (p, j) = (r / w, r % w);
                    let width = if pad { w } else { w.min(rows - p * w) };
                    for k in 0..d {
                        want[p * w * d + k * width + j] = src[r * d + k];
                    }
                }
                assert_eq!(
                    got, want,
                    "{isa:?}: {rows} rows × {d}, panels of {w}, pad {pad}"
                );
            }
        }
    }

    #[test]
    fn the_chain_is_one_rounding_per_dimension_not_a_plain_sum() {
        // (1 + 2⁻¹²)² = 1 + 2⁻¹¹ + 2⁻²⁴: rounded on its own the 2⁻²⁴ is lost; fused with the
        // −1 already summed it is kept.
        let a = 1.0 + 2f32.powi(-12);
        let q = [-1.0, a];
        let x = [1.0, a];
        assert_eq!(chain(&q, &x), 2f32.powi(-11) + 2f32.powi(-24));
        assert_eq!(q[0] * x[0] + q[1] * x[1], 2f32.powi(-11));
    }
}
