//! Exact top-k through bf16 scoring and a certified f32 re-rank.
//!
//! Every score is first computed from bf16 roundings of the vectors, with f32 accumulation, on
//! the CPU's bf16 units (AMX tiles, or AVX-512 `vdpbf16ps`). A rigorous bound `E` on the gap
//! between that score `s̃` and the f32 score `s` ([`super::kernel::chain`]) turns each `s̃` into an
//! interval `[s̃ − E, s̃ + E]` that holds `s`. Per query, `τ` is the k-th largest lower end; a row
//! whose upper end is below `τ` cannot be in the top k (k rows have `s ≥ τ` above it), every
//! other row is a *candidate*. The candidates are re-scored with the f32 chain and ranked as the
//! f32 path ranks (score descending, ties by lower id). The true top k are all candidates: if `x`
//! is in it, `s(x) ≥ s_k ≥ τ` (the k-th f32 score is at least `τ`, since k rows have `s ≥ L ≥ τ`),
//! so `s̃(x) + E ≥ s(x) ≥ τ`. So the results equal the f32 brute force exactly: same ids, same
//! scores, same tie rule — whatever order or precision the bf16 units accumulate in.
//!
//! # The bound
//!
//! Let `q̂ = bf16(q)`, `x̂ = bf16(x)` (round to nearest even; subnormal results flushed to zero,
//! as the units treat them), residuals `r_q = q − q̂`, `r_x = x − x̂` (exact in f32). Then
//!
//! ```text
//! q·x − q̂·x̂ = q·r_x + r_q·x̂                      (since q·x = q·x̂ + q·r_x, q·x̂ = q̂·x̂ + r_q·x̂)
//! |q·x − q̂·x̂| ≤ ‖q‖‖r_x‖ + ‖r_q‖‖x̂‖               (Cauchy–Schwarz)
//! ```
//!
//! The f32 chain rounds once per dimension, so `|s − q·x| ≤ γ_d Σ|q_i x_i| ≤ γ_d ‖q‖‖x‖` with
//! `γ_n = n·u / (1 − n·u)`, `u = 2⁻²⁴`, plus `d·2⁻¹⁴⁹` for gradual underflow. The bf16 products
//! are exact in f32 (8-bit × 8-bit significands); the units add them in an order of their own,
//! at most `d` additions deep; allowing each addition an error of `2u` (faithful rather than
//! nearest rounding) gives `|s̃ − q̂·x̂| ≤ γ_{2d} ‖q̂‖‖x̂‖`, plus `2d·2⁻¹²⁶` for products and sums
//! flushed to zero. Altogether
//!
//! ```text
//! |s − s̃| ≤ E = ‖q‖‖r_x‖ + ‖r_q‖‖x̂‖ + γ_d ‖q‖‖x‖ + γ_{2d} ‖q̂‖‖x̂‖ + 3d·2⁻¹²⁶.
//! ```
//!
//! The database side is taken as the maximum of each norm over a block of [`SUB`] rows, so one
//! `E` serves a query against a whole block. Norms are computed in f64 (each square exact,
//! `d` additions) and enlarged by `2⁻³⁰`, `E` by `2⁻²⁸`, more than the f64 rounding of either,
//! and every f32 comparison value is rounded outwards (lower ends down, upper ends up), so the
//! test only ever keeps more candidates than the exact interval would.
//!
//! For unit-norm CLIP embeddings `E ≈ 2⁻⁹·(1/√3)·2 ≈ 0.002`, a handful of candidates per query
//! beyond k. Vectors whose norms exceed `1e15` (where bf16 or f32 could overflow) or hold
//! non-finite values are not taken: [`prepare`] says so and the caller uses the f32 path.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::kernel::chain;
use super::{Hit, MatrixView, TopK, Q_BLOCK};

/// Database rows per kernel call, and per block of the bound's maxima.
pub const SUB: usize = 1024;
/// Database rows per tile (an AMX tile has 16 rows of 16 f32 results).
const GROUP: usize = 16;
/// Dimensions per tile (16 pairs of bf16).
const CHUNK: usize = 32;
/// u16 values per packed tile.
const TILE: usize = GROUP * CHUNK;
/// Database rows are packed and scored in steps of four groups: the AVX-512 micro-tile's width,
/// twice the AMX kernel's.
const DB_STEP: usize = 4 * GROUP;
const _: () = assert!(SUB.is_multiple_of(DB_STEP));
/// Largest norm taken: products stay far from f32 overflow.
pub const MAX_NORM: f64 = 1e15;

/// The bf16 units a search can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// AMX-BF16 tiles (`tdpbf16ps`): Sapphire Rapids and later Xeons.
    Amx,
    /// AVX-512 BF16 (`vdpbf16ps`): Cooper Lake, Sapphire Rapids, AMD Zen 4.
    Avx512Bf16,
    /// A scalar emulation with the same rounding to bf16, so that the certification is tested
    /// on every CPU; never chosen on its own.
    Emulated,
}

