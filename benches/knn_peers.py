#!/usr/bin/env python3
"""Exact inner-product k-NN: `simat knn` against faiss-cpu IndexFlatIP and numpy, same data,
same run, same thread count.

    pip install numpy faiss-cpu
    cargo build --release
    python3 benches/knn_peers.py [--threads 2] [--work bench-out/knn]

Cases: 200,000 × 512 database with 20,000 queries, k = 10; and the SIMAT size (5,859 images,
17,996 queries). Data are seeded Gaussian f32. Times are the search alone (simat reports its
own search time, excluding file loading; faiss: add + search; numpy: blocked Q·DBᵀ +
argpartition + sort of the k). Effective GFLOP/s = 2·n·m·d / seconds. Results are checked
against faiss (ids equal, or scores equal within 1e-4 where a near tie reorders them).
"""
import argparse
import os
import re
import subprocess
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMAT = os.path.join(ROOT, "target", "release", "simat")


def numpy_knn(db, q, k):
    ids = np.empty((len(q), k), dtype=np.int64)
    scores = np.empty((len(q), k), dtype=np.float32)
    for s in range(0, len(q), 1024):
        S = q[s:s + 1024] @ db.T
        part = np.argpartition(-S, k, axis=1)[:, :k]
        ps = np.take_along_axis(S, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        ids[s:s + 1024] = np.take_along_axis(part, order, axis=1)
        scores[s:s + 1024] = np.take_along_axis(ps, order, axis=1)
    return scores, ids


def run_case(name, n, m, d, k, threads, work):
    import faiss
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    db = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((m, d)).astype(np.float32)
    dbp, qp, out = (os.path.join(work, f"{name}-{x}") for x in ["db.npy", "q.npy", "out.parquet"])
    np.save(dbp, db)
    np.save(qp, q)
    gflop = 2.0 * n * m * d / 1e9
    res = {}

    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    p = subprocess.run([SIMAT, "knn", "--db", dbp, "--queries", qp, "-k", str(k), "--out", out],
                       capture_output=True, text=True, env=env, check=True)
    res["simat"] = float(re.search(r"search ([0-9.]+)s", p.stderr).group(1))

    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(d)
    index.add(db)
    D, I = index.search(q, k)
    res["faiss"] = time.perf_counter() - t

    t = time.perf_counter()
    numpy_knn(db, q, k)
    res["numpy"] = time.perf_counter() - t

    table = pq.read_table(out).to_pydict()
    ids = np.array(table["id"]).reshape(m, k)
    sc = np.array(table["similarity"]).reshape(m, k)
    same = (ids == I).all(axis=1)
    tie_ok = np.abs(sc - D).max(axis=1) < 1e-4
    assert (same | tie_ok).all(), "simat and faiss disagree beyond ties"

    print(f"\n{name}: database {n:,} × {d}, {m:,} queries, k = {k}, {threads} threads "
          f"({same.mean() * 100:.2f} % of queries identical to faiss, the rest near ties)")
    print(f"{'tool':<7} {'seconds':>8} {'GFLOP/s':>8} {'vs faiss':>9}")
    for tool in ["simat", "faiss", "numpy"]:
        print(f"{tool:<7} {res[tool]:>8.2f} {gflop / res[tool]:>8.0f} {res['faiss'] / res[tool]:>8.2f}x")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out", "knn"))
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    run_case("simat-size", 5859, 17996, 512, 10, args.threads, args.work)
    run_case("200k", 200_000, 20_000, 512, 10, args.threads, args.work)


if __name__ == "__main__":
    main()
