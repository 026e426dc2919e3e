//! A small top-k list per query: scores descending, ties by lower id.

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

    /// The score a new hit must beat (−∞ until the list is full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.hits.len() < self.k {
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
    /// Ids arrive in increasing order, so a score equal to the threshold never displaces a
    /// kept hit; whole chunks at or under the threshold are skipped after one vector max.
    #[inline]
    pub fn push_row(&mut self, row: &[f32], base: usize, skip: i64) {
        const LANES: usize = 16;
        let mut thr = self.threshold();
        let mut chunks = row.chunks_exact(LANES);
        let mut start = 0usize;
        for chunk in &mut chunks {
            let full = self.hits.len() == self.k;
            if !full || chunk.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) > thr {
                for (j, &v) in chunk.iter().enumerate() {
                    let id = base + start + j;
                    if id as i64 != skip && (v > thr || self.hits.len() < self.k) {
                        self.push(Hit {
                            id: id as u32,
                            score: v,
                        });
                        thr = self.threshold();
                    }
                }
            }
            start += LANES;
        }
        for (j, &v) in chunks.remainder().iter().enumerate() {
            let id = base + start + j;
            if id as i64 != skip && (v > thr || self.hits.len() < self.k) {
                self.push(Hit {
                    id: id as u32,
                    score: v,
                });
                thr = self.threshold();
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
