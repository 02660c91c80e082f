#!/usr/bin/env python3
"""Hugging Face tokenizers on the same input as bench_tokenizer: line by line,
one thread, median of 3 passes. usage: bench_tokenizer_hf.py TOKENIZER_JSON TEXT_FILE"""
import json, os, sys, time
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer

lines = open(sys.argv[2], encoding="utf-8").read().split("\n")
if lines and lines[-1] == "":
    lines.pop()
nbytes = sum(len(l.encode()) for l in lines)
times, tokens = [], 0
for _ in range(3):  # a fresh tokenizer per pass (cold word cache), as bench_tokenizer does
    tok = Tokenizer.from_file(sys.argv[1])
    t0 = time.perf_counter()
    tokens = sum(len(tok.encode(l, add_special_tokens=False).ids) for l in lines)
    times.append(time.perf_counter() - t0)
s = sorted(times)[1]
print(json.dumps({"impl": "hf-tokenizers", "tokenizer": sys.argv[1], "mb": nbytes / 1e6, "lines": len(lines),
                  "tokens": tokens, "seconds": s, "mb_per_s": nbytes / 1e6 / s}))
