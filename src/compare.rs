//! Two runs' SIMAT scores, query by query: is the difference real?
//!
//! Each run's `results.parquet` gives every query's success and weight at each head set and λ.
//! The runs must score the same queries (joined by `query_id`; a query one lacks, or one whose
//! split, field or weight differ, is an error naming it). For each head set and λ both have and
//! each split, the difference `A − B` of the weighted scores comes with
//!
//! - a paired bootstrap interval: the same resampled queries for both runs, stratified by split
//!   ([`crate::bootstrap`], resample `b` under the seed);
//! - a two-sided p-value of the paired sign-flip permutation test: under "no difference", each
//!   query's two outcomes are exchangeable, so permutation `r` swaps query `j`'s when bit 0 of
//!   output `j` of the generator of resample `r` under `!seed` is set (`j` the query's position
//!   in A's table order, one output per query); `p = (1 + #{|Δ*| ≥ |Δ|}) / (1 + R)`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use rayon::prelude::*;
use serde::Serialize;

use crate::bootstrap::{interval, resample, SplitMix64};
use crate::error::{Error, Result};

/// One run's per-query outcomes.
#[derive(Debug, Clone)]
pub struct Outcomes {
    /// The file read.
    pub path: PathBuf,
    /// (head set, λ), in order of first appearance.
    pub keys: Vec<(String, f64)>,
    /// Query ids, in table order.
    pub query_id: Vec<i64>,
    /// Each query's split.
    pub split: Vec<String>,
    /// Each query's field.
    pub field: Vec<String>,
    /// Each query's weight.
    pub weight: Vec<f64>,
    /// `success[key][query]`; none where the table has no row.
    pub success: Vec<Vec<Option<bool>>>,
}

impl Outcomes {
    /// Read `results.parquet`, or `RUN/score/results.parquet` when `path` is a folder.
    pub fn read(path: &Path) -> Result<Outcomes> {
        let path = if path.is_dir() {
            path.join("score").join("results.parquet")
        } else {
            path.to_path_buf()
        };
        if !path.is_file() {
            return Err(Error::data(
                &path,
                "no such file: give a run whose score stage ran, or its results.parquet",
            ));
        }
        let reader = crate::io::read_table(
            &path,
            &[
                "heads", "lam", "query_id", "split", "field", "success", "weight",
            ],
        )?;
        let mut out = Outcomes {
            path: path.clone(),
            keys: Vec::new(),
            query_id: Vec::new(),
            split: Vec::new(),
            field: Vec::new(),
            weight: Vec::new(),
            success: Vec::new(),
        };
        let mut position: HashMap<i64, usize> = HashMap::new();
        let mut row = 0u64;
        for batch in reader {
            let b = batch.map_err(|e| Error::columnar(&path, e))?;
            // Any string type: a results table written by polars or DuckDB has views or large
            // strings.
            let s = |name: &str| -> Result<arrow::array::StringArray> {
                let c = crate::io::column(&b, name, &path)?;
                let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)
                    .map_err(|e| Error::columnar(&path, format!("column `{name}`: {e}")))?;
                Ok(c.as_string::<i32>().clone())
            };
            let (heads, split, field) = (s("heads")?, s("split")?, s("field")?);
            let lam = crate::io::column(&b, "lam", &path)?
                .as_primitive::<Float64Type>()
                .clone();
            let qid = crate::io::i64_column(&b, "query_id", &path)?.clone();
            let success = crate::io::bool_column(&b, "success", &path)?.clone();
            let weight = crate::io::f64_column(&b, "weight", &path)?.clone();
            for i in 0..b.num_rows() {
                let (h, l) = (heads.value(i), lam.value(i));
                let key = match out.keys.iter().position(|(kh, kl)| kh == h && *kl == l) {
                    Some(k) => k,
                    None => {
                        out.keys.push((h.to_string(), l));
                        out.success.push(vec![None; out.query_id.len()]);
                        out.keys.len() - 1
                    }
                };
                let q = qid.value(i);
                let at = *position.entry(q).or_insert_with(|| {
                    out.query_id.push(q);
                    out.split.push(split.value(i).to_string());
                    out.field.push(field.value(i).to_string());
                    out.weight.push(weight.value(i));
                    for s in &mut out.success {
                        s.push(None);
                    }
                    out.query_id.len() - 1
                });
                if out.success[key][at].replace(success.value(i)).is_some() {
                    return Err(Error::data(
                        &path,
                        format!(
                            "row {}: query {q} twice at λ = {l} with heads {h}",
                            row + i as u64
                        ),
                    ));
                }
            }
            row += b.num_rows() as u64;
        }
        Ok(out)
    }
}

/// How to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Only this head set (default: every one both runs have).
    pub heads: Option<String>,
    /// Only this λ.
    pub lambda: Option<f64>,
    /// Bootstrap resamples of the difference's interval.
    pub bootstrap: usize,
    /// Permutations of the test.
    pub permutations: usize,
    /// The seed of both.
    pub seed: u64,
    /// The interval's confidence.
    pub confidence: f64,
}

/// One difference.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Head set.
    pub heads: String,
    /// λ.
    pub lam: f64,
    /// `dev`, `test` or `all`.
    pub split: String,
    /// A's score.
    pub a: f64,
    /// B's score.
    pub b: f64,
    /// A − B.
    pub difference: f64,
    /// The paired bootstrap interval of the difference.
    pub ci_low: f64,
    /// Its upper end.
    pub ci_high: f64,
    /// The permutation test's two-sided p-value.
    pub p_value: f64,
    /// Queries in the split.
    pub n_queries: usize,
    /// Queries whose outcome differs between the runs.
    pub discordant: usize,
}

