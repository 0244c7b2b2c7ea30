"""Patch-feature extraction job: catalog images -> row-aligned fp16 shards.

Layout of an output directory (ARCHITECTURE.md §3)::

    features_info.json          encoder, mode, dim, weights provenance, plan fingerprint
    part-00000.npy              float16 [n, 64, D]
    part-00000.parquet          row-aligned: product_id, image_index, catalog_row
    ...

Why shards: a kill loses at most one shard. Each shard is written to a temp
name and renamed (Parquet first, then the ``.npy`` that marks it finished), so
a rerun skips finished shards and recomputes only the rest. Batches never
straddle shards and shards are cut from a deterministic plan, so a resumed run
writes byte-identical files. Images that fail to decode are recorded in the
shard's Parquet metadata and skipped; they never stop the job.
"""

from __future__ import annotations

import hashlib
import json

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fashionbert.vision import (
    DEFAULT_IMAGE_ENCODER,
    GRID,
    NUM_PATCHES,
    Backbone,
    PatchFeatureExtractor,
    build_backbone,
    load_image_tensor,
)
from indexer.catalog import Catalog, ImageRef
from indexer.files import atomic_write, save_npy, shard_name

if TYPE_CHECKING:
    from indexer.feature_store import FeatureStore

INFO_FILE = "features_info.json"
FORMAT_VERSION = 1


class FeatureDirMismatchError(RuntimeError):
    """The output directory holds features of another catalog or configuration."""


@dataclass(frozen=True)
class FeatureJobConfig:
    """Everything that changes the numbers in the shards (recorded in features_info.json)."""

    encoder: str = DEFAULT_IMAGE_ENCODER
    mode: str = "grid"
    weights_path: str | None = None
    cell_size: int = 32
    crop_size: int = 224
    seed: int = 0
    max_images_per_product: int | None = None
    # Execution only (not part of the fingerprint). None: 8 on a CPU, where small batches run fastest
    # (bench/features.py, EfficientNet-Lite0 grid: 37.5 img/s at batch 1, 31.9 at 8, 18.6 at 64) and
    # 8 keeps the per-batch overhead low; 64 on a GPU.
    batch_size: int | None = None
    shard_size: int = 1024
    num_workers: int = 2
    device: str = "auto"

    def fingerprint_fields(self) -> dict[str, object]:
        d = asdict(self)
        for key in ("batch_size", "num_workers", "device"):
            d.pop(key)
        return d


@dataclass
class FeatureJobResult:
    out_dir: Path
    num_images: int
    num_shards: int
    computed_shards: int
    skipped_shards: int
    bad_images: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0
    weights: str = ""
    reused_images: int = 0  # copied from the ``reuse`` store instead of recomputed

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else float("nan")


def _plan(catalog: Catalog, max_images: int | None) -> list[tuple[int, ImageRef]]:
    return list(catalog.image_refs(max_images))


def _plan_fingerprint(catalog: Catalog, plan: list[tuple[int, ImageRef]]) -> str:
    h = hashlib.sha256()
    for row, ref in plan:
        h.update(f"{catalog.source_rows[row]}\t{ref.product_id}\t{ref.image_index}\t{ref.fingerprint()}\n".encode())
    return h.hexdigest()


class _ImageDataset(Dataset):
    """Decodes one planned image; a failure becomes a reason string instead of an exception."""

    def __init__(self, plan: list[tuple[int, ImageRef]], size: int):
        self.plan, self.size = plan, size

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        _, ref = self.plan[i]
        try:
            return i, load_image_tensor(ref.open(), self.size), None
        except Exception as exc:  # noqa: BLE001 - a corrupt image is data, not a crash
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    ok = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, err) for i, _, err in items if err is not None]
    images = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], images, bad


