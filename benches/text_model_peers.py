#!/usr/bin/env python3
"""simat's text models against their peer, Hugging Face `tokenizers` + onnxruntime's Python API
doing the same work: the release's captions (repeated to --texts N) through data/tiny-bert
(WordPiece, cut at 32 tokens, batches of --batch padded to their longest, mean pooling over the
attention mask), each on --threads threads. simat runs as `simat encode --text-model`, its time
the whole command (process start, loading, writing the store); the peer's from loading the
tokenizer and the graph to the last pooled batch. Checks that both give the same vectors
(max difference 1e-4), then prints each median of --repeat runs, alternating, and the ratio.

    python3 benches/text_model_peers.py --simat target/release/simat [--texts 20000]

Needs numpy, tokenizers and onnxruntime (pip).
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT = os.path.join(ROOT, "data", "tiny-bert")


def peer(texts, batch, threads):
    import onnxruntime
    from tokenizers import Tokenizer

    start = time.perf_counter()
    tok = Tokenizer.from_file(os.path.join(BERT, "tokenizer.json"))
    tok.enable_truncation(32)
    tok.no_padding()
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = onnxruntime.InferenceSession(os.path.join(BERT, "text.onnx"), opts)
    names = [i.name for i in sess.get_inputs()]
    out = []
    for b in range(0, len(texts), batch):
        enc = tok.encode_batch(texts[b:b + batch])
        t = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), t), np.int64)
        mask = np.zeros((len(enc), t), np.int64)
        for i, e in enumerate(enc):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = sess.run(["last_hidden_state"], {n: feed[n] for n in names})[0]
        m = mask[:, :, None].astype(np.float64)
        out.append(((hidden * m).sum(1) / m.sum(1)).astype(np.float32))
    return np.concatenate(out), time.perf_counter() - start


def simat(binary, path, batch, threads, work):
    out = os.path.join(work, "out")
    start = time.perf_counter()
    subprocess.run([binary, "-q", "encode", "--model", os.path.join(ROOT, "data", "tiny-clip"),
                    "--text-model", BERT, "--texts", path, "--out", out,
                    "--batch-size", str(batch), "--threads", str(threads)], check=True)
    seconds = time.perf_counter() - start
    npy = os.path.join(work, "texts.npy")
    subprocess.run([binary, "-q", "export", os.path.join(out, "text_embeddings.arrow"),
                    "--out", npy], check=True)
    return np.load(npy), seconds


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--simat", default=os.path.join(ROOT, "target", "release", "simat"))
    a.add_argument("--release", default=os.path.join(ROOT, "..", "shared", "data", "simat-release"))
    a.add_argument("--texts", type=int, default=20000)
    a.add_argument("--batch", type=int, default=64)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--repeat", type=int, default=3)
    args = a.parse_args()
    captions = open(os.path.join(args.release, "captions.txt")).read().splitlines()
    texts = (captions * (args.texts // len(captions) + 1))[:args.texts]
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "texts.txt")
        with open(path, "w") as f:
            f.write("\n".join(texts) + "\n")
        times = {"simat": [], "peer": []}
        for _ in range(args.repeat):
            got, t = simat(args.simat, path, args.batch, args.threads, work)
            times["simat"].append(t)
            want, t = peer(texts, args.batch, args.threads)
            times["peer"].append(t)
            worst = float(np.abs(got - want).max())
            assert worst < 1e-4, f"simat and the peer differ by {worst}"
    s, p = statistics.median(times["simat"]), statistics.median(times["peer"])
    print(f"{args.texts} texts, batches of {args.batch}, {args.threads} threads; "
          f"max difference {worst:.1e}")
    print(f"simat encode --text-model: {s:.2f} s (median of {args.repeat}: {times['simat']})")
    print(f"tokenizers + onnxruntime:  {p:.2f} s (median of {args.repeat}: {times['peer']})")
    print(f"simat / peer: {s / p:.2f}")


if __name__ == "__main__":
    main()
