#!/usr/bin/env python3
"""The cost of score's bootstrap against numpy doing the same work, on the same run.

    python3 benches/bootstrap_peers.py RUN [--resamples 1000] [--repeat 5] [--simat target/release/simat]

simat: `simat score --run RUN --bootstrap N --force` minus the same with `--bootstrap 0`
(medians of --repeat alternated runs), i.e. the bootstrap's share of the stage.
numpy: the same statistic from RUN's results.parquet (exported once, untimed, as CSV through
`simat query`): N resamples of the queries stratified by split (numpy's generator, vectorised
draws), per resample and per (head set, λ) the weighted score of every split × field cell with
np.bincount; only the resampling and the sums are timed. Same resample count, same cells.
"""
import argparse
import csv
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def run(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--simat", default=os.path.join("target", "release", "simat"))
    a = ap.parse_args()
    with_b, without = [], []
    for _ in range(a.repeat):
        base = [a.simat, "-q", "score", "--run", a.run, "--force"]
        without.append(run(base + ["--bootstrap", "0"]))
        with_b.append(run(base + ["--bootstrap", str(a.resamples)]))
    simat_s = statistics.median(with_b) - statistics.median(without)

    out = subprocess.run(
        [a.simat, "query", a.run,
         "SELECT heads, lam, split, field, success, weight FROM results", "--format", "csv"],
        check=True, capture_output=True, text=True).stdout
    rows = list(csv.DictReader(out.splitlines()))
    keys = list(dict.fromkeys((r["heads"], r["lam"]) for r in rows))
    first = [r for r in rows if (r["heads"], r["lam"]) == keys[0]]
    n = len(first)
    w = np.array([float(r["weight"]) for r in first])
    splits = sorted({r["split"] for r in first})
    fields = ["subj", "rel", "obj"]
    cell = np.array([splits.index(r["split"]) * 3 + fields.index(r["field"]) for r in first])
    ok = np.array([[r["success"] == "true" for r in rows if (r["heads"], r["lam"]) == k]
                   for k in keys], dtype=float)
    strata = [np.flatnonzero(np.array([r["split"] for r in first]) == s) for s in splits]
    n_cells = len(splits) * 3
    rng = np.random.default_rng(0)
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        values = np.empty((a.resamples, len(keys), n_cells + len(splits) + 3 + 1))
        for b in range(a.resamples):
            idx = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])
            den = np.bincount(cell[idx], weights=w[idx], minlength=n_cells)
            for k in range(len(keys)):
                num = np.bincount(cell[idx], weights=(w * ok[k])[idx], minlength=n_cells)
                # split x field cells, then per split over fields, per field over splits, all.
                ns, ds = num.reshape(len(splits), 3), den.reshape(len(splits), 3)
                values[b, k] = np.concatenate([
                    num / den, ns.sum(1) / ds.sum(1), ns.sum(0) / ds.sum(0),
                    [num.sum() / den.sum()]]) * 100
        np.percentile(values, [2.5, 97.5], axis=0)
        times.append(time.perf_counter() - t)
    numpy_s = statistics.median(times)
    print(f"{n} queries x {len(keys)} (head set, lambda), {a.resamples} resamples")
    print(f"simat bootstrap (score with - without): {simat_s:.3f} s")
    print(f"numpy, vectorised:                      {numpy_s:.3f} s")
    print(f"ratio numpy / simat: {numpy_s / simat_s:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
