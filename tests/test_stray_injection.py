"""Injected strays: a training row read with one photo swapped for another product's (design item 56).

The plans are checked against their contract (never the front shot, a donor of the same group,
deterministic), the loss against its values, and training end to end on a tiny trunk: taught on
injected strays, the high-level attention gives a swapped-in photo far less than the masked
mean's share, and the same run without them does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashionbert.encoder import FashionBert
from fashionbert.vision import BACKBONES, DEFAULT_IMAGE_ENCODER
from fashionbert.tagging import StrayPlan, TagDataset, TaggerConfig, TrainOptions, fit_tagger
from fashionbert.tagging.dataset import STRAY
from fashionbert.tagging.training import StateCache, _inject_strays, stray_loss
from tests.tagging_fixtures import TagData, one_torch_thread, tag_data  # noqa: F401 - fixture
from tests.test_tagging import SMALL_HEAD

P, D = 64, BACKBONES[DEFAULT_IMAGE_ENCODER]  # the tiny checkpoint's patch grid and feature size


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _views_dataset(n: int = 40, seed: int = 0) -> TagDataset:
    """``n`` products of two groups and four styles; product i has 1 + i % 4 views (row 3: none), noisy copies
    of its style's prototype, and its style as tag."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(4, P, D)).astype(np.float32)
    style = [i % 4 for i in range(n)]
    counts = [0 if i == 3 else 1 + i % 4 for i in range(n)]
    views = {i: (prototypes[style[i]] + 0.3 * rng.normal(size=(counts[i], P, D))).astype(np.float32)
             for i in range(n) if counts[i]}
    return TagDataset([f"item {i} style {style[i]}" for i in range(n)], [[f"style{style[i]}"] for i in range(n)],
                      views=lambda i: views.get(i), groups=["a" if i < n // 2 else "b" for i in range(n)])


def test_plans_take_the_donor_shot_in_the_same_position_from_the_same_group():
    data = _views_dataset()
    planned = 0
    for row in range(len(data)):
        for max_views in (1, 2, 4):
            plan = data.stray_plan(row, max_views)
            shown = min(len(data.views(row)) if data.views(row) is not None else 0, max_views)
            if shown < 2:
                assert plan is None  # one view read (or none): nothing may be swapped
                continue
            planned += 1
            assert isinstance(plan, StrayPlan) and plan.host == row and 0 <= plan.slot < shown
            assert plan.donor != row and data.groups[plan.donor] == data.groups[row]
            assert data.views(plan.donor) is not None
            assert plan.donor_view == min(plan.slot, len(data.views(plan.donor)) - 1)  # the same kind of shot
    assert planned > 20
    again = _views_dataset()  # a fresh dataset draws the same plans: the cache keys (row, "stray") stay valid
    assert all(again.stray_plan(r, 4) == data.stray_plan(r, 4) for r in range(len(data)))
    # every position, the front shot too: a stray told by its position would teach "keep the front shot alone"
    assert {data.stray_plan(r, 4).slot for r in range(len(data)) if data.stray_plan(r, 4)} == {0, 1, 2, 3}


def test_stray_views_swap_exactly_the_planned_slot():
    data = _views_dataset()
    plan = next(p for r in range(len(data)) if (p := data.stray_plan(r, 4)) is not None and len(data.views(r)) == 4)
    titles, (views,) = data.inputs([plan.host], [STRAY], max_views=4)
    host, donor = data.views(plan.host), data.views(plan.donor)
    assert titles == [data.titles[plan.host]] and views.shape == host.shape
    assert np.array_equal(views[plan.slot], donor[plan.donor_view])
    others = [s for s in range(len(host)) if s != plan.slot]
    assert np.array_equal(views[others], host[others])
    assert not np.array_equal(data.views(plan.host)[plan.slot], donor[plan.donor_view])  # the host's copy is untouched


def test_a_stray_variant_without_a_plan_or_max_views_is_refused():
    data = _views_dataset()
    with pytest.raises(ValueError, match="no stray plan"):
        data.inputs([0], [STRAY], max_views=4)  # row 0 has one view
    with pytest.raises(ValueError, match="no stray plan"):
        data.inputs([5], [STRAY])  # no max_views: the slot is unknown
    with pytest.raises(ValueError, match="unknown variant"):
        data.inputs([5], ["blurred"])
    with pytest.raises(ValueError, match="groups"):
        TagDataset(["a", "b"], [[], []], views=lambda i: None, groups=["x"])


def test_injection_only_turns_full_rows_with_a_plan_and_draws_nothing_when_off():
    data = _views_dataset()
    rows = list(range(len(data)))
    gen = torch.Generator().manual_seed(0)
    assert _inject_strays(rows, ["full"] * len(rows), 0.0, data, 4, gen) == ["full"] * len(rows)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())  # old runs keep their stream
    variants = ["no_image" if r % 5 == 0 else "full" for r in rows]
    out = _inject_strays(rows, variants, 1.0, data, 4, gen)
    for r, before, after in zip(rows, variants, out):
        expected = STRAY if before == "full" and data.stray_plan(r, 4) is not None else before
        assert after == expected
    assert STRAY in out


def test_stray_loss_is_zero_for_a_dropped_stray_and_grows_with_its_weight():
    weights = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.8, 0.0]], requires_grad=True)
    slots = torch.tensor([1, 1])
    loss = stray_loss(weights, slots)
    assert loss.item() == pytest.approx(-(np.log(1.0) + np.log(0.2)) / 2, rel=1e-5)
    loss.backward()
    assert weights.grad[1, 1] > 0 and weights.grad[0, 1] > 0 and weights.grad[:, [0, 2]].abs().sum() == 0
    assert torch.isfinite(stray_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([1])))  # all weight on it: large, finite


