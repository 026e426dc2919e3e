#!/usr/bin/env python3
"""Independent reference for the SIMAT score, used by the Rust test suite. It follows the
release's `eval.py` (facebookresearch/SIMAT, last commit; ../shared/data/simat-release/original/)
line by line, with numpy in place of torch: only numpy and the standard library, no code from
simat.

    simat_reference.py inputs RELEASE OUT_DIR --seed S [--heads PT] [--lambdas 0,1] [--min-gap G]
        OUT_DIR/img.pt: seeded random raw image embeddings (512-d, f32) keyed by region id, a
        dict region_id -> tensor as the release's simat_img_clip.pt (written in torch.save's zip
        format by the writer below; entries in a shuffled order, so that nothing can lean on
        it), and OUT_DIR/oracle.npy: a seeded random oracle (images x captions, f32) with rows in
        eval.py's numbering (triplets.csv's dataset_id column), as its OSCAR matrix. Images are
        redrawn until, for every query of both splits, every λ given, with and without the heads,
        the best image beats the second best by at least G (no near-ties: a different f32
        summation order cannot change a retrieval).

    simat_reference.py score RELEASE OUT_DIR --domain dev|test [--heads PT] --lambdas 0,1
        eval.py: prints JSON {"scores": {lambda: score}, "n": queries, "min_gap": g,
        "retrieved": {lambda: [dataset_id per query of the domain, transfos.csv order]}}.
        Words come from the release's simat_words_clip.ptd and heads from its head_clip_t=*.pt,
        read by the small torch.load below.
"""
import argparse
import csv
import io
import json
import os
import pickle
import sys
import zipfile

import numpy as np


# ---- torch.load / torch.save without torch -------------------------------------------------

_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
           "LongStorage": np.int64, "IntStorage": np.int32}


class _Linear:
    """A pickled torch.nn.Linear: its state is a dict with `_parameters`."""

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __call__(self, x):
        p = self._parameters
        return x @ p["weight"].T + p["bias"]


def _rebuild_tensor_v2(storage, offset, size, stride, *rest):
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, archive, prefix):
        super().__init__(f)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda t, *a: t
        if (module, name) == ("torch.nn.modules.linear", "Linear"):
            return _Linear
        if module == "torch" and name in _DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module in ("__builtin__", "builtins") and name == "set":
            return set
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        _, storage_type, key, _, numel = pid
        raw = self.archive.read(f"{self.prefix}data/{key}")
        return np.frombuffer(raw, dtype=_DTYPES[storage_type], count=numel)


def torch_load(path):
    with zipfile.ZipFile(path) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        return _Unpickler(io.BytesIO(z.read(pkl)), z, prefix).load()


class _Storage:
    def __init__(self, key, dtype_name, numel):
        self.key, self.dtype_name, self.numel = key, dtype_name, numel


class _Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride = [int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape))]
        return (_GLOBALS["_rebuild_tensor_v2"],
                (self.storage, 0, tuple(self.shape), tuple(stride), False, {}))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _GLOBALS[obj.dtype_name], obj.key, "cpu", obj.numel)
        return None


def _make_global(module, name):
    # Pickle stores a global by module and name; a stand-in module lets pickle write it.
    import types
    existing = getattr(sys.modules.get(module), name, None)
    if existing is not None:
        return existing
    mod = sys.modules.setdefault(module, types.ModuleType(module))
    fn = type(name, (), {"__module__": module, "__qualname__": name})
    setattr(mod, name, fn)
    return fn


_GLOBALS = {
    "_rebuild_tensor_v2": _make_global("torch._utils", "_rebuild_tensor_v2"),
    "FloatStorage": _make_global("torch", "FloatStorage"),
}


def torch_save_dict_of_vectors(d, path):
    """{int: float32 vector} in torch.save's format: one storage per tensor."""
    arrays, obj = [], {}
    for i, (k, v) in enumerate(d.items()):
        v = np.ascontiguousarray(v, dtype=np.float32)
        arrays.append((str(i), v))
        obj[k] = _Tensor(_Storage(str(i), "FloatStorage", v.size), list(v.shape))
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, v in arrays:
            z.writestr(f"archive/data/{key}", v.astype("<f4").tobytes())
        z.writestr("archive/version", "3\n")


