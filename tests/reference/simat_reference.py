#!/usr/bin/env python3
"""Independent numpy reference for the SIMAT score, used by the Rust test suite.

    simat_reference.py inputs OUT_DIR --seed S
        seeded random image embeddings (one per triplets.csv row, 512-d, f32) and a seeded
        random oracle (images × captions, f32) as img.npy and oracle.npy.

    simat_reference.py score RELEASE OUT_DIR --heads PREFIX --lambdas 0,1,2 --picks picks.json
        recomputes retrieval in float64 from the release tables, the words and word vectors,
        the heads (y = x·Wᵀ + b, then L2 normalisation) and img.npy; checks that simat's first
        retrieved image (picks.json: {lambda: [dataset_id per transfos.csv row]}) is the float64
        best or within `--tol` of it (a near tie); scores those picks with oracle.npy
        (success = similarity > 0.5, weight 1/sqrt(norm2), normalised within the split) and
        prints JSON: {"scores": [{lambda, split, field, score, n_queries}], "exact": n, "ties": n}.

Only numpy and the standard library: no code from simat.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np


def load_transfos(release):
    with open(os.path.join(release, "transfos.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "dataset_id": np.array([int(r["dataset_id"]) for r in rows]),
        "field": np.array([r["field"] for r in rows]),
        "value": [r["value"] for r in rows],
        "target": [r["target"] for r in rows],
        "target_ids": np.array([int(r["target_ids"]) for r in rows]),
        "norm2": np.array([int(r["norm2"]) for r in rows], dtype=np.float64),
        "is_test": np.array([r["is_test"] == "True" for r in rows]),
    }


def head(x, prefix, which):
    if prefix is None:
        y = x
    else:
        w = np.load(f"{prefix}_{which}_head_weight.npy").astype(np.float64)
        b = np.load(f"{prefix}_{which}_head_bias.npy").astype(np.float64)
        y = x @ w.T + b
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def cmd_inputs(args):
    with open(os.path.join(args.release, "triplets.csv")) as f:
        n = sum(1 for _ in f) - 1
    with open(os.path.join(args.release, "captions.txt")) as f:
        n_captions = sum(1 for _ in f)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "img.npy"), rng.standard_normal((n, 512)).astype(np.float32))
    np.save(os.path.join(args.out, "oracle.npy"), rng.random((n, n_captions)).astype(np.float32))


def cmd_score(args):
    t = load_transfos(args.release)
    words = [w.rstrip("\n") for w in open(os.path.join(args.release, "clip_vitb32_words.txt"))]
    w_index = {w: i for i, w in enumerate(words)}
    wv = head(np.load(os.path.join(args.release, "clip_vitb32_word_vectors.npy")).astype(np.float64),
              args.heads, "txt")
    img = head(np.load(os.path.join(args.out, "img.npy")).astype(np.float64), args.heads, "img")
    oracle = np.load(os.path.join(args.out, "oracle.npy"))
    picks = json.load(open(args.picks))
    delta = wv[[w_index[w] for w in t["target"]]] - wv[[w_index[w] for w in t["value"]]]
    weights = 1.0 / np.sqrt(t["norm2"])
    n = len(t["dataset_id"])
    out = {"scores": [], "exact": 0, "ties": 0}
    for lam in [float(x) for x in args.lambdas.split(",")]:
        pick = np.array(picks[repr(lam)])
        assert pick.shape == (n,), pick.shape
        for s in range(0, n, 2048):
            e = min(n, s + 2048)
            q = img[t["dataset_id"][s:e]] + lam * delta[s:e]
            scores = q @ img.T
            scores[np.arange(e - s), t["dataset_id"][s:e]] = -np.inf
            best = scores.argmax(axis=1)  # first maximum: ties by lower id
            got = scores[np.arange(e - s), pick[s:e]]
            top = scores[np.arange(e - s), best]
            bad = np.nonzero(got < top - args.tol)[0]
            if len(bad):
                i = s + bad[0]
                sys.exit(f"lambda {lam}, query row {i}: simat picked {pick[i]} "
                         f"(score {got[bad[0]]:.8f}), the best is {best[bad[0]]} ({top[bad[0]]:.8f})")
            self_pick = pick[s:e] == t["dataset_id"][s:e]
            if self_pick.any():
                sys.exit(f"lambda {lam}: simat retrieved the query's own image")
            exact = pick[s:e] == best
            out["exact"] += int(exact.sum())
            out["ties"] += int((~exact).sum())
        success = oracle[pick, t["target_ids"]] > 0.5
        for split, mask in [("dev", ~t["is_test"]), ("test", t["is_test"]),
                            ("all", np.ones(n, dtype=bool))]:
            for field in ["subj", "rel", "obj", "all"]:
                m = mask if field == "all" else mask & (t["field"] == field)
                score = 100.0 * float(np.sum(weights[m] * success[m]) / np.sum(weights[m]))
                out["scores"].append({"lambda": lam, "split": split, "field": field,
                                      "score": score, "n_queries": int(m.sum())})
    json.dump(out, sys.stdout)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("inputs")
    a.add_argument("release")
    a.add_argument("out")
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("score")
    b.add_argument("release")
    b.add_argument("out")
    b.add_argument("--heads")
    b.add_argument("--lambdas", required=True)
    b.add_argument("--picks", required=True)
    b.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    {"inputs": cmd_inputs, "score": cmd_score}[args.cmd](args)


if __name__ == "__main__":
    main()
