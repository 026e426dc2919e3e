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
        if self.hits.len() == self.k && !better(&hit, &self.hits[self.k - 1]) {
            return;
        }
        let pos = self.hits.partition_point(|h| better(h, &hit));
        self.hits.insert(pos, hit);
        self.hits.truncate(self.k);
    }

    /// Offer a row of scores for database ids `base..base + row.len()`, skipping id `skip`.
    ///
    /// Blocks of 64 scores under the threshold are skipped after one branch-free compare; a
    /// score equal to it is offered and wins by lower id, so the list does not depend on the
    /// order in which rows and blocks arrive.
    #[inline]
    pub fn push_row(&mut self, row: &[f32], base: usize, skip: i64) {
        self.push_combined(row, row, 0.0, base, skip);
    }

    /// Offer the row `img[j] + λ·delta[j]` for ids `base..`, skipping `skip`, without
    /// materialising it.
    #[inline]
    pub fn push_combined(
        &mut self,
        img: &[f32],
        delta: &[f32],
        lambda: f32,
        base: usize,
        skip: i64,
    ) {
        push_sweep(
            std::slice::from_mut(self),
            img,
            delta,
            &[lambda],
            base,
            skip,
        );
    }

    #[inline(always)]
    fn scan(&mut self, a: &[f32], d: &[f32], lambda: f32, base: usize, skip: i64) {
        for j in 0..a.len() {
            let id = base + j;
            let v = a[j] + lambda * d[j];
            if id as i64 != skip && v >= self.threshold() {
                self.push(Hit {
                    id: id as u32,
                    score: v,
                });
            }
        }
    }

    #[inline(always)]
    fn offer_block(
        &mut self,
        a: &[f32; BLOCK],
        d: &[f32; BLOCK],
        lambda: f32,
        base: usize,
        skip: i64,
        above: &impl Fn(&[f32; BLOCK], &[f32; BLOCK], f32, f32) -> u64,
    ) {
        if self.hits.len() < self.k {
            self.scan(a, d, lambda, base, skip);
            return;
        }
        // Only the lanes at or above the threshold, in id order; the threshold rises as they
        // are pushed, so each is checked again, and `push` settles a tie by id.
        let mut mask = above(a, d, lambda, self.threshold());
        while mask != 0 {
            let j = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let id = base + j;
            let v = a[j] + lambda * d[j];
            if id as i64 != skip && v >= self.threshold() {
                self.push(Hit {
                    id: id as u32,
                    score: v,
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

/// Offer `img[j] + λ_l·delta[j]` (ids `base..`, skipping `skip`) to `tops[l]` for every λ,
/// without materialising the rows: each block of 64 scores is compared with the threshold in
/// one vector compare per λ while it sits in L1, and only the lanes at or above it are walked.
/// The compare is compiled for AVX-512 and AVX2 too, chosen at run time; every path computes
/// the same `a + λ·d` (no fused multiply-add), so results do not depend on the CPU.
pub fn push_sweep(
    tops: &mut [TopK],
    img: &[f32],
    delta: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
) {
    assert_eq!(img.len(), delta.len());
    assert_eq!(tops.len(), lambdas.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { push_sweep_avx512(tops, img, delta, lambdas, base, skip) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { push_sweep_avx2(tops, img, delta, lambdas, base, skip) };
        }
    }
    let above = |a: &[f32; BLOCK], d: &[f32; BLOCK], lambda: f32, thr: f32| {
        (0..BLOCK).fold(0u64, |m, l| m | ((a[l] + lambda * d[l] >= thr) as u64) << l)
    };
    push_sweep_impl(tops, img, delta, lambdas, base, skip, above)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn push_sweep_avx512(
    tops: &mut [TopK],
    img: &[f32],
    delta: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
) {
    use std::arch::x86_64::*;
    let above = |a: &[f32; BLOCK], d: &[f32; BLOCK], lambda: f32, thr: f32| -> u64 {
        // SAFETY: AVX-512F is enabled for this function; the loads stay inside the arrays.
        unsafe {
            let (l, t) = (_mm512_set1_ps(lambda), _mm512_set1_ps(thr));
            let mut m = 0u64;
            for i in 0..BLOCK / 16 {
                let va = _mm512_loadu_ps(a.as_ptr().add(16 * i));
                let vd = _mm512_loadu_ps(d.as_ptr().add(16 * i));
                let v = _mm512_add_ps(va, _mm512_mul_ps(l, vd));
                m |= (_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, t) as u64) << (16 * i);
            }
            m
        }
    };
    push_sweep_impl(tops, img, delta, lambdas, base, skip, above)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn push_sweep_avx2(
    tops: &mut [TopK],
    img: &[f32],
    delta: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
) {
    use std::arch::x86_64::*;
    let above = |a: &[f32; BLOCK], d: &[f32; BLOCK], lambda: f32, thr: f32| -> u64 {
        // SAFETY: AVX2 is enabled for this function; the loads stay inside the arrays.
        unsafe {
            let (l, t) = (_mm256_set1_ps(lambda), _mm256_set1_ps(thr));
            let mut m = 0u64;
            for i in 0..BLOCK / 8 {
                let va = _mm256_loadu_ps(a.as_ptr().add(8 * i));
                let vd = _mm256_loadu_ps(d.as_ptr().add(8 * i));
                let v = _mm256_add_ps(va, _mm256_mul_ps(l, vd));
                let c = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, t)) as u64;
                m |= c << (8 * i);
            }
            m
        }
    };
    push_sweep_impl(tops, img, delta, lambdas, base, skip, above)
}

#[inline(always)]
fn push_sweep_impl(
    tops: &mut [TopK],
    img: &[f32],
    delta: &[f32],
    lambdas: &[f32],
    base: usize,
    skip: i64,
    above: impl Fn(&[f32; BLOCK], &[f32; BLOCK], f32, f32) -> u64,
) {
    let n = img.len();
    let mut start = 0;
    while start + BLOCK <= n {
        let a: &[f32; BLOCK] = img[start..start + BLOCK].try_into().expect("block");
        let d: &[f32; BLOCK] = delta[start..start + BLOCK].try_into().expect("block");
        for (top, &lambda) in tops.iter_mut().zip(lambdas) {
            top.offer_block(a, d, lambda, base + start, skip, &above);
        }
        start += BLOCK;
    }
    for (top, &lambda) in tops.iter_mut().zip(lambdas) {
        top.scan(&img[start..], &delta[start..], lambda, base + start, skip);
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
        let delta: Vec<f32> = (0..300)
            .map(|i| ((i * 53) % 89) as f32 * 0.02 - 0.9)
            .collect();
        for lambda in [0.0f32, 0.7, 2.0] {
            let row: Vec<f32> = img
                .iter()
                .zip(&delta)
                .map(|(a, d)| a + lambda * d)
                .collect();
            let (mut a, mut b) = (TopK::new(5), TopK::new(5));
            a.push_row(&row, 7, 9);
            b.push_combined(&img, &delta, lambda, 7, 9);
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
}
