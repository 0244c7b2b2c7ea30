"""Adaptive loss weights (FashionBERT eq. 5-6): the closed form against a numerical solver, and the strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from fashionbert.training.loss_weighting import (
    AdaptiveGradWeighting,
    AdaptiveSoftmaxWeighting,
    FixedWeighting,
    LossWeighting,
    adaptive_objective,
    build_loss_weighting,
    combine,
    solve_adaptive_weights,
)

FAST = settings(derandomize=True, max_examples=60, deadline=None)

# g vectors: L in {2,...,5}, values in [0, 1).
g_vectors = st.integers(min_value=2, max_value=5).flatmap(
    lambda n: st.lists(
        st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False), min_size=n, max_size=n
    )
)


def _numerical_solution(g: np.ndarray) -> np.ndarray:
    n = len(g)
    res = minimize(
        adaptive_objective,
        x0=np.full(n, 1.0 / n),
        args=(g,),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert res.success, res.message
    return res.x


@FAST
@given(g_vectors)
def test_closed_form_matches_constrained_numerical_minimum(g_list: list[float]) -> None:
    g = np.asarray(g_list)
    w = solve_adaptive_weights(torch.tensor(g)).numpy()
    assert np.max(np.abs(w - _numerical_solution(g))) < 1e-4


@FAST
@given(g_vectors, st.integers(min_value=0, max_value=2**31 - 1))
def test_closed_form_beats_random_feasible_points(g_list: list[float], seed: int) -> None:
    g = np.asarray(g_list)
    f_star = adaptive_objective(solve_adaptive_weights(torch.tensor(g)), g)
    rng = np.random.default_rng(seed)
    samples = np.concatenate([rng.dirichlet(np.ones(len(g)), size=300), np.eye(len(g))])  # + the vertices
    assert all(f_star <= adaptive_objective(w, g) + 1e-12 for w in samples)


@FAST
@given(g_vectors)
def test_weights_on_simplex_and_monotone_in_g(g_list: list[float]) -> None:
    g = torch.tensor(g_list, dtype=torch.float64)
    w = solve_adaptive_weights(g)
    assert abs(float(w.sum()) - 1.0) < 1e-6
    assert bool((w > 0).all())
    # Direction: w_i ∝ 1/(L - g_i), so a larger g_i gives a larger (never smaller) w_i.
    order = torch.argsort(g)
    assert bool((torch.diff(w[order]) >= -1e-15).all())
    # ... and the spread is bounded by L/(L-1).
    assert float(w.max() / w.min()) <= len(g) / (len(g) - 1) + 1e-12


def test_monotone_strict_and_equal_g_gives_equal_weights() -> None:
    w = solve_adaptive_weights(torch.tensor([0.1, 0.5, 0.9]))
    assert w[0] < w[1] < w[2]
    for n in (1, 2, 3, 5):
        for value in (0.0, 0.3, 0.99):
            expected = torch.full((n,), 1.0 / n, dtype=torch.float64)
            torch.testing.assert_close(solve_adaptive_weights(torch.full((n,), value)), expected)


@pytest.mark.parametrize(
    "g",
    [[0.2, 1.0], [-0.1, 0.5], [float("nan"), 0.1], [float("inf"), 0.1], [], [[0.1, 0.2]]],
)
def test_invalid_g_raises(g: list) -> None:
    with pytest.raises(ValueError):
        solve_adaptive_weights(torch.tensor(g, dtype=torch.float64))


class _TwoHeads(torch.nn.Module):
    """A shared Linear trunk, two heads, and a third head that never sees the trunk."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Linear(4, 8)
        self.head_a = torch.nn.Linear(8, 1)
        self.head_b = torch.nn.Linear(8, 1)
        self.head_c = torch.nn.Linear(4, 1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return {
            "mlm": self.head_a(h).pow(2).mean(),
            "tia": 10.0 * self.head_b(h).pow(2).mean(),  # ×10: larger gradient norm on the trunk
            "mpm": self.head_c(x).pow(2).mean(),  # not connected to the shared parameters
        }


def _sq_grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(float(gr.double().pow(2).sum()) for gr in grads if gr is not None)


def test_adaptive_grad_weighting_on_a_real_model() -> None:
    torch.manual_seed(0)
    model = _TwoHeads()
    shared = list(model.trunk.parameters())
    losses = model.losses(torch.randn(16, 4))
    weighting = AdaptiveGradWeighting()
    weights = weighting(losses, shared_parameters=shared)

    assert list(weights) == list(losses)
    for w in weights.values():
        assert w.ndim == 0 and w.grad_fn is None and not w.requires_grad
    assert abs(sum(float(w) for w in weights.values()) - 1.0) < 1e-6
    assert all(p.grad is None for p in model.parameters())  # autograd.grad leaves .grad alone

    n = {k: _sq_grad_norm(loss, shared) for k, loss in losses.items()}
    g = {k: v / sum(n.values()) for k, v in n.items()}
    assert weighting.last_g["mpm"] == 0.0
    assert g["tia"] > g["mlm"] > 0
    for k in losses:
        assert weighting.last_g[k] == pytest.approx(g[k], rel=1e-6)
    expected = solve_adaptive_weights(torch.tensor([g[k] for k in losses], dtype=torch.float64))
    for i, k in enumerate(losses):
        assert weighting.last_weights[k] == pytest.approx(float(expected[i]), rel=1e-6)
    assert weights["tia"] > weights["mlm"] > weights["mpm"]

    # The combined loss back-propagates into the model, with the weights as constants.
    total = combine(losses, weights)
    total.backward()
    assert model.head_b.weight.grad is not None
    assert all(p.grad is not None for p in model.parameters())


def test_adaptive_grad_edge_cases() -> None:
    model = _TwoHeads()
    losses = model.losses(torch.randn(8, 4))
    weighting = AdaptiveGradWeighting()
    with pytest.raises(ValueError):
        weighting(losses)
    single = weighting({"mlm": losses["mlm"]}, shared_parameters=list(model.trunk.parameters()))
    assert float(single["mlm"]) == 1.0
    # A constant loss (no grad path at all) gets g = 0 too.
    weights = weighting({"mlm": losses["mlm"], "const": torch.tensor(3.0)}, list(model.trunk.parameters()))
    assert weighting.last_g["const"] == 0.0 and weights["mlm"] > weights["const"]


def test_adaptive_softmax_matches_hand_computation() -> None:
    losses = {"mlm": torch.tensor(2.3, requires_grad=True), "tia": torch.tensor(0.7), "mpm": torch.tensor(1.1)}
    for temperature in (1.0, 2.0):
        weighting = AdaptiveSoftmaxWeighting(temperature=temperature)
        weights = weighting(losses)
        vals = np.array([2.3, 0.7, 1.1]) / temperature
        g = (np.exp(vals) / np.exp(vals).sum()) ** 2
        inv = 1.0 / (3 - g)
        expected = inv / inv.sum()
        np.testing.assert_allclose([float(weights[k]) for k in losses], expected, rtol=1e-6)
        np.testing.assert_allclose([weighting.last_g[k] for k in losses], g, rtol=1e-6)
        assert all(not w.requires_grad for w in weights.values())
        assert weights["mlm"] > weights["mpm"] > weights["tia"]  # larger loss, larger weight
    equal = AdaptiveSoftmaxWeighting()({k: torch.tensor(0.5) for k in ("a", "b", "c", "d")})
    assert all(float(w) == pytest.approx(0.25) for w in equal.values())
    assert float(AdaptiveSoftmaxWeighting()({"only": torch.tensor(4.0)})["only"]) == 1.0
    with pytest.raises(ValueError):
        AdaptiveSoftmaxWeighting()({"a": torch.tensor(float("nan")), "b": torch.tensor(1.0)})


def test_fixed_weighting() -> None:
    losses = {k: torch.tensor(v) for k, v in (("mlm", 1.0), ("tia", 5.0), ("mpm", 0.1))}
    default = FixedWeighting()
    assert {k: float(w) for k, w in default(losses).items()} == pytest.approx({k: 1 / 3 for k in losses})
    custom = FixedWeighting({"mlm": 2.0, "tia": 1.0, "mpm": 1.0, "itc": 4.0})
    custom(losses)
    assert custom.last_weights == pytest.approx({"mlm": 0.5, "tia": 0.25, "mpm": 0.25})
    with pytest.raises(ValueError):
        FixedWeighting({"mlm": 1.0})(losses)  # no weight for tia/mpm
    with pytest.raises(ValueError):
        FixedWeighting({"mlm": -1.0})
    with pytest.raises(ValueError):
        default({})


def test_combine_weights_are_constants() -> None:
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    total = combine({"a": a, "b": b}, {"a": torch.tensor(0.25), "b": torch.tensor(0.75)})
    total.backward()
    assert float(total.detach()) == pytest.approx(2.75)
    assert float(a.grad) == pytest.approx(0.25) and float(b.grad) == pytest.approx(0.75)


def test_build_loss_weighting() -> None:
    assert isinstance(build_loss_weighting("fixed"), FixedWeighting)
    assert isinstance(build_loss_weighting("adaptive-grad", eps=1e-9), AdaptiveGradWeighting)
    built = build_loss_weighting("adaptive-softmax", temperature=2.0)
    assert isinstance(built, AdaptiveSoftmaxWeighting) and isinstance(built, LossWeighting)
    assert built.temperature == 2.0
    with pytest.raises(ValueError, match="fixed.*adaptive-grad.*adaptive-softmax"):
        build_loss_weighting("uncertainty")


def test_adaptive_grad_every_n_reuses_weights_and_resumes_identically() -> None:
    """every=3 re-solves on calls 0, 3, 6, ... (new norms), reuses in between, and a saved state continues alike."""
    torch.manual_seed(0)
    model = _TwoHeads()
    shared = list(model.trunk.parameters())
    inputs = [torch.randn(16, 4) * (1 + i) for i in range(7)]  # different batches: different norms each call

    def run(weighting: AdaptiveGradWeighting, batches: list[torch.Tensor]) -> list[dict[str, float]]:
        out = []
        for x in batches:
            weighting(model.losses(x), shared_parameters=shared)
            out.append(dict(weighting.last_weights))
        return out

    every_call = run(AdaptiveGradWeighting(), inputs)
    cached = AdaptiveGradWeighting(every=3)
    seen = run(cached, inputs)
    for i, weights in enumerate(seen):
        assert weights == every_call[i - i % 3]  # the weights solved on the last due call
    assert seen[1] != every_call[1]  # the batches differ, so reuse is observable

    resumed_from = AdaptiveGradWeighting(every=3)
    run(resumed_from, inputs[:4])
    restored = AdaptiveGradWeighting(every=3)
    restored.load_state_dict(resumed_from.state_dict())
    assert run(restored, inputs[4:]) == seen[4:]

    # Another set of tasks than the cached one is re-solved at once, not given stale keys.
    weights = cached({"mlm": model.losses(inputs[0])["mlm"]}, shared_parameters=shared)
    assert list(weights) == ["mlm"] and float(weights["mlm"]) == 1.0
    with pytest.raises(ValueError, match="every"):
        AdaptiveGradWeighting(every=0)
