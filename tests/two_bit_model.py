"""A model small enough for exact truths: two Bernoulli latents, enumerated (shared by the tests)."""
from __future__ import annotations

import itertools
import math

import torch
from torch.distributions import Bernoulli, Independent, Normal

import gradnoise as gn


class TwoBitModel(gn.ModelProblem):
    """z in {0,1}^2: q(z) = Bern(sigmoid(phi)), p(z) = Bern(sigmoid(theta)), p(x|z) = N(Wz, I), x in R^3.

    The cost depends on phi at fixed z (through -log q), so estimators' direct terms are
    exercised. ``true_gradient`` enumerates all K-tuples of latents: the IWAE-K bound's exact
    gradient, the ELBO's at K = 1.
    """

    X = torch.tensor([0.5, -1.0, 2.0])

    def __init__(self):
        params = {"phi": torch.tensor([0.3, -0.8]), "theta": torch.tensor([-0.2, 0.5]),
                  "W": torch.tensor([[1.0, -0.5], [0.2, 0.7], [1.5, 1.0]])}
        super().__init__(self._encoder, self._log_joint, params, name="two-bit-model")

    def _encoder(self, p):
        return Independent(Bernoulli(logits=p["phi"]), 1)

    def _log_joint(self, z, p):
        mean = (p["W"] * z.unsqueeze(-2)).sum(-1)
        return Bernoulli(logits=p["theta"]).log_prob(z).sum(-1) + Normal(mean, 1.0).log_prob(self.X).sum(-1)

    def true_gradient(self, objective=gn.Objective()):
        k = objective.k
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)))          # (4, 2)
        tuples = torch.tensor(list(itertools.product(range(4), repeat=k)))            # (4^K, K)

        def bound(p):
            log_q = self._encoder(p).log_prob(states)
            log_w = self._log_joint(states, p) - log_q
            prob = log_q[tuples].sum(-1).exp()
            return (prob * (torch.logsumexp(log_w[tuples], -1) - math.log(k))).sum()

        leaves = {n: v.clone().requires_grad_(True) for n, v in self.params.items()}
        grads = torch.autograd.grad(bound(leaves), list(leaves.values()))
        return gn.Truth(dict(zip(leaves, grads)), "enumeration")
