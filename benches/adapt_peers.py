#!/usr/bin/env python3
"""Epochs per second of `simat adapt` against PyTorch on the CPU, same pairs, same threads.

    cargo build --release && python3 benches/adapt_peers.py [--pairs 200000] [--dim 512]
        [--batch 4096] [--threads 2] [--epochs 1]

Seeded Gaussian pairs (`x`, and `y` a noisy linear map of it) are written once as .npy. simat
trains with `--init identity --no-shuffle --val-fraction 0` (its `train_ms` counter times the
epochs, without reading the files); PyTorch runs the same step — two `nn.Linear` heads, the
symmetric contrastive loss, `clip_grad_norm_`, `torch.optim.Adam` — timed over the epochs only.
Both losses are printed: they must agree.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMAT = os.path.join(ROOT, "target", "release", "simat")

TORCH = r"""
import sys, time, numpy as np, torch, torch.nn.functional as F
x_path, y_path, batch, threads, epochs, tau = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
torch.set_num_threads(threads)
X, Y = torch.from_numpy(np.load(x_path)), torch.from_numpy(np.load(y_path))
d = X.shape[1]
heads = torch.nn.ModuleDict({"img": torch.nn.Linear(d, d), "txt": torch.nn.Linear(d, d)})
with torch.no_grad():
    for h in heads.values():
        h.weight.copy_(torch.eye(d)); h.bias.zero_()
opt = torch.optim.Adam(heads.parameters(), lr=1e-3)
t = time.perf_counter()
for _ in range(epochs):
    for s in range(0, len(X), batch):
        xb, yb = X[s:s + batch], Y[s:s + batch]
        u = F.normalize(heads["img"](xb), dim=-1); v = F.normalize(heads["txt"](yb), dim=-1)
        logits = u @ v.T / tau
        labels = torch.arange(len(xb))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        opt.step()
print(time.perf_counter() - t, loss.item())
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--python", default=sys.executable, help="a Python with torch")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="simat-adapt-bench-")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.pairs, args.dim), dtype=np.float32)
    mix = rng.standard_normal((args.dim, args.dim), dtype=np.float32) / args.dim ** 0.5
    y = (x @ mix + rng.standard_normal((args.pairs, args.dim), dtype=np.float32)).astype(np.float32)
    xp, yp = os.path.join(work, "x.npy"), os.path.join(work, "y.npy")
    np.save(xp, x)
    np.save(yp, y)
    del x, y
    run = os.path.join(work, "run")
    subprocess.run([SIMAT, "-q", "adapt", "--run", run, "--images", xp, "--texts", yp,
                    "--epochs", str(args.epochs), "--batch-size", str(args.batch),
                    "--threads", str(args.threads), "--init", "identity", "--no-shuffle",
                    "--val-fraction", "0", "--lr-step", "1000"], check=True)
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    simat_s = manifest["stages"]["adapt"]["counters"]["train_ms"] / 1000
    out = subprocess.run([args.python, "-c", TORCH, xp, yp, str(args.batch), str(args.threads),
                          str(args.epochs), "0.1"], check=True, capture_output=True, text=True)
    torch_s, torch_loss = (float(v) for v in out.stdout.split())
    steps = -(-args.pairs // args.batch) * args.epochs
    print(f"{args.pairs} pairs × {args.dim}, batch {args.batch}, {args.epochs} epoch(s) = {steps} steps, "
          f"{args.threads} threads")
    print(f"{'contender':<12} {'seconds':>8} {'epochs/s':>9}")
    print(f"{'simat':<12} {simat_s:>8.2f} {args.epochs / simat_s:>9.3f}")
    print(f"{'PyTorch':<12} {torch_s:>8.2f} {args.epochs / torch_s:>9.3f}   (last loss {torch_loss:.5f})")
    print(f"simat is {torch_s / simat_s:.2f}× PyTorch")


if __name__ == "__main__":
    main()