impl Unit {
    /// The fastest bf16 unit this CPU and kernel let the process use, if any (never the
    /// emulation). None when `SIMAT_KERNEL_ISA` asks for a lesser instruction set (`avx2`,
    /// `scalar`): the process then behaves as on a CPU without AVX-512.
    pub fn detect() -> Option<Unit> {
        static UNIT: OnceLock<Option<Unit>> = OnceLock::new();
        *UNIT.get_or_init(|| {
            if matches!(
                std::env::var("SIMAT_KERNEL_ISA").as_deref(),
                Ok("avx2") | Ok("scalar")
            ) {
                return None;
            }
            Unit::available().into_iter().find(|&u| u != Unit::Emulated)
        })
    }

    /// The units usable here, fastest first, the emulation last.
    pub fn available() -> Vec<Unit> {
        let mut units = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if amx_usable() {
                units.push(Unit::Amx);
            }
            if avx512_bf16_usable() {
                units.push(Unit::Avx512Bf16);
            }
        }
        units.push(Unit::Emulated);
        units
    }

    /// A name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Amx => "bf16 (AMX)",
            Unit::Avx512Bf16 => "bf16 (AVX-512 BF16)",
            Unit::Emulated => "bf16 (emulated)",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_bf16_usable() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// AMX needs the CPU's AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22), and Linux's
/// permission for the process to use the 8 KB of tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`), asked once.
#[cfg(target_arch = "x86_64")]
fn amx_usable() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let max_leaf = std::arch::x86_64::__cpuid(0).eax;
        if max_leaf < 7 || !std::arch::is_x86_feature_detected!("avx512f") {
            return false;
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 {
            return false;
        }
        request_tile_permission()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the process's permitted XSAVE state.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// f32 → bf16 bits, round to nearest even, subnormal results flushed to zero (finite input).
#[inline]
fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    let r = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if r & 0x7f80 == 0 {
        0
    } else {
        r
    }
}

#[inline]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The norms a row contributes to the bound: `‖v‖`, `‖v − v̂‖`, `‖v̂‖`, enlarged by 2⁻³⁰.
#[derive(Debug, Clone, Copy, Default)]
struct Norms {
    norm: f64,
    resid: f64,
    hat: f64,
}

impl Norms {
    #[inline(always)]
    fn of(row: &[f32]) -> Norms {
        // Eight partial sums per norm, so that the loop vectorises (any order is covered by
        // the enlargement below).
        let (mut n, mut r, mut h) = ([0f64; 8], [0f64; 8], [0f64; 8]);
        let mut add = |l: usize, v: f32| {
            let hv = from_bf16(to_bf16(v));
            let rv = (v - hv) as f64;
            n[l] += (v as f64) * (v as f64);
            r[l] += rv * rv;
            h[l] += (hv as f64) * (hv as f64);
        };
        // Whole chunks of eight apart from the tail, so that the loop has a fixed width.
        let mut chunks = row.chunks_exact(8);
        for chunk in &mut chunks {
            for (l, &v) in chunk.iter().enumerate() {
                add(l, v);
            }
        }
        for (l, &v) in chunks.remainder().iter().enumerate() {
            add(l, v);
        }
        let up = 1.0 + 2f64.powi(-30);
        let total = |a: [f64; 8]| a.iter().sum::<f64>().sqrt() * up;
        Norms {
            norm: total(n),
            resid: total(r),
            hat: total(h),
        }
    }

    fn max(self, o: Norms) -> Norms {
        Norms {
            norm: self.norm.max(o.norm),
            resid: self.resid.max(o.resid),
            hat: self.hat.max(o.hat),
        }
    }

    fn ok(self) -> bool {
        self.norm.is_finite() && self.norm <= MAX_NORM && self.hat <= MAX_NORM
    }
}

/// `E` for query norms `q` against database norms `x`, dimension `d` (see the module doc).
fn bound(q: Norms, x: Norms, d: usize) -> f64 {
    let u = 2f64.powi(-24);
    let gamma = |n: f64| n * u / (1.0 - n * u);
    let d = d as f64;
    let e = q.norm * x.resid
        + q.resid * x.hat
        + gamma(d) * q.norm * x.norm
        + gamma(2.0 * d) * q.hat * x.hat
        + 3.0 * d * 2f64.powi(-126);
    e * (1.0 + 2f64.powi(-28))
}

/// The largest f32 not above `v`.
#[inline]
fn down(v: f64) -> f32 {
    let f = v as f32;
    if f as f64 > v {
        f.next_down()
    } else {
        f
    }
}

/// The smallest f32 not below `v`.
#[inline]
fn up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v {
        f.next_up()
    } else {
        f
    }
}

/// The database rounded to bf16 and packed in tiles: for each group of 16 rows and each chunk
/// of 32 dimensions, a tile whose row `p` holds, for each of the 16 database rows, its values
/// `2p` and `2p + 1` of the chunk (the VNNI layout both AMX and `vdpbf16ps` read).
pub struct Prepared<'a> {
    db: MatrixView<'a>,
    queries: MatrixView<'a>,
    unit: Unit,
    /// Padded dimension (a multiple of 32).
    dp: usize,
    packed: Vec<u16>,
    /// Maximum norms per block of SUB database rows.
    block_norms: Vec<Norms>,
    /// Queries rounded, row-major `rows_padded × dp`.
    q_hat: Vec<u16>,
    q_norms: Vec<Norms>,
}

