"""Continue-pretraining on a new category: click logs, replay mixing, vocabulary growth, the report, resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fashionbert.encoder import CheckpointError, FashionBert
from fashionbert.pretraining import MixedBatchSampler, PretrainCorpus, queries_from_log
from fashionbert.synthetic import generate_catalog
from fashionbert.text import extend_tokenizer, find_new_words, init_new_embeddings, train_tokenizer
from indexer.catalog import read_catalog
from indexer.feature_store import FeatureStore
from indexer.features import FeatureJobConfig, extract_catalog_features
from pipelines.continue_pretrain import ContinueConfig, continue_pretrain
from pipelines.pretrain import PretrainConfig, pretrain

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, itc_dim=32)
QUIET = dict(echo=lambda s: None, progress=False)


def _catalog(root, name, n, seed, split="train", **kw):
    result = generate_catalog(root / name, n, seed=seed, split=split, workers=1, progress=False, **kw)
    catalog = read_catalog(result.catalog_path, require_image=True)
    extract_catalog_features(catalog, root / name / "features", FeatureJobConfig(num_workers=0, max_images_per_product=1),
                             progress=False)
    return result.catalog_path, root / name / "features"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Old categories (no bags) with a tiny pretrained checkpoint; a new category (bags) with its click log."""
    root = tmp_path_factory.mktemp("continue")
    old, old_feats = _catalog(root, "old", 32, 5, exclude_categories=["bags"])
    old_test, old_test_feats = _catalog(root, "old_test", 12, 6, split="test", exclude_categories=["bags"])
    new, new_feats = _catalog(root, "new", 30, 7, categories=["bags"], id_prefix="bag")
    ckpt = root / "base"
    pretrain(PretrainConfig(catalog=old, features=old_feats, out=ckpt, steps=3, batch_size=8, warmup_steps=1,
                            vocab_size=600, model_overrides=TINY), **QUIET)
    return {"root": root, "old": old, "old_feats": old_feats, "old_test": old_test, "old_test_feats": old_test_feats,
            "new": new, "new_feats": new_feats, "log": new.parent / "query_log.parquet", "ckpt": ckpt}


def _config(world, out, **kw) -> ContinueConfig:
    base = dict(from_checkpoint=world["ckpt"], catalog=world["new"], features=world["new_feats"], out=out,
                query_log=world["log"], old_eval_catalog=world["old_test"], old_eval_features=world["old_test_feats"],
                steps=4, max_minutes=None, batch_size=10, warmup_steps=1, eval_queries=6, min_word_count=2,
                save_every=2)
    base.update(kw)
    return ContinueConfig(**base)


# ------------------------------------------------------------------ click logs and mixing
def test_query_log_aggregates_clicks_and_drops_unusable_rows():
    table = pa.table({"query": ["red tote", "red tote", " ", "blue bag", "x"], "product_id": ["a", "a", "a", "zz", "b"],
                      "clicks": pa.array([3, 2, 5, 4, 0], pa.int32())})
    assert queries_from_log(table, known_ids={"a", "b"}) == {"a": {"red tote": 5.0}}
    labelled = pa.table({"query": ["q"], "product_id": ["a"], "label": [1]})
    assert queries_from_log(labelled) == {"a": {"q": 1.0}}


@pytest.mark.parametrize("table, message", [
    (pa.table({"query": ["q"], "product_id": ["a"]}), "clicks"),
    (pa.table({"query": [1], "product_id": ["a"], "clicks": [1]}), "'query' must be strings"),
    (pa.table({"query": ["q"], "product_id": ["a"], "clicks": ["many"]}), "must be numeric"),
])
def test_query_log_with_a_wrong_schema_is_a_clear_error(table, message):
    with pytest.raises(ValueError, match=message):
        queries_from_log(table)


def test_click_log_queries_become_weighted_q_texts(world):
    catalog = read_catalog(world["new"], check_images="none")
    log = queries_from_log(pq.read_table(world["log"]), set(catalog.product_ids))
    corpus = PretrainCorpus.from_catalog(catalog, FeatureStore(world["new_feats"]), query_log=log)
    rec = next(r for r in corpus.records if r.product_id in log)
    weights = dict(zip(rec.queries, rec.query_weights))
    for query, clicks in log[rec.product_id].items():
        assert weights[query] == clicks  # the log's clicks, not the catalog's uniform "one"
    assert len(rec.queries) == len(rec.query_weights) and all(w > 0 for w in rec.query_weights)


def test_mixed_batches_keep_the_replay_fraction_and_are_deterministic():
    new_subs = ["tote"] * 20 + ["backpack"] * 20
    old_subs = ["dress"] * 30 + ["shirt"] * 30
    sampler = MixedBatchSampler(new_subs, old_subs, batch_size=20, replay_fraction=0.2, seed=3)
    for step in range(5):
        batch = sampler.batch(step)
        assert len(batch) == 20 == len(set(batch))
        assert sum(i >= 40 for i in batch) == 4 and max(batch) < 100
        assert batch == MixedBatchSampler(new_subs, old_subs, 20, 0.2, seed=3).batch(step)
    assert all(i < 40 for i in MixedBatchSampler(new_subs, old_subs, 20, 0.0).batch(0))
    with pytest.raises(ValueError, match="replay_fraction"):
        MixedBatchSampler(new_subs, old_subs, 20, 1.0)


