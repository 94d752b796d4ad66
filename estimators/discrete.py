r"""Estimators for discrete latents: ARM, DisARM, Gumbel-softmax (concrete) and straight-through.

All four estimate :math:`\nabla_\phi \mathbb{E}_{q_\phi(b)}[f_\phi(b)]` where :math:`q_\phi` is a
product of Bernoulli distributions :math:`b_d \sim \mathrm{Bernoulli}(\sigma(\theta_d))` with
logits :math:`\theta = \theta(\phi)` of any shape (``Bernoulli``, possibly wrapped in
``Independent``), or, for the relaxations, a ``OneHotCategorical``. The logits are read from the
problem's distribution, so on model problems (an encoder) they are the encoder's output and the
gradient flows on into the encoder's weights by the chain rule.

Shapes: the distribution has batch shape ``(R,)`` (replicates) and the base distribution's
logits have shape ``(R, *event)``; noise and samples have shape ``(n, R, *event)``; the cost
maps them to ``(n, R)``.

**Direct dependence.** On model problems the cost :math:`f_\phi(b) = \log p_\theta(x, b) - \log
q_\phi(b\mid x)` depends on the parameters also at fixed :math:`b`; every estimator here adds
the Monte Carlo average of :math:`\nabla_\phi f_\phi(b)` at its samples (for ARM and DisARM the
average over both antithetic samples, each distributed as :math:`q_\phi`), which carries the
decoder gradient and a zero-mean :math:`-\nabla_\phi\log q_\phi` term, exactly as
:class:`~gradnoise.score_function.ScoreFunction` does.

References: Yin & Zhou (2019), "ARM: augment-REINFORCE-merge gradient for stochastic binary
networks", ICLR; Dong, Mnih & Tucker (2020), "DisARM: an antithetic gradient estimator for
binary latent variables", NeurIPS; Jang, Gu & Poole (2017), "Categorical reparameterization
with Gumbel-softmax", ICLR; Maddison, Mnih & Teh (2017), "The concrete distribution", ICLR;
Bengio, Léonard & Courville (2013) for straight-through.
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli, Distribution, OneHotCategorical, RelaxedOneHotCategorical,
)
from torch.distributions.utils import clamp_probs

from .base import (
    EstimatorNotApplicable, GradientEstimator, NonFiniteCostError, Problem, all_finite,
    base_distribution, evaluate_cost, grad_of,
)
from .registry import register_estimator


def describe(dist: Distribution) -> str:
    """``Independent(Bernoulli)``-style name of a distribution and its wrappers."""
    base = base_distribution(dist)
    return type(base).__name__ if base is dist else f"{type(dist).__name__}({type(base).__name__})"


def _expand(signal: Tensor, like: Tensor) -> Tensor:
    """``signal`` of shape ``(n, R)`` with trailing singleton dims to broadcast against ``like``."""
    return signal.reshape(signal.shape + (1,) * (like.dim() - signal.dim()))


class DiscreteEstimator(GradientEstimator):
    """Shared checks: the problem's distribution must be one of ``latents`` (under ``Independent``)."""

    #: base distribution classes this estimator handles
    latents: tuple[type, ...] = (Bernoulli,)
    #: needs the cost to be differentiable in the (relaxed) sample
    differentiable_cost: bool = False

    def check(self, problem: Problem, n: int) -> None:
        super().check(problem, n)
        dist = problem.distribution(problem.params)
        if not isinstance(base_distribution(dist), self.latents):
            names = " or ".join(c.__name__ for c in self.latents)
            raise EstimatorNotApplicable(
                f"estimator {self.name!r} needs {names} latents, but the distribution "
                f"{describe(dist)} of problem {problem.spec!r} is not one; use a score-function "
                f"estimator such as 'reinforce-loo'"
            )


