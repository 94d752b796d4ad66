r"""Control-variate baselines for the score-function estimator, with explicit state.

A baseline is a small object in the style of optax's ``(init, update)`` pairs:

* ``init(problem, params, n) -> state``: any work done before measuring (a warm-up, a pilot
  batch). ``params`` are the replicated leaves, so the state is per replicate.
* ``value(state, f) -> ControlVariate``: the baseline for a batch of costs ``f`` of shape
  ``(n, R)``: ``per_sample``, a tensor broadcastable to ``(n, R)`` (one scalar per sample or per
  replicate, subtracted from each cost), and ``per_coordinate``, a dict mapping parameter names
  to ``(R, *param_shape)`` (one constant per coordinate, multiplying that coordinate's mean
  score); either part may be empty (zero).
* ``update(state, f) -> state``: the new state after seeing ``f`` (stateless baselines return it
  unchanged); the estimator returns it with its estimate (:class:`gradnoise.base.Estimate`), so a
  training loop carries it from step to step and a frozen-point warm-up is ``warmup_steps`` such
  steps.

The estimator :class:`gradnoise.score_function.ScoreFunction` composes a baseline with
REINFORCE; nothing is copied between estimators. A baseline keeps the estimator unbiased
whenever ``b`` is independent of the sample it multiplies (EMA: state from earlier batches;
leave-one-out: the other samples; optimal: an independent pilot batch).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .base import Params, Problem, evaluate_cost, grad_of, replicate, sample_detached


@dataclass(frozen=True)
class ControlVariate:
    r"""What a baseline subtracts: :math:`\hat g_d = \frac1n\sum_i (f_i - b_i - c_d)\,\partial_d \log q(x_i)`.

    ``per_sample`` holds :math:`b_i` (broadcastable to ``(n, R)``), ``per_coordinate`` holds
    :math:`c_d` for the parameters it names (each ``(R, *param_shape)``).
    """

    per_sample: Tensor | float = 0.0
    per_coordinate: dict[str, Tensor] = field(default_factory=dict)


class Baseline(abc.ABC):
    min_budget: int = 1
    amortised: bool = False   # True: ``init`` and the warm-up are work real use spreads over training
    #: True: ``init`` is part of every estimate (a pilot counted in ``extra_evals``), redone at each training step
    per_estimate: bool = False
    #: estimates at a frozen point before the measured one, each followed by :meth:`update`
    warmup_steps: int = 0

    def init(self, problem: Problem, params: Params, n: int) -> Any:
        return None

    @abc.abstractmethod
    def value(self, state: Any, f: Tensor) -> ControlVariate: ...

    def update(self, state: Any, f: Tensor) -> Any:
        return state

    def extra_evals(self, n: int) -> int:
        """Cost evaluations spent per estimate beyond the ``n`` samples themselves."""
        return 0

    def amortised_evals(self, n: int) -> int:
        """Cost evaluations per replicate spent in ``init`` and not counted per estimate (a warm-up)."""
        return 0

    def largest_batch(self, n: int) -> int:
        """The most samples per replicate ``init`` or an estimate holds at once (a pilot batch or ``n``)."""
        return n


class MovingAverage(Baseline):
    r"""Exponential moving average of past mean costs: :math:`b_t = \beta b_{t-1} + (1-\beta)\bar f_{t-1}`.

    ``init`` warms the state up at the frozen parameters: it starts at the mean cost of one batch
    of ``n`` samples and applies ``warmup`` updates with fresh batches, separately for each
    replicate (so replicates stay independent). Warm-up evaluations and time are not counted in
    the per-estimate cost (``cost_evals``, ``seconds_per_estimate``): real use amortises them.
    """

    amortised = True

    def __init__(self, beta: float = 0.9, warmup: int = 20):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"EMA decay beta must be in [0, 1), got {beta}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.beta, self.warmup = beta, warmup

    def amortised_evals(self, n):
        return (self.warmup + 1) * n       # the first batch, then ``warmup`` updates

    def _batch_cost(self, problem: Problem, params: Params, n: int) -> Tensor:
        with torch.no_grad():
            dist = problem.distribution(params)
            return evaluate_cost(problem, sample_detached(dist, (n,)), params)

    @property
    def warmup_steps(self) -> int:
        """The warm-up is ``warmup`` estimates at the frozen point, each followed by :meth:`update`
        (the estimator's :meth:`~gradnoise.base.GradientEstimator.step`): the same draws and so
        the same state, bitwise, as a loop of cost batches, through the one contract training uses."""
        return self.warmup

    def init(self, problem, params, n):
        return self._batch_cost(problem, params, n).mean(0)

    def value(self, state, f):
        return ControlVariate(per_sample=state)  # (R,), broadcast over the n samples

    def update(self, state, f):
        return self.beta * state + (1.0 - self.beta) * f.detach().mean(0)


class LeaveOneOut(Baseline):
    r"""Leave-one-out baseline (Kool et al. 2019, RLOO): :math:`b_i = \frac{1}{n-1}\sum_{j\ne i} f_j`.

    Stateless; needs ``n >= 2``. With it the estimator is
    :math:`\frac{1}{n-1}\sum_i (f_i - \bar f)\,\nabla\log q(x_i)`, unbiased.
    """

    min_budget = 2

    def value(self, state, f):
        return ControlVariate(per_sample=self.mean_of_others(f))

    @staticmethod
    def mean_of_others(f: Tensor) -> Tensor:
        r""":math:`\frac{1}{n-1}\sum_{j\ne i} f_j` for each sample ``i`` of ``f`` ``(n, R)``."""
        n = f.shape[0]
        return (f.sum(0, keepdim=True) - f) / (n - 1)


class OptimalConstant(Baseline):
    r"""Variance-minimising constant baseline per coordinate, from an independent pilot batch.

    For coordinate :math:`d` with score :math:`s_d = \partial_{\phi_d}\log q_\phi(x)`, the constant
    minimising :math:`\mathrm{Var}[(f - b_d)s_d]` is
    :math:`b_d^* = \mathbb{E}[f s_d^2] / \mathbb{E}[s_d^2]` (e.g. Greensmith et al. 2004).
    ``init`` estimates it per replicate from a pilot batch of ``pilot`` samples (default ``n``),
    drawn independently of the measured samples so the estimator stays unbiased; the pilot costs
    ``pilot`` extra evaluations per estimate. Coordinates whose score is identically zero (e.g.
    generative parameters) get :math:`b_d = 0`.
    """

    per_estimate = True

    def __init__(self, pilot: int = 0):
        if pilot < 0:
            raise ValueError(f"pilot size must be >= 0 (0 means: same as N), got {pilot}")
        self.pilot = pilot

    def _pilot_size(self, n: int) -> int:
        return self.pilot or n

    def extra_evals(self, n):
        return self._pilot_size(n)

    def largest_batch(self, n):
        return max(n, self._pilot_size(n))

    def init(self, problem, params, n):
        size = self._pilot_size(n)
        # per-sample scores: one leaf copy per pilot sample and replicate, shape (P, R, *shape)
        per_sample = replicate(params, (size,))
        dist = problem.distribution(per_sample)
        x = sample_detached(dist)
        scores = grad_of(dist.log_prob(x), per_sample)
        with torch.no_grad():
            f = evaluate_cost(problem, x, {k: v.detach() for k, v in params.items()})
            state = {}
            for name, s in scores.items():
                s2 = s.square()
                fw = f.reshape(f.shape + (1,) * (s.dim() - f.dim()))
                num, den = (fw * s2).sum(0), s2.sum(0)
                state[name] = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
        return state

    def value(self, state, f):
        return ControlVariate(per_coordinate=state)
