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
  No ``rsample``: only score-function estimators apply (``reinforce*``, ``vimco``); pathwise ones
  (``reparam``, ``iwae*``) are refused by :meth:`GradientEstimator.check`. Trained by REINFORCE
  with a leave-one-out baseline over 8 samples per image.

Parameters are named like ``nn.Sequential(Linear, Tanh, Linear)``'s state dict, under
``encoder.`` and ``decoder.`` prefixes: ``encoder.0.weight`` (H, 64), ``encoder.0.bias`` (H,),
``encoder.2.weight`` (2L or L, H), ``encoder.2.bias``, ``decoder.0.weight`` (H, L),
``decoder.0.bias`` (H,), ``decoder.2.weight`` (64, H), ``decoder.2.bias`` (64,).

The MLPs are written functionally so that every weight may carry leading replicate dims
``L`` (the contract of :mod:`estimators.base`): a layer is one batched matrix product of the
``(prod L, rows, in)`` activations with the ``(prod L, in, out)`` weights, no weight copies.

Training is seeded (initialisation, minibatches and latent noise all derive from ``seed``;
Adam, learning rate 3e-3, minibatches of 100, ``steps`` steps) and cached on disk, keyed by its
settings and by a hash of this module's source and torch's version (a change of the model or
its training trains anew), under ``$GRADNOISE_CACHE/digits`` (default ``~/.cache/gradnoise/digits``), one file
holding the ``start`` (initialisation), ``middle`` (``steps // 2``) and ``end`` checkpoints; a
second run loads the file and does not retrain.

Truths: ELBO gradients of ``digits-vae`` by an oracle from ``reparam`` (``oracle_samples``
evaluations, default 2^20, as 1000-sample estimates, or fewer samples each when
``oracle_samples < 2^18``); IWAE-K (K > 1) by an
oracle from ``iwae-dreg`` (unbiased, and of lower encoder variance than ``iwae``). For
``digits-bernoulli-vae`` the ELBO gradient is exact by enumerating the :math:`2^L` latent states
per point (``latent <= 16``; else an oracle from ``reinforce-loo``), IWAE-K by an oracle from
``vimco``.
"""
from __future__ import annotations

import math
import os
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal

from .base import Objective, Params, Truth
from .filecache import compute_once
from .provenance import source_hash
from .problems import ORACLE_SAMPLES, ModelProblem, _autograd_truth, oracle_truth
from .registry import register_problem

PIXELS = 64
TRAIN_IMAGES = 1500
CHECKPOINTS = ("start", "middle", "end")
KINDS = ("gaussian", "bernoulli")
CACHE_FORMAT = 1
LEARNING_RATE = 3e-3
MINIBATCH = 100
TRAIN_SAMPLES_BERNOULLI = 8
MAX_ENUMERATED_LATENT = 16


@lru_cache(maxsize=1)
def binarised_digits() -> Tensor:
    """All 1797 ``load_digits`` images as a ``(1797, 64)`` float tensor of 0/1 (``pixel > 8``)."""
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().data > 8, dtype=torch.get_default_dtype())


def cache_dir() -> Path:
    """``$GRADNOISE_CACHE/digits``, or ``~/.cache/gradnoise/digits``."""
    root = os.environ.get("GRADNOISE_CACHE") or Path.home() / ".cache" / "gradnoise"
    return Path(root) / "digits"


# --------------------------------------------------------------------------------------------
# functional MLPs with replicated weights
# --------------------------------------------------------------------------------------------
def _encoder_out(kind: str, latent: int) -> int:
    return 2 * latent if kind == "gaussian" else latent


def layer_shapes(kind: str, latent: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes, in ``nn.Sequential(Linear, Tanh, Linear)`` naming."""
    shapes = {}
    for prefix, sizes in (("encoder", (PIXELS, hidden, _encoder_out(kind, latent))),
                          ("decoder", (latent, hidden, PIXELS))):
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            shapes[f"{prefix}.{2 * i}.weight"] = (n_out, n_in)
            shapes[f"{prefix}.{2 * i}.bias"] = (n_out,)
    return shapes


def init_params(kind: str, latent: int, hidden: int, generator: torch.Generator) -> dict[str, Tensor]:
    """``nn.Linear``'s default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from ``generator``."""
    params = {}
    for name, shape in layer_shapes(kind, latent, hidden).items():
        fan_in = shape[-1] if name.endswith("weight") else params[name[:-4] + "weight"].shape[-1]
        bound = 1.0 / math.sqrt(fan_in)
        params[name] = (2 * torch.rand(shape, generator=generator) - 1) * bound
    return params


def mlp(h: Tensor, params: Params, prefix: str) -> Tensor:
    """Apply the ``prefix`` MLP (Linear, tanh, Linear) to ``h`` with replicated weights.

    Weights have shape ``L + (out, in)``. ``h`` has shape ``S + L + (B, in)`` (``S`` any sample
    dims), or ``(B, in)`` for inputs shared by all replicates (the data). Returns
    ``S + L + (B, out)``.
    """
    first, last = params[f"{prefix}.0.weight"], params[f"{prefix}.2.weight"]
    lead = first.shape[:-2]
    nl, m = len(lead), math.prod(lead)
    if h.dim() == 2:                                              # shared input (B, in)
        s_shape: tuple[int, ...] = ()
        flat = h.unsqueeze(0).expand(m, *h.shape)
    else:
        ns = h.dim() - nl - 2
        s_shape = tuple(h.shape[:ns])
        order = list(range(ns, ns + nl)) + list(range(ns)) + [h.dim() - 2, h.dim() - 1]
        flat = h.permute(order).reshape(m, -1, h.shape[-1])      # (prod L, prod S * B, in)
    b = h.shape[-2]
    for i, layer in enumerate(("0", "2")):
        w = params[f"{prefix}.{layer}.weight"].reshape(m, *params[f"{prefix}.{layer}.weight"].shape[-2:])
        bias = params[f"{prefix}.{layer}.bias"].reshape(m, 1, -1)
        flat = torch.baddbmm(bias, flat, w.transpose(1, 2))
        if i == 0:
            flat = torch.tanh(flat)
    out = flat.reshape(*lead, *s_shape, b, last.shape[-2])
    ns = len(s_shape)
    order = list(range(nl, nl + ns)) + list(range(nl)) + [nl + ns, nl + ns + 1]
    return out.permute(order)


class DigitsModel:
    """The VAE's maths for data ``x`` of shape ``(B, 64)``; per-point terms end in a ``B`` axis."""

    def __init__(self, kind: str, x: Tensor):
        self.kind, self.x = kind, x

    def encoder_points(self, params: Params):
        """:math:`q_\\phi(z_b\\mid x_b)` per point: batch ``L + (B,)``, event ``(latent,)``."""
        out = mlp(self.x, params, "encoder")
        if self.kind == "gaussian":
            loc, log_scale = out.chunk(2, dim=-1)
            return Independent(Normal(loc, log_scale.exp()), 1)
        return Independent(Bernoulli(logits=out), 1)

    def encoder(self, params: Params):
        """:math:`q_\\phi(z\\mid x)` over all points: batch ``L``, event ``(B, latent)``."""
        return Independent(self.encoder_points(params), 1)

    def log_joint_points(self, z: Tensor, params: Params) -> Tensor:
        """:math:`\\log p(z_b) + \\log p_\\theta(x_b\\mid z_b)`: ``S + L + (B, latent)`` to ``S + L + (B,)``."""
        logits = mlp(z, params, "decoder")
        likelihood = (self.x * logits - F.softplus(logits)).sum(-1)
        if self.kind == "gaussian":
            prior = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
        else:
            prior = torch.full_like(likelihood, -z.shape[-1] * math.log(2.0))
        return prior + likelihood

    def log_joint(self, z: Tensor, params: Params) -> Tensor:
        return self.log_joint_points(z, params).sum(-1)


# --------------------------------------------------------------------------------------------
# seeded training, cached on disk
# --------------------------------------------------------------------------------------------
def _train_loss(model: DigitsModel, params: Params) -> Tensor:
    """A surrogate whose gradient is an unbiased estimate of -(mean ELBO) over the minibatch."""
    q = model.encoder_points(params)
    if model.kind == "gaussian":
        z = q.rsample()
        return -(model.log_joint_points(z, params) - q.log_prob(z)).mean()
    z = q.sample((TRAIN_SAMPLES_BERNOULLI,))                          # (K, B, latent)
    log_q = q.log_prob(z)
    f = model.log_joint_points(z, params) - log_q                   # (K, B)
    loo = (f.sum(0, keepdim=True) - f) / (TRAIN_SAMPLES_BERNOULLI - 1)
    return -(((f - loo).detach() * log_q + f).mean(0)).mean()


def train(kind: str, latent: int, hidden: int, steps: int, seed: int) -> dict[str, dict[str, Tensor]]:
    """Train from ``seed`` (no cache); ``{checkpoint: {name: tensor}}`` for start, middle, end.

    Deterministic: the same arguments give bitwise the same parameters on the same machine.
    The caller's torch random stream is left untouched.
    """
    data = binarised_digits()[:TRAIN_IMAGES]
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.requires_grad_(True) for k, v in init_params(kind, latent, hidden, gen).items()}
    snapshot = lambda: {k: v.detach().clone() for k, v in params.items()}  # noqa: E731
    saved = {"start": snapshot()}
    optimiser = torch.optim.Adam(params.values(), lr=LEARNING_RATE)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)      # tiny matrices: one thread is fastest, and thread-count free
        try:
            _train_steps(kind, data, params, optimiser, steps, gen, saved, snapshot)
        finally:
            torch.set_num_threads(threads)
    saved.setdefault("middle", saved["start"])
    saved["end"] = snapshot()
    return saved


