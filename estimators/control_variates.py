r"""The delta-method control variate (Paisley, Blei & Jordan 2012; Mohamed et al. 2020, sec. 7).

The control variate is the second-order Taylor expansion of the cost at the distribution's mean
:math:`\bar m = \mathbb{E}_q[x]` (value, gradient :math:`\gamma` and Hessian :math:`\Gamma` by
autograd, the expansion point and coefficients held fixed):

.. math::
   h(x) = f(\bar m) + \gamma^\top (x - \bar m) + \tfrac12 (x - \bar m)^\top \Gamma\, (x - \bar m),
   \qquad
   \mathbb{E}_{q_\phi}[h] = f(\bar m) + \gamma^\top(m_\phi - \bar m)
     + \tfrac12 (m_\phi - \bar m)^\top \Gamma (m_\phi - \bar m) + \tfrac12 \operatorname{tr}(\Gamma\, \Sigma_\phi),

exact for any distribution with mean :math:`m_\phi` and covariance :math:`\Sigma_\phi` (diagonal
``variance`` for independent coordinates, ``covariance_matrix`` where the distribution has one).
With a base estimator :math:`\hat g[\cdot]` that is linear in the cost (``reinforce``:
score function; ``reparam``: pathwise) and a coefficient :math:`\beta`,

.. math::
   \hat g_\beta = \hat g[f] - \beta\,\big(\hat g[h] - \nabla_\phi \mathbb{E}_{q_\phi}[h]\big),

where :math:`\hat g[f]` and :math:`\hat g[h]` use the same samples. It is unbiased for every
:math:`\beta` independent of those samples, since :math:`\mathbb{E}\,\hat g[h] = \nabla_\phi
\mathbb{E}_q[h]`. For a quadratic cost :math:`h = f`, so :math:`\beta = 1` gives the exact gradient
(zero variance).

``beta``: a fixed number, or ``"optimal"`` (default): per replicate and per parameter tensor, the
variance-minimising

.. math::
   \hat\beta = \frac{\sum_d \widehat{\mathrm{Cov}}(\hat g_d[f], \hat g_d[h])}{\sum_d \widehat{\mathrm{Var}}(\hat g_d[h])},

both centred on their sample means over an independent pilot batch of ``pilot`` single-sample
estimates (default :math:`\max(N, 2)`; at least 2, since one sample has no covariance). This is
the reference code's coefficient: optax 0.2.6 ``monte_carlo.estimate_control_variate_coefficients``
(``cov = mean((f_jac - mean_f) * (cv_jac - mean_cv))``, ``sum(cov) / (sum(var(cv_jac)) + eps)``)
and Mohamed et al.'s ``mc_gradients`` (``control_variates.compute_control_variate_coeff``), both
with fresh samples for the pilot; without their ``eps = 1e-3`` in the denominator, which depends
on the gradient's scale and would keep :math:`\hat\beta` from 1 below. Subtracting
:math:`\nabla\mathbb{E}[h]` does not change the centred sums, so the pilot skips it. For a
quadratic cost :math:`\hat g[f] = \hat g[h]` sample by sample, so :math:`\hat\beta = 1` (up to
float rounding) at every pilot size, and the estimate is the exact gradient. Being computed from
samples independent of the estimate's, :math:`\hat\beta` leaves it unbiased; its noise adds
variance, most at small pilots.

Cost: ``n`` evaluations of the cost, one more at the mean (with its gradient and Hessian:
one backward pass per event coordinate), and the pilot's for the estimated coefficient
(:math:`\max(N, 2)` by default). The cost must
be differentiable in ``x`` (twice, for :math:`\Gamma`); the distribution must have a mean and a
variance (or covariance matrix); otherwise :class:`EstimatorNotApplicable` says which.

Shapes: leaves ``(R, *param_shape)``; expansion point ``(R, *event)``; :math:`\gamma` ``(R, E)``,
:math:`\Gamma` ``(R, E, E)`` with ``E`` the event size; the pilot uses per-sample leaves
``(P, R, *param_shape)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from .base import (
    EstimatorNotApplicable, GradientEstimator, Params, Problem, evaluate_cost, forked_stream, grad_of, replicate,
)
from .pathwise import Pathwise
from .registry import register_estimator
from .score_function import ScoreFunction


def moments(dist: Distribution, where: str) -> tuple[Tensor, Tensor, bool]:
    """``(mean, second, full)``: the mean flattened to ``(*L, E)`` and the variance ``(*L, E)``
    (``full=False``: independent coordinates) or covariance matrix ``(*L, E, E)`` (``full=True``).
    """
    name = type(dist).__name__
    lead, event = dist.batch_shape, dist.event_shape
    size = max(1, math.prod(event))
    try:
        mean = dist.mean
        if hasattr(dist, "covariance_matrix") and len(event) == 1:
            second, full = dist.covariance_matrix, True
        elif event == torch.Size() or (isinstance(dist, Independent) and dist.base_dist.event_shape == torch.Size()):
            second, full = dist.variance.reshape(*lead, size), False
        else:
            raise EstimatorNotApplicable(
                f"{where}: the distribution {name} has dependent event coordinates and no covariance "
                f"matrix, so the expectation of the quadratic control variate is not known"
            )
    except NotImplementedError:
        raise EstimatorNotApplicable(f"{where}: the distribution {name} has no mean and variance") from None
    if not (torch.isfinite(mean).all() and torch.isfinite(second).all()):
        raise EstimatorNotApplicable(f"{where}: the distribution {name} has no finite mean and variance")
    return mean.reshape(*lead, size), second, full


@dataclass
class TaylorExpansion:
    """The quadratic control variate ``h`` of one problem; quacks like a :class:`Problem` for ``estimate``.

    ``point`` ``(*L, *event)``, ``value`` ``(*L,)``, ``gradient`` ``(*L, E)``, ``hessian``
    ``(*L, E, E)``, all detached.
    """

    problem: Problem
    point: Tensor
    value: Tensor
    gradient: Tensor
    hessian: Tensor
    is_model = False

    @property
    def spec(self) -> str:
        return f"second-order Taylor expansion of {self.problem.spec}"

    def distribution(self, params: Params) -> Distribution:
        return self.problem.distribution(params)

    def _quadratic(self, d: Tensor) -> Tensor:
        r""":math:`d^\top \Gamma d` for ``d`` ``(..., *L, E)``, by ``einsum`` then ``vecdot``: a batched
        matmul would broadcast :math:`\Gamma` into one tiny product per sample (10x slower at E = 1,
        4x at E = 10, 1000 x 100 samples), elementwise products hold ``(..., E, E)``."""
        return torch.linalg.vecdot(d, torch.einsum("...i,...ij->...j", d, self.hessian))

    def cost(self, x: Tensor, params: Params) -> Tensor:
        """:math:`h(x)` for ``x`` of shape ``S + L + event``; returns ``S + L``."""
        event_dims = self.point.dim() - self.value.dim()
        d = (x - self.point).reshape(*x.shape[: x.dim() - event_dims], self.gradient.shape[-1])
        return self.value + (d * self.gradient).sum(-1) + 0.5 * self._quadratic(d)

    def expected(self, params: Params) -> Tensor:
        """:math:`\\mathbb{E}_{q_\\phi}[h]` as a differentiable function of ``params``; shape ``L``."""
        mean, second, full = moments(self.distribution(params), self.spec)
        d = mean - self.point.reshape(*self.point.shape[: self.value.dim()], -1)
        spread = (self.hessian * second).sum((-2, -1)) if full else (torch.diagonal(self.hessian, 0, -2, -1) * second).sum(-1)
        return self.value + (d * self.gradient).sum(-1) + 0.5 * self._quadratic(d) + 0.5 * spread


def expand_cost(problem: Problem, params: Params, where: str) -> TaylorExpansion:
    """Value, gradient and Hessian of the cost at the distribution's mean, per replicate (autograd)."""
    dist = problem.distribution(params)
    mean, _, _ = moments(dist, where)
    lead, size = dist.batch_shape, mean.shape[-1]
    point = dist.mean.detach()
    frozen = {k: v.detach() for k, v in params.items()}
    with torch.enable_grad():
        m = point.clone().requires_grad_(True)
        f = evaluate_cost(problem, m, frozen)
        not_differentiable = EstimatorNotApplicable(
            f"{where}: the cost of problem {problem.spec!r} is not differentiable in x at the "
            f"distribution's mean (no gradient flows from it), so it has no Taylor expansion"
        )
        if not f.requires_grad:
            raise not_differentiable
        try:
            (g,) = torch.autograd.grad(f.sum(), m, create_graph=True)
        except RuntimeError:
            raise not_differentiable from None
        g = g.reshape(*lead, size)
        rows = []
        for j in range(size):
            h = None
            if g.requires_grad:
                (h,) = torch.autograd.grad(g[..., j].sum(), m, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(g) if h is None else h.reshape(*lead, size))
    return TaylorExpansion(problem, point, f.detach(), g.detach(), torch.stack(rows, -2).detach())


