r"""REBAR and RELAX: score-function estimators with a relaxed, reparameterised control variate
whose parameters adapt to minimise the estimator's own variance.

Both estimate :math:`\nabla_\phi\,\mathbb{E}_{q_\phi(b)}[f_\phi(b)]` for Bernoulli latents
:math:`b_d \sim \mathrm{Bernoulli}(p_d)`, :math:`p = \sigma(\theta)`, logits :math:`\theta =
\theta(\phi)` of any shape (``Bernoulli``, possibly under ``Independent``). With
:math:`u, v \sim U(0,1)^D` independent,

.. math::
    z = \theta + \log u - \log(1-u), \qquad b = H(z) = 1[z > 0] \sim q_\phi,

and :math:`\tilde z \sim p(z \mid b)` by the conditional reparameterisation (Tucker et al. 2017,
appendix): :math:`u \mid b` is uniform on :math:`(1-p, 1)` for :math:`b = 1` and on
:math:`(0, 1-p)` for :math:`b = 0`, so

.. math::
    \tilde z = b\,\mathrm{softplus}\big(\mathrm{logit}\,v + \mathrm{softplus}(\theta)\big)
             - (1-b)\,\mathrm{softplus}\big(-\mathrm{logit}\,v + \mathrm{softplus}(-\theta)\big),

a differentiable function of :math:`\theta` at fixed :math:`(b, v)`. For a control variate
:math:`c(z)` the single-sample estimate (per replicate, averaged over ``n`` samples) is

.. math::
    \hat g = \big[f(b) - c(\tilde z)\big]\,\nabla_\phi \log q_\phi(b)
             + \nabla_\phi c(z) - \nabla_\phi c(\tilde z) + \nabla_\phi f_\phi(b)\big|_{b},

unbiased for *any* :math:`c` that does not depend on the samples otherwise: :math:`\mathbb{E}[
c(\tilde z)\nabla\log q(b)] + \mathbb{E}_b[\nabla\,\mathbb{E}[c(\tilde z)\mid b]] = \nabla\,
\mathbb{E}[c(z)]`. The derivatives of :math:`c` are taken through the logits only (the
parameters inside :math:`c` are held fixed), and the last term is a model problem's direct
dependence (as in :mod:`gradnoise.discrete`).

* ``rebar``: :math:`c(z) = \eta\, f(\sigma_\lambda(z))`, :math:`\sigma_\lambda(z) = \sigma(z/\lambda)`
  (Tucker et al. 2017), with :math:`f` the problem's cost evaluated at the relaxed sample.
* ``relax``: :math:`c_\psi(z) = \eta\, f(\sigma_\lambda(z)) + r_\psi(z)`, :math:`r_\psi` a
  one-hidden-layer tanh MLP of the flattened :math:`z` (Grathwohl et al. 2018).

**Adaptation.** The control parameters (:math:`\eta`, :math:`\log\lambda`, and :math:`\psi` for
RELAX; one set per replicate, in the estimator's state) follow Adam steps down the gradient of
:math:`\sum \hat g^2` (the sum over every coordinate of every parameter), which is the gradient
of the estimate's variance because its mean does not depend on them. That gradient is taken
through the estimate (``grad_of(..., create_graph=True)``): :meth:`estimate` leaves it in
``Estimate.aux`` as a function that :meth:`adapt` calls (so a measured estimate, which nothing
adapts after, skips that second backward pass), and :meth:`adapt` applies it, so a training loop's ``step`` adapts them, and a frozen-point measurement first
runs ``warmup`` such steps at the point (amortised: left out of ``cost_evals`` and of the time,
as ``reinforce-ema``'s warm-up). With ``adapt=false`` the control parameters stay at their
initial values (``eta``, ``temperature``; RELAX's :math:`\psi` drawn in :meth:`init` from the
engine's stream), no warm-up runs and the double backward pass is skipped.

**Cost.** Per sample: :math:`f(b)` once and the relaxed cost twice (at :math:`\sigma_\lambda(z)`
and :math:`\sigma_\lambda(\tilde z)`): ``cost_evals = 3n``, counting a relaxed evaluation as
one. An adapting estimate keeps its gradient's graph (``create_graph``), and each adapt step
takes a second backward pass through it (not a cost evaluation).

The cost must be defined and differentiable on :math:`[0,1]^D` (checked on samples as for the
pathwise estimators: :meth:`~gradnoise.base.Problem.sample_gradient_reason`); on a model
problem it is the discrete ELBO integrand :math:`\log p_\theta(x, b) - \log q_\phi(b \mid x)`
at the relaxed :math:`b` (Bernoulli log-probabilities are defined for b in [0, 1]).

References: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR: low-variance,
unbiased gradient estimates for discrete latent variable models", NeurIPS; Grathwohl, Choi, Wu,
Roeder & Duvenaud (2018), "Backpropagation through the void: optimizing control variates for
black-box gradient estimation", ICLR.

Shapes: logits ``(R, *S)``; ``u``, ``v``, ``z``, ``b`` ``(n, R, *S)``; the cost ``(n, R)``;
control parameters ``(R,)`` (:math:`\psi`: ``(R, D, H)``, ``(R, H)``, ``(R, H)``, ``(R,)``).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions.utils import clamp_probs

from .base import (
    Estimate, EstimatorNotApplicable, NonFiniteCostError, all_finite, base_distribution,
    evaluate_cost, grad_of,
)
from .discrete import DiscreteEstimator, conditional_logistic
from .registry import register_estimator

#: Adam's constants for the control parameters (Kingma & Ba 2015's defaults)
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class RelaxedControlVariate(DiscreteEstimator):
    """Shared sampling, estimate and adaptation of REBAR and RELAX (see the module docstring)."""

    differentiable_cost = True
    amortised_prepare = True

    def __init__(self, eta: float = 1.0, temperature: float = 0.5, adapt: bool = True,
                 warmup: int = 20, lr: float = 0.01):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not math.isfinite(eta):
            raise ValueError(f"eta must be finite, got {eta}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.eta, self.temperature, self.adapting = float(eta), float(temperature), bool(adapt)
        self.warmup, self.lr = int(warmup), float(lr)
        self.amortised_prepare = self.adapting and self.warmup > 0

    # -- declared costs -------------------------------------------------------------------------
    def cost_evals(self, n):
        """f(b) once and the relaxed cost twice per sample: 3n."""
        return 3 * n

    def warmup_steps(self, n):
        return self.warmup if self.adapting else 0

    def sample_bytes(self, problem, n):
        """112: u, v, z, z~, b, three relaxed costs and the double-backward graph of the adapting
        estimate (at most 98 measured, bernoulli-toy at N = 100: ``benchmarks/scripts/block_memory.py``)."""
        return 112

    def amortised_evals(self, n):
        return self.warmup_steps(n) * self.cost_evals(n)

    def check(self, problem, n):
        super().check(problem, n)
        reason = problem.sample_gradient_reason()
        if reason is not None:
            raise EstimatorNotApplicable(
                f"estimator {self.name!r} evaluates the cost at the relaxed sample sigma(z/temperature) "
                f"and needs its gradient there, but for problem {problem.spec!r} {reason}; use 'disarm'"
            )

    # -- state ------------------------------------------------------------------------------------
    def init(self, problem, params, n) -> dict[str, Any]:
        logits = base_distribution(problem.distribution(params)).logits
        r = logits.shape[0]
        like = dict(dtype=logits.dtype, device=logits.device)
        controls = {"eta": torch.full((r,), self.eta, **like),
                    "log_temperature": torch.full((r,), math.log(self.temperature), **like)}
        controls.update(self.init_extra(logits))
        state = {"controls": controls}
        if self.adapting:
            state["m"] = {k: torch.zeros_like(v) for k, v in controls.items()}
            state["v"] = {k: torch.zeros_like(v) for k, v in controls.items()}
            state["t"] = 0
        return state

    def init_extra(self, logits: Tensor) -> dict[str, Tensor]:
        """Further control parameters (RELAX's network); none for REBAR."""
        return {}

    def extra(self, z: Tensor, controls: dict[str, Tensor]) -> Tensor:
        """The learned part of the control variate at ``z`` ``(n, R, *S)``: ``(n, R)``; 0 for REBAR."""
        return torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)

    # -- the estimate -------------------------------------------------------------------------------
    def control_variate(self, problem, z: Tensor, controls: dict[str, Tensor], fixed) -> Tensor:
        r""":math:`c(z) = \eta f(\sigma(z/\lambda)) + r_\psi(z)`, shape ``(n, R)``; ``fixed`` the
        detached parameters (the cost's own dependence on them is held fixed)."""
        lam = _expand(controls["log_temperature"].exp(), z)
        f = problem.cost(torch.sigmoid(z / lam), fixed)
        if not all_finite(f):
            raise NonFiniteCostError(f"the relaxed cost of problem {problem.spec!r} returned NaN or inf")
        return controls["eta"] * f + self.extra(z, controls)

    def estimate(self, problem, params, n, state):
        dist = problem.distribution(params)
        logits = base_distribution(dist).logits                              # (R, *S)
        shape = (n,) + tuple(logits.shape)
        u = clamp_probs(torch.rand(shape, dtype=logits.dtype, device=logits.device))
        v = clamp_probs(torch.rand(shape, dtype=logits.dtype, device=logits.device))
        adapting = self.adapting
        controls = {k: t.detach().requires_grad_(adapting) for k, t in state["controls"].items()}
        fixed = {k: p.detach() for k, p in params.items()}
        z = logits + u.log() - torch.log1p(-u)
        b = (z > 0).to(logits.dtype).detach()
        z_tilde = conditional_logistic(logits, b, v)
        f = evaluate_cost(problem, b, params)                                # (n, R), direct dependence live
        c_z = self.control_variate(problem, z, controls, fixed)
        # c(z~) once: its value (with the control parameters' graph) for the score term, and its
        # gradient in z~ (ditto) for the reparameterised term through the logits
        w = z_tilde.detach().requires_grad_(True)
        with torch.enable_grad():
            c_tilde = self.control_variate(problem, w, controls, fixed)
            (dc_tilde,) = torch.autograd.grad(c_tilde.sum(), w, create_graph=adapting)
        event = tuple(range(2, z.dim()))
        reparam_tilde = (dc_tilde * z_tilde).sum(event) if event else dc_tilde * z_tilde
        surrogate = ((f.detach() - c_tilde) * dist.log_prob(b) + c_z - reparam_tilde + f).mean(0)
        grads = grad_of(surrogate, params, create_graph=adapting)
        aux = None
        if adapting:   # the second backward pass runs only if adapt asks for it (not for a measured estimate)
            proxy = sum(g.square().reshape(g.shape[0], -1).sum(1) for g in grads.values())   # (R,)
            aux = functools.partial(_control_gradients, proxy, controls)
        return Estimate({k: g.detach() for k, g in grads.items()}, state, aux)

    def adapt(self, problem, params, n, estimate):
        """One Adam step (per replicate, elementwise) of the control parameters down ``aux``, the
        gradient of the estimate's squared norm."""
        state = estimate.state
        if not self.adapting or estimate.aux is None:
            return state
        grads = estimate.aux()
        t = state["t"] + 1
        new = {"controls": {}, "m": {}, "v": {}, "t": t}
        for k, x in state["controls"].items():
            g = grads[k]
            m = BETAS[0] * state["m"][k] + (1 - BETAS[0]) * g
            v = BETAS[1] * state["v"][k] + (1 - BETAS[1]) * g.square()
            m_hat, v_hat = m / (1 - BETAS[0] ** t), v / (1 - BETAS[1] ** t)
            new["controls"][k] = x - self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
            new["m"][k], new["v"][k] = m, v
        return new


