"""An independent reference for simat's text-only baseline: each query's target caption against
the images, written from the definition.

    text_only.py IMG.npy IMG.keys.csv CAP.npy CAP.keys.csv QUERIES.csv
        prints JSON: {"query_id": dataset_id of the first image, ...} and the queries skipped
        for a near-tie (the first two scores within 1e-5)

Both stores hold raw model outputs; the query is normalise(caption[target_triplet_id]) and every
image normalise(image), scored by inner product, the query's own image (its dataset_id) excluded.
"""
import csv
import json
import sys

import numpy as np


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def unit(m):
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def main(img, img_keys, cap, cap_keys, queries):
    images = unit(np.load(img).astype(np.float64))
    by_dataset = {int(r["dataset_id"]): int(r["row"]) for r in rows(img_keys)}
    order = np.array([by_dataset[d] for d in range(len(by_dataset))])
    images = images[order]
    captions = unit(np.load(cap).astype(np.float64))
    by_triplet = {int(r["triplet_id"]): int(r["row"]) for r in rows(cap_keys)}
    first, skipped = {}, []
    for q in rows(queries):
        scores = images @ captions[by_triplet[int(q["target_triplet_id"])]]
        scores[int(q["dataset_id"])] = -np.inf
        top = np.argsort(-scores)[:2]
        if scores[top[0]] - scores[top[1]] < 1e-5:
            skipped.append(int(q["query_id"]))
            continue
        first[int(q["query_id"])] = int(top[0])
    json.dump({"first": first, "skipped": skipped}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
