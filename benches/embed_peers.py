#!/usr/bin/env python3
"""Images per second of `simat encode` against Python (PIL + open_clip's transform +
onnxruntime's Python API) and against ONNX Runtime alone on ready tensors, on the same ONNX file,
the same rendered synthetic crops, the same batch size and thread count, in one run.

    pip install torch open-clip-torch onnx onnxscript onnxruntime pillow   # torch: export only
    python3 scripts/export_clip.py ViT-B-32 --out models/vit-b-32         # random weights
    cargo build --release
    python3 benches/embed_peers.py [--model models/vit-b-32] [--images 512] [--batch 32] [--threads 2]

Each contender runs in a fresh process and its time includes loading the model; the ready
tensors of the ONNX-Runtime-only run are made before its clock starts. Peak RSS is reported.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PYTHON_PIPELINE = r'''
import glob, sys, time
import numpy as np, onnxruntime as ort, open_clip
from PIL import Image
model, images, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model + "/image.onnx", opts, providers=["CPUExecutionProvider"])
transform = open_clip.image_transform(224, is_train=False)
files = sorted(glob.glob(images + "/*.png"))
n = 0
for i in range(0, len(files), batch):
    x = np.stack([transform(Image.open(f)).numpy() for f in files[i:i + batch]])
    n += sess.run(None, {"pixel_values": x})[0].shape[0]
print(n, time.perf_counter() - start)
'''

ORT_ONLY = r'''
import sys, time
import numpy as np, onnxruntime as ort
model, n, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x = np.random.default_rng(0).standard_normal((n, 3, 224, 224), dtype=np.float32)
start = time.perf_counter()
opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model + "/image.onnx", opts, providers=["CPUExecutionProvider"])
done = 0
for i in range(0, n, batch):
    done += sess.run(None, {"pixel_values": x[i:i + batch]})[0].shape[0]
print(done, time.perf_counter() - start)
'''


def timed(cmd):
    """Run `cmd`; its wall time, its own peak RSS (MiB) and stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            sys.exit(f"{cmd[0]} failed with {proc.returncode}")
        out.seek(0)
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/vit-b-32"))
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    simat = os.path.join(ROOT, "target/release/simat")
    if not os.path.isfile(os.path.join(args.model, "image.onnx")):
        sys.exit(f"no model at {args.model}: python3 scripts/export_clip.py ViT-B-32 --out {args.model}")
    work = tempfile.mkdtemp(prefix="simat-embed-bench-")
    try:
        # Rendered synthetic crops: the demo's synth and crops stages.
        pipe = os.path.join(work, "p.toml")
        with open(pipe, "w") as f:
            f.write('run_dir = "run"\n[synth]\nimage_count = 600\nseed = 11\nrender = true\n'
                    'plant_rate = 0.15\n[ingest]\n[triplets]\n[crops]\n')
        subprocess.run([simat, "-q", "run", pipe], check=True, capture_output=True)
        crops = os.path.join(work, "run/crops/crops")
        files = sorted(os.listdir(crops))[:args.images]
        if len(files) < args.images:
            sys.exit(f"only {len(files)} crops rendered")
        images = os.path.join(work, "images")
        os.makedirs(images)
        for name in files:
            shutil.copy(os.path.join(crops, name), images)
        n = len(files)
        print(f"{n} rendered crops, ViT-B-32 architecture (random weights) from {args.model}, "
              f"batch {args.batch}, {args.threads} threads")
        results = {}
        for _ in range(args.rounds):
            wall, rss, out = timed([sys.executable, "-c", ORT_ONLY, args.model, str(n),
                                    str(args.batch), str(args.threads)])
            done, secs = out.split()
            results.setdefault("onnxruntime alone, ready tensors", []).append((n / float(secs), rss))
            wall, rss, out = timed([sys.executable, "-c", PYTHON_PIPELINE, args.model, images,
                                    str(args.batch), str(args.threads)])
            done, secs = out.split()
            results.setdefault("Python: PIL + open_clip transform + onnxruntime", []).append(
                (n / float(secs), rss))
            outdir = os.path.join(work, "out")
            shutil.rmtree(outdir, ignore_errors=True)
            wall, rss, _ = timed([simat, "-q", "encode", "--model", args.model, "--images", images,
                                  "--out", outdir, "--batch-size", str(args.batch),
                                  "--threads", str(args.threads)])
            results.setdefault("simat encode (decode + preprocess + ORT)", []).append((n / wall, rss))
        base = max(r for r, _ in results["onnxruntime alone, ready tensors"])
        print(f"{'contender':<50} {'images/s':>9} {'vs ORT alone':>13} {'peak RSS':>10}")
        for name, rows in results.items():
            best = max(rows)
            print(f"{name:<50} {best[0]:9.2f} {best[0] / base:12.1%} {best[1]:8.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
