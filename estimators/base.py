r"""The one contract every gradient estimator and every problem follows.

What is estimated
-----------------
For a distribution :math:`q_\phi(x)` and a cost :math:`f_\phi(x)` a *problem* asks for

.. math::  g(\phi) = \nabla_\phi\, \mathbb{E}_{q_\phi(x)}\big[f_\phi(x)\big].

(For model problems -- a log joint and an encoder -- ``f`` is the ELBO integrand
:math:`\log p_\theta(x, z) - \log q_\phi(z\mid x)` and :math:`\phi` holds both generative and
encoder parameters.)

The estimator contract
----------------------
An estimator is a :class:`GradientEstimator`. Its one method that does maths is
``estimate(problem, params, n, state)``:

* ``params`` maps each parameter name to a *replicated leaf*: a tensor of shape
  ``(R, *param_shape)`` with ``requires_grad=True`` whose row ``r`` is an independent copy of the
  parameter for replicate ``r``. ``problem.distribution(params)`` therefore has batch shape
  ``(R,)`` and samples have shape ``(n, R, *event_shape)`` (torch's rule: sample axis first).
* it returns a ``dict`` with the same keys mapping to tensors of shape ``(R, *param_shape)``:
  row ``r`` is one ``n``-sample estimate of :math:`g(\phi)`.

Because replicate ``r``'s surrogate loss depends only on row ``r`` of each leaf, one backward
pass through the sum of surrogates yields all ``R`` independent estimates at once. This is the
same computation as ``torch.func.vmap(torch.func.grad(...))`` over replicates, written with
batched parameters because ``torch.distributions`` sampling and argument validation do not run
under ``vmap``. The measurement engine (:mod:`gradnoise.engine`) builds the leaves, seeds the
random stream and turns estimates into statistics; no estimator computes a mean or a variance.

Capabilities are declared and checked: ``pathwise`` estimators need ``has_rsample`` and a cost
whose gradient in the sample is usable (:meth:`Problem.sample_gradient_reason`), ``needs_model``
estimators need a problem with a log joint and an encoder, and ``min_budget`` bounds ``n`` from
below. :meth:`GradientEstimator.check` raises a clear error otherwise, after
:meth:`Problem.validate` has checked once that the parameters are finite and the cost returns one
finite value per sample.
"""
from __future__ import annotations

import abc
import contextlib
import copy
import functools
import hashlib
import math
import numbers
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution

Params = Mapping[str, Tensor]
Grads = dict[str, Tensor]

TRUTH_KINDS = ("closed-form", "enumeration", "oracle")

#: bytes a block holds per sample-sized element (samples, costs, scores and the graph kept for the
#: backward pass), :meth:`GradientEstimator.sample_bytes`' default: at most 22-35 measured (two
#: runs) over every estimator but RELAX, REBAR and Gumbel-Rao (which declare their own) on the default sweep's
#: problems (peak RSS of each cell's blocks at R = 10^4, N = 1 to 100, cells of 32 MiB or more:
#: ``python benchmarks/scripts/block_memory.py``); 38-60 per element of one-replicate chunks
#: measured before blocks existed (bernoulli-toy x reinforce-delta the most)
BYTES_PER_SAMPLE_ELEMENT = 64


class EstimatorNotApplicable(ValueError):
    """An estimator cannot run on a problem (e.g. pathwise on a distribution without rsample)."""


class NonFiniteCostError(FloatingPointError):
    """The cost (or the estimate) returned NaN or inf."""


@dataclass(frozen=True)
class Objective:
    """Which expectation an estimator's mean targets.

    ``kind="expectation"``: :math:`\\mathbb{E}_{q}[f]` (the ELBO on model problems).
    ``kind="iwae"`` with ``k``: the K-sample importance-weighted bound
    :math:`\\mathbb{E}[\\log \\frac1K \\sum_k w_k]` (Burda et al. 2016); K=1 is the ELBO.
    """

    kind: str = "expectation"
    k: int = 1

    def canonical(self) -> "Objective":
        return Objective() if self.kind == "iwae" and self.k == 1 else self