/// Compare `a` and `b` (see the module's docs).
pub fn compare(a: &Outcomes, b: &Outcomes, opts: &CompareOptions) -> Result<Vec<Comparison>> {
    // B's position of each of A's queries, checked to be the same query.
    let b_at: HashMap<i64, usize> = b
        .query_id
        .iter()
        .enumerate()
        .map(|(i, &q)| (q, i))
        .collect();
    let mut map = Vec::with_capacity(a.query_id.len());
    for (i, q) in a.query_id.iter().enumerate() {
        let Some(&j) = b_at.get(q) else {
            return Err(Error::data(
                &b.path,
                format!(
                    "query {q} (of {}) is not here: the runs score different query sets",
                    a.path.display()
                ),
            ));
        };
        if a.split[i] != b.split[j] || a.field[i] != b.field[j] || a.weight[i] != b.weight[j] {
            return Err(Error::data(
                &b.path,
                format!(
                    "query {q} has another split, field or weight than in {}: the runs score different query sets",
                    a.path.display()
                ),
            ));
        }
        map.push(j);
    }
    // Every one of A's queries is a distinct query of B (ids are unique in a table): B has
    // others exactly when it has more.
    let a_ids: std::collections::HashSet<i64> = a.query_id.iter().copied().collect();
    if let Some(q) = b.query_id.iter().find(|q| !a_ids.contains(q)) {
        return Err(Error::data(
            &a.path,
            format!(
                "query {q} (of {}) is not here: the runs score different query sets",
                b.path.display()
            ),
        ));
    }
    let mut strata: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, s) in a.split.iter().enumerate() {
        strata.entry(s).or_default().push(i);
    }
    let strata_list: Vec<Vec<usize>> = strata.values().cloned().collect();
    let mut splits: Vec<&str> = strata.keys().copied().collect();
    splits.push("all");
    let mut out = Vec::new();
    for (ka, (heads, lam)) in a.keys.iter().enumerate() {
        if opts.heads.as_ref().is_some_and(|h| h != heads) || opts.lambda.is_some_and(|l| l != *lam)
        {
            continue;
        }
        let Some(kb) = b.keys.iter().position(|(h, l)| h == heads && l == lam) else {
            continue;
        };
        // d[i] = w·(success_A − success_B), and whether both have the query at this key.
        let mut d = vec![0.0f64; a.query_id.len()];
        for (i, &j) in map.iter().enumerate() {
            let (sa, sb) = match (a.success[ka][i], b.success[kb][j]) {
                (Some(x), Some(y)) => (x, y),
                _ => {
                    return Err(Error::data(
                        &a.path,
                        format!(
                        "query {} has no result at λ = {lam} with heads {heads} in one of the runs",
                        a.query_id[i]
                    ),
                    ))
                }
            };
            d[i] = a.weight[i] * (f64::from(u8::from(sa)) - f64::from(u8::from(sb)));
        }
        let success_a: Vec<f64> = (0..a.query_id.len())
            .map(|i| f64::from(u8::from(a.success[ka][i] == Some(true))))
            .collect();
        let success_b: Vec<f64> = map
            .iter()
            .map(|&j| f64::from(u8::from(b.success[kb][j] == Some(true))))
            .collect();
        for split in &splits {
            let in_cell: Vec<bool> = (0..a.query_id.len())
                .map(|i| *split == "all" || a.split[i] == *split)
                .collect();
            let member: Vec<usize> = (0..a.query_id.len()).filter(|&i| in_cell[i]).collect();
            let total: f64 = member.iter().map(|&i| a.weight[i]).sum();
            let score =
                |s: &[f64]| 100.0 * member.iter().map(|&i| a.weight[i] * s[i]).sum::<f64>() / total;
            let diff = 100.0 * member.iter().map(|&i| d[i]).sum::<f64>() / total;
            // The bootstrap: the cell's drawn queries of each resample.
            let mut values: Vec<f64> = (0..opts.bootstrap as u64)
                .into_par_iter()
                .map_init(Vec::new, |draws, r| {
                    resample(&strata_list, opts.seed, r, draws);
                    let (mut num, mut den) = (0.0, 0.0);
                    for &i in draws.iter().filter(|&&i| in_cell[i]) {
                        num += d[i];
                        den += a.weight[i];
                    }
                    100.0 * num / den
                })
                .filter(|v: &f64| v.is_finite())
                .collect();
            let (ci_low, ci_high) = interval(&mut values, opts.confidence);
            // The permutation test over the discordant queries (the others flip nothing).
            let discordant: Vec<usize> = member.iter().copied().filter(|&i| d[i] != 0.0).collect();
            let observed = diff.abs();
            let extreme = (0..opts.permutations as u64)
                .into_par_iter()
                .filter(|&r| {
                    let g = SplitMix64::for_resample(!opts.seed, r);
                    let flipped: f64 = discordant
                        .iter()
                        .map(|&i| {
                            if g.output(i as u64) & 1 == 1 {
                                -d[i]
                            } else {
                                d[i]
                            }
                        })
                        .sum();
                    // A permuted difference as large as the observed, to rounding.
                    (100.0 * flipped / total).abs() >= observed - 1e-9
                })
                .count();
            out.push(Comparison {
                heads: heads.clone(),
                lam: *lam,
                split: split.to_string(),
                a: score(&success_a),
                b: score(&success_b),
                difference: diff,
                ci_low,
                ci_high,
                p_value: if opts.permutations == 0 {
                    f64::NAN
                } else {
                    (1 + extreme) as f64 / (1 + opts.permutations) as f64
                },
                n_queries: member.len(),
                discordant: discordant.len(),
            });
        }
    }
    Ok(out)
}
