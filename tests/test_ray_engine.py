"""The Ray Data engine writes the same embedding shards as the local engine (and resumes like it)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning")  # Ray Data's own context fields

import torch  # noqa: E402

from fashionbert.configuration import named_config  # noqa: E402
from fashionbert.encoder import FashionBert  # noqa: E402
from fashionbert.modeling import FashionBertModel  # noqa: E402
from fashionbert.product_vectors import PRESETS  # noqa: E402
from fashionbert.synthetic import generate_catalog  # noqa: E402
from fashionbert.text import train_tokenizer  # noqa: E402
from indexer import ray_engine  # noqa: E402
from indexer.catalog import read_catalog  # noqa: E402
from indexer.embeddings import EMB_KINDS, PATCHES, EMBED_INFO, EmbedConfig, checkpoint_sha256, embed_catalog  # noqa: E402
from indexer.feature_store import FeatureStore  # noqa: E402
from indexer.features import FeatureJobConfig, extract_catalog_features  # noqa: E402
from indexer.ray_engine import embed_catalog_ray  # noqa: E402
from fashionbert.vision import BACKBONES  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, itc_dim=32)
# Small grid cells (128 px images) keep the CNN cheap; 3 planned images, 2 views per product.
FEATURES = FeatureJobConfig(cell_size=16, batch_size=4, num_workers=0, max_images_per_product=3, device="cpu")
FEATURE_DIM = BACKBONES[FEATURES.encoder]
EMBED = EmbedConfig(max_views=2, batch_size=8, shard_size=8)
META_COLUMNS = ["product_id", "faiss_id", "catalog_row", "has_image", "num_images", "views"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_engine")
    synth = generate_catalog(root / "cat", 24, seed=3, workers=1, progress=False)
    rows = pq.read_table(synth.catalog_path).to_pylist()
    bad = b"\xff\xd8\xff not really a jpeg"
    (synth.catalog_path.parent / rows[0]["images"][1]).write_bytes(bad)  # one corrupt view next to a good one
    (synth.catalog_path.parent / rows[5]["images"][0]).write_bytes(bad)
    rows[5]["images"] = rows[5]["images"][:1]  # ... and a product whose only image is corrupt
    rows[9]["images"] = ["images/missing.jpg", *rows[9]["images"]]  # dropped by validation: indices shift
    rows.insert(12, {**rows[7], "title": "a dropped duplicate of row 7"})  # same id, other content
    rows.insert(15, {**rows[8], "product_id": "no-title", "title": " "})  # dropped: empty title
    table = pa.Table.from_pylist(rows, schema=pq.read_schema(synth.catalog_path))
    pq.write_table(table, synth.catalog_path, row_group_size=7)
    catalog = read_catalog(synth.catalog_path)
    assert len(catalog) == 24 and catalog.total_rows == 26

    torch.manual_seed(0)
    tokenizer = train_tokenizer(catalog.texts(), vocab_size=400)
    model = FashionBert(FashionBertModel(named_config("tiny", tokenizer, patch_feature_dim=FEATURE_DIM, **TINY)), tokenizer)
    ckpt = model.save_pretrained(root / "ckpt")
    sha = checkpoint_sha256(ckpt)

    extract_catalog_features(catalog, root / "features", FEATURES, progress=False)
    return {"root": root, "path": synth.catalog_path, "catalog": catalog, "ckpt": ckpt, "sha": sha,
            "store": FeatureStore(root / "features"), "model": FashionBert.from_pretrained(ckpt)}


def _run(setup, out: Path, embed: EmbedConfig):
    return embed_catalog_ray(setup["path"], setup["catalog"], setup["ckpt"], out, FEATURES, embed,
                             checkpoint_sha=setup["sha"], num_workers=2, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["joint", "t2i"])  # joint title+image encoding; combination of views and texts
def test_ray_engine_writes_the_local_engines_shards_and_resumes(setup, ray_cluster, monkeypatch, spec):
    embed = replace(EMBED, spec=PRESETS[spec])
    root = setup["root"] / spec
    local = embed_catalog(setup["catalog"], setup["store"], setup["model"], root / "local", embed,
                          checkpoint_sha=setup["sha"], progress=False)
    monkeypatch.setattr(ray_engine, "BATCH_ROWS", 8)  # several blocks over both actors: order must be restored
    pids = setup["catalog"].product_ids
    _, ambiguous, kept_images, _ = ray_engine._selection(setup["catalog"], range(24))
    assert list(ambiguous) == [pids[7]]  # a dropped duplicate shares its id: the actors tell them apart by content
    assert kept_images == {pids[9]: {1, 2, 3, 4}}  # the missing file validation dropped is never planned
    result = _run(setup, root / "ray", embed)
    assert (result.count, result.dim, result.num_shards, result.computed_shards) == (24, 32, 3, 3)
    assert result.with_image == local.with_image == 23

    def files(d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("part-*"))

    assert files(root / "ray") == files(root / "local") and len(files(root / "local")) == 15
    for k in range(3):
        name = f"part-{k:05d}"
        a = pq.read_table(root / "local" / "meta" / f"{name}.parquet")
        b = pq.read_table(root / "ray" / "meta" / f"{name}.parquet")
        assert a.column_names == b.column_names == META_COLUMNS and a.equals(b), name
        for kind in EMB_KINDS:
            va, vb = (np.load(d / "emb" / kind / f"{name}.npy") for d in (root / "local", root / "ray"))
            assert va.dtype == vb.dtype == np.float32 and va.shape == vb.shape == (8, 32)
            assert np.allclose(va, vb, atol=1e-4), (name, kind, np.abs(va - vb).max())
        pa_, pb_ = (np.load(d / "emb" / PATCHES / f"{name}.npy") for d in (root / "local", root / "ray"))
        assert pa_.dtype == pb_.dtype == np.float16 and pa_.shape == pb_.shape == (8, 64, FEATURE_DIM)
        assert np.allclose(pa_.astype(np.float32), pb_.astype(np.float32), atol=2e-2), (name, np.abs(pa_ - pb_).max())

    meta = pq.read_table(root / "ray" / "meta").to_pylist()
    assert [m["product_id"] for m in meta] == pids  # catalog order
    assert not meta[5]["has_image"] and meta[5]["num_images"] == 0  # its only image is corrupt
    for d in (root / "local", root / "ray"):
        image = np.concatenate([np.load(d / "emb" / "image" / f"part-{k:05d}.npy") for k in range(3)])
        assert not image[5].any()
    assert meta[0]["num_images"] == 1 and meta[9]["num_images"] == 2  # the bad view skipped; max_views
    assert meta[12]["catalog_row"] == 13  # the dropped duplicate comes before it

    info = json.loads((root / "ray" / EMBED_INFO).read_text())
    assert info["engine"] == "ray" and info["checkpoint_sha256"] == setup["sha"] and info["count"] == 24
    assert info["config"] == embed.fingerprint() and info["dim"] == 32

    before = {p: p.stat().st_mtime_ns for p in (root / "ray").rglob("part-*")}
    again = _run(setup, root / "ray", embed)
    assert (again.computed_shards, again.with_image) == (0, 23)
    assert {p: p.stat().st_mtime_ns for p in (root / "ray").rglob("part-*")} == before


def test_without_ray_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install fashionbert-search\[ray\]"):
        embed_catalog_ray(tmp_path / "catalog.parquet", None, tmp_path, tmp_path / "out", FEATURES, EMBED)  # type: ignore[arg-type]
