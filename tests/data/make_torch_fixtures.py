#!/usr/bin/env python3
"""Small files written by real `torch.save`, for the tests of simat's PyTorch reader
(src/io/torch.rs). Needs torch; run from the repository root:

    python3 tests/data/make_torch_fixtures.py

writes tests/data/torch/*.pt and expected.json (every tensor's values, as nested lists).
The shapes follow the SIMAT release: a dict region id -> row view of one encoded batch
(encode.py), a list of (word, f16 tensor) pairs, a 2-D similarity matrix, and linear heads as
pickled modules and as a state dict.
"""
import json
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch")


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(3)
    expected = {}

    # encode.py: dict(zip(region_ids, img_enc)) -- every value a row view of one storage.
    batch = torch.randn(4, 6, generator=g)
    region_ids = [61, 4, 2378586, 30]
    torch.save(dict(zip(region_ids, batch)), os.path.join(OUT, "images_by_region.pt"))
    expected["images_by_region"] = {"keys": region_ids, "values": batch.tolist()}

    # simat_words_clip.ptd: a list of (word, f16 tensor) pairs, views of one storage.
    words = ["dog", "cat", "bench"]
    vecs = torch.randn(3, 6, generator=g).half()
    torch.save(list(zip(words, vecs)), os.path.join(OUT, "words.ptd"))
    expected["words"] = {"keys": words, "values": vecs.float().tolist()}

    # oscar_similarity_matrix.pt: one 2-D tensor; also a transposed (strided) one, in f64 and
    # bf16, and one saved with pickle protocol 4.
    m = torch.rand(3, 5, generator=g)
    torch.save(m, os.path.join(OUT, "matrix.pt"))
    torch.save(m.double().t(), os.path.join(OUT, "matrix_t_f64.pt"))
    torch.save(m.bfloat16(), os.path.join(OUT, "matrix_bf16.pt"))
    torch.save(m, os.path.join(OUT, "matrix_protocol4.pt"), pickle_protocol=4)
    expected["matrix"] = m.tolist()
    expected["matrix_t"] = m.double().t().tolist()
    expected["matrix_bf16"] = m.bfloat16().float().tolist()

    # head_clip_t=*.pt: {'img_head': nn.Linear, 'txt_head': nn.Linear}; and as a state dict.
    heads = torch.nn.ModuleDict({"img_head": torch.nn.Linear(6, 4), "txt_head": torch.nn.Linear(6, 4)})
    torch.save({"img_head": heads.img_head, "txt_head": heads.txt_head},
               os.path.join(OUT, "heads_modules.pt"))
    torch.save(heads.state_dict(), os.path.join(OUT, "heads_state_dict.pt"))
    expected["heads"] = {k: v.tolist() for k, v in heads.state_dict().items()}

    # Not floats: refused with a sentence.
    torch.save(torch.arange(6).reshape(2, 3), os.path.join(OUT, "ints.pt"))

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(f"wrote {OUT} with torch {torch.__version__}")


if __name__ == "__main__":
    main()
