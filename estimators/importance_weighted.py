r"""The importance-weighted autoencoder (IWAE) gradient (Burda et al. 2016).

For a model with log joint :math:`\log p_\theta(x, z)` and encoder :math:`q_\phi(z\mid x)`, the
K-sample bound and its reparameterised gradient are

.. math::
   \mathcal{L}_K = \mathbb{E}\Big[\log \frac1K \sum_{k=1}^K w_k\Big],\quad
   w_k = \frac{p_\theta(x, z_k)}{q_\phi(z_k\mid x)},\quad z_k = g_\phi(\epsilon_k),

   \widehat{\nabla \mathcal{L}_K} = \nabla_{\theta,\phi} \log \frac1K \sum_k w_k
   = \sum_k \tilde w_k \nabla \log w_k,\quad \tilde w_k = w_k / \textstyle\sum_j w_j.

The budget ``n`` is ``K``; ``K`` evaluations of the log joint. Unbiased for
:math:`\nabla\mathcal{L}_K`, whose truth (for K > 1) is a labelled high-sample oracle. With K=1 the
bound is the ELBO and the estimate equals ``reparam``'s exactly (same noise, same numbers).
"""
from __future__ import annotations

import math

import torch

from .base import GradientEstimator, Objective, evaluate_cost, grad_of
from .registry import register_estimator


class ImportanceWeighted(GradientEstimator):
    pathwise = True
    needs_model = True

    def objective(self, n):
        return Objective("iwae", n).canonical()

    def log_weights(self, problem, params, k):
        """``log w`` of shape ``(K, R)`` for ``K`` reparameterised samples."""
        z = problem.distribution(params).rsample((k,))
        return evaluate_cost(problem, z, params)   # log p(x, z) - log q(z | x)

    def estimate(self, problem, params, n, state):
        bound = torch.logsumexp(self.log_weights(problem, params, n), dim=0) - math.log(n)
        return grad_of(bound, params)


@register_estimator("iwae")
def iwae():
    """IWAE gradient of the K-sample bound, K = N (Burda et al. 2016); unbiased for that bound; model problems only."""
    return ImportanceWeighted()