# ---- the release's tables ------------------------------------------------------------------

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def load_release(release):
    transfos = read_csv(os.path.join(release, "transfos.csv"))
    triplets = read_csv(os.path.join(release, "triplets.csv"))
    return transfos, triplets


# ---- eval.py, line by line -----------------------------------------------------------------

def simat_eval(release, out, domain, heads_path, lbds):
    if heads_path:
        heads = torch_load(heads_path)
    else:
        heads = dict(img_head=lambda x: x, txt_head=lambda x: x)
    output, retrieved = {}, {}
    transfos, triplets = load_release(release)
    did2rid = {int(t["dataset_id"]): int(t["region_id"]) for t in triplets}
    rid2did = {int(t["region_id"]): int(t["dataset_id"]) for t in triplets}

    transfos = [x for x in transfos if (x["is_test"] == "True") == (domain == "test")]

    transfos_did = [rid2did[int(x["region_id"])] for x in transfos]

    clip_simat = torch_load(os.path.join(out, "img.pt"))
    img_embs_stacked = np.stack([clip_simat[did2rid[i]] for i in range(len(clip_simat))]).astype(np.float32)
    img_embs_stacked = normalize(heads["img_head"](img_embs_stacked)).astype(np.float32)
    value_embs = np.stack([img_embs_stacked[did] for did in transfos_did])

    word_embs = dict(torch_load(os.path.join(release, "original", "simat_words_clip.ptd")))
    w2v = {k: normalize(heads["txt_head"](v.astype(np.float32))).astype(np.float32)
           for k, v in word_embs.items()}
    delta_vectors = np.stack([w2v[x["target"]] - w2v[x["value"]] for x in transfos])

    oscar_scores = np.load(os.path.join(out, "oracle.npy"))
    weights = 1 / np.array([float(x["norm2"]) for x in transfos]) ** .5
    weights = weights / sum(weights)

    min_gap = np.inf
    for lbd in lbds:
        target_embs = (value_embs + np.float32(lbd) * delta_vectors).astype(np.float32)

        sims = target_embs @ img_embs_stacked.T
        top = np.argpartition(-sims, 5, axis=1)[:, :5]                  # .topk(5).indices
        nnb = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), 1), 1)
        nnb_notself = [r[0] if r[0] != t else r[1] for r, t in zip(nnb, transfos_did)]

        scores = np.array([oscar_scores[ri, int(x["target_ids"])]
                           for ri, x in zip(nnb_notself, transfos)]) > .5

        output[lbd] = 100 * np.average(scores, weights=weights)
        retrieved[lbd] = [int(r) for r in nnb_notself]
        min_gap = min(min_gap, gap_check(value_embs, delta_vectors, lbd, img_embs_stacked,
                                         transfos_did, nnb_notself, nnb))
    return output, retrieved, len(transfos), min_gap


def gap_check(value_embs, delta_vectors, lbd, img, self_ids, picked, nnb):
    """In float64, over the float32 top five: the float32 pick is the best non-self image, and
    the smallest gap between it and the next non-self image. With gaps far above float32's
    error, no image outside the top five can be in between."""
    q = value_embs.astype(np.float64) + lbd * delta_vectors.astype(np.float64)
    cand = img.astype(np.float64)[nnb]                                  # queries x 5 x D
    sims = np.einsum("qd,qkd->qk", q, cand)
    sims[nnb == np.asarray(self_ids)[:, None]] = -np.inf
    order = np.argsort(-sims, axis=1)
    best = nnb[np.arange(len(nnb)), order[:, 0]]
    if not np.array_equal(best, np.asarray(picked)):
        sys.exit("the float32 retrieval disagrees with float64: the data has near-ties")
    s = np.take_along_axis(sims, order, 1)
    return float((s[:, 0] - s[:, 1]).min())


# ---- inputs without near-ties --------------------------------------------------------------

