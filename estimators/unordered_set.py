r"""The unordered-set estimator with its built-in baseline (Kool, van Hoof & Welling 2020).

For one categorical latent :math:`x \sim p_\theta` over :math:`K` classes (``Categorical`` or
``OneHotCategorical``, logits :math:`\theta(\phi)` of shape ``(R, K)``), the budget ``n`` = k
distinct classes :math:`S = \{s_1..s_k\}` are drawn without replacement by Gumbel-top-k (the k
largest of :math:`\theta_j + G_j`, :math:`G_j` standard Gumbel: the ordered sample of sampling
without replacement). With :math:`p^{D\setminus A}` the distribution renormalised on the classes
outside :math:`A` and :math:`p(S)` the probability of the unordered set (the sum over its
:math:`k!` orders of :math:`\prod_i p(s_i)/(1 - \sum_{j<i} p(s_j))`),

.. math::
    R(S, s) = \frac{p^{D\setminus\{s\}}(S\setminus\{s\})}{p(S)}, \qquad
    R^{D\setminus\{s\}}(S, s') = \frac{p^{D\setminus\{s,s'\}}(S\setminus\{s,s'\})}
                                      {p^{D\setminus\{s\}}(S\setminus\{s\})}\ (s' \ne s),\quad
    R^{D\setminus\{s\}}(S, s) = 1,

    \hat g = \sum_{s\in S} \nabla_\phi p_\theta(s)\, R(S, s)\Big[f(s) - \sum_{s'\in S}
             p_\theta(s')\, R^{D\setminus\{s\}}(S, s') f(s')\Big]
             + \sum_{s\in S} p_\theta(s) R(S,s)\,\nabla_\phi f_\phi(s).

Unbiased: :math:`p(S)R(S,s)p(s)` is the probability of drawing :math:`s` first and then
:math:`S\setminus\{s\}`, so :math:`\mathbb{E}_S[\sum_{s\in S}p(s)R(S,s)g(s)] = \mathbb{E}_p[g]`
for any :math:`g`; the baseline of the term of :math:`s` is an unbiased estimate of
:math:`\mathbb{E}_p[f]` from :math:`s` and the other :math:`k-1` samples (drawn without
replacement from :math:`D\setminus\{s\}`), so it contributes :math:`\mathbb{E}_p[f]\,\nabla
\sum_s p(s) = 0`. It needs :math:`k \ge 2` (for :math:`k = 1` the baseline has no other sample:
``min_budget = 2``, as ``reinforce-loo``). At :math:`k = K` the set is the whole support and the
estimate is the exact gradient. The last sum is a model problem's direct dependence on
:math:`\phi` (zero on a plain expectation).

The set probabilities are exact: a sum over the subsets of :math:`S` (the probability that the
first :math:`|T|` draws are the set :math:`T`, built up one element at a time), :math:`O(2^k k)`,
in float64; ``n`` is at most :data:`MAX_SET` (Kool et al.'s numerical integration, which scales
to larger sets, is not implemented). ``n`` larger than the number of classes is refused.

Cost: ``n`` evaluations of the cost (one per distinct class in the set).

Reference: Kool, van Hoof & Welling (2020), "Estimating gradients for discrete random variables
by sampling without replacement", ICLR (the estimator with baseline, their eq. 10-11).

Shapes: logits ``(R, K)``; the set ``(R, n)`` of class indices; samples ``(n, R)`` (indices) or
``(n, R, K)`` (one-hot); the cost ``(n, R)``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical, OneHotCategorical
from torch.distributions.utils import clamp_probs

from .base import EstimatorNotApplicable, base_distribution, evaluate_cost, grad_of
from .discrete import DiscreteEstimator, describe
from .registry import register_estimator

#: the largest set (budget n) whose probabilities are computed exactly
MAX_SET = 8


@functools.lru_cache(maxsize=None)
def _subset_levels(m: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """For each size L = 1..m, the bitmasks of that size ``(M_L,)``, their members ``(M_L, L)`` and
    the masks without each member ``(M_L, L)``."""
    levels = []
    for size in range(1, m + 1):
        masks = [mask for mask in range(1 << m) if bin(mask).count("1") == size]
        members = [[i for i in range(m) if mask >> i & 1] for mask in masks]
        levels.append((torch.tensor(masks), torch.tensor(members),
                       torch.tensor([[mask ^ (1 << i) for i in mem] for mask, mem in zip(masks, members)])))
    return levels


def set_probability(q: Tensor, removed: Tensor) -> Tensor:
    r"""Probability that sampling without replacement from a distribution with mass ``removed``
    taken out draws exactly the classes of probabilities ``q`` first, in any order:
    :math:`\sum_{\pi}\prod_i q_{\pi_i} / (1 - r - \sum_{j<i} q_{\pi_j})`. ``q``: ``(B, m)``;
    ``removed``: ``(B,)``; returns ``(B,)`` (1 for m = 0). By subsets: P(T) = sum over i in T of
    P(T - i) q_i / (1 - r - mass(T - i))."""
    b, m = q.shape
    if m == 0:
        return torch.ones(b, dtype=q.dtype, device=q.device)
    bits = torch.tensor([[mask >> i & 1 for mask in range(1 << m)] for i in range(m)], dtype=q.dtype,
                        device=q.device)                                          # (m, 2^m)
    left = (1 - removed).unsqueeze(1) - q @ bits                                   # (B, 2^m) mass left after T
    prob = torch.zeros(b, 1 << m, dtype=q.dtype, device=q.device)
    prob[:, 0] = 1
    for masks, members, previous in _subset_levels(m):
        masks, members, previous = masks.to(q.device), members.to(q.device), previous.to(q.device)
        terms = prob[:, previous] * q[:, members] / left[:, previous]             # (B, M_L, L)
        prob[:, masks] = terms.sum(-1)
    return prob[:, -1]


def set_weights(p: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(R(S, s), R^{D\s}(S, s'))`` for sets with probabilities ``p`` ``(B, k)`` of their members:
    shapes ``(B, k)`` and ``(B, k, k)`` (entry ``[., i, j]`` is :math:`R^{D\setminus s_i}(S, s_j)`,
    1 on the diagonal)."""
    b, k = p.shape
    zero = torch.zeros(b, dtype=p.dtype, device=p.device)
    whole = set_probability(p, zero)                                               # p(S)
    others = torch.tensor([[j for j in range(k) if j != i] for i in range(k)], device=p.device)   # (k, k-1)
    loo_q = p[:, others].reshape(b * k, k - 1)
    loo = set_probability(loo_q, p.reshape(b * k)).reshape(b, k)                   # p^{D\s}(S\s)
    ratio_two = torch.ones(b, k, k, dtype=p.dtype, device=p.device)
    if k >= 2:
        pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
        rest = torch.tensor([[l for l in range(k) if l not in (i, j)] for i, j in pairs], dtype=torch.long,
                            device=p.device).reshape(len(pairs), k - 2)
        first = torch.tensor([i for i, _ in pairs], device=p.device)
        second = torch.tensor([j for _, j in pairs], device=p.device)
        q2 = p[:, rest].reshape(b * len(pairs), k - 2)
        removed = (p[:, first] + p[:, second]).reshape(-1)
        two = set_probability(q2, removed).reshape(b, len(pairs))                  # p^{D\{s,s'}}(S\{s,s'})
        ratio_two[:, first, second] = two / loo[:, first]
    return loo / whole.unsqueeze(1), ratio_two


