#!/usr/bin/env python3
"""Export an open_clip model into simat's model layout:

    OUT/image.onnx      pixel_values [N,3,H,W] f32 -> embeds [N,D] (not normalised)
    OUT/text.onnx       input_ids [N,77] i64      -> embeds [N,D] (not normalised)
    OUT/tokenizer.json  CLIP's BPE as a Hugging Face tokenizer (scripts/build_clip_tokenizer.py)
    OUT/model.toml      image size, mean, std, context length, embedding dimension, provenance

    pip install torch open-clip-torch onnx onnxscript tokenizers ftfy regex pillow
    python3 scripts/export_clip.py ViT-B-32 --out models/vit-b-32                 # random weights
    python3 scripts/export_clip.py ViT-B-32 --pretrained open_clip_model.safetensors --out ...
    python3 scripts/export_clip.py tiny --out data/tiny-clip --reference             # the test model

`tiny` is a CLIP with open_clip's architecture at toy width (ViT patch 32 at 224 px, 2 layers of
width 32; text 2 layers of width 16; D = 32; CLIP's full vocabulary), random weights from a fixed
seed, a few MB: it is what the tests and the demo run. With --reference, the script also writes
OUT/reference/: a few PNG images, open_clip's preprocessing of them (pixels.npy), and PyTorch's
image and text embeddings and token ids (reference.json), which the tests compare simat against.
No network is used: weights are random unless --pretrained names a local file (or a tag whose
weights are already in the Hugging Face / open_clip cache).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_clip_tokenizer  # noqa: E402

REFERENCE_TEXTS = [
    "A cat sitting on a bench.",
    "a dog on a bench",
    "People waiting at a bus stop",
    "cat",
    "dog",
    "a giraffe licking a leaf " * 20,
]
# (width, height, mode, format) of the reference images: smaller than 224 (upscaling), larger
# than 224 (antialiased downscaling), an odd margin (centre-crop rounding), grey, and a JPEG
# (Pillow's default 4:2:0 chroma subsampling, as Visual Genome's images).
REFERENCE_IMAGES = [(37, 81, "RGB", "png"), (500, 333, "RGB", "png"), (225, 301, "RGB", "png"),
                    (120, 90, "L", "png"), (333, 250, "RGB", "jpg")]


def tiny_model(torch, open_clip):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=32, image_size=224),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=16, heads=2, layers=2),
    )
    # open_clip initialises the projections small; spread them so that embeddings differ.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.5 / p.shape[-1] ** 0.5)
    return model




def export(torch, module, example, input_name, path):
    dims = {input_name: {0: "batch"}, "embeds": {0: "batch"}}
    torch.onnx.export(module, (example,), path, input_names=[input_name], output_names=["embeds"],
                      dynamic_axes=dims, opset_version=17, dynamo=False)


def synthetic_image(w, h, mode, seed):
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                     (x + y) * 255 // max(w + h - 2, 1)], axis=-1)
    noise = rng.integers(-12, 13, size=base.shape)
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    return image.convert(mode)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an open_clip model name (open_clip.list_models()) or `tiny`")
    ap.add_argument("--pretrained", default=None,
                    help="a checkpoint file or an open_clip pretrained tag (from the local cache)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference", action="store_true",
                    help="also write PyTorch reference outputs under OUT/reference/")
    args = ap.parse_args()

    import torch
    import open_clip
    from PIL import Image

    if args.model == "tiny":
        model = tiny_model(torch, open_clip)
    else:
        torch.manual_seed(0)
        model = open_clip.create_model(args.model, pretrained=args.pretrained)
    model.eval()
    pre_cfg = open_clip.get_model_preprocess_cfg(model)
    size = pre_cfg.get("size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    mean = list(pre_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = list(pre_cfg.get("std", open_clip.OPENAI_DATASET_STD))
    if pre_cfg.get("resize_mode", "shortest") != "shortest" or \
            pre_cfg.get("interpolation", "bicubic") != "bicubic":
        sys.exit(f"{args.model}: simat's preprocessing is shortest-side bicubic, the model wants "
                 f"{pre_cfg}")
    context_length = model.context_length
    preprocess = open_clip.image_transform(size, is_train=False, mean=mean, std=std)

    class ImageTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m.encode_image(pixel_values)

    class TextTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m.encode_text(input_ids)

    os.makedirs(args.out, exist_ok=True)
    image_tower, text_tower = ImageTower(model).eval(), TextTower(model).eval()
    # Exported with gradients on: under no_grad, nn.MultiheadAttention takes a fused fast path
    # that has no ONNX form.
    pixels = torch.randn(2, 3, size, size)
    ids = torch.zeros(2, context_length, dtype=torch.long)
    ids[:, 0], ids[:, 1], ids[:, 2] = 49406, 320, 49407
    export(torch, image_tower, pixels, "pixel_values", os.path.join(args.out, "image.onnx"))
    export(torch, text_tower, ids, "input_ids", os.path.join(args.out, "text.onnx"))
    with torch.no_grad():
        dim = int(image_tower(pixels).shape[1])

    module, bpe_path = build_clip_tokenizer.open_clip_tokenizer_module()
    tok = build_clip_tokenizer.build(bpe_path, module.bytes_to_unicode)
    ref_tok = module.SimpleTokenizer()
    for text in build_clip_tokenizer.TEST_STRINGS + REFERENCE_TEXTS:
        if tok.encode(text).ids != ref_tok.encode(text):
            sys.exit(f"the built tokenizer disagrees with open_clip on {text!r}")
    tok.save(os.path.join(args.out, "tokenizer.json"))

    with open(os.path.join(args.out, "model.toml"), "w") as f:
        f.write("# Written by scripts/export_clip.py.\n")
        f.write(f"name = {json.dumps(args.model)}\n")
        f.write(f"pretrained = {json.dumps(args.pretrained or 'random weights')}\n")
        f.write(f"image_size = {size}\n")
        f.write(f"mean = {json.dumps(mean)}\n")
        f.write(f"std = {json.dumps(std)}\n")
        f.write(f"context_length = {context_length}\n")
        f.write(f"embed_dim = {dim}\n")

    if args.reference:
        ref_dir = os.path.join(args.out, "reference")
        os.makedirs(ref_dir, exist_ok=True)
        tensors, images = [], []
        for i, (w, h, mode, fmt) in enumerate(REFERENCE_IMAGES):
            name = f"image_{i}_{w}x{h}_{mode}.{fmt}"
            synthetic_image(w, h, mode, i).save(os.path.join(ref_dir, name), quality=90)
            # Read back from the file, as a user's pipeline would.
            tensors.append(preprocess(Image.open(os.path.join(ref_dir, name))))
            images.append(name)
        # Stored as f16 (half the size; within 2e-3 of open_clip's values), and the reference
        # embeddings are computed from exactly those stored values.
        pixels16 = torch.stack(tensors).numpy().astype(np.float16)
        np.save(os.path.join(ref_dir, "pixels.npy"), pixels16)
        pixels = torch.from_numpy(pixels16.astype(np.float32))
        tokens = open_clip.tokenize(REFERENCE_TEXTS, context_length=context_length)
        with torch.no_grad():
            image_embeds = image_tower(pixels).numpy()
            text_embeds = text_tower(tokens).numpy()
        reference = {
            "images": [{"file": n, "embedding": e.tolist()} for n, e in zip(images, image_embeds)],
            "texts": [{"text": t, "ids": i.tolist(), "embedding": e.tolist()}
                      for t, i, e in zip(REFERENCE_TEXTS, tokens.numpy(), text_embeds)],
        }
        with open(os.path.join(ref_dir, "reference.json"), "w") as f:
            json.dump(reference, f, indent=1)

    # Check the exported graphs against PyTorch before calling the export done.
    import onnxruntime as ort
    with torch.no_grad():
        pixels = torch.randn(3, 3, size, size)
        tokens = open_clip.tokenize(REFERENCE_TEXTS[:3], context_length=context_length)
        want_i, want_t = image_tower(pixels).numpy(), text_tower(tokens).numpy()
    got_i = ort.InferenceSession(os.path.join(args.out, "image.onnx")).run(
        None, {"pixel_values": pixels.numpy()})[0]
    got_t = ort.InferenceSession(os.path.join(args.out, "text.onnx")).run(
        None, {"input_ids": tokens.numpy()})[0]
    err = max(float(np.abs(got_i - want_i).max()), float(np.abs(got_t - want_t).max()))
    if err > 1e-4:
        sys.exit(f"ONNX Runtime differs from PyTorch by {err}")
    print(f"{args.out}: {args.model}, D = {dim}, {size} px; ONNX Runtime equals PyTorch within "
          f"{err:.1e}")


if __name__ == "__main__":
    main()
