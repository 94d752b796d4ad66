r"""The measure-valued (weak-derivative) gradient for Normal distributions (Mohamed et al. 2020, sec. 6).

For a density :math:`q_\theta` whose derivative in one scalar parameter :math:`\theta` splits as
:math:`\partial_\theta q_\theta = c_\theta\,(q^+_\theta - q^-_\theta)` with two densities
:math:`q^\pm_\theta`,

.. math::
   \partial_\theta \mathbb{E}_{q_\theta}[f(x)]
   = c_\theta\big(\mathbb{E}_{q^+_\theta}[f(x)] - \mathbb{E}_{q^-_\theta}[f(x)]\big).

For :math:`x \sim \mathcal N(\mu, \sigma^2)` (Mohamed et al. 2020, Table 1):

* mean: :math:`c_\mu = 1/(\sigma\sqrt{2\pi})`, :math:`q^\pm` the Weibull(:math:`\sqrt2`, 2)
  (that is, Rayleigh(1)) pair :math:`\mu \pm \sigma W`,

  .. math:: \hat g_\mu = \frac{f(\mu + \sigma W^+) - f(\mu - \sigma W^-)}{\sigma\sqrt{2\pi}};

* scale: :math:`c_\sigma = 1/\sigma`, :math:`q^+` the double-sided Maxwell
  :math:`\mu + \sigma M` (density :math:`m^2\varphi(m)`), :math:`q^-` the Normal itself
  :math:`\mu + \sigma\varepsilon`,

  .. math:: \hat g_\sigma = \frac{f(\mu + \sigma M) - f(\mu + \sigma \varepsilon)}{\sigma}.

``coupled=True`` (default, as in Mohamed et al.'s code) uses common random numbers:
:math:`W^- = W^+` and :math:`\varepsilon = U M` with :math:`U \sim \mathcal U(0, 1)` (which is
standard Normal when M is double-sided Maxwell); ``coupled=False`` draws all four independently.
Both are unbiased.

For a vector :math:`x` with independent coordinates (``Normal`` with event shape ``()`` or
``Independent(Normal)``), the derivative in coordinate :math:`j`'s loc or scale perturbs only
that coordinate: the cost is evaluated at the sample :math:`x_i` with coordinate :math:`j`
replaced by the positive, then the negative draw (the other coordinates keep :math:`x_i`'s
values, shared by both terms). Gradients with respect to the problem's parameters follow by the
chain rule through ``loc`` and ``scale`` (the surrogate :math:`\sum_j \hat g_{\mu_j}\mu_j +
\hat g_{\sigma_j}\sigma_j`, as in Mohamed et al.'s code). On model problems, whose cost depends on
the parameters directly, the direct term :math:`\frac1n\sum_i\nabla_\phi f_\phi(x_i)` is added.

Needs neither :math:`\nabla_x f` nor ``rsample``. Cost: ``2 n`` evaluations per coordinate of
``loc`` and of ``scale`` that depends on the parameters (``2 n (D_loc + D_scale)``; e.g. ``4 n``
on a scalar Normal), plus ``n`` for the direct term on model problems: see
:meth:`MeasureValued.cost_evals_for`.

Shapes: leaves ``(R, *param_shape)``; the Normal's ``loc``/``scale`` have shape
``(R, *event)``; samples ``(n, R, *event)``; perturbed samples ``(B, n, R, *event)`` for a block of
``B`` coordinates, evaluated by ``problem.cost`` in one call (``B`` bounded so that a block holds
at most :data:`MAX_BLOCK_ELEMENTS` numbers).

Reference: S. Mohamed, M. Rosca, M. Figurnov, A. Mnih (2020), Monte Carlo Gradient Estimation in
Machine Learning, JMLR 21(132), sec. 6; G. Pflug (1989), Sampling derivatives of probabilities.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Chi2, Independent, Normal, Weibull

from .base import (
    EstimatorNotApplicable, GradientEstimator, Params, Problem, evaluate_cost, grad_of, replicate,
    sample_detached,
)
from .registry import register_estimator

#: most numbers in one call of the cost on perturbed samples: a block of replicates (the engine's
#: ``BLOCK_ELEMENTS``, ``2^22`` sample elements) holds ``n x R x E`` of about 1.4 million here, so
#: one coordinate per call. The numbers do not depend on it (each coordinate's values are the same
#: computed alone or with others; ``tests/test_measure_valued.py`` compares). ``2^22`` (3 coordinates
#: per call) took 3.8 s where this takes 3.0 s on gaussian-quadratic-nd at N = 1000, 39 s against
#: 16 s on linear-gaussian-vae at N = 1000 (R = 1500, one thread, glibc's default ``malloc``; 2.5 s
#: against 2.4 s and 14.9 s against 13 s where freed memory is kept, as the command line does), and
#: its blocks peaked 50 MiB higher.
MAX_BLOCK_ELEMENTS = 2**20


def normal_of(dist, estimator: str, problem: str) -> Normal:
    """The ``Normal`` inside ``dist`` (itself, or the base of an ``Independent``).

    Raises :class:`EstimatorNotApplicable` naming the distribution for any other family.
    """
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if not isinstance(base, Normal) or base.event_shape != torch.Size():
        name = (f"Independent({type(base).__name__})" if isinstance(dist, Independent)
                else type(dist).__name__)
        raise EstimatorNotApplicable(
            f"estimator {estimator!r} is implemented for Normal and Independent(Normal) "
            f"distributions only; problem {problem!r} has the distribution {name}"
        )
    return base


def double_sided_maxwell(shape: torch.Size, like: Tensor) -> Tensor:
    """Standard double-sided Maxwell draws, density :math:`m^2 e^{-m^2/2}/\\sqrt{2\\pi}`.

    :math:`|M| = \\sqrt{\\chi^2_3}` and an independent random sign (two draws, in that order).
    """
    magnitude = Chi2(torch.tensor(3.0, dtype=like.dtype, device=like.device)).sample(shape).sqrt()
    sign = torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1
    return sign * magnitude


class MeasureValued(GradientEstimator):
    """Weak-derivative gradient of a Normal's loc and scale; see the module docstring for the maths.

    Random draws, in order: ``x = normal.sample((n,))``, then per coordinate (shape
    ``(n, R, E)``, E the event size) the Weibull draw ``W+``, ``W-`` (uncoupled only), the
    double-sided Maxwell draw, and ``U`` (coupled) or ``eps`` (uncoupled).
    """

    def __init__(self, coupled: bool = True):
        self.coupled = coupled

    def cost_evals(self, n: int) -> int:
        """Evaluations per coordinate: ``2 n`` (the total is :meth:`cost_evals_for`)."""
        return 2 * n

    def cost_evals_for(self, problem: Problem, n: int) -> int:
        """``2 n`` per coordinate of ``loc`` and ``scale`` that depends on the parameters (+ ``n`` on model problems)."""
        leaves = replicate(problem.params, (1,))
        normal = normal_of(problem.distribution(leaves), self.name, problem.spec)
        coords = sum(t[0].numel() for t in (normal.loc, normal.scale) if t.requires_grad)
        return 2 * n * coords + (n if problem.is_model else 0)

    def check(self, problem, n):
        super().check(problem, n)
        normal_of(problem.distribution(problem.params), self.name, problem.spec)

    def estimate(self, problem: Problem, params: Params, n: int, state) -> dict[str, Tensor]:
        dist = problem.distribution(params)
        normal = normal_of(dist, self.name, problem.spec)
        lead, event = dist.batch_shape, dist.event_shape
        size = max(1, math.prod(event))
        loc, scale = normal.loc, normal.scale                       # (*L, *event)
        with torch.no_grad():
            x = sample_detached(normal, (n,))                       # (n, *L, *event)
            shape = x.shape[: 1 + len(lead)] + (size,)              # (n, *L, E)
            flat = x.reshape(shape)
            mu, sigma = loc.detach().reshape(shape[1:]), scale.detach().reshape(shape[1:])
            rayleigh = Weibull(torch.tensor(math.sqrt(2.0), dtype=x.dtype, device=x.device),
                               torch.tensor(2.0, dtype=x.dtype, device=x.device))
            w_pos = rayleigh.sample(shape)
            w_neg = w_pos if self.coupled else rayleigh.sample(shape)
            maxwell = double_sided_maxwell(shape, x)
            normal_draw = (torch.rand(shape, dtype=x.dtype, device=x.device) * maxwell if self.coupled
                           else torch.randn(shape, dtype=x.dtype, device=x.device))
            frozen = {k: v.detach() for k, v in params.items()}

            def difference(plus: Tensor, minus: Tensor) -> Tensor:
                """f(x with coordinate j := plus_j) - f(x with coordinate j := minus_j), (n, *L, E)."""
                out = torch.empty(shape, dtype=x.dtype, device=x.device)
                block = max(1, MAX_BLOCK_ELEMENTS // max(1, flat.numel()))
                for first in range(0, size, block):
                    coords = torch.arange(first, min(size, first + block), device=x.device)
                    mask = torch.nn.functional.one_hot(coords, size).bool()      # (B, E)
                    mask = mask.reshape(len(coords), *([1] * (flat.dim() - 1)), size)
                    values = []
                    for new in (plus, minus):
                        perturbed = torch.where(mask, new, flat)                 # (B, n, *L, E)
                        perturbed = perturbed.reshape(len(coords), *x.shape)
                        values.append(evaluate_cost(problem, perturbed, frozen))  # (B, n, *L)
                    out[..., first:first + len(coords)] = torch.movedim(values[0] - values[1], 0, -1)
                return out

            surrogate_terms = []
            if loc.requires_grad:
                g = difference(mu + sigma * w_pos, mu - sigma * w_neg) / (sigma * math.sqrt(2 * math.pi))
                surrogate_terms.append((g.mean(0).reshape(loc.shape), loc))
            if scale.requires_grad:
                g = difference(mu + sigma * maxwell, mu + sigma * normal_draw) / sigma
                surrogate_terms.append((g.mean(0).reshape(scale.shape), scale))
        surrogate = sum((g * p).reshape(*lead, -1).sum(-1) for g, p in surrogate_terms)
        if problem.is_model:
            surrogate = surrogate + evaluate_cost(problem, x, params).mean(0)
        if isinstance(surrogate, int):
            return {k: torch.zeros_like(v) for k, v in params.items()}
        return grad_of(surrogate, params)


@register_estimator("measure-valued")
def measure_valued(*, coupled: bool = True):
    """Measure-valued (weak-derivative) gradient for Normal loc/scale (Mohamed et al. 2020, sec. 6); unbiased; 2n evaluations per coordinate."""
    return MeasureValued(coupled)
