"""An independent reference for simat's bootstrap intervals of the SIMAT score.

    bootstrap.py RESULTS.csv RESAMPLES SEED CONFIDENCE
        RESULTS.csv: heads, lam, query_id, split, field, success, weight (results.parquet's rows,
        in their order: per query, each head set and lambda)
        prints JSON rows: heads, lam, split, field, ci_low, ci_high
    bootstrap.py compare A.csv B.csv RESAMPLES PERMUTATIONS SEED CONFIDENCE
        prints JSON rows: heads, lam, split, a, b, difference, ci_low, ci_high, p_value,
        n_queries, discordant (see `simat compare --help` and below)

Resample b draws, within each split (the splits in the order of their names, each's queries in
table order), as many queries as the split has: draw j (counted across the splits) is
floor(u * n), u = x / 2^64, x the j-th output of SplitMix64 whose state is the b-th output (from
0) of SplitMix64 seeded with `seed` (golden = 0x9E3779B97F4A7C15 is its increment). On each resample, every cell's score is 100 * sum(w * success) /
sum(w) over the drawn queries in it (split: the query's own and `all`; field: its own and
`all`); the interval is numpy's percentile of the resampled scores at (1 - c)/2 and (1 + c)/2.
"""
import csv
import json
import sys

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(state, count):
    """`count` outputs of SplitMix64 from `state`: state_j = state + (j + 1) * golden."""
    s = (np.uint64(state) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GOLDEN))
    z = s
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def below(x, n):
    """floor(x * n / 2^64), exactly, for n < 2^32."""
    n = np.uint64(n)
    hi, lo = x >> np.uint64(32), x & np.uint64(0xFFFFFFFF)
    return ((hi * n + ((lo * n) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def main(results_csv, resamples, seed, confidence):
    resamples, seed, confidence = int(resamples), int(seed), float(confidence)
    with open(results_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = []
    per_key = {}
    for r in rows:
        key = (r["heads"], float(r["lam"]))
        if key not in per_key:
            keys.append(key)
            per_key[key] = []
        per_key[key].append(r)
    out = []
    first = per_key[keys[0]]
    splits = sorted({r["split"] for r in first})
    strata = [np.array([i for i, r in enumerate(first) if r["split"] == s]) for s in splits]
    draws = draws_of(strata, resamples, seed)
    for key in keys:
        qs = per_key[key]
        w = np.array([float(r["weight"]) for r in qs])
        ok = np.array([r["success"] == "true" for r in qs])
        split = np.array([r["split"] for r in qs])
        field = np.array([r["field"] for r in qs])
        for s in splits + ["all"]:
            for fl in ["subj", "rel", "obj", "all"]:
                member = (split == s) | (s == "all")
                member &= (field == fl) | (fl == "all")
                values = []
                for d in draws:
                    m = member[d]
                    den = w[d][m].sum()
                    if den > 0:
                        values.append(100.0 * (w[d][m] * ok[d][m]).sum() / den)
                if values:
                    a = (1.0 - confidence) / 2.0
                    lo, hi = np.percentile(values, [100 * a, 100 * (1 - a)])
                    out.append(dict(heads=key[0], lam=key[1], split=s, field=fl,
                                    ci_low=float(lo), ci_high=float(hi)))
    json.dump(out, sys.stdout)


def draws_of(strata, resamples, seed):
    total = sum(len(s) for s in strata)
    out = []
    with np.errstate(over="ignore"):
        for b in range(resamples):
            state = int(splitmix64((seed + b * GOLDEN) & M64, 1)[0])
            x = splitmix64(state, total)
            at, drawn = 0, []
            for s in strata:
                drawn.append(s[below(x[at:at + len(s)], len(s))])
                at += len(s)
            out.append(np.concatenate(drawn))
    return out


def compare(a_csv, b_csv, resamples, permutations, seed, confidence):
    """A - B per head set, lambda and split: the weighted scores' difference over the same
    queries (joined by query_id; A's table order), its paired bootstrap interval (the same
    resampled queries for both), and the two-sided sign-flip permutation p-value: permutation r
    swaps query j's outcomes when bit 0 of output j of SplitMix64, state = output r of SplitMix64
    seeded with NOT seed, is set; p = (1 + #{|D*| >= |D| - 1e-9}) / (1 + R)."""
    resamples, permutations, seed = int(resamples), int(permutations), int(seed)
    confidence = float(confidence)

    def load(path):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        per = {}
        order = []
        for r in rows:
            q = int(r["query_id"])
            if q not in per:
                per[q] = dict(split=r["split"], weight=float(r["weight"]), ok={})
                order.append(q)
            per[q]["ok"][(r["heads"], float(r["lam"]))] = r["success"] == "true"
        keys = list(dict.fromkeys((r["heads"], float(r["lam"])) for r in rows))
        return per, order, keys

    a, order, keys = load(a_csv)
    b, _, b_keys = load(b_csv)
    w = np.array([a[q]["weight"] for q in order])
    split = np.array([a[q]["split"] for q in order])
    splits = sorted(set(split))
    strata = [np.flatnonzero(split == s) for s in splits]
    draws = draws_of(strata, resamples, seed)
    n = len(order)
    flips = []
    with np.errstate(over="ignore"):
        for r in range(permutations):
            state = int(splitmix64(((~seed & M64) + r * GOLDEN) & M64, 1)[0])
            flips.append((splitmix64(state, n) & np.uint64(1)).astype(bool))
    out = []
    for key in keys:
        if key not in b_keys:
            continue
        sa = np.array([a[q]["ok"][key] for q in order], dtype=float)
        sb = np.array([b[q]["ok"][key] for q in order], dtype=float)
        d = w * (sa - sb)
        for s in splits + ["all"]:
            m = (split == s) | (s == "all")
            total = w[m].sum()
            diff = 100.0 * d[m].sum() / total
            values = []
            for dr in draws:
                mm = m[dr]
                values.append(100.0 * d[dr][mm].sum() / w[dr][mm].sum())
            a_lo, a_hi = (1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0
            lo, hi = np.percentile(values, [100 * a_lo, 100 * a_hi])
            extreme = 0
            for f in flips:
                permuted = 100.0 * np.where(f, -d, d)[m].sum() / total
                extreme += abs(permuted) >= abs(diff) - 1e-9
            out.append(dict(heads=key[0], lam=key[1], split=s,
                            a=100.0 * (w * sa)[m].sum() / total,
                            b=100.0 * (w * sb)[m].sum() / total,
                            difference=diff, ci_low=float(lo), ci_high=float(hi),
                            p_value=(1 + extreme) / (1 + permutations),
                            n_queries=int(m.sum()), discordant=int((d[m] != 0).sum())))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