/// Round and pack both sides for `unit`; `None` when a norm is too large or not finite (the
/// f32 path then serves).
pub fn prepare<'a>(
    db: MatrixView<'a>,
    queries: MatrixView<'a>,
    unit: Unit,
) -> Option<Prepared<'a>> {
    let d = db.cols;
    assert_eq!(queries.cols, d, "database and queries differ in dimension");
    let dp = d.max(1).next_multiple_of(CHUNK);
    let chunks = dp / CHUNK;
    let groups = db.rows.next_multiple_of(DB_STEP) / GROUP;
    let mut packed = vec![0u16; groups * chunks * TILE];
    let row_norms: Vec<Norms> = packed
        .par_chunks_mut(chunks * TILE)
        .enumerate()
        .flat_map_iter(|(g, tiles)| pack_group(db, g, tiles))
        .collect();
    let block_norms: Vec<Norms> = row_norms
        .chunks(SUB)
        .map(|b| b.iter().fold(Norms::default(), |a, &n| a.max(n)))
        .collect();
    let q_rows = queries.rows.next_multiple_of(2 * GROUP);
    let mut q_hat = vec![0u16; q_rows * dp];
    let q_norms: Vec<Norms> = q_hat
        .par_chunks_mut(dp)
        .take(queries.rows)
        .enumerate()
        .map(|(i, out)| round_row(queries.row(i), out))
        .collect();
    if !block_norms.iter().chain(&q_norms).all(|n| n.ok()) {
        return None;
    }
    Some(Prepared {
        db,
        queries,
        unit,
        dp,
        packed,
        block_norms,
        q_hat,
        q_norms,
    })
}

/// Packs database rows `16·g..16·g + 16` into their group's tiles and returns their norms.
/// Compiled for AVX-512 where the CPU has it (every bf16 unit implies it), with the row rounded
/// once into a buffer and dealt out from there: on Zen 5, preparing a 200,000 × 512 database
/// fell from about 0.44 s to 0.19 s of CPU time (perf samples; the values are the same).
fn pack_group(db: MatrixView, g: usize, tiles: &mut [u16]) -> Vec<Norms> {
    #[inline(always)]
    fn body(db: MatrixView, g: usize, tiles: &mut [u16]) -> Vec<Norms> {
        let rows = g * GROUP..((g + 1) * GROUP).min(db.rows);
        let mut norms = Vec::with_capacity(GROUP);
        // One row rounded, zero-padded to whole chunks, then dealt out pair by pair.
        let mut hat = vec![0u16; tiles.len() / GROUP];
        for r in rows {
            norms.push(round_into(db.row(r), &mut hat));
            let j = (r - g * GROUP) % GROUP;
            for (src, tile) in hat.chunks_exact(CHUNK).zip(tiles.chunks_exact_mut(TILE)) {
                for p in 0..CHUNK / 2 {
                    tile[p * 2 * GROUP + 2 * j] = src[2 * p];
                    tile[p * 2 * GROUP + 2 * j + 1] = src[2 * p + 1];
                }
            }
        }
        norms
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        fn wide(db: MatrixView, g: usize, tiles: &mut [u16]) -> Vec<Norms> {
            body(db, g, tiles)
        }
        // SAFETY: AVX-512F was detected just above.
        return unsafe { wide(db, g, tiles) };
    }
    body(db, g, tiles)
}

/// `row` rounded into the start of `out`, and its norms.
#[inline(always)]
fn round_into(row: &[f32], out: &mut [u16]) -> Norms {
    for (o, &v) in out.iter_mut().zip(row) {
        *o = to_bf16(v);
    }
    Norms::of(row)
}

/// A query row rounded into `out`, and its norms; compiled as [`pack_group`] is.
fn round_row(row: &[f32], out: &mut [u16]) -> Norms {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        fn wide(row: &[f32], out: &mut [u16]) -> Norms {
            round_into(row, out)
        }
        // SAFETY: AVX-512F was detected just above.
        return unsafe { wide(row, out) };
    }
    round_into(row, out)
}

/// Per-query state: the k largest lower ends (their k-th is `τ`) and the candidates, each with
/// its upper end.
#[derive(Debug, Clone)]
struct Certified {
    lower: TopK,
    candidates: Vec<(u32, f32)>,
    cap: usize,
}

impl Certified {
    fn new(k: usize) -> Self {
        Certified {
            lower: TopK::new(k),
            candidates: Vec::new(),
            cap: 4 * k + 64,
        }
    }

