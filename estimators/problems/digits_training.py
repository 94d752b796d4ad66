r"""Seeded training of the digits VAEs, and the checkpoint cache.

Training is seeded (initialisation, minibatches and latent noise all derive from ``seed``;
Adam, learning rate 3e-3, minibatches of 100, ``steps`` steps) and cached on disk, keyed by its
settings and by a hash of the model's and this module's source and torch's version (a change of
the model or its training trains anew), under ``$GRADNOISE_CACHE/digits`` (default
``~/.cache/gradnoise/digits``), one file holding the ``start`` (initialisation), ``middle``
(``steps // 2``) and ``end`` checkpoints; a second run loads the file and does not retrain.
The Gaussian model trains by the reparameterised ELBO gradient, the Bernoulli one by REINFORCE
with a leave-one-out baseline over 8 samples per image.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from ..base import Params
from ..engine import torch_threads
from ..io import cache_dir, compute_once
from ..provenance import source_hash
from . import digits_model
from .digits_model import TRAIN_IMAGES, DigitsModel, binarised_digits, init_params

CACHE_FORMAT = 1
LEARNING_RATE = 3e-3
MINIBATCH = 100
TRAIN_SAMPLES_BERNOULLI = 8

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
    # tiny matrices: one thread is fastest, and makes the training thread-count free
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        torch.manual_seed(seed)
        _train_steps(kind, data, params, optimiser, steps, gen, saved, snapshot)
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
    return cache_dir("digits") / (
        f"digits-{kind}-latent{latent}-hidden{hidden}-steps{steps}-seed{seed}"
        f"-lr{LEARNING_RATE:g}-batch{MINIBATCH}-v{CACHE_FORMAT}"
        f"-code{source_hash(digits_model.__file__, __file__, extra=f'torch {torch.__version__}')}.pt"
    )


def load_or_train(kind: str, latent: int, hidden: int, steps: int, seed: int) -> dict[str, dict[str, Tensor]]:
    """The cached checkpoints for these settings, training (and caching) them first if needed.

    Trained once among all processes sharing the cache (:func:`gradnoise.io.compute_once`: the
    others wait on a lock, then load the file, written atomically). The training wall time is
    stored with the checkpoints under ``"seconds"``.
    """
    def trained() -> dict:
        start = time.perf_counter()
        saved: dict = train(kind, latent, hidden, steps, seed)
        saved["seconds"] = torch.tensor(time.perf_counter() - start)
        return saved

    return compute_once(checkpoint_path(kind, latent, hidden, steps, seed), trained)
