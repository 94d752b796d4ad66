r"""The pathwise (reparameterisation) gradient (Kingma & Welling 2013; Rezende et al. 2014).

With :math:`x = g_\phi(\epsilon)`, :math:`\epsilon \sim p(\epsilon)` (``dist.rsample``):

.. math::
   \nabla_\phi \mathbb{E}_{q_\phi}[f_\phi(x)] = \mathbb{E}_{p(\epsilon)}\big[\nabla_\phi f_\phi(g_\phi(\epsilon))\big]
   \approx \frac1n \sum_{i=1}^n \nabla_\phi f_\phi(g_\phi(\epsilon_i)).

Unbiased; ``n`` cost evaluations (and their gradients). It uses :math:`\nabla_x f`, which is why it
usually has far lower variance than REINFORCE; it needs a distribution with ``rsample`` and a
differentiable cost. On model problems it is the standard VAE gradient of the ELBO, including
the zero-mean score term :math:`-\nabla_\phi \log q_\phi(z)` at fixed :math:`z` (which
``iwae-stl`` drops).
"""
from __future__ import annotations

from .base import GradientEstimator, evaluate_cost, grad_of
from .registry import register_estimator


class Pathwise(GradientEstimator):
    pathwise = True

    def estimate(self, problem, params, n, state):
        x = problem.distribution(params).rsample((n,))     # (n, R, *event), differentiable
        return grad_of(evaluate_cost(problem, x, params).mean(0), params)


@register_estimator("reparam")
def reparam():
    """Pathwise / reparameterisation gradient (Kingma & Welling 2013); unbiased; n evaluations."""
    return Pathwise()