def _train_steps(kind, data, params, optimiser, steps, gen, saved, snapshot) -> None:
    for step in range(1, steps + 1):
        batch = data[torch.randint(0, TRAIN_IMAGES, (MINIBATCH,), generator=gen)]
        optimiser.zero_grad()
        _train_loss(DigitsModel(kind, batch), params).backward()
        optimiser.step()
        if step == steps // 2:
            saved["middle"] = snapshot()


def checkpoint_path(kind: str, latent: int, hidden: int, steps: int, seed: int) -> Path:
    return cache_dir() / (
        f"digits-{kind}-latent{latent}-hidden{hidden}-steps{steps}-seed{seed}"
        f"-lr{LEARNING_RATE:g}-batch{MINIBATCH}-v{CACHE_FORMAT}"
        f"-code{source_hash(__file__, extra=f'torch {torch.__version__}')}.pt"
    )


def load_or_train(kind: str, latent: int, hidden: int, steps: int, seed: int) -> dict[str, dict[str, Tensor]]:
    """The cached checkpoints for these settings, training (and caching) them first if needed.

    Trained once among all processes sharing the cache (:func:`estimators.filecache.compute_once`:
    the others wait on a lock, then load the file, written atomically). The training wall time
    is stored with the checkpoints under ``"seconds"``.
    """
    def trained() -> dict:
        start = time.perf_counter()
        saved: dict = train(kind, latent, hidden, steps, seed)
        saved["seconds"] = torch.tensor(time.perf_counter() - start)
        return saved

    return compute_once(checkpoint_path(kind, latent, hidden, steps, seed), trained)


