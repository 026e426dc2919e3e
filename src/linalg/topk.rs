//! A small top-k list per query: scores descending, ties by lower id.

/// Scores checked at once against the threshold.
const BLOCK: usize = 64;

/// One result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Database row.
    pub id: u32,
    /// Inner product.
    pub score: f32,
}

/// `true` when `a` ranks before `b`.
#[inline]
fn better(a: &Hit, b: &Hit) -> bool {
    a.score > b.score || (a.score == b.score && a.id < b.id)
}

/// The best `k` hits seen so far, kept sorted (k is small: a linear insert beats a heap).
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    hits: Vec<Hit>,
}

impl TopK {
    /// An empty list of capacity `k`.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            hits: Vec::with_capacity(k + 1),
        }
    }

    /// The score a new hit must beat (−∞ until the list is full; +∞ for a list of k = 0).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.k == 0 {
            f32::INFINITY
        } else if self.hits.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.hits[self.k - 1].score
        }
    }

    /// Offer one hit.
    #[inline]
    pub fn push(&mut self, hit: Hit) {
        if self.k == 0 {
            return;
        }
        // k is small and a new hit usually lands near the end: walk it up from there.
        let mut pos = if self.hits.len() < self.k {
            self.hits.push(hit);
            self.hits.len() - 1
        } else if better(&hit, &self.hits[self.k - 1]) {
            self.k - 1
        } else {
            return;
        };
        while pos > 0 && better(&hit, &self.hits[pos - 1]) {
            self.hits[pos] = self.hits[pos - 1];
            pos -= 1;
        }
        self.hits[pos] = hit;
    }

    /// Offer a row of scores for database ids `base..base + row.len()`, skipping id `skip`.
    ///
    /// Blocks of 64 scores under the threshold are skipped after one branch-free compare; a
    /// score equal to it is offered and wins by lower id, so the list does not depend on the
    /// order in which rows and blocks arrive.
    #[inline]
    pub fn push_row(&mut self, row: &[f32], base: usize, skip: i64) {
        // `row + 0·(row − row)` is `row` for every score a chain gives (never −0), NaN for NaN.
        self.push_combined(row, row, row, 0.0, base, skip);
    }

    /// Offer the row `img[j] + λ·(target[j] − value[j])` for ids `base..`, skipping `skip`,
    /// without materialising it.
    #[inline]
    pub fn push_combined(
        &mut self,
        img: &[f32],
        target: &[f32],
        value: &[f32],
        lambda: f32,
        base: usize,
        skip: i64,
    ) {
        push_sweep(
            std::slice::from_mut(self),
            img,
            target,
            value,
            &[lambda],
            base,
            skip,
        );
    }

    #[inline(always)]
    fn scan(&mut self, a: &[f32], t: &[f32], v: &[f32], lambda: f32, base: usize, skip: i64) {
        for j in 0..a.len() {
            let id = base + j;
            let s = a[j] + lambda * (t[j] - v[j]);
            if id as i64 != skip && s >= self.threshold() {
                self.push(Hit {
                    id: id as u32,
                    score: s,
                });
            }
        }
    }

    /// Offer the lanes of a block at or above `floor` and the list's threshold, in id order;
    /// the threshold rises as they are pushed, so each is checked again, and `push` settles a
    /// tie by id.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn offer_block(
        &mut self,
        rows: Block,
        lambda: f32,
        base: usize,
        skip: i64,
        floor: f32,
        above: &impl Fn(Block, f32, f32) -> u64,
    ) {
        let (a, t, v) = rows;
        let mut mask = above(rows, lambda, floor.max(self.threshold()));
        while mask != 0 {
            let j = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let id = base + j;
            let s = a[j] + lambda * (t[j] - v[j]);
            if id as i64 != skip && s >= floor.max(self.threshold()) {
                self.push(Hit {
                    id: id as u32,
                    score: s,
                });
            }
        }
    }

    /// Merge another list (from another database shard).
    pub fn merge(&mut self, other: TopK) {
        for h in other.hits {
            self.push(h);
        }
    }

    /// The hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        self.hits
    }
}

/// One block of 64 lanes of the three rows a score is made of: image scores, target-word
/// scores, value-word scores.
type Block<'a> = (&'a [f32; BLOCK], &'a [f32; BLOCK], &'a [f32; BLOCK]);

