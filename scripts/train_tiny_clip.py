#!/usr/bin/env python3
"""Train a tiny CLIP on the demo world, so that the demo's embedding arithmetic means something.

    pip install torch open-clip-torch onnx onnxscript onnxruntime tokenizers ftfy regex pillow pyarrow
    cargo build --release
    python3 scripts/train_tiny_clip.py --out data/tiny-clip-world

1. simat itself makes the training world: `simat run` on a pipeline of synth (rendered, seed
   `--world-seed`, not the demo's seed 7), ingest, triplets and crops, under `--work`.
2. Every region crop is paired with its triplet, worded as the demo's captions are and as
   annotators vary them: SIMAT's surface forms of its relation, a few phrasings, and sometimes a
   single word (its subject or its object), since SIMAT's deltas are differences of single-word
   embeddings. Crops are preprocessed once as open_clip's eval transform does (shortest side
   bicubic to 224, centre crop) and kept as bytes; the mean/std normalisation runs per batch.
3. A CLIP with open_clip's architecture at toy width (ViT-32 at 224 px, 2 layers of width 64;
   text 2 layers of width 32; D = 64; CLIP's full BPE vocabulary) is trained with the symmetric
   contrastive loss (learned temperature, AdamW, cosine schedule) on 2 threads. Everything random
   comes from `--seed`: the same seed on the same machine gives the same weights (checked by the
   digest printed at the end).
4. The curve (loss and held-out recall@1 per epoch) goes to OUT/training.json, the weights to
   WORK/checkpoint.pt, and scripts/export_clip.py exports them into OUT with PyTorch references
   (the parity tests read them).

recall@1 is measured on the held-out 10 % of regions: each crop against the distinct triplet
captions of the held-out set, correct when its own triplet's caption is the nearest.
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import tomllib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The architecture; export_clip.py rebuilds it from this dict stored in the checkpoint.
ARCH = dict(
    embed_dim=64,
    vision_cfg=dict(layers=2, width=64, head_width=16, patch_size=32, image_size=224),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
)

PIPELINE = """# Written by scripts/train_tiny_clip.py: the world the tiny CLIP is trained on.
run_dir = "{run_dir}"

[synth]
image_count = {images}
seed = {seed}
render = true
plant_rate = 0.15

[ingest]

[triplets]

