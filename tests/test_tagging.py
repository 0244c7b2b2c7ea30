"""Tag recommendation: the head's parts, vocabulary, metrics, training, persistence and the CLI.

Real components throughout: the synthetic generator, the feature job, a tiny random-init
FashionBERT trunk and the real training loop (seconds on a CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fashionbert.encoder import FashionBert
from fashionbert.tagging import (
    MFB,
    HeadInputs,
    MostFrequentTags,
    Tagger,
    TaggerConfig,
    TaggerHead,
    TagVocabulary,
    average_precision,
    masked_softmax,
    ranking_metrics,
    score_metrics,
    tag_average_precision,
    top_k,
)
from fashionbert.tagging.baselines import LateFusionLinear
from fashionbert.tagging.model import GroupAttention, signed_sqrt
from fashionbert.tagging.tagger import collate_states, encode_states, split_states
from fashionbert.tagging.training import TrainOptions, tag_loss, training_split
from fashionbert.synthetic.seasons import TREND_TAGS
from pipelines.tag_interactions import trend_tag_map
from pipelines.tag_ablations import run_ablations
from pipelines.tags import TagTrainConfig, evaluate_tagger, load_tag_data, train_tagger
from pipelines.cli import app
from tests.tagging_fixtures import TagData, one_torch_thread, tag_data  # noqa: F401 - fixture

SMALL_HEAD = {"attention_dim": 32, "mfb_o": 64, "mfb_k": 3}
FAST = dict(epochs=12, batch_size=8, lr=3e-3, patience=12, seed=0, progress=False)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _config(**changes) -> TaggerConfig:
    return TaggerConfig(**{"hidden_size": 16, "num_tags": 7, "attention_dim": 8, "mfb_o": 12, "mfb_k": 3,
                           "glimpses": 2, "dropout": 0.0, **changes})


def _inputs(b: int = 3, v: int = 2, t: int = 5, p: int = 6, h: int = 16, seed: int = 0) -> HeadInputs:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(b, v, t, dtype=torch.bool)
    text_mask[0, :, 3:] = False  # product 0: a short title
    patch_mask = torch.ones(b, v, p, dtype=torch.bool)
    patch_mask[1] = False  # product 1: no image
    view_mask = torch.ones(b, v, dtype=torch.bool)
    view_mask[2, 1] = False  # product 2: one view only
    return HeadInputs(torch.randn(b, v, t, h, generator=g), text_mask, torch.randn(b, v, p, h, generator=g), patch_mask,
                      view_mask)


@pytest.fixture(scope="module")
def trained(tag_data: TagData, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811 - fixture
    out = tmp_path_factory.mktemp("tagger") / "tagger"
    with one_torch_thread():
        train_tagger(TagTrainConfig(tag_data.train_catalog, tag_data.train_features, tag_data.checkpoint, out,
                                    head=SMALL_HEAD, **FAST), echo=lambda _: None)
    return out


# ----------------------------------------------------------------------------- the head's parts
def test_mfb_sum_pools_over_k_then_signed_sqrt_then_l2():
    torch.manual_seed(0)
    mfb = MFB(8, 6, k=3, o=4, dropout=0.0).eval()
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    out = mfb(x, y)
    assert out.shape == (2, 5, 4)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 5), atol=1e-6)
    z = (mfb.proj_image(x) * mfb.proj_text(y)).view(2, 5, 4, 3).sum(-1)  # o groups of k consecutive factors
    expected = z.sign() * z.abs().sqrt()
    assert torch.allclose(out, expected / expected.norm(dim=-1, keepdim=True), atol=1e-5)
    assert not torch.allclose(out, z / z.norm(dim=-1, keepdim=True), atol=1e-3)  # the square root matters
    assert torch.allclose(signed_sqrt(torch.tensor([-4.0, 0.0, 9.0])), torch.tensor([-2.0, 0.0, 3.0]), atol=1e-5)
    zero = torch.zeros(3, requires_grad=True)
    signed_sqrt(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_masked_softmax_gives_no_weight_to_masked_units_and_zeros_when_all_are_masked():
    scores = torch.tensor([[5.0, 1.0, 100.0], [1.0, 2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    w = masked_softmax(scores, mask)
    assert w[0, 2] == 0 and torch.isclose(w[0].sum(), torch.tensor(1.0))
    assert torch.equal(w[1], torch.zeros(3))
    w.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_padded_tokens_patches_and_views_do_not_change_the_logits():
    torch.manual_seed(0)
    head = TaggerHead(_config()).eval()
    x = _inputs()
    before = head(x)
    noisy = HeadInputs(x.text.clone(), x.text_mask, x.patches.clone(), x.patch_mask, x.view_mask)
    noisy.text[~x.text_mask] = 1e3  # padded tokens
    noisy.patches[~x.patch_mask] = -1e3  # the image-less product's patches
    noisy.text[2, 1] = 7.0  # product 2's missing view
    noisy.patches[2, 1] = 7.0
    after = head(noisy)
    assert torch.isfinite(after).all()
    assert torch.allclose(before, after, atol=1e-5)
    # unmasked content does matter
    changed = HeadInputs(x.text.clone(), x.text_mask, x.patches.clone(), x.patch_mask, x.view_mask)
    changed.patches[0, 0, 0] += 3.0
    assert not torch.allclose(head(changed)[0], before[0], atol=1e-4)


def test_a_product_padded_with_an_empty_view_scores_as_alone():
    torch.manual_seed(0)
    head = TaggerHead(_config()).eval()
    x = _inputs()
    alone = HeadInputs(x.text[2:, :1], x.text_mask[2:, :1], x.patches[2:, :1], x.patch_mask[2:, :1], x.view_mask[2:, :1])
    assert torch.allclose(head(x)[2], head(alone)[0], atol=1e-5)
    groups, mask = head.fused_groups(x)
    assert groups.shape == (3, 2 * 2, 12) and mask[2].tolist() == [True, True, False, False]  # glimpses x views


def test_ablation_flags_remove_their_part():
    def names(**changes) -> set[str]:
        return {n for n, _ in TaggerHead(_config(**changes)).named_parameters()}

    full = names()
    assert any(n.startswith("low_attention.") for n in full)
    assert {"fusion.proj_image.weight", "fusion.proj_text.weight"} <= full
    assert any(n.startswith("high_attention.") for n in full)
    no_low = names(use_low_level_attention=False)
    assert not any("low_attention" in n for n in no_low) and "fusion.proj_image.weight" in no_low
    concat = names(fusion="concat")
    assert not any("proj_image" in n or "proj_text" in n for n in concat) and "fusion.linear.weight" in concat
    no_high = names(use_high_level_attention=False)
    assert not any("high_attention" in n for n in no_high)
    assert "high_attention.agreement.weight" in full
    assert "high_attention.agreement.weight" not in names(view_consensus=False) and "high_attention.proj.weight" in full
    for changes in ({"use_low_level_attention": False}, {"fusion": "concat"}, {"fusion": "concat_mlp"},
                    {"use_high_level_attention": False}, {"view_consensus": False}):
        head = TaggerHead(_config(**changes)).eval()
        out = head(_inputs())
        assert out.shape == (3, 7) and torch.isfinite(out).all()
    g, _ = TaggerHead(_config(use_low_level_attention=False)).fused_groups(_inputs())
    assert g.shape[1] == 2  # one group per view: without attention every glimpse would be the same mean


def test_concat_fusion_only_adds_up_the_two_sides_and_its_mlp_form_does_not():
    torch.manual_seed(0)
    image, text = torch.randn(4, 16), torch.randn(4, 16)
    zi, zt = torch.zeros_like(image), torch.zeros_like(text)

    def interaction(fusion: torch.nn.Module) -> float:  # f(i, t) - f(i, 0) - f(0, t) + f(0, 0): zero iff additive
        with torch.no_grad():
            return float((fusion(image, text) - fusion(image, zt) - fusion(zi, text) + fusion(zi, zt)).abs().max())

    assert interaction(TaggerHead(_config(fusion="concat")).eval().fusion) < 1e-5
    assert interaction(TaggerHead(_config(fusion="concat_mlp")).eval().fusion) > 1e-2
    assert interaction(TaggerHead(_config()).eval().fusion) > 1e-2  # MFB multiplies


def test_consensus_lets_the_high_level_attention_score_a_view_by_its_agreement_with_the_others():
    """The same group gets another score when the product's other views change (never without consensus)."""
    torch.manual_seed(0)
    groups = F.normalize(torch.randn(2, 4, 12), dim=-1)
    groups[1, 0] = groups[0, 0]  # product 1 shares group 0 with product 0; its other groups differ
    mask = torch.ones(2, 4, dtype=torch.bool)
    for consensus in (True, False):
        attention = GroupAttention(12, 8, consensus=consensus).eval()
        with torch.no_grad():
            hidden = attention.proj(groups)
            if consensus:
                hidden = hidden + attention.agreement(F.normalize(groups, dim=-1) * F.normalize(
                    groups.mean(1, keepdim=True), dim=-1) * 12)
            logits = attention.score(torch.tanh(hidden)).squeeze(-1)
            _, weights = attention(groups, mask)
        assert torch.allclose(weights, torch.softmax(logits, -1), atol=1e-6)
        same = torch.isclose(logits[0, 0], logits[1, 0], atol=1e-6)
        assert bool(same) != consensus  # alone, a group's score ignores the rest of the product
    _, padded = GroupAttention(12, 8, consensus=True)(groups, torch.tensor([[True] * 4, [True, True, False, False]]))
    assert torch.all(padded[1, 2:] == 0) and torch.isclose(padded[1].sum(), torch.tensor(1.0))


