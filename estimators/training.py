r"""Training by a registered estimator: the loop the digits checkpoints come from, built on the
estimator contract (``init``, then ``step`` after ``step``), so that training and measurement use
one implementation of each estimator.

:func:`minimise` takes, at each step ``t``, a problem whose replicate axis holds independent
*terms* of one objective (the images of a minibatch, each its own data for the same shared
parameters): the parameters are replicated once per term, the estimator's ``step`` gives each
term's gradient estimate in one vectorised pass, and the optimiser receives their mean,

.. math:: \nabla_\phi \Big(s\,\frac1B \sum_{b=1}^{B} \mathbb{E}_{q_\phi}[f_b]\Big) \approx
          \frac{s}{B} \sum_b \hat g_b,

with ``sign`` :math:`s = -1` to maximise (an ELBO) and :math:`+1` to minimise. The estimator's
state is carried from step to step (its ``adapt`` hook runs each step), as a training run of an
adaptive estimator needs.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .base import GradientEstimator, Problem, replicate


def minimise(
    problem_at: Callable[[int], Problem], estimator: GradientEstimator, n: int, params: dict[str, Tensor],
    optimiser: torch.optim.Optimizer, steps: int, *, sign: float = 1.0,
    on_step: Callable[[int, dict[str, Tensor]], Any] | None = None,
) -> Any:
    """Run ``steps`` optimiser steps on ``params`` (leaf tensors the ``optimiser`` holds, shared by
    every term) with ``estimator``'s ``n``-sample gradient estimates of the problem
    ``problem_at(t)`` (``t = 1 .. steps``), each replicate of which is one term; the parameters
    get ``sign`` times the mean of the terms' estimates as their gradient. ``on_step(t, params)``
    runs after each step. Random draws come from torch's current stream (the caller seeds it).
    Returns the estimator's final state."""
    state = None
    for t in range(1, steps + 1):
        problem = problem_at(t)
        terms = _terms(problem)
        leaves = replicate({k: v.detach() for k, v in params.items()}, (terms,))
        if state is None:
            state = estimator.init(problem, leaves, n)
        est = estimator.step(problem, leaves, n, state)
        state = est.state
        optimiser.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.grad = sign * est.grads[name].mean(0)
        optimiser.step()
        if on_step is not None:
            on_step(t, params)
    return state


def _terms(problem: Problem) -> int:
    """The number of terms (replicates) a per-term problem declares: its ``terms`` attribute."""
    terms = getattr(problem, "terms", None)
    if not isinstance(terms, int) or terms < 1:
        raise ValueError(f"problem {problem.spec!r} declares no number of terms (an int attribute 'terms' >= 1)")
    return terms
