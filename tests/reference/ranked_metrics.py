"""An independent reference for simat's ranked metrics, written from their definitions.

    ranked_metrics.py matrix DATASET.csv QUERIES.csv OUT.npy SEED [NOISE]
        a random oracle matrix, images x captions (rows by dataset_id, columns by caption id);
        with NOISE, the labels (1 where the image's caption is the column, else 0) with each
        entry flipped with probability NOISE
    ranked_metrics.py metrics RETRIEVALS.csv QUERIES.csv DATASET.csv AT [ORACLE.npy THRESHOLD]
        prints JSON rows: heads, lam, split, field, metric, k, value, n_queries

Definitions (per query; its retrieved list is its rows of one head set and lambda, by rank):
  accepted(r): the oracle accepts the r-th image (labels: it shows the target triplet; a matrix:
               matrix[dataset_id, target caption] > threshold)
  relevant(r): the r-th image shows the target triplet
  SIMAT@k  = 1 if any accepted in the first k
  Recall@k = 1 if any relevant in the first k
  MRR@k    = 1/r of the first accepted at rank r <= k (from 1), else 0
  mAP@k    = sum_{r<=k} P(r) rel(r) / min(k, n_relevant), CIRCO's formula, n_relevant the images
             of the database that show the target triplet, the query's own image excluded
Each is averaged with SIMAT's weights 1/sqrt(n_same_value), x100, per split (dev, test, all)
and field (subj, rel, obj, all).
"""
import csv
import json
import sys

import numpy as np


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def matrix(dataset_csv, queries_csv, out, seed, noise=None):
    d = rows(dataset_csv)
    q = rows(queries_csv)
    n = max(int(r["dataset_id"]) for r in d) + 1
    width = max([int(r["caption_id"]) for r in d] + [int(r["target_caption_id"]) for r in q]) + 1
    rng = np.random.default_rng(int(seed))
    if noise is None:
        np.save(out, rng.random((n, width), dtype=np.float32))
        return
    m = np.zeros((n, width), dtype=np.float32)
    for r in d:
        m[int(r["dataset_id"]), int(r["caption_id"])] = 1.0
    flip = rng.random((n, width)) < float(noise)
    np.save(out, np.where(flip, 1.0 - m, m).astype(np.float32))


def metrics(retrievals_csv, queries_csv, dataset_csv, at, oracle=None, threshold=None):
    at = [int(k) for k in at.split(",")]
    triplet = {}
    for r in rows(dataset_csv):
        triplet[int(r["dataset_id"])] = int(r["triplet_id"])
    count = {}
    for t in triplet.values():
        count[t] = count.get(t, 0) + 1
    m = np.load(oracle) if oracle else None
    queries = {int(r["query_id"]): r for r in rows(queries_csv)}
    order = [int(r["query_id"]) for r in rows(queries_csv)]
    lists = {}
    for r in rows(retrievals_csv):
        key = (r["heads"], float(r["lam"]))
        lists.setdefault(key, {}).setdefault(int(r["query_id"]), []).append(
            (int(r["rank"]), int(r["dataset_id"]))
        )
    out = []
    for (heads, lam), per_query in lists.items():
        cells = {}
        for qid in order:
            q = queries[qid]
            ranked = [d for _, d in sorted(per_query[qid])]
            target = int(q["target_triplet_id"])
            caption = int(q["target_caption_id"])
            relevant = np.array([triplet[d] == target for d in ranked])
            if m is None:
                accepted = relevant.copy()
            else:
                accepted = np.array([m[d, caption] > float(threshold) for d in ranked])
            n_relevant = count.get(target, 0) - (triplet[int(q["dataset_id"])] == target)
            values = {}
            for k in at:
                acc, rel = accepted[:k], relevant[:k]
                values[("simat", k)] = float(acc.any())
                values[("recall", k)] = float(rel.any())
                values[("mrr", k)] = 1.0 / (np.argmax(acc) + 1) if acc.any() else 0.0
                precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
                denominator = min(k, n_relevant)
                values[("map", k)] = (
                    float(np.sum(precision * rel) / denominator) if denominator else 0.0
                )
            w = 1.0 / np.sqrt(float(q["n_same_value"]))
            for split in (q["split"], "all"):
                for field in (q["field"], "all"):
                    cell = cells.setdefault((split, field), {})
                    for key, v in values.items():
                        num, den, n = cell.get(key, (0.0, 0.0, 0))
                        cell[key] = (num + w * v, den + w, n + 1)
        for (split, field), cell in cells.items():
            for (metric, k), (num, den, n) in cell.items():
                out.append(
                    dict(heads=heads, lam=lam, split=split, field=field, metric=metric, k=k,
                         value=100.0 * num / den, n_queries=n)
                )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "matrix":
        matrix(*sys.argv[2:])
    else:
        metrics(*sys.argv[2:])
