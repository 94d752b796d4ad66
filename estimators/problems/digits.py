r"""Real models on real data: VAEs trained on binarised handwritten digits, frozen at checkpoints.

Data: ``sklearn.datasets.load_digits`` (1797 images of 8x8 pixels, values 0..16, shipped inside
scikit-learn: no download), binarised deterministically as ``pixel > 8``. Images ``0..1499`` train
the model; the gradient is measured on held-out images ``1500 .. 1500+points-1`` (``points``
data points, default one), whose log joint is the sum over the points.

Models (small MLPs, tanh hidden layer, PyTorch ``nn.Linear`` initialisation):

* ``digits-vae``: :math:`p(z) = \mathcal{N}(0, I_L)`, :math:`p_\theta(x\mid z) =
  \prod_{d=1}^{64} \mathrm{Bernoulli}(x_d; \sigma(\mathrm{dec}_\theta(z)_d))`,
  :math:`q_\phi(z\mid x) = \mathcal{N}(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)` with
  :math:`(\mu, \log\sigma) = \mathrm{enc}_\phi(x)`. Trained by the reparameterised ELBO gradient.
* ``digits-bernoulli-vae``: :math:`p(z) = \prod_l \mathrm{Bernoulli}(z_l; \tfrac12)`, the same
  decoder, :math:`q_\phi(z\mid x) = \prod_l \mathrm{Bernoulli}(z_l; \sigma(\mathrm{enc}_\phi(x)_l))`.
  No ``rsample``: score-function estimators (``reinforce*``, ``vimco``), the antithetic ``arm``
  and ``disarm`` and the relaxations (``gumbel-softmax`` on the relaxed ELBO of
  :meth:`DigitsVAE.relaxed_cost`, ``straight-through``) apply; pathwise ones (``reparam``,
  ``iwae*``) are refused by :meth:`GradientEstimator.check`. Trained by REINFORCE
  with a leave-one-out baseline over 8 samples per image.

Parameters are named like ``nn.Sequential(Linear, Tanh, Linear)``'s state dict, under
``encoder.`` and ``decoder.`` prefixes: ``encoder.0.weight`` (H, 64), ``encoder.0.bias`` (H,),
``encoder.2.weight`` (2L or L, H), ``encoder.2.bias``, ``decoder.0.weight`` (H, L),
``decoder.0.bias`` (H,), ``decoder.2.weight`` (64, H), ``decoder.2.bias`` (64,).

The model's maths is in :mod:`gradnoise.problems.digits_model`, its seeded training and the
checkpoint cache in :mod:`gradnoise.problems.digits_training`.

Truths: ELBO gradients of ``digits-vae`` by an oracle from ``reparam`` (``oracle_samples``
evaluations, default 2^20, as 1000-sample estimates, or fewer samples each when
``oracle_samples < 2^18``); IWAE-K (K > 1) by an
oracle from ``iwae-dreg`` (unbiased, and of lower encoder variance than ``iwae``). For
``digits-bernoulli-vae`` the ELBO gradient is exact by enumerating the :math:`2^L` latent states
per point (``latent <= 16``; else an oracle from ``reinforce-loo``), IWAE-K by an oracle from
``vimco``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli

from ..base import Objective, Params, Truth
from ..registry import register_problem
from .base import ModelProblem
from .digits_model import CHECKPOINTS, KINDS, TRAIN_IMAGES, DigitsModel, binarised_digits
from .digits_training import load_or_train
from .truths import ORACLE_SAMPLES, autograd_truth, oracle_truth

MAX_ENUMERATED_LATENT = 16


class DigitsVAE(ModelProblem):
    """A trained digits VAE frozen at a checkpoint, for ``points`` held-out images; see the module docstring."""

    def __init__(self, kind: str = "gaussian", *, latent: int = 8, hidden: int = 64,
                 checkpoint: str = "end", seed: int = 0, points: int = 1, steps: int = 3000,
                 oracle_samples: int = ORACLE_SAMPLES):
        name = "digits-vae" if kind == "gaussian" else "digits-bernoulli-vae"
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"problem {name!r}: checkpoint must be one of {', '.join(CHECKPOINTS)}, "
                             f"got {checkpoint!r}")
        held_out = binarised_digits().shape[0] - TRAIN_IMAGES
        if latent < 1 or hidden < 1 or steps < 0 or not 1 <= points <= held_out:
            raise ValueError(f"problem {name!r} needs latent >= 1, hidden >= 1, steps >= 0 and "
                             f"1 <= points <= {held_out}; got latent={latent}, hidden={hidden}, "
                             f"steps={steps}, points={points}")
        self.kind, self.latent, self.checkpoint = kind, latent, checkpoint
        self.x = binarised_digits()[TRAIN_IMAGES:TRAIN_IMAGES + points]
        params = load_or_train(kind, latent, hidden, steps, seed)[checkpoint]
        super().__init__(self._encoder, self._log_joint, params, name=name, oracle_samples=oracle_samples)
        self.groups = {part: [k for k in params if k.startswith(part + ".")] for part in ("encoder", "decoder")}

    def _model(self) -> DigitsModel:
        return DigitsModel(self.kind, self.x)    # reads self.x, so Problem.to(device) carries over

    def _encoder(self, params):
        return self._model().encoder(params)

    def _log_joint(self, z, params):
        return self._model().log_joint(z, params)

    def exact_elbo(self, params: Params) -> Tensor:
        """Bernoulli latents only: the ELBO summed over points, by enumerating the 2^latent states."""
        if self.kind != "bernoulli":
            raise ValueError("exact_elbo needs Bernoulli latents (digits-bernoulli-vae)")
        states = torch.arange(2**self.latent, device=self.x.device)
        bits = torch.arange(self.latent, device=self.x.device)
        support = ((states.unsqueeze(-1) >> bits) & 1).to(self.x.dtype)           # (M, latent)
        z = support.unsqueeze(1).expand(-1, self.x.shape[0], -1)                    # (M, B, latent)
        model = self._model()
        log_q = model.encoder_points(params).log_prob(z)                            # (M, B)
        return (log_q.exp() * (model.log_joint_points(z, params) - log_q)).sum()

    def exact_objective(self, params, objective=Objective()):
        """Bernoulli latents (at most 16): the ELBO at ``params`` by enumeration (:meth:`exact_elbo`);
        None otherwise."""
        if self.kind != "bernoulli" or self.latent > MAX_ENUMERATED_LATENT or objective.canonical() != Objective():
            return None
        with torch.no_grad():
            return self.exact_elbo(params), "enumeration"

    def relaxed_cost(self, y: Tensor, params: Params, temperature: float) -> Tensor:
        r"""Bernoulli latents only: the relaxed ELBO integrand of Maddison et al. (2017, App. C).

        .. math:: \tilde f(y) = \log p_\theta(x\mid\sigma(y)) + \log g_{0,\tau}(y)
                  - \log g_{\phi,\tau}(y\mid x),

        at logistic samples :math:`y = (\mathrm{logits}_\phi + \log u - \log(1-u))/\tau` of shape
        ``S + L + (B, latent)``, with :math:`g_{\lambda,\tau}` the ``LogitRelaxedBernoulli``
        density of logits :math:`\lambda` (the prior's are 0: Bernoulli(1/2)) at temperature
        :math:`\tau`, the same for prior and posterior. Returns ``S + L`` (summed over points).
        Its expectation is the relaxed ELBO, whose gradient ``gumbel-softmax`` estimates.
        """
        if self.kind != "bernoulli":
            raise ValueError("relaxed_cost needs Bernoulli latents (digits-bernoulli-vae)")
        model = self._model()
        logits = model.encoder_points(params).base_dist.logits                   # L + (B, latent)
        tau = torch.as_tensor(temperature, dtype=y.dtype, device=y.device)
        prior = LogitRelaxedBernoulli(tau, logits=torch.zeros_like(logits)).log_prob(y)
        posterior = LogitRelaxedBernoulli(tau, logits=logits).log_prob(y)
        points = model.log_likelihood_points(torch.sigmoid(y), params) + (prior - posterior).sum(-1)
        return points.sum(-1)

    def true_gradient(self, objective=Objective()) -> Truth:
        objective = objective.canonical()
        if objective.kind not in ("expectation", "iwae"):
            raise ValueError(f"problem {self.spec!r} has no objective {objective}")
        if objective not in self._truths:
            # ELBO oracles average n-sample estimates, n = 1000 by default; fewer for a small
            # oracle_samples, so that the oracle spends about oracle_samples evaluations
            n = max(1, min(1000, self.oracle_samples // 256))
            if self.kind == "gaussian":
                truth = (oracle_truth(self, "reparam", n, self.oracle_samples) if objective.k == 1
                         else oracle_truth(self, "iwae-dreg", objective.k, self.oracle_samples))
            elif objective.k > 1:
                truth = oracle_truth(self, "vimco", objective.k, self.oracle_samples)
            elif self.latent <= MAX_ENUMERATED_LATENT:
                truth = autograd_truth(self.exact_elbo, self.params, "enumeration")
            else:
                truth = oracle_truth(self, "reinforce-loo", max(2, n), self.oracle_samples)
            self._truths[objective] = truth
        return self._truths[objective]


@register_problem("digits-vae", in_default_sweep=False)
def digits_vae(*, latent: int = 8, hidden: int = 64, checkpoint: str = "end", seed: int = 0,
               points: int = 1, steps: int = 3000, oracle_samples: int = ORACLE_SAMPLES):
    """VAE on binarised sklearn digits (Gaussian latents, Bernoulli decoder, MLPs) frozen at a training checkpoint; truth by oracle."""
    return DigitsVAE("gaussian", latent=latent, hidden=hidden, checkpoint=checkpoint, seed=seed,
                     points=points, steps=steps, oracle_samples=oracle_samples)


@register_problem("digits-bernoulli-vae", in_default_sweep=False)
def digits_bernoulli_vae(*, latent: int = 8, hidden: int = 64, checkpoint: str = "end", seed: int = 0,
                         points: int = 1, steps: int = 3000, oracle_samples: int = ORACLE_SAMPLES):
    """VAE on binarised sklearn digits with Bernoulli latents: score-function, ARM-family and relaxed estimators; ELBO truth by enumeration."""
    return DigitsVAE("bernoulli", latent=latent, hidden=hidden, checkpoint=checkpoint, seed=seed,
                     points=points, steps=steps, oracle_samples=oracle_samples)