[crops]
"""


def make_world(args):
    os.makedirs(args.work, exist_ok=True)
    run_dir = os.path.abspath(os.path.join(args.work, "run"))
    pipeline = os.path.join(args.work, "world.toml")
    with open(pipeline, "w") as f:
        f.write(PIPELINE.format(run_dir=run_dir, images=args.world_images, seed=args.world_seed))
    subprocess.run([args.simat, "run", pipeline], check=True)
    return run_dir


def load_regions(run_dir):
    import pyarrow.parquet as pq
    crops = pq.read_table(os.path.join(run_dir, "crops", "crops.parquet")).to_pylist()
    regions = {r["region_id"]: r for r in
               pq.read_table(os.path.join(run_dir, "triplets", "regions.parquet")).to_pylist()}
    out = []
    for c in crops:
        if c["status"] != "ok":
            continue
        r = regions[c["region_id"]]
        out.append((os.path.join(run_dir, "crops", c["file"]), r["subj"], r["rel"], r["obj"]))
    out.sort(key=lambda x: x[0])
    return out


def article(noun):
    if noun in ("people", "grass", "water", "snow", "sand", "dirt", "hay"):
        return noun
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def caption(subj, form, obj, phrasing):
    o = obj if form.endswith(" a") else article(obj)
    phrase = f"{article(subj)} {form} {o}"
    return [phrase, f"there is {phrase}", f"a picture of {phrase}", f"{phrase} in the scene",
            phrase.capitalize() + "."][phrasing]


def load_pixels(files, size):
    """open_clip's eval transform up to ToTensor: shortest side bicubic to `size`, centre crop."""
    from PIL import Image
    import torchvision.transforms as T
    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = np.asarray(tf(Image.open(f).convert("RGB")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "tiny-clip-world"))
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "train-world"))
    ap.add_argument("--simat", default=os.path.join(ROOT, "target", "release", "simat"))
    ap.add_argument("--world-images", type=int, default=3000)
    ap.add_argument("--world-seed", type=int, default=1001)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    run_dir = make_world(args)
    regions = load_regions(run_dir)
    with open(os.path.join(ROOT, "data", "simat_vocabulary.toml"), "rb") as f:
        vocab = tomllib.load(f)
    forms = {rel: [rel] + fs for rel, fs in vocab["relations"].items()}

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(regions))
    n_val = len(regions) // 10
    val_idx, train_idx = order[:n_val], order[n_val:]
    size = ARCH["vision_cfg"]["image_size"]
    t0 = time.time()
    pixels = load_pixels([r[0] for r in regions], size)
    print(f"{len(regions)} region crops ({len(train_idx)} train, {n_val} held out) "
          f"preprocessed in {time.time() - t0:.0f} s", flush=True)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def batch_pixels(idx):
        x = torch.from_numpy(pixels[idx]).permute(0, 3, 1, 2).float() / 255.0
        return (x - mean) / std

    torch.manual_seed(args.seed)
    model = CLIP(embed_dim=ARCH["embed_dim"], vision_cfg=CLIPVisionCfg(**ARCH["vision_cfg"]),
                 text_cfg=CLIPTextCfg(**ARCH["text_cfg"]))
    tokenize = open_clip.get_tokenizer("ViT-B-32")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    steps_per_epoch = len(train_idx) // args.batch
    total = steps_per_epoch * args.epochs
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    val_triplets = sorted({regions[i][1:] for i in val_idx})
    val_text = tokenize([caption(s, r, o, 0) for s, r, o in val_triplets])
    val_target = torch.tensor([val_triplets.index(regions[i][1:]) for i in val_idx])

    def recall_at_1():
        model.eval()
        with torch.no_grad():
            img = torch.cat([model.encode_image(batch_pixels(val_idx[k:k + 512]), normalize=True)
                             for k in range(0, len(val_idx), 512)])
            txt = model.encode_text(val_text, normalize=True)
        model.train()
        return float(((img @ txt.T).argmax(1) == val_target).float().mean())

    curve = []
    print(f"epoch 0: held-out recall@1 {recall_at_1():.3f} ({len(val_triplets)} triplets)", flush=True)
    for epoch in range(1, args.epochs + 1):
        perm = rng.permutation(train_idx)
        losses = []
        for step in range(steps_per_epoch):
            idx = np.sort(perm[step * args.batch:(step + 1) * args.batch])
            texts = []
            for i in idx:
                _, s, rel, o = regions[i]
                u = rng.random()
                if u < 0.1:
                    texts.append(s)
                elif u < 0.2:
                    texts.append(o)
                else:
                    f = forms[rel][rng.integers(len(forms[rel]))]
                    texts.append(caption(s, f, o, int(rng.integers(5))))
            img = model.encode_image(batch_pixels(idx), normalize=True)
            txt = model.encode_text(tokenize(texts), normalize=True)
            logits = model.logit_scale.exp() * img @ txt.T
            # Crops of one triplet (or one word) are all positives of each other's texts.
            same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
            target = same / same.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
        r1 = recall_at_1()
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "recall_at_1": r1,
                      "seconds": round(time.time() - t_start, 1)})
        print(f"epoch {epoch}: loss {np.mean(losses):.3f}, held-out recall@1 {r1:.3f}, "
              f"{time.time() - t_start:.0f} s", flush=True)

    digest = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().numpy().tobytes())
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.work, "checkpoint.pt")
    torch.save({"arch": ARCH, "state_dict": model.state_dict()}, ckpt)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"world_images": args.world_images, "world_seed": args.world_seed,
                   "seed": args.seed, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
                   "threads": args.threads, "regions": len(regions), "held_out": int(n_val),
                   "weights_sha256": digest.hexdigest(),
                   "wall_seconds": round(time.time() - t_start, 1), "curve": curve}, f, indent=1)
    print(f"weights sha256 {digest.hexdigest()}, {time.time() - t_start:.0f} s in all", flush=True)
    if not args.no_export:
        subprocess.run([sys.executable, os.path.join(HERE, "export_clip.py"), "tiny",
                        "--checkpoint", ckpt, "--out", args.out, "--reference"], check=True)


if __name__ == "__main__":
    main()