@dataclass
class Estimate:
    """What one call of an estimator gives: ``grads`` (``{name: (R, *param_shape)}``, row ``r`` one
    ``n``-sample estimate) and ``state``, the estimator's state after it (per-replicate tensors with
    a leading ``R`` dimension, or None). A stateless estimator's ``estimate`` may return the dict
    alone; :func:`as_estimate` reads both."""

    grads: "Grads"
    state: Any = None
    #: anything the estimator's :meth:`~GradientEstimator.adapt` needs from this estimate (e.g. the
    #: gradient of its variance with respect to its control parameters); never measured
    aux: Any = None


def as_estimate(result: "Estimate | Grads", state: Any) -> Estimate:
    """``result`` as an :class:`Estimate`: a bare dict of gradients leaves ``state`` unchanged."""
    return result if isinstance(result, Estimate) else Estimate(result, state)


@dataclass(frozen=True)
class Truth:
    """The true gradient of one objective, labelled with how it is known.

    ``values`` and ``se`` map parameter names to tensors of the parameter's shape; ``se`` is the
    standard error of an oracle (zeros for closed-form and enumeration truths).
    """

    values: dict[str, Tensor]
    kind: str
    se: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in TRUTH_KINDS:
            raise ValueError(f"truth kind must be one of {TRUTH_KINDS}, got {self.kind!r}")
        for name, value in self.values.items():
            self.se.setdefault(name, torch.zeros_like(value))
            if not (all_finite(value) and all_finite(self.se[name])):
                raise NonFiniteCostError(f"the {self.kind} true gradient of {name!r} is NaN or inf")


def replicate(params: Params, leading: tuple[int, ...]) -> dict[str, Tensor]:
    """Fresh leaves of shape ``leading + p.shape`` (copies of ``p``) that require grad."""
    return {
        name: p.detach().expand(*leading, *p.shape).clone().requires_grad_(True)
        for name, p in params.items()
    }


def grad_of(surrogate: Tensor, params: Params, *, retain_graph: bool = False, create_graph: bool = False) -> Grads:
    """Gradient of ``surrogate.sum()`` w.r.t. each leaf, zeros for leaves it does not use.

    With replicated leaves and a surrogate of shape ``(R,)`` whose entry ``r`` depends only on
    row ``r`` of each leaf, row ``r`` of the result is :math:`\\nabla_{\\phi_r}` surrogate[r].
    ``create_graph=True`` keeps the gradient differentiable (an adaptive estimator minimising its
    own variance differentiates through its estimate).
    """
    names = list(params)
    if not surrogate.requires_grad:
        return {n: torch.zeros_like(params[n]) for n in names}
    grads = torch.autograd.grad(
        surrogate.sum(), [params[n] for n in names], retain_graph=retain_graph or create_graph,
        create_graph=create_graph, allow_unused=True,
    )
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)}


def base_distribution(dist: Distribution) -> Distribution:
    """The distribution under any ``Independent`` wrappers (its parameters carry the event dims)."""
    while isinstance(dist, torch.distributions.Independent):
        dist = dist.base_dist
    return dist


def sample_detached(dist: Distribution, shape: tuple[int, ...] = ()) -> Tensor:
    r"""``dist.sample(shape)``: a draw without a gradient path, of shape ``shape + batch + event``.

    For a ``Normal`` (or ``Independent`` of one) it is ``rsample`` under ``no_grad``, the same
    numbers bitwise (both draw :math:`\varepsilon \sim N(0, 1)` into a fresh tensor, then
    :math:`\varepsilon\sigma + \mu`; ``tests/test_engine.py`` checks it), without ``torch.normal``'s
    check that every entry of the scale *expanded to the sample shape* is >= 0: two ``min``
    passes over the samples, 7% of a score-function cell (the scale was validated once, by
    :meth:`Problem.validate`).
    """
    with torch.no_grad():
        return dist.rsample(shape) if type(base_distribution(dist)) is torch.distributions.Normal else dist.sample(shape)


def all_finite(t: Tensor) -> bool:
    """True when no entry is NaN or inf (one reduction first; the elementwise check only if needed)."""
    with torch.no_grad():
        return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