def test_config_reads_taggers_saved_with_use_bilinear_and_refuses_unknown_fusions(tmp_path):
    assert TaggerConfig.from_dict({"use_bilinear": True}).fusion == "mfb"
    assert TaggerConfig.from_dict({"use_bilinear": False}).fusion == "concat_mlp"  # what False built before
    with pytest.raises(ValueError, match="fusion"):
        TaggerConfig(fusion="sum")
    with pytest.raises(ValueError, match="select_on"):
        TrainOptions(select_on="loss")
    # a tagger saved before the view consensus existed loads as what it was built as: without it
    (tmp_path / "tagger_config.json").write_text(json.dumps({k: v for k, v in TaggerConfig().to_dict().items()
                                                             if k != "view_consensus"}))
    assert TaggerConfig.load(tmp_path).view_consensus is False and TaggerConfig().view_consensus is True
    recorded = {"catalog": "c.parquet", "features": "f", "checkpoint": "ckpt"}  # a record from before select_on
    assert TagTrainConfig.from_record(recorded).select_on == "f1@3" and TagTrainConfig(**recorded).select_on == "map"


def test_focal_loss_down_weights_easy_examples():
    logits = torch.tensor([[4.0, -4.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = torch.where(targets > 0, p, 1 - p)
    assert torch.isclose(tag_loss(logits, targets, None, "focal", 2.0), ((1 - p_t) ** 2 * bce).mean())
    assert torch.isclose(tag_loss(logits, targets, None, "bce"), bce.mean())
    weighted = tag_loss(logits, targets, torch.tensor([1.0, 1.0, 3.0]), "bce")
    assert weighted > bce.mean()  # the hard positive counts three times


# ----------------------------------------------------------------------------- vocabulary and metrics
def test_vocabulary_drops_rare_tags_orders_by_count_and_round_trips(tmp_path):
    tags = [["red", "dress", "casual"], ["red", "shirt"], ["red", "dress", " "], ["blue", "dress", "dress"], None]
    vocab = TagVocabulary.build(tags, min_count=2)
    assert vocab.tags == ["dress", "red"] and vocab.counts == [3, 3]  # ties by name; "dress" counted once per product
    assert "casual" not in vocab and vocab.num_products == 5
    hot = vocab.encode([["red", "unknown"], []])
    assert hot.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    vocab.save(tmp_path)
    again = TagVocabulary.load(tmp_path)
    assert again.tags == vocab.tags and again.counts == vocab.counts and again.min_count == 2
    assert TagVocabulary.build(tags, min_count=1).tags[:2] == ["dress", "red"] and len(TagVocabulary.build(tags, 1)) == 5
    with pytest.raises(ValueError, match="min_tag_count"):
        TagVocabulary.build(tags, min_count=9)


def test_metrics_on_a_hand_computed_example():
    ranked = [["a", "b", "c", "e", "f"], ["x", "y", "z", "w", "v"], ["a", "b", "c", "d", "e"]]
    truth = [{"a", "c", "d"}, {"y"}, set()]  # the third product has no tags: skipped
    m = ranking_metrics(ranked, truth, ks=(1, 3, 5))
    assert m["n"] == 2
    assert m["p@1"] == pytest.approx(0.5) and m["r@1"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["f1@1"] == pytest.approx(2 * 0.5 * (1 / 6) / (0.5 + 1 / 6))  # 0.25: from the two means
    assert m["hit@1"] == pytest.approx(0.5)
    assert m["p@3"] == pytest.approx((2 / 3 + 1 / 3) / 2) and m["r@3"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["f1@3"] == pytest.approx(0.625) and m["hit@3"] == 1.0
    assert m["p@5"] == pytest.approx((2 / 5 + 1 / 5) / 2) and m["r@5"] == pytest.approx(5 / 6)
    scores = np.array([[0.1, 0.9, 0.9, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 0]]  # ties: lower index first
    assert score_metrics(scores, ["p", "q", "r", "s"], [{"r"}], ks=(1,))["p@1"] == 0.0


def test_average_precision_ranks_products_per_tag_and_ties_count_against():
    # positives at ranks 1 and 3 of 4: (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.5, 0.2, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # a constant score is not rewarded by the order it happens to be in: positives go last
    assert average_precision(np.zeros(4), np.array([1, 0, 0, 0])) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="do not match"):
        tag_average_precision(np.zeros((2, 3)), ["a", "b"], [{"a"}, {"b"}])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.5, 0.5]])
    truth = [{"a"}, {"b"}, {"a", "b"}, set()]  # the tagless fourth product is not ranked
    ap = tag_average_precision(scores, ["a", "b", "c"][:2], truth)
    assert ap["ap:a"] == pytest.approx(1.0) and ap["ap:b"] == pytest.approx(1.0) and ap["map"] == pytest.approx(1.0)
    flipped = tag_average_precision(scores[:, ::-1], ["a", "b"], truth)  # a ranked by b's scores: positives 2nd, 3rd
    assert flipped["ap:a"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    m = score_metrics(scores, ["a", "b"], truth, ks=(1,))
    assert m["map"] == pytest.approx(1.0) and "ap:a" not in m and "ap:a" in score_metrics(scores, ["a", "b"], truth, (1,), per_tag=True)


# ----------------------------------------------------------------------------- the trunk side
def test_states_come_from_one_joint_pass_and_missing_modalities_are_masked(tag_data: TagData):  # noqa: F811
    trunk = FashionBert.from_pretrained(tag_data.checkpoint)
    feats = np.random.default_rng(0).normal(size=(2, 64, trunk.config.patch_feature_dim)).astype(np.float32)
    x = encode_states(trunk, ["red floral dress", "red floral dress", ""], [feats[:1], None, feats], max_views=2)
    tok = trunk.tokenize(["red floral dress"], "T")
    with torch.no_grad():
        joint = trunk.model(**tok, patch_features=torch.from_numpy(feats[:1]))
        alone = trunk.model(**tok)
    t = joint.text_length
    n = int(tok["attention_mask"].sum())
    assert torch.allclose(x.text[0, 0, :n], joint.last_hidden_state[0, :t], atol=1e-5)
    assert torch.allclose(x.patches[0, 0], joint.last_hidden_state[0, t:], atol=1e-5)
    assert torch.allclose(x.text[1, 0, :n], alone.last_hidden_state[0], atol=1e-4)  # masked patches: as if absent
    assert not x.patch_mask[1].any() and x.view_mask[1].tolist() == [True, False]
    assert x.text_mask[2, 0].sum() == 2 and x.view_mask[2].tolist() == [True, True]  # no title: [CLS] [SEP]
    back = collate_states(split_states(x, torch.float32), 64)
    torch.manual_seed(0)
    head = TaggerHead(_config(hidden_size=trunk.config.hidden_size)).eval()
    assert torch.allclose(head(back), head(x), atol=1e-5)  # the cache's unpadded round trip changes nothing


def test_separate_passes_keep_the_modalities_apart(tag_data: TagData):  # noqa: F811
    """Late-fusion input: the text states ignore the picture and the patch states ignore the title."""
    trunk = FashionBert.from_pretrained(tag_data.checkpoint)
    feats = np.random.default_rng(1).normal(size=(2, 64, trunk.config.patch_feature_dim)).astype(np.float32)
    x = encode_states(trunk, ["red floral dress", "red floral dress", "blue shirt"], [feats[:1], feats[1:], feats[:1]],
                      max_views=1, passes="separate")
    tok = trunk.tokenize(["red floral dress"], "T")
    n = int(tok["attention_mask"].sum())
    with torch.no_grad():
        alone = trunk.model(**tok).last_hidden_state[0]
        image = trunk.model.encode_image_only(torch.from_numpy(feats[:1])).last_hidden_state[0, 2:]
    assert torch.allclose(x.text[0, 0, :n], alone, atol=1e-4) and torch.allclose(x.text[1, 0, :n], alone, atol=1e-4)
    assert torch.allclose(x.patches[0, 0], image, atol=1e-4) and torch.allclose(x.patches[2, 0], image, atol=1e-4)
    joint = encode_states(trunk, ["red floral dress", "blue shirt"], [feats[:1], feats[:1]], max_views=1)
    assert not torch.allclose(joint.patches[0, 0], joint.patches[1, 0], atol=1e-3)  # the joint pass mixes the title in
    with pytest.raises(ValueError, match="passes"):
        encode_states(trunk, ["x"], [None], max_views=1, passes="early")
    with pytest.raises(ValueError, match="trunk_passes must be 'joint' or 'separate'"):
        _config(trunk_passes="early")
    assert TaggerConfig.from_dict(_config(trunk_passes="separate").to_dict()).trunk_passes == "separate"


# ----------------------------------------------------------------------------- training and inference
def test_training_beats_the_most_frequent_baseline_on_held_out_f1_at_3(trained: Path, tag_data: TagData):  # noqa: F811
    metrics = evaluate_tagger(trained, tag_data.test_catalog, tag_data.test_features, echo=lambda _: None)
    assert metrics["model.n"] == 30
    assert metrics["model.f1@3"] > metrics["most_frequent.f1@3"] + 0.05, metrics
    assert {"model.p@1", "model.r@3", "model.hit@5", "late_fusion.f1@3", "joint_probe.f1@3", "most_frequent.p@5"} <= set(metrics)


def _first_best(history: list[dict], metric: str) -> int:
    scores = [h["val"][metric] for h in history]
    return history[scores.index(max(scores))]["epoch"]


def test_the_kept_epoch_is_the_best_on_the_chosen_validation_metric(trained: Path, tag_data: TagData, tmp_path):  # noqa: F811
    info = Tagger.from_pretrained(trained).info
    assert info["train"]["select_on"] == "map" and len(info["history"]) == FAST["epochs"]
    assert info["best_epoch"] == _first_best(info["history"], "map")
    train_tagger(TagTrainConfig(tag_data.train_catalog, tag_data.train_features, tag_data.checkpoint, tmp_path / "f1",
                                head=SMALL_HEAD, **{**FAST, "epochs": 6, "select_on": "f1@3"}), echo=lambda _: None)
    info = Tagger.from_pretrained(tmp_path / "f1").info
    assert info["best_epoch"] == _first_best(info["history"], "f1@3")
    assert info["best_val"] == info["history"][info["best_epoch"] - 1]["val"]


def test_missing_image_or_title_still_yield_tags(trained: Path, tag_data: TagData):  # noqa: F811
    tagger = Tagger.from_pretrained(trained)
    data, _ = load_tag_data(tag_data.test_catalog, tag_data.test_features, 1)
    title, views = data.titles[0], data.views(0)
    both, text_only, image_only, none_title = tagger.predict([title, title, "", None], [views, None, views, views], k=4)
    for tags in (both, text_only, image_only, none_title):
        assert len(tags) == 4 and all(t in tagger.vocabulary for t, _ in tags)
        scores = [s for _, s in tags]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    # No title and an empty title are the same input (at other rows of the batch, so equal up to float
    # rounding: a CPU kernel may sum a row in another order).
    assert [t for t, _ in image_only] == [t for t, _ in none_title]
    assert [s for _, s in image_only] == pytest.approx([s for _, s in none_title], abs=1e-6)
    assert [s for _, s in text_only] != [s for _, s in both] != [s for _, s in image_only]  # each modality is read
    top3 = {tuple(t for t, _ in tags) for tags in tagger.predict(data.titles, [None] * len(data), k=3)}
    assert len(top3) > 1  # titles alone: not one answer for all


def test_save_load_round_trip_gives_identical_scores(trained: Path, tag_data: TagData, tmp_path):  # noqa: F811
    tagger = Tagger.from_pretrained(trained)
    data, _ = load_tag_data(tag_data.test_catalog, tag_data.test_features, 1)
    views = [data.views(i) for i in range(8)]
    scores = tagger.scores(data.titles[:8], views)
    copy = Tagger.from_pretrained(tagger.save_pretrained(tmp_path / "copy"))
    assert np.array_equal(copy.scores(data.titles[:8], views), scores)
    assert copy.version == tagger.version and copy.config == tagger.config
    assert copy.info["train"]["seed"] == 0 and Path(copy.info["catalog"]) == tag_data.train_catalog.resolve()
    for name in ("tagger_config.json", "head.safetensors", "tags.json", "trunk/model.safetensors", "trunk/tokenizer.json"):
        assert (tmp_path / "copy" / name).is_file(), name


def test_same_seed_same_tagger_and_fine_tuning_moves_the_trunk(tag_data: TagData, tmp_path):  # noqa: F811
    base = dict(catalog=tag_data.train_catalog, features=tag_data.train_features, checkpoint=tag_data.checkpoint,
                head=SMALL_HEAD, **{**FAST, "epochs": 2})
    a = train_tagger(TagTrainConfig(out=tmp_path / "a", **base), echo=lambda _: None)
    b = train_tagger(TagTrainConfig(out=tmp_path / "b", **base), echo=lambda _: None)
    assert a.best_val == b.best_val
    assert (tmp_path / "a/head.safetensors").read_bytes() == (tmp_path / "b/head.safetensors").read_bytes()
    c = train_tagger(TagTrainConfig(out=tmp_path / "c", **{**base, "epochs": 1, "fine_tune_trunk": True}), echo=lambda _: None)
    assert c.epochs == 1
    original = FashionBert.from_pretrained(tag_data.checkpoint).model.state_dict()
    tuned = Tagger.from_pretrained(tmp_path / "c").trunk.model.state_dict()
    frozen = Tagger.from_pretrained(tmp_path / "a").trunk.model.state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(frozen[key], original[key]) and not torch.equal(tuned[key], original[key])
    assert not Tagger.from_pretrained(tmp_path / "c").config.freeze_trunk


def test_time_budget_stops_training(tag_data: TagData, tmp_path):  # noqa: F811
    cfg = TagTrainConfig(tag_data.train_catalog, tag_data.train_features, tag_data.checkpoint, tmp_path / "t",
                         head=SMALL_HEAD, **{**FAST, "epochs": 50, "max_minutes": 0.0001})
    summary = train_tagger(cfg, echo=lambda _: None)
    assert summary.stopped_by == "time" and summary.epochs == 1


def test_ablations_train_every_variant_on_the_same_data(tag_data: TagData, tmp_path):  # noqa: F811
    cfg = TagTrainConfig(tag_data.train_catalog, tag_data.train_features, tag_data.checkpoint, head=SMALL_HEAD,
                         **{**FAST, "epochs": 2})
    lines: list[str] = []
    table = run_ablations(cfg, tag_data.test_catalog, tag_data.test_features, json_out=tmp_path / "abl.json",
                          echo=lines.append)
    # a one-view tagger has no strays injected (injected_share is 0), so the three variants of the injection's
    # training would train exactly as full: skipped, and said so
    assert list(table) == ["full", "no_low_level_attention", "concat_fusion", "concat_mlp_fusion", "no_high_level_attention",
                           "no_view_consensus", "sparse_group_weights", "gated_group_weights"]
    assert sum("skipped: it trains exactly as full does here" in line for line in lines) == 3
    params = {name: m["parameters"] for name, m in table.items()}
    reweighted = ("sparse_group_weights", "gated_group_weights")  # the same parts, another weighting of the groups
    assert all(params[name] < params["full"] for name in table if name not in ("full", *reweighted))
    assert all(params[name] == params["full"] for name in reweighted)
    assert all(0 <= m["f1@3"] <= 1 and m["epochs"] == 2 for m in table.values())
    assert "| concat_fusion |" in (tmp_path / "abl.md").read_text()
    assert json.loads((tmp_path / "abl.json").read_text())["metrics"]["full.f1@3"] == table["full"]["f1@3"]


def test_trend_tag_map_is_the_mean_ap_of_the_trend_tags_only():
    per_tag = {"ap:in-season-colour": 0.4, "ap:in-season-cut": 0.8, "ap:dress": 1.0, "map": 0.7}
    assert trend_tag_map(per_tag) == {"trend_map": pytest.approx(0.6)}
    assert trend_tag_map({"ap:dress": 1.0, "map": 1.0}) == {}  # a catalog without trend tags: no key


def test_ablations_over_seeds_report_the_mean_and_the_spread(tag_data: TagData, tmp_path):  # noqa: F811
    cfg = TagTrainConfig(tag_data.train_catalog, tag_data.train_features, tag_data.checkpoint, head=SMALL_HEAD,
                         **{**FAST, "epochs": 2})
    lines: list[str] = []
    table = run_ablations(cfg, tag_data.test_catalog, tag_data.test_features, json_out=tmp_path / "abl.json", seeds=2,
                          variants=["no_high_level_attention"], echo=lines.append)
    assert list(table) == ["full", "no_high_level_attention"]  # the selection, with full as the reference row
    per_seed = {name: [float(line.split("F1@3 ")[1].split()[0].rstrip(",")) for line in lines
                       if line.startswith(f"tags ablations: {name} seed ")] for name in table}
    for name, values in table.items():
        assert len(per_seed[name]) == 2 and values["seeds"] == 2
        assert values["f1@3"] == pytest.approx(np.mean(per_seed[name]), abs=1e-4)
        assert values["f1@3_sd"] == pytest.approx(np.std(per_seed[name], ddof=1), abs=1e-4)
        assert values["map_sd"] >= 0
        # the season trend tags, which only an interaction of title and picture predicts, get their own mAP
        trend = [values[f"ap:{tag}"] for tag in TREND_TAGS if f"ap:{tag}" in values]
        assert trend and values["trend_map"] == pytest.approx(np.mean(trend)) and values["trend_map_sd"] >= 0
    assert "| trend_map | f1@3_sd | map_sd | trend_map_sd |" in (tmp_path / "abl.md").read_text()  # the spread columns


def test_baselines_are_fitted_on_the_taggers_own_training_rows(trained: Path, tag_data: TagData, monkeypatch):  # noqa: F811
    data, _ = load_tag_data(tag_data.train_catalog, tag_data.train_features, 1)
    train_rows, val_rows = training_split(data, 0.1, seed=0)
    assert train_rows and val_rows and not set(train_rows) & set(val_rows)
    assert sorted(train_rows + val_rows) == [i for i, t in enumerate(data.tags) if t]
    assert training_split(data, 0.1, seed=0) == (train_rows, val_rows) != training_split(data, 0.1, seed=1)
    fitted_rows: list[int] = []
    real_fit = LateFusionLinear.fit.__func__

    def counting_fit(cls, features, targets, **kw):  # the real fit, counting its rows
        fitted_rows.append(len(features))
        return real_fit(cls, features, targets, **kw)

    monkeypatch.setattr(LateFusionLinear, "fit", classmethod(counting_fit))
    evaluate_tagger(trained, tag_data.test_catalog, tag_data.test_features, echo=lambda _: None)
    record = json.loads((trained / "tagger_info.json").read_text())["train"]
    # two linear fits (late fusion on separate passes, the joint-pass probe), both on the tagger's rows
    assert fitted_rows == [len(training_split(data, record["val_fraction"], record["seed"])[0])] * 2
    assert fitted_rows[0] < len(train_rows) + len(val_rows)  # the validation rows stay unseen by the baseline too


def test_most_frequent_baseline_ranks_by_training_frequency():
    vocab = TagVocabulary.build([["a", "b"], ["a"], ["c", "a"], ["b"]], 1)
    scores = MostFrequentTags(vocab).scores(2)
    assert scores.shape == (2, 3) and top_k(scores, 3)[0].tolist() == [0, 1, 2] and vocab.tags[0] == "a"


# ----------------------------------------------------------------------------- CLI
def test_cli_train_predict_eval(tag_data: TagData, tmp_path):  # noqa: F811
    runner = CliRunner()
    tagger = tmp_path / "tagger"
    common = ["--catalog", str(tag_data.train_catalog), "--features", str(tag_data.train_features)]
    r = runner.invoke(app, ["tags", "train", *common, "--checkpoint", str(tag_data.checkpoint), "--out", str(tagger),
                                 "--epochs", "2", "--batch-size", "16", "--loss", "focal", "--seed", "1",
                                 "--stray-injection", "0.3", "--stray-loss-weight", "0.5"])
    assert r.exit_code == 0, r.output
    assert "tags train:" in r.output and (tagger / "head.safetensors").is_file()
    assert (tagger / "fashionbert-tags-train.yaml").is_file()  # the effective config, beside the output
    record = json.loads((tagger / "tagger_info.json").read_text())["train"]
    assert record["loss"] == "focal" and record["stray_injection"] == 0.3 and record["stray_loss_weight"] == 0.5

    held = ["--catalog", str(tag_data.test_catalog), "--features", str(tag_data.test_features)]
    out = tmp_path / "pred.parquet"
    r = runner.invoke(app, ["tags", "predict", "--tagger", str(tagger), *held, "--out", str(out), "--k", "3"])
    assert r.exit_code == 0, r.output
    table = pq.read_table(out)
    assert table.column_names == ["product_id", "tags", "scores"] and table.num_rows == 30
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["tags"]) == 3 and row["scores"] == sorted(row["scores"], reverse=True)

    report = tmp_path / "eval.json"
    r = runner.invoke(app, ["tags", "eval", "--tagger", str(tagger), *held, "--json", str(report)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(report.read_text())["metrics"]
    assert {"model.p@1", "model.r@3", "model.f1@3", "model.hit@5", "late_fusion.f1@3", "most_frequent.f1@3"} <= set(metrics)
    assert "| late_fusion |" in r.output and "| model |" in report.with_suffix(".md").read_text()


def test_cli_bad_input_fails_with_a_clear_message(tag_data: TagData, tmp_path):  # noqa: F811
    runner = CliRunner()
    held = ["--catalog", str(tag_data.test_catalog), "--features", str(tag_data.test_features)]
    r = runner.invoke(app, ["tags", "predict", "--tagger", str(tmp_path / "missing"), *held, "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code == 1 and "tagger directory not found" in r.output and "Traceback" not in r.output
    untagged = tmp_path / "untagged.parquet"
    pq.write_table(pq.read_table(tag_data.train_catalog).drop_columns(["tags"]), untagged)
    r = runner.invoke(app, ["tags", "train", "--catalog", str(untagged), "--features", str(tag_data.train_features),
                                 "--checkpoint", str(tag_data.checkpoint), "--out", str(tmp_path / "t")])
    assert r.exit_code == 1 and "no 'tags' column" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["tags", "train", "--catalog", str(tag_data.train_catalog), "--features", str(tmp_path),
                                 "--checkpoint", str(tag_data.checkpoint), "--out", str(tmp_path / "t")])
    assert r.exit_code == 1 and "fashionbert features" in r.output and "Traceback" not in r.output
    trained_tagger = ["--tagger", str(tmp_path / "missing")]
    for extra, message in ((["--ablations", "--variants", "full,no_mfb"], "unknown ablation variant(s) no_mfb"),
                           (["--variants", "concat_fusion"], "it needs --ablations")):
        r = runner.invoke(app, ["tags", "eval", *trained_tagger, *held, *extra])
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output


def test_the_cli_and_the_job_config_train_with_the_libraries_defaults():
    """The CLI's `tags train` defaults and TagTrainConfig's are TrainOptions' (three places that must agree)."""
    import inspect

    from pipelines.tags_cli import train as train_command

    options = TrainOptions()
    cli = {name: p.default for name, p in inspect.signature(train_command).parameters.items()}
    job = TagTrainConfig(Path("c"), Path("f"), Path("k")).options()
    for name, cli_name in (("max_epochs", "epochs"), ("loss", "loss"), ("seed", "seed"), ("batch_size", "batch_size"),
                           ("lr", "lr"), ("patience", "patience"), ("select_on", "select_on"),
                           ("stray_injection", "stray_injection"), ("stray_loss_weight", "stray_loss_weight")):
        assert cli[cli_name] == getattr(options, name) == getattr(job, name), name
