//! Ranked metrics of one query's retrieved list, beyond SIMAT's first image.
//!
//! A query's list is its first `K` retrieved images (retrieve's `k`), each *accepted* or not by
//! the score stage's oracle, and each *relevant* or not by the labels (the image's region shows
//! the target triplet). The set of relevant images is known exactly only from the labels, so the
//! metrics that need it (Recall@k, mAP@k) use the labels whatever the oracle; those that judge
//! what was retrieved (SIMAT@k, MRR@k) use the oracle:
//!
//! - SIMAT@k: 1 when any of the first k is accepted; SIMAT@1 is the SIMAT score.
//! - Recall@k: 1 when any of the first k is relevant (the target triplet among the first k).
//! - MRR@k: 1/r for the first accepted image at rank r ≤ k (from 1), else 0.
//! - mAP@k: CIRCO's average precision, `Σ_{r≤k} P(r)·rel(r) / min(k, n_relevant)`, with
//!   `P(r)` the share of relevant images among the first r and `n_relevant` the relevant images
//!   in the database (the query's own image excluded, as retrieval excludes it); 0 when there is
//!   none.
//!
//! The score stage averages each over queries with SIMAT's weights `1/√n_same_value`, ×100.

use serde::{Deserialize, Serialize};

/// A ranked metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Any of the first k accepted by the oracle.
    Simat,
    /// The target triplet among the first k.
    Recall,
    /// Reciprocal rank of the first accepted within k.
    Mrr,
    /// CIRCO's mean average precision at k, relevance by the labels.
    Map,
}

impl Metric {
    /// Every metric, in the order tables list them.
    pub const ALL: [Metric; 4] = [Metric::Simat, Metric::Recall, Metric::Mrr, Metric::Map];

    /// Its name in tables: `simat`, `recall`, `mrr`, `map`.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Simat => "simat",
            Metric::Recall => "recall",
            Metric::Mrr => "mrr",
            Metric::Map => "map",
        }
    }
}

/// One query's retrieved list, best first.
#[derive(Debug, Clone, Copy)]
pub struct Ranked<'a> {
    /// Whether the oracle accepts each retrieved image.
    pub accepted: &'a [bool],
    /// Whether each retrieved image shows the target triplet.
    pub relevant: &'a [bool],
    /// Relevant images in the database, the query's own excluded.
    pub n_relevant: usize,
}

impl Ranked<'_> {
    /// `metric` at `k` (k ≤ the list's length; a longer k sees the whole list), in 0..=1.
    pub fn value(&self, metric: Metric, k: usize) -> f64 {
        let first = |v: &[bool]| v.iter().take(k).position(|&b| b);
        match metric {
            Metric::Simat => f64::from(u8::from(first(self.accepted).is_some())),
            Metric::Recall => f64::from(u8::from(first(self.relevant).is_some())),
            Metric::Mrr => first(self.accepted).map_or(0.0, |r| 1.0 / (r + 1) as f64),
            Metric::Map => {
                let denominator = k.min(self.n_relevant);
                if denominator == 0 {
                    return 0.0;
                }
                let mut hits = 0usize;
                let mut sum = 0.0;
                for (r, &rel) in self.relevant.iter().take(k).enumerate() {
                    if rel {
                        hits += 1;
                        sum += hits as f64 / (r + 1) as f64;
                    }
                }
                sum / denominator as f64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_definitions() {
        let accepted = [false, true, false, true];
        let relevant = [true, false, false, true];
        let r = Ranked {
            accepted: &accepted,
            relevant: &relevant,
            n_relevant: 3,
        };
        assert_eq!(r.value(Metric::Simat, 1), 0.0);
        assert_eq!(r.value(Metric::Simat, 2), 1.0);
        assert_eq!(r.value(Metric::Recall, 1), 1.0);
        assert_eq!(r.value(Metric::Mrr, 1), 0.0);
        assert_eq!(r.value(Metric::Mrr, 4), 0.5);
        // P(1)·1 + P(4)·1 = 1 + 2/4, over min(4, 3).
        assert!((r.value(Metric::Map, 4) - 1.5 / 3.0).abs() < 1e-15);
        // At 1: P(1) = 1 over min(1, 3).
        assert_eq!(r.value(Metric::Map, 1), 1.0);
        let none = Ranked {
            accepted: &accepted,
            relevant: &[false; 4],
            n_relevant: 0,
        };
        assert_eq!(none.value(Metric::Map, 4), 0.0);
    }
}