# --------------------------------------------------------------------------------------------
# the problems
# --------------------------------------------------------------------------------------------
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
                truth = _autograd_truth(self.exact_elbo, self.params, "enumeration")
            else:
                truth = oracle_truth(self, "reinforce-loo", max(2, n), self.oracle_samples)
            self._truths[objective] = truth
        return self._truths[objective]


@register_problem("digits-vae", in_default_sweep=False)
def digits_vae(*, latent: int = 8, hidden: int = 64, checkpoint: str = "end", seed: int = 0,
               points: int = 1, steps: int = 3000):
    """VAE on binarised sklearn digits (Gaussian latents, Bernoulli decoder, MLPs) frozen at a training checkpoint; truth by oracle."""
    return DigitsVAE("gaussian", latent=latent, hidden=hidden, checkpoint=checkpoint, seed=seed,
                     points=points, steps=steps)


@register_problem("digits-bernoulli-vae", in_default_sweep=False)
def digits_bernoulli_vae(*, latent: int = 8, hidden: int = 64, checkpoint: str = "end", seed: int = 0,
                         points: int = 1, steps: int = 3000):
    """VAE on binarised sklearn digits with Bernoulli latents: score-function estimators only; ELBO truth by enumeration."""
    return DigitsVAE("bernoulli", latent=latent, hidden=hidden, checkpoint=checkpoint, seed=seed,
                     points=points, steps=steps)
