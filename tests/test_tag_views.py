"""The tagger's reading of a product's photos: per-view weights and the stray-photo diagnostics.

Real components: the synthetic held-out catalog (which records what each photo shows), the
feature job over every view, a tiny checkpoint and the real training and evaluation jobs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fashionbert.synthetic.drawing import STRAY
from fashionbert.tagging import TaggerHead
from indexer.catalog import read_catalog
from indexer.features import extract_catalog_features
from pipelines.tag_views import hide_views, read_view_kinds, stray_positions
from pipelines.tag_ablations import run_ablations
from pipelines.tags import TagTrainConfig, evaluate_tagger, load_tag_data, train_tagger
from tests.tagging_fixtures import TAG_FEATURES, TagData, one_torch_thread, tag_data  # noqa: F401 - fixture
from tests.test_tagging import FAST, SMALL_HEAD, _config, _inputs

ALL_VIEWS = replace(TAG_FEATURES, max_images_per_product=4)
FOUR_VIEWS = {**SMALL_HEAD, "max_views": 4}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def held_all_views(tag_data: TagData, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811 - fixture
    """The held-out catalog's features for every view (the shared fixture extracts the first only)."""
    out = tmp_path_factory.mktemp("held_views") / "features"
    with one_torch_thread():
        extract_catalog_features(read_catalog(tag_data.test_catalog, require_image=True), out, ALL_VIEWS, progress=False)
    return out


def test_view_weights_share_one_over_the_real_views():
    torch.manual_seed(0)
    x = _inputs(v=3)
    x.view_mask[0, 2] = False  # product 0 has two views, product 2 one (see _inputs)
    for high in (True, False):
        w = TaggerHead(_config(use_high_level_attention=high)).eval().view_weights(x)
        assert w.shape == (3, 3) and torch.allclose(w.sum(-1), torch.ones(3), atol=1e-6)
        assert torch.all(w[~x.view_mask] == 0)
        if not high:  # the masked mean: every real view the same share
            assert torch.allclose(w[0, :2], torch.full((2,), 0.5)) and torch.allclose(w[1], torch.full((3,), 1 / 3))
    learnt = TaggerHead(_config()).eval().view_weights(x)
    assert not torch.allclose(learnt[1], torch.full((3,), 1 / 3), atol=1e-4)  # attention does weigh the views


def test_a_hidden_view_is_as_if_the_product_never_had_it():
    """The oracle behind ``stray_hidden.*``: hiding view 1 scores the product as its views 0 and 2 alone."""
    torch.manual_seed(0)
    x = _inputs(v=3)
    x.view_mask[2, 2] = False  # product 2: two views (see _inputs)
    hidden = torch.zeros_like(x.view_mask)
    hidden[:, 1] = True
    kept = [0, 2]
    without = replace(x, text=x.text[:, kept], text_mask=x.text_mask[:, kept], patches=x.patches[:, kept],
                      patch_mask=x.patch_mask[:, kept], view_mask=x.view_mask[:, kept])
    for high in (True, False):
        head = TaggerHead(_config(use_high_level_attention=high)).eval()
        with torch.no_grad():
            assert torch.allclose(head(hide_views(x, hidden)), head(without), atol=1e-5)
            assert not torch.allclose(head(x), head(without), atol=1e-3)  # the view did count before it was hidden
    assert bool(x.view_mask[0, 1]) and not bool(hide_views(x, hidden).view_mask[0, 1])  # x itself is left as it was


def test_view_kinds_follow_the_extracted_views(tag_data: TagData, held_all_views: Path):  # noqa: F811
    data, store = load_tag_data(tag_data.test_catalog, held_all_views, 4)
    kinds = read_view_kinds(tag_data.test_catalog, data, store, 4)
    listed = dict(zip(*(pq.read_table(tag_data.test_catalog).column(c).to_pylist() for c in ("product_id", "image_kinds"))))
    assert kinds is not None and len(kinds) == len(data)
    for pid, got in zip(data.product_ids, kinds):
        assert got == listed[pid][:4] and len(got) == len(data.views(data.product_ids.index(pid)))
    rows = list(range(len(data)))
    assert stray_positions(rows, kinds) == [i for i in rows if STRAY in listed[data.product_ids[i]]]
    assert stray_positions(rows, kinds), "the 30-product held-out catalog should hold a stray photo"
    one_view = read_view_kinds(tag_data.test_catalog, *load_tag_data(tag_data.test_catalog, held_all_views, 1), 1)
    assert stray_positions(rows, one_view) == []  # the front shot is never a stray
    plain = pq.read_table(tag_data.test_catalog).drop_columns(["image_kinds"])
    real = tag_data.test_catalog.parent / "no_kinds.parquet"
    pq.write_table(plain, real)
    assert read_view_kinds(real, data, store, 4) is None  # a real catalog: no diagnostics