def cmd_inputs(args):
    transfos, triplets = load_release(args.release)
    n = len(triplets)
    with open(os.path.join(args.release, "captions.txt")) as f:
        n_captions = sum(1 for _ in f)
    rng = np.random.default_rng(args.seed)
    rid_of = np.array([int(t["region_id"]) for t in triplets])
    did_of = np.array([int(t["dataset_id"]) for t in triplets])
    rid_by_did = np.empty(n, dtype=np.int64)
    rid_by_did[did_of] = rid_of
    # Raw embeddings about as long as CLIP ViT-B/32's (norm ~10), in dataset_id order here.
    raw = (rng.standard_normal((n, 512)) * 0.45).astype(np.float32)
    did_by_rid = dict(zip(rid_of.tolist(), did_of.tolist()))
    q_did = np.array([did_by_rid[int(x["region_id"])] for x in transfos])
    words = dict(torch_load(os.path.join(args.release, "original", "simat_words_clip.ptd")))
    lbds = [float(x) for x in args.lambdas.split(",")]
    # The spaces retrieval runs in: the raw embeddings, and the heads' outputs.
    spaces = [(None, None)]
    if args.heads:
        h = torch_load(args.heads)
        spaces.append((h["img_head"], h["txt_head"]))
    for it in range(200):
        bad = set()
        worst = np.inf
        for img_head, txt_head in spaces:
            img64 = raw.astype(np.float64)
            if img_head is not None:
                img64 = img_head(img64)
            img64 = normalize(img64)
            w2v = {k: normalize(txt_head(v.astype(np.float64)) if txt_head else v.astype(np.float64))
                   for k, v in words.items()}
            delta64 = np.stack([w2v[x["target"]] - w2v[x["value"]] for x in transfos])
            img32, delta32 = img64.astype(np.float32), delta64.astype(np.float32)
            gram, dimg = img32 @ img32.T, delta32 @ img32.T
            for lbd in lbds:
                for s in range(0, len(q_did), 4096):
                    e = min(len(q_did), s + 4096)
                    rows = np.arange(e - s)
                    # Screen in float32 with fast reductions, confirm in float64.
                    sims = gram[q_did[s:e]] + np.float32(lbd) * dimg[s:e]
                    sims[rows, q_did[s:e]] = -np.inf
                    first = sims.argmax(axis=1)
                    m1 = sims[rows, first]
                    sims[rows, first] = -np.inf
                    m2 = sims.max(axis=1)
                    for r in np.nonzero(m1 - m2 < 4 * args.min_gap)[0]:
                        i = s + r
                        q = img64[q_did[i]] + lbd * delta64[i]
                        exact = img64 @ q
                        exact[q_did[i]] = -np.inf
                        a, b = np.argsort(-exact)[:2]
                        gap = exact[a] - exact[b]
                        worst = min(worst, gap)
                        if gap < args.min_gap:
                            bad.add(int(b))  # redraw the runner-up: the answer stands clear
        print(f"round {it}: smallest gap {worst:.2e}, {len(bad)} images redrawn", file=sys.stderr)
        if not bad:
            break
        for d in bad:
            raw[d] = (rng.standard_normal(512) * 0.45).astype(np.float32)
    else:
        sys.exit("could not remove the near-ties")
    os.makedirs(args.out, exist_ok=True)
    order = rng.permutation(n)  # a dict in an order that is neither dataset_id nor row
    torch_save_dict_of_vectors({int(rid_by_did[d]): raw[d] for d in order},
                               os.path.join(args.out, "img.pt"))
    np.save(os.path.join(args.out, "oracle.npy"), rng.random((n, n_captions)).astype(np.float32))


def cmd_score(args):
    lbds = [float(x) for x in args.lambdas.split(",")]
    output, retrieved, n, min_gap = simat_eval(args.release, args.out, args.domain, args.heads, lbds)
    json.dump({"scores": {repr(k): float(v) for k, v in output.items()}, "n": n,
               "min_gap": min_gap, "retrieved": {repr(k): v for k, v in retrieved.items()}},
              sys.stdout)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("inputs")
    a.add_argument("release")
    a.add_argument("out")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--heads")
    a.add_argument("--lambdas", default="0,0.5,1,2")
    a.add_argument("--min-gap", type=float, default=3e-5)
    b = sub.add_parser("score")
    b.add_argument("release")
    b.add_argument("out")
    b.add_argument("--domain", choices=["dev", "test"], required=True)
    b.add_argument("--heads")
    b.add_argument("--lambdas", required=True)
    args = ap.parse_args()
    {"inputs": cmd_inputs, "score": cmd_score}[args.cmd](args)


if __name__ == "__main__":
    main()