    /// The score below which a row, its bound `e` around it, can neither be a candidate nor
    /// raise τ: τ − E, rounded down. It only rises as rows are offered.
    fn floor(&self, e: f64) -> f32 {
        let tau = self.lower.threshold();
        if tau == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            down(tau as f64 - e)
        }
    }

    /// Offer bf16 scores of ids `base..` with bound `e`, skipping `skip`. `masks` has a bit per
    /// score, set where it was at or above the floor this state had before the block (see
    /// [`score_block`]); the floor has only risen since, so every row that passes it now is
    /// among the set bits.
    fn offer(&mut self, row: &[f32], masks: &[u64], base: usize, e: f64, skip: i64) {
        for (c, &block_mask) in masks.iter().enumerate().take(row.len().div_ceil(64)) {
            let j0 = c * 64;
            let chunk = &row[j0..(j0 + 64).min(row.len())];
            let mut mask = if chunk.len() == 64 {
                block_mask
            } else {
                block_mask & ((1u64 << chunk.len()) - 1)
            };
            if mask == 0 {
                continue;
            }
            let thr = self.floor(e);
            while mask != 0 {
                let j = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let id = base + j0 + j;
                if chunk[j] < thr || id as i64 == skip {
                    continue;
                }
                let s = chunk[j] as f64;
                let upper = up(s + e);
                if upper >= self.lower.threshold() {
                    self.candidates.push((id as u32, upper));
                }
                self.lower.push(Hit {
                    id: id as u32,
                    score: down(s - e),
                });
            }
            if self.candidates.len() > self.cap {
                self.prune();
            }
        }
    }

    fn prune(&mut self) {
        let tau = self.lower.threshold();
        self.candidates.retain(|&(_, upper)| upper >= tau);
        // Many rows within E of each other (duplicates): let the list grow rather than prune
        // after every block.
        self.cap = self.cap.max(2 * self.candidates.len());
    }

    fn merge(&mut self, other: Certified) {
        self.lower.merge(other.lower);
        self.candidates.extend(other.candidates);
        self.prune();
    }
}

/// The lanes of `chunk` (at most 64) at or above `thr`.
#[inline]
fn above(chunk: &[f32], thr: f32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if chunk.len() == 64 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected just above; the chunk holds 64 floats.
        return unsafe { above_avx512(chunk, thr) };
    }
    chunk
        .iter()
        .enumerate()
        .fold(0u64, |m, (j, &v)| m | ((v >= thr) as u64) << j)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn above_avx512(chunk: &[f32], thr: f32) -> u64 {
    use std::arch::x86_64::*;
    let t = _mm512_set1_ps(thr);
    let mut m = 0u64;
    for i in 0..4 {
        // SAFETY: 16 floats at 16·i, inside the 64 the caller guarantees.
        let v = unsafe { _mm512_loadu_ps(chunk.as_ptr().add(16 * i)) };
        m |= (_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, t) as u64) << (16 * i);
    }
    m
}

/// What a bf16 search did, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Rows re-scored in f32, over all queries.
    pub rescored: u64,
}

/// Exact inner-product top-k of every query, as [`super::knn`] with the f32 path, through
/// bf16 scores and the certified re-rank.
pub fn knn(p: &Prepared, k: usize, exclude: Option<&[i64]>) -> (Vec<Vec<Hit>>, Stats) {
    let (n_db, n_q, d) = (p.db.rows, p.queries.rows, p.db.cols);
    let k = k.min(n_db);
    if k == 0 {
        return (vec![Vec::new(); n_q], Stats::default());
    }
    let blocks = n_db.div_ceil(SUB);
    let q_blocks: Vec<(usize, usize)> = (0..n_q)
        .step_by(Q_BLOCK)
        .map(|s| (s, (s + Q_BLOCK).min(n_q)))
        .collect();
    // Enough shards per query block that small query sets still use every core.
    let shards = super::split(
        blocks,
        (2 * rayon::current_num_threads()).div_ceil(q_blocks.len().max(1)),
    );
    let tasks: Vec<((usize, usize), (usize, usize))> = q_blocks
        .iter()
        .flat_map(|&qb| shards.iter().map(move |s| (qb, (s.start, s.end))))
        .collect();
    let partial: Vec<(usize, Vec<Certified>)> = tasks
        .into_par_iter()
        .map(|((q0, q1), (b0, b1))| {
            let m = q1 - q0;
            let mut states: Vec<Certified> = (0..m).map(|_| Certified::new(k)).collect();
            let mut block = BlockScores::new(m);
            let mut bounds = vec![0f64; m];
            let _tiles = TileConfig::load(p.unit);
            for b in b0..b1 {
                let base = b * SUB;
                let n = SUB.min(n_db - base);
                for (r, state) in states.iter().enumerate() {
                    bounds[r] = bound(p.q_norms[q0 + r], p.block_norms[b], d);
                    block.floors[r] = state.floor(bounds[r]);
                }
                score_block(p, q0, m, base, n, &mut block);
                for (r, state) in states.iter_mut().enumerate() {
                    let qi = q0 + r;
                    let skip = exclude.map(|x| x[qi]).unwrap_or(-1);
                    state.offer(
                        &block.scores[r * SUB..r * SUB + n],
                        &block.masks[r * MASK_WORDS..(r + 1) * MASK_WORDS],
                        base,
                        bounds[r],
                        skip,
                    );
                }
            }
            (q0, states)
        })
        .collect();
    let mut merged: Vec<Option<Certified>> = (0..n_q).map(|_| None).collect();
    for (q0, states) in partial {
        for (r, s) in states.into_iter().enumerate() {
            match &mut merged[q0 + r] {
                Some(m) => m.merge(s),
                slot => *slot = Some(s),
            }
        }
    }
    let rescored = std::sync::atomic::AtomicU64::new(0);
    let hits = merged
        .into_par_iter()
        .enumerate()
        .map(|(qi, state)| {
            let state = state.unwrap_or_else(|| Certified::new(k));
            let tau = state.lower.threshold();
            let mut top = TopK::new(k);
            let q = p.queries.row(qi);
            let mut count = 0;
            for &(id, upper) in &state.candidates {
                if upper >= tau {
                    count += 1;
                    top.push(Hit {
                        id,
                        score: rescore(q, p.db.row(id as usize)),
                    });
                }
            }
            rescored.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            top.into_sorted()
        })
        .collect();
    (
        hits,
        Stats {
            rescored: rescored.into_inner(),
        },
    )
}

