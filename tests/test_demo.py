"""The README's main job on a tiny setting, end to end, and its reuse of earlier outputs."""

from __future__ import annotations

import numpy as np

from fashionbert.text import load_tokenizer
from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER
from indexer.feature_store import FeatureStore
from indexer.versions import IndexDir
from pipelines.demo import DemoConfig, run_demo

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, itc_dim=32)


def test_demo_runs_every_stage_then_reuses_them(tmp_path):
    config = DemoConfig(workdir=tmp_path / "demo", train_products=24, test_products=12, workers=1, feature_workers=0,
                        shard_size=16, minutes=1.0, steps=4, batch_size=8, eval_queries=6, serve=False,
                        model_overrides=TINY, tagger_minutes=0.2, tagger_epochs=3)
    lines: list[str] = []
    first = run_demo(config, echo=lines.append)
    assert set(first.catalogs) == {"train", "test"}
    for split in ("train", "test"):
        store = FeatureStore(first.features[split].out_dir)
        assert len(store) == first.features[split].num_images > 0
        assert store.load_all().shape[1:] == (64, BACKBONES[DEFAULT_IMAGE_ENCODER])
        assert np.isfinite(store.load_all().astype(np.float32)).all()
    tokenizer = load_tokenizer(first.tokenizer)
    assert tokenizer.tokenize("红色") == ["红", "色"]
    assert (first.checkpoint / "model.safetensors").is_file()
    assert {"random100.sum_r", "full.t2i.recall@10"} <= set(first.metrics)
    # the same groups scored by stage 1 alone and by the search's fused score
    assert {"random100_dual.sum_r", "random100_fused.sum_r", "random100_fused.t2i.r10"} <= set(first.metrics)
    # the synthetic catalog says what each title names, so the eval reports random-100's ceiling too
    assert first.metrics["random100.sum_r"] < first.metrics["random100_ceiling.sum_r"] <= 600
    assert any("| " in line for line in lines), "the evaluation table is printed"
    assert (first.tagger / "tagger_config.json").is_file() and (first.tagger / "trunk" / "model.safetensors").is_file()
    assert {"model.f1@3", "late_fusion.f1@3", "most_frequent.f1@3"} <= set(first.tag_metrics)
    assert any(line.startswith("tags: held-out F1@3 tagger ") for line in lines)
    assert "tagger:" in first.summary()
    assert IndexDir(first.index_dir).current() == "v0001"
    assert len(first.examples) == 3 and all(len(titles) == 3 for _, titles in first.examples)
    assert "demo: done" in first.summary() and str(first.features["test"].out_dir) in first.summary()

    lines.clear()
    second = run_demo(config, echo=lines.append)
    assert all(f.computed_shards == 0 for f in second.features.values())
    assert any("reusing" in line and "catalog.parquet" in line for line in lines)
    for stage in ("tokenizer", "pretrain", "eval", "tagger", "tags eval", "index"):
        assert any(line.startswith(f"{stage}: reusing") for line in lines), stage
    assert IndexDir(second.index_dir).current() == "v0001"  # nothing was rebuilt
    assert second.metrics == first.metrics and second.examples == first.examples
    assert second.tag_metrics == first.tag_metrics
    assert any(line.startswith("tags: held-out F1@3") for line in lines)
