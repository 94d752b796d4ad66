r"""The linear-Gaussian VAE of Rainforth et al. (2018): ELBO gradient in closed form."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from ..registry import register_problem
from .base import ModelProblem
from .truths import ORACLE_SAMPLES


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
    groups = {"encoder": ["A", "b"], "decoder": ["mu"]}

    def __init__(self, d: int = 20, perturbation: float = 0.01, seed: int = 0, n_data: int = 1024,
                 oracle_samples: int = ORACLE_SAMPLES):
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
        super().__init__(self._encoder, self._log_joint, params, name="linear-gaussian-vae", elbo=self._elbo,
                         oracle_samples=oracle_samples)

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
def linear_gaussian_vae(*, d: int = 20, perturbation: float = 0.01, seed: int = 0,
                        oracle_samples: int = ORACLE_SAMPLES):
    """Linear-Gaussian VAE of Rainforth et al. 2018 (D=20); ELBO gradient closed form, IWAE-K by oracle."""
    return LinearGaussianVAE(d, perturbation, seed, oracle_samples=oracle_samples)
