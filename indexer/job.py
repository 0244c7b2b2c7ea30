"""The nightly indexing job: catalog -> features -> vectors -> FAISS -> published version.

``build_index_version`` does a full build; ``update_index_version`` applies a
change file to the live version without re-encoding unchanged products. Both
write into a staging directory keyed by their inputs (a rerun after a kill
resumes from the finished shards) and publish through
:class:`indexer.versions.IndexDir`, so the live version keeps serving until
the new one is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fashionbert.encoder import CheckpointError, FashionBert
from fashionbert.vision import BACKBONES
from indexer.catalog import Catalog, read_catalog, validate_table
from indexer.embeddings import (
    EMB_DIR, EMB_KINDS, META_DIR, SHARD_ARRAYS, EmbedConfig, EmbeddingShards, check_feature_dim, checkpoint_sha256,
    embed_catalog, faiss_ids,
)
from indexer.feature_store import FeatureStore
from indexer.features import FeatureJobConfig, extract_catalog_features, resolve_device
from indexer.files import atomic_write, remove_leftovers, shard_name
from indexer.ids_table import IDS_FILE, build_ids_table, row_positions
from indexer.version_index import AnnConfig, build_kind_indexes, recall_queries, update_kind_indexes
from indexer.versions import IndexDir, NoIndexError

log = logging.getLogger(__name__)

INFOS_FILE = "index_infos.json"
FORMAT_VERSION = 1


class IncrementalUpdateError(RuntimeError):
    """An update cannot be applied incrementally (checkpoint or features changed): rebuild."""


@dataclass
class IndexJobConfig:
    catalog: Path
    checkpoint: Path
    out: Path
    features: Path | None = None  # precomputed features of this catalog; default: extracted into out/cache
    feature_config: FeatureJobConfig = field(default_factory=FeatureJobConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ann: AnnConfig = field(default_factory=AnnConfig)
    engine: str = "local"  # local | ray
    ray_workers: int | None = None
    device: str = "auto"
    check_images: str = "exists"
    keep_versions: int = 3
    progress: bool = True


@dataclass
class StageTiming:
    seconds: float
    items: int
    unit: str

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class BuildSummary:
    version: str
    directory: Path
    count: int
    stages: dict[str, StageTiming]
    infos: dict
    issues: int = 0

    def lines(self) -> list[str]:
        out = [f"index: published {self.version} ({self.count} products) at {self.directory}"]
        for name, t in self.stages.items():
            out.append(f"  {name:<9} {t.seconds:8.1f} s  {t.items:>8} {t.unit}  {t.rate:10.1f} {t.unit}/s")
        for kind, info in self.infos["indexes"].items():
            out.append(f"  {kind:<7} {info['factory']:<18} params={info['params']} recall@10={info['recall_at_10']:.3f}")
        return out


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_identity(path: Path) -> list[object]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def load_checkpoint(path: Path, device: str) -> tuple[FashionBert, str]:
    if not Path(path).is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    return FashionBert.from_pretrained(path, device=resolve_device(device)), checkpoint_sha256(path)


# ---------------------------------------------------------------------------- features
def cached_features(root: IndexDir, catalog: Catalog, cfg: FeatureJobConfig, progress: bool) -> tuple[FeatureStore, int]:
    """Features of ``catalog`` under ``cache/``, reusing the previous build's images that did not change."""
    config_key = _key(cfg.fingerprint_fields())
    plan_key = _key([(r.product_id, r.image_index, r.fingerprint()) for _, r in catalog.image_refs(cfg.max_images_per_product)])
    target = root.cache(f"features-{config_key}-{plan_key}")
    older = sorted((p for p in target.parent.glob(f"features-{config_key}-*") if p != target and (p / "features_info.json").is_file()),
                   key=lambda p: p.stat().st_mtime)
    reuse = FeatureStore(older[-1]) if older else None
    result = extract_catalog_features(catalog, target, cfg, progress=progress, reuse=reuse)
    for stale in older:  # keep one features directory per configuration
        shutil.rmtree(stale, ignore_errors=True)
    return FeatureStore(target), result.num_images - result.reused_images - len(result.bad_images)  # CNN passes


