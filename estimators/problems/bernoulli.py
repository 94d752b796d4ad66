r"""A Bernoulli toy whose truth is exact enumeration (Tucker et al. 2017; Grathwohl et al. 2018)."""
from __future__ import annotations

import torch
from torch.distributions import Bernoulli

from ..registry import register_problem
from .base import ExpectationProblem


@register_problem("bernoulli-toy")
def bernoulli_toy(*, theta: float = 0.0, t: float = 0.499):
    r"""b ~ Bernoulli(logits=theta), cost (b - t)^2 (the REBAR/RELAX toy); truth by exact enumeration.

    :math:`\nabla_\theta = \sigma'(\theta)\,((1-t)^2 - t^2)`, 0.0005 at the defaults: a tiny signal.
    """
    return ExpectationProblem(
        lambda logits: Bernoulli(logits=logits), {"logits": torch.tensor(float(theta))},
        lambda b: (b - t) ** 2, name="bernoulli-toy",
    )
