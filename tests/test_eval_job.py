"""`fashionbert eval` as a job: the fused re-rank score swept over dual weights on the same groups."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.catalog import read_catalog
from indexer.features import FeatureJobConfig, extract_catalog_features
from pipelines.cli import app
from pipelines.evaluate import EvalConfig, evaluate
from tests.indexer_fixtures import make_checkpoint, make_synthetic


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory: pytest.TempPathFactory) -> EvalConfig:
    root = tmp_path_factory.mktemp("eval_job")
    catalog = make_synthetic(root / "data", n=24)
    extract_catalog_features(read_catalog(catalog, check_images="none"), root / "feat",
                             FeatureJobConfig(batch_size=8, shard_size=16, num_workers=0, max_images_per_product=1),
                             progress=False)
    return EvalConfig(make_checkpoint(catalog, root / "ckpt"), catalog, root / "feat", n_queries=12, full=False)


def test_the_sweep_ranks_by_the_cross_encoder_at_zero_and_by_the_dual_encoder_at_large_weights(eval_inputs):
    metrics = evaluate(replace(eval_inputs, dual_weight=1.0, dual_weight_sweep=(1e6, 0.0, 1.0)), echo=lambda _: None)
    sweep = {w: metrics[f"random100_fused_sweep.{w}.sum_r"] for w in ("0", "1", "1e+06")}
    assert sweep["0"] == pytest.approx(metrics["random100.sum_r"])  # log-odds alone: the cross encoder's ranking
    assert sweep["1"] == pytest.approx(metrics["random100_fused.sum_r"])  # the configured weight is one of them
    assert sweep["1e+06"] == pytest.approx(metrics["random100_dual.sum_r"])  # the cosine dominates
    best = metrics["random100_fused_sweep.best_dual_weight"]
    assert metrics[f"random100_fused_sweep.{best:g}.sum_r"] == max(sweep.values())
    # The swept figure for a weight is the one a run configured with that weight reports.
    alone = evaluate(replace(eval_inputs, dual_weight=0.0), echo=lambda _: None)
    assert alone["random100_fused.sum_r"] == pytest.approx(sweep["0"])
    assert not any(k.startswith("random100_fused_sweep.") for k in alone)


def test_a_bad_sweep_weight_is_a_one_line_usage_error(eval_inputs):
    cfg = eval_inputs
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(cfg.checkpoint), "--catalog", str(cfg.catalog),
                                 "--features", str(cfg.features), "--dual-weight-sweep", "0.5,heavy"])
    assert r.exit_code != 0
    assert "--dual-weight-sweep" in r.output and "'heavy' is not a weight >= 0" in r.output


def test_features_of_another_image_encoder_are_a_clear_error(eval_inputs, tmp_path):
    """A checkpoint trained on the 432-d features, evaluated on a directory of the 1280-d head map:
    refused up front, naming both widths, instead of a matrix-shape error inside the model."""
    catalog = read_catalog(eval_inputs.catalog, check_images="none")
    extract_catalog_features(catalog, tmp_path / "head", FeatureJobConfig(encoder="efficientnet_lite0", batch_size=8,
                             shard_size=16, num_workers=0, max_images_per_product=1), progress=False)
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(eval_inputs.checkpoint), "--catalog",
                                 str(eval_inputs.catalog), "--features", str(tmp_path / "head")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "reads 432-d patch features (efficientnet_lite0_multiscale)" in r.output and "gives 1280-d" in r.output


def test_every_scorer_reports_why_it_misses_rank_1(eval_inputs, tmp_path):
    """The synthetic catalog says what each title names, so each scorer's Rank@1 misses are split into
    ties, another sub-category and mistakes (fashionbert.evaluation.misses), adding up to 1 - R@1;
    the JSON report holds every one of them (the cross encoder's were once printed but not written)."""
    lines: list[str] = []
    metrics = evaluate(replace(eval_inputs, json_out=tmp_path / "eval.json"), echo=lines.append)
    written = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    for prefix in ("random100", "random100_dual", "random100_fused"):
        for d in ("t2i", "i2t"):
            shares = [metrics[f"{prefix}.{d}.top1_miss.{c}"] for c in ("tie", "other_sub_category", "mistake")]
            assert sum(shares) == pytest.approx(1.0 - metrics[f"{prefix}.{d}.r1"])
            assert [written[f"{prefix}.{d}.top1_miss.{c}"] for c in ("tie", "other_sub_category", "mistake")] \
                == pytest.approx(shares)
    assert any(line.startswith("eval: t2i Rank@1 misses") for line in lines)
