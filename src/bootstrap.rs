//! Bootstrap intervals and paired tests over queries, with a generator anyone can replay.
//!
//! A resample draws, within each stratum (a split), as many queries as it has, uniformly with
//! replacement. Draw `j` of resample `b` (counting draws across the strata in order) is
//! `index = ⌊u·n⌋` of its stratum's `n` queries, `u = x / 2⁶⁴` for `x` the `j`-th output of
//! SplitMix64 whose state is the `b`-th output of SplitMix64 seeded with `seed`; so a reference
//! in any language can draw the same indices, and the intervals do not depend on the thread
//! count. (Seeding resample `b` with an unmixed `b` would make its stream resample 0's shifted
//! by `b` outputs: resamples sharing all but one draw.) The interval of a
//! statistic is the percentile interval of its resampled values, at numpy's default (linear)
//! percentile positions.

/// SplitMix64 (Steele, Lea and Flood 2014): 64 bits of state, every output a bijection of it.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator of resample `b` under `seed`: its state is output `b` (from 0) of the
    /// generator seeded with `seed`.
    pub fn for_resample(seed: u64, b: u64) -> Self {
        let mut g = SplitMix64(seed.wrapping_add(b.wrapping_mul(Self::GAMMA)));
        SplitMix64(g.next_u64())
    }

    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        Self::mix(self.0)
    }

    /// Output `j` (from 0) of the generator as it is now, without drawing: the state only
    /// ever adds `GAMMA`, so any output is one step away.
    pub fn output(&self, j: u64) -> u64 {
        Self::mix(
            self.0
                .wrapping_add(j.wrapping_add(1).wrapping_mul(Self::GAMMA)),
        )
    }

    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (`⌊x·n / 2⁶⁴⌋`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Resample `b` of queries grouped in `strata` (each a list of query positions): the drawn
/// positions, stratum after stratum.
pub fn resample(strata: &[Vec<usize>], seed: u64, b: u64, out: &mut Vec<usize>) {
    out.clear();
    let mut g = SplitMix64::for_resample(seed, b);
    for stratum in strata {
        for _ in 0..stratum.len() {
            out.push(stratum[g.below(stratum.len())]);
        }
    }
}

/// The `q`-quantile (0..=1) of `values`, sorted in place, as numpy's `percentile` computes it by
/// default: linear between the order statistics at `q·(n − 1)`. NaN when empty.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let pos = q * (values.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    match values.get(lo + 1) {
        Some(&hi) if frac > 0.0 => values[lo] + frac * (hi - values[lo]),
        _ => values[lo],
    }
}

/// The percentile interval at `confidence` (0.95: the 2.5th and 97.5th percentiles).
pub fn interval(values: &mut [f64], confidence: f64) -> (f64, f64) {
    let a = (1.0 - confidence) / 2.0;
    (quantile(values, a), quantile(values, 1.0 - a))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64's published first outputs for seed 0 (as in Vigna's splitmix64.c).
    #[test]
    fn splitmix64_is_the_published_generator() {
        let mut g = SplitMix64(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(g.next_u64(), 0x06C4_5D18_8009_454F);
        let (mut h, at) = (
            SplitMix64::for_resample(9, 4),
            SplitMix64::for_resample(9, 4),
        );
        for j in 0..5 {
            assert_eq!(at.output(j), h.next_u64());
        }
    }

    #[test]
    fn quantiles_are_numpys_linear_ones() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        // numpy.percentile([1, 2, 3, 4], [2.5, 50, 97.5]) = 1.075, 2.5, 3.925
        assert!((quantile(&mut v, 0.025) - 1.075).abs() < 1e-12);
        assert!((quantile(&mut v, 0.5) - 2.5).abs() < 1e-12);
        assert!((quantile(&mut v, 0.975) - 3.925).abs() < 1e-12);
        assert_eq!(quantile(&mut [7.0], 0.3), 7.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn a_resample_keeps_each_stratum_its_size_and_its_own_queries() {
        let strata = vec![(0..7).collect::<Vec<_>>(), (7..10).collect()];
        let mut out = Vec::new();
        resample(&strata, 3, 5, &mut out);
        assert_eq!(out.len(), 10);
        assert!(out[..7].iter().all(|&i| i < 7) && out[7..].iter().all(|&i| i >= 7));
        let again = out.clone();
        resample(&strata, 3, 5, &mut out);
        assert_eq!(out, again);
        resample(&strata, 3, 6, &mut out);
        assert_ne!(out, again);
    }

    /// Resamples under seed 0 share about as many draws as independent ones would: none is
    /// another's stream shifted.
    #[test]
    fn resamples_are_not_shifts_of_one_stream() {
        let strata = vec![(0..1000).collect::<Vec<_>>()];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..20 {
            resample(&strata, 0, r, &mut a);
            resample(&strata, 0, r + 1, &mut b);
            for shift in 0..3 {
                let same = a[shift..].iter().zip(&b).filter(|(x, y)| x == y).count();
                assert!(
                    same < 10,
                    "resample {} is resample {r} shifted by {shift} in {same} of 1000 draws",
                    r + 1
                );
            }
        }
    }

    /// A 95 % interval of a weighted success rate covers the true rate in 93–97 % of 400
    /// simulations (n = 300 queries, p = 0.3, weights as SIMAT's 1/√m).
    #[test]
    fn the_95_percent_interval_covers_the_truth_95_times_in_100() {
        let (n, p, sims, resamples) = (300usize, 0.3, 400u64, 1000u64);
        let mut covered = 0;
        for sim in 0..sims {
            let mut g = SplitMix64::for_resample(12345, sim);
            let weights: Vec<f64> = (0..n)
                .map(|_| 1.0 / ((1 + g.below(4)) as f64).sqrt())
                .collect();
            let success: Vec<f64> = (0..n)
                .map(|_| f64::from(u8::from((g.next_u64() as f64 / 2f64.powi(64)) < p)))
                .collect();
            let strata = vec![(0..n).collect::<Vec<_>>()];
            let mut draws = Vec::new();
            let mut values: Vec<f64> = (0..resamples)
                .map(|b| {
                    resample(&strata, sim, b, &mut draws);
                    let (num, den) = draws.iter().fold((0.0, 0.0), |(a, d), &i| {
                        (a + weights[i] * success[i], d + weights[i])
                    });
                    num / den
                })
                .collect();
            let (lo, hi) = interval(&mut values, 0.95);
            covered += u32::from(lo <= p && p <= hi);
        }
        let rate = f64::from(covered) / sims as f64;
        assert!((0.93..=0.97).contains(&rate), "coverage {rate}");
    }
}
