#!/usr/bin/env python3
"""Build CLIP's tokenizer as a Hugging Face `tokenizer.json`, from the BPE vocabulary that the
open-clip-torch wheel ships (`bpe_simple_vocab_16e6.txt.gz`), with no network access beyond PyPI.

    pip install --no-deps open-clip-torch && pip install tokenizers ftfy regex
    python3 scripts/build_clip_tokenizer.py OUT/tokenizer.json [--reference tests/data/clip_tokens.json]

The tokenizer reproduces open_clip's SimpleTokenizer ("lower" cleaning): NFC, white space
collapsed and stripped, lower case; CLIP's pre-tokenisation regex; byte-level BPE with `</w>`
word ends. Not reproduced: ftfy's mojibake repair and HTML-entity unescaping, which open_clip
applies first (captions rarely need them). With --reference, it also writes the token ids (77
per text: <start_of_text>, tokens, <end_of_text>, zero padding; cut to 77 keeping
<end_of_text> last, as open_clip's `tokenize` does) that open_clip's own SimpleTokenizer gives
for a set of test strings, after checking that the built tokenizer agrees on all of them.
"""
import argparse
import gzip
import importlib.util
import json
import os
import sys
import types

TEST_STRINGS = [
    "A cat sitting on a bench.",
    "A  DOG   laying in the grass!",
    "People waiting at a bus stop",
    "A zebra's 3 stripes, 42 and 7.5%",
    "naïve café — déjà vu",
    "emoji 🐱🐶 ok",
    "it's we've they'll I'd",
    "tennis-racket / skate_board",
    "  leading and trailing  ",
    "日本語のテキスト",
    "a giraffe licking a leaf " * 20,
    "",
]
CONTEXT_LENGTH = 77


def open_clip_tokenizer_module():
    """open_clip's tokenizer.py, imported from the installed package's folder. It imports torch
    only to type its tensor output; a stand-in is used when torch is not installed."""
    spec = importlib.util.find_spec("open_clip")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else None
    if folder is None:
        sys.exit("open_clip is not installed: pip install --no-deps open-clip-torch")
    try:
        import torch  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("torch")
        stand_in.LongTensor = stand_in.Tensor = object
        sys.modules["torch"] = stand_in
    path = os.path.join(folder, "tokenizer.py")
    mod_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module, os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")


def build(bpe_path, bytes_to_unicode):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab += ["<start_of_text>", "<end_of_text>"]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                               end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
        normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d"
                                   r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<start_of_text>", "<end_of_text>"])
    return tok


def padded(ids, sot, eot):
    tokens = [sot] + ids + [eot]
    if len(tokens) > CONTEXT_LENGTH:
        tokens = tokens[:CONTEXT_LENGTH]
        tokens[-1] = eot
    return tokens + [0] * (CONTEXT_LENGTH - len(tokens))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reference")
    args = ap.parse_args()
    module, bpe_path = open_clip_tokenizer_module()
    tok = build(bpe_path, module.bytes_to_unicode)
    ref = module.SimpleTokenizer()
    rows = []
    for text in TEST_STRINGS:
        want = ref.encode(text)
        got = tok.encode(text).ids
        if want != got:
            sys.exit(f"the built tokenizer disagrees with open_clip on {text!r}:\n{want}\n{got}")
        rows.append({"text": text, "ids": padded(want, ref.sot_token_id, ref.eot_token_id)})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tok.save(args.out)
    if args.reference:
        with open(args.reference, "w") as f:
            json.dump(rows, f, ensure_ascii=False, indent=1)
    print(f"{args.out}: agrees with open_clip on {len(rows)} strings")


if __name__ == "__main__":
    main()