/// The f32 chain, compiled with FMA where the CPU has it (the bf16 units imply it).
fn rescore(q: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "fma")]
        fn fused(q: &[f32], x: &[f32]) -> f32 {
            chain(q, x)
        }
        // SAFETY: FMA was detected just above.
        return unsafe { fused(q, x) };
    }
    chain(q, x)
}

/// u64 words of masks per query row of a block.
const MASK_WORDS: usize = SUB / 64;

/// One task's scratch for a block of [`SUB`] database rows against its queries.
struct BlockScores {
    /// `scores[r·SUB + j]`: the bf16 score of query row `r` with database row `j`.
    scores: Vec<f32>,
    /// Per query row, the floor its masks are taken against (set before scoring).
    floors: Vec<f32>,
    /// Bit `j % 64` of `masks[r·MASK_WORDS + j / 64]`: `scores[r·SUB + j] ≥ floors[r]`.
    masks: Vec<u64>,
}

impl BlockScores {
    fn new(m: usize) -> BlockScores {
        let rows = m.next_multiple_of(2 * GROUP);
        BlockScores {
            scores: vec![0f32; rows * SUB],
            // Padding rows pass nothing.
            floors: vec![f32::INFINITY; rows],
            masks: vec![0u64; rows * MASK_WORDS],
        }
    }
}