def _control_gradients(proxy: Tensor, controls: dict[str, Tensor]) -> dict[str, Tensor]:
    """The gradient of ``proxy.sum()`` (the estimate's squared norm per replicate, ``(R,)``) with
    respect to each control parameter (zeros where it does not depend on one)."""
    names = list(controls)
    grads = torch.autograd.grad(proxy.sum(), [controls[k] for k in names], allow_unused=True)
    return {k: torch.zeros_like(controls[k]) if g is None else g.detach() for k, g in zip(names, grads)}


def _expand(per_replicate: Tensor, like: Tensor) -> Tensor:
    """``(R,)`` to ``(1, R, 1, ...)`` against ``like`` of shape ``(n, R, *S)``."""
    return per_replicate.reshape((1, -1) + (1,) * (like.dim() - 2))


class REBAR(RelaxedControlVariate):
    r"""REBAR (Tucker et al. 2017): the control variate :math:`\eta f(\sigma_\lambda(z))`.

    .. math:: \hat g = \big[f(b) - \eta f(\sigma_\lambda(\tilde z))\big]\nabla\log q(b)
              + \eta\nabla f(\sigma_\lambda(z)) - \eta\nabla f(\sigma_\lambda(\tilde z))

    (plus a model problem's direct term); see :mod:`gradnoise.rebar`. Unbiased for any
    :math:`\eta, \lambda`; :math:`\eta` and :math:`\log\lambda` adapt (``adapt=true``) by Adam on
    the gradient of the estimate's squared norm. 3n cost evaluations.
    """


