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
    python3 scripts/export_clip.py tiny --hf --out data/tiny-clip-hf                 # the same, as HF
    python3 scripts/export_clip.py tiny --checkpoint runs/train-world/checkpoint.pt \
        --out data/tiny-clip-world --reference        # the demo's model (scripts/train_tiny_clip.py)

With --hf the model is written as a Hugging Face `transformers` CLIPModel would be exported
(optimum's layout and names): its weights are copied into a `CLIPModel` (which the script checks
against open_clip's outputs), then `text_model.onnx` (input_ids, attention_mask -> text_embeds,
raw, as CLIPTextModelWithProjection), `vision_model.onnx` (pixel_values -> image_embeds, raw),
the combined `model.onnx` (input_ids, pixel_values, attention_mask -> logits_per_image,
logits_per_text, text_embeds, image_embeds, normalised as CLIPModel returns them),
`tokenizer.json` from `CLIPTokenizerFast` (<|startoftext|>, <|endoftext|>, padded with
<|endoftext|>) and `preprocessor_config.json`; no model.toml. It needs `transformers` too.
Models whose open_clip tokenizer is not CLIP's BPE (SigLIP, multilingual models) are refused:
simat's tokenizer.json would not be theirs.

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




def hf_clip(torch, model):
    """A transformers CLIPModel holding `model`'s (an open_clip CLIP) weights."""
    from transformers import CLIPConfig, CLIPModel
    sd = model.state_dict()
    t_width = sd["token_embedding.weight"].shape[1]
    v_width = sd["visual.class_embedding"].shape[0]
    t_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    v_layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    embed_dim = sd["text_projection"].shape[1]
    patch = sd["visual.conv1.weight"].shape[2]
    grid = int((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    act = "quick_gelu" if "QuickGELU" in type(model.transformer.resblocks[0].mlp.gelu).__name__ else "gelu"
    config = CLIPConfig(
        text_config=dict(vocab_size=sd["token_embedding.weight"].shape[0], hidden_size=t_width,
                         intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                         num_hidden_layers=t_layers, num_attention_heads=model.transformer.resblocks[0].attn.num_heads,
                         max_position_embeddings=sd["positional_embedding"].shape[0], hidden_act=act,
                         layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=v_width,
                           intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           num_hidden_layers=v_layers, num_attention_heads=model.visual.transformer.resblocks[0].attn.num_heads,
                           image_size=patch * grid, patch_size=patch, hidden_act=act, layer_norm_eps=1e-5),
        projection_dim=embed_dim)
    hf = CLIPModel(config).eval()
    new = {}

    def layers(prefix_oc, prefix_hf, n):
        for i in range(n):
            o, h = f"{prefix_oc}.{i}", f"{prefix_hf}.{i}"
            q, k, v = sd[f"{o}.attn.in_proj_weight"].chunk(3)
            qb, kb, vb = sd[f"{o}.attn.in_proj_bias"].chunk(3)
            new.update({
                f"{h}.self_attn.q_proj.weight": q, f"{h}.self_attn.q_proj.bias": qb,
                f"{h}.self_attn.k_proj.weight": k, f"{h}.self_attn.k_proj.bias": kb,
                f"{h}.self_attn.v_proj.weight": v, f"{h}.self_attn.v_proj.bias": vb,
                f"{h}.self_attn.out_proj.weight": sd[f"{o}.attn.out_proj.weight"],
                f"{h}.self_attn.out_proj.bias": sd[f"{o}.attn.out_proj.bias"],
                f"{h}.layer_norm1.weight": sd[f"{o}.ln_1.weight"], f"{h}.layer_norm1.bias": sd[f"{o}.ln_1.bias"],
                f"{h}.layer_norm2.weight": sd[f"{o}.ln_2.weight"], f"{h}.layer_norm2.bias": sd[f"{o}.ln_2.bias"],
                f"{h}.mlp.fc1.weight": sd[f"{o}.mlp.c_fc.weight"], f"{h}.mlp.fc1.bias": sd[f"{o}.mlp.c_fc.bias"],
                f"{h}.mlp.fc2.weight": sd[f"{o}.mlp.c_proj.weight"], f"{h}.mlp.fc2.bias": sd[f"{o}.mlp.c_proj.bias"],
            })

    layers("transformer.resblocks", "text_model.encoder.layers", t_layers)
    layers("visual.transformer.resblocks", "vision_model.encoder.layers", v_layers)
    new.update({
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T,
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T,
        "logit_scale": sd["logit_scale"],
    })
    missing, unexpected = hf.load_state_dict(new, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        sys.exit(f"open_clip -> transformers: missing {missing}, unexpected {unexpected}")
    return hf


def hf_tokenizer(out_dir):
    """CLIPTokenizerFast over open_clip's BPE vocabulary, saved as tokenizer.json."""
    import gzip
    import tempfile
    from transformers import CLIPTokenizerFast
    module, bpe_path = build_clip_tokenizer.open_clip_tokenizer_module()
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    alphabet = list(module.bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f)
        with open(os.path.join(tmp, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizerFast(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                                model_max_length=77)
    tok.backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    ref = module.SimpleTokenizer()
    for text in REFERENCE_TEXTS:
        got = tok(text, add_special_tokens=False)["input_ids"]
        if got != ref.encode(text):
            sys.exit(f"CLIPTokenizerFast disagrees with open_clip on {text!r}")
    return tok


def export_hf(torch, open_clip, model, args, size, mean, std, context_length):
    hf = hf_clip(torch, model)
    os.makedirs(args.out, exist_ok=True)
    tok = hf_tokenizer(args.out)
    texts = REFERENCE_TEXTS[:3]
    enc = tok(texts, padding="max_length", max_length=context_length, truncation=True,
              return_tensors="pt")
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want_t = model.encode_text(open_clip.tokenize(texts, context_length=context_length))
        want_i = model.encode_image(pixels)
        got_t = hf.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        got_i = hf.get_image_features(pixel_values=pixels)
    got_t = getattr(got_t, "pooler_output", got_t) if not torch.is_tensor(got_t) else got_t
    got_i = getattr(got_i, "pooler_output", got_i) if not torch.is_tensor(got_i) else got_i
    err = max(float((want_t - got_t).abs().max()), float((want_i - got_i).abs().max()))
    if err > 1e-4:
        sys.exit(f"the transformers CLIPModel differs from open_clip by {err}")

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            t = self.m.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            return t if torch.is_tensor(t) else t.pooler_output

    class Vision(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            v = self.m.get_image_features(pixel_values=pixel_values)
            return v if torch.is_tensor(v) else v.pooler_output

    class Combined(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, pixel_values, attention_mask):
            o = self.m(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
            return o.logits_per_image, o.logits_per_text, o.text_embeds, o.image_embeds

    ids, mask = enc["input_ids"], enc["attention_mask"]
    torch.onnx.export(Text(hf).eval(), (ids, mask), os.path.join(args.out, "text_model.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                    "text_embeds": {0: "batch"}}, opset_version=17, dynamo=False)
    torch.onnx.export(Vision(hf).eval(), (pixels,), os.path.join(args.out, "vision_model.onnx"),
                      input_names=["pixel_values"], output_names=["image_embeds"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                      opset_version=17, dynamo=False)
    torch.onnx.export(
        Combined(hf).eval(), (ids, pixels, mask), os.path.join(args.out, "model.onnx"),
        input_names=["input_ids", "pixel_values", "attention_mask"],
        output_names=["logits_per_image", "logits_per_text", "text_embeds", "image_embeds"],
        dynamic_axes={"input_ids": {0: "text_batch"}, "attention_mask": {0: "text_batch"},
                      "pixel_values": {0: "image_batch"}, "text_embeds": {0: "text_batch"},
                      "image_embeds": {0: "image_batch"},
                      "logits_per_image": {0: "image_batch", 1: "text_batch"},
                      "logits_per_text": {0: "text_batch", 1: "image_batch"}},
        opset_version=17, dynamo=False)
    with open(os.path.join(args.out, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": {"height": size, "width": size}, "do_center_crop": True,
                   "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
                   "do_resize": True, "image_mean": mean, "image_std": std,
                   "image_processor_type": "CLIPImageProcessor", "resample": 3,
                   "rescale_factor": 1 / 255, "size": {"shortest_edge": size}}, f, indent=2)

    import onnxruntime as ort
    feed_ids, feed_mask = ids.numpy(), mask.numpy()
    got_t = ort.InferenceSession(os.path.join(args.out, "text_model.onnx")).run(
        None, {"input_ids": feed_ids, "attention_mask": feed_mask})[0]
    got_i = ort.InferenceSession(os.path.join(args.out, "vision_model.onnx")).run(
        None, {"pixel_values": pixels.numpy()})[0]
    comb = ort.InferenceSession(os.path.join(args.out, "model.onnx")).run(
        ["text_embeds", "image_embeds"],
        {"input_ids": feed_ids, "attention_mask": feed_mask, "pixel_values": pixels.numpy()})
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    err = max(float(np.abs(got_t - want_t.numpy()).max()), float(np.abs(got_i - want_i.numpy()).max()),
              float(np.abs(comb[0] - unit(want_t.numpy())).max()),
              float(np.abs(comb[1] - unit(want_i.numpy())).max()))
    if err > 1e-4:
        sys.exit(f"ONNX Runtime differs from open_clip by {err}")
    print(f"{args.out}: {args.model} as Hugging Face CLIP, ONNX Runtime equals open_clip within {err:.1e}")


def check_tokenizer(open_clip, name):
    """simat's tokenizer.json is CLIP's BPE: refuse models whose tokenizer is something else."""
    # As open_clip.get_tokenizer decides, without building (or downloading) the tokenizer.
    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    other = text_cfg.get("hf_tokenizer_name") or ("siglip" if "siglip" in name.lower() else None)
    if other:
        sys.exit(f"{name}: its tokenizer is {other}, not CLIP's BPE (open_clip's SimpleTokenizer); "
                 f"simat's tokenizer.json would not be its tokenizer, so it is not exported")


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
    ap.add_argument("--checkpoint", default=None,
                    help="with `tiny`: a checkpoint of scripts/train_tiny_clip.py (its architecture "
                         "and trained weights) instead of random weights")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference", action="store_true",
                    help="also write PyTorch reference outputs under OUT/reference/")
    ap.add_argument("--hf", action="store_true",
                    help="write the Hugging Face layout (transformers CLIPModel, optimum names)")
    args = ap.parse_args()

    import torch
    import open_clip
    from PIL import Image

    if args.model == "tiny" and args.checkpoint:
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        arch = ckpt["arch"]
        model = CLIP(embed_dim=arch["embed_dim"], vision_cfg=CLIPVisionCfg(**arch["vision_cfg"]),
                     text_cfg=CLIPTextCfg(**arch["text_cfg"]))
        model.load_state_dict(ckpt["state_dict"])
        args.model = "tiny-world"
        args.pretrained = "trained on the demo world by scripts/train_tiny_clip.py"
    elif args.model == "tiny":
        model = tiny_model(torch, open_clip)
    else:
        check_tokenizer(open_clip, args.model)
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
    if args.hf:
        return export_hf(torch, open_clip, model, args, size, mean, std, context_length)

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
