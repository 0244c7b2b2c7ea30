"""The index ``bench/search.py`` serves: a small real build, expanded to N products.

1. **Base** (cached under ``WORK/base``): ``generate_catalog`` of ``--base-products`` products,
   a random-init checkpoint of a named config (a WordPiece tokenizer trained on the catalog
   texts, the real config shape, the default image encoder's patch width) and a real index built by
   ``indexer.job.build_index_version`` (the default grid features, joint product
   vectors, FAISS, publish). Latency does not depend on training, so random weights are fine.
2. **Expanded** (cached under ``WORK/index-N``): a new published version in its own INDEX_DIR
   holding N products in the real layout, for what a 100k build would cost hours to make on a
   2-core CPU:

   * ``ids.parquet``: the base rows replicated (copy 0 keeps the base ids, copy j > 0 gets
     ``<id>~j``), every other column kept (``image_paths`` point at the base images), with
     ``faiss_id``/``shard``/``offset`` of the new layout;
   * ``emb/{product,image,title}/part-NNNNN.npy``: base vectors + Gaussian jitter,
     re-normalised (``normalise(v + sigma * g / sqrt(d))``, sigma in {0.05, 0.1, 0.2}, as in
     bench/ann.py; image vectors of products without an image stay zero); copy 0 is exact;
   * ``emb/patches/part-NNNNN.npy``: float16 [n, 64, D] re-ranker features as **sparse** files
     (``.npy`` header, then truncated to full size): 16 GB at 100k that take no disk; reads
     return zeros, which cost the cross-encoder exactly the same compute as real features;
   * ``meta/part-NNNNN.parquet``, ``embed_info.json``;
   * FAISS indexes from ``indexer.version_index.build_kind_indexes`` (factory ``auto``, tuned
     on encoded catalog queries, exactly as a real build) and an ``index_infos.json`` with
     the keys of a real build (the base's, with version/count/indexes updated).

    python bench/search_expand.py --products 100000     # only build (or reuse) the index
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EXPAND_FORMAT = 1  # bump when the expansion changes, so a cached index is rebuilt
SIGMAS = (0.05, 0.1, 0.2)


@dataclass
class BenchIndex:
    catalog: Path  # the base catalog (images, queries)
    checkpoint: Path
    base_dir: Path  # the base INDEX_DIR
    index_dir: Path  # the expanded INDEX_DIR (what the server serves)
    version_path: Path  # its live version
    infos: dict
    built_seconds: float  # 0 when reused
    sparse: dict  # apparent vs allocated bytes of the patch shards


def _log(msg: str) -> None:
    print(f"[search-bench] {msg}", flush=True)


# ---------------------------------------------------------------------------- base
def build_base(work: Path, products: int, config: str, seed: int) -> tuple[Path, Path, Path]:
    """(catalog, checkpoint, base INDEX_DIR), built once and reused."""
    import torch

    from fashionbert.configuration import named_config
    from fashionbert.encoder import FashionBert
    from fashionbert.modeling import FashionBertModel
    from fashionbert.synthetic import generate_catalog
    from fashionbert.text import train_tokenizer
    from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER
    from indexer.catalog import read_catalog
    from indexer.job import IndexJobConfig, build_index_version
    from indexer.versions import IndexDir

    base = work / f"base-{products}-{config}-s{seed}"
    catalog = base / "data" / "catalog.parquet"
    if not catalog.is_file():
        _log(f"generating a synthetic catalog of {products} products")
        generate_catalog(base / "data", products, seed=seed, progress=False)
    ckpt = base / "ckpt"
    if not (ckpt / "model.safetensors").is_file():
        _log(f"random-init {config} checkpoint (tokenizer trained on the catalog texts)")
        tokenizer = train_tokenizer(read_catalog(catalog, check_images="none").texts())
        torch.manual_seed(seed)
        model = FashionBertModel(named_config(config, tokenizer, patch_feature_dim=BACKBONES[DEFAULT_IMAGE_ENCODER],
                                             image_encoder=DEFAULT_IMAGE_ENCODER))
        FashionBert(model, tokenizer).save_pretrained(ckpt)
    index = base / "index"
    if IndexDir(index).current() is None:
        _log(f"building the base index with the real job ({DEFAULT_IMAGE_ENCODER} grid features)")
        t = time.perf_counter()
        build_index_version(IndexJobConfig(catalog=catalog, checkpoint=ckpt, out=index, device="cpu", progress=False))
        _log(f"base index built in {time.perf_counter() - t:.1f} s")
    return catalog, ckpt, index


# ---------------------------------------------------------------------------- expansion
def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _jitter(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.choice(SIGMAS, size=(len(v), 1)).astype(np.float32)
    return _normalise(v + sigma * rng.standard_normal(v.shape, dtype=np.float32) / np.sqrt(v.shape[1]))


def write_sparse_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """A valid ``.npy`` of ``shape`` whose data is a hole (reads as zeros, takes no disk); returns its size."""
    from numpy.lib import format as npf

    dtype = np.dtype(dtype)
    with path.open("wb") as fh:
        npf.write_array_header_1_0(fh, {"descr": npf.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        size = fh.tell() + int(np.prod(shape)) * dtype.itemsize
        fh.truncate(size)
    return size


def _allocated(paths: list[Path]) -> tuple[int, int]:
    apparent = sum(p.stat().st_size for p in paths)
    allocated = sum(p.stat().st_blocks * 512 for p in paths)
    return apparent, allocated


def _needed_bytes(n: int, dim: int) -> int:
    """Real (non-sparse) bytes the expansion writes: 3 vector kinds + 3 Flat-sized indexes + ids, with slack."""
    return int(n * dim * 4 * 6 * 1.3 + n * 2000)


def expand(base_index: Path, catalog: Path, checkpoint: Path, out: Path, products: int, seed: int,
           shard_size: int = 4096) -> tuple[Path, float]:
    """Publish an N-product version of ``base_index`` into ``out``; returns (version path, seconds)."""
    from fashionbert.encoder import FashionBert
    from indexer.embeddings import EMB_DIR, EMB_KINDS, EMBED_INFO, META_DIR, PATCHES, faiss_ids, shard_meta
    from indexer.files import save_npy, shard_name
    from indexer.ids_table import IDS_FILE
    from indexer.job import INFOS_FILE
    from indexer.version_index import AnnConfig, build_kind_indexes, recall_queries
    from indexer.versions import IndexDir

    t0 = time.perf_counter()
    src = IndexDir(base_index).current_path()
    base_infos = json.loads((src / INFOS_FILE).read_text())
    base_ids = pq.read_table(src / IDS_FILE)
    nb = base_ids.num_rows
    shard0 = np.asarray(base_ids.column("shard").to_numpy(), np.int64)
    offset0 = np.asarray(base_ids.column("offset").to_numpy(), np.int64)
    base_vecs: dict[str, np.ndarray] = {}
    for kind in EMB_KINDS:
        arrays = {int(k): np.load(src / EMB_DIR / kind / f"{shard_name(int(k))}.npy") for k in np.unique(shard0)}
        base_vecs[kind] = np.stack([arrays[int(s)][int(o)] for s, o in zip(shard0, offset0)]).astype(np.float32)
    patch_shape = np.load(src / EMB_DIR / PATCHES / f"{shard_name(int(shard0[0]))}.npy", mmap_mode="r").shape[1:]
    dim = base_vecs["product"].shape[1]

    free = shutil.disk_usage(out.parent).free
    need = _needed_bytes(products, dim)
    _log(f"df {out.parent}: {free / 2**30:.1f} GiB free; the expansion writes ~{need / 2**30:.2f} GiB "
         f"(+ {products * int(np.prod(patch_shape)) * 2 / 2**30:.1f} GiB of sparse patch files, no disk)")
    if free < need:
        raise SystemExit(f"not enough disk under {out.parent}: {free:,} bytes free, need ~{need:,}")

    shutil.rmtree(out, ignore_errors=True)
    root = IndexDir(out)
    staging = root.staging(f"expand-{products}")
    rng = np.random.default_rng(seed)

    # ids.parquet: base rows replicated, new unique ids, every other column kept.
    src_row = np.arange(products) % nb
    copy = np.arange(products) // nb
    base_pids = base_ids.column("product_id").to_pylist()
    pids = [base_pids[r] if c == 0 else f"{base_pids[r]}~{c}" for r, c in zip(src_row, copy)]
    ids = base_ids.take(pa.array(src_row))
    has_image = np.asarray(ids.column("has_image").to_numpy(zero_copy_only=False), bool)
    num_images = np.asarray(ids.column("num_images").to_numpy(), np.int32)
    new_cols = {
        "product_id": pa.array(pids, pa.string()),
        "faiss_id": pa.array(faiss_ids(pids), pa.int64()),
        "shard": pa.array((np.arange(products) // shard_size).astype(np.int32)),
        "offset": pa.array((np.arange(products) % shard_size).astype(np.int64)),
    }
    for name, values in new_cols.items():
        i = ids.schema.get_field_index(name)
        ids = ids.set_column(i, pa.field(name, ids.schema.field(name).type), values.cast(ids.schema.field(name).type))

    # Vectors: base + jitter, re-normalised (copy 0 exact); zero image vectors stay zero.
    vectors: dict[str, np.ndarray] = {}
    for kind in EMB_KINDS:
        v = base_vecs[kind][src_row]
        jit = copy > 0
        if kind == "image":
            jit &= has_image
        v[jit] = _jitter(v[jit], rng)
        if kind == "image":
            v[~has_image] = 0.0
        vectors[kind] = np.ascontiguousarray(v, np.float32)

    patch_files = []
    for k, s in enumerate(range(0, products, shard_size)):
        e = min(s + shard_size, products)
        for kind in EMB_KINDS:
            (staging / EMB_DIR / kind).mkdir(parents=True, exist_ok=True)
            save_npy(staging / EMB_DIR / kind / f"{shard_name(k)}.npy", vectors[kind][s:e])
        (staging / EMB_DIR / PATCHES).mkdir(parents=True, exist_ok=True)
        patch_files.append(staging / EMB_DIR / PATCHES / f"{shard_name(k)}.npy")
        write_sparse_npy(patch_files[-1], (e - s, *patch_shape), np.float16)
        (staging / META_DIR).mkdir(parents=True, exist_ok=True)
        pq.write_table(shard_meta(pids[s:e], list(range(s, e)), num_images[s:e].tolist()),
                       staging / META_DIR / f"{shard_name(k)}.parquet")
    if (src / EMBED_INFO).is_file():
        info = json.loads((src / EMBED_INFO).read_text())
        info.update(count=products, plan_sha256=f"bench-expand-{EXPAND_FORMAT}-{products}-{seed}")
        info["config"]["shard_size"] = shard_size
        (staging / EMBED_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False))
    _log(f"wrote {(products + shard_size - 1) // shard_size} shards of {products:,} products "
         f"in {time.perf_counter() - t0:.1f} s; building FAISS indexes")

    # FAISS: the real stage (factory auto, tuned on encoded catalog queries).
    t = time.perf_counter()
    model = FashionBert.from_pretrained(checkpoint)
    ann = AnnConfig()
    queries = recall_queries(model, ids, vectors["image"], ann.recall_queries, ann.seed)
    kinds = build_kind_indexes(staging, ids, vectors, queries, ann)
    faiss_s = time.perf_counter() - t
    pq.write_table(ids, staging / IDS_FILE)

    main = kinds["product"]
    infos = dict(base_infos)
    infos.update(
        version=root.next_version(), factory=main.factory, params=main.params, count=main.count, dim=main.dim,
        recall_at_10=main.recall_at_10, indexes={k: v.to_dict() for k, v in kinds.items()},
        build_seconds=round(time.perf_counter() - t0, 2), mode=f"bench-expand x{products / nb:.0f} of {src}",
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        embed={**base_infos.get("embed", {}), "shard_size": shard_size},
        stages={**base_infos.get("stages", {}),
                "faiss": {"seconds": round(faiss_s, 2), "items": products, "unit": "product",
                          "per_second": round(products / faiss_s, 2)}},
    )
    assert set(infos) == set(base_infos), "index_infos.json must keep the keys of a real build"
    (staging / INFOS_FILE).write_text(json.dumps(infos, indent=2, ensure_ascii=False))
    (staging / "bench_expand.json").write_text(json.dumps({
        "format": EXPAND_FORMAT, "products": products, "seed": seed, "base_version": str(src),
        "base_checkpoint_sha256": base_infos.get("checkpoint_sha256"), "checkpoint": str(Path(checkpoint).resolve()),
    }))
    published = root.publish(staging)
    return out / published, time.perf_counter() - t0


def _cached(out: Path, products: int, seed: int, base_index: Path) -> Path | None:
    from indexer.job import INFOS_FILE
    from indexer.versions import IndexDir

    try:
        path = IndexDir(out).current_path()
        mark = json.loads((path / "bench_expand.json").read_text())
        base_sha = json.loads((IndexDir(base_index).current_path() / INFOS_FILE).read_text()).get("checkpoint_sha256")
    except (OSError, ValueError):
        return None
    ok = (mark.get("format") == EXPAND_FORMAT and mark.get("products") == products and mark.get("seed") == seed
          and mark.get("base_checkpoint_sha256") == base_sha)
    return path if ok else None


def bench_index(work: Path, products: int, base_products: int = 200, config: str = "tiny", seed: int = 0) -> BenchIndex:
    """Build (or reuse) the base and its expansion to ``products``."""
    from indexer.embeddings import EMB_DIR, PATCHES
    from indexer.job import INFOS_FILE

    work.mkdir(parents=True, exist_ok=True)
    catalog, ckpt, base_index = build_base(work, base_products, config, seed)
    out = work / f"index-{products}-{config}-s{seed}"
    version = _cached(out, products, seed, base_index)
    seconds = 0.0
    if version is None:
        version, seconds = expand(base_index, catalog, ckpt, out, products, seed)
        _log(f"published {version} in {seconds:.1f} s")
    else:
        _log(f"reusing {version}")
    apparent, allocated = _allocated(sorted((version / EMB_DIR / PATCHES).glob("*.npy")))
    return BenchIndex(catalog, ckpt, base_index, out, version, json.loads((version / INFOS_FILE).read_text()), seconds,
                      {"apparent_bytes": apparent, "allocated_bytes": allocated})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--base-products", type=int, default=200)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fashionbert-bench-search"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bi = bench_index(args.workdir, args.products, args.base_products, args.config, args.seed)
    for kind, info in bi.infos["indexes"].items():
        print(f"{kind:<8} {info['factory']:<20} {info['count']:>9,} x {info['dim']}  params={info['params']}  "
              f"recall@10={info['recall_at_10']:.3f}")
    print(f"patch shards: {bi.sparse['apparent_bytes'] / 2**30:.2f} GiB apparent, "
          f"{bi.sparse['allocated_bytes'] / 2**20:.1f} MiB on disk (sparse)")
    print(f"INDEX_DIR={bi.index_dir}")


if __name__ == "__main__":
    main()
