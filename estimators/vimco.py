r"""VIMCO: the multi-sample score-function gradient of the IWAE bound (Mnih & Rezende 2016).

For K samples :math:`z_k \sim q_\phi(z\mid x)` drawn *without* a gradient path, log weights
:math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k\mid x)` and the bound's Monte Carlo
value :math:`\hat L = \log \frac1K \sum_k w_k`,

.. math::
   \nabla \mathcal{L}_K = \mathbb{E}\Big[\sum_k \big(\hat L - \hat L_{-k}\big)\,
       \nabla_\phi \log q_\phi(z_k\mid x) + \sum_k \tilde w_k \nabla \log w_k\Big],
   \qquad
   \hat L_{-k} = \log \frac1K\Big(\sum_{j\ne k} w_j + \hat w_{-k}\Big),\quad
   \log \hat w_{-k} = \frac1{K-1}\sum_{j\ne k} \log w_j,

where :math:`\tilde w_k = w_k/\sum_j w_j` and :math:`\nabla\log w_k` is taken at fixed
:math:`z_k`. The first term is REINFORCE on the learning signal :math:`\hat L` with, for sample
:math:`k`, the leave-one-out control variate :math:`\hat L_{-k}`: :math:`\hat L` with
:math:`w_k` replaced by the geometric mean of the other weights. :math:`\hat L_{-k}` does not
depend on :math:`z_k`, so :math:`\mathbb{E}[\hat L_{-k}\nabla\log q(z_k)] = 0`: **unbiased** for
:math:`\nabla\mathcal{L}_K` at every K >= 2 (the control variate needs another sample). Uses the
log weights only as numbers (no :math:`\nabla_z`), so it applies to discrete latents; it needs a
model problem but not ``rsample``. Cost: K log-joint evaluations.

:math:`\hat L_{-k}` is computed stably in :math:`O(K)` with exclusive prefix and suffix
``logcumsumexp`` (no :math:`K\times K` table and no cancellation in
:math:`\sum_j w_j - w_k`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GradientEstimator, Objective, evaluate_cost, grad_of, sample_detached
from .registry import register_estimator


def leave_one_out_bounds(log_w: Tensor) -> Tensor:
    r""":math:`\hat L_{-k}` for each k, from log weights of shape ``(K, *batch)``, K >= 2."""
    k = log_w.shape[0]
    empty = torch.full_like(log_w[:1], -math.inf)
    before = torch.cat([empty, torch.logcumsumexp(log_w, 0)[:-1]])                 # log sum_{j<k}
    after = torch.cat([torch.logcumsumexp(log_w.flip(0), 0).flip(0)[1:], empty])   # log sum_{j>k}
    geometric = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)                     # log w^_{-k}
    return torch.logaddexp(torch.logaddexp(before, after), geometric) - math.log(k)


class VIMCO(GradientEstimator):
    """Multi-sample score function with leave-one-out control variates; see the module docstring."""

    needs_model = True
    min_budget = 2

    def objective(self, n):
        return Objective("iwae", n).canonical()

    def estimate(self, problem, params, n, state):
        dist = problem.distribution(params)
        z = sample_detached(dist, (n,))                # (K, R, *event), no gradient path
        log_q = dist.log_prob(z)                       # (K, R)
        log_w = evaluate_cost(problem, z, params)      # (K, R), direct dependence kept
        bound = torch.logsumexp(log_w, 0) - math.log(n)
        with torch.no_grad():
            signal = bound.unsqueeze(0) - leave_one_out_bounds(log_w)
        return grad_of((signal * log_q).sum(0) + bound, params)


@register_estimator("vimco")
def vimco():
    """VIMCO (Mnih & Rezende 2016): score function for the K-sample bound, K = N >= 2, leave-one-out control variates; unbiased."""
    return VIMCO()
