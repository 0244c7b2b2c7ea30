"""Embedding stage: catalog rows + patch features -> row-aligned vector shards.

Layout (clip-retrieval's, so embedding-reader / autofaiss can read it)::

    emb/product/part-00000.npy   float32 [n, d]  the vector the index serves (joint or combo)
    emb/image/part-00000.npy     float32 [n, d]  image-only (mean of the views; zeros without image)
    emb/title/part-00000.npy     float32 [n, d]  title-only (segment T)
    emb/patches/part-00000.npy   float16 [n, 64, D] the first view's patch features (zeros without
                                 image): what the search API's cross-encoder re-ranker reads
    meta/part-00000.parquet      product_id, faiss_id, catalog_row, has_image, num_images, views
    embed_info.json              what the numbers depend on (checkpoint hash, spec, features)

One product is one row in every file of a shard. The meta file is written last
and marks the shard finished, so a killed job resumes at the first shard
without one. :func:`encode_batch` is the whole computation for a batch of
products; the local engine (here) and the Ray engine (:mod:`indexer.ray_engine`)
both call it, which is why they produce the same vectors.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from fashionbert.encoder import FashionBert
from fashionbert.product_vectors import PRESETS, ProductVectorSpec, combine, normalise
from indexer.catalog import Catalog
from indexer.feature_store import FeatureStore
from indexer.files import atomic_write, save_npy, shard_name

EMB_KINDS: tuple[str, ...] = ("product", "image", "title")
PATCHES = "patches"
# Every row-aligned array of a shard: the three vector kinds and the re-ranker's patch features.
# The features cache is per configuration and is pruned by later builds, so a version keeps its
# own copy of what it needs to serve (memory-mapped by the API; hard-linked across updates).
SHARD_ARRAYS: tuple[str, ...] = (*EMB_KINDS, PATCHES)
EMBED_INFO = "embed_info.json"
META_DIR = "meta"
EMB_DIR = "emb"


class FeatureDimMismatchError(ValueError):
    """The patch features were made by another image encoder than the checkpoint was trained on."""


def check_feature_dim(model: FashionBert, feature_dim: int, made_with: str) -> None:
    """Refuse features a checkpoint cannot read before any work is spent on them, and say which encoder fits."""
    want = model.config.patch_feature_dim
    if int(feature_dim) != want:
        raise FeatureDimMismatchError(
            f"the checkpoint reads {want}-d patch features ({getattr(model.config, 'image_encoder', '?')}), "
            f"but {made_with} gives {feature_dim}-d: extract with the encoder the checkpoint was trained on")


class EmbedDirMismatchError(RuntimeError):
    """The staging directory holds vectors of another catalog, checkpoint or spec."""


def faiss_id(product_id: str) -> int:
    """Stable non-negative 63-bit id of a product id: the same in every version, no id table to keep."""
    digest = hashlib.blake2b(product_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def faiss_ids(product_ids: Sequence[str]) -> np.ndarray:
    ids = np.fromiter((faiss_id(p) for p in product_ids), np.int64, len(product_ids))
    if len(np.unique(ids)) != len(ids):  # 2^-63 per pair; checked anyway because silence would be wrong
        raise ValueError("two product ids hash to the same faiss id; rename one of them")
    return ids


def checkpoint_sha256(directory: str | Path) -> str:
    """Hash of everything that changes a checkpoint's vectors: weights, config, tokenizer."""
    directory = Path(directory)
    h = hashlib.sha256()
    names = ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"]
    for name in names:
        path = directory / name
        if not path.is_file():
            continue
        h.update(name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def product_texts(catalog: Catalog) -> list[list[str]]:
    """Each product's texts in the order the combination takes them: titles, then the description."""
    names = catalog.table.column_names
    columns = [catalog.table.column(n).to_pylist() for n in (*catalog.title_columns, "description") if n in names]
    out: list[list[str]] = []
    for values in zip(*columns):
        seen: list[str] = []
        for v in values:
            if isinstance(v, str) and v.strip() and v.strip() not in seen:
                seen.append(v.strip())
        out.append(seen)
    return out


@dataclass(frozen=True)
class EmbedConfig:
    spec: ProductVectorSpec = PRESETS["joint"]
    max_views: int = 4  # views averaged into the image-only vector
    batch_size: int = 64  # products per model call
    shard_size: int = 4096  # products per shard

    def fingerprint(self) -> dict[str, object]:
        return {"spec": self.spec.to_dict(), "max_views": self.max_views, "shard_size": self.shard_size,
                "arrays": list(SHARD_ARRAYS)}


@dataclass
class EmbedResult:
    directory: Path
    count: int
    dim: int
    num_shards: int
    computed_shards: int
    seconds: float
    with_image: int

    @property
    def products_per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")


def encode_batch(
    model: FashionBert,
    titles: Sequence[str],
    texts: Sequence[Sequence[str]],
    views: Sequence[np.ndarray | None],
    spec: ProductVectorSpec,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Vectors of a batch of products: ``views[i]`` is [n_views, 64, D] patch features or None.

    A product without a readable image is still indexed: its product vector falls back
    to its text side and its image vector is zero (never matched: the image index skips it).
    ``patches`` is each product's first view as float16 (zeros without an image).
    """
    n = len(titles)
    dim = model.config.itc_dim
    patches = np.zeros((n, model.config.num_patches, model.config.patch_feature_dim), np.float16)
    for i, v in enumerate(views):
        if v is not None and len(v) > 0:
            patches[i] = v[0]
    title_vecs = model.encode_text(list(titles), segment="T", batch_size=batch_size)
    with_img = [i for i in range(n) if views[i] is not None and len(views[i]) > 0]  # type: ignore[arg-type]
    flat = [v for i in with_img for v in views[i]]  # type: ignore[union-attr]
    view_vecs = model.encode_images(np.stack(flat), batch_size=batch_size) if flat else np.zeros((0, dim), np.float32)
    per_product: dict[int, np.ndarray] = {}
    pos = 0
    for i in with_img:
        k = len(views[i])  # type: ignore[arg-type]
        per_product[i] = view_vecs[pos : pos + k]
        pos += k
    image = np.zeros((n, dim), np.float32)
    for i, vecs in per_product.items():
        image[i] = normalise(vecs.mean(axis=0))
    if spec.method == "joint":
        product = title_vecs.copy()
        if with_img:
            first = np.stack([views[i][0] for i in with_img])  # type: ignore[index]
            product[with_img] = model.encode_products([titles[i] for i in with_img], first, batch_size=batch_size)
    else:
        wanted = [list(t[: spec.texts]) or [titles[i]] for i, t in enumerate(texts)]
        text_flat = [t for ts in wanted for t in ts]
        text_vecs = model.encode_text(text_flat, segment="T", batch_size=batch_size) if text_flat else np.zeros((0, dim), np.float32)
        product = np.zeros((n, dim), np.float32)
        pos = 0
        for i, ts in enumerate(wanted):
            tv = text_vecs[pos : pos + len(ts)]
            pos += len(ts)
            product[i] = combine(list(per_product.get(i, ())), list(tv), spec)
    return {"product": product.astype(np.float32), "image": image, "title": title_vecs.astype(np.float32), PATCHES: patches}


def _plan_sha(catalog: Catalog, store: FeatureStore, max_views: int) -> str:
    """What the vectors depend on in the data: ids, texts and which views have features."""
    h = hashlib.sha256()
    texts = product_texts(catalog)
    for pid, ts in zip(catalog.product_ids, texts):
        h.update(json.dumps([pid, ts, store.image_indices(pid)[:max_views]], ensure_ascii=False).encode())
    h.update(json.dumps(store.info.get("config"), sort_keys=True).encode())
    h.update(str(store.info.get("plan_sha256")).encode())
    return h.hexdigest()


def _prepare(out_dir: Path, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / EMBED_INFO
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in ("checkpoint_sha256", "config", "plan_sha256")} != {
            k: info[k] for k in ("checkpoint_sha256", "config", "plan_sha256")
        }:
            raise EmbedDirMismatchError(f"{out_dir} holds vectors of another catalog, checkpoint or spec")
        return
    atomic_write(path, lambda p: p.write_text(json.dumps(info, indent=2, ensure_ascii=False)))


def shard_finished(out_dir: Path, k: int) -> bool:
    return (out_dir / META_DIR / f"{shard_name(k)}.parquet").is_file()


def write_embedding_shard(out_dir: Path, k: int, vectors: dict[str, np.ndarray], meta: pa.Table) -> None:
    """Arrays first, the meta file last: its presence means the shard is complete."""
    for kind in SHARD_ARRAYS:
        (out_dir / EMB_DIR / kind).mkdir(parents=True, exist_ok=True)
        save_npy(out_dir / EMB_DIR / kind / f"{shard_name(k)}.npy", vectors[kind])
    (out_dir / META_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / META_DIR / f"{shard_name(k)}.parquet", lambda p: pq.write_table(meta, p))


def shard_meta(product_ids: Sequence[str], catalog_rows: Sequence[int], num_images: Sequence[int],
               views: Sequence[Sequence[int]] | None = None) -> pa.Table:
    """``views``: each product's image indices that were encoded, in order (the first is the one
    whose patch features the re-ranker reads); default ``0..num_images-1``."""
    if views is None:
        views = [list(range(n)) for n in num_images]
    return pa.table({
        "product_id": pa.array(list(product_ids), pa.string()),
        "faiss_id": pa.array(faiss_ids(product_ids), pa.int64()),
        "catalog_row": pa.array(list(catalog_rows), pa.int64()),
        "has_image": pa.array([n > 0 for n in num_images], pa.bool_()),
        "num_images": pa.array(list(num_images), pa.int32()),
        "views": pa.array([list(v) for v in views], pa.list_(pa.int32())),
    })


def embed_catalog(
    catalog: Catalog,
    store: FeatureStore,
    model: FashionBert,
    out_dir: str | Path,
    config: EmbedConfig = EmbedConfig(),
    *,
    checkpoint_sha: str = "",
    progress: bool = True,
    stop_after_shards: int | None = None,
) -> EmbedResult:
    """Encode every product of ``catalog`` into shards under ``out_dir`` (resumable per shard)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_feature_dim(model, store.feature_dim, f"features {store.directory} ({(store.info.get('config') or {}).get('encoder', '?')})")
    info = {
        "checkpoint_sha256": checkpoint_sha,
        "config": config.fingerprint(),
        "plan_sha256": _plan_sha(catalog, store, config.max_views),
        "dim": model.config.itc_dim,
        "count": len(catalog),
        "features": {"config": store.info.get("config"), "feature_dim": store.feature_dim},
    }
    _prepare(out_dir, info)
    texts = product_texts(catalog)
    titles = catalog.table.column("title").to_pylist()
    pids = catalog.product_ids
    n_shards = (len(catalog) + config.shard_size - 1) // config.shard_size
    todo = [k for k in range(n_shards) if not shard_finished(out_dir, k)]
    if stop_after_shards is not None:
        todo = todo[:stop_after_shards]
    total = sum(min(config.shard_size, len(catalog) - k * config.shard_size) for k in todo)
    with tqdm(total=total, unit="product", desc="embed", disable=not progress) as bar:
        for k in todo:
            s, e = k * config.shard_size, min((k + 1) * config.shard_size, len(catalog))
            parts: dict[str, list[np.ndarray]] = {kind: [] for kind in SHARD_ARRAYS}
            n_views: list[int] = []
            for b in range(s, e, config.batch_size):
                rows = range(b, min(b + config.batch_size, e))
                views = [store.views(pids[r], config.max_views) for r in rows]
                n_views.extend(0 if v is None else len(v) for v in views)
                vecs = encode_batch(model, [titles[r] for r in rows], [texts[r] for r in rows], views, config.spec, config.batch_size)
                for kind in SHARD_ARRAYS:
                    parts[kind].append(vecs[kind])
                bar.update(len(rows))
            meta = shard_meta(pids[s:e], [catalog.source_rows[r] for r in range(s, e)], n_views,
                              [store.image_indices(pids[r])[: config.max_views] for r in range(s, e)])
            write_embedding_shard(out_dir, k, {kind: np.concatenate(parts[kind]) for kind in SHARD_ARRAYS}, meta)
    return EmbedResult(
        out_dir, len(catalog), model.config.itc_dim, n_shards, len(todo), time.perf_counter() - start,
        with_image=sum(1 for p in pids if store.image_indices(p)),
    )


@dataclass
class EmbeddingShards:
    """All finished shards of a directory, loaded (vectors are small: 1 KiB per product and kind)."""

    meta: pa.Table
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path, kinds: Sequence[str] = EMB_KINDS,
             keep: Callable[[int], bool] | None = None) -> EmbeddingShards:
        directory = Path(directory)
        metas, vecs = [], {kind: [] for kind in kinds}
        for path in sorted((directory / META_DIR).glob("part-*.parquet")):
            k = int(path.stem.split("-")[1])
            if keep is not None and not keep(k):
                continue
            meta = pq.read_table(path)
            metas.append(meta.append_column("shard", pa.array(np.full(meta.num_rows, k, np.int32)))
                         .append_column("offset", pa.array(np.arange(meta.num_rows, dtype=np.int64))))
            for kind in kinds:
                vecs[kind].append(np.load(directory / EMB_DIR / kind / f"{path.stem}.npy"))
        if not metas:
            raise FileNotFoundError(f"no finished embedding shards under {directory}")
        return cls(pa.concat_tables(metas), {kind: np.concatenate(v) for kind, v in vecs.items()})
