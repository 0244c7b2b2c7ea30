"""The Ray Data engine of the embedding stage: same shards as :func:`indexer.embeddings.embed_catalog`.

Why: a catalog bigger than one machine. The local engine first writes every
image's fp16 patch features (64 x 1280 x 2 bytes = 160 KiB per image) and then
encodes them; here image decoding, the CNN and the FashionBERT encoder run
together in one model actor per worker (one per GPU when the cluster has GPUs),
so features never leave the worker and only the three vectors of a product
(3 x 256 float32 = 3 KiB) flow back to the driver, which writes the very same
``emb/{product,image,title}/part-NNNNN.npy`` + ``meta/part-NNNNN.parquet`` shards
in the validated catalog's row order (resumable per shard, like the local engine).

The numbers match the local engine's because the actor repeats its steps: the same
seeded backbone, the same decoder (bad images skipped), the same fp16 round trip
of the features and the same :func:`~indexer.embeddings.encode_batch`. Only the
``plan_sha256`` of ``embed_info.json`` differs (no FeatureStore says which views
decoded), so neither engine resumes the other's directory. The catalog's images and
the checkpoint must be readable from every node.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from fashionbert.vision import BACKBONES
from indexer.catalog import Catalog, ImageRef, _image_refs
from indexer.embeddings import (
    EMB_KINDS, META_DIR, PATCHES, SHARD_ARRAYS, EmbedConfig, EmbedResult, _prepare, encode_batch, product_texts, shard_finished,
    shard_meta, write_embedding_shard,
)
from indexer.features import FeatureJobConfig, _plan, _plan_fingerprint, build_extractor

RAY_MISSING = "the ray engine needs `pip install fashionbert-search[ray]`"
BATCH_ROWS = 64  # catalog rows per actor call


def _row_key(row: dict[str, Any], columns: Sequence[str]) -> str:
    """Content hash of a catalog row: tells a kept row from a dropped duplicate of its product id."""
    return hashlib.sha256(repr([row.get(c) for c in columns]).encode()).hexdigest()


def ray_plan_sha(catalog: Catalog, feature_config: FeatureJobConfig) -> str:
    """What the vectors depend on in the data, without a FeatureStore: ids, texts, planned views, image content."""
    h = hashlib.sha256(b"ray\0")
    for pid, ts, refs in zip(catalog.product_ids, product_texts(catalog), catalog.images):
        planned = [r.image_index for r in refs[: feature_config.max_images_per_product]]
        h.update(json.dumps([pid, ts, planned], ensure_ascii=False).encode())
    h.update(json.dumps(feature_config.fingerprint_fields(), sort_keys=True).encode())
    h.update(_plan_fingerprint(catalog, _plan(catalog, feature_config.max_images_per_product)).encode())
    return h.hexdigest()


class _EmbedActor:
    """One per worker: checkpoint + backbone loaded once, then catalog rows -> three vectors per product."""

    def __init__(self, checkpoint: str, root: str, feature_config: FeatureJobConfig, embed_config: EmbedConfig,
                 selection: Any, use_gpu: bool) -> None:
        import ray
        import torch

        from fashionbert.encoder import FashionBert

        # id -> kept-row position; ambiguous id -> row hash; id -> kept image indices (where validation dropped some)
        self.wanted, self.ambiguous, self.kept_images, self.columns = ray.get(selection)
        self.root, self.fc, self.ec = Path(root), feature_config, embed_config
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = FashionBert.from_pretrained(checkpoint, device=self.device)
        # Built exactly as extract_catalog_features builds it (a random-init backbone is the same everywhere).
        self.extractor = build_extractor(feature_config, self.device)[0]
        self.image_batch = feature_config.batch_size or (64 if use_gpu else 8)
        self.pool = ThreadPoolExecutor(max(1, feature_config.num_workers))  # PIL decodes outside the GIL

    def _decode(self, refs: list[ImageRef]) -> list[Any]:
        """The first ``max_views`` images that decode; a bad one is skipped, as in the local job."""
        from fashionbert.vision import load_image_tensor

        good = []
        for ref in refs:
            if len(good) == self.ec.max_views:
                break
            try:
                good.append((ref.image_index, load_image_tensor(ref.open(), self.extractor.image_size)))
            except Exception:  # noqa: BLE001 - a corrupt image is data, not a crash
                continue
        return good

    def _features(self, images: list[Any]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.image_batch):
                x = torch.stack(images[s : s + self.image_batch]).to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
                    out.append(self.extractor(x).float().cpu().numpy().astype(np.float16))  # the store's fp16
        return np.concatenate(out)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        rows = batch.to_pylist()
        keep = [i for i, r in enumerate(rows) if r["product_id"] in self.wanted and (
            r["product_id"] not in self.ambiguous or _row_key(r, self.columns) == self.ambiguous[r["product_id"]])]
        rows = [rows[i] for i in keep]
        texts = product_texts(Catalog(batch.take(pa.array(keep, pa.int64())), self.root, [], []))
        refs = []
        for r in rows:
            pid, allowed = r["product_id"], self.kept_images.get(r["product_id"])
            found = _image_refs(pid, r["images"], self.root)
            refs.append([f for f in found if allowed is None or f.image_index in allowed][: self.fc.max_images_per_product])
        decoded = list(self.pool.map(self._decode, refs))
        flat = [t for ts in decoded for _, t in ts]
        feats = self._features(flat) if flat else None
        views: list[np.ndarray | None] = []
        pos = 0
        for ts in decoded:
            views.append(feats[pos : pos + len(ts)] if ts else None)  # type: ignore[index]
            pos += len(ts)
        dim = self.model.config.itc_dim
        cfg = self.model.config
        vecs = (encode_batch(self.model, [r["title"] for r in rows], texts, views, self.ec.spec, self.ec.batch_size)
                if rows else {**{k: np.zeros((0, dim), np.float32) for k in EMB_KINDS},
                              PATCHES: np.zeros((0, cfg.num_patches, cfg.patch_feature_dim), np.float16)})
        return {
            "product_id": np.array([r["product_id"] for r in rows], dtype=object),
            "position": np.array([self.wanted[r["product_id"]] for r in rows], np.int64),
            "num_images": np.array([len(ts) for ts in decoded], np.int32),
            "views": np.array([",".join(str(i) for i, _ in ts) for ts in decoded], dtype=object),
            **{k: vecs[k] for k in SHARD_ARRAYS},
        }


def _selection(catalog: Catalog, positions: Sequence[int]) -> tuple[dict, dict, dict, list[str]]:
    pids = catalog.product_ids
    wanted = {pids[p]: p for p in positions}
    columns = sorted(catalog.table.column_names)
    suspects = {i.product_id for i in catalog.issues if i.dropped and i.product_id}  # dropped rows may share an id
    ambiguous = {pids[p]: _row_key(catalog.table.slice(p, 1).to_pylist()[0], columns)
                 for p in positions if pids[p].strip() in suspects}
    raw_counts = pc.list_value_length(catalog.table.column("images")).fill_null(0).to_pylist()
    kept_images = {pids[p]: {r.image_index for r in catalog.images[p]}
                   for p in positions if len(catalog.images[p]) != raw_counts[p]}
    return wanted, ambiguous, kept_images, columns


def embed_catalog_ray(
    catalog_path: Path,
    catalog: Catalog,
    checkpoint: Path,
    out_dir: Path,
    feature_config: FeatureJobConfig,
    embed_config: EmbedConfig,
    *,
    checkpoint_sha: str = "",
    num_workers: int | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> EmbedResult:
    """Encode every product of ``catalog`` (validated from ``catalog_path``) on Ray Data into shards under ``out_dir``.

    ``num_workers``: model actors (default: one per GPU of the cluster, else 2). ``num_cpus``: for
    ``ray.init`` when no Ray is running yet. Ray is left running for the caller to shut down.
    """
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(RAY_MISSING) from exc
    from fashionbert.configuration import FashionBertConfig

    start = time.perf_counter()
    out_dir, checkpoint = Path(out_dir), Path(checkpoint)
    dim = int(FashionBertConfig.from_pretrained(checkpoint).itc_dim)
    info = {
        "checkpoint_sha256": checkpoint_sha,
        "config": embed_config.fingerprint(),
        "plan_sha256": ray_plan_sha(catalog, feature_config),
        "dim": dim,
        "count": len(catalog),
        "features": {"config": feature_config.fingerprint_fields(), "feature_dim": BACKBONES[feature_config.encoder]},
        "engine": "ray",
    }
    _prepare(out_dir, info)
    size, n = embed_config.shard_size, len(catalog)
    n_shards = (n + size - 1) // size
    todo = [k for k in range(n_shards) if not shard_finished(out_dir, k)]
    positions = [p for k in todo for p in range(k * size, min((k + 1) * size, n))]
    if positions:
        _run(ray, catalog_path, catalog, checkpoint, out_dir, feature_config, embed_config, todo, positions,
             num_workers, num_cpus, progress)
    with_image = sum(sum(pq.read_table(p, columns=["has_image"]).column(0).to_pylist())
                     for p in (out_dir / META_DIR).glob("part-*.parquet"))
    return EmbedResult(out_dir, n, dim, n_shards, len(todo), time.perf_counter() - start, with_image=with_image)


def _run(ray: Any, catalog_path: Path, catalog: Catalog, checkpoint: Path, out_dir: Path,
         feature_config: FeatureJobConfig, embed_config: EmbedConfig, todo: list[int], positions: list[int],
         num_workers: int | None, num_cpus: int | None, progress: bool) -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    gpus = int(ray.cluster_resources().get("GPU", 0)) if feature_config.device != "cpu" else 0
    if feature_config.device == "cuda" and not gpus:
        raise RuntimeError("device cuda asked for, but the Ray cluster has no GPU")
    workers = num_workers or gpus or 2
    # CPU actors hold their CPUs for the whole run: leave one to the Parquet read, or the read never starts.
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": min(1.0, max(cpus - 1.0, 0.0) / workers)}
    selection = ray.put(_selection(catalog, positions))
    ds = ray.data.read_parquet(str(catalog_path), partitioning=None)
    if "target_num_rows_per_block" in inspect.signature(ds.repartition).parameters:  # streaming split (newer Ray):
        ds = ds.repartition(target_num_rows_per_block=BATCH_ROWS)  # one big file still feeds every actor
    ds = ds.map_batches(
        _EmbedActor,
        batch_size=BATCH_ROWS,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs=dict(checkpoint=str(checkpoint), root=str(catalog.root), feature_config=feature_config,
                                   embed_config=embed_config, selection=selection, use_gpu=bool(gpus)),
        **per_actor,
    )
    pids, rows, size, n = catalog.product_ids, catalog.source_rows, embed_config.shard_size, len(catalog)
    results: dict[int, tuple[int, dict[str, np.ndarray], list[int]]] = {}
    written: set[int] = set()
    shards = iter(todo)
    current = next(shards, None)
    with tqdm(total=len(positions), unit="product", desc="embed (ray)", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, p in enumerate(batch["position"].tolist()):
                if p not in results and p // size not in written:  # an identical duplicate row comes twice
                    views = [int(v) for v in str(batch["views"][i]).split(",") if v]
                    results[p] = (int(batch["num_images"][i]), {k: batch[k][i] for k in SHARD_ARRAYS}, views)
                    bar.update(1)
            while current is not None and all(p in results for p in range(current * size, min(current * size + size, n))):
                s, e = current * size, min(current * size + size, n)
                done = [results.pop(p) for p in range(s, e)]
                vectors = {k: np.stack([d[1][k] for d in done]).astype(np.float16 if k == PATCHES else np.float32)
                           for k in SHARD_ARRAYS}
                write_embedding_shard(out_dir, current, vectors, shard_meta(pids[s:e], rows[s:e], [d[0] for d in done],
                                                                            [d[2] for d in done]))
                written.add(current)
                current = next(shards, None)
    if current is not None:
        raise RuntimeError(f"{catalog_path} changed since it was validated: shard {current}'s products never came back")


__all__ = ["RAY_MISSING", "embed_catalog_ray", "ray_plan_sha"]
