#!/usr/bin/env python3
"""Make data/tiny-bert: a BERT-style sentence encoder at toy width for the tests and the demo.

The vocabulary is a real WordPiece vocabulary, trained with Hugging Face `tokenizers` on the
captions of the SIMAT release (lower-cased, BERT's normaliser and pre-tokeniser, [CLS] ... [SEP]).
The weights are random from a fixed seed (`transformers.BertModel`: 2 layers of width 32, 2 heads).
The model goes through scripts/export_text_model.py (mean pooling, not normalised, context 32),
and data/tiny-bert/reference/reference.json holds PyTorch's token ids and its CLS, mean and
pooled embeddings of a few texts (a caption, words, a word outside the vocabulary, a text longer
than the context), which tests/model.rs checks simat against.

    pip install torch transformers onnx onnxscript onnxruntime
    python3 scripts/make_tiny_bert.py [--release ../shared/data/simat-release]

It also writes reference/{unigram,bpe}_tokenizer.json and other_tokenizers.json (see
`other_tokenizers`). The tokenizers trainers break ties in an order that can change between
runs, so a rerun may give another vocabulary and so another fixture; the committed one is what
the tests check.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_text_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [
    "A man sitting on a bench.",
    "dog",
    "cat",
    "sitting on",
    "A zyzzyva ruminating beneath a hippopotamus",
    " ".join(["a woman riding a horse on the beach"] * 8),
]


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--release", default=os.path.join(ROOT, "..", "shared", "data", "simat-release"))
    a.add_argument("--out", default=os.path.join(ROOT, "data", "tiny-bert"))
    args = a.parse_args()
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    captions = open(os.path.join(args.release, "captions.txt")).read().splitlines()
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(captions, vocab_size=600, min_frequency=1,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    with tempfile.TemporaryDirectory() as tmp:
        wp.save(os.path.join(tmp, "raw.json"))
        tok = BertTokenizerFast(tokenizer_file=os.path.join(tmp, "raw.json"), do_lower_case=True)
        tok.save_pretrained(tmp)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=64)
        BertModel(config).eval().save_pretrained(tmp)
        tok, graph, has_pooler = export_text_model.export(
            tmp, args.out, pooling="mean", normalize=False, context_length=32, name="tiny-bert",
            check_texts=TEXTS)
        with open(os.path.join(args.out, "model.toml")) as f:
            text = f.read().replace(f'pretrained = "{tmp}"',
                                    'pretrained = "random weights (scripts/make_tiny_bert.py)"')
        with open(os.path.join(args.out, "model.toml"), "w") as f:
            f.write(text)
    os.makedirs(os.path.join(args.out, "reference"), exist_ok=True)
    rows = export_text_model.encode(tok, graph, TEXTS, 32, has_pooler)
    ref = {"torch": torch.__version__, "context_length": 32, "texts": rows}
    with open(os.path.join(args.out, "reference", "reference.json"), "w") as f:
        json.dump(ref, f)
    other_tokenizers(captions, os.path.join(args.out, "reference"))
    print(f"{args.out}: vocabulary of {tok.vocab_size}, {len(rows)} reference texts")


def other_tokenizers(captions, out):
    """A Unigram (SentencePiece's model, T5's and XLM-R's kind, with a `</s>` appended) and a
    byte-level BPE tokenizer (RoBERTa's kind, `<s> ... </s>`) trained on the same captions, with
    Hugging Face's token ids of the reference texts: simat must read any kind of tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import decoders

    uni = Tokenizer(models.Unigram())
    uni.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    uni.train_from_iterator(captions, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    uni.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", uni.token_to_id("</s>"))])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(captions, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")),
                                                      ("<s>", bpe.token_to_id("<s>")))
    ref = {}
    for name, t in [("unigram", uni), ("bpe", bpe)]:
        t.save(os.path.join(out, f"{name}_tokenizer.json"))
        t.enable_truncation(32)
        ref[name] = [{"text": x, "ids": t.encode(x).ids} for x in TEXTS]
    with open(os.path.join(out, "other_tokenizers.json"), "w") as f:
        json.dump(ref, f)


if __name__ == "__main__":
    main()
