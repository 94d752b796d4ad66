r"""Seeded training of the digits VAEs, and the checkpoint cache.

Training is seeded (initialisation, minibatches and latent noise all derive from ``seed``;
Adam, learning rate 3e-3, minibatches of 100, ``steps`` steps) and cached on disk, keyed by its
settings and by the package's code version (:func:`gradnoise.provenance.code_version`: the model,
this module and the estimators it trains by; a change of any trains anew), under ``$GRADNOISE_CACHE/digits`` (default
``~/.cache/gradnoise/digits``), one file holding the ``start`` (initialisation), ``middle``
(``steps // 2``) and ``end`` checkpoints; a second run loads the file and does not retrain.
The Gaussian model trains by the registered ``reparam`` estimator (one sample per image), the
Bernoulli one by ``reinforce-loo`` (8 samples per image), each image of a minibatch a replicate,
through :func:`gradnoise.training.minimise`, the estimator contract's training loop.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from ..base import Params, forked_stream
from ..engine import torch_threads
from ..registry import get_estimator
from ..training import minimise
from .base import ModelProblem
from ..io import cache_dir, compute_once
from ..provenance import code_version
from . import digits_model
from .digits_model import TRAIN_IMAGES, DigitsModel, binarised_digits, init_params

CACHE_FORMAT = 2
LEARNING_RATE = 3e-3
MINIBATCH = 100
TRAIN_SAMPLES_BERNOULLI = 8

class MinibatchTerms(ModelProblem):
    """The ELBO terms of a minibatch ``x`` ``(B, 64)`` as ``B`` replicates: replicate ``b`` holds
    image ``b`` (data of shape ``(B, 1, 64)``, aligned with parameter leaves ``(B, *shape)``), so
    a registered estimator gives every image's gradient estimate in one pass
    (:func:`gradnoise.training.minimise` averages them)."""

    def __init__(self, kind: str, x: Tensor, params: Params):
        model = DigitsModel(kind, x.unsqueeze(1))
        super().__init__(model.encoder, model.log_joint, params, name=f"digits-{kind}-minibatch")
        self.terms = x.shape[0]


#: the registered estimator each model trains by, and its samples per image: the reparameterised
#: ELBO gradient for Gaussian latents, REINFORCE with the leave-one-out baseline for Bernoulli ones
TRAINED_BY = {"gaussian": ("reparam", 1), "bernoulli": ("reinforce-loo", TRAIN_SAMPLES_BERNOULLI)}


def train(kind: str, latent: int, hidden: int, steps: int, seed: int) -> dict[str, dict[str, Tensor]]:
    """Train from ``seed`` (no cache); ``{checkpoint: {name: tensor}}`` for start, middle, end.

    Each step draws a minibatch (from ``seed``'s own generator) and moves the parameters by Adam
    along the mean of the registered estimator's per-image ELBO gradient estimates
    (:data:`TRAINED_BY`, through :func:`gradnoise.training.minimise`: the estimators measured
    elsewhere, not a copy of them). Deterministic: the same arguments give bitwise the same
    parameters on the same machine. The caller's torch random stream is left untouched.
    """
    data = binarised_digits()[:TRAIN_IMAGES]
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.requires_grad_(True) for k, v in init_params(kind, latent, hidden, gen).items()}
    snapshot = lambda: {k: v.detach().clone() for k, v in params.items()}  # noqa: E731
    saved = {"start": snapshot()}
    optimiser = torch.optim.Adam(params.values(), lr=LEARNING_RATE)
    name, samples = TRAINED_BY[kind]

    def minibatch(step: int) -> MinibatchTerms:
        return MinibatchTerms(kind, data[torch.randint(0, TRAIN_IMAGES, (MINIBATCH,), generator=gen)], params)

    def keep_middle(step: int, _params) -> None:
        if step == steps // 2:
            saved["middle"] = snapshot()

    # tiny matrices: one thread is fastest, and makes the training thread-count free
    with forked_stream(seed), torch_threads(1):
        minimise(minibatch, get_estimator(name), samples, params, optimiser, steps, sign=-1.0, on_step=keep_middle)
    saved.setdefault("middle", saved["start"])
    saved["end"] = snapshot()
    return saved


def checkpoint_path(kind: str, latent: int, hidden: int, steps: int, seed: int) -> Path:
    return cache_dir("digits") / (
        f"digits-{kind}-latent{latent}-hidden{hidden}-steps{steps}-seed{seed}"
        f"-lr{LEARNING_RATE:g}-batch{MINIBATCH}-v{CACHE_FORMAT}"
        f"-code{code_version()}.pt"
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
