"""Throughput of the synthetic catalog generator (products/s).

Usage: python bench/synth.py [--products 10000] [--workers 2] [--out DIR] [--keep]
Prints e.g. `synth: 10000 products, 29874 images in 41.2 s = 242.7 products/s (workers=2)`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from fashionbert.synthetic import generate_catalog


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="output dir (default: a temp dir, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the temp output")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="synth-bench-"))
    try:
        r = generate_catalog(out, args.products, seed=args.seed, workers=args.workers, progress=args.progress)
        rate = r.n_products / r.seconds if r.seconds else float("inf")
        print(f"synth: {r.n_products} products, {r.n_images} images in {r.seconds:.1f} s = "
              f"{rate:.1f} products/s (workers={args.workers})")
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
