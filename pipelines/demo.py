"""The README's main job on the embedded default data.

Today: synthetic train/test catalogs -> a WordPiece tokenizer trained on the
train catalog's text -> patch features for both splits. Later issues add
pretraining, evaluation, indexing and serving behind the same command.
Every stage reuses what an earlier run left, so a second run is quick.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fashionbert.text import load_tokenizer, train_tokenizer
from indexer.catalog import read_catalog
from indexer.features import FeatureJobConfig, FeatureJobResult, extract_catalog_features

SYNTH_PARAMS_FILE = "synth_params.json"
TOKENIZER_SOURCE_FILE = "trained_on.json"


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("fashionbert-demo")
    train_products: int = 2000
    test_products: int = 500
    seed: int = 0
    encoder: str = "efficientnet_lite0"
    mode: str = "grid"
    workers: int | None = None
    feature_workers: int = 2
    shard_size: int = 1024


@dataclass
class DemoResult:
    catalogs: dict[str, Path] = field(default_factory=dict)
    features: dict[str, FeatureJobResult] = field(default_factory=dict)
    tokenizer: Path | None = None

    def summary(self) -> str:
        lines = ["demo: done", f"  tokenizer: {self.tokenizer}"]
        for split, path in self.catalogs.items():
            f = self.features[split]
            lines.append(f"  {split}: catalog {path}")
            lines.append(
                f"  {split}: features {f.out_dir} ({f.num_shards} shard(s), "
                f"{len(f.bad_images)} bad image(s), weights: {f.weights})"
            )
        return "\n".join(lines)


def ensure_synthetic_catalog(
    out_dir: Path, products: int, seed: int, split: str, workers: int | None, echo: Callable[[str], None]
) -> Path:
    """Generate the catalog unless ``out_dir`` already holds one made with the same parameters."""
    from fashionbert.synthetic import generate_catalog

    params = {"products": products, "seed": seed, "split": split}
    marker = out_dir / SYNTH_PARAMS_FILE
    catalog = out_dir / "catalog.parquet"
    if catalog.is_file() and marker.is_file() and json.loads(marker.read_text()) == params:
        echo(f"synth {split}: reusing {catalog}")
        return catalog
    result = generate_catalog(out_dir, products, seed=seed, split=split, workers=workers)  # type: ignore[arg-type]
    marker.write_text(json.dumps(params))
    echo(f"synth {split}: {result.n_products} products, {result.n_images} images in {result.seconds:.1f} s -> {catalog}")
    return result.catalog_path


def ensure_tokenizer(out_dir: Path, catalog_path: Path, echo: Callable[[str], None], vocab_size: int = 8000) -> Path:
    """Train a WordPiece tokenizer on the catalog's text unless one trained on this exact file exists."""
    source = {"catalog_sha256": hashlib.sha256(catalog_path.read_bytes()).hexdigest(), "vocab_size": vocab_size}
    marker = out_dir / TOKENIZER_SOURCE_FILE
    if marker.is_file() and json.loads(marker.read_text()) == source:
        tokenizer = load_tokenizer(out_dir)
        echo(f"tokenizer: reusing {out_dir} ({len(tokenizer)} tokens)")
        return out_dir
    texts = read_catalog(catalog_path, check_images="none").texts()
    tokenizer = train_tokenizer(texts, out_dir, vocab_size=vocab_size)
    marker.write_text(json.dumps(source))
    echo(f"tokenizer: trained on {len(texts)} texts, {len(tokenizer)} tokens -> {out_dir}")
    return out_dir


def run_demo(config: DemoConfig = DemoConfig(), echo: Callable[[str], None] = print) -> DemoResult:
    result = DemoResult()
    # Different seeds for the two splits; the split itself keeps attribute combinations disjoint.
    splits = {"train": (config.train_products, config.seed), "test": (config.test_products, config.seed + 1)}
    for split, (products, seed) in splits.items():
        data_dir = config.workdir / "data" / split
        catalog_path = ensure_synthetic_catalog(data_dir, products, seed, split, config.workers, echo)
        catalog = read_catalog(catalog_path, require_image=True)
        job = FeatureJobConfig(
            encoder=config.encoder, mode=config.mode, seed=config.seed,
            num_workers=config.feature_workers, shard_size=config.shard_size,
        )
        features = extract_catalog_features(catalog, data_dir / "features", job)
        echo(
            f"features {split}: {features.num_images} images computed in {features.seconds:.1f} s, "
            f"{features.skipped_shards} shard(s) reused -> {features.out_dir}"
        )
        result.catalogs[split] = catalog_path
        result.features[split] = features
        if split == "train":
            result.tokenizer = ensure_tokenizer(config.workdir / "tokenizer", catalog_path, echo)
    return result
