#!/usr/bin/env python3
"""Scoring the official SIMAT, whole process: `simat retrieve` + `simat score` against the
release's eval.py run in PyTorch, same data, same run, same threads.

    pip install numpy pandas torch
    cargo build --release
    python3 benches/official_peers.py [--threads 2] [--work bench-out/official] [--repeat 5]

The release has no image embeddings of its own here, so the project's reference
(tests/reference/simat_reference.py `inputs`) writes seeded raw 512-d embeddings keyed by region
id (img.pt, as simat_img_clip.pt) and a random oracle by dataset_id × caption (oracle.npy, as the
OSCAR matrix); the words are the release's simat_words_clip.ptd. The import (import-simat,
import-embeddings) is done once, untimed. Then, for λ ∈ {0, 1, 2} and both splits:

- simat: two fresh processes, `simat retrieve --lambdas 0,1,2` and `simat score --split all
  --oracle oracle.npy` (dev, test and all), their retrieve/ and score/ removed before each repeat;
- PyTorch: one fresh process doing what eval.py does for each domain (torch.load of the
  embeddings and words, normalise, Δ per query, `(value + λΔ) @ imgᵀ`, top-5, first not-self,
  oracle > 0.5 weighted by 1/√norm2), heads left out as in `--heads none`.

Reported: the median wall time of each over the repeats, and PyTorch's time inside the process
after its imports (its interpreter and `import torch` are most of its whole-process time).
The scores of both are printed and must agree.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMAT = os.path.join(ROOT, "target", "release", "simat")
RELEASE = os.path.join(ROOT, "..", "shared", "data", "simat-release")
REFERENCE = os.path.join(ROOT, "tests", "reference", "simat_reference.py")
LAMBDAS = [0.0, 1.0, 2.0]

EVAL_PY = r"""
import sys, time, json
t_import = time.perf_counter()
import numpy as np, pandas as pd, torch
release, inputs, lbds = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split(",")]
t0 = time.perf_counter()
norm = lambda x: x / x.norm(dim=-1, keepdim=True)
transfos_all = pd.read_csv(f"{release}/transfos.csv", index_col=0)
triplets = pd.read_csv(f"{release}/triplets.csv", index_col=0)
did2rid = dict(zip(triplets.dataset_id, triplets.index))
rid2did = dict(zip(triplets.index, triplets.dataset_id))
clip_simat = torch.load(f"{inputs}/img.pt")
img = norm(torch.stack([clip_simat[did2rid[i]] for i in range(len(clip_simat))]).float())
words = dict(torch.load(f"{release}/original/simat_words_clip.ptd"))
w2v = {k: norm(v.float()) for k, v in words.items()}
oracle = torch.from_numpy(np.load(f"{inputs}/oracle.npy"))
out = {}
for domain in ["dev", "test"]:
    transfos = transfos_all[transfos_all.is_test == (domain == "test")]
    transfos_did = [rid2did[rid] for rid in transfos.region_id]
    value_embs = torch.stack([img[did] for did in transfos_did])
    delta = torch.stack([w2v[x.target] - w2v[x.value] for _, x in transfos.iterrows()])
    weights = 1 / np.array(transfos.norm2) ** .5
    weights = weights / sum(weights)
    for lbd in lbds:
        nnb = ((value_embs + lbd * delta) @ img.T).topk(5).indices
        notself = [r[0] if r[0].item() != t else r[1] for r, t in zip(nnb, transfos_did)]
        scores = np.array([oracle[ri, tc] for ri, tc in zip(notself, transfos.target_ids)]) > .5
        out[f"{domain} {lbd}"] = 100 * np.average(scores, weights=weights)
print(json.dumps({"scores": out, "after_imports": time.perf_counter() - t0}))
"""


def run(cmd, env):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    return wall, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out", "official"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               NO_COLOR="1")
    inputs, r = os.path.join(args.work, "inputs"), os.path.join(args.work, "run")
    lambdas = ",".join(str(x) for x in LAMBDAS)
    if not os.path.exists(os.path.join(inputs, "oracle.npy")):
        run([sys.executable, REFERENCE, "inputs", RELEASE, inputs, "--seed", "7", "--lambdas",
             lambdas], env)
    shutil.rmtree(r, ignore_errors=True)
    run([SIMAT, "import-simat", "-q", "--release", RELEASE, "--run", r], env)
    run([SIMAT, "import-embeddings", "-q", "--run", r, "--image-embeddings",
         os.path.join(inputs, "img.pt"), "--word-embeddings",
         os.path.join(RELEASE, "original", "simat_words_clip.ptd")], env)

    simat_walls, torch_walls, torch_inner = [], [], []
    for _ in range(args.repeat):
        for stage in ["retrieve", "score"]:
            shutil.rmtree(os.path.join(r, stage), ignore_errors=True)
        t = time.perf_counter()
        run([SIMAT, "retrieve", "-q", "--run", r, "--lambdas", lambdas], env)
        run([SIMAT, "score", "-q", "--run", r, "--split", "all", "--oracle",
             os.path.join(inputs, "oracle.npy")], env)
        simat_walls.append(time.perf_counter() - t)
        wall, out = run([sys.executable, "-c", EVAL_PY, RELEASE, inputs, lambdas], env)
        torch_walls.append(wall)
        torch_inner.append(json.loads(out)["after_imports"])

    with open(os.path.join(r, "score", "scores.json")) as f:
        mine = {f"{s['split']} {float(s['lambda'])}": s["score"] for s in json.load(f)["scores"]
                if s["field"] == "all"}
    theirs = json.loads(out)["scores"]
    for key, v in sorted(theirs.items()):
        print(f"  {key:>10}: eval.py (PyTorch) {v:6.2f}   simat {mine[key]:6.2f}")
        assert abs(mine[key] - v) < 1e-6, f"{key}: the scores differ"

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from knn_peers import cpu_line
    cpu, _ = cpu_line()
    sm, tm, ti = (statistics.median(x) for x in (simat_walls, torch_walls, torch_inner))
    print(f"\nCPU: {cpu}; {args.threads} threads; median of {args.repeat}")
    print("official SIMAT, 3 λ, dev + test + all, import done:")
    print(f"  simat retrieve + score (two processes): {sm:.3f} s")
    print(f"  eval.py in PyTorch (one process):       {tm:.3f} s  ({ti:.3f} s after its imports)")
    print(f"  ratio: {tm / sm:.1f}x whole process, {ti / sm:.1f}x against PyTorch's compute alone")


if __name__ == "__main__":
    main()
