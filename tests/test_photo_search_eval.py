"""Photo search evaluation: a held-out shopper photo against the image-only vectors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fashionbert.product_vectors import normalise
from indexer.catalog import read_catalog
from indexer.features import extract_catalog_features
from indexer.feature_store import FeatureStore
from pipelines.cli import app
from pipelines.photo_search_eval import evaluate_photo_search, held_out_photo
from tests.indexer_fixtures import FAST_FEATURES, make_checkpoint, make_synthetic


def test_the_held_out_photo_is_the_last_whole_garment_view_after_the_main_one():
    kinds = ["front", "garment", "close-up", "garment", "stray"]
    assert held_out_photo([0, 1, 2, 3, 4], kinds) == 3  # not the stray, not the close-up
    assert held_out_photo([0, 1, 2], kinds) == 1
    assert held_out_photo([0, 2, 4], kinds) is None  # only a close-up and a stray besides the main photo
    assert held_out_photo([3], kinds) is None  # the main (first extracted) photo is never held out
    assert held_out_photo([0, 1, 2], None) == 2  # a real catalog says nothing of its photos: the last view
    assert held_out_photo([0], None) is None


@pytest.fixture(scope="module")
def photo_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photo_search")
    catalog = make_synthetic(root / "data", n=24)
    extract_catalog_features(read_catalog(catalog, check_images="none"), root / "feat", FAST_FEATURES, progress=False)
    return {"catalog": catalog, "features": root / "feat", "ckpt": make_checkpoint(catalog, root / "ckpt")}


class _PhotoEncoder:
    """A known-answer image encoder: each photo's vector is a function of its own features only."""

    def __init__(self, store: FeatureStore, pids: list[str], by: str) -> None:
        self.by = by
        self.product_of = {self._key(store.get(p, v)): i for i, p in enumerate(pids) for v in store.image_indices(p)}

    @staticmethod
    def _key(feats: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(feats, np.float16).tobytes()).hexdigest()

    def encode_images(self, feats: np.ndarray, batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(feats), 64), np.float32)
        for row, f in enumerate(feats):
            key = self._key(f)
            if self.by == "product":  # every photo of a product maps to that product's axis
                out[row, self.product_of[key]] = 1.0
            else:  # every photo to its own random direction: only the very same pixels match
                out[row] = np.random.default_rng(int(key[:8], 16)).standard_normal(64)
        return normalise(out)


def _eligible(catalog: Path, store: FeatureStore) -> int:
    table = pq.read_table(catalog, columns=["product_id", "image_kinds"]).to_pylist()
    return sum(held_out_photo(store.image_indices(r["product_id"]), r["image_kinds"]) is not None for r in table)


def test_each_query_finds_its_product_and_never_its_own_pixels(photo_inputs):
    store = FeatureStore(photo_inputs["features"])
    pids = read_catalog(photo_inputs["catalog"], check_images="none").product_ids
    n_eligible = _eligible(photo_inputs["catalog"], store)
    assert 5 <= n_eligible < len(pids)  # the synthetic photo sets hold both kinds of product

    by_product = evaluate_photo_search(_PhotoEncoder(store, pids, "product"), photo_inputs["catalog"],  # type: ignore[arg-type]
                                       photo_inputs["features"], echo=lambda _: None)
    assert by_product["photo_search.n_queries"] == n_eligible
    assert by_product["photo_search.n_gallery"] == sum(bool(store.image_indices(p)) for p in pids)  # the corrupt one is out
    assert by_product["photo_search.recall@1"] == 1.0 and by_product["photo_search.mrr"] == 1.0

    # Were the held-out photo averaged into its product's gallery vector, this encoder would rank
    # every product first; left out, only chance can.
    by_pixels = evaluate_photo_search(_PhotoEncoder(store, pids, "photo"), photo_inputs["catalog"],  # type: ignore[arg-type]
                                      photo_inputs["features"], echo=lambda _: None)
    assert by_pixels["photo_search.recall@1"] <= 0.3


def test_eval_reports_photo_search_and_says_when_a_catalog_has_no_photo_to_hold_out(photo_inputs, tmp_path):
    args = ["eval", "--checkpoint", str(photo_inputs["ckpt"]), "--catalog", str(photo_inputs["catalog"]),
            "--no-random100", "--json", str(tmp_path / "eval.json")]
    r = CliRunner().invoke(app, [*args, "--features", str(photo_inputs["features"])])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    store = FeatureStore(photo_inputs["features"])
    assert metrics["photo_search.n_queries"] == _eligible(photo_inputs["catalog"], store)
    assert metrics["photo_search.recall@100"] == 1.0  # 23 products in the gallery
    assert 0.0 < metrics["photo_search.mrr"] <= 1.0
    assert "photo search (" in r.output

    single = tmp_path / "single"
    extract_catalog_features(read_catalog(photo_inputs["catalog"], check_images="none"), single,
                             replace(FAST_FEATURES, max_images_per_product=1), progress=False)
    r = CliRunner().invoke(app, [*args, "--features", str(single)])
    assert r.exit_code == 0, r.output
    assert "has a photo besides its main one" in r.output and "photo search not scored" in r.output
    assert not any(k.startswith("photo_search.") for k in json.loads((tmp_path / "eval.json").read_text())["metrics"])
    r = CliRunner().invoke(app, [*args, "--features", str(photo_inputs["features"]), "--no-photo-search"])
    assert r.exit_code == 0 and "photo search" not in r.output
