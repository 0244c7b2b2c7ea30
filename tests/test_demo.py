"""The README's main job on a tiny setting, end to end, and its reuse of earlier outputs."""

from __future__ import annotations

import numpy as np

from fashionbert.text import load_tokenizer
from indexer.feature_store import FeatureStore
from pipelines.demo import DemoConfig, run_demo


def test_demo_builds_catalogs_tokenizer_and_features_then_reuses_them(tmp_path):
    config = DemoConfig(workdir=tmp_path / "demo", train_products=16, test_products=8, workers=1, feature_workers=0, shard_size=16)
    lines: list[str] = []
    first = run_demo(config, echo=lines.append)
    assert set(first.catalogs) == {"train", "test"}
    for split in ("train", "test"):
        store = FeatureStore(first.features[split].out_dir)
        assert len(store) == first.features[split].num_images > 0
        assert store.load_all().shape[1:] == (64, 1280)
        assert np.isfinite(store.load_all().astype(np.float32)).all()
    tokenizer = load_tokenizer(first.tokenizer)
    assert tokenizer.tokenize("红色") == ["红", "色"]
    assert "demo: done" in first.summary() and str(first.features["test"].out_dir) in first.summary()

    lines.clear()
    second = run_demo(config, echo=lines.append)
    assert all(f.computed_shards == 0 for f in second.features.values())
    assert any("reusing" in line and "catalog.parquet" in line for line in lines)
    assert any(line.startswith("tokenizer: reusing") for line in lines)
