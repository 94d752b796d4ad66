r"""Problems whose true gradient is known, each labelled with how it is known.

* closed-form: the expectation (or ELBO) has a closed form; its gradient is taken by autograd
  of that formula, at the base parameters.
* enumeration: a discrete distribution with ``enumerate_support``; the expectation is the exact
  finite sum :math:`\sum_x q_\phi(x) f(x)`, differentiated by autograd.
* oracle: the mean of many independent estimates (``oracle_samples`` cost evaluations in all)
  from an unbiased estimator, with its standard error, at a seed fixed by the problem's spec.

Bring your own: :class:`ExpectationProblem` takes any ``torch.distributions`` family built from a
dict of parameter tensors plus a cost; :class:`ModelProblem` takes an encoder and a log joint.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from .base import Objective, Params, Problem, Truth, evaluate_cost
from .filecache import compute_once
from .provenance import code_version
from .registry import register_problem

ORACLE_SAMPLES = 2**20


def _leaves(params: Params) -> dict[str, Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def _autograd_truth(fn: Callable[[dict[str, Tensor]], Tensor], params: Params, kind: str) -> Truth:
    leaves = _leaves(params)
    value = fn(leaves)
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return Truth(
        {k: (torch.zeros_like(v) if g is None else g.detach()) for (k, v), g in zip(leaves.items(), grads)},
        kind,
    )


ORACLE_BLOCK_ELEMENTS = 2**24   # estimates held in memory at once by an oracle (64 MB in float32)


def _cache_dir() -> Path:
    return Path(os.environ.get("GRADNOISE_CACHE") or Path.home() / ".cache" / "gradnoise") / "oracles"


def oracle_truth(problem: Problem, estimator_name: str, n: int, samples: int = ORACLE_SAMPLES) -> Truth:
    """Mean and standard error of ``max(256, samples // n)`` independent ``n``-sample estimates.

    Uses the measurement engine at seeds derived from the problem's spec (not the user's seed),
    in blocks of at most :data:`ORACLE_BLOCK_ELEMENTS` numbers, accumulating the sum and the sum
    of squares in float64, so memory does not grow with the number of estimates. Problems built
    by :func:`~estimators.registry.make_problem` are deterministic functions of their spec, so
    their oracles are cached on disk (``$GRADNOISE_CACHE/oracles``, default
    ``~/.cache/gradnoise/oracles``), keyed by spec, estimator, n, samples, parameter values and
    :func:`~estimators.provenance.code_version` (a change of the code computes them anew).
    """
    replicates = max(256, samples // n)
    if not getattr(problem, "cacheable_truth", False):
        return _oracle(problem, estimator_name, n, replicates)
    key = hashlib.blake2b(digest_size=16)
    key.update(f"{problem.spec}|{estimator_name}|{n}|{replicates}|{code_version()}".encode())
    for name, value in sorted(problem.params.items()):
        key.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())

    def compute() -> dict:
        truth = _oracle(problem, estimator_name, n, replicates)
        return {"values": {k: v.cpu() for k, v in truth.values.items()},
                "se": {k: v.cpu() for k, v in truth.se.items()}}

    # computed by one process, the others racing for it wait and load it (Dask workers)
    saved = compute_once(_cache_dir() / f"{key.hexdigest()}.pt", compute)
    device = next(iter(problem.params.values())).device
    return Truth({k: v.to(device) for k, v in saved["values"].items()}, "oracle",
                 {k: v.to(device) for k, v in saved["se"].items()})


def _oracle(problem: Problem, estimator_name: str, n: int, replicates: int) -> Truth:
    """The oracle of :func:`oracle_truth`, computed at one intra-op thread (so that a cached
    oracle does not depend on the thread count of the process that happened to compute it)."""
    from .engine import torch_threads

    with torch_threads(1):
        return _oracle_sums(problem, estimator_name, n, replicates)


def _oracle_sums(problem: Problem, estimator_name: str, n: int, replicates: int) -> Truth:
    from .engine import replicate_estimates   # the engine imports problems' users, not vice versa
    from .registry import get_estimator

    estimator = get_estimator(estimator_name)
    block = max(2, min(replicates, ORACLE_BLOCK_ELEMENTS // max(1, problem.param_numel())))
    total: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    done = 0
    for index, first in enumerate(range(0, replicates, block)):
        size = max(2, min(block, replicates - first))
        est, _ = replicate_estimates(problem, estimator, n, size, seed=-1 - index)
        for k, g in est.items():
            g = g.double()
            total[k] = total.get(k, 0) + g.sum(0)
            squares[k] = squares.get(k, 0) + g.square().sum(0)
        done += size
    mean = {k: total[k] / done for k in total}
    var = {k: ((squares[k] - done * mean[k] ** 2) / (done - 1)).clamp_min(0) for k in total}
    dtype = next(iter(problem.params.values())).dtype
    return Truth({k: v.to(dtype) for k, v in mean.items()}, "oracle",
                 {k: (var[k] / done).sqrt().to(dtype) for k in var})


def _oracle_estimator(problem: Problem) -> str:
    """``reparam`` where it is valid (rsample and a cost with a usable sample gradient), else
    ``reinforce-loo``: an oracle is never computed from an all-zero pathwise gradient."""
    usable = problem.distribution(problem.params).has_rsample and problem.sample_gradient_reason() is None
    return "reparam" if usable else "reinforce-loo"


class ExpectationProblem(Problem):
    r"""Bring your own: :math:`\nabla_\phi \mathbb{E}_{q_\phi}[f(x)]` for any distribution family.

    ``family(**params)`` must return a distribution whose batch shape equals the leading
    (replicate) dims of the parameters: use ``Independent`` for vector-valued samples, so that
    for base parameters the batch shape is ``()``. ``cost(x)`` maps ``x`` of shape
    ``S + batch + event`` to ``S + batch`` (reduce the event dims).

    Truth, in order of preference: ``expected_cost(params)`` (closed form, differentiated by
    autograd), exact enumeration when the distribution has ``enumerate_support``, else an oracle
    from ``reparam`` (with ``rsample`` and a cost whose gradient in ``x`` is usable: see
    :meth:`~estimators.base.Problem.sample_gradient_reason`) or ``reinforce-loo``.
    """

    def __init__(
        self,
        family: Callable[..., Distribution],
        params: Mapping[str, Tensor],
        cost: Callable[[Tensor], Tensor],
        *,
        name: str = "custom",
        expected_cost: Callable[[dict[str, Tensor]], Tensor] | None = None,
        oracle_samples: int = ORACLE_SAMPLES,
    ):
        self.family, self._cost, self.expected_cost = family, cost, expected_cost
        self.params = {k: torch.as_tensor(v, dtype=torch.get_default_dtype()) for k, v in params.items()}
        self.spec, self.oracle_samples = name, oracle_samples
        self._truths: dict[Objective, Truth] = {}
        dist = self.distribution(self.params)
        if dist.batch_shape != torch.Size():
            raise ValueError(
                f"problem {name!r}: the distribution {type(dist).__name__} built from the base "
                f"parameters has batch shape {tuple(dist.batch_shape)}; it must be () "
                f"(wrap vector-valued distributions in torch.distributions.Independent)"
            )
        self.validate()

    def distribution(self, params):
        return self.family(**params)

    def cost(self, x, params):
        return self._cost(x)

    def true_gradient(self, objective=Objective()):
        objective = objective.canonical()
        if objective != Objective():
            raise ValueError(f"problem {self.spec!r} has no objective {objective}")
        if objective not in self._truths:
            self._truths[objective] = self._compute_truth()
        return self._truths[objective]

    def _compute_truth(self) -> Truth:
        if self.expected_cost is not None:
            return _autograd_truth(self.expected_cost, self.params, "closed-form")
        dist = self.distribution(self.params)
        if dist.has_enumerate_support:
            def exact(leaves):
                d = self.distribution(leaves)
                support = d.enumerate_support(expand=False)
                return (d.log_prob(support).exp() * evaluate_cost(self, support, leaves)).sum()

            return _autograd_truth(exact, self.params, "enumeration")
        return oracle_truth(self, _oracle_estimator(self), 1000, self.oracle_samples)


class ModelProblem(Problem):
    r"""Bring your own latent-variable model: an encoder :math:`q_\phi(z\mid x)` and a log joint.

    The cost is the ELBO integrand :math:`f(z) = \log p_\theta(x, z) - \log q_\phi(z\mid x)`, so
    ``reinforce*`` and ``reparam`` estimate :math:`\nabla \mathrm{ELBO}` and ``iwae`` (budget
    ``K``) estimates :math:`\nabla \mathcal{L}_K`. ``encoder(params)`` returns :math:`q_\phi(z\mid
    x)` with batch shape equal to the leading dims of ``params``; ``log_joint(z, params)`` maps
    ``S + batch + event`` to ``S + batch``. ``elbo(params)``, if given, is a closed form (truth
    kind ``closed-form``); IWAE truths for K > 1 are oracles from ``iwae-dreg`` (Tucker et al.
    2019), unbiased for the bound and far less noisy for the encoder than ``iwae``.
    """

    is_model = True

    def __init__(
        self,
        encoder: Callable[[Params], Distribution],
        log_joint: Callable[[Tensor, Params], Tensor],
        params: Mapping[str, Tensor],
        *,
        name: str = "custom-model",
        elbo: Callable[[dict[str, Tensor]], Tensor] | None = None,
        oracle_samples: int = ORACLE_SAMPLES,
    ):
        self.encoder, self.log_joint, self.elbo = encoder, log_joint, elbo
        self.params = {k: torch.as_tensor(v, dtype=torch.get_default_dtype()) for k, v in params.items()}
        self.spec, self.oracle_samples = name, oracle_samples
        self._truths: dict[Objective, Truth] = {}

    def distribution(self, params):
        return self.encoder(params)

    def cost(self, z, params):
        return self.log_joint(z, params) - self.encoder(params).log_prob(z)

    def true_gradient(self, objective=Objective()):
        objective = objective.canonical()
        if objective not in self._truths:
            if objective == Objective() and self.elbo is not None:
                truth = _autograd_truth(self.elbo, self.params, "closed-form")
            elif objective == Objective():
                truth = oracle_truth(self, _oracle_estimator(self), 1000, self.oracle_samples)
            elif objective.kind == "iwae":
                truth = oracle_truth(self, "iwae-dreg", objective.k, self.oracle_samples)
            else:
                raise ValueError(f"problem {self.spec!r} has no objective {objective}")
            self._truths[objective] = truth
        return self._truths[objective]


# --------------------------------------------------------------------------------------------
# Built-in problems
# --------------------------------------------------------------------------------------------
def _gaussian(cost, expected_cost, loc, scale, name):
    if scale <= 0:
        raise ValueError(f"problem {name!r}: scale must be > 0, got {scale}")
    return ExpectationProblem(
        Normal, {"loc": torch.tensor(float(loc)), "scale": torch.tensor(float(scale))},
        cost, name=name, expected_cost=expected_cost,
    )


@register_problem("gaussian-quadratic")
def gaussian_quadratic(*, k: float = 2.0, loc: float = 1.0, scale: float = 1.0):
    r"""x ~ Normal(loc, scale), cost (x - k)^2; E = (loc - k)^2 + scale^2 (closed form)."""
    return _gaussian(
        lambda x: (x - k) ** 2,
        lambda p: (p["loc"] - k) ** 2 + p["scale"] ** 2,
        loc, scale, "gaussian-quadratic",
    )


@register_problem("gaussian-exp")
def gaussian_exp(*, k: float = 2.0, loc: float = 1.0, scale: float = 1.0):
    r"""x ~ Normal(loc, scale), cost exp(-k x^2); E = exp(-k loc^2/(1+2k scale^2)) / sqrt(1+2k scale^2)."""
    def expected(p):
        s = 1 + 2 * k * p["scale"] ** 2
        return torch.exp(-k * p["loc"] ** 2 / s) / torch.sqrt(s)

    return _gaussian(lambda x: torch.exp(-k * x**2), expected, loc, scale, "gaussian-exp")


@register_problem("gaussian-cos")
def gaussian_cos(*, k: float = 2.0, loc: float = 1.0, scale: float = 1.0):
    r"""x ~ Normal(loc, scale), cost cos(k x); E = cos(k loc) exp(-k^2 scale^2 / 2) (closed form)."""
    return _gaussian(
        lambda x: torch.cos(k * x),
        lambda p: torch.cos(k * p["loc"]) * torch.exp(-(k**2) * p["scale"] ** 2 / 2),
        loc, scale, "gaussian-cos",
    )


@register_problem("gaussian-quadratic-nd")
def gaussian_quadratic_nd(*, d: int = 10, k: float = 2.0, loc: float = 1.0, scale: float = 1.0):
    r"""x ~ Normal(loc 1_D, diag(scale^2)), D=d, cost sum_i (x_i - k)^2; params loc, scale of shape (D,)."""
    if d < 1 or scale <= 0:
        raise ValueError(f"problem 'gaussian-quadratic-nd' needs d >= 1 and scale > 0, got d={d}, scale={scale}")
    return ExpectationProblem(
        lambda loc, scale: Independent(Normal(loc, scale), 1),
        {"loc": torch.full((d,), float(loc)), "scale": torch.full((d,), float(scale))},
        lambda x: ((x - k) ** 2).sum(-1),
        name="gaussian-quadratic-nd",
        expected_cost=lambda p: ((p["loc"] - k) ** 2 + p["scale"] ** 2).sum(),
    )


@register_problem("bernoulli-toy")
def bernoulli_toy(*, theta: float = 0.0, t: float = 0.499):
    r"""b ~ Bernoulli(logits=theta), cost (b - t)^2 (the REBAR/RELAX toy); truth by exact enumeration.

    :math:`\nabla_\theta = \sigma'(\theta)\,((1-t)^2 - t^2)`, 0.0005 at the defaults: a tiny signal.
    """
    return ExpectationProblem(
        lambda logits: Bernoulli(logits=logits), {"logits": torch.tensor(float(theta))},
        lambda b: (b - t) ** 2, name="bernoulli-toy",
    )


class LinearGaussianVAE(ModelProblem):
    r"""The linear-Gaussian model of Rainforth et al. (2018), also used by Tucker et al. (2019).

    :math:`p(z) = \mathcal{N}(\mu, I)`, :math:`p(x\mid z) = \mathcal{N}(z, I)` in D dimensions,
    encoder :math:`q(z\mid x) = \mathcal{N}(Ax + b, \tfrac23 I)`. Parameters ``mu`` (generative,
    shape (D,)), ``A`` (D, D) and ``b`` (D,) (encoder). Data: ``n_data`` points drawn from the
    model with :math:`\mu_{true} \sim \mathcal{N}(0, I)`; the gradient is for the first point
    ``x``. Parameters sit at the dataset optimum (:math:`\mu^* = \bar x`, :math:`A^* = I/2`,
    :math:`b^* = \mu^*/2`) plus :math:`\mathcal{N}(0, \text{perturbation}^2)` noise.

    Exact: :math:`\log p(x) = \log \mathcal{N}(x; \mu, 2I)`, posterior
    :math:`\mathcal{N}((\mu + x)/2, I/2)`; the ELBO in closed form, with :math:`m = Ax + b`,
    :math:`s^2 = 2/3`:
    :math:`-\tfrac12(\|m-\mu\|^2 + \|x-m\|^2) - D s^2 - D\log 2\pi + \tfrac D2 \log(2\pi e s^2)`.
    """

    VARIANCE = 2.0 / 3.0

    def __init__(self, d: int = 20, perturbation: float = 0.01, seed: int = 0, n_data: int = 1024):
        if d < 1 or n_data < 1 or perturbation < 0:
            raise ValueError("linear-gaussian-vae needs d >= 1, n_data >= 1, perturbation >= 0")
        gen = torch.Generator().manual_seed(seed)
        mu_true = torch.randn(d, generator=gen)
        data = mu_true + math.sqrt(2.0) * torch.randn(n_data, d, generator=gen)
        mu_star = data.mean(0)
        noise = lambda *shape: perturbation * torch.randn(*shape, generator=gen)  # noqa: E731
        params = {
            "mu": mu_star + noise(d),
            "A": 0.5 * torch.eye(d) + noise(d, d),
            "b": 0.5 * mu_star + noise(d),
        }
        self.x, self.d = data[0], d
        super().__init__(self._encoder, self._log_joint, params, name="linear-gaussian-vae", elbo=self._elbo)

    def _encoder(self, p):
        loc = torch.einsum("...ij,j->...i", p["A"], self.x) + p["b"]
        return Independent(Normal(loc, math.sqrt(self.VARIANCE)), 1)

    def _log_joint(self, z, p):
        prior = Normal(p["mu"], 1.0).log_prob(z).sum(-1)
        likelihood = Normal(z, 1.0).log_prob(self.x).sum(-1)
        return prior + likelihood

    def _elbo(self, p):
        m = p["A"] @ self.x + p["b"]
        d, s2 = self.d, self.VARIANCE
        return (
            -0.5 * (((m - p["mu"]) ** 2).sum() + ((self.x - m) ** 2).sum())
            - d * s2 - d * math.log(2 * math.pi) + 0.5 * d * math.log(2 * math.pi * math.e * s2)
        )

    def log_marginal(self) -> Tensor:
        """Exact :math:`\\log p(x) = \\log \\mathcal{N}(x; \\mu, 2I)`."""
        return Normal(self.params["mu"], math.sqrt(2.0)).log_prob(self.x).sum()


@register_problem("linear-gaussian-vae")
def linear_gaussian_vae(*, d: int = 20, perturbation: float = 0.01, seed: int = 0):
    """Linear-Gaussian VAE of Rainforth et al. 2018 (D=20); ELBO gradient closed form, IWAE-K by oracle."""
    return LinearGaussianVAE(d, perturbation, seed)
