r"""Bring your own problem: :class:`ExpectationProblem` takes any ``torch.distributions`` family
built from a dict of parameter tensors plus a cost; :class:`ModelProblem` takes an encoder and a
log joint; :class:`StoppedScoreTerm` wraps a model problem into the form the ARM and DisARM
papers write the encoder gradient in. Truths come from :mod:`gradnoise.problems.truths`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..base import Objective, Params, Problem, Truth, evaluate_cost
from .truths import ORACLE_SAMPLES, autograd_truth, oracle_truth


def _oracle_estimator(problem: Problem) -> str:
    """``reparam`` where it is valid (rsample and a cost with a usable sample gradient), else
    ``reinforce-loo``: an oracle is never computed from an all-zero pathwise gradient."""
    usable = problem.has_rsample() and problem.sample_gradient_reason() is None
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
    :meth:`~gradnoise.base.Problem.sample_gradient_reason`) or ``reinforce-loo``.
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

    def exact_objective(self, params, objective=Objective()):
        r""":math:`\mathbb{E}_{q}[f]` at ``params``: ``expected_cost`` (closed form) where given, else the
        exact sum :math:`\sum_x q(x) f(x)` over ``enumerate_support``; None otherwise."""
        if objective.canonical() != Objective():
            return None
        with torch.no_grad():
            if self.expected_cost is not None:
                return self.expected_cost(dict(params)), "closed-form"
            dist = self.distribution(params)
            if not dist.has_enumerate_support:
                return None
            support = dist.enumerate_support(expand=False)
            return (dist.log_prob(support).exp() * evaluate_cost(self, support, params)).sum(), "enumeration"

    def _compute_truth(self) -> Truth:
        if self.expected_cost is not None:
            return autograd_truth(self.expected_cost, self.params, "closed-form")
        dist = self.distribution(self.params)
        if dist.has_enumerate_support:
            def exact(leaves):
                d = self.distribution(leaves)
                support = d.enumerate_support(expand=False)
                return (d.log_prob(support).exp() * evaluate_cost(self, support, leaves)).sum()

            return autograd_truth(exact, self.params, "enumeration")
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

    def exact_objective(self, params, objective=Objective()):
        """The ELBO at ``params`` by ``elbo`` (closed form) where given; None otherwise (and for IWAE-K)."""
        if objective.canonical() != Objective() or self.elbo is None:
            return None
        with torch.no_grad():
            return self.elbo(dict(params)), "closed-form"

    def true_gradient(self, objective=Objective()):
        objective = objective.canonical()
        if objective not in self._truths:
            if objective == Objective() and self.elbo is not None:
                truth = autograd_truth(self.elbo, self.params, "closed-form")
            elif objective == Objective():
                truth = oracle_truth(self, _oracle_estimator(self), 1000, self.oracle_samples)
            elif objective.kind == "iwae":
                truth = oracle_truth(self, "iwae-dreg", objective.k, self.oracle_samples)
            else:
                raise ValueError(f"problem {self.spec!r} has no objective {objective}")
            self._truths[objective] = truth
        return self._truths[objective]


class StoppedScoreTerm(Problem):
    r"""A model problem with the encoder's parameters stopped inside :math:`\log q` in the cost.

    .. math:: \bar f_\phi(z) = \log p_\theta(x, z) - \log q_{\mathrm{sg}(\phi)}(z\mid x).

    :math:`\mathbb{E}_q[\nabla_\phi \bar f] = \mathbb{E}_q[\nabla_\phi f] + \mathbb{E}_q[\nabla_\phi
    \log q_\phi(z)]` and the last term is zero, so the ELBO gradient (the truth, taken from the
    wrapped problem) is unchanged, and every estimator that uses the cost as a number plus its
    direct gradient (``reinforce*``, ``arm``, ``disarm``) stays unbiased for it, without the
    zero-mean term :math:`-\nabla_\phi\log q_\phi(z)` at fixed :math:`z`. That is the form in
    which Yin & Zhou (2019) and Dong et al. (2020) write the encoder gradient (learning signal
    times the gradient of the logits only). Only the ELBO: for the IWAE bound with K > 1 the
    dropped term has a non-zero mean (cf. ``iwae-stl``), so other objectives are refused.
    ``spec`` is the wrapped problem's with ``score_term=stopped`` appended.
    """

    is_model = True

    def __init__(self, problem: Problem):
        if not problem.is_model:
            raise ValueError(f"StoppedScoreTerm needs a model problem; {problem.spec!r} is a plain expectation")
        self.problem, self.params, self.groups = problem, problem.params, problem.groups
        self.spec = f"{problem.spec}{',' if ':' in problem.spec else ':'}score_term=stopped"

    def distribution(self, params):
        return self.problem.distribution(params)

    def log_joint(self, z, params):
        return self.problem.log_joint(z, params)

    def cost(self, z, params):
        frozen = {k: v.detach() for k, v in params.items()}
        return self.problem.log_joint(z, params) - self.problem.distribution(frozen).log_prob(z)

    def exact_objective(self, params, objective=Objective()):
        """The wrapped problem's (stopping the score term changes no value)."""
        return self.problem.exact_objective(params, objective)

    def true_gradient(self, objective=Objective()):
        if objective.canonical() != Objective():
            raise ValueError(f"problem {self.spec!r} has only the ELBO objective (the stopped score "
                             f"term has a non-zero mean under {objective})")
        return self.problem.true_gradient()