/// Scores of queries `q0..q0 + m` (rounded up to 32 rows) against database rows `base..base +
/// n` (rounded up to [`DB_STEP`] columns) into `block.scores`, and their masks against
/// `block.floors`: the AVX-512 kernel compares its accumulators before it stores them, so
/// that [`Certified::offer`] visits only the few scores that can matter.
fn score_block(p: &Prepared, q0: usize, m: usize, base: usize, n: usize, block: &mut BlockScores) {
    let chunks = p.dp / CHUNK;
    let rows = m.next_multiple_of(2 * GROUP);
    let cols = n.next_multiple_of(DB_STEP);
    let q = &p.q_hat[q0 * p.dp..(q0 + rows) * p.dp];
    let g0 = base / GROUP;
    let tiles = &p.packed[g0 * chunks * TILE..(g0 + cols / GROUP) * chunks * TILE];
    let buf = &mut block.scores;
    match p.unit {
        #[cfg(target_arch = "x86_64")]
        Unit::Avx512Bf16 => {
            // SAFETY: AVX-512 BF16 was detected; the kernel checks the sizes.
            unsafe {
                dpbf16::scores(
                    q,
                    rows,
                    p.dp,
                    tiles,
                    cols,
                    buf,
                    SUB,
                    &block.floors,
                    &mut block.masks,
                    MASK_WORDS,
                )
            };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AMX was detected and this thread's tile configuration is loaded; `q` holds
        // `rows` rows of `dp`, `tiles` `cols / 16` groups, `buf` `rows × SUB` floats.
        Unit::Amx => unsafe { amx::scores(q, rows, p.dp, tiles, cols, buf, SUB) },
        _ => emulated(q, rows, p.dp, tiles, cols, buf, SUB),
    }
    for r in 0..rows {
        for c in 0..cols / 64 {
            let at = r * SUB + c * 64;
            block.masks[r * MASK_WORDS + c] = above(&buf[at..at + 64], block.floors[r]);
        }
    }
}

/// Scalar stand-in: products of the bf16 values summed in f32, pair by pair.
fn emulated(
    q: &[u16],
    rows: usize,
    dp: usize,
    tiles: &[u16],
    cols: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let chunks = dp / CHUNK;
    for i in 0..rows {
        for j in 0..cols {
            let (g, jj) = (j / GROUP, j % GROUP);
            let mut s = 0f32;
            for c in 0..chunks {
                let tile = &tiles[(g * chunks + c) * TILE..][..TILE];
                for p in 0..CHUNK / 2 {
                    for t in 0..2 {
                        let a = from_bf16(q[i * dp + c * CHUNK + 2 * p + t]);
                        let b = from_bf16(tile[p * 2 * GROUP + jj * 2 + t]);
                        s += a * b;
                    }
                }
            }
            out[i * ldo + j] = s;
        }
    }
}

/// Loads the AMX tile configuration for this thread while alive, and releases the tiles after.
struct TileConfig(bool);

impl TileConfig {
    fn load(unit: Unit) -> TileConfig {
        #[cfg(target_arch = "x86_64")]
        if unit == Unit::Amx {
            // SAFETY: AMX is usable (the unit was detected), the config is a valid palette 1.
            unsafe { amx::load_config() };
            return TileConfig(true);
        }
        let _ = unit;
        TileConfig(false)
    }
}

impl Drop for TileConfig {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.0 {
            // SAFETY: the configuration was loaded on this thread.
            unsafe { amx::release() };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    //! AMX tiles through inline assembly (the AMX intrinsics are not stable Rust). Tiles 0–3
    //! hold a 32 × 32 block of f32 results, 4–5 two 16-query × 32-dimension tiles of the
    //! queries, 6–7 two packed database tiles.
    use std::arch::asm;

    use super::{CHUNK, GROUP, TILE};

    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Palette 1, eight tiles of 16 rows × 64 bytes.
    pub unsafe fn load_config() {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        let cfg = Config(c);
        // SAFETY: a valid palette-1 configuration, read by the instruction only.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    }

    pub unsafe fn release() {
        // SAFETY: releasing tiles is always allowed once configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `out[i·ldo + j]` for `rows` query rows (`q`, row-major, `dp` wide) × `cols` database rows
    /// (`tiles`, packed); `rows` and `cols` multiples of 32.
    pub unsafe fn scores(
        q: &[u16],
        rows: usize,
        dp: usize,
        tiles: &[u16],
        cols: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        let chunks = dp / CHUNK;
        debug_assert!(q.len() >= rows * dp && tiles.len() >= cols / GROUP * chunks * TILE);
        debug_assert!(out.len() >= rows * ldo && cols <= ldo);
        let (qs, os) = (dp * 2, ldo * 4);
        for i0 in (0..rows).step_by(2 * GROUP) {
            for g in (0..cols / GROUP).step_by(2) {
                // SAFETY (block): the tiles read 16 rows of 64 bytes at the given strides, all
                // inside `q` and `tiles`; the stores write 16 rows of 64 bytes inside `out`.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    for c in 0..chunks {
                        let a0 = q.as_ptr().add(i0 * dp + c * CHUNK);
                        let a1 = a0.add(GROUP * dp);
                        let b0 = tiles.as_ptr().add((g * chunks + c) * TILE);
                        let b1 = b0.add(chunks * TILE);
                        asm!(
                            "tileloadd tmm4, [{a0} + {qs}]",
                            "tileloadd tmm5, [{a1} + {qs}]",
                            "tileloadd tmm6, [{b0} + {bs}]",
                            "tileloadd tmm7, [{b1} + {bs}]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0,
                            a1 = in(reg) a1,
                            b0 = in(reg) b0,
                            b1 = in(reg) b1,
                            qs = in(reg) qs,
                            bs = in(reg) 64usize,
                            options(nostack, readonly)
                        );
                    }
                    let o = out.as_mut_ptr().add(i0 * ldo + g * GROUP);
                    asm!(
                        "tilestored [{o0} + {os}], tmm0",
                        "tilestored [{o1} + {os}], tmm1",
                        "tilestored [{o2} + {os}], tmm2",
                        "tilestored [{o3} + {os}], tmm3",
                        o0 = in(reg) o,
                        o1 = in(reg) o.add(GROUP),
                        o2 = in(reg) o.add(GROUP * ldo),
                        o3 = in(reg) o.add(GROUP * ldo + GROUP),
                        os = in(reg) os,
                        options(nostack)
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod dpbf16 {
    //! AVX-512 BF16: `vdpbf16ps` adds two bf16 products per f32 lane. A micro-tile is 6 queries
    //! × 64 database rows (24 accumulators); each step loads one row of four packed tiles and
    //! broadcasts each query's pair of values against them. In a C model of this loop on Zen 5,
    //! this shape ran at 93–97 % of the unit's measured peak, 8 × 32 (16 accumulators, a
    //! broadcast per two products) at 75–84 %; inside `simat knn` the kernel's CPU time fell by
    //! about 7 %.
    use std::arch::x86_64::*;

    use super::{CHUNK, GROUP, TILE};

    const MR: usize = 6;
    /// Packed groups (of 16 database rows) per micro-tile.
    const NG: usize = 4;
    // One u64 of masks per micro-tile row.
    const _: () = assert!(NG * GROUP == super::DB_STEP && super::DB_STEP == 64);

    /// `out[i·ldo + j]` for `rows` query rows (even) × `cols` database rows (a multiple of
    /// `NG · GROUP` = 64), and bit `j % 64` of `masks[i·ldm + j / 64]` set where
    /// `out[i·ldo + j] ≥ floors[i]`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scores(
        q: &[u16],
        rows: usize,
        dp: usize,
        tiles: &[u16],
        cols: usize,
        out: &mut [f32],
        ldo: usize,
        floors: &[f32],
        masks: &mut [u64],
        ldm: usize,
    ) {
        let chunks = dp / CHUNK;
        assert!(rows.is_multiple_of(2) && cols.is_multiple_of(NG * GROUP) && cols <= ldo);
        assert!(cols / 64 <= ldm);
        assert!(q.len() >= rows * dp && tiles.len() >= cols / GROUP * chunks * TILE);
        assert!(out.len() >= rows * ldo && floors.len() >= rows && masks.len() >= rows * ldm);
        // The packed groups of one micro-tile stay in L1 and L2 while every query row of the
        // block streams past them.
        for g in (0..cols / GROUP).step_by(NG) {
            let b = tiles[g * chunks * TILE..].as_ptr();
            let mut i0 = 0;
            while i0 < rows {
                let o = out[i0 * ldo + g * GROUP..].as_mut_ptr();
                let a = q[i0 * dp..].as_ptr();
                let f = floors[i0..].as_ptr();
                let mk = masks[i0 * ldm + g / NG..].as_mut_ptr();
                // SAFETY: the asserts above keep `MR` (or fewer) rows of `a`, `NG` groups of
                // `b`, and the output, floor and mask rows inside their slices.
                unsafe {
                    match rows - i0 {
                        MR.. => micro::<MR>(a, dp, b, chunks, o, ldo, f, mk, ldm),
                        4 => micro::<4>(a, dp, b, chunks, o, ldo, f, mk, ldm),
                        _ => micro::<2>(a, dp, b, chunks, o, ldo, f, mk, ldm),
                    }
                }
                i0 += MR.min(rows - i0);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn micro<const R: usize>(
        q: *const u16,
        dp: usize,
        b: *const u16,
        chunks: usize,
        o: *mut f32,
        ldo: usize,
        floors: *const f32,
        masks: *mut u64,
        ldm: usize,
    ) {
        // SAFETY (whole body): `q` holds R rows of `dp`, `b` NG groups of `chunks` tiles,
        // `o` R rows of stride `ldo` with NG · 16 columns, `floors` R values, `masks` R rows
        // of stride `ldm`.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NG]; R];
            for c in 0..chunks {
                for p in 0..CHUNK / 2 {
                    let mut bv =
                        [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); NG];
                    for (j, v) in bv.iter_mut().enumerate() {
                        let t = b.add((j * chunks + c) * TILE + p * 2 * GROUP);
                        *v = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            t as *const _,
                        ));
                    }
                    for (i, a) in acc.iter_mut().enumerate() {
                        let pair =
                            (q.add(i * dp + c * CHUNK + 2 * p) as *const i32).read_unaligned();
                        let qv: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                        for (aj, &bj) in a.iter_mut().zip(&bv) {
                            *aj = _mm512_dpbf16_ps(*aj, qv, bj);
                        }
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let floor = _mm512_set1_ps(*floors.add(i));
                let mut mask = 0u64;
                for (j, &v) in a.iter().enumerate() {
                    _mm512_storeu_ps(o.add(i * ldo + 16 * j), v);
                    mask |= (_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, floor) as u64) << (16 * j);
                }
                *masks.add(i * ldm) = mask;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::Matrix;
    use rand::{RngExt, SeedableRng};

    /// The f32 brute force: every row's chain, ranked by score, ties by lower id.
    fn brute(db: &Matrix, q: &Matrix, k: usize, exclude: &[i64]) -> Vec<Vec<Hit>> {
        (0..q.rows)
            .map(|i| {
                let mut all: Vec<Hit> = (0..db.rows)
                    .filter(|&j| j as i64 != exclude[i])
                    .map(|j| Hit {
                        id: j as u32,
                        score: chain(q.row(i), db.row(j)),
                    })
                    .collect();
                all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
                all.truncate(k);
                all
            })
            .collect()
    }

    /// Rows built to tie: duplicates, copies one ulp apart in one value (a tie in bf16, not in
    /// f32), copies whose difference lies below bf16's resolution, permutations of one row
    /// (equal in exact arithmetic, an ulp apart in the chain), and a zero row.
    fn adversarial(rng: &mut rand_chacha::ChaCha8Rng, n: usize, d: usize) -> Matrix {
        let mut data: Vec<f32> = Vec::with_capacity(n * d);
        for r in 0..n {
            let kind = if r < 4 { 0 } else { rng.random_range(0..6) };
            let src = if r > 0 { rng.random_range(0..r) } else { 0 };
            let copy: Vec<f32> = if r > 0 {
                data[src * d..(src + 1) * d].to_vec()
            } else {
                Vec::new()
            };
            let row: Vec<f32> = match kind {
                1 => copy,
                2 => {
                    let mut c = copy;
                    let k = rng.random_range(0..d);
                    c[k] = f32::from_bits(c[k].to_bits() ^ 1);
                    c
                }
                3 => copy.iter().map(|v| v * (1.0 + 2f32.powi(-20))).collect(),
                4 => {
                    let mut c = copy;
                    c.reverse();
                    c
                }
                5 if rng.random_range(0..8) == 0 => vec![0.0; d],
                _ => (0..d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect(),
            };
            data.extend(row);
        }
        Matrix::new(n, d, data).unwrap()
    }

    #[test]
    fn the_bound_holds_on_every_unit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for &(n, m, d) in &[(40, 33, 512), (70, 5, 37), (33, 40, 1)] {
            // Values over a wide range of magnitudes, some near bf16's subnormals.
            let mut gen = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| {
                        (rng.random::<f32>() * 2.0 - 1.0) * 2f32.powi(rng.random_range(-130..12))
                    })
                    .collect()
            };
            let db = Matrix::new(n, d, gen(n * d)).unwrap();
            let q = Matrix::new(m, d, gen(m * d)).unwrap();
            for unit in Unit::available() {
                let p = prepare(db.view(), q.view(), unit).expect("finite, bounded");
                let mut block = BlockScores::new(m);
                // Floors: none, one that passes about half the row, and one above every score.
                for i in 0..m {
                    block.floors[i] = match i % 3 {
                        0 => f32::NEG_INFINITY,
                        1 => chain(q.row(i), db.row(i % n)),
                        _ => f32::INFINITY,
                    };
                }
                let _tiles = TileConfig::load(unit);
                score_block(&p, 0, m, 0, n, &mut block);
                let buf = &block.scores;
                let mut worst = 0f64;
                for i in 0..m {
                    for j in 0..n {
                        let s = chain(q.row(i), db.row(j)) as f64;
                        let e = bound(p.q_norms[i], p.block_norms[0], d);
                        let gap = (s - buf[i * SUB + j] as f64).abs();
                        assert!(
                            gap <= e,
                            "{unit:?} ({i}, {j}): |s − s̃| = {gap:e} > E = {e:e}"
                        );
                        worst = worst.max(gap / e);
                        let bit = block.masks[i * MASK_WORDS + j / 64] >> (j % 64) & 1;
                        assert_eq!(
                            bit == 1,
                            buf[i * SUB + j] >= block.floors[i],
                            "{unit:?} ({i}, {j}): the mask disagrees with the score"
                        );
                    }
                }
                // The bound is not vacuous: the gaps reach a fair share of it.
                assert!(worst > 1e-3, "{unit:?}: largest gap only {worst:e} of E");
            }
        }
    }

    #[test]
    fn bf16_results_equal_the_f32_brute_force_on_ties_and_random_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
        for case in 0..24 {
            let n = rng.random_range(1..1300);
            let m = rng.random_range(1..300);
            let d = [1, 7, 32, 45, 64, 130][case % 6];
            let k = rng.random_range(1..=n.min(25));
            let db = adversarial(&mut rng, n, d);
            // Queries: random, copies of database rows, a constant row (equidistant from every
            // permutation of a row), and zero (every score ties).
            let mut qd = Vec::with_capacity(m * d);
            for i in 0..m {
                match i % 4 {
                    0 => qd.extend((0..d).map(|_| rng.random::<f32>() * 2.0 - 1.0)),
                    1 => qd.extend_from_slice(db.row(rng.random_range(0..n))),
                    2 => qd.extend(std::iter::repeat_n(0.5f32, d)),
                    _ => qd.extend(std::iter::repeat_n(0f32, d)),
                }
            }
            let q = Matrix::new(m, d, qd).unwrap();
            let exclude: Vec<i64> = (0..m)
                .map(|_| {
                    if rng.random_range(0..3) == 0 {
                        -1
                    } else {
                        rng.random_range(0..n as i64)
                    }
                })
                .collect();
            let want = brute(&db, &q, k, &exclude);
            let f32_path = crate::linalg::knn(db.view(), q.view(), k, Some(&exclude));
            assert_eq!(
                f32_path, want,
                "case {case}: the f32 path differs from the chain"
            );
            for unit in Unit::available() {
                let p = prepare(db.view(), q.view(), unit).unwrap();
                let (got, stats) = knn(&p, k, Some(&exclude));
                assert_eq!(
                    got, want,
                    "case {case} ({n}×{d}, {m} queries, k = {k}) on {unit:?}"
                );
                assert!(stats.rescored >= (m * k.min(n - 1)) as u64, "{stats:?}");
            }
        }
    }

    #[test]
    fn a_few_candidates_per_query_on_unit_vectors() {
        // CLIP-like: unit rows in 512 dimensions, the case the path is for.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (n, m, d, k) = (3000, 64, 512, 10);
        let mut unit_rows = |rows: usize| {
            let mut a = Matrix::new(
                rows,
                d,
                (0..rows * d).map(|_| rng.random::<f32>() - 0.5).collect(),
            )
            .unwrap();
            crate::linalg::normalize_rows(&mut a);
            a
        };
        let (db, q) = (unit_rows(n), unit_rows(m));
        let p = prepare(
            db.view(),
            q.view(),
            Unit::detect().unwrap_or(Unit::Emulated),
        )
        .unwrap();
        let (got, stats) = knn(&p, k, None);
        assert_eq!(got, brute(&db, &q, k, &vec![-1; m]));
        // Far fewer re-scored rows than the database (here about 2k per query).
        assert!(stats.rescored < (m * n / 20) as u64, "{stats:?}");
    }

    #[test]
    fn k_of_zero_returns_empty_lists_on_both_paths() {
        let db = Matrix::new(40, 3, (0..120).map(|i| i as f32).collect()).unwrap();
        let q = Matrix::new(2, 3, vec![1.0; 6]).unwrap();
        assert_eq!(
            crate::linalg::knn(db.view(), q.view(), 0, None),
            vec![Vec::<Hit>::new(); 2]
        );
        let p = prepare(db.view(), q.view(), Unit::Emulated).unwrap();
        assert_eq!(knn(&p, 0, None).0, vec![Vec::<Hit>::new(); 2]);
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even_and_flushes_subnormals() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: to even (1).
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: to even (1 + 2⁻⁶).
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert_eq!(to_bf16(2f32.powi(-127)), 0);
        assert_eq!(from_bf16(to_bf16(2f32.powi(-126))), 2f32.powi(-126));
        assert!((down(0.1) as f64) < 0.1 && (up(0.1) as f64) > 0.1);
        assert_eq!(up(0.1), down(0.1).next_up());
        assert_eq!(up(0.5), 0.5);
    }
}