def test_options_check_the_stray_settings():
    with pytest.raises(ValueError, match="stray_injection"):
        TrainOptions(stray_injection=1.5)
    with pytest.raises(ValueError, match="stray_loss_weight"):
        TrainOptions(stray_loss_weight=-1.0)


def test_injection_is_on_by_default_for_several_views_and_moot_for_one(tag_data: TagData):  # noqa: F811
    """A tagger reading one view trains exactly as before injection existed, whatever the share says."""
    options = TrainOptions()
    assert options.stray_injection > 0 and options.injected_share(4) == options.stray_injection
    assert options.injected_share(1) == 0.0
    trunk = FashionBert.from_pretrained(tag_data.checkpoint)
    data = _views_dataset()
    cache = StateCache(trunk, data, max_views=1)
    config = TaggerConfig(**SMALL_HEAD, max_views=1, min_tag_count=1)
    lines: list[str] = []
    heads = []
    for share in (0.0, 1.0):
        fast = TrainOptions(max_epochs=2, batch_size=8, val_fraction=0.0, seed=0, progress=False, stray_injection=share)
        head = fit_tagger(trunk, data, config, fast, echo=lines.append, cache=cache).tagger.head
        heads.append(torch.cat([p.detach().flatten() for p in head.parameters()]))
    assert torch.equal(heads[0], heads[1])
    assert not any("injected strays" in line for line in lines)


def test_swapped_rows_can_be_kept_out_of_the_tag_loss(tag_data: TagData):  # noqa: F811
    """With ``stray_tag_loss=False`` a row read with a stray feeds only the stray loss: when every row is one
    and the stray loss is off, nothing is left to learn from (loss 0); with it, the tag loss reads them."""
    trunk = FashionBert.from_pretrained(tag_data.checkpoint)
    base = _views_dataset()
    two_plus = [r for r in range(len(base)) if base.views(r) is not None and len(base.views(r)) >= 2]
    data = TagDataset([base.titles[r] for r in two_plus], [base.tags[r] for r in two_plus],
                      views=lambda i: base.views(two_plus[i]), groups=[base.groups[r] for r in two_plus])
    cache = StateCache(trunk, data, max_views=4)
    config = TaggerConfig(**SMALL_HEAD, max_views=4, min_tag_count=1)
    losses = {}
    for kept in (True, False):
        options = TrainOptions(max_epochs=1, batch_size=8, val_fraction=0.0, seed=0, progress=False, modality_dropout=0.0,
                               stray_injection=1.0, stray_loss_weight=0.0, stray_tag_loss=kept)
        losses[kept] = fit_tagger(trunk, data, config, options, echo=lambda _: None, cache=cache).history[0]["loss"]
    assert losses[False] == 0.0 and losses[True] > 0.1, losses


