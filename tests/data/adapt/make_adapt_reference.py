#!/usr/bin/env python3
"""PyTorch reference of `simat adapt` (tests/adapt.rs): the method of the release's
adaptation.py as intended (text head on text features), written plainly in torch. Needs torch;
run from the repository root:

    python3 tests/data/adapt/make_adapt_reference.py

writes tests/data/adapt/{x,y}.npy (seeded raw pairs, 300 × 16) and reference.json: the settings,
the loss and the gradient norm (before clipping) of every step, and the final heads. The run has
a partial last batch (300 = 128 + 128 + 44), clipping active, and one StepLR drop.

It also writes the fixture of heads of unequal shapes: rect_{x,y}.npy (300 × 64 image and
300 × 96 text embeddings, as from two encoders) and rect_reference.json, heads mapping both to
D = 64 that start from simat's seeded sign projections (`--init projection`, replayed here from
their definition in src/stages/adapt.rs).
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.dirname(os.path.abspath(__file__))
SETTINGS = dict(n=300, d=16, tau=0.1, lr=0.01, epochs=4, batch_size=128, lr_step=2, lr_gamma=0.1,
                clip_grad_norm=2.9)
RECT = dict(n=300, d_img=64, d_txt=96, dim=64, seed=5, tau=0.1, lr=0.01, epochs=4, batch_size=128,
            lr_step=2, lr_gamma=0.1, clip_grad_norm=1.5)


M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def projection(d_out, d_in, seed, head):
    """simat's `projection`: entry k is -1/sqrt(d_out) when the top bit of output k of
    SplitMix64 whose state is output `head` of SplitMix64 seeded with `seed` is set."""
    state = mix((seed + head * GAMMA + GAMMA) & M64)
    s = np.float32(1) / np.sqrt(np.float32(d_out))
    signs = [mix((state + (k + 1) * GAMMA) & M64) >> 63 for k in range(d_out * d_in)]
    return np.where(np.array(signs) == 1, -s, s).astype(np.float32).reshape(d_out, d_in)


def train(x, y, s, img_w, txt_w):
    """The heads from weights `img_w`, `txt_w` and zero biases, trained as simat trains them."""
    heads = torch.nn.ModuleDict({"img_head": torch.nn.Linear(x.shape[1], s["dim"]),
                                 "txt_head": torch.nn.Linear(y.shape[1], s["dim"])})
    with torch.no_grad():
        heads["img_head"].weight.copy_(torch.from_numpy(img_w))
        heads["txt_head"].weight.copy_(torch.from_numpy(txt_w))
        for h in heads.values():
            h.bias.zero_()
    opt = torch.optim.Adam(heads.parameters(), lr=s["lr"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=s["lr_step"], gamma=s["lr_gamma"])
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    steps, clipped = [], 0
    for epoch in range(s["epochs"]):
        for start in range(0, s["n"], s["batch_size"]):  # --no-shuffle, the last batch kept
            xb, yb = X[start:start + s["batch_size"]], Y[start:start + s["batch_size"]]
            u = F.normalize(heads["img_head"](xb), dim=-1)
            v = F.normalize(heads["txt_head"](yb), dim=-1)
            logits = u @ v.T / s["tau"]
            labels = torch.arange(len(xb))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(heads.parameters(), s["clip_grad_norm"])
            clipped += int(norm > s["clip_grad_norm"])
            opt.step()
            steps.append({"epoch": epoch, "loss": loss.item(), "grad_norm": norm.item(),
                          "lr": opt.param_groups[0]["lr"]})
        sched.step()
    assert 0 < clipped < len(steps), "clipping should act on some steps and not on others"
    ref = {"settings": s, "torch": torch.__version__, "steps": steps,
           "heads": {k: v.detach().numpy().tolist() for k, v in heads.state_dict().items()}}
    return ref, clipped


def save(name, ref, clipped):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(ref, f)
    steps = ref["steps"]
    print(f"{name}: {len(steps)} steps, clipped {clipped}, final loss {steps[-1]['loss']:.6f}")


def pairs(seed, n, d_img, d_txt, prefix):
    """Seeded raw pairs: texts a random linear map of the images plus noise, saved as
    {prefix}x.npy and {prefix}y.npy."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d_img)) * 3).astype(np.float32)
    mix = rng.standard_normal((d_img, d_txt)).astype(np.float32) / d_img ** 0.5
    y = (x @ mix + rng.standard_normal((n, d_txt)) * 2).astype(np.float32)
    np.save(os.path.join(OUT, f"{prefix}x.npy"), x)
    np.save(os.path.join(OUT, f"{prefix}y.npy"), y)
    return x, y


def main():
    s = dict(SETTINGS, dim=SETTINGS["d"])
    x, y = pairs(11, s["n"], s["d"], s["d"], "")
    eye = np.eye(s["d"], dtype=np.float32)  # --init identity
    save("reference.json", *train(x, y, s, eye, eye))

    # Unequal shapes: a text encoder of another dimension, both mapped to D = 64.
    r = RECT
    x, y = pairs(12, r["n"], r["d_img"], r["d_txt"], "rect_")
    img_w = projection(r["dim"], r["d_img"], r["seed"], 0)
    txt_w = projection(r["dim"], r["d_txt"], r["seed"], 1)
    save("rect_reference.json", *train(x, y, r, img_w, txt_w))


if __name__ == "__main__":
    main()