def test_concatenated_corpora_keep_colliding_ids_apart(world):
    a = PretrainCorpus.from_catalog(read_catalog(world["old"], check_images="none"), FeatureStore(world["old_feats"]))
    b = PretrainCorpus.from_catalog(read_catalog(world["old"], check_images="none"), FeatureStore(world["old_feats"]))
    both = PretrainCorpus.concat(a, b)
    first, twin = both.records[0], both.records[len(a)]
    assert first.product_id == twin.product_id and first.key != twin.key
    assert both.sources[twin.source] is b.sources[0]


# ------------------------------------------------------------------ vocabulary growth
def test_new_words_are_appended_and_initialised_from_their_pieces():
    old = train_tokenizer(["red dress", "blue shirt", "cotton top", "红色 连衣裙"] * 5, vocab_size=200)
    words = find_new_words(old, ["black tote", "tote bag", "black tote", "托特包 托特包", "2024 !!"], min_count=2)
    assert "tote" in words and "托" in words and "black" in words
    assert "2024" not in words and "!!" not in words
    grown = extend_tokenizer(old, words)
    assert grown.get_vocab() | old.get_vocab() == grown.get_vocab()  # every old id kept
    assert all(grown.get_vocab()[t] == i for t, i in old.get_vocab().items())
    assert grown.tokenize("black tote") == ["black", "tote"]

    from fashionbert.configuration import named_config
    from fashionbert.modeling import FashionBertModel

    model = FashionBertModel(named_config("tiny", old, 16, **TINY))
    before = model.get_input_embeddings().weight.detach().clone()
    bias_before = model.cls.predictions.bias.detach().clone()
    added = init_new_embeddings(model, old, grown)
    weight = model.get_input_embeddings().weight
    assert added == words and weight.shape[0] == len(grown) == model.config.vocab_size
    assert torch.equal(weight[: len(old)], before)
    tote = grown.convert_tokens_to_ids("tote")
    pieces = old.encode("tote", add_special_tokens=False)
    assert len(pieces) > 1 and torch.allclose(weight[tote], before[pieces].mean(0))
    assert torch.isclose(model.cls.predictions.bias[tote], bias_before[pieces].mean())
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()  # MLM head still tied


