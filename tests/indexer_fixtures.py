"""Shared data for the indexer tests: a small synthetic catalog, a tiny checkpoint, job configs."""

from __future__ import annotations

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
from indexer.features import FeatureJobConfig, extract_catalog_features
from indexer.job import IndexJobConfig
from indexer.version_index import AnnConfig

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, itc_dim=32)
FAST_FEATURES = FeatureJobConfig(batch_size=8, shard_size=16, num_workers=0)


def catalog_with_features(root: Path, n: int, seed: int) -> dict[str, Path]:
    """A synthetic catalog of ``n`` products and its patch features (one image each): a training job's inputs."""
    result = generate_catalog(root / "train", n, seed=seed, workers=1, progress=False)
    catalog = read_catalog(result.catalog_path, require_image=True)
    extract_catalog_features(catalog, root / "features", FeatureJobConfig(num_workers=0, max_images_per_product=1),
                             progress=False)
    return {"catalog": result.catalog_path, "features": root / "features", "root": root}


def make_synthetic(root: Path, n: int = 24, seed: int = 3) -> Path:
    """A synthetic catalog with an extra carried-through column and one product whose images are all corrupt."""
    result = generate_catalog(root, n, seed=seed, workers=1, progress=False)
    table = pq.read_table(result.catalog_path)
    table = table.append_column("merchant", table.column("product_id"))  # an unknown column, carried through
    pq.write_table(table, result.catalog_path)
    broken = table.column("images").to_pylist()[5]
    for rel in broken:
        (root / rel).write_bytes(b"\xff\xd8\xff truncated")
    return result.catalog_path


def make_checkpoint(catalog_path: Path, out: Path, seed: int = 0, **overrides: object) -> Path:
    catalog = read_catalog(catalog_path, check_images="none")
    tokenizer = train_tokenizer(catalog.texts(), vocab_size=400)
    torch.manual_seed(seed)
    model = FashionBertModel(named_config("tiny", tokenizer, patch_feature_dim=BACKBONES[DEFAULT_IMAGE_ENCODER],
                                             image_encoder=DEFAULT_IMAGE_ENCODER, **{**TINY, **overrides}))
    FashionBert(model, tokenizer).save_pretrained(out)
    return out


def job(catalog: Path | None, checkpoint: Path, out: Path, **kw: object) -> IndexJobConfig:
    defaults = dict(
        feature_config=FAST_FEATURES, embed=EmbedConfig(batch_size=8, shard_size=8),
        ann=AnnConfig(recall_queries=64), device="cpu", progress=False,
    )
    return IndexJobConfig(catalog=catalog, checkpoint=checkpoint, out=out, **{**defaults, **kw})  # type: ignore[arg-type]
