#!/usr/bin/env python3
"""Exact inner-product k-NN: `simat knn` against faiss-cpu IndexFlatIP and numpy, same data,
same run, same thread count.

    pip install numpy faiss-cpu pyarrow
    cargo build --release
    python3 benches/knn_peers.py [--threads 2] [--work bench-out/knn] [--cases simat-size,200k,1m]
                                 [--repeat 1]

Cases: the SIMAT size (5,859 images, 17,996 queries); 200,000 × 512 with 20,000 queries; and
1,000,000 × 512 with 10,000 queries; k = 10. Data are seeded Gaussian f32 written as `.npy`.

Two times per tool:
- search: simat's own report of its search (files already loaded); faiss's add + search;
  numpy's blocked Q·DBᵀ + argpartition + sort of the k.
- whole process: a fresh process that loads both `.npy` files, searches and writes its hits
  (simat: `simat knn … --out hits.parquet`; faiss: a Python process that imports faiss, loads
  with numpy, searches, and saves the ids and scores with `np.save`).
simat runs twice where the CPU has bf16 units (`avx512_bf16` or `amx_bf16` in /proc/cpuinfo):
`--precision f32` and `--precision bf16` (bf16 scores, then the certified f32 re-rank); the two
must return the same ids and bit-identical scores, or the script stops. Elsewhere only f32 runs.
faiss runs with the OPENBLAS_CORETYPE that made it fastest on a small search (its wheel's
bundled OpenBLAS can misdetect a CPU; the choice is printed). Effective GFLOP/s = 2·n·m·d /
search seconds. Results are checked against faiss (ids equal, or scores equal within 1e-4
where a near tie reorders them). The CPU model and its SIMD are printed.

`--repeat N` runs N rounds, each tool once per round in turn (so that a machine whose speed
drifts slows every tool alike), and reports each tool's median time; numpy runs once.
"""
import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMAT = os.path.join(ROOT, "target", "release", "simat")

FAISS_PROCESS = r"""
import sys, time
import numpy as np
import faiss
db_path, q_path, k, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
faiss.omp_set_num_threads(threads)
db = np.load(db_path, mmap_mode="r")
q = np.load(q_path)
index = faiss.IndexFlatIP(db.shape[1])
index.add(np.ascontiguousarray(db))
D, I = index.search(q, k)
np.save(out + "-ids.npy", I)
np.save(out + "-scores.npy", D)
"""


FAISS_CALIBRATE = r"""
import sys, time
import numpy as np
import faiss
faiss.omp_set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(1)
db = rng.standard_normal((40000, 512), dtype=np.float32)
q = rng.standard_normal((4000, 512), dtype=np.float32)
index = faiss.IndexFlatIP(512)
index.add(db)
index.search(q[:500], 10)
t = time.perf_counter()
index.search(q, 10)
print(time.perf_counter() - t)
"""


def best_openblas_coretype(threads, flags):
    """faiss-cpu's wheel bundles its own OpenBLAS, whose run-time CPU detection can pick a slow
    kernel (seen: OpenBLAS 0.3.15 on a virtualised Sapphire Rapids ran sgemm at 25 GFLOP/s by
    default and 138 with SKYLAKEX). The peer gets its best: each plausible OPENBLAS_CORETYPE is
    timed on a small search and the fastest is used for every faiss run."""
    candidates = [""]
    if "avx512f" in flags:
        candidates += ["SKYLAKEX", "COOPERLAKE", "SAPPHIRERAPIDS"]
    if "avx2" in flags:
        candidates += ["HASWELL", "ZEN"]
    times = {}
    last_error = ""
    for c in candidates:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_CORETYPE=c)
        p = subprocess.run([sys.executable, "-c", FAISS_CALIBRATE, str(threads)],
                           capture_output=True, text=True, env=env)
        if p.returncode == 0:
            times[c] = float(p.stdout.split()[-1])
        else:
            last_error = p.stderr.strip().splitlines()[-1:] or [f"exit {p.returncode}"]
            last_error = last_error[0]
    if not times:
        sys.exit(f"faiss could not run a search under {sys.executable} ({last_error}): "
                 "pip install numpy faiss-cpu, or run this script with the Python that has them")
    best = min(times, key=times.get)
    print("faiss OPENBLAS_CORETYPE: " + ", ".join(
        f"{c or 'default'} {t:.2f}s" for c, t in times.items()) + f" → {best or 'default'}")
    return best