# ---------------------------------------------------------------------------- full build
def build_index_version(cfg: IndexJobConfig) -> BuildSummary:
    """Full build of a new version from a catalog; publishes it and switches CURRENT."""
    stages: dict[str, StageTiming] = {}
    t0 = time.perf_counter()
    model, ckpt_sha = load_checkpoint(cfg.checkpoint, cfg.device)
    catalog = read_catalog(cfg.catalog, check_images=cfg.check_images)  # type: ignore[arg-type]
    stages["catalog"] = StageTiming(time.perf_counter() - t0, len(catalog), "product")
    log.info("index: catalog %s", catalog.summary())
    root = IndexDir(cfg.out)
    staging = root.staging(_key("build", _file_identity(cfg.catalog), ckpt_sha, cfg.feature_config.fingerprint_fields(),
                                cfg.embed.fingerprint(), str(cfg.features), cfg.engine))
    remove_leftovers(staging)
    if catalog.issues:
        catalog.write_report(staging / "catalog_issues.jsonl")

    t = time.perf_counter()
    encoder = cfg.feature_config.encoder
    if cfg.features is None and encoder in BACKBONES:  # made here: refuse an encoder the checkpoint cannot read first
        check_feature_dim(model, BACKBONES[encoder], f"image encoder {encoder}")
    if cfg.engine == "ray":
        from indexer.ray_engine import embed_catalog_ray

        embed_catalog_ray(cfg.catalog, catalog, cfg.checkpoint, staging, cfg.feature_config, cfg.embed,
                          checkpoint_sha=ckpt_sha, num_workers=cfg.ray_workers, progress=cfg.progress)
        stages["embed"] = StageTiming(time.perf_counter() - t, len(catalog), "product")
        features_info = {"config": cfg.feature_config.fingerprint_fields(), "engine": "ray"}
    else:
        if cfg.features is not None:
            store, computed = FeatureStore(cfg.features), 0
        else:
            store, computed = cached_features(root, catalog, cfg.feature_config, cfg.progress)
        stages["features"] = StageTiming(time.perf_counter() - t, computed, "image")
        t = time.perf_counter()
        embed_catalog(catalog, store, model, staging, cfg.embed, checkpoint_sha=ckpt_sha, progress=cfg.progress)
        stages["embed"] = StageTiming(time.perf_counter() - t, len(catalog), "product")
        features_info = {"config": store.info.get("config"), "feature_dim": store.feature_dim, "weights": store.info.get("weights")}

    shards = EmbeddingShards.load(staging)
    ids = build_ids_table(catalog, shards.meta)
    return _finish(root, staging, ids, shards.vectors, model, cfg, ckpt_sha, features_info, stages,
                   extra={"mode": "full", "catalog": str(Path(cfg.catalog).resolve()), "issues": len(catalog.issues)})


