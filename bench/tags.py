"""Benchmark: the tag recommender's training and inference throughput.

* the frozen trunk's state cache fill rate (one joint trunk pass per product and modality variant),
  training items/s on cached states (the head alone: every epoch after the first), and with
  the trunk fine-tuned;
* inference products/s at batch 1 (one API request) and batch 64 (``fashionbert tags predict``).

Titles and tags come from the synthetic generator; patch features are random (their values do
not change the cost). The trunk is a freshly initialised named config, or ``--checkpoint``.

    python bench/tags.py --config tiny --products 256 [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from fashionbert.configuration import named_config
from fashionbert.encoder import FashionBert
from fashionbert.modeling import FashionBertModel
from fashionbert.synthetic import generate_catalog
from fashionbert.tagging import StateCache, TagDataset, TaggerConfig, TrainOptions, fit_tagger
from fashionbert.tagging.dataset import VARIANTS
from fashionbert.text import train_tokenizer
from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--products", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a CPU shared with other work)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        table = pq.read_table(generate_catalog(Path(tmp), args.products, seed=0, workers=1, progress=False).catalog_path)
    titles, tags = table.column("title").to_pylist(), table.column("tags").to_pylist()
    torch.manual_seed(0)
    if args.checkpoint:
        trunk = FashionBert.from_pretrained(args.checkpoint, device=args.device)
    else:
        tok = train_tokenizer(titles, vocab_size=4000)
        trunk = FashionBert(FashionBertModel(named_config(args.config, tok, BACKBONES[DEFAULT_IMAGE_ENCODER])).eval(), tok, args.device)
    dim = trunk.config.patch_feature_dim
    feats = np.random.default_rng(0).standard_normal((args.products, 1, 64, dim)).astype(np.float16)
    data = TagDataset(titles, tags, views=lambda i: feats[i])
    where = f"{args.device}, {torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"bench/tags.py: {args.checkpoint or args.config} trunk, {args.products} products, batch {args.batch_size}, on {where}")

    options = TrainOptions(max_epochs=args.epochs, batch_size=args.batch_size, val_fraction=0.0, progress=False)
    cache = StateCache(trunk, data, TaggerConfig().max_views)
    t = time.perf_counter()
    cache.warm(range(args.products), VARIANTS)
    fill = len(cache) / (time.perf_counter() - t)
    print(f"state cache fill (trunk passes)              : {fill:9.1f} products/s ({len(cache)} product variants)")
    frozen = fit_tagger(trunk, data, TaggerConfig(), options, echo=lambda _: None, cache=cache)
    rates = [h["items_per_second"] for h in frozen.history]
    print(f"train, frozen trunk, cached states           : {np.mean(rates):9.1f} items/s")
    tuned = fit_tagger(trunk, data, TaggerConfig(freeze_trunk=False), TrainOptions(**{**options.__dict__, "max_epochs": 1}),
                       echo=lambda _: None)
    print(f"train, fine-tuned trunk                      : {tuned.history[0]['items_per_second']:9.1f} items/s")

    tagger = frozen.tagger
    views = [feats[i] for i in range(args.products)]
    for batch in (1, 64):
        n = min(args.products, 64 if batch == 1 else args.products)
        tagger.predict(titles[:batch], views[:batch], k=5, batch_size=batch)  # warm-up
        t = time.perf_counter()
        tagger.predict(titles[:n], views[:n], k=5, batch_size=batch)
        rate = n / (time.perf_counter() - t)
        print(f"inference, batch {batch:<2}                          : {rate:9.1f} products/s ({1000 / rate:.2f} ms/product)")


if __name__ == "__main__":
    main()