def _reusable(
    plan: list[tuple[int, ImageRef]], ranges: list[tuple[int, int]], reuse: FeatureStore | None, config: FeatureJobConfig
) -> dict[int, tuple[int, int]]:
    """Plan index -> (shard, offset) in ``reuse`` for every image to be done whose content it already holds."""
    if reuse is None or reuse.info.get("config") != config.fingerprint_fields():
        return {}
    known = reuse.fingerprint_locations()
    out: dict[int, tuple[int, int]] = {}
    for s, e in ranges:
        for i in range(s, e):
            loc = known.get(plan[i][1].fingerprint())
            if loc is not None:
                out[i] = loc
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_extractor(config: FeatureJobConfig, device: torch.device | str = "cpu") -> tuple[PatchFeatureExtractor, Backbone]:
    """The CNN + patching of ``config`` in eval mode, and its backbone's provenance: the indexer
    and the search API's photo queries build it the same way, or a query photo's features would
    not match the catalog's."""
    torch.manual_seed(config.seed)
    input_size = PatchFeatureExtractor.backbone_input_size(config.mode, config.cell_size, config.crop_size)  # type: ignore[arg-type]
    backbone = build_backbone(config.encoder, config.weights_path, config.seed, input_size=input_size)
    return PatchFeatureExtractor(backbone, config.mode, config.cell_size, config.crop_size).to(device).eval(), backbone


def _write_shard(out_dir: Path, index: int, feats: np.ndarray, meta: pa.Table) -> None:
    base = out_dir / shard_name(index)
    atomic_write(base.with_suffix(".parquet"), lambda p: pq.write_table(meta, p))
    save_npy(base.with_suffix(".npy"), feats)  # last: its presence marks the shard finished


def _shard_done(out_dir: Path, index: int) -> bool:
    base = out_dir / shard_name(index)
    return base.with_suffix(".npy").is_file() and base.with_suffix(".parquet").is_file()


