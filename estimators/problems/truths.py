r"""How a problem knows its true gradient: closed form or enumeration (:func:`autograd_truth`),
or a labelled oracle with its standard error (:func:`oracle_truth`), cached on disk.

* closed-form: the expectation (or ELBO) has a closed form; its gradient is taken by autograd
  of that formula, at the base parameters.
* enumeration: a discrete distribution with ``enumerate_support``; the expectation is the exact
  finite sum :math:`\sum_x q_\phi(x) f(x)`, differentiated by autograd.
* oracle: the mean of many independent estimates (``oracle_samples`` cost evaluations in all)
  from an unbiased estimator, with its standard error, at a seed fixed by the problem's spec.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import Tensor

from ..base import Params, Problem, Truth
from ..engine import replicate_estimates, torch_threads
from ..io import cache_dir, compute_once
from .. import provenance
from ..registry import get_estimator

ORACLE_SAMPLES = 2**20


def _leaves(params: Params) -> dict[str, Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def autograd_truth(fn: Callable[[dict[str, Tensor]], Tensor], params: Params, kind: str) -> Truth:
    """``kind`` truth: the gradient of ``fn(params)`` (a closed form or an exact sum) by autograd."""
    leaves = _leaves(params)
    value = fn(leaves)
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return Truth(
        {k: (torch.zeros_like(v) if g is None else g.detach()) for (k, v), g in zip(leaves.items(), grads)},
        kind,
    )


ORACLE_BLOCK_ELEMENTS = 2**24   # estimates held in memory at once by an oracle (64 MB in float32)


def oracle_truth(problem: Problem, estimator_name: str, n: int, samples: int = ORACLE_SAMPLES) -> Truth:
    """Mean and standard error of ``max(256, samples // n)`` independent ``n``-sample estimates.

    Uses the measurement engine at seeds derived from the problem's spec (not the user's seed),
    in blocks of at most :data:`ORACLE_BLOCK_ELEMENTS` numbers, accumulating the sum and the sum
    of squares in float64, so memory does not grow with the number of estimates. Problems built
    by :func:`~gradnoise.registry.make_problem` are deterministic functions of their spec, so
    their oracles are cached on disk (``$GRADNOISE_CACHE/oracles``, default
    ``~/.cache/gradnoise/oracles``), keyed by spec, estimator, n, samples, parameter values and
    :func:`~gradnoise.provenance.code_version` (a change of the code computes them anew) and,
    for a problem registered from outside the package, its
    :func:`~gradnoise.provenance.fingerprint` (an edit of its cost computes them anew; a part
    that cannot be hashed means no disk cache), and
    computed once among processes sharing the cache (:func:`gradnoise.io.compute_once`). An
    oracle is computed at one intra-op thread, so that it does not depend on the thread count
    of the process that happened to compute it.
    """
    replicates = max(256, samples // n)
    part = provenance.part_fingerprint(problem, f"problem {problem.spec}")
    if not getattr(problem, "cacheable_truth", False) or (part is not None and part.digest is None):
        return _oracle(problem, estimator_name, n, replicates)
    key = hashlib.blake2b(digest_size=16)
    key.update(f"{problem.spec}|{estimator_name}|{n}|{replicates}|{provenance.code_version()}".encode())
    if part is not None:                 # a problem from outside the package: its code too
        key.update(f"|problem {part.digest}".encode())
    for name, value in sorted(problem.params.items()):
        key.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())

    def compute() -> dict:
        truth = _oracle(problem, estimator_name, n, replicates)
        return {"values": {k: v.cpu() for k, v in truth.values.items()},
                "se": {k: v.cpu() for k, v in truth.se.items()}}

    saved = compute_once(cache_dir("oracles") / f"{key.hexdigest()}.pt", compute)
    device = next(iter(problem.params.values())).device
    return Truth({k: v.to(device) for k, v in saved["values"].items()}, "oracle",
                 {k: v.to(device) for k, v in saved["se"].items()})


def _oracle(problem: Problem, estimator_name: str, n: int, replicates: int) -> Truth:
    """Mean and standard error of ``replicates`` estimates, in blocks, at one intra-op thread."""
    estimator = get_estimator(estimator_name)
    block = max(2, min(replicates, ORACLE_BLOCK_ELEMENTS // max(1, problem.param_numel())))
    total: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    done = 0
    with torch_threads(1):
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
