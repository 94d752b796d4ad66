r"""``exponential-quadratic``: :math:`x \sim \mathrm{Exponential}(\lambda)`, cost :math:`(x-k)^2`.

Exact truth, in closed form: :math:`\mathbb E[x] = 1/\lambda`, :math:`\mathbb E[x^2] = 2/\lambda^2`, so

.. math::
   \mathbb E[(x-k)^2] = \frac{2}{\lambda^2} - \frac{2k}{\lambda} + k^2, \qquad
   \frac{\partial}{\partial\lambda} = -\frac{4}{\lambda^3} + \frac{2k}{\lambda^2}

(2 at the defaults :math:`\lambda = 1, k = 3`). The engine differentiates the closed form by autograd.
The exponential has ``rsample``, so the pathwise estimator applies too.
"""
from __future__ import annotations

import torch
from torch.distributions import Exponential

from gradnoise import ExpectationProblem, register_problem


@register_problem("exponential-quadratic")
def exponential_quadratic(*, rate: float = 1.0, k: float = 3.0):
    """x ~ Exponential(rate), cost (x - k)^2; E = 2/rate^2 - 2k/rate + k^2 (closed form)."""
    if rate <= 0:
        raise ValueError(f"problem 'exponential-quadratic': rate must be > 0, got {rate}")
    return ExpectationProblem(
        Exponential, {"rate": torch.tensor(float(rate))}, lambda x: (x - k) ** 2,
        name="exponential-quadratic",
        expected_cost=lambda p: 2 / p["rate"] ** 2 - 2 * k / p["rate"] + k**2,
    )
