"""Per-step weights for FashionBERT's pretraining losses (Gao et al., SIGIR 2020, eq. 5-6).

Each step, with L tasks and g_i = ||grad l_i||^2 scaled into [0, 1), solve

    min_w  f(w) = -1/2 sum_i w_i^2 g_i + 1/2 sum_{i<j} (w_i - w_j)^2   s.t. sum_i w_i = 1, w_i >= 0.

The first term rewards weight on tasks that still move the shared trunk; the
second keeps weights close so no task is starved.  Convention: the paper
writes the second sum over all i, j; over ordered pairs it would double the
term and give w_i ∝ 1/(2L - g_i).  We use i < j, the only convention that
gives the paper's closed form.

KKT derivation.  Using sum_{j != i} w_j = 1 - w_i on the constraint,
d f / d w_i = -g_i w_i + sum_{j != i}(w_i - w_j) = (L - g_i) w_i - 1.
Stationarity with multiplier lam for sum w = 1 and mu_i >= 0 for w_i >= 0:
(L - g_i) w_i - 1 = lam + mu_i.  Try mu = 0: w_i = (1 + lam) / (L - g_i), and
the constraint fixes 1 + lam = 1 / sum_j (L - g_j)^-1, hence

    w_i = (L - g_i)^-1 / sum_j (L - g_j)^-1,

which is > 0 (L - g_i > L - 1 >= 0 with g_i < 1), so mu = 0 is consistent
(complementary slackness).  f's Hessian is L*I - diag(g) - 11^T; on the
simplex's tangent space (sum d = 0) it gives d^T H d = sum (L - g_i) d_i^2 > 0,
so f is strictly convex there and the KKT point is the unique minimum.
Direction: larger g_i => larger w_i, but only mildly: weights lie within a
ratio L / (L - 1) of each other (at most 2x for L = 2, 1.33x for L = 4).

Weights are detached (solve, then weight): total = sum w_i l_i with w constant.

Reference implementation (alibaba/EasyTransfer,
scripts/fashion_bert/pretrain_main.py, ``ImageBertPretrain.build_loss``):
hard-codes 3 tasks (MLM, alignment, MPM), uses g = softmax(losses)^2 (no
temperature, no gradient norms) and writes the 3-task closed form as products
of (alpha*K - g_j) with K = 3, alpha = 1, which equals the formula above.  It
does NOT stop gradients through the weights, so there the weights (a function
of the losses) are differentiated too; here they are detached as
ARCHITECTURE.md §2 asks.  ``AdaptiveSoftmaxWeighting`` is that proxy
(temperature 1 reproduces it); ``AdaptiveGradWeighting`` is the paper's method.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "AdaptiveGradWeighting",
    "AdaptiveSoftmaxWeighting",
    "FixedWeighting",
    "LossWeighting",
    "adaptive_objective",
    "build_loss_weighting",
    "combine",
    "solve_adaptive_weights",
]

# Largest scaled g we hand to the solver.  n_i / (sum n + eps) or softmax^2 can
# round to exactly 1.0 when one task dominates; the closed form is fine there
# (L - 1 > 0 for L >= 2) but the public solver's contract is g < 1.
_G_MAX = 1.0 - 1e-12


def solve_adaptive_weights(g: torch.Tensor) -> torch.Tensor:
    """Closed-form minimiser w_i = (L - g_i)^-1 / sum_j (L - g_j)^-1 for a 1-D ``g`` in [0, 1).

    Computed in float64 (the ratios are close to 1; float32 would lose the
    differences) and returned in float64, detached.
    """
    g = torch.as_tensor(g).detach()
    if g.ndim != 1 or g.numel() == 0:
        raise ValueError(f"g must be a non-empty 1-D tensor, got shape {tuple(g.shape)}")
    g = g.to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"g must be finite, got {g.tolist()}")
    if bool((g < 0).any()) or bool((g >= 1).any()):
        raise ValueError(f"g must lie in [0, 1), got {g.tolist()}")
    inv = 1.0 / (g.numel() - g)
    return inv / inv.sum()


def adaptive_objective(w: Any, g: Any) -> float:
    """f(w) = -1/2 sum w_i^2 g_i + 1/2 sum_{i<j} (w_i - w_j)^2 (numpy or torch inputs)."""
    w = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float64)
    g = np.asarray(g.detach().cpu() if isinstance(g, torch.Tensor) else g, dtype=np.float64)
    diff = w[:, None] - w[None, :]
    return float(-0.5 * np.sum(w**2 * g) + 0.25 * np.sum(diff**2))  # 1/4 over i,j == 1/2 over i<j


def combine(losses: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Weighted sum sum_k w_k * l_k; gradients flow through the losses only (weights are detached)."""
    if set(losses) != set(weights):
        raise ValueError(f"losses {sorted(losses)} and weights {sorted(weights)} have different keys")
    terms = [weights[k].detach().to(losses[k].device, losses[k].dtype) * losses[k] for k in losses]
    return torch.stack(terms).sum()