/// λs whose block maxima one pass over the rows computes together.
const LAMBDAS_AT_ONCE: usize = 4;

/// Offer `img[j] + λ_l·(target[j] − value[j])` (ids `base..`, skipping `skip`) to `tops[l]` for
/// every λ, without materialising the rows.
///
/// A first pass takes, for every λ at once, the maximum of every block of 64 scores (each block
/// of the three rows is loaded once and its word difference taken once); the k-th largest of a
/// λ's maxima (the block holding `skip` left out) is a floor: k distinct rows score at least
/// that much, so no row below it can be among the k best. A second pass compares only the
/// blocks whose maximum reaches the floor and the list's threshold, in one vector compare, and
/// walks only the lanes at or above them. Without the floor a fresh list admits most of its
/// first rows and many more before its threshold rises. The passes are compiled for AVX-512
/// and AVX2 too, chosen at run time; every path computes the same `a + λ·(t − v)` (a
/// subtraction, a product and a sum, each rounded: no fused multiply-add), and the floor only
/// leaves out rows that cannot enter, so results do not depend on the CPU.
pub fn push_sweep(
    tops: &mut [TopK],
    img: &[f32],
    target: &[f32],
    value: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
) {
    assert!(img.len() == target.len() && img.len() == value.len());
    assert_eq!(tops.len(), lambdas.len());
    #[cfg(target_arch = "x86_64")]
    {
        use super::kernel::Isa;
        match Isa::detect() {
            // SAFETY: `detect` chose AVX-512 because the CPU has AVX-512F.
            Isa::Avx512 => {
                return unsafe { push_sweep_avx512(tops, img, target, value, lambdas, base, skip) }
            }
            // SAFETY: `detect` chose AVX2 because the CPU has AVX2 (and FMA).
            Isa::Avx2 => {
                return unsafe { push_sweep_avx2(tops, img, target, value, lambdas, base, skip) }
            }
            Isa::Scalar => {}
        }
    }
    push_sweep_scalar(tops, img, target, value, lambdas, base, skip)
}