def _prepare_out_dir(out_dir: Path, info: dict, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(".part-*.tmp-*"):  # half-written shards of a killed run
        leftover.unlink()
    info_path = out_dir / INFO_FILE
    if info_path.is_file():
        old = json.loads(info_path.read_text())
        same = old.get("config") == info["config"] and old.get("plan_sha256") == info["plan_sha256"]
        if not same and not overwrite:
            raise FeatureDirMismatchError(
                f"{out_dir} holds features of another catalog or configuration; "
                "pass --overwrite to replace them or choose another --out"
            )
        if same:
            return
    for stale in out_dir.glob("part-*"):
        stale.unlink()
    atomic_write(info_path, lambda p: p.write_text(json.dumps(info, indent=2, ensure_ascii=False)))


def _shard_batches(shard_ranges: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches cut inside each shard, so a resumed run sees exactly the same batches."""
    return [list(range(s, min(s + batch_size, e))) for s, e in shard_ranges for s in range(s, e, batch_size)]


def extract_catalog_features(
    catalog: Catalog,
    out_dir: str | Path,
    config: FeatureJobConfig = FeatureJobConfig(),
    *,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_shards: int | None = None,
    reuse: FeatureStore | None = None,
) -> FeatureJobResult:
    """Extract 8x8 patch features for every image of ``catalog`` into shards under ``out_dir``.

    Resumes: finished shards of the same plan and config are kept. ``stop_after_shards``
    simulates an interruption (tests) by returning after that many newly written shards.
    ``reuse``: an earlier features directory of the same configuration (e.g. last night's
    catalog); images whose content fingerprint it already holds are copied, not recomputed.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    extractor, backbone = build_extractor(config, device)

    plan = _plan(catalog, config.max_images_per_product)
    info = {
        "format_version": FORMAT_VERSION,
        "config": config.fingerprint_fields(),
        "feature_dim": backbone.feature_dim,
        "num_patches": NUM_PATCHES,
        "grid": GRID,
        "weights": backbone.weights,
        "pretrained": backbone.pretrained,
        "num_planned_images": len(plan),
        "plan_sha256": _plan_fingerprint(catalog, plan),
    }
    _prepare_out_dir(out_dir, info, overwrite)

    n_shards = (len(plan) + config.shard_size - 1) // config.shard_size
    todo = [k for k in range(n_shards) if not _shard_done(out_dir, k)]
    skipped = n_shards - len(todo)
    if stop_after_shards is not None:
        todo = todo[:stop_after_shards]
    ranges = [(k * config.shard_size, min((k + 1) * config.shard_size, len(plan))) for k in todo]
    batch_size = config.batch_size or (64 if device.type == "cuda" else 8)
    reused = _reusable(plan, ranges, reuse, config)
    n_reused = len(reused)
    batches = [b for b in (
        [i for i in batch if i not in reused] for batch in _shard_batches(ranges, batch_size)
    ) if b]
    loader = DataLoader(
        _ImageDataset(plan, extractor.image_size),
        batch_sampler=batches,
        num_workers=config.num_workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    use_amp = device.type == "cuda"
    feats_by_index: dict[int, np.ndarray] = {}
    errors_by_index: dict[int, str] = {}
    shard_iter: Iterator[tuple[int, tuple[int, int]]] = iter(zip(todo, ranges))
    current = next(shard_iter, None)
    bad_images: list[dict[str, object]] = []
    total = sum(e - s for s, e in ranges)

    def flush_finished_shards() -> None:
        nonlocal current
        while current is not None and all(
            i in feats_by_index or i in errors_by_index or i in reused for i in range(*current[1])
        ):
            k, (s, e) = current
            for i in range(s, e):
                if i in reused:
                    feats_by_index[i] = reuse.get_at(*reused.pop(i))  # type: ignore[union-attr]
            bad_images.extend(_flush_shard(out_dir, k, s, e, plan, catalog, feats_by_index, errors_by_index, backbone.feature_dim))
            current = next(shard_iter, None)

    with tqdm(total=total, unit="img", desc=f"features {config.encoder}/{config.mode}", disable=not progress) as bar:
        bar.update(len(reused))
        flush_finished_shards()
        for indices, images, bad in loader:
            if images is not None:
                images = images.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    out = extractor(images)
                for i, f in zip(indices, out.float().cpu().numpy().astype(np.float16)):
                    feats_by_index[i] = f
            errors_by_index.update(bad)
            bar.update(len(indices) + len(bad))
            flush_finished_shards()
    return FeatureJobResult(
        out_dir=out_dir,
        num_images=total,
        num_shards=n_shards,
        computed_shards=len(todo),
        skipped_shards=skipped,
        bad_images=bad_images,
        seconds=time.perf_counter() - start,
        weights=backbone.weights,
        reused_images=n_reused,
    )


def _flush_shard(
    out_dir: Path,
    k: int,
    s: int,
    e: int,
    plan: list[tuple[int, ImageRef]],
    catalog: Catalog,
    feats_by_index: dict[int, np.ndarray],
    errors_by_index: dict[int, str],
    dim: int,
) -> list[dict[str, object]]:
    good = [i for i in range(s, e) if i in feats_by_index]
    feats = np.stack([feats_by_index.pop(i) for i in good]) if good else np.zeros((0, NUM_PATCHES, dim), np.float16)
    errors = []
    for i in range(s, e):
        if i in errors_by_index:
            row, ref = plan[i]
            errors.append({
                "row": catalog.source_rows[row], "product_id": ref.product_id,
                "image_index": ref.image_index, "image": ref.describe(), "reason": errors_by_index.pop(i),
            })
    meta = pa.table({
        "product_id": pa.array([plan[i][1].product_id for i in good], pa.string()),
        "image_index": pa.array([plan[i][1].image_index for i in good], pa.int32()),
        "catalog_row": pa.array([catalog.source_rows[plan[i][0]] for i in good], pa.int64()),
        "image_fingerprint": pa.array([plan[i][1].fingerprint() for i in good], pa.string()),
    }).replace_schema_metadata({"bad_images": json.dumps(errors, ensure_ascii=False)})
    _write_shard(out_dir, k, feats, meta)
    return errors
