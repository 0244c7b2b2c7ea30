"""Training precision: bf16 autocast where the hardware has it, fp32 similarities, the record of what ran."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fashionbert import precision
from fashionbert.configuration import named_config
from fashionbert.encoder import FashionBert
from fashionbert.modeling import FashionBertModel
from fashionbert.precision import PRECISIONS, autocast, autocast_dtype, precision_name
from fashionbert.pretraining.task import _scaled_similarity
from fashionbert.text import train_tokenizer
from pipelines.pretrain import PretrainConfig, pretrain
from tests.indexer_fixtures import catalog_with_features

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, itc_dim=32)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return catalog_with_features(tmp_path_factory.mktemp("precision"), 24, seed=7)


def _cfg(data, out, **kw) -> PretrainConfig:
    return PretrainConfig(catalog=data["catalog"], features=data["features"], out=out, steps=4, batch_size=8,
                          warmup_steps=1, save_every=100, model_overrides=TINY, vocab_size=500, device="cpu", **kw)


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_takes_bf16_only_on_a_cpu_that_multiplies_it_natively(monkeypatch, native, expected):
    # the CPU's instruction set is the one thing a test cannot choose: report either answer
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", CPU) is expected
    assert autocast_dtype("fp32", CPU) is None  # fp32 asked for is fp32 everywhere
    assert autocast_dtype("bf16", CPU) is torch.bfloat16  # and bf16 asked for is honoured, emulated or not


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'fp32', 'bf16'\), got 'fp16'"):
        autocast_dtype("fp16", CPU)
    assert PRECISIONS == ("auto", "fp32", "bf16")


def test_autocast_runs_matmuls_in_bf16_and_fp32_leaves_them_alone():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, None):
        assert (a @ b).dtype == torch.float32
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


def test_contrastive_similarities_stay_fp32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 32, generator=gen), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(16, 32, generator=gen), dim=-1)
    scale = torch.tensor(100.0)
    exact = scale * a @ b.T
    with autocast(CPU, torch.bfloat16):
        kept = _scaled_similarity(scale, a, b)
        blurred = scale * a @ b.T  # what a plain matmul would give the losses
    assert kept.dtype == torch.float32 and torch.allclose(kept, exact, atol=1e-5)
    assert (blurred.float() - exact).abs().max() > 1e-2  # bf16 would have moved the logits visibly


def test_bf16_training_keeps_fp32_weights_and_records_what_ran(data, tmp_path):
    result = pretrain(_cfg(data, tmp_path / "bf16", precision="bf16"), echo=lambda s: None, progress=False)
    assert result.precision == "bf16" and result.steps_done == 4
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # autocast never touches the stored weights
    assert all(torch.isfinite(t).all() for t in weights.values())
    record = json.loads((tmp_path / "bf16" / "training_config.json").read_text())
    assert record["precision_used"] == "bf16" and record["training"]["precision"] == "bf16"
    fp32 = pretrain(_cfg(data, tmp_path / "fp32", precision="fp32"), echo=lambda s: None, progress=False)
    assert fp32.precision == "fp32"
    other = load_file(tmp_path / "fp32" / "model.safetensors")
    assert any(not torch.equal(weights[k], other[k]) for k in weights)  # the setting did change the arithmetic


def test_a_run_resumes_in_another_precision(data, tmp_path):
    """A state saved on a bf16 machine continues on one without (or back): precision is no part of the fingerprint."""
    stopped = pretrain(_cfg(data, tmp_path / "run", precision="bf16", stop_at_step=2), echo=lambda s: None,
                       progress=False)
    assert stopped.stopped_by == "stop_at_step"
    lines: list[str] = []
    resumed = pretrain(_cfg(data, tmp_path / "run", precision="fp32"), echo=lines.append, progress=False)
    assert resumed.resumed_from == 2 and resumed.steps_done == 4 and resumed.precision == "fp32"
    assert "pretrain: fp32 matmuls on cpu" in lines


def test_bf16_inference_keeps_float32_vectors_and_unrounded_scores():
    """The trunk may run in bf16 for speed; the vectors FAISS indexes and the re-rank log-odds stay float32."""
    torch.manual_seed(0)
    texts = ["红色 连衣裙 长袖", "blue striped shirt", "黑色 高跟鞋", "white hoodie star print"] * 2
    tokenizer = train_tokenizer(texts * 20, vocab_size=300)
    model = FashionBertModel(named_config("tiny", tokenizer, patch_feature_dim=48, **TINY)).eval()
    feats = np.random.default_rng(0).standard_normal((len(texts), 64, 48)).astype(np.float32)
    exact, fast = FashionBert(model, tokenizer), FashionBert(model, tokenizer, precision="bf16")
    assert (exact.matmul_precision, fast.matmul_precision) == ("fp32", "bf16")
    for encode in ("encode_text", "encode_images"):
        args = (texts,) if encode == "encode_text" else (feats,)
        a, b = getattr(exact, encode)(*args), getattr(fast, encode)(*args)
        assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
        assert (a * b).sum(1).min() > 0.98  # the same directions, to bf16's rounding of the trunk
    a, b = exact.match_logits(texts, feats), fast.match_logits(texts, feats)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.2 and not np.array_equal(a, b)
    # the heads ran in float32: bf16 logits would all be multiples of bf16's step at their magnitude
    assert not torch.equal(torch.from_numpy(b).bfloat16().float(), torch.from_numpy(b))