class RELAX(RelaxedControlVariate):
    r"""RELAX (Grathwohl et al. 2018): the control variate :math:`c_\psi(z) = \eta
    f(\sigma_\lambda(z)) + r_\psi(z)`, :math:`r_\psi(z) = w_2^\top\tanh(W_1^\top z + b_1) + b_2`
    with ``hidden`` units, :math:`z` flattened to :math:`D` entries.

    .. math:: \hat g = \big[f(b) - c_\psi(\tilde z)\big]\nabla\log q(b) + \nabla c_\psi(z)
              - \nabla c_\psi(\tilde z)

    Unbiased for any :math:`\psi`; :math:`\psi`, :math:`\eta`, :math:`\log\lambda` adapt by Adam
    on the gradient of the estimate's squared norm (the single-sample variance, through the
    control parameters only). :math:`\psi` is initialised in :meth:`init` as torch's ``Linear``
    (uniform on :math:`\pm 1/\sqrt{\text{fan-in}}`), from the engine's stream. 3n cost evaluations.
    """

    def __init__(self, hidden: int = 10, **options):
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        super().__init__(**options)
        self.hidden = int(hidden)

    def sample_bytes(self, problem, n):
        """REBAR's part, the network's ``(n, R, hidden)`` activations at z and z~ with their
        double-backward graph (56 bytes per hidden unit per sample, over its E + P elements), and
        each replicate's network with its Adam moments (80 bytes per number, over the replicate's
        ``n (E + P)`` elements). Measured (``benchmarks/scripts/block_memory.py``, 10 units, R =
        10^4) against this: bernoulli-toy 451 / 504 at N = 10, 396 / 419 at N = 30, 269 / 389 at
        N = 100; bernoulli-toy-nd 158 / 260, 168 / 214, 136 / 197."""
        width = max(1, problem.event_numel() + problem.param_numel())
        numbers = max(1, problem.event_numel()) * self.hidden + 2 * self.hidden + 2   # w1, b1, w2, b2
        return 96 + math.ceil(56 * self.hidden / width) + math.ceil(80 * numbers / (n * width))

    def init_extra(self, logits):
        r, d, h = logits.shape[0], max(1, logits[0].numel()), self.hidden
        like = dict(dtype=logits.dtype, device=logits.device)

        def uniform(shape, fan_in):
            return (2 * torch.rand(shape, **like) - 1) / math.sqrt(fan_in)

        return {"w1": uniform((r, d, h), d), "b1": uniform((r, h), d),
                "w2": uniform((r, h), h), "b2": uniform((r,), h)}

    def extra(self, z, controls):
        x = z.reshape(z.shape[0], z.shape[1], -1)                                   # (n, R, D)
        hidden = torch.tanh(torch.einsum("nrd,rdh->nrh", x, controls["w1"]) + controls["b1"])
        return (hidden * controls["w2"]).sum(-1) + controls["b2"]                  # (n, R)


@register_estimator("rebar")
def rebar(*, eta: float = 1.0, temperature: float = 0.5, adapt: bool = True, warmup: int = 20, lr: float = 0.01):
    """REBAR (Tucker et al. 2017): REINFORCE with the relaxed, conditionally reparameterised control variate eta f(sigma(z/temperature)), Bernoulli latents; unbiased; 3n evaluations (warm-up not counted)."""
    return REBAR(eta=eta, temperature=temperature, adapt=adapt, warmup=warmup, lr=lr)


@register_estimator("relax")
def relax(*, hidden: int = 10, eta: float = 1.0, temperature: float = 0.5, adapt: bool = True,
          warmup: int = 20, lr: float = 0.01):
    """RELAX (Grathwohl et al. 2018): REBAR's control variate plus a learned MLP surrogate, Bernoulli latents; unbiased; 3n evaluations (warm-up not counted)."""
    return RELAX(hidden=hidden, eta=eta, temperature=temperature, adapt=adapt, warmup=warmup, lr=lr)