@contextlib.contextmanager
def forked_stream(seed: int, device: torch.device | str = "cpu"):
    """Run the block on torch's generator for ``device`` seeded with ``seed``, inside
    ``torch.random.fork_rng`` so that the caller's stream is untouched afterwards: the one place
    a random stream is forked and seeded (the engine's blocks, the problems' probes, the delta
    method's common random numbers). On the CPU only the CPU generator is seeded:
    ``torch.manual_seed`` also queues a lazy seeding of every CUDA device, recording a traceback
    each time (0.45 ms a cell, half a small cell's time)."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if devices:
            torch.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        yield


#: samples drawn by the one-off probes of :meth:`Problem.validate` and :meth:`Problem.sample_gradient_reason`
PROBE_SAMPLES = 16


def evaluate_cost(problem: "Problem", x: Tensor, params: Params) -> Tensor:
    """``problem.cost(x, params)``, refusing NaN and inf with a :class:`NonFiniteCostError`."""
    f = problem.cost(x, params)
    if not all_finite(f):
        raise NonFiniteCostError(f"the cost of problem {problem.spec!r} returned NaN or inf")
    return f


class Problem(abc.ABC):
    """A distribution :math:`q_\\phi`, a cost :math:`f_\\phi` and the true gradient.

    Subclasses set ``spec`` (the canonical name with options, e.g. ``gaussian-cos:k=2,...``),
    ``params`` (base parameter values, unreplicated) and implement :meth:`distribution`,
    :meth:`cost` and :meth:`true_gradient`.

    Shapes: ``distribution(params)`` for params of shape ``L + p.shape`` (``L`` the leading
    replicate dims) has batch shape ``L``; ``cost(x, params)`` maps ``x`` of shape
    ``S + L + event_shape`` to ``S + L``.
    """

    spec: str
    #: attributes that are caches of derived values, left out of a user problem's fingerprint
    #: (:func:`gradnoise.provenance.fingerprint`)
    fingerprint_exclude = frozenset({"_validated", "_sample_gradient_reason", "_event_numel", "_has_rsample",
                                     "_truths", "cacheable_truth", "fingerprint_factory", "_points", "_base"})
    #: caches of values derived from the parameters, computed anew at another point (:meth:`at`)
    _point_caches = ("_validated", "_sample_gradient_reason", "_truths", "_points")
    params: dict[str, Tensor]
    #: named groups of parameters summarised together (e.g. ``{"encoder": [...], "decoder": [...]}``)
    groups: dict[str, list[str]] = {}
    is_model: bool = False
    #: oracle truths may be cached on disk, keyed by spec (set for registered problems only)
    cacheable_truth: bool = False

    @abc.abstractmethod
    def distribution(self, params: Params) -> Distribution: ...

    @abc.abstractmethod
    def cost(self, x: Tensor, params: Params) -> Tensor: ...

    @abc.abstractmethod
    def true_gradient(self, objective: Objective = Objective()) -> Truth: ...

    def exact_objective(self, params: Params, objective: Objective = Objective()) -> "tuple[Tensor, str] | None":
        r"""The objective itself (not its gradient) at ``params`` (unreplicated, the shapes of
        :attr:`params`), where it is known exactly: :math:`\mathbb{E}_{q_\phi}[f_\phi]` (the ELBO
        on model problems; ``objective`` its IWAE-K bound) as a 0-dim tensor and how it is known
        (``"closed-form"`` or ``"enumeration"``), or None where it is not (a training run then
        estimates it: :func:`gradnoise.training.objective_estimate`). Default: None."""
        return None

    @property
    def name(self) -> str:
        return self.spec.split(":", 1)[0]

    def at(self, params: Params) -> "Problem":
        """This problem at another parameter point: the same distribution family, cost and truth
        method, with ``params`` (same names and shapes) instead of :attr:`params`.

        Its ``spec`` is this one's with ``@`` and 12 hex digits of a hash of the parameter values
        (so its cells have their own random streams and rows, and never pass for the base
        point's), its truths are its own (an oracle's disk cache is keyed by the values), and it
        is validated at the new point (:meth:`validate`: finite parameters, a cost of the right
        shape) before it is returned. Points are cached by that hash: the same values give the
        same object, and truths computed there are reused. Raises ``ValueError`` naming the
        parameter for another name, shape or a non-tensor.
        """
        base = self.__dict__.get("_base", self)
        if set(params) != set(base.params):
            raise ValueError(f"problem {base.spec!r}: parameters {sorted(params)} given at a point, but it has "
                             f"{sorted(base.params)}")
        moved = {}
        for name, value in params.items():
            like = base.params[name]
            if not isinstance(value, Tensor):
                value = torch.as_tensor(value, dtype=like.dtype)
            if tuple(value.shape) != tuple(like.shape):
                raise ValueError(f"problem {base.spec!r}: parameter {name!r} has shape {tuple(like.shape)}, "
                                 f"got {tuple(value.shape)} at a point")
            moved[name] = value.detach().to(dtype=like.dtype, device=like.device)
        key = hashlib.blake2b(digest_size=6)
        for name in sorted(moved):
            key.update(name.encode() + b"\0" + moved[name].cpu().contiguous().numpy().tobytes())
        points = base.__dict__.setdefault("_points", {})
        if key.hexdigest() not in points:
            point = copy.copy(base)
            for cache in self._point_caches:
                point.__dict__.pop(cache, None)
            if "_truths" in base.__dict__:
                point._truths = {}
            point.params, point._base = moved, base
            point.spec = f"{base.spec}@{key.hexdigest()}"
            point.validate()
            points[key.hexdigest()] = point
        return points[key.hexdigest()]

    def validate(self) -> None:
        """Check once that the problem can give finite numbers of the right shape; raise otherwise.

        Every parameter must be a finite tensor, and on a probe of :data:`PROBE_SAMPLES` samples
        from two replicates of the parameters (seeded, the caller's random stream untouched) the
        cost must return a finite tensor of shape ``(samples, 2)``: one value per sample and
        replicate, the event dimensions reduced. Raises ``ValueError`` (``TypeError`` for a cost
        that returns no tensor) or :class:`NonFiniteCostError` naming the problem.
        """
        if self.__dict__.get("_validated"):
            return
        for name, value in self.params.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"problem {self.spec!r}: parameter {name!r} must be a torch tensor, "
                                f"got {type(value).__name__}")
            if not all_finite(value):
                raise ValueError(f"problem {self.spec!r}: parameter {name!r} is not finite: {value.tolist()}")
        with forked_stream(0, next(iter(self.params.values())).device), torch.no_grad():
            params = {k: v.detach().expand(2, *v.shape) for k, v in self.params.items()}
            x = self.distribution(params).sample((PROBE_SAMPLES,))
            f = self.cost(x, params)
        if not isinstance(f, Tensor):
            raise TypeError(f"problem {self.spec!r}: the cost must return a torch tensor, got {type(f).__name__}")
        if tuple(f.shape) != (PROBE_SAMPLES, 2):
            raise ValueError(
                f"problem {self.spec!r}: the cost must return one value per sample, shape "
                f"sample_shape + batch_shape = {(PROBE_SAMPLES, 2)} for samples of shape {tuple(x.shape)}, "
                f"but returned shape {tuple(f.shape)} (reduce the event dimensions only, e.g. .sum(-1), "
                f"not .sum())"
            )
        if not all_finite(f):
            raise NonFiniteCostError(f"the cost of problem {self.spec!r} returned NaN or inf")
        self._validated = True

    def sample_gradient_reason(self) -> str | None:
        r"""Why a pathwise estimator would be wrong here, or None when the cost's gradient is usable.

        The pathwise estimator uses :math:`\nabla_x f(x)`. Probed once on :data:`PROBE_SAMPLES`
        samples (seeded): a cost with no autograd path to ``x`` (``.detach()``, numpy, a cast)
        gives no gradient, and a step function (``torch.round``, ``floor``, comparisons) gives
        zero at every sample although :math:`\mathbb{E}[f]` varies; either way the pathwise
        estimate would be exactly zero, which is wrong.
        """
        if "_sample_gradient_reason" not in self.__dict__:
            with forked_stream(0, next(iter(self.params.values())).device):
                params = {k: v.detach().unsqueeze(0) for k, v in self.params.items()}
                with torch.no_grad():
                    x = self.distribution(params).sample((PROBE_SAMPLES,))
                x.requires_grad_(True)
                with torch.enable_grad():
                    f = self.cost(x, params)
                    if not (isinstance(f, Tensor) and f.requires_grad):
                        reason = "the cost has no autograd path to the sample (.detach(), numpy or a cast inside it?)"
                    else:
                        (g,) = torch.autograd.grad(f.sum(), x, allow_unused=True)
                        reason = (None if g is not None and bool((g != 0).any()) else
                                  f"the cost's gradient with respect to the sample is zero at all "
                                  f"{PROBE_SAMPLES} probe samples (a step function such as torch.round?)")
            self._sample_gradient_reason = reason
        return self._sample_gradient_reason

    def event_numel(self) -> int:
        """Number of elements of one sample (used to size memory chunks); computed once per problem
        (building the distribution costs 10 us, a small cell's 3%)."""
        if "_event_numel" not in self.__dict__:
            self._event_numel = max(1, math.prod(self.distribution(self.params).event_shape))
        return self._event_numel

    def has_rsample(self) -> bool:
        """Whether :meth:`distribution` has a reparameterised sampler; computed once per problem."""
        if "_has_rsample" not in self.__dict__:
            self._has_rsample = bool(self.distribution(self.params).has_rsample)
        return self._has_rsample

    def param_numel(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def to(self, device: str | torch.device) -> "Problem":
        """Move every tensor the problem uses to ``device``, in place; returns self.

        Tensors are found in its attributes and, through them, in dicts, lists and tuples, in
        problems it wraps, and in the functions it holds: their closures and default arguments (a
        user's cost ``lambda x: (x - t) ** 2`` capturing a tensor ``t``), ``functools.partial``
        arguments, bound methods' objects, and functions those capture in turn. A tensor left
        behind would make the first mixed-device operation fail on a GPU. Closures and defaults
        are changed in place (a function shared with another problem moves for it too); a
        tensor already on ``device`` is kept, so moving to the CPU, as :func:`gradnoise.engine.cells`
        does by default, replaces nothing. Not reached: module globals a function reads, and
        ``fingerprint_factory`` (the factory that built the problem is not its to change).
        """
        _move_problem(self, torch.device(device), {})
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


def _move_problem(problem: Problem, device: torch.device, memo: dict) -> None:
    """:meth:`Problem.to`'s work: each attribute (and what it holds) moved by :func:`_moved`."""
    memo[id(problem)] = (problem, problem)     # a function capturing the problem stops here
    for attr, value in list(vars(problem).items()):
        if attr != "fingerprint_factory":
            moved = _moved(value, device, memo)
            if moved is not value:
                setattr(problem, attr, moved)


def _moved(value: Any, device: torch.device, memo: dict) -> Any:
    """``value`` with every tensor in it on ``device``: a tensor moved, a dict, list or tuple
    rebuilt when something in it moved (else itself), a function, partial, bound method or
    problem changed in place; anything else is returned as is. ``memo`` maps ``id`` of each
    object seen to ``(object, result)`` (holding the object keeps its id unique): a tensor shared
    by two holders becomes one moved tensor, and a cycle (a closure capturing its problem) ends."""
    if id(value) in memo:
        return memo[id(value)][1]
    if isinstance(value, Tensor):
        moved = value.to(device)
    elif isinstance(value, Problem):
        _move_problem(value, device, memo)
        return value
    elif type(value) in (list, tuple):
        items = [_moved(v, device, memo) for v in value]
        moved = value if all(a is b for a, b in zip(items, value)) else type(value)(items)
    elif type(value) is dict:
        items = {k: _moved(v, device, memo) for k, v in value.items()}
        moved = value if all(items[k] is v for k, v in value.items()) else items
    elif isinstance(value, types.FunctionType):
        memo[id(value)] = (value, value)
        for cell in value.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:          # a cell not yet filled (a name assigned later)
                continue
            new = _moved(contents, device, memo)
            if new is not contents:
                cell.cell_contents = new
        for attr in ("__defaults__", "__kwdefaults__"):
            old = getattr(value, attr)
            new = _moved(old, device, memo)
            if new is not old:
                setattr(value, attr, new)
        return value
    elif isinstance(value, functools.partial):
        memo[id(value)] = (value, value)
        parts = (value.func, value.args, value.keywords)
        new = tuple(_moved(part, device, memo) for part in parts)
        if any(a is not b for a, b in zip(new, parts)):
            value.__setstate__((*new, value.__dict__ or None))
        return value
    elif isinstance(value, types.MethodType):
        memo[id(value)] = (value, value)
        _moved(value.__func__, device, memo)
        _moved(value.__self__, device, memo)
        return value
    else:
        return value
    memo[id(value)] = (value, moved)
    return moved


class GradientEstimator(abc.ABC):
    """Base class of every estimator; see the module docstring for the contract.

    Class attributes declare capabilities: ``unbiased`` (for the objective it targets),
    ``pathwise`` (needs ``rsample``), ``needs_model`` (needs a log joint and an encoder),
    ``min_budget`` (smallest valid ``n``).
    """

    name: str = ""
    fingerprint_exclude = frozenset({"fingerprint_factory"})
    unbiased: bool = True
    pathwise: bool = False
    needs_model: bool = False
    min_budget: int = 1
    #: True when ``prepare`` is a one-off warm-up that real use amortises over training (an EMA
    #: baseline's); the engine then leaves its time out of ``seconds_per_estimate``.
    amortised_prepare: bool = False
    #: True when ``init`` is per-estimate work at the current parameters that :meth:`cost_evals`
    #: counts in every estimate (a pilot batch, a Taylor expansion point): a training loop
    #: (:func:`gradnoise.training.train`) calls it before every step. False: ``init`` runs once
    #: and its state is carried from step to step (an EMA baseline, adaptive control parameters).
    init_each_step: bool = False

    def unbiased_at(self, n: int) -> bool:
        """Whether the mean at budget ``n`` equals the true gradient of :meth:`objective`."""
        return self.unbiased

    def objective(self, n: int) -> Objective:
        """The objective whose gradient the mean of this estimator is (or approximates)."""
        return Objective()

    def cost_evals(self, n: int) -> int:
        """Cost-function evaluations spent on one ``n``-sample estimate."""
        return n

    def cost_evals_for(self, problem: Problem, n: int) -> int:
        """Cost-function evaluations spent on one ``n``-sample estimate on ``problem``.

        Defaults to :meth:`cost_evals`; estimators whose cost depends on the problem's size (the
        measure-valued gradient evaluates the cost twice per sample per coordinate) override it.
        """
        return self.cost_evals(n)

    def amortised_evals(self, n: int) -> int:
        """Cost evaluations per replicate that ``prepare`` spends and :meth:`cost_evals` leaves out
        (a warm-up that real use amortises); the engine's bound on a cell counts them. Default 0."""
        return 0

    def largest_batch(self, n: int) -> int:
        """The most samples per replicate one pass holds at once: ``n``, or a larger pilot batch
        drawn in ``prepare``; the engine sizes its chunks and its memory check by it. Default ``n``."""
        return n

    def sample_bytes(self, problem: Problem, n: int) -> int:
        """Bytes one block holds at once per sample-sized element (``block x B x (E + P)`` of
        them, B :meth:`largest_batch`): an upper bound that the engine's memory check
        (:func:`gradnoise.engine.check_memory`) and the local workers' scheduling
        (:class:`gradnoise.pool.LocalPool`) use; never the block's size (which would change the
        numbers). Default :data:`BYTES_PER_SAMPLE_ELEMENT`; an estimator whose per-sample work is
        wider than its samples (a control-variate network, K Gumbel draws per sample) declares
        more, as ``benchmarks/scripts/block_memory.py`` measures it."""
        return BYTES_PER_SAMPLE_ELEMENT

    def check(self, problem: Problem, n: int) -> None:
        """Raise a clear error if this estimator cannot run on ``problem`` at budget ``n``."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise ValueError(
                f"estimator {self.name!r} needs an integer budget N >= {self.min_budget}, got {n!r}"
            )
        if n < self.min_budget:     # declared not applicable: grids skip the cell with this reason
            raise EstimatorNotApplicable(f"estimator {self.name!r} needs an integer budget N >= {self.min_budget}, got {n!r}")
        problem.validate()
        if self.needs_model and not problem.is_model:
            raise EstimatorNotApplicable(
                f"estimator {self.name!r} needs a model problem (a log joint and an encoder); "
                f"{problem.spec!r} is a plain expectation"
            )
        if self.pathwise:
            if not problem.has_rsample():
                family = type(problem.distribution(problem.params)).__name__
                raise EstimatorNotApplicable(
                    f"estimator {self.name!r} is pathwise and needs rsample, but the distribution "
                    f"{family} of problem {problem.spec!r} has no rsample "
                    f"(has_rsample=False); use a score-function estimator such as 'reinforce'"
                )
            reason = problem.sample_gradient_reason()
            if reason is not None:
                raise EstimatorNotApplicable(
                    f"estimator {self.name!r} is pathwise and needs the gradient of the cost with respect "
                    f"to the sample, but for problem {problem.spec!r} {reason}; use a score-function "
                    f"estimator such as 'reinforce'"
                )

    # -- state in, state out (optax's ``init`` / ``update``, within torch) ---------------------------
    def init(self, problem: Problem, params: Params, n: int) -> Any:
        """The state before the first estimate at ``params`` (replicated leaves): per-replicate
        tensors with a leading ``R`` dimension (a baseline's first value, a pilot's coefficients,
        an adaptive estimator's control parameters), or None. Any random draw it makes comes from
        the engine's stream for the replicates' block. Default: :meth:`prepare` (the older name)."""
        return self.prepare(problem, params, n)

    def prepare(self, problem: Problem, params: Params, n: int) -> Any:
        """The older name of :meth:`init`, kept for estimators written against it; default None."""
        return None

    def warmup_steps(self, n: int) -> int:
        """Steps (:meth:`step`) run at a frozen point after :meth:`init` and before the estimate
        that is measured: the EMA baseline's warm-up, an adaptive estimator's. Default 0."""
        return 0

    @abc.abstractmethod
    def estimate(self, problem: Problem, params: Params, n: int, state: Any) -> "Estimate | Grads":
        """``R`` independent ``n``-sample estimates, each of shape ``(R, *param_shape)``, and the
        state after them: an :class:`Estimate`, or the dict of estimates alone where the state
        does not change."""

    def adapt(self, problem: Problem, params: Params, n: int, estimate: Estimate) -> Any:
        """An adaptive estimator's hook: the new state after ``estimate`` (its control parameters
        moved, e.g. down the gradient of its single-sample variance, taken with
        ``grad_of(..., create_graph=True)``). Default: ``estimate.state`` unchanged."""
        return estimate.state

    def step(self, problem: Problem, params: Params, n: int, state: Any) -> Estimate:
        """One estimate and the adapted state after it: what a training step and a warm-up step
        call (:meth:`estimate`, then :meth:`adapt`)."""
        est = as_estimate(self.estimate(problem, params, n, state), state)
        return Estimate(est.grads, self.adapt(problem, params, n, est))

    def frozen(self, problem: Problem, params: Params, n: int) -> Estimate:
        """The estimate measured at a frozen point: :meth:`init`, :meth:`warmup_steps` steps, then
        one :meth:`estimate` (its state returned, not adapted)."""
        state = self.init(problem, params, n)
        for _ in range(self.warmup_steps(n)):
            state = self.step(problem, params, n, state).state
        return as_estimate(self.estimate(problem, params, n, state), state)

    def __call__(self, problem: Problem, params: Params, n: int) -> Grads:
        """Check, then the frozen-point estimate (:meth:`frozen`): replicated leaves in, estimates out."""
        self.check(problem, n)
        return self.frozen(problem, params, n).grads

    def __repr__(self) -> str:
        return f"<estimator {self.name}>"


EstimatorFactory = Callable[..., GradientEstimator]
