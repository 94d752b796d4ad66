r"""Toy problems with discrete latents and exact truths by enumeration.

* ``bernoulli-toy``: one :math:`b \sim \mathrm{Bernoulli}(\sigma(\theta))`, cost :math:`(b - t)^2`
  (the REBAR/RELAX toy, Tucker et al. 2017; Grathwohl et al. 2018), a tiny signal at the defaults.
* ``bernoulli-toy-nd``: independent :math:`b_i \sim \mathrm{Bernoulli}(\sigma(\theta_i))`,
  cost :math:`\sum_i (b_i - p_i)^2`, :math:`p = (0.6, 0.51, 0.48)` by default (the toy of Liu et
  al. 2019 and Kool et al. 2020). :math:`\partial_{\theta_i}\mathbb{E} = \sigma'(\theta_i)(1 -
  2p_i)`; the truth is computed by enumerating all :math:`2^D` states.
* ``categorical-toy``: one one-hot categorical :math:`x \sim \mathrm{OneHotCategorical}(\theta)`
  over K classes with a fixed cost :math:`c_k` per class, cost :math:`c^\top x` (linear, so that a
  relaxed sample on the simplex gets the interpolated cost); truth by enumerating the K classes.

(:class:`~gradnoise.problems.base.StoppedScoreTerm`, in the bring-your-own module, wraps a model
problem into the form of the encoder gradient in the ARM and DisARM papers.)
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical

from ..base import Objective, Truth, evaluate_cost
from ..registry import register_problem
from .base import ExpectationProblem
from .truths import autograd_truth

MAX_ENUMERATED = 20   # at most 2^20 Bernoulli states are enumerated


@register_problem("bernoulli-toy")
def bernoulli_toy(*, theta: float = 0.0, t: float = 0.499):
    r"""b ~ Bernoulli(logits=theta), cost (b - t)^2 (the REBAR/RELAX toy); truth by exact enumeration.

    :math:`\nabla_\theta = \sigma'(\theta)\,((1-t)^2 - t^2)`, 0.0005 at the defaults: a tiny signal.
    """
    return ExpectationProblem(
        lambda logits: Bernoulli(logits=logits), {"logits": torch.tensor(float(theta))},
        lambda b: (b - t) ** 2, name="bernoulli-toy",
    )


def _floats(text: str, option: str, problem: str) -> list[float]:
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise ValueError(f"problem {problem!r}: option {option} must be numbers separated by spaces, "
                         f"got {text!r}") from None
    if not values:
        raise ValueError(f"problem {problem!r}: option {option} is empty")
    return values


class BernoulliProblem(ExpectationProblem):
    r"""Independent Bernoulli latents of any shape, :math:`b \sim \prod_d \mathrm{Bernoulli}(\sigma(\theta_d))`.

    ``logits`` has the event shape ``S`` (any number of dims); the distribution is
    ``Independent(Bernoulli(logits), len(S))``, so samples have shape ``(n, R, *S)``, and ``cost``
    maps ``(..., *S)`` to ``(...)``. Truth: kind ``enumeration``, the exact sum over all
    :math:`2^{|S|}` states (:math:`|S| \le 20`), differentiated by autograd.
    """

    def __init__(self, logits: Tensor, cost: Callable[[Tensor], Tensor], *, name: str = "bernoulli-custom"):
        logits = torch.as_tensor(logits, dtype=torch.get_default_dtype())
        if logits.numel() > MAX_ENUMERATED:
            raise ValueError(f"problem {name!r}: {logits.numel()} Bernoulli latents, at most "
                             f"{MAX_ENUMERATED} can be enumerated")
        self.event_dims = logits.dim()
        super().__init__(lambda logits: Independent(Bernoulli(logits=logits), self.event_dims),
                         {"logits": logits}, cost, name=name)

    def states(self) -> Tensor:
        """All :math:`2^{|S|}` states, shape ``(2^{|S|}, *S)``."""
        shape = self.params["logits"].shape
        grid = torch.tensor(list(itertools.product((0.0, 1.0), repeat=math.prod(shape))),
                            dtype=self.params["logits"].dtype)
        return grid.reshape(-1, *shape)

    def _compute_truth(self) -> Truth:
        states = self.states()

        def exact(leaves):
            d = self.distribution(leaves)
            return (d.log_prob(states).exp() * evaluate_cost(self, states, leaves)).sum()

        return autograd_truth(exact, self.params, "enumeration")

    def exact_objective(self, params, objective=Objective()):
        """:math:`\\sum_b q(b) f(b)` over all :math:`2^{|S|}` states at ``params``."""
        if objective.canonical() != Objective():
            return None
        with torch.no_grad():
            states = self.states().to(params["logits"].device)
            d = self.distribution(params)
            return (d.log_prob(states).exp() * evaluate_cost(self, states, params)).sum(), "enumeration"


@register_problem("bernoulli-toy-nd")
def bernoulli_toy_nd(*, p: str = "0.6 0.51 0.48", theta: str = "0"):
    r"""b_i ~ Bernoulli(logits theta_i), cost sum_i (b_i - p_i)^2 (Liu et al. 2019's toy); truth by enumeration.

    ``p``: the targets, space-separated (D = their number); ``theta``: one logit for all
    coordinates or D of them. :math:`\partial_{\theta_i} = \sigma'(\theta_i)(1 - 2p_i)`.
    """
    targets = torch.tensor(_floats(p, "p", "bernoulli-toy-nd"))
    logits = _floats(theta, "theta", "bernoulli-toy-nd")
    if len(logits) not in (1, len(targets)):
        raise ValueError(f"problem 'bernoulli-toy-nd': theta needs 1 or {len(targets)} values "
                         f"(one per target p), got {len(logits)}")
    logits = torch.tensor(logits).expand(len(targets)).clone()
    return BernoulliTargets(logits, targets)


class BernoulliTargets(BernoulliProblem):
    r"""``bernoulli-toy-nd``: cost :math:`\sum_i (b_i - p_i)^2` with the targets ``p`` an attribute
    of the problem (``targets``, shape ``(D,)``), which the cost reads, so that
    :meth:`~gradnoise.base.Problem.to` moves them with the parameters."""

    def __init__(self, logits: Tensor, targets: Tensor):
        self.targets = targets
        super().__init__(logits, self.squared_distance, name="bernoulli-toy-nd")

    def squared_distance(self, b: Tensor) -> Tensor:
        r""":math:`\sum_i (b_i - p_i)^2`: ``(..., D)`` to ``(...)``."""
        return ((b - self.targets) ** 2).sum(-1)


@register_problem("categorical-toy")
def categorical_toy(*, k: int = 3, spread: float = 1.0, t: float = 0.45):
    r"""x ~ OneHotCategorical(logits), K = k classes, cost c^T x with c_j = (j/(K-1) - t)^2; truth by enumeration.

    Logits :math:`\theta_j = \mathrm{spread}\,(j/(K-1) - 1/2)`, :math:`j = 0..K-1`. The gradient
    is :math:`\partial_{\theta_j} = \pi_j (c_j - \pi^\top c)` with :math:`\pi = \mathrm{softmax}(\theta)`.
    """
    if k < 2:
        raise ValueError(f"problem 'categorical-toy' needs k >= 2 classes, got {k}")
    grid = torch.arange(k, dtype=torch.get_default_dtype()) / (k - 1)
    return CategoricalCosts(spread * (grid - 0.5), (grid - t) ** 2)


class CategoricalCosts(ExpectationProblem):
    r"""``categorical-toy``: :math:`x \sim \mathrm{OneHotCategorical}(\theta)`, cost :math:`c^\top x`
    with the per-class costs ``c`` an attribute of the problem (``costs``, shape ``(K,)``), which
    the cost reads, so that :meth:`~gradnoise.base.Problem.to` moves them with the parameters."""

    def __init__(self, logits: Tensor, costs: Tensor):
        self.costs = costs
        super().__init__(lambda logits: OneHotCategorical(logits=logits), {"logits": logits},
                         self.linear_cost, name="categorical-toy")

    def linear_cost(self, x: Tensor) -> Tensor:
        r""":math:`c^\top x`: ``(..., K)`` to ``(...)``."""
        return (x * self.costs).sum(-1)
