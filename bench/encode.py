"""Benchmark: the model's serving-side costs.

* ``encode_text`` queries/s at batch 1 (one shopper's query) and 64 (offline);
* ``encode_images`` images/s at batch 64 (indexing);
* ``score_pairs`` pairs/s at batch 100 (the re-rank cost of one query: 100 candidates).

Uses a freshly initialised model of a named config (weights do not change the cost) or a
checkpoint with ``--checkpoint``.

    python bench/encode.py --config tiny
    python bench/encode.py --config tiny --precision auto   # bf16 matmuls where the CPU/GPU has them
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fashionbert.configuration import named_config
from fashionbert.encoder import FashionBert
from fashionbert.modeling import FashionBertModel
from fashionbert.text import train_tokenizer
from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER

QUERIES = ["红色连衣裙", "blue striped shirt long sleeve", "黑色 高跟鞋", "white hoodie with star print", "格子半身裙 中长款"]


def rate(fn, items: int, min_seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < min_seconds:
        fn()
        done += items
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--feature-dim", type=int, default=BACKBONES[DEFAULT_IMAGE_ENCODER])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", help="fp32 | auto | bf16 (fashionbert.precision)")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        fb = FashionBert.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    else:
        tok = train_tokenizer(QUERIES * 50, vocab_size=8000)
        fb = FashionBert(FashionBertModel(named_config(args.config, tok, args.feature_dim)).eval(), tok, args.device,
                         args.precision)
    dim = fb.config.patch_feature_dim
    feats = np.random.default_rng(0).standard_normal((100, 64, dim)).astype(np.float16)
    q64 = [QUERIES[i % len(QUERIES)] for i in range(64)]
    where = f"{args.device}, {torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"bench/encode.py: {args.checkpoint or args.config} ({sum(p.numel() for p in fb.model.parameters()) / 1e6:.1f} M params) on {where}, "
          f"{fb.matmul_precision} matmuls")
    one = rate(lambda: fb.encode_text(QUERIES[:1]), 1, args.min_seconds)
    print(f"encode_text   batch 1  : {one:8.1f} queries/s  ({1000 / one:.2f} ms/query)")
    print(f"encode_text   batch 64 : {rate(lambda: fb.encode_text(q64), 64, args.min_seconds):8.1f} queries/s")
    print(f"encode_images batch 64 : {rate(lambda: fb.encode_images(feats[:64]), 64, args.min_seconds):8.1f} images/s")
    pairs = rate(lambda: fb.score_pairs([QUERIES[0]] * 100, feats, batch_size=100), 100, args.min_seconds)
    print(f"score_pairs   batch 100: {pairs:8.1f} pairs/s  (re-ranking 100 candidates: {100_000 / pairs:.0f} ms)")


if __name__ == "__main__":
    main()
