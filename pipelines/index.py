"""The ``fashionbert index`` job: options from the command line -> a full build or an update."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from fashionbert.product_vectors import product_vector_spec
from indexer.embeddings import EmbedConfig
from indexer.features import FeatureJobConfig
from indexer.job import BuildSummary, IndexJobConfig, build_index_version, update_index_version
from indexer.version_index import AnnConfig

_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_bytes(text: str | None) -> int | None:
    """'8GB', '512 MB', '1.5TB' or a plain byte count -> bytes (binary units)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", text.upper())
    if not m or (m.group(2) and m.group(2) not in _UNITS and m.group(2) + "B" not in _UNITS):
        raise ValueError(f"cannot read a memory size from {text!r} (use e.g. 8GB or 512MB)")
    unit = m.group(2) if m.group(2) in _UNITS else m.group(2) + "B"
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass
class IndexOptions:
    out: Path
    checkpoint: Path
    catalog: Path | None = None
    update: Path | None = None
    rebuild: bool = False
    features: Path | None = None
    encoder: str | None = None  # None: the image encoder the checkpoint was trained on
    mode: str | None = None
    weights: Path | None = None
    factory: str = "auto"
    max_memory: str | None = None
    target_recall: float = 0.95
    product_vectors: str = "joint"
    a: int | None = None
    b: int | None = None
    xi: float | None = None
    mu: float | None = None
    engine: str = "local"
    ray_workers: int | None = None
    batch_size: int = 64
    shard_size: int = 4096
    device: str = "auto"
    keep_versions: int = 3
    seed: int = 0
    progress: bool = True


def checkpoint_image_fields(checkpoint: Path, encoder: str | None, mode: str | None) -> dict[str, str]:
    """The CNN and patch mode to extract a catalog's photos with: as asked, else as the checkpoint was trained.

    A checkpoint's patch projection only reads features of the encoder it was trained on, so
    the default follows ``image_encoder`` / ``patch_mode`` in its config.json (checkpoints saved
    before those were recorded were all trained on EfficientNet-Lite0's head map, the config's
    own default). A missing checkpoint is left to the job, which says so.
    """
    recorded: dict = {}
    config_file = Path(checkpoint) / "config.json"
    if config_file.is_file():
        recorded = json.loads(config_file.read_text())
    return {"encoder": encoder or recorded.get("image_encoder") or "efficientnet_lite0",
            "mode": mode or recorded.get("patch_mode") or "grid"}


def job_config(o: IndexOptions) -> IndexJobConfig:
    if o.engine not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, not {o.engine!r}")
    spec = product_vector_spec(o.product_vectors, images=o.a, texts=o.b, image_weight=o.xi, text_weight=o.mu)
    return IndexJobConfig(
        catalog=o.catalog,  # type: ignore[arg-type]
        checkpoint=o.checkpoint,
        out=o.out,
        features=o.features,
        feature_config=FeatureJobConfig(**checkpoint_image_fields(o.checkpoint, o.encoder, o.mode),
                                        weights_path=str(o.weights) if o.weights else None, seed=o.seed, device=o.device),
        embed=EmbedConfig(spec=spec, batch_size=o.batch_size, shard_size=o.shard_size),
        ann=AnnConfig(factory=o.factory, max_memory_bytes=parse_bytes(o.max_memory), target_recall=o.target_recall, seed=o.seed),
        engine=o.engine,
        ray_workers=o.ray_workers,
        device=o.device,
        keep_versions=o.keep_versions,
        progress=o.progress,
    )


def run_index(o: IndexOptions) -> BuildSummary:
    """Full build with --catalog (or --rebuild), incremental with --update."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = job_config(o)
    if o.update is not None and not o.rebuild:
        return update_index_version(cfg, o.update)
    if o.catalog is None:
        raise ValueError("a full build needs --catalog (use --update CHANGES.parquet for an incremental update)")
    return build_index_version(cfg)
