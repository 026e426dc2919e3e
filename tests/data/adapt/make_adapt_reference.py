#!/usr/bin/env python3
"""PyTorch reference of `simat adapt` (tests/adapt.rs): the method of the release's
adaptation.py as intended (text head on text features), written plainly in torch. Needs torch;
run from the repository root:

    python3 tests/data/adapt/make_adapt_reference.py

writes tests/data/adapt/{x,y}.npy (seeded raw pairs, 300 × 16) and reference.json: the settings,
the loss and the gradient norm (before clipping) of every step, and the final heads. The run has
a partial last batch (300 = 128 + 128 + 44), clipping active, and one StepLR drop.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.dirname(os.path.abspath(__file__))
SETTINGS = dict(n=300, d=16, tau=0.1, lr=0.01, epochs=4, batch_size=128, lr_step=2, lr_gamma=0.1,
                clip_grad_norm=2.9)


def main():
    s = SETTINGS
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((s["n"], s["d"])) * 3).astype(np.float32)
    mix = rng.standard_normal((s["d"], s["d"])).astype(np.float32) / s["d"] ** 0.5
    y = (x @ mix + rng.standard_normal((s["n"], s["d"])) * 2).astype(np.float32)
    np.save(os.path.join(OUT, "x.npy"), x)
    np.save(os.path.join(OUT, "y.npy"), y)

    heads = torch.nn.ModuleDict({"img_head": torch.nn.Linear(s["d"], s["d"]),
                                 "txt_head": torch.nn.Linear(s["d"], s["d"])})
    with torch.no_grad():  # --init identity
        for h in heads.values():
            h.weight.copy_(torch.eye(s["d"]))
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
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"{len(steps)} steps, clipped {clipped}, final loss {steps[-1]['loss']:.6f}")


if __name__ == "__main__":
    main()
