"""Shared fixtures. Everything runs offline: the HF hub is never contacted."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def write_image(path: Path, seed: int, size: int = 96) -> Path:
    """A seeded picture with some structure (a coloured block on a noisy background)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    arr[y : y + size // 2, x : x + size // 2] = rng.integers(80, 255, 3, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=92)
    return path


CatalogFactory = Callable[..., Path]


@pytest.fixture
def make_catalog(tmp_path: Path) -> CatalogFactory:
    """Write a small catalog: ``rows`` of dicts; ``images`` given as counts become real JPEG files."""

    def factory(rows: Sequence[dict], name: str = "catalog.parquet", schema: pa.Schema | None = None) -> Path:
        records = []
        for i, row in enumerate(rows):
            row = dict(row)
            images = row.get("images", 2)
            if isinstance(images, int):
                row["images"] = [
                    str(write_image(tmp_path / "images" / f"{i}_{v}.jpg", seed=i * 10 + v).relative_to(tmp_path))
                    for v in range(images)
                ]
            row.setdefault("product_id", f"p{i:03d}")
            row.setdefault("title", f"red striped shirt {i}")
            row.setdefault("category", "tops")
            row.setdefault("sub_category", "shirt")
            records.append(row)
        keys = list(dict.fromkeys(k for r in records for k in r))  # from_pylist reads keys of row 0 only
        table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records], schema=schema)
        path = tmp_path / name
        pq.write_table(table, path)
        return path

    return factory
