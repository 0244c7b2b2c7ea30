"""Benchmark: pretraining throughput (samples/s) and peak memory.

Builds a small synthetic catalog with features (cached under --workdir), then runs the real
training job for a fixed number of steps and reports samples/s over the steps after warm-up,
peak resident memory on CPU (or peak CUDA memory on a GPU).

    python bench/train.py --config tiny --steps 20
    python bench/train.py --config base --device cuda --batch-size 128   # on a GPU
"""

from __future__ import annotations

import argparse
import resource
import shutil
from pathlib import Path

import torch

from fashionbert.synthetic import generate_catalog
from indexer.catalog import read_catalog
from indexer.features import FeatureJobConfig, extract_catalog_features
from pipelines.pretrain import PretrainConfig, pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--products", type=int, default=400)
    ap.add_argument("--loss-weighting", default="adaptive-grad")
    ap.add_argument("--weighting-every", type=int, default=10, help="adaptive-grad: re-solve the weights every N steps")
    ap.add_argument("--dropout", type=float, default=None, help="override the named config's dropout (hidden and attention)")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (pipelines.pretrain.PretrainConfig.precision)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fashionbert-bench-train"))
    args = ap.parse_args()

    data = args.workdir / "data"
    if not (data / "features" / "features_info.json").is_file():
        result = generate_catalog(data, args.products, seed=0, progress=False)
        catalog = read_catalog(result.catalog_path, require_image=True)
        extract_catalog_features(catalog, data / "features", FeatureJobConfig(max_images_per_product=1), progress=False)
    out = args.workdir / f"run-{args.config}-{args.device}"
    shutil.rmtree(out, ignore_errors=True)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cfg = PretrainConfig(
        catalog=data / "catalog.parquet", features=data / "features", out=out, model_config=args.config,
        steps=args.steps, batch_size=args.batch_size, warmup_steps=1, device=args.device,
        precision=args.precision,
        loss_weighting=args.loss_weighting, weighting_every=args.weighting_every, save_every=10**9,
        model_overrides={} if args.dropout is None else {"hidden_dropout_prob": args.dropout,
                                                         "attention_probs_dropout_prob": args.dropout},
    )
    result = pretrain(cfg, echo=lambda s: None, progress=False)
    peak = (f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if args.device.startswith("cuda")
            else f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"bench/train.py: {args.config} on {args.device} ({result.precision}), batch {args.batch_size}, {args.loss_weighting}"
          f"{f' every {args.weighting_every}' if args.loss_weighting == 'adaptive-grad' else ''}"
          f"{'' if args.dropout is None else f', dropout {args.dropout}'}: "
          f"{result.samples_per_second:.1f} samples/s over {result.steps_done} steps, {peak}")


if __name__ == "__main__":
    main()