fn push_sweep_scalar(
    tops: &mut [TopK],
    img: &[f32],
    target: &[f32],
    value: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
) {
    let above = |(a, t, v): Block, lambda: f32, thr: f32| {
        (0..BLOCK).fold(0u64, |m, l| {
            m | ((a[l] + lambda * (t[l] - v[l]) >= thr) as u64) << l
        })
    };
    // A NaN score never enters a list, so it is left out of the maximum too.
    let block_max = |(a, t, v): Block, lambdas: &[f32], out: &mut [f32]| {
        for (o, &lambda) in out.iter_mut().zip(lambdas) {
            *o = (0..BLOCK).fold(f32::NEG_INFINITY, |m, l| {
                let s = a[l] + lambda * (t[l] - v[l]);
                if s > m {
                    s
                } else {
                    m
                }
            });
        }
    };
    push_sweep_impl(
        tops, img, target, value, lambdas, base, skip, above, block_max,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn push_sweep_avx512(
    tops: &mut [TopK],
    img: &[f32],
    target: &[f32],
    value: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
) {
    use std::arch::x86_64::*;
    const V: usize = BLOCK / 16;
    // SAFETY (the loads): AVX-512F is enabled for this function; they stay inside the
    // 64-lane arrays.
    let load = |(a, t, v): Block| -> ([__m512; V], [__m512; V]) {
        unsafe {
            let lanes = |x: &[f32; BLOCK], i: usize| _mm512_loadu_ps(x.as_ptr().add(16 * i));
            let (mut img, mut delta) = ([_mm512_setzero_ps(); V], [_mm512_setzero_ps(); V]);
            for i in 0..V {
                img[i] = lanes(a, i);
                delta[i] = _mm512_sub_ps(lanes(t, i), lanes(v, i));
            }
            (img, delta)
        }
    };
    let above = |rows: Block, lambda: f32, thr: f32| -> u64 {
        let (img, delta) = load(rows);
        let (l, t) = (_mm512_set1_ps(lambda), _mm512_set1_ps(thr));
        let mut m = 0u64;
        for i in 0..V {
            let s = _mm512_add_ps(img[i], _mm512_mul_ps(l, delta[i]));
            m |= (_mm512_cmp_ps_mask::<_CMP_GE_OQ>(s, t) as u64) << (16 * i);
        }
        m
    };
    let block_max = |rows: Block, lambdas: &[f32], out: &mut [f32]| {
        let (img, delta) = load(rows);
        for (o, &lambda) in out.iter_mut().zip(lambdas) {
            let l = _mm512_set1_ps(lambda);
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for i in 0..V {
                // maxps returns its second operand when either is NaN: a NaN score is
                // left out.
                m = _mm512_max_ps(_mm512_add_ps(img[i], _mm512_mul_ps(l, delta[i])), m);
            }
            *o = _mm512_reduce_max_ps(m);
        }
    };
    push_sweep_impl(
        tops, img, target, value, lambdas, base, skip, above, block_max,
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn push_sweep_avx2(
    tops: &mut [TopK],
    img: &[f32],
    target: &[f32],
    value: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
) {
    use std::arch::x86_64::*;
    const V: usize = BLOCK / 8;
    // SAFETY (the loads and the store): AVX2 is enabled for this function; they stay inside the
    // 64-lane arrays.
    let load = |(a, t, v): Block| -> ([__m256; V], [__m256; V]) {
        unsafe {
            let lanes = |x: &[f32; BLOCK], i: usize| _mm256_loadu_ps(x.as_ptr().add(8 * i));
            let (mut img, mut delta) = ([_mm256_setzero_ps(); V], [_mm256_setzero_ps(); V]);
            for i in 0..V {
                img[i] = lanes(a, i);
                delta[i] = _mm256_sub_ps(lanes(t, i), lanes(v, i));
            }
            (img, delta)
        }
    };
    let above = |rows: Block, lambda: f32, thr: f32| -> u64 {
        let (img, delta) = load(rows);
        let (l, t) = (_mm256_set1_ps(lambda), _mm256_set1_ps(thr));
        let mut m = 0u64;
        for i in 0..V {
            let s = _mm256_add_ps(img[i], _mm256_mul_ps(l, delta[i]));
            let c = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(s, t)) as u64;
            m |= c << (8 * i);
        }
        m
    };
    let block_max = |rows: Block, lambdas: &[f32], out: &mut [f32]| {
        let (img, delta) = load(rows);
        unsafe {
            for (o, &lambda) in out.iter_mut().zip(lambdas) {
                let l = _mm256_set1_ps(lambda);
                let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
                for i in 0..V {
                    // maxps returns its second operand when either is NaN: a NaN score is
                    // left out.
                    m = _mm256_max_ps(_mm256_add_ps(img[i], _mm256_mul_ps(l, delta[i])), m);
                }
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), m);
                *o = lanes.into_iter().fold(f32::NEG_INFINITY, f32::max);
            }
        }
    };
    push_sweep_impl(
        tops, img, target, value, lambdas, base, skip, above, block_max,
    )
}

/// Blocks whose maxima one pass keeps: 4,096 scores, so that a database block of
/// [`crate::linalg::DB_BLOCK`] rows takes one pass and one floor.
const PASS_BLOCKS: usize = 64;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn push_sweep_impl(
    tops: &mut [TopK],
    img: &[f32],
    target: &[f32],
    value: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
    above: impl Fn(Block, f32, f32) -> u64,
    block_max: impl Fn(Block, &[f32], &mut [f32]),
) {
    let n = img.len();
    let full = n / BLOCK * BLOCK;
    fn block(x: &[f32], b: usize) -> &[f32; BLOCK] {
        x[b * BLOCK..(b + 1) * BLOCK].try_into().expect("block")
    }
    // maxima[b][l]: block b's maximum at the l-th λ of the group.
    let mut maxima = [[f32::NEG_INFINITY; LAMBDAS_AT_ONCE]; PASS_BLOCKS];
    let mut seeds = [f32::NEG_INFINITY; PASS_BLOCKS];
    for pass in (0..full).step_by(PASS_BLOCKS * BLOCK) {
        let end = (pass + PASS_BLOCKS * BLOCK).min(full);
        let (a, t, v) = (&img[pass..end], &target[pass..end], &value[pass..end]);
        let rows = |b: usize| (block(a, b), block(t, b), block(v, b));
        let blocks = (end - pass) / BLOCK;
        let pass_base = base + pass;
        // The block that holds the excluded row, if any, seeds no floor.
        let skip_block = usize::try_from(skip)
            .ok()
            .and_then(|s| s.checked_sub(pass_base))
            .map(|s| s / BLOCK)
            .filter(|&b| b < blocks);
        for (group, group_lambdas) in tops
            .chunks_mut(LAMBDAS_AT_ONCE)
            .zip(lambdas.chunks(LAMBDAS_AT_ONCE))
        {
            for (b, m) in maxima[..blocks].iter_mut().enumerate() {
                block_max(rows(b), group_lambdas, &mut m[..group_lambdas.len()]);
            }
            for (l, (top, &lambda)) in group.iter_mut().zip(group_lambdas).enumerate() {
                let floor = if top.k == 0 || top.k > blocks {
                    f32::NEG_INFINITY
                } else {
                    for (s, m) in seeds[..blocks].iter_mut().zip(&maxima[..blocks]) {
                        *s = m[l];
                    }
                    if let Some(b) = skip_block {
                        seeds[b] = f32::NEG_INFINITY;
                    }
                    *seeds[..blocks]
                        .select_nth_unstable_by(top.k - 1, |x, y| y.total_cmp(x))
                        .1
                };
                for (b, m) in maxima[..blocks].iter().enumerate() {
                    if m[l] >= floor.max(top.threshold()) {
                        top.offer_block(
                            rows(b),
                            lambda,
                            pass_base + b * BLOCK,
                            skip,
                            floor,
                            &above,
                        );
                    }
                }
            }
        }
    }
    for (top, &lambda) in tops.iter_mut().zip(lambdas) {
        top.scan(
            &img[full..],
            &target[full..],
            &value[full..],
            lambda,
            base + full,
            skip,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_with_ties_by_id() {
        let mut t = TopK::new(3);
        let row = [0.5, 0.9, 0.9, 0.1, 0.9, 0.95];
        t.push_row(&row, 10, 12);
        let got: Vec<(u32, f32)> = t.into_sorted().iter().map(|h| (h.id, h.score)).collect();
        assert_eq!(got, vec![(15, 0.95), (11, 0.9), (14, 0.9)]);
    }

    #[test]
    fn the_list_does_not_depend_on_the_order_rows_arrive_in() {
        // Many exact ties (scores from a small set), offered block by block in id order and in
        // reverse: the same hits, ties by lower id.
        let row: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 13) as f32).collect();
        let (mut forward, mut backward) = (TopK::new(9), TopK::new(9));
        forward.push_row(&row, 0, 5);
        for start in (0..1000).step_by(100).rev() {
            backward.push_row(&row[start..start + 100], start, 5);
        }
        let want: Vec<u32> = {
            let mut all: Vec<(usize, f32)> = row
                .iter()
                .copied()
                .enumerate()
                .filter(|&(i, _)| i != 5)
                .collect();
            all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            all[..9].iter().map(|a| a.0 as u32).collect()
        };
        let ids = |t: TopK| t.into_sorted().iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(forward), want);
        assert_eq!(ids(backward), want);
    }

    #[test]
    fn combined_rows_equal_materialised_rows() {
        let img: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32 * 0.01).collect();
        let target: Vec<f32> = (0..300)
            .map(|i| ((i * 53) % 89) as f32 * 0.02 - 0.9)
            .collect();
        let value: Vec<f32> = (0..300).map(|i| ((i * 29) % 71) as f32 * 0.013).collect();
        for lambda in [0.0f32, 0.7, 2.0] {
            let row: Vec<f32> = (0..300)
                .map(|j| img[j] + lambda * (target[j] - value[j]))
                .collect();
            let (mut a, mut b) = (TopK::new(5), TopK::new(5));
            a.push_row(&row, 7, 9);
            b.push_combined(&img, &target, &value, lambda, 7, 9);
            assert_eq!(a.into_sorted(), b.into_sorted());
        }
    }

    #[test]
    fn long_rows_use_the_chunked_path() {
        let row: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32).collect();
        let mut t = TopK::new(4);
        t.push_row(&row, 0, -1);
        let mut want: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        want.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        let got: Vec<u32> = t.into_sorted().iter().map(|h| h.id).collect();
        let want: Vec<u32> = want[..4].iter().map(|w| w.0 as u32).collect();
        assert_eq!(got, want);
    }

    type Sweep = fn(&mut [TopK], &[f32], &[f32], &[f32], &[f32], usize, i64);

    /// The sweep's implementations this CPU can run.
    fn implementations() -> Vec<(&'static str, Sweep)> {
        #[allow(unused_mut)]
        let mut v: Vec<(&'static str, Sweep)> = vec![("scalar", push_sweep_scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: called only where the CPU has AVX2.
                v.push(("avx2", |t, a, w, u, l, b, s| unsafe {
                    push_sweep_avx2(t, a, w, u, l, b, s)
                }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: called only where the CPU has AVX-512F.
                v.push(("avx512", |t, a, w, u, l, b, s| unsafe {
                    push_sweep_avx512(t, a, w, u, l, b, s)
                }));
            }
        }
        v
    }

    /// Brute force: every id but `skip`, by `a + λ·(t − v)` descending, ties by lower id.
    #[allow(clippy::too_many_arguments)]
    fn brute(
        a: &[f32],
        t: &[f32],
        v: &[f32],
        lambda: f32,
        base: usize,
        skip: i64,
        k: usize,
    ) -> Vec<Hit> {
        let mut all: Vec<Hit> = (0..a.len())
            .filter(|&j| (base + j) as i64 != skip)
            .map(|j| Hit {
                id: (base + j) as u32,
                score: a[j] + lambda * (t[j] - v[j]),
            })
            .filter(|h| !h.score.is_nan())
            .collect();
        all.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.id.cmp(&y.id)));
        all.truncate(k);
        all
    }

    #[test]
    fn the_sweep_equals_brute_force_on_ties_skips_and_any_length() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        // More λs than one pass of maxima takes at once.
        let lambdas = [0.0f32, 0.5, 1.0, 2.0, -1.0, 3.0];
        // Lengths around a block and around a pass of maxima; values from a small set, so that
        // most scores tie, or spread, so that the floor is tight; NaN lanes now and then.
        for &n in &[0usize, 1, 63, 64, 65, 200, 4095, 4096, 4097, 9000] {
            for &k in &[0usize, 1, 5, 64, 100] {
                for tied in [true, false] {
                    let value = |rng: &mut rand_chacha::ChaCha8Rng| -> f32 {
                        if rng.random_range(0..500) == 0 {
                            f32::NAN
                        } else if tied {
                            rng.random_range(0..6) as f32 * 0.25
                        } else {
                            rng.random::<f32>() * 2.0 - 1.0
                        }
                    };
                    let mut a: Vec<f32> = (0..n).map(|_| value(&mut rng)).collect();
                    let mut t: Vec<f32> = (0..n).map(|_| value(&mut rng)).collect();
                    let v: Vec<f32> = (0..n).map(|_| value(&mut rng) * 0.5).collect();
                    let base = rng.random_range(0..1000);
                    // The excluded row inside the row (at times the best of all, which must
                    // not raise the floor), before it or nowhere.
                    let skip = match rng.random_range(0..4) {
                        0 | 1 if n > 0 => {
                            let j = rng.random_range(0..n);
                            if rng.random() {
                                (a[j], t[j]) = (100.0, 100.0);
                            }
                            (base + j) as i64
                        }
                        2 => base as i64 - 1,
                        _ => -1,
                    };
                    for (isa, sweep) in implementations() {
                        // All at once, and in two pieces into the same lists.
                        let mut whole: Vec<TopK> = lambdas.iter().map(|_| TopK::new(k)).collect();
                        sweep(&mut whole, &a, &t, &v, &lambdas, base, skip);
                        let mut pieces: Vec<TopK> = lambdas.iter().map(|_| TopK::new(k)).collect();
                        let cut = n / 3;
                        sweep(
                            &mut pieces,
                            &a[cut..],
                            &t[cut..],
                            &v[cut..],
                            &lambdas,
                            base + cut,
                            skip,
                        );
                        let (a0, t0, v0) = (&a[..cut], &t[..cut], &v[..cut]);
                        sweep(&mut pieces, a0, t0, v0, &lambdas, base, skip);
                        for (l, &lambda) in lambdas.iter().enumerate() {
                            let want = brute(&a, &t, &v, lambda, base, skip, k);
                            let case =
                                format!("{isa}: n {n} k {k} tied {tied} skip {skip} λ {lambda}");
                            assert_eq!(whole[l].clone().into_sorted(), want, "{case}");
                            assert_eq!(pieces[l].clone().into_sorted(), want, "{case}, pieces");
                        }
                    }
                }
            }
        }
    }
}
