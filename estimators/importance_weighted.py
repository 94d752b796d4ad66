r"""The importance-weighted autoencoder (IWAE) gradient and its path-derivative variants.

For a model with log joint :math:`\log p_\theta(x, z)` and encoder :math:`q_\phi(z\mid x)`, the
K-sample bound (Burda et al. 2016) is

.. math::
   \mathcal{L}_K = \mathbb{E}\Big[\log \frac1K \sum_{k=1}^K w_k\Big],\quad
   w_k = \frac{p_\theta(x, z_k)}{q_\phi(z_k\mid x)},\quad z_k = z_\phi(\epsilon_k),\quad
   \tilde w_k = w_k / \textstyle\sum_j w_j.

Its reparameterised gradient splits, for the encoder, into a *path* term through
:math:`z_k` and a *score* term through :math:`q_\phi`'s own parameters at fixed :math:`z_k`:

.. math::
   \nabla_\phi \log \frac1K \sum_k w_k
   = \sum_k \tilde w_k \frac{\partial \log w_k}{\partial z_k}\frac{\partial z_k}{\partial \phi}
     \;-\; \sum_k \tilde w_k \nabla_\phi \log q_\phi(z_k\mid x)\big|_{z_k\ \text{fixed}}.

The three estimators here differ only in what they do with that split (the decoder gradient
:math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)` is the same in all three (up to
floating-point rounding), given the same noise):

* ``iwae``: both terms (Burda et al. 2016); unbiased for every K.
* ``iwae-stl``: the path term only (Roeder et al. 2017, "sticking the landing"); unbiased for
  K = 1 only.
* ``iwae-dreg``: the path term with weights :math:`\tilde w_k^2` (Tucker et al. 2019, doubly
  reparameterised); unbiased for every K.

The budget ``n`` is ``K``; each spends ``K`` evaluations of the log joint (and their
gradients). All need a model problem (``log_joint`` and ``encoder``, see
:class:`gradnoise.problems.ModelProblem`) whose encoder has ``rsample``. The "stop-gradient on
:math:`q`'s parameters" is implemented by evaluating :math:`\log q` with detached copies of the
parameter leaves, so no estimator needs to know which parameters belong to the encoder.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GradientEstimator, NonFiniteCostError, Objective, Params, evaluate_cost, grad_of
from .registry import register_estimator


def path_log_weights(problem, z: Tensor, params: Params) -> Tensor:
    r""":math:`\log p_\theta(x, z) - \log q_{\bar\phi}(z\mid x)` with :math:`\bar\phi` detached.

    Same value as ``problem.cost(z, params)``; its gradient w.r.t. the encoder parameters flows
    through ``z`` only (no score term). ``z`` has shape ``S + L + event``, the result ``S + L``.
    """
    frozen = {k: v.detach() for k, v in params.items()}
    log_w = problem.log_joint(z, params) - problem.distribution(frozen).log_prob(z)
    if not torch.isfinite(log_w).all():
        raise NonFiniteCostError(f"the log weights of problem {problem.spec!r} are NaN or inf")
    return log_w


class ImportanceWeighted(GradientEstimator):
    r"""IWAE gradient :math:`\nabla_{\theta,\phi} \log \frac1K\sum_k w_k = \sum_k \tilde w_k \nabla \log w_k`.

    Unbiased for :math:`\nabla\mathcal{L}_K`, whose truth (for K > 1) is a labelled high-sample
    oracle. With K=1 the bound is the ELBO and the estimate equals ``reparam``'s exactly (same
    noise, same numbers). Cost: K log-joint evaluations.
    """

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


class StickingTheLanding(ImportanceWeighted):
    r"""IWAE with the encoder's score term dropped (Roeder, Wu & Duvenaud 2017).

    .. math::
       \hat g_{\mathrm{STL}} = \nabla \log \frac1K \sum_k
       \frac{p_\theta(x, z_k)}{q_{\bar\phi}(z_k\mid x)},\qquad z_k = z_\phi(\epsilon_k),

    i.e. :math:`\sum_k \tilde w_k\,\partial_{z_k}\log w_k\,\partial_\phi z_k` for the encoder and the
    IWAE gradient for the decoder. For K = 1 the dropped term is
    :math:`-\nabla_\phi\log q_\phi(z)`, whose mean is zero: unbiased for the ELBO, and of zero
    variance when :math:`q` is the exact posterior (then :math:`\log w` is constant in :math:`z`).
    For K > 1 the dropped term :math:`-\sum_k\tilde w_k\nabla_\phi\log q_\phi(z_k)` has a non-zero
    mean (the self-normalised weights depend on the samples): **biased** for
    :math:`\nabla_\phi\mathcal{L}_K` (the suite's negative control), so ``unbiased_at(n)`` is
    ``n == 1``. Its objective is still the IWAE-K bound. Cost: K log-joint evaluations.
    """

    unbiased = False

    def unbiased_at(self, n):
        return n == 1

    def estimate(self, problem, params, n, state):
        z = problem.distribution(params).rsample((n,))              # (K, R, *event)
        bound = torch.logsumexp(path_log_weights(problem, z, params), dim=0) - math.log(n)
        return grad_of(bound, params)


class DoublyReparameterised(ImportanceWeighted):
    r"""Doubly reparameterised IWAE gradient, DReG (Tucker, Lawson, Gu & Maddison 2019).

    Reparameterising the score term a second time turns it into a path term and gives

    .. math::
       \hat g_\phi = \sum_k \tilde w_k^2\,
       \frac{\partial \log w_k}{\partial z_k}\frac{\partial z_k}{\partial \phi},\qquad
       \hat g_\theta = \sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k),

    with :math:`\log w_k` evaluated with :math:`q`'s parameters stopped. Unbiased for
    :math:`\nabla\mathcal{L}_K` at every K (both expressions have the IWAE gradient's mean); for
    K = 1 it equals ``iwae-stl`` and the decoder gradient equals ``iwae``'s at every K. Its
    encoder variance does not grow relative to the signal as K grows (the IWAE encoder SNR falls
    like :math:`K^{-1/2}`, Rainforth et al. 2018). Cost: K log-joint evaluations.

    Computed without classifying parameters: one backward pass of
    :math:`\sum_k \mathrm{sg}(\tilde w_k)\log w_k` into detached samples :math:`z_k` and the
    parameters gives the decoder gradient and :math:`\tilde w_k\partial_{z_k}\log w_k`; scaling
    the latter by :math:`\tilde w_k` and pulling it back through :math:`z_k(\phi)` gives the
    encoder gradient (:math:`\log w_k` depends on :math:`z_k` alone).
    """

    def estimate(self, problem, params, n, state):
        z = problem.distribution(params).rsample((n,))              # (K, R, *event), path to phi
        z_fixed = z.detach().requires_grad_(True)
        log_w = path_log_weights(problem, z_fixed, params)          # (K, R), no path to phi
        w_tilde = torch.softmax(log_w.detach(), dim=0)
        names = list(params)
        grads = torch.autograd.grad((w_tilde * log_w).sum(), [z_fixed] + [params[k] for k in names],
                                    allow_unused=True)
        d_z = torch.zeros_like(z) if grads[0] is None else grads[0]
        d_z = d_z * w_tilde.reshape(w_tilde.shape + (1,) * (z.dim() - w_tilde.dim()))
        encoder = grad_of((z * d_z).sum(), params)                  # pull w~^2 dlogw/dz back to phi
        return {k: encoder[k] if g is None else encoder[k] + g for k, g in zip(names, grads[1:])}


@register_estimator("iwae")
def iwae():
    """IWAE gradient of the K-sample bound, K = N (Burda et al. 2016); unbiased for that bound; model problems only."""
    return ImportanceWeighted()


@register_estimator("iwae-stl")
def iwae_stl():
    """IWAE without the encoder score term, "sticking the landing" (Roeder et al. 2017); unbiased only for K = N = 1."""
    return StickingTheLanding()


@register_estimator("iwae-dreg")
def iwae_dreg():
    """Doubly reparameterised IWAE gradient, DReG (Tucker et al. 2019); unbiased for the K-sample bound, K = N."""
    return DoublyReparameterised()
