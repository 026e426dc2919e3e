#!/usr/bin/env python3
"""Export a Hugging Face `transformers` or sentence-transformers text encoder into simat's
text-model layout:

    OUT/text.onnx       input_ids, attention_mask[, token_type_ids] [N,T] i64
                        -> last_hidden_state [N,T,H][, pooler_output [N,H]]
    OUT/tokenizer.json  the model's fast tokenizer (WordPiece, Unigram or BPE), as it is
    OUT/model.toml      kind = "text", the pooling, whether to normalise, the context length,
                        the dimension, provenance

    pip install torch transformers onnx onnxscript
    python3 scripts/export_text_model.py sentence-transformers/all-MiniLM-L6-v2 --out models/minilm
    python3 scripts/export_text_model.py path/to/bert --pooling cls --out models/bert

The pooling is read from a sentence-transformers folder (`1_Pooling/config.json`: cls or mean;
a `Normalize` module sets `normalize`); `--pooling` and `--normalize` set or override it.
`pooled` takes the graph's own `pooler_output` (BERT's tanh head over CLS). After exporting,
the script runs the graph with onnxruntime when it is installed and checks every pooling against
PyTorch on a few texts (max difference 1e-4), and says so.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch


def pooling_of(source):
    """(pooling, normalize) from a sentence-transformers folder, or (None, False)."""
    modules = os.path.join(source, "modules.json")
    if not os.path.isfile(modules):
        return None, False
    pooling, normalize = None, False
    for m in json.load(open(modules)):
        kind = m.get("type", "")
        if kind.endswith("Pooling"):
            cfg = json.load(open(os.path.join(source, m["path"], "config.json")))
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens"):
                pooling = "mean"
            else:
                sys.exit(f"{source}: a pooling simat does not have ({cfg}); give --pooling")
        if kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def pool(hidden, mask, pooler, pooling):
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return pooler


class Graph(torch.nn.Module):
    """The encoder with named outputs, for the export."""

    def __init__(self, model, types):
        super().__init__()
        self.model, self.types = model, types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = dict(input_ids=input_ids, attention_mask=attention_mask)
        if self.types:
            kw["token_type_ids"] = token_type_ids
        out = self.model(**kw)
        if getattr(out, "pooler_output", None) is not None:
            return out.last_hidden_state, out.pooler_output
        return (out.last_hidden_state,)


def export(source, out, pooling=None, normalize=None, context_length=None, name=None,
           check_texts=None):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    if not tok.is_fast:
        sys.exit(f"{source}: no fast tokenizer (tokenizer.json), which simat reads")
    # The eager attention traces the attention mask into the graph; SDPA's tracing can drop it.
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    st_pooling, st_normalize = pooling_of(source) if os.path.isdir(source) else (None, False)
    pooling = pooling or st_pooling or "mean"
    normalize = st_normalize if normalize is None else normalize
    context_length = context_length or min(tok.model_max_length, 512)
    os.makedirs(out, exist_ok=True)
    # A padded batch, so that the traced graph takes the mask's path.
    probe = tok(["a probe", "a longer probe of padding"], padding=True, return_tensors="pt")
    types = "token_type_ids" in probe
    graph = Graph(model, types).eval()
    with torch.no_grad():
        outputs = graph(**probe)
    has_pooler = len(outputs) == 2
    if pooling == "pooled" and not has_pooler:
        sys.exit(f"{source}: --pooling pooled, but the model has no pooler_output")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
    out_names = ["last_hidden_state"] + (["pooler_output"] if has_pooler else [])
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "tokens"}
    if has_pooler:
        axes["pooler_output"] = {0: "batch"}
    torch.onnx.export(graph, tuple(probe[n] for n in names), os.path.join(out, "text.onnx"),
                      input_names=names, output_names=out_names, dynamic_axes=axes,
                      opset_version=17, dynamo=False)
    graph.eval()  # the export restores the wrapper's training mode, dropout and all
    tok.backend_tokenizer.save(os.path.join(out, "tokenizer.json"))
    dim = outputs[0].shape[-1]
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write("# Written by scripts/export_text_model.py.\n")
        f.write(f'kind = "text"\nname = "{name or os.path.basename(os.path.normpath(out))}"\n')
        f.write(f'pretrained = "{source}"\npooling = "{pooling}"\n')
        f.write(f"normalize = {'true' if normalize else 'false'}\n")
        f.write(f"context_length = {context_length}\nembed_dim = {dim}\n")
    texts = check_texts or ["a man sitting on a bench", "dog", "two people riding horses"]
    reference = encode(tok, graph, texts, context_length, has_pooler)
    check(out, names, reference, texts, tok, context_length)
    return tok, graph, has_pooler


def encode(tok, graph, texts, context_length, has_pooler):
    """PyTorch's token ids and every pooling of `texts`, one by one (no padding)."""
    rows = []
    for t in texts:
        enc = tok([t], truncation=True, max_length=context_length, return_tensors="pt")
        with torch.no_grad():
            outs = graph(**{k: v for k, v in enc.items()})
        hidden, pooler = outs[0], outs[1] if has_pooler else None
        row = {"text": t, "ids": enc["input_ids"][0].tolist()}
        for p in ["cls", "mean"] + (["pooled"] if has_pooler else []):
            row[p] = pool(hidden, enc["attention_mask"], pooler, p)[0].tolist()
        rows.append(row)
    return rows


def check(out, names, reference, texts, tok, context_length):
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed: the export is not checked against PyTorch")
        return
    sess = onnxruntime.InferenceSession(os.path.join(out, "text.onnx"))
    enc = tok(texts, truncation=True, max_length=context_length, padding=True, return_tensors="np")
    got = sess.run(None, {n: enc[n].astype(np.int64) for n in names})
    worst = 0.0
    for i, r in enumerate(reference):
        n = len(r["ids"])
        mask = enc["attention_mask"][i, :n]
        hidden = got[0][i, :n]
        pooled = {"cls": hidden[0], "mean": (hidden * mask[:, None]).sum(0) / mask.sum()}
        if len(got) > 1:
            pooled["pooled"] = got[1][i]
        for p, v in pooled.items():
            worst = max(worst, float(np.abs(np.array(r[p]) - v).max()))
    assert worst < 1e-4, f"onnxruntime differs from PyTorch by {worst}"
    print(f"checked against PyTorch: max difference {worst:.2e} over {len(texts)} texts")


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a.add_argument("source", help="a Hugging Face model folder (or hub name, where reachable)")
    a.add_argument("--out", required=True)
    a.add_argument("--pooling", choices=["cls", "mean", "pooled"])
    a.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None)
    a.add_argument("--context-length", type=int)
    a.add_argument("--name")
    args = a.parse_args()
    export(args.source, args.out, args.pooling, args.normalize, args.context_length, args.name)


if __name__ == "__main__":
    main()