class DeltaMethod(GradientEstimator):
    """A linear-in-the-cost estimator (score function or pathwise) with the delta-method control variate.

    See the module docstring for the maths. ``beta=None`` estimates the coefficient from a pilot
    batch of ``pilot`` samples (``0``: max(N, 2); otherwise at least 2).
    """

    #: the expansion point and the coefficient (pilot) are per estimate (counted in cost_evals)
    init_each_step = True

    def __init__(self, inner: GradientEstimator, beta: float | None = None, pilot: int = 0,
                 where: str = "the delta method"):
        if pilot < 0 or pilot == 1:
            raise ValueError(
                f"option pilot={pilot} of {where} must be 0 (the default: max(N, 2)) or at least 2: "
                f"the coefficient is a sample covariance, which needs at least 2 samples"
            )
        self.inner, self.beta, self.pilot = inner, beta, pilot
        self.pathwise, self.min_budget = inner.pathwise, inner.min_budget

    def _pilot_size(self, n: int) -> int:
        return self.pilot or max(n, 2)

    def cost_evals(self, n):
        return n + 1 + (self._pilot_size(n) if self.beta is None else 0)

    def check(self, problem, n):
        super().check(problem, n)
        self.inner.check(problem, n)
        expand_cost(problem, problem.params, f"estimator {self.name!r}")

    def largest_batch(self, n):
        """``n``, or the pilot batch where the coefficient is estimated and the pilot is larger."""
        return n if self.beta is not None else max(n, self._pilot_size(n))

    def _same_noise(self, problems, params, n) -> list[dict[str, Tensor]]:
        """The inner estimator on each problem with the same random draws (one seed from the stream)."""
        seed = int(torch.randint(0, 2**62, ()).item())   # a sub-stream drawn from the block's stream
        device = next(iter(params.values())).device
        out = []
        for problem in problems:
            with forked_stream(seed, device):
                out.append(self.inner.estimate(problem, params, n, None))
        return out

    def _centred(self, taylor: TaylorExpansion, params: Params, n: int, problem: Problem):
        """``(g[f], g[h] - grad E[h])`` on the same samples, each ``{name: leading + shape}``."""
        g_f, g_h = self._same_noise([problem, taylor], params, n)
        e_h = grad_of(taylor.expected(params), params)
        return g_f, {k: g_h[k] - e_h[k] for k in g_h}

    def init(self, problem, params, n):
        taylor = expand_cost(problem, params, f"estimator {self.name!r}")
        replicates = next(iter(params.values())).shape[0]
        if self.beta is not None:
            like = next(iter(params.values()))
            return taylor, {k: torch.full((replicates,), float(self.beta), dtype=like.dtype, device=like.device)
                            for k in params}
        size = self._pilot_size(n)
        per_sample = replicate(params, (size,))                        # (P, R, *shape)
        g_f, g_h = self._same_noise([problem, taylor], per_sample, 1)  # grad E[h] cancels on centring
        beta = {}
        with torch.no_grad():
            for k in params:
                a = g_f[k].reshape(size, replicates, -1)
                c = g_h[k].reshape(size, replicates, -1)
                a, c = a - a.mean(0), c - c.mean(0)                    # sample covariance and variance,
                num, den = (a * c).sum((0, 2)), c.square().sum((0, 2))  # the 1/(P-1) cancels in the ratio
                beta[k] = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
        return taylor, beta

    def estimate(self, problem, params, n, state):
        taylor, beta = state
        g_f, c = self._centred(taylor, params, n, problem)
        return {k: g_f[k] - beta[k].reshape(-1, *([1] * (c[k].dim() - 1))) * c[k] for k in g_f}


def _beta(beta: str | float, name: str) -> float | None:
    if isinstance(beta, (int, float)) and not isinstance(beta, bool):
        return float(beta)
    if beta == "optimal":
        return None
    try:
        return float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"option beta={beta!r} of estimator {name!r} must be a number or 'optimal'") from None


@register_estimator("reinforce-delta")
def reinforce_delta(*, beta: str = "optimal", pilot: int = 0):
    """Score function with the delta-method control variate (Paisley et al. 2012); unbiased; n+1 (+pilot, default max(n, 2)) evaluations."""
    return DeltaMethod(ScoreFunction(), _beta(beta, "reinforce-delta"), pilot, "estimator 'reinforce-delta'")


@register_estimator("reparam-delta")
def reparam_delta(*, beta: str = "optimal", pilot: int = 0):
    """Pathwise with the delta-method control variate (Mohamed et al. 2020, sec. 7); unbiased; n+1 (+pilot, default max(n, 2)) evaluations."""
    return DeltaMethod(Pathwise(), _beta(beta, "reparam-delta"), pilot, "estimator 'reparam-delta'")