# ------------------------------------------------------------------ the job
@pytest.fixture(scope="module")
def continued(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("continued") / "run"
    messages: list[str] = []
    result = continue_pretrain(_config(world, out), echo=messages.append, progress=False)
    return {"out": out, "result": result, "messages": messages}


def test_report_has_before_and_after_figures_for_new_and_old(continued):
    report = continued["result"].report
    for split in ("new", "old"):
        for when in ("before", "after"):
            for key in ("sum_r", "t2i_r10", "i2t_r10"):
                value = report[f"{split}.{when}.{key}"]
                assert isinstance(value, float) and np.isfinite(value)
        assert report[f"{split}.sum_r_gain"] == pytest.approx(report[f"{split}.after.sum_r"] - report[f"{split}.before.sum_r"], abs=0.01)
    saved = json.loads(continued["result"].report_path.read_text())
    assert saved["new.after.sum_r"] == report["new.after.sum_r"] and saved["details"]["steps_done"] == 4
    assert "| new |" in continued["result"].report_path.with_suffix(".md").read_text()


def test_held_out_new_products_are_never_trained_on(continued, world):
    data = continued["out"] / "data"
    train = set(pq.read_table(data / "new_train.parquet").column("product_id").to_pylist())
    heldout = set(pq.read_table(data / "new_heldout.parquet").column("product_id").to_pylist())
    assert train and heldout and not train & heldout
    assert train | heldout == set(pq.read_table(world["new"]).column("product_id").to_pylist())
    images = pq.read_table(data / "new_train.parquet").column("images").to_pylist()
    assert all(p.startswith("/") for row in images for p in row)  # absolute: the split file lives elsewhere


def test_continued_checkpoint_has_the_grown_vocabulary_and_records_all_training_data(continued, world):
    fb = FashionBert.from_pretrained(continued["out"])
    base = FashionBert.from_pretrained(world["ckpt"])
    added = continued["result"].added_tokens
    assert added and len(fb.tokenizer) == len(base.tokenizer) + len(added) == fb.config.vocab_size
    assert "tote" in added or "托" in added
    recorded = json.loads((continued["out"] / "training_config.json").read_text())
    catalogs = [d["catalog"] for d in recorded["training_data"]]
    assert catalogs == [str(world["old"].resolve()), str((continued["out"] / "data" / "new_train.parquet").resolve())]
    assert recorded["training"]["replay_fraction"] == 0.2 and recorded["training"]["replay_catalogs"]
    # the continued weights moved away from the start checkpoint's
    start = FashionBert.from_pretrained(continued["out"] / "start")
    assert not torch.equal(start.model.tia_head.weight, fb.model.tia_head.weight)


def test_a_killed_run_resumes_and_reuses_the_before_evaluation(world, tmp_path):
    out = tmp_path / "killed"
    first = continue_pretrain(_config(world, out, training_overrides={"stop_at_step": 2}), echo=lambda s: None,
                              progress=False)
    assert first.training.stopped_by == "stop_at_step" and first.report == {}
    messages: list[str] = []
    second = continue_pretrain(_config(world, out), echo=messages.append, progress=False)
    assert second.training.resumed_from == 2 and second.training.steps_done == 4
    assert any("reusing the 'before' evaluation" in m for m in messages)
    assert set(second.report) >= {"new.before.sum_r", "new.after.sum_r", "old.before.sum_r", "old.after.sum_r"}


def test_bad_inputs_are_clear_errors(world, tmp_path):
    with pytest.raises(CheckpointError, match="not a FashionBERT checkpoint"):
        continue_pretrain(_config(world, tmp_path / "a", from_checkpoint=tmp_path / "missing"), **QUIET)
    with pytest.raises(FileNotFoundError, match="query log not found"):
        continue_pretrain(_config(world, tmp_path / "b", query_log=tmp_path / "nope.parquet"), **QUIET)
    bad_log = tmp_path / "bad_log.parquet"
    pq.write_table(pa.table({"query": ["q"], "product_id": ["x"]}), bad_log)
    with pytest.raises(ValueError, match="clicks"):
        continue_pretrain(_config(world, tmp_path / "c", query_log=bad_log), **QUIET)
    # a checkpoint that records no training data cannot replay without being told what to replay
    bare = tmp_path / "bare"
    FashionBert.from_pretrained(world["ckpt"]).save_pretrained(bare)
    with pytest.raises(ValueError, match="replay-catalog"):
        continue_pretrain(_config(world, tmp_path / "d", from_checkpoint=bare), **QUIET)


# ------------------------------------------------------------------ then index and serve the new category
def test_index_rebuild_with_the_continued_checkpoint_serves_the_new_category(continued, world, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from pipelines.cli import app
    from search_api.app import create_app
    from search_api.settings import Settings

    # The shop's catalog now holds the old products and the new category's (one file, absolute image paths).
    from pipelines.continue_pretrain import _absolute_images

    parts = [_absolute_images(pq.read_table(p), p.parent) for p in (world["old"], world["new"])]
    combined = tmp_path / "catalog.parquet"
    pq.write_table(pa.concat_tables(parts), combined)
    runner = CliRunner()
    index_dir = tmp_path / "index"
    first = runner.invoke(app, ["index", "--catalog", str(world["old"]), "--checkpoint", str(world["ckpt"]),
                                "--out", str(index_dir), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    rebuilt = runner.invoke(app, ["index", "--rebuild", "--catalog", str(combined), "--checkpoint", str(continued["out"]),
                                  "--out", str(index_dir), "--device", "cpu"])
    assert rebuilt.exit_code == 0, rebuilt.output

    new_ids = set(pq.read_table(world["new"]).column("product_id").to_pylist())
    title = pq.read_table(world["new"]).column("title").to_pylist()[0]
    with TestClient(create_app(Settings(index_dir=index_dir, reload_poll_s=0))) as client:
        ready = client.get("/readyz").json()
        assert ready["index"]["count"] == len(parts[0]) + len(parts[1]), ready
        assert "bags" in {c["name"] for c in client.get("/api/v1/categories").json()["categories"]}
        found = client.post("/api/v1/search", json={"query": title, "k": 5, "category": "bags", "rerank": True}).json()
        assert found["results"] and {r["product_id"] for r in found["results"]} <= new_ids
        assert all(r["category"] == "bags" for r in found["results"])
        assert client.get(f"/api/v1/products/{sorted(new_ids)[0]}").status_code == 200
        # the live version was built with, and is served by, the continued checkpoint (grown vocabulary included)
        from indexer.embeddings import checkpoint_sha256

        assert ready["index"]["checkpoint_sha256"] == checkpoint_sha256(continued["out"]) == ready["model"]["sha256"]


def test_the_cli_runs_it_and_fails_in_one_line(world, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    runner = CliRunner()
    args = ["continue-pretrain", "--from", str(world["ckpt"]), "--catalog", str(world["new"]), "--features",
            str(world["new_feats"]), "--query-log", str(world["log"]), "--steps", "2", "--batch-size", "8",
            "--warmup-steps", "1", "--eval-queries", "4", "--no-extend-vocabulary", "--device", "cpu"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "| new |" in r.output and "| old |" not in r.output  # no old held-out split given: no old figures
    report = json.loads((tmp_path / "cli" / "continue_report.json").read_text())
    assert report["details"]["added_tokens"] == 0 and report["details"]["steps_done"] == 2
    assert (tmp_path / "cli" / "fashionbert-continue-pretrain.yaml").is_file()
    missing = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--from", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "not a FashionBERT checkpoint" in missing.output
    assert "Traceback" not in missing.output
