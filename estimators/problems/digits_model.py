r"""The digits VAEs' data and maths: binarised sklearn digits, functional MLPs with replicated
weights, and :class:`DigitsModel` (encoder and log joint). Training lives in
:mod:`gradnoise.problems.digits_training`, the problems in :mod:`gradnoise.problems.digits`.

The MLPs are written functionally so that every weight may carry leading replicate dims
``L`` (the contract of :mod:`gradnoise.base`): a layer is one batched matrix product of the
``(prod L, rows, in)`` activations with the ``(prod L, in, out)`` weights, no weight copies.

Parameters are named like ``nn.Sequential(Linear, Tanh, Linear)``'s state dict, under
``encoder.`` and ``decoder.`` prefixes: ``encoder.0.weight`` (H, 64), ``encoder.0.bias`` (H,),
``encoder.2.weight`` (2L or L, H), ``encoder.2.bias``, ``decoder.0.weight`` (H, L),
``decoder.0.bias`` (H,), ``decoder.2.weight`` (64, H), ``decoder.2.bias`` (64,).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal

from ..base import Params

PIXELS = 64
TRAIN_IMAGES = 1500
CHECKPOINTS = ("start", "middle", "end")
KINDS = ("gaussian", "bernoulli")


@lru_cache(maxsize=1)
def binarised_digits() -> Tensor:
    """All 1797 ``load_digits`` images as a ``(1797, 64)`` float tensor of 0/1 (``pixel > 8``)."""
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().data > 8, dtype=torch.get_default_dtype())



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

    def log_likelihood_points(self, z: Tensor, params: Params) -> Tensor:
        """:math:`\\log p_\\theta(x_b\\mid z_b)`: ``S + L + (B, latent)`` to ``S + L + (B,)`` (any real z)."""
        logits = mlp(z, params, "decoder")
        return (self.x * logits - F.softplus(logits)).sum(-1)

    def log_joint_points(self, z: Tensor, params: Params) -> Tensor:
        """:math:`\\log p(z_b) + \\log p_\\theta(x_b\\mid z_b)`: ``S + L + (B, latent)`` to ``S + L + (B,)``."""
        likelihood = self.log_likelihood_points(z, params)
        if self.kind == "gaussian":
            prior = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
        else:
            prior = torch.full_like(likelihood, -z.shape[-1] * math.log(2.0))
        return prior + likelihood

    def log_joint(self, z: Tensor, params: Params) -> Tensor:
        return self.log_joint_points(z, params).sum(-1)
