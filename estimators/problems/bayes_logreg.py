r"""``bayes-logreg``: Bayesian logistic regression on scikit-learn's breast-cancer data.

The real-data problem of Mohamed et al. (2020, sec. 8.3; their code's settings: features
standardised by the mean and standard deviation of the whole data set, prior
:math:`\mathcal N(0, I)`, diagonal Gaussian variational posterior initialised at
:math:`\mu = 0`, :math:`\sigma = 1`). With features :math:`x_i \in \mathbb R^D` (D = 30; their code
appends a constant bias feature, ``intercept=true`` here, D = 31) and labels
:math:`y_i \in \{0, 1\}`:

.. math::
   q_\phi(w) = \prod_{j=1}^D \mathcal N(w_j; \mu_j, \sigma_j^2), \qquad
   f(w) = \sum_{i \in S} \log \sigma\big((2y_i - 1)\, x_i^\top w\big) + \log \mathcal N(w; 0, I),

the log-likelihood of a fixed subset :math:`S` of ``n_data`` points plus the log-prior: the ELBO
without the entropy of :math:`q` (the entropy's gradient is known in closed form, as the
analytic KL is in Mohamed et al.'s code, so it carries no estimation noise). Parameters ``loc``
(:math:`\mu`) and ``scale`` (:math:`\sigma`), each of shape ``(D,)``, all coordinates set to the
options ``loc`` and ``scale``. :math:`S` is the first ``n_data`` points of a permutation of the
569 drawn with ``torch.Generator().manual_seed(seed)`` (``n_data=0``: all 569); standardisation
uses all 569 points.

Truth: a labelled oracle (``reparam``, N = 1000, :data:`gradnoise.problems.ORACLE_SAMPLES` samples
in all) with its standard error. (:math:`x_i^\top w` is Normal under :math:`q`, so the truth is also
a sum of one-dimensional Gaussian integrals; the tests check the oracle against Gauss-Hermite
quadrature of those.)

Cost of one evaluation: one ``(n_data x D)`` matrix-vector product.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal

from ..registry import register_problem
from .base import ExpectationProblem

BREAST_CANCER_SIZE = 569


def breast_cancer(n_data: int, seed: int, intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features ``(n, D)`` and labels ``(n,)`` in {0, 1} of the subset described above."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    y = torch.tensor(data.target, dtype=torch.float64)
    if intercept:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    keep = order[: n_data or len(x)]
    dtype = torch.get_default_dtype()
    return x[keep].to(dtype), y[keep].to(dtype)


class BayesianLogisticRegression(ExpectationProblem):
    """See the module docstring; ``features`` ``(n, D)`` and ``labels`` ``(n,)`` are kept on the problem."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, loc: float, scale: float):
        self.features, self.signs = features, 2 * labels - 1
        d = features.shape[1]
        super().__init__(
            lambda loc, scale: Independent(Normal(loc, scale), 1),
            {"loc": torch.full((d,), float(loc)), "scale": torch.full((d,), float(scale))},
            self.log_joint, name="bayes-logreg",
        )

    def log_joint(self, w: torch.Tensor) -> torch.Tensor:
        """Log-likelihood plus log-prior; ``w`` of shape ``S + L + (D,)`` to ``S + L``."""
        logits = (w @ self.features.T) * self.signs                      # S + L + (n,)
        log_prior = -0.5 * (w.square().sum(-1) + w.shape[-1] * math.log(2 * math.pi))
        return torch.nn.functional.logsigmoid(logits).sum(-1) + log_prior


@register_problem("bayes-logreg", in_default_sweep=False)
def bayes_logreg(*, n_data: int = 100, seed: int = 0, loc: float = 0.0, scale: float = 1.0,
                 intercept: bool = False):
    """Bayesian logistic regression, breast-cancer data, diagonal Gaussian posterior, D=30 (Mohamed et al. 2020); oracle truth."""
    if not 0 <= n_data <= BREAST_CANCER_SIZE or scale <= 0:
        raise ValueError(f"problem 'bayes-logreg' needs 0 <= n_data <= {BREAST_CANCER_SIZE} (0: all) "
                         f"and scale > 0, got n_data={n_data}, scale={scale}")
    features, labels = breast_cancer(n_data, seed, intercept)
    return BayesianLogisticRegression(features, labels, loc, scale)