class AntitheticBernoulli(DiscreteEstimator):
    r"""Shared sampling of ARM and DisARM: one uniform :math:`u` per coordinate, two samples.

    :math:`b = 1[u < \sigma(\theta)]` and :math:`\tilde b = 1[u > \sigma(-\theta)]` (the antithetic
    sample, from :math:`1-u`), both distributed as :math:`q_\phi`; the cost is evaluated at both
    (2 evaluations per sample, ``cost_evals = 2n``). Subclasses give the per-coordinate learning
    signal :math:`g_d` that multiplies :math:`\theta_d` in the surrogate

    .. math:: \frac1n\sum_{i=1}^n\Big[\sum_d \mathrm{sg}(g_{i,d})\,\theta_d
              + \tfrac12\big(f_\phi(b_i) + f_\phi(\tilde b_i)\big)\Big].
    """

    def cost_evals(self, n):
        return 2 * n

    @abc.abstractmethod
    def signal(self, u: Tensor, logits: Tensor, b: Tensor, b_anti: Tensor, delta: Tensor) -> Tensor:
        """Per-coordinate :math:`g` of shape ``(n, R, *event)``; ``delta`` = f(b~) - f(b), expanded."""

    def estimate(self, problem, params, n, state):
        logits = base_distribution(problem.distribution(params)).logits     # (R, *event)
        u = torch.rand((n,) + tuple(logits.shape), dtype=logits.dtype, device=logits.device)
        with torch.no_grad():
            b = (u < torch.sigmoid(logits)).to(logits.dtype)                 # (n, R, *event)
            b_anti = (u > torch.sigmoid(-logits)).to(logits.dtype)
        f = evaluate_cost(problem, b, params)                               # (n, R)
        f_anti = evaluate_cost(problem, b_anti, params)
        delta = _expand((f_anti - f).detach(), u)
        g = self.signal(u, logits.detach(), b, b_anti, delta)
        surrogate = (g.mean(0) * logits).sum() + (0.5 * (f + f_anti)).mean(0).sum()
        return grad_of(surrogate, params)


class ARM(AntitheticBernoulli):
    r"""Augment-REINFORCE-merge (Yin & Zhou 2019), per coordinate.

    .. math:: \hat g_d = \big(f(\tilde b) - f(b)\big)\big(u_d - \tfrac12\big),\qquad
              \tilde b = 1[u > \sigma(-\theta)],\ b = 1[u < \sigma(\theta)],

    an unbiased estimate of :math:`\partial_{\theta_d}\mathbb{E}[f(b)]` (chained into
    :math:`\phi`), averaged over ``n`` uniforms :math:`u \in (0,1)^D`. Unbiased; 2n evaluations.
    """

    def signal(self, u, logits, b, b_anti, delta):
        return delta * (u - 0.5)


class DisARM(AntitheticBernoulli):
    r"""ARM with the augmenting noise integrated out (Dong, Mnih & Tucker 2020), per coordinate.

    .. math:: \hat g_d = \tfrac12\big(f(\tilde b) - f(b)\big)\,(-1)^{b_d}\,
              1[b_d \ne \tilde b_d]\,\sigma(|\theta_d|)

    with :math:`b, \tilde b` the antithetic pair of :class:`AntitheticBernoulli` (the paper's
    :math:`b` and :math:`\tilde b` with :math:`\tilde b` from :math:`1-u`). It is the conditional
    expectation of ARM given :math:`(b, \tilde b)`, so unbiased and never of larger variance than
    ARM. 2n evaluations.
    """

    def signal(self, u, logits, b, b_anti, delta):
        sign = 1.0 - 2.0 * b                                                 # (-1)^{b_d}
        return 0.5 * delta * sign * (b != b_anti).to(u.dtype) * torch.sigmoid(logits.abs())


