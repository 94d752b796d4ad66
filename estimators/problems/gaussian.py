r"""Gaussian measures with costs whose expectation has a closed form (Mohamed et al. 2020, sec. 3)."""
from __future__ import annotations

import torch
from torch.distributions import Independent, Normal

from ..registry import register_problem
from .base import ExpectationProblem


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