def test_eval_reports_the_stray_products_and_the_weight_on_strays(tag_data: TagData, held_all_views: Path,  # noqa: F811
                                                                 tmp_path):
    tagger = tmp_path / "tagger"
    train_tagger(TagTrainConfig(tag_data.train_catalog, tag_data.train_features, tag_data.checkpoint, tagger,
                                head=FOUR_VIEWS, **{**FAST, "epochs": 3}), echo=lambda _: None)
    metrics = evaluate_tagger(tagger, tag_data.test_catalog, held_all_views, tmp_path / "eval.json", echo=lambda _: None)
    data, store = load_tag_data(tag_data.test_catalog, held_all_views, 4)
    kinds = read_view_kinds(tag_data.test_catalog, data, store, 4)
    tagged = [i for i, t in enumerate(data.tags) if t]
    with_stray = [kinds[i] for i in tagged if STRAY in kinds[i]]
    assert metrics["model.stray_view_weight_uniform"] == pytest.approx(np.mean([1 / len(k) for k in with_stray]))
    assert 0 < metrics["model.stray_view_weight"] < 1
    for method in ("model", "late_fusion"):
        assert 0 <= metrics[f"{method}.with_stray.f1@3"] <= 1 and f"{method}.with_stray.map" in metrics
    assert 0 <= metrics["model.stray_hidden.f1@3"] <= 1  # the oracle filter needs the view pooling: the tagger only
    assert metrics["model.stray_hidden.map"] != metrics["model.with_stray.map"]  # hiding the strays changed the scores
    table = (tmp_path / "eval.md").read_text()
    assert "| model.with_stray |" in table and "| model.stray_hidden |" in table and "stray_view_weight |" in table

    cfg = TagTrainConfig(tag_data.train_catalog, tag_data.train_features, tag_data.checkpoint, head=FOUR_VIEWS,
                         **{**FAST, "epochs": 2})
    ablations = run_ablations(cfg, tag_data.test_catalog, held_all_views, seeds=2, echo=lambda _: None)
    mean_weight = ablations["no_high_level_attention"]["stray_view_weight"]
    assert mean_weight == pytest.approx(metrics["model.stray_view_weight_uniform"])  # the masked mean: 1 / views
    assert all("with_stray.f1@3" in m and "with_stray.f1@3_sd" in m and "stray_hidden.f1@3_sd" in m
               for m in ablations.values())


def test_train_records_stray_injection_and_old_records_read_as_without(tag_data: TagData, held_all_views: Path,  # noqa: F811
                                                                      tmp_path):
    """`tags train --stray-injection` through the job: injected strays are announced and recorded, and a tagger
    recorded before the option (no key) is re-trained by its ablations without them."""
    lines: list[str] = []
    tagger = tmp_path / "tagger"
    train_tagger(TagTrainConfig(tag_data.test_catalog, held_all_views, tag_data.checkpoint, tagger, head=FOUR_VIEWS,
                                stray_injection=0.5, stray_loss_weight=2.0, **{**FAST, "epochs": 2}), echo=lines.append)
    assert any("injected strays on 50% of the rows (stray loss weight 2)" in line for line in lines)
    record = json.loads((tagger / "tagger_info.json").read_text())["train"]
    assert record["stray_injection"] == 0.5 and record["stray_loss_weight"] == 2.0
    assert TagTrainConfig.from_record(record).options().stray_injection == 0.5
    old = {k: v for k, v in record.items() if k not in ("stray_injection", "stray_loss_weight")}
    assert TagTrainConfig.from_record(old).options().stray_injection == 0.0
    data, _ = load_tag_data(tag_data.test_catalog, held_all_views, 4)
    planned = [r for r in range(len(data)) if data.stray_plan(r, 4) is not None]
    assert planned and all(data.groups[data.stray_plan(r, 4).donor] == data.groups[r] for r in planned)  # sub-category
    # the store's counts (no features read) are the loaded views' counts, so the plans are those drawn by loading
    assert all(data.view_count(r) == len(data.views(r) if data.views(r) is not None else ()) for r in range(len(data)))
    loading = replace(data, view_count=None)
    assert all(loading.stray_plan(r, 4) == data.stray_plan(r, 4) for r in range(len(data)))


def test_ablations_of_the_training_change_only_the_training(tag_data: TagData, held_all_views: Path):  # noqa: F811
    """`no_stray_injection` is the same run as a tagger trained without injected strays, to the last digit."""
    taught = TagTrainConfig(tag_data.test_catalog, held_all_views, tag_data.checkpoint, head=FOUR_VIEWS,
                            stray_injection=0.5, **{**FAST, "epochs": 2})
    table = run_ablations(taught, tag_data.test_catalog, held_all_views, echo=lambda _: None,
                          variants=["no_stray_injection", "no_stray_loss"])
    plain = run_ablations(replace(taught, stray_injection=0.0), tag_data.test_catalog, held_all_views, echo=lambda _: None,
                          variants=[])
    assert list(table) == ["full", "no_stray_injection", "no_stray_loss"] and list(plain) == ["full"]
    assert table["no_stray_injection"]["map"] == plain["full"]["map"]
    assert table["full"]["map"] != plain["full"]["map"]  # the injected strays did change the training
    assert table["no_stray_loss"]["parameters"] == table["full"]["parameters"]  # the same head