class UnorderedSet(DiscreteEstimator):
    """Kool et al. (2020)'s unordered-set estimator with built-in baseline; see :mod:`gradnoise.unordered_set`."""

    latents = (Categorical, OneHotCategorical)
    min_budget = 2

    def check(self, problem, n):
        super().check(problem, n)
        dist = problem.distribution(problem.params)
        logits = base_distribution(dist).logits
        if dist is not base_distribution(dist) or logits.dim() != 1:
            raise EstimatorNotApplicable(
                f"estimator {self.name!r} needs one categorical latent per replicate, but problem "
                f"{problem.spec!r} has {describe(dist)} with logits of shape {tuple(logits.shape)}"
            )
        classes = logits.shape[-1]
        if n > classes:
            raise EstimatorNotApplicable(
                f"estimator {self.name!r} draws N = {n} distinct classes without replacement, but problem "
                f"{problem.spec!r} has only {classes} classes; use N <= {classes}"
            )
        if n > MAX_SET:
            raise EstimatorNotApplicable(
                f"estimator {self.name!r} computes its set probabilities exactly over the 2^N subsets, "
                f"N <= {MAX_SET}; got N = {n}"
            )

    def estimate(self, problem, params, n, state):
        dist = problem.distribution(params)
        base = base_distribution(dist)
        log_p = torch.log_softmax(base.logits, -1)                                # (R, K)
        u = clamp_probs(torch.rand(log_p.shape, dtype=log_p.dtype, device=log_p.device))
        keys = log_p.detach() - torch.log(-torch.log(u))                           # + Gumbel noise
        chosen = keys.topk(n, dim=-1).indices                                       # (R, n), the ordered sample
        x = chosen.T                                                                # (n, R)
        if isinstance(base, OneHotCategorical):
            x = F.one_hot(x, log_p.shape[-1]).to(log_p.dtype)
        f = evaluate_cost(problem, x, params)                                       # (n, R)
        p = log_p.gather(-1, chosen).exp()                                          # (R, n), differentiable
        with torch.no_grad():
            pd, fd = p.double(), f.T.double()                                      # (R, n)
            ratio, ratio_two = set_weights(pd)
            baseline = (ratio_two * (pd * fd).unsqueeze(1)).sum(-1)                # (R, n): b_s
            signal = (ratio * (fd - baseline)).to(p.dtype)
            direct = (pd * ratio).to(p.dtype)
        surrogate = (signal * p).sum(-1) + (direct * f.T).sum(-1)
        return grad_of(surrogate, params)


@register_estimator("unordered-set")
def unordered_set():
    """Unordered-set estimator with built-in baseline (Kool et al. 2020): N distinct classes by Gumbel-top-k, one categorical latent, 2 <= N <= min(classes, 8); unbiased; N evaluations."""
    return UnorderedSet()