def _stray_weight(result, data: TagDataset, cache: StateCache) -> float:
    rows = [r for r in range(len(data)) if data.stray_plan(r, 4) is not None]
    with torch.no_grad():
        weights = result.tagger.head.view_weights(cache.batch(rows, [STRAY] * len(rows)))
    return float(np.mean([float(weights[b, data.stray_plan(r, 4).slot]) for b, r in enumerate(rows)]))


def test_training_on_injected_strays_teaches_the_attention_to_drop_them(tag_data: TagData):  # noqa: F811
    trunk = FashionBert.from_pretrained(tag_data.checkpoint)
    data = _views_dataset()
    cache = StateCache(trunk, data, max_views=4)
    config = TaggerConfig(**SMALL_HEAD, max_views=4, min_tag_count=1)
    runs = {}
    for name, share in (("taught", 1.0), ("plain", 0.0)):
        options = TrainOptions(max_epochs=15, batch_size=8, lr=3e-3, patience=15, val_fraction=0.0, seed=0, progress=False,
                               modality_dropout=0.0, stray_injection=share)
        runs[name] = _stray_weight(fit_tagger(trunk, data, config, options, echo=lambda _: None, cache=cache), data, cache)
    rows = [r for r in range(len(data)) if data.stray_plan(r, 4) is not None]
    uniform = float(np.mean([1 / min(len(data.views(r)), 4) for r in rows]))
    assert runs["taught"] < 0.5 * uniform, runs
    assert runs["taught"] < 0.5 * runs["plain"], runs


def test_the_stray_loss_trains_the_view_scorer_alone():
    """With ``scorer_only`` the views' weights carry gradient to the high-level attention, not to the fusion
    or the low-level attention: the stray loss may teach where to look, not what the fused vectors encode."""
    from fashionbert.tagging import TaggerHead
    from tests.test_tagging import _config, _inputs

    torch.manual_seed(0)
    x = _inputs(v=3)
    for scorer_only, fusion_learns in ((True, False), (False, True)):
        head = TaggerHead(_config())
        logits, weights = head.logits_and_view_weights(x, scorer_only=scorer_only)
        assert torch.allclose(logits, head(x))  # the same logits either way (no dropout in _config)
        weights[:, 1].sum().backward()
        attention = [p.grad for p in head.high_attention.parameters()]
        fusion = [p.grad for p in (*head.fusion.parameters(), *head.low_attention.parameters())]
        assert any(g is not None and g.abs().sum() > 0 for g in attention)
        assert any(g is not None and g.abs().sum() > 0 for g in fusion) == fusion_learns
    with torch.no_grad():
        head.eval()
        assert torch.allclose(head.logits_and_view_weights(x, scorer_only=True)[1], head.view_weights(x))


def test_gates_are_the_mean_when_equal_and_shut_a_unit_out_on_its_own_score():
    from fashionbert.tagging import masked_gate, masked_softmax

    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    for level in (-3.0, 0.0, 4.0):  # equal gates at any level: the masked mean
        w = masked_gate(torch.full((2, 4), level), mask)
        assert torch.allclose(w[0], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0])) and torch.equal(w[1], torch.zeros(4))
    scores = torch.tensor([[2.0, 2.0, -8.0, 9.0]])
    w = masked_gate(scores, mask[:1])
    assert w[0, 2] < 1e-3 and torch.isclose(w[0, 0], w[0, 1]) and w[0, 3] == 0  # the low one is shut, the rest share
    raised = masked_gate(torch.tensor([[6.0, 2.0, -8.0, 9.0]]), mask[:1])
    softer = masked_softmax(torch.tensor([[6.0, 2.0, -8.0, 9.0]]), mask[:1])
    assert raised[0, 1] > 0.4 and softer[0, 1] < 0.02  # one confident view does not crowd the others out, unlike a softmax
    assert TaggerConfig(group_weights="gate").group_weights == "gate"