def cpu_line():
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = [f for f in ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"] if f in flags]
    return f"{model}; SIMD: {' '.join(simd) or 'none of avx2/avx512'}", flags


def numpy_knn(db, q, k):
    ids = np.empty((len(q), k), dtype=np.int64)
    scores = np.empty((len(q), k), dtype=np.float32)
    # Blocks of queries whose score block stays under ~1 GB.
    step = max(1, min(1024, (1 << 28) // max(1, len(db))))
    for s in range(0, len(q), step):
        S = q[s:s + step] @ db.T
        part = np.argpartition(-S, k, axis=1)[:, :k]
        ps = np.take_along_axis(S, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        ids[s:s + step] = np.take_along_axis(part, order, axis=1)
        scores[s:s + step] = np.take_along_axis(ps, order, axis=1)
    return scores, ids


def timed(cmd, env=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stderr}")
    return wall, p


def run_case(name, n, m, d, k, threads, work, with_numpy, precisions, repeat):
    import faiss
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    dbp, qp, out = (os.path.join(work, f"{name}-{x}") for x in ["db.npy", "q.npy", "out.parquet"])
    db = rng.standard_normal((n, d), dtype=np.float32)
    q = rng.standard_normal((m, d), dtype=np.float32)
    np.save(dbp, db)
    np.save(qp, q)
    gflop = 2.0 * n * m * d / 1e9
    search, whole = {}, {}

    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    outs = {}
    rounds = {}
    faiss.omp_set_num_threads(threads)
    faiss_out = os.path.join(work, f"{name}-faiss")
    for r in range(repeat):
        for precision in precisions:
            tool = f"simat-{precision}"
            outs[tool] = out.replace(".parquet", f"-{precision}.parquet")
            w, p = timed([SIMAT, "knn", "--db", dbp, "--queries", qp, "-k", str(k),
                          "--out", outs[tool], "--precision", precision], env)
            searched = float(re.search(r"search ([0-9.]+)s", p.stderr).group(1))
            rounds.setdefault(tool, []).append((searched, w))
            if r == 0:
                path = re.search(r"GFLOP/s, (.*?)\), load", p.stderr)
                print(f"  {tool}: {path.group(1) if path else '?'}")

        w, _ = timed([sys.executable, "-c", FAISS_PROCESS, dbp, qp, str(k), str(threads),
                      faiss_out], env)
        t = time.perf_counter()
        index = faiss.IndexFlatIP(d)
        index.add(db)
        D, I = index.search(q, k)
        rounds.setdefault("faiss", []).append((time.perf_counter() - t, w))
        del index
    for tool, times in rounds.items():
        search[tool] = float(np.median([t for t, _ in times]))
        whole[tool] = float(np.median([w for _, w in times]))

    if with_numpy:
        t = time.perf_counter()
        numpy_knn(db, q, k)
        search["numpy"] = time.perf_counter() - t

    results = {}
    for tool, path in outs.items():
        table = pq.read_table(path, columns=["id", "similarity"]).to_pydict()
        results[tool] = (np.array(table["id"]).reshape(m, k),
                         np.array(table["similarity"], dtype=np.float32).reshape(m, k))
        os.remove(path)
    ids, sc = results[f"simat-{precisions[0]}"]
    for tool, (i2, s2) in results.items():
        # Every precision returns the same ids and the same f32 scores, bit for bit.
        assert (i2 == ids).all() and (s2.view(np.int32) == sc.view(np.int32)).all(), \
            f"{tool} differs from simat-{precisions[0]}"
    same = (ids == I).all(axis=1)
    tie_ok = np.abs(sc - D).max(axis=1) < 1e-4
    assert (same | tie_ok).all(), "simat and faiss disagree beyond ties"

    print(f"\n{name}: database {n:,} × {d}, {m:,} queries, k = {k}, {threads} threads, "
          f"{'median of ' + str(repeat) + ' rounds' if repeat > 1 else 'one round'} "
          f"({same.mean() * 100:.2f} % of queries identical to faiss, the rest near ties)")
    print(f"{'tool':<10} {'search s':>9} {'GFLOP/s':>8} {'vs faiss':>9} {'whole s':>8} {'vs faiss':>9}")
    for tool in search:
        w = whole.get(tool)
        wcol = f"{w:>8.2f} {whole['faiss'] / w:>8.2f}x" if w else f"{'':>8} {'':>9}"
        print(f"{tool:<10} {search[tool]:>9.2f} {gflop / search[tool]:>8.0f} "
              f"{search['faiss'] / search[tool]:>8.2f}x {wcol}")
    if repeat > 1:
        for tool, times in rounds.items():
            print(f"  {tool} rounds, search / whole s: "
                  + ", ".join(f"{t:.2f} / {w:.2f}" for t, w in times))
    for f in [dbp, qp]:
        os.remove(f)
    return search, whole


CASES = {
    "simat-size": (5859, 17996, 512, 10, True),
    "200k": (200_000, 20_000, 512, 10, True),
    "1m": (1_000_000, 10_000, 512, 10, False),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out", "knn"))
    ap.add_argument("--cases", default="simat-size,200k,1m")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    line, flags = cpu_line()
    print(f"CPU: {line}")
    # Before faiss is first imported here: OpenBLAS reads the variable when it loads.
    os.environ["OPENBLAS_CORETYPE"] = best_openblas_coretype(args.threads, flags)
    # The bf16 path where the CPU has bf16 units; f32 always.
    precisions = ["f32"] + (["bf16"] if "bf16" in line else [])
    for name in args.cases.split(","):
        n, m, d, k, with_numpy = CASES[name]
        run_case(name, n, m, d, k, args.threads, args.work, with_numpy, precisions,
                 max(1, args.repeat))


if __name__ == "__main__":
    main()