def _check_losses(losses: Mapping[str, torch.Tensor]) -> None:
    if not losses:
        raise ValueError("losses is empty: at least one task must be enabled")
    for name, loss in losses.items():
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss {name!r} must be a scalar tensor")


class LossWeighting(abc.ABC):
    """Maps the step's named losses to detached 0-dim weights (same keys, summing to 1).

    Disabled tasks are simply absent from ``losses``.  ``last_weights`` and
    ``last_g`` keep plain floats of the latest call for per-step logging.
    ``state_dict`` / ``load_state_dict`` hold whatever a resumed run needs to
    continue identically (nothing, for the stateless strategies).
    """

    def __init__(self) -> None:
        self.last_weights: dict[str, float] = {}
        self.last_g: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - stateless by default
        pass

    @abc.abstractmethod
    def _weights(
        self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[torch.nn.Parameter] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (weights, g or None) as 1-D tensors in the order of ``losses``."""

    def __call__(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_parameters: Sequence[torch.nn.Parameter] | None = None,
    ) -> dict[str, torch.Tensor]:
        _check_losses(losses)
        w, g = self._weights(losses, shared_parameters)
        device = next(iter(losses.values())).device
        w = w.detach().to(device=device, dtype=torch.float32)
        names = list(losses)
        self.last_weights = {k: float(w[i]) for i, k in enumerate(names)}
        self.last_g = {} if g is None else {k: float(g[i]) for i, k in enumerate(names)}
        return {k: w[i] for i, k in enumerate(names)}


class FixedWeighting(LossWeighting):
    """Constant weights (ablation): 1/L each by default, or given ones renormalised over the enabled tasks."""

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if weights is not None:
            bad = {k: v for k, v in weights.items() if not (np.isfinite(v) and v >= 0)}
            if bad:
                raise ValueError(f"fixed weights must be finite and >= 0, got {bad}")
        self.weights = None if weights is None else dict(weights)

    def _weights(self, losses, shared_parameters):  # type: ignore[override]
        if self.weights is None:
            return torch.full((len(losses),), 1.0 / len(losses), dtype=torch.float64), None
        missing = [k for k in losses if k not in self.weights]
        if missing:
            raise ValueError(f"no fixed weight for losses {missing}; known: {sorted(self.weights)}")
        w = torch.tensor([float(self.weights[k]) for k in losses], dtype=torch.float64)
        if float(w.sum()) <= 0:
            raise ValueError(f"fixed weights of the enabled losses {list(losses)} sum to 0")
        return w / w.sum(), None


class AdaptiveGradWeighting(LossWeighting):
    """The paper's method: g_i from each task's gradient norm w.r.t. the shared trunk's last layer.

    ``torch.autograd.grad`` only reaches the given parameters (the heads' and
    the last layer's backward, not the whole trunk) and never writes ``.grad``,
    so the optimizer step sees only the gradient of the combined loss.  Under
    DDP each rank solves on its own batch's norms.

    Why ``every``: one backward per task through the last layer costs ~20 % of a
    CPU training step, yet the weights drift slowly (within 0.23-0.30 for four
    tasks over a whole run), so they can be re-solved on every ``every``-th call
    and reused in between (pretraining uses 10: the paper's weights at a tenth
    of the cost).  A call whose tasks differ from the cached ones re-solves at once.
    ``state_dict`` carries the cache and the call count, so a resumed run
    continues with the same weights.
    """

    def __init__(self, eps: float = 1e-12, every: int = 1) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.eps = float(eps)
        self.every = int(every)
        self.calls = 0
        self._cached: tuple[tuple[str, ...], torch.Tensor, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        cached = None if self._cached is None else (list(self._cached[0]), self._cached[1].tolist(), self._cached[2].tolist())
        return {"calls": self.calls, "cached": cached}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        cached = state["cached"]
        self._cached = None if cached is None else (
            tuple(cached[0]), torch.tensor(cached[1], dtype=torch.float64), torch.tensor(cached[2], dtype=torch.float64))

    def _weights(self, losses, shared_parameters):  # type: ignore[override]
        names = tuple(losses)
        due = self.calls % self.every == 0
        self.calls += 1
        if not due and self._cached is not None and self._cached[0] == names:
            return self._cached[1], self._cached[2]
        w, g = self._solve(losses, shared_parameters)
        self._cached = (names, w, g)
        return w, g

    def _solve(self, losses, shared_parameters) -> tuple[torch.Tensor, torch.Tensor]:
        if not shared_parameters:
            raise ValueError("AdaptiveGradWeighting needs shared_parameters (the shared trunk's last layer)")
        params = [p for p in shared_parameters if p.requires_grad]
        if not params:
            raise ValueError("none of shared_parameters requires grad")
        sq_norms = []
        for loss in losses.values():
            n = torch.zeros((), dtype=torch.float64)
            if loss.requires_grad:  # a loss with no grad path contributes g = 0
                grads = torch.autograd.grad(loss.reshape(()), params, retain_graph=True, allow_unused=True)
                for gr in grads:
                    if gr is not None:  # unused parameter: zero contribution
                        n = n + gr.detach().to(torch.float64).pow(2).sum().cpu()
            sq_norms.append(n)
        n = torch.stack(sq_norms)
        if not bool(torch.isfinite(n).all()):
            raise ValueError(f"non-finite gradient norms {dict(zip(losses, n.tolist()))}")
        # Dividing by the total keeps the ratios between tasks (the solution depends on g only
        # through them and their size against L) and is < 1 whenever >= 2 tasks have any
        # gradient; eps avoids 0/0 when no task reaches the shared layer (then g = 0, equal weights).
        g = (n / (n.sum() + self.eps)).clamp(max=_G_MAX)
        return solve_adaptive_weights(g), g


class AdaptiveSoftmaxWeighting(LossWeighting):
    """The reference implementation's proxy: g = softmax(losses / T)^2 (detached), then the closed form.

    No extra backward pass.  Larger losses get larger weights (g increases with
    the loss and w with g).  T = 1 reproduces EasyTransfer; a larger T flattens g.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        self.temperature = float(temperature)

    def _weights(self, losses, shared_parameters):  # type: ignore[override]
        values = torch.stack([loss.detach().reshape(()).to(torch.float64).cpu() for loss in losses.values()])
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"non-finite losses {dict(zip(losses, values.tolist()))}")
        g = (torch.softmax(values / self.temperature, dim=0) ** 2).clamp(max=_G_MAX)
        return solve_adaptive_weights(g), g


_STRATEGIES: dict[str, type[LossWeighting]] = {
    "fixed": FixedWeighting,
    "adaptive-grad": AdaptiveGradWeighting,
    "adaptive-softmax": AdaptiveSoftmaxWeighting,
}


def build_loss_weighting(name: str, **kw: Any) -> LossWeighting:
    """Strategy by config name: "fixed", "adaptive-grad" or "adaptive-softmax"; ``kw`` go to its constructor."""
    try:
        cls = _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown loss weighting {name!r}; valid names: {', '.join(_STRATEGIES)}") from None
    return cls(**kw)