class Relaxation(DiscreteEstimator):
    r"""Shared check and sampling of the concrete relaxations (Maddison et al. 2017; Jang et al. 2017).

    Bernoulli :math:`\sigma(\theta)`: logistic :math:`y = (\theta + \log u - \log(1-u))/\tau`
    (``LogitRelaxedBernoulli``), relaxed sample :math:`\sigma(y)`, hard sample :math:`1[y > 0]
    \sim \mathrm{Bernoulli}(\sigma(\theta))`. ``OneHotCategorical`` :math:`\theta`:
    :math:`y = \mathrm{softmax}((\theta + G)/\tau)` with Gumbel noise :math:`G`
    (``RelaxedOneHotCategorical``), hard sample ``one_hot(argmax y)``, an exact categorical
    sample (Gumbel-max). Both are pathwise: the cost must be differentiable in the sample.
    """

    latents = (Bernoulli, OneHotCategorical)
    differentiable_cost = True
    unbiased = False

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)


def _relaxed_sample(base: Distribution, temperature: float, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, soft, hard)`` of shape ``(n, R, *event)``; ``y`` is the logistic variable (Bernoulli)
    or the relaxed one-hot vector (categorical), ``soft`` the relaxed sample, ``hard`` the exact one."""
    if isinstance(base, Bernoulli):
        # LogitRelaxedBernoulli's sampler, applied to the logits themselves (torch's goes through
        # clamped probabilities, which loses the gradient for |logits| > ~16 in float32)
        u = clamp_probs(torch.rand((n,) + tuple(base.logits.shape), dtype=base.logits.dtype,
                                   device=base.logits.device))
        y = (base.logits + u.log() - torch.log1p(-u)) / temperature
        soft = torch.sigmoid(y)
        return y, soft, (y > 0).to(y.dtype).detach()
    y = RelaxedOneHotCategorical(torch.tensor(temperature, dtype=base.logits.dtype, device=base.logits.device),
                                 logits=base.logits).rsample((n,))
    hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return y, y, hard


class GumbelSoftmax(Relaxation):
    r"""Gumbel-softmax / concrete gradient (Jang et al. 2017; Maddison et al. 2017).

    The pathwise gradient of the relaxed objective at temperature :math:`\tau`:

    .. math:: \hat g = \frac1n\sum_i \nabla_\phi \tilde f_\phi(y_i(\phi)),

    with :math:`y_i` the reparameterised concrete sample (see :class:`Relaxation`). On a plain
    expectation :math:`\tilde f = f` evaluated at the relaxed sample (the cost must accept values
    in :math:`[0,1]^D` or on the simplex). On model problems :math:`\tilde f` is the relaxed ELBO
    integrand of Maddison et al. (2017, Appendix C), supplied by the problem as
    ``relaxed_cost(y, params, temperature)`` with ``y`` the logistic variable of shape
    ``(n, R, *event)`` (Bernoulli latents) or the relaxed one-hot sample (categorical):
    :math:`\log p_\theta(x\mid\sigma(y)) + \log g_{\lambda,\tau}(y) - \log
    g_{\theta(\phi),\tau}(y\mid x)`, with :math:`g` the logistic densities of the relaxed prior
    and posterior (``LogitRelaxedBernoulli``; see :meth:`gradnoise.problems.digits.DigitsVAE.relaxed_cost`).
    Unbiased for the gradient of the *relaxed* objective; **biased** for the discrete objective,
    which is what the suite compares it with (``unbiased = False``). For a plain expectation
    with a continuous cost the bias vanishes as :math:`\tau \to 0`, where the variance grows; the
    relaxed ELBO need not tend to the ELBO. n evaluations of the relaxed cost (and their
    gradients).
    """

    def check(self, problem, n):
        super().check(problem, n)
        if problem.is_model and not hasattr(problem, "relaxed_cost"):
            raise EstimatorNotApplicable(
                f"estimator {self.name!r} on a model problem needs the problem's relaxed objective "
                f"(a relaxed_cost(y, params, temperature) method); {problem.spec!r} has none"
            )

    def estimate(self, problem, params, n, state):
        base = base_distribution(problem.distribution(params))
        y, soft, _ = _relaxed_sample(base, self.temperature, n)
        if problem.is_model:
            f = problem.relaxed_cost(y, params, self.temperature)
            if not all_finite(f):
                raise NonFiniteCostError(f"the relaxed cost of problem {problem.spec!r} returned NaN or inf")
        else:
            f = evaluate_cost(problem, soft, params)
        return grad_of(f.mean(0), params)


class StraightThrough(Relaxation):
    r"""Straight-through Gumbel estimator (Bengio et al. 2013; Jang et al. 2017, "ST Gumbel-Softmax").

    The cost is evaluated at the exact (hard) sample :math:`b`, and the backward pass uses the
    relaxed sample's Jacobian: :math:`b_{st} = b + s - \mathrm{sg}(s)` with :math:`s` the relaxed
    sample (see :class:`Relaxation`), so

    .. math:: \hat g = \frac1n\sum_i \Big[\frac{\partial f_\phi}{\partial b}(b_i)\,
              \frac{\partial s_i}{\partial \phi} + \nabla_\phi f_\phi(b)\big|_{b = b_i}\Big].

    It targets the discrete objective :math:`\nabla\mathbb{E}_{q_\phi}[f_\phi(b)]` but is
    **biased** for it: the relaxation's Jacobian is not the discrete derivative, and the bias does
    not vanish as :math:`\tau\to 0` (for one Bernoulli the mean tends to
    :math:`\sigma'(\theta)\,\mathbb{E}[f'(b)]`, not :math:`\sigma'(\theta)(f(1) - f(0))`). Needs a
    cost defined and differentiable on :math:`\mathbb{R}^D` (the discrete ELBO integrand of a model
    problem is). n evaluations.
    """

    def estimate(self, problem, params, n, state):
        base = base_distribution(problem.distribution(params))
        _, soft, hard = _relaxed_sample(base, self.temperature, n)
        b = hard + (soft - soft.detach())                                    # value hard, grad soft
        return grad_of(evaluate_cost(problem, b, params).mean(0), params)


@register_estimator("arm")
def arm():
    """ARM, augment-REINFORCE-merge (Yin & Zhou 2019): antithetic, Bernoulli latents; unbiased; 2n evaluations."""
    return ARM()


@register_estimator("disarm")
def disarm():
    """DisARM (Dong, Mnih & Tucker 2020): ARM with its noise integrated out, Bernoulli latents; unbiased; 2n evaluations."""
    return DisARM()


@register_estimator("gumbel-softmax")
def gumbel_softmax(*, temperature: float = 1.0):
    """Gumbel-softmax / concrete relaxation (Jang et al. 2017; Maddison et al. 2017): biased, relaxed objective; n evaluations."""
    return GumbelSoftmax(temperature)


@register_estimator("straight-through")
def straight_through(*, temperature: float = 1.0):
    """Straight-through Gumbel (Bengio et al. 2013; Jang et al. 2017): hard forward, relaxed backward; biased; n evaluations."""
    return StraightThrough(temperature)


def conditional_logistic(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r""":math:`\tilde z \sim p(z \mid b)` for :math:`z = \theta + \mathrm{logit}\,u`, reparameterised
    by ``v`` ~ U(0,1) (see the module docstring); shapes broadcast, ``b`` held fixed."""
    logit_v = v.log() - torch.log1p(-v)
    return (b * F.softplus(logit_v + F.softplus(logits))
            - (1 - b) * F.softplus(-logit_v + F.softplus(-logits)))


class GumbelRao(Relaxation):
    r"""Gumbel-Rao: straight-through Rao-Blackwellised over the noise given the sample (Paulus,
    Maddison & Krause 2021).

    Straight-through's per-sample estimate is :math:`\frac{\partial f}{\partial b}(b)\,
    \frac{\partial s(\theta, G)}{\partial\theta}` with :math:`b` the exact sample and :math:`s`
    the relaxed one from the same noise :math:`G` (see :class:`StraightThrough`). Gumbel-Rao
    replaces the Jacobian by its average over ``k`` draws of the noise *given* :math:`b`:

    .. math:: \hat g = \frac{\partial f}{\partial b}(b)\,\frac1k\sum_{j=1}^k
              \frac{\partial s(\theta, G_j)}{\partial\theta}, \qquad G_j \sim p(G \mid b),

    the noise held fixed in the derivative (nshepperd's implementation makes the same choice; the
    paper's wording takes the derivative through :math:`G_j` too, which changes the mean). So
    :math:`\mathbb{E}[\hat g \mid b] = \mathbb{E}[\text{ST} \mid b]`: the **same mean as
    straight-through** (biased exactly as it is; ``unbiased = False``) and variance
    :math:`\mathrm{Var}(\mathbb{E}[\text{ST}\mid b]) + \mathbb{E}[\mathrm{Var}(\text{ST}\mid b)]/k`,
    at most straight-through's (equal at :math:`k = 1`). Conditional noise: Bernoulli, the
    logistic :math:`\tilde z \sim p(z\mid b)` of :func:`conditional_logistic`;
    categorical, the Gumbels given the argmax (the top one :math:`\log\sum_j e^{\theta_j} -
    \log E_b`, the others truncated below it, :math:`-\log(E_j e^{-\theta_j} + E_b/Z)`,
    :math:`E` standard exponentials; Paulus et al.'s appendix). n cost evaluations (the cost and
    its gradient at the hard sample), ``n k`` relaxed samples.
    """

    def __init__(self, k: int = 10, temperature: float = 1.0):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        super().__init__(temperature)
        self.k = int(k)

    def sample_bytes(self, problem, n):
        """20 bytes per sample element per noise draw: the ``(k, n, R, *event)`` noise, relaxed
        samples and their graph (at most 160 measured at k = 10, categorical-toy at N = 100:
        ``benchmarks/scripts/block_memory.py``)."""
        return 20 * self.k

    def estimate(self, problem, params, n, state):
        base = base_distribution(problem.distribution(params))
        logits = base.logits                                                  # (R, *event)
        shape = (n,) + tuple(logits.shape)
        with torch.no_grad():
            if isinstance(base, Bernoulli):
                hard = (torch.rand(shape, dtype=logits.dtype, device=logits.device)
                        < torch.sigmoid(logits)).to(logits.dtype)
            else:
                hard = OneHotCategorical(logits=logits).sample((n,))
        with torch.no_grad():
            if isinstance(base, Bernoulli):
                v = clamp_probs(torch.rand((self.k,) + shape, dtype=logits.dtype, device=logits.device))
                noise = conditional_logistic(logits, hard, v) - logits        # (k, n, R, *event)
            else:
                e = torch.empty((self.k,) + shape, dtype=logits.dtype, device=logits.device).exponential_()
                e_top = (hard * e).sum(-1, keepdim=True)
                log_z = torch.logsumexp(logits, -1, keepdim=True)
                top = log_z - e_top.log()
                others = -torch.log(e * torch.exp(-logits) + e_top * torch.exp(-log_z))
                noise = torch.where(hard.bool(), top, others) - logits       # Gumbels given the argmax
        y = (logits + noise) / self.temperature
        soft = (torch.sigmoid(y) if isinstance(base, Bernoulli) else torch.softmax(y, -1)).mean(0)
        b = hard + (soft - soft.detach())                                    # value hard, grad averaged soft
        return grad_of(evaluate_cost(problem, b, params).mean(0), params)


@register_estimator("gumbel-rao")
def gumbel_rao(*, k: int = 10, temperature: float = 1.0):
    """Gumbel-Rao (Paulus et al. 2021): straight-through Rao-Blackwellised over k draws of the noise given the sample; biased as straight-through, lower variance; n evaluations."""
    return GumbelRao(k, temperature)
