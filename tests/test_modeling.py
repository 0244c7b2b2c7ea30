"""FashionBERT model and its inference API on a tiny config (transformers-style tiny-config tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from fashionbert.configuration import SEGMENT_I, SEGMENT_Q, SEGMENT_T, FashionBertConfig, named_config
from fashionbert.encoder import CheckpointError, FashionBert
from fashionbert.modeling import FashionBertModel
from fashionbert.text import train_tokenizer

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, itc_dim=32)
TEXTS = ["红色 连衣裙 长袖", "blue striped shirt", "蓝色条纹衬衫 new", "black boots knee-high", "白色 T恤 印花"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 20, vocab_size=300)


@pytest.fixture(scope="module")
def fb(tokenizer):
    torch.manual_seed(0)
    return FashionBert(FashionBertModel(named_config("tiny", tokenizer, patch_feature_dim=48, **TINY)), tokenizer)


def feats(n: int, seed: int = 0, dim: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 64, dim)).astype(np.float16)


def test_named_configs_and_segments(tokenizer):
    for name, hidden in (("tiny", 256), ("small", 384), ("base", 768)):
        cfg = named_config(name, tokenizer, patch_feature_dim=2048)
        assert cfg.hidden_size == hidden and cfg.type_vocab_size == 3 and cfg.patch_feature_dim == 2048
        assert cfg.cls_token_id == tokenizer.cls_token_id and cfg.vocab_size == len(tokenizer)
    assert (SEGMENT_T, SEGMENT_I, SEGMENT_Q) == (0, 1, 2)
    with pytest.raises(ValueError, match="unknown model config"):
        named_config("huge", tokenizer)
    with pytest.raises(ValueError, match="type_vocab_size"):
        FashionBertConfig(type_vocab_size=2)


def test_joint_sequence_layout_and_heads(fb):
    model = fb.model.eval()
    batch = fb.tokenize(TEXTS[:2], "T")
    out = model(**batch, patch_features=torch.from_numpy(feats(2)).float())
    t = batch["input_ids"].shape[1]
    assert out.text_length == t and out.last_hidden_state.shape == (2, t + 64, 64)
    assert model.mlm_logits(out.last_hidden_state[:, :t]).shape == (2, t, model.config.vocab_size)
    assert model.mpm_logits(out.last_hidden_state[:, t:]).shape == (2, 64, 48)
    assert model.mpm_head.bias is None
    assert model.tia_logits(out).shape == (2, 2) and model.tia_logits(out, torch.tensor([True, False])).shape == (1, 2)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied


def test_tia_reads_the_agreement_of_the_two_segments_in_the_itc_space(fb, tokenizer):
    """With the pooler path silenced, the match logit is d x cosine of the projected segment means."""
    model = fb.model.eval()
    assert model.config.tia_match_features and model.tia_match_head is not None
    batch = fb.tokenize(TEXTS[:3], "T")
    out = model(**batch, patch_features=torch.from_numpy(feats(3)).float())
    t, d = out.text_length, model.config.itc_dim
    with torch.no_grad():
        saved = [p.clone() for p in (*model.tia_head.parameters(), *model.tia_match_head.parameters())]
        for p in (*model.tia_head.parameters(), *model.tia_match_head.parameters()):
            p.zero_()
        model.tia_match_head.weight[1] = 1.0
        logits = model.tia_logits(out)
        for p, v in zip((*model.tia_head.parameters(), *model.tia_match_head.parameters()), saved):
            p.copy_(v)

        def side(h, m):
            m = m.unsqueeze(-1).float()
            return torch.nn.functional.normalize(model.itc_projection((h * m).sum(1) / m.sum(1)), dim=-1)

        h, m = out.last_hidden_state, out.attention_mask
        cosine = (side(h[:, :t], m[:, :t]) * side(h[:, t:], m[:, t:])).sum(-1)
    torch.testing.assert_close(logits[:, 0], torch.zeros(3))
    torch.testing.assert_close(logits[:, 1], d * cosine, rtol=1e-4, atol=1e-4)
    # A config from before the match features (the default when config.json lacks the key) has the pooler head only.
    old = FashionBertModel(FashionBertConfig(**{**model.config.to_dict(), "tia_match_features": False}))
    assert old.tia_match_head is None and old.tia_logits(old(**batch, patch_features=torch.zeros(3, 64, 48))).shape == (3, 2)
    assert FashionBertConfig().tia_match_features is False


def test_patch_mask_hides_the_image(fb):
    """A row whose patch attention is off must not depend on its patch features."""
    model = fb.model.eval()
    batch = fb.tokenize(TEXTS[:1], "T")
    a, b = (torch.from_numpy(feats(1, seed=s)).float() for s in (1, 2))
    with torch.no_grad():
        off = [model(**batch, patch_features=x, patch_attention_mask=torch.zeros(1)).last_hidden_state[:, :3] for x in (a, b)]
        on = [model(**batch, patch_features=x).last_hidden_state[:, :3] for x in (a, b)]
    assert torch.allclose(off[0], off[1], atol=1e-5) and not torch.allclose(on[0], on[1], atol=1e-3)


def test_inference_api_returns_normalised_vectors_and_probabilities(fb):
    f = feats(5)
    for vectors in (fb.encode_text(TEXTS, "Q"), fb.encode_images(f), fb.encode_products(TEXTS, f)):
        assert vectors.shape == (5, 32) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(fb.encode_text(TEXTS[:1], "Q"), fb.encode_text(TEXTS[:1], "T"))  # the segment matters
    p = fb.score_pairs(TEXTS, f)
    assert p.shape == (5,) and ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(fb.encode_text(TEXTS[:2], batch_size=1), fb.encode_text(TEXTS[:2]), atol=1e-5)
    with pytest.raises(ValueError, match="must pair up"):
        fb.score_pairs(TEXTS[:2], f)
    with pytest.raises(ValueError, match="segment"):
        fb.encode_text(TEXTS, "X")
    assert fb.encode_text([]).shape == (0, 32)


def test_match_logits_keep_the_order_a_saturated_probability_loses(tokenizer):
    torch.manual_seed(0)
    model = FashionBert(FashionBertModel(named_config("tiny", tokenizer, patch_feature_dim=48, **TINY)), tokenizer)
    assert model.logit_scale == pytest.approx(1 / 0.07)  # CLIP's initial temperature, as a plain float
    f = feats(5)
    logits = model.match_logits(TEXTS, f)
    np.testing.assert_allclose(model.score_pairs(TEXTS, f), 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    with torch.no_grad():  # a confident head: every margin far beyond float32's reach
        model.model.tia_head.bias.copy_(torch.tensor([-200.0, 200.0]))
    logits = model.match_logits(TEXTS, f)
    assert (logits > 20).all() and len(set(logits.tolist())) == 5  # still five distinct, ordered verdicts
    assert (model.score_pairs(TEXTS, f) == 1.0).all()  # the probabilities are all tied at 1.0


def test_attention_map_is_an_8x8_distribution_that_follows_the_image(fb):
    m1 = fb.attention_map("红色连衣裙", feats(1, seed=1)[0])
    m2 = fb.attention_map("红色连衣裙", feats(1, seed=2)[0])
    assert m1.shape == (8, 8) and abs(m1.sum() - 1) < 1e-5 and (m1 >= 0).all()
    assert not np.allclose(m1, m2)
    assert fb.model.config._attn_implementation == "sdpa"  # the eager kernel was only borrowed


def test_save_and_load_round_trip(fb, tmp_path):
    fb.save_pretrained(tmp_path / "ckpt", extra={"steps": 3})
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_config.json"} <= names
    loaded = FashionBert.from_pretrained(tmp_path / "ckpt")
    f = feats(3)
    np.testing.assert_array_equal(loaded.encode_products(TEXTS[:3], f), fb.encode_products(TEXTS[:3], f))
    np.testing.assert_array_equal(loaded.score_pairs(TEXTS[:3], f), fb.score_pairs(TEXTS[:3], f))
    m = loaded.model
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    with pytest.raises(CheckpointError, match="not a FashionBERT checkpoint"):
        FashionBert.from_pretrained(tmp_path / "missing")


def test_plain_bert_folder_initialises_the_trunk(tokenizer, tmp_path):
    torch.manual_seed(1)
    bert_cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, type_vocab_size=2)
    bert = BertModel(bert_cfg)
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    fb, report = FashionBert.from_bert(tmp_path / "bert", patch_feature_dim=48, itc_dim=32)
    trunk = fb.model.bert
    assert torch.equal(trunk.encoder.layer[1].output.dense.weight, bert.encoder.layer[1].output.dense.weight)
    types = trunk.embeddings.token_type_embeddings.weight
    assert types.shape[0] == 3 and torch.equal(types[:2], bert.embeddings.token_type_embeddings.weight)
    assert torch.equal(types[SEGMENT_Q], types[SEGMENT_T])  # the new Q row starts as T
    assert "bert.encoder.layer.0.attention.self.query.weight" in report["loaded"]
    assert {"patch_projection.weight", "tia_head.weight", "itc_projection.weight"} <= set(report["initialised"])
    assert fb.encode_text(["blue shirt"]).shape == (1, 32)
    with pytest.raises(CheckpointError):
        FashionBert.from_bert(tmp_path / "nothing", patch_feature_dim=48)
