#!/usr/bin/env python3
"""Preprocessing per image, one thread: PIL open + open_clip's image_transform(224) (what a
Python CLIP pipeline does before inference) on a folder of PNGs, for comparison with
`cargo bench --bench preprocess` on the same folder:

    SIMAT_BENCH_IMAGES=DIR cargo bench --bench preprocess
    python3 benches/preprocess_peers.py DIR
"""
import glob
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
torch.set_num_threads(1)
import open_clip  # noqa: E402
from PIL import Image  # noqa: E402

folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data/tiny-clip/reference")
files = sorted(glob.glob(os.path.join(folder, "*.png")))
transform = open_clip.image_transform(224, is_train=False)
for f in files:  # warm-up
    transform(Image.open(f))
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    for f in files:
        transform(Image.open(f)).numpy()
    best = min(best, time.perf_counter() - start)
print(f"PIL + open_clip transform: {len(files)} PNGs in {best * 1000:.1f} ms "
      f"({best / len(files) * 1e3:.3f} ms per image, best of 5)")