def _finish(root, staging, ids, vectors, model, cfg, ckpt_sha, features_info, stages, extra, live=None) -> BuildSummary:
    """FAISS stage + manifest + publish (shared by full builds and updates)."""
    t = time.perf_counter()
    queries = recall_queries(model, ids, vectors["image"], cfg.ann.recall_queries, cfg.ann.seed)
    if live is None:
        kinds = build_kind_indexes(staging, ids, vectors, queries, cfg.ann)
    else:
        kinds = update_kind_indexes(live["dir"], staging, live["infos"]["indexes"], ids, vectors,
                                    live["new_rows"], live["gone_ids"], queries, cfg.ann)
    stages["faiss"] = StageTiming(time.perf_counter() - t, ids.num_rows, "product")
    atomic_write(staging / IDS_FILE, lambda p: pq.write_table(ids, p))
    main = kinds["product"]
    infos = {
        "format_version": FORMAT_VERSION,
        "version": None,  # filled in at publish time
        "factory": main.factory,
        "params": main.params,
        "count": main.count,
        "dim": main.dim,
        "metric": "inner_product",
        "recall_at_10": main.recall_at_10,
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "checkpoint_sha256": ckpt_sha,
        "build_seconds": round(sum(s.seconds for s in stages.values()), 2),
        "gpu": _faiss_gpus() > 0 and cfg.ann.use_gpu is not False,
        "product_vectors": cfg.embed.spec.to_dict(),
        "embed": cfg.embed.fingerprint(),
        "features": features_info,
        "indexes": {k: v.to_dict() for k, v in kinds.items()},
        "stages": {k: {"seconds": round(v.seconds, 2), "items": v.items, "unit": v.unit, "per_second": round(v.rate, 2)}
                   for k, v in stages.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    version = root.next_version()
    infos["version"] = version
    atomic_write(staging / INFOS_FILE, lambda p: p.write_text(json.dumps(infos, indent=2, ensure_ascii=False)))
    published = root.publish(staging)
    if published != version:  # another build published meanwhile: keep the manifest truthful
        infos["version"] = published
        atomic_write(root.root / published / INFOS_FILE, lambda p: p.write_text(json.dumps(infos, indent=2, ensure_ascii=False)))
    root.prune(cfg.keep_versions)
    return BuildSummary(published, root.root / published, ids.num_rows, stages, infos)


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


# ---------------------------------------------------------------------------- incremental
@dataclass
class Changes:
    upserts: Catalog | None
    deletes: list[str]


def read_changes(path: Path, check_images: str = "exists") -> Changes:
    """A change file: catalog rows to add or replace, and rows with ``op == "delete"`` (only ``product_id`` needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"change file not found: {path}")
    table = pq.read_table(path)
    if "product_id" not in table.column_names:
        raise ValueError(f"{path}: a change file needs a product_id column")
    deletes: list[str] = []
    if "op" in table.column_names:
        ops = pc.fill_null(table.column("op"), "upsert")
        bad = set(ops.to_pylist()) - {"upsert", "delete"}
        if bad:
            raise ValueError(f"{path}: op must be 'upsert' or 'delete', found {sorted(map(str, bad))}")
        is_delete = pc.equal(ops, "delete")
        deletes = [p for p in table.filter(is_delete).column("product_id").to_pylist() if p]
        table = table.filter(pc.invert(is_delete)).drop_columns(["op"])
    upserts = None
    if table.num_rows:
        upserts = validate_table(table, path.resolve().parent, name=str(path), check_images=check_images)  # type: ignore[arg-type]
    return Changes(upserts, deletes)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)  # versions share immutable shards: no copy, no extra disk
    except OSError:
        shutil.copy2(src, dst)


def gather_vectors(directory: Path, ids: pa.Table, kinds=EMB_KINDS) -> dict[str, np.ndarray]:
    """The vectors of ``ids``'s rows, read from the shards they point at (memory-mapped)."""
    shard, offset = row_positions(ids)
    out = {}
    for kind in kinds:
        arrays = {int(k): np.load(directory / EMB_DIR / kind / f"{shard_name(int(k))}.npy", mmap_mode="r") for k in np.unique(shard)}
        dim = next(iter(arrays.values())).shape[1] if arrays else 0
        out[kind] = np.zeros((len(shard), dim), np.float32)
        for k, arr in arrays.items():
            out[kind][shard == k] = arr[offset[shard == k]]
    return out


def update_index_version(cfg: IndexJobConfig, changes_path: Path) -> BuildSummary:
    """Apply a change file to the live version: new version, no re-encoding of unchanged products."""
    stages: dict[str, StageTiming] = {}
    root = IndexDir(cfg.out)
    try:
        live_dir = root.current_path()
    except NoIndexError as exc:
        raise IncrementalUpdateError(f"{exc}; an update needs a published version: run a full build first") from exc
    live_infos = json.loads((live_dir / INFOS_FILE).read_text())
    model, ckpt_sha = load_checkpoint(cfg.checkpoint, cfg.device)
    if ckpt_sha != live_infos["checkpoint_sha256"]:
        raise IncrementalUpdateError(
            f"the checkpoint changed since {live_dir.name} (sha256 {live_infos['checkpoint_sha256'][:12]} -> {ckpt_sha[:12]}): "
            "vectors of two models cannot share an index; run with --rebuild"
        )
    t = time.perf_counter()
    changes = read_changes(changes_path, cfg.check_images)
    staging = root.staging(_key("update", live_dir.name, _file_identity(Path(changes_path)), ckpt_sha))
    remove_leftovers(staging)
    old_ids = pq.read_table(live_dir / IDS_FILE)
    upsert_ids = changes.upserts.product_ids if changes.upserts is not None else []
    known = set(old_ids.column("product_id").to_pylist())
    missing_deletes = sorted(set(changes.deletes) - known)
    gone = set(changes.deletes) | set(upsert_ids)
    stages["changes"] = StageTiming(time.perf_counter() - t, len(upsert_ids) + len(changes.deletes), "change")

    # Reuse the live version's shards (hard links) and the same feature + embedding settings.
    for meta in sorted((live_dir / META_DIR).glob("part-*.parquet")):
        for kind in SHARD_ARRAYS:
            name = f"{meta.stem}.npy"
            _link_or_copy(live_dir / EMB_DIR / kind / name, staging / EMB_DIR / kind / name)
        _link_or_copy(meta, staging / META_DIR / meta.name)
    first_new_shard = int(row_positions(old_ids)[0].max()) + 1 if old_ids.num_rows else 0
    keep_mask = pc.invert(pc.is_in(old_ids.column("product_id"), pa.array(sorted(gone), pa.string())))
    kept = old_ids.filter(keep_mask)
    embed_cfg = EmbedConfig(**{**asdict(cfg.embed), "spec": _spec_of(live_infos)})
    new_table = None
    if changes.upserts is not None:
        t = time.perf_counter()
        feature_cfg = FeatureJobConfig(**{**asdict(cfg.feature_config), **(live_infos["features"].get("config") or {})})
        store, computed = cached_features(root, changes.upserts, feature_cfg, cfg.progress)
        stages["features"] = StageTiming(time.perf_counter() - t, computed, "image")
        t = time.perf_counter()
        delta = staging / "delta"
        embed_catalog(changes.upserts, store, model, delta, embed_cfg, checkpoint_sha=ckpt_sha, progress=cfg.progress)
        shards = EmbeddingShards.load(delta)
        for meta in sorted((delta / META_DIR).glob("part-*.parquet")):
            k = first_new_shard + int(meta.stem.split("-")[1])
            for kind in SHARD_ARRAYS:
                os.replace(delta / EMB_DIR / kind / f"{meta.stem}.npy", staging / EMB_DIR / kind / f"{shard_name(k)}.npy")
            os.replace(meta, staging / META_DIR / f"{shard_name(k)}.parquet")
        shutil.rmtree(delta, ignore_errors=True)
        meta = shards.meta.set_column(shards.meta.schema.get_field_index("shard"), "shard",
                                      pc.add(shards.meta.column("shard"), first_new_shard).cast(pa.int32()))
        new_table = build_ids_table(changes.upserts, meta)
        stages["embed"] = StageTiming(time.perf_counter() - t, len(upsert_ids), "product")
    ids = pa.concat_tables([kept, new_table], promote_options="permissive") if new_table is not None else kept
    vectors = gather_vectors(staging, ids)
    new_rows = np.arange(kept.num_rows, ids.num_rows)
    gone_ids = np.intersect1d(faiss_ids(sorted(gone)), np.asarray(old_ids.column("faiss_id").to_numpy(), np.int64))
    live = {"dir": live_dir, "infos": live_infos, "new_rows": new_rows, "gone_ids": gone_ids}
    cfg_same = replace(cfg, embed=embed_cfg)
    extra = {
        "mode": "update", "parent": live_dir.name, "changes": str(Path(changes_path).resolve()),
        "added": len(set(upsert_ids) - known), "replaced": len(set(upsert_ids) & known),
        "removed": len(set(changes.deletes) & known), "missing_deletes": missing_deletes,
        "issues": len(changes.upserts.issues) if changes.upserts is not None else 0,
        "catalog": live_infos.get("catalog"),
    }
    return _finish(root, staging, ids, vectors, model, cfg_same, ckpt_sha, live_infos["features"], stages, extra, live)


def _spec_of(infos: dict):
    from fashionbert.product_vectors import ProductVectorSpec

    spec = dict(infos["product_vectors"])
    spec.pop("name", None)
    return ProductVectorSpec(**spec)
