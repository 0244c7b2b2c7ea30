"""Benchmark: the indexing job end to end and per stage (products/s).

Generates (or reuses) a synthetic catalog of ``--products`` products, then runs the
real job (``indexer.job.build_index_version``: catalog -> patch features -> vectors ->
FAISS -> publish) into a fresh index directory and prints each stage's seconds and
items/s plus the end-to-end products/s.

The model is a checkpoint (``--checkpoint``) or a freshly initialised named config
(weights do not change the cost). ``--sample`` indexes only the first N products, for
slow settings such as ResNet-50 in crop mode (64 CNN passes per image) whose full run
would take a day on a CPU; the table says when it was sampled.

    python bench/index.py --products 10000                                  # efficientnet grid
    python bench/index.py --products 10000 --encoder resnet50 --mode crop --sample 20
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from fashionbert.configuration import named_config
from fashionbert.encoder import FashionBert
from fashionbert.modeling import FashionBertModel
from fashionbert.synthetic import generate_catalog
from fashionbert.text import train_tokenizer
from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER
from indexer.catalog import read_catalog
from indexer.embeddings import EmbedConfig
from indexer.features import FeatureJobConfig
from indexer.job import IndexJobConfig, build_index_version
from indexer.version_index import AnnConfig



def catalog_of(work: Path, products: int, sample: int | None, seed: int) -> Path:
    data = work / f"synth-{products}-{seed}"
    path = data / "catalog.parquet"
    if not path.is_file():
        generate_catalog(data, products, seed=seed)
    if sample is None or sample >= products:
        return path
    sampled = data / f"catalog-first{sample}.parquet"
    pq.write_table(pq.read_table(path).slice(0, sample), sampled)
    return sampled


def checkpoint_of(work: Path, catalog: Path, config: str, dim: int, given: Path | None) -> Path:
    if given is not None:
        return given
    out = work / f"ckpt-{config}-{dim}"
    if not (out / "model.safetensors").is_file():
        tokenizer = train_tokenizer(read_catalog(catalog, check_images="none").texts(), vocab_size=2000)
        torch.manual_seed(0)
        FashionBert(FashionBertModel(named_config(config, tokenizer, patch_feature_dim=dim)), tokenizer).save_pretrained(out)
    return out


def fmt(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--sample", type=int, default=None, help="index only the first N products")
    ap.add_argument("--encoder", default=DEFAULT_IMAGE_ENCODER, choices=sorted(BACKBONES))
    ap.add_argument("--mode", default="grid")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--engine", default="local")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fashionbert-bench-index"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    args.work.mkdir(parents=True, exist_ok=True)
    catalog = catalog_of(args.work, args.products, args.sample, args.seed)
    ckpt = checkpoint_of(args.work, catalog, args.config, BACKBONES[args.encoder], args.checkpoint)
    out = args.work / f"index-{args.encoder}-{args.mode}-{args.engine}"
    shutil.rmtree(out, ignore_errors=True)  # a cold build: nothing cached
    cfg = IndexJobConfig(
        catalog=catalog, checkpoint=ckpt, out=out,
        feature_config=FeatureJobConfig(encoder=args.encoder, mode=args.mode, device=args.device),
        embed=EmbedConfig(batch_size=args.batch_size), ann=AnnConfig(), engine=args.engine, device=args.device,
    )
    start = time.perf_counter()
    summary = build_index_version(cfg)
    total = time.perf_counter() - start
    n = summary.count
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\nindex build: {n:,} products{' (sampled from ' + format(args.products, ',') + ')' if args.sample else ''}, "
          f"{args.encoder}/{args.mode}, {args.config} model, engine {args.engine}, {device}\n")
    print("| stage | seconds | items | items/s | products/s |")
    print("|---|---:|---:|---:|---:|")
    for name, t in summary.stages.items():
        print(f"| {name} | {t.seconds:.1f} | {t.items:,} {t.unit} | {fmt(t.rate)} | {fmt(n / t.seconds) if t.seconds else 'nan'} |")
    print(f"| **end to end** (incl. model load, publish) | {total:.1f} | {n:,} product | | **{fmt(n / total)}** |")
    info = summary.infos["indexes"]["product"]
    print(f"\nproduct index: {info['factory']} {info['params']} recall@10 {info['recall_at_10']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({
            "products": n, "encoder": args.encoder, "mode": args.mode, "seconds": total,
            "products_per_second": n / total, "device": device,
            "stages": {k: {"seconds": v.seconds, "items": v.items, "unit": v.unit} for k, v in summary.stages.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
