"""The paper's initialization and the baselines it is compared with (docs/paper.md §1).

Every scheme is a function ``scheme(model, ...)`` that works on any zoo model (and on any module
whose WN layers carry an ``init_role``, e.g. the synthetic nets of :mod:`wnzoo.diagnostics`).
The classifier is a plain ``nn.Linear`` and keeps PyTorch's default init under every scheme, as in
the authors' code.

Gain rule of ``proposed`` (Arpit et al. 2019): ``g = sqrt(γ · fan_in / fan_out)`` for every unit,
with γ = 2 for a layer followed by ReLU (block conv1), γ = 1/B_k for the last conv of a residual
branch (B_k = blocks in that stage), and γ = 1 for projection shortcuts and the stem.

Stem rule: we use γ = 1 for the stem conv of every family. The stem has no non-linearity after it
(its output is the residual stream itself), so the paper's general rule ("γ = 1 for a layer
without non-linearity", also PyTorch PR #22101's docstring) gives 1; this is what the authors'
WideResNet class does. Their ResNet class silently uses γ = 2, which only rescales the whole
stream by √2 and contradicts the stated rule, so we do not copy it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .layers import is_wn

__all__ = ["proposed", "proposed_he", "default", "default_orthogonal", "hanin", "datadep", "orthogonal", "he",
           "apply_init",
           "WN_SCHEMES", "BN_SCHEMES", "SCHEMES", "DEFAULT_INIT", "DATA_DEPENDENT", "gamma_for"]


def _wn_layers(model: nn.Module, scheme: str) -> list[nn.Module]:
    layers = [m for m in model.modules() if is_wn(m)]
    if not layers:
        raise ValueError(f"init '{scheme}' is for weight-normalized models, but this model has no WN layers; "
                         f"BN models take one of {sorted(BN_SCHEMES)}")
    return layers


def _init_direction(v: torch.Tensor, kind: str) -> None:
    if kind == "orthogonal":
        nn.init.orthogonal_(v)
    elif kind == "he":
        nn.init.normal_(v, std=1.0 / math.sqrt(v[0].numel()))
    else:
        raise ValueError(f"unknown direction init {kind!r}; choose 'orthogonal' or 'he'")


def gamma_for(layer: nn.Module, hanin_decay: float | None = None) -> float:
    """γ of the gain rule for one WN layer, from the role its model gave it."""
    role = layer.init_role
    if role == "relu":
        return 2.0
    if role == "linear":
        return 1.0
    if role == "residual":
        if hanin_decay is not None:
            return hanin_decay ** (2 * layer.block_index)
        return 1.0 / layer.stage_blocks
    raise ValueError(f"unknown init_role {role!r} on {layer!r}")


@torch.no_grad()
def _gain_init(model: nn.Module, scheme: str, v: str, hanin_decay: float | None = None) -> nn.Module:
    for layer in _wn_layers(model, scheme):
        _init_direction(layer.v, v)
        layer.g.fill_(math.sqrt(gamma_for(layer, hanin_decay) * layer.fan_in / layer.fan_out))
        if layer.bias is not None:
            layer.bias.zero_()
    return model


def proposed(model: nn.Module, v: str = "orthogonal") -> nn.Module:
    """The paper's init: orthogonal ``v``, zero bias, ``g = sqrt(γ·fan_in/fan_out)``."""
    return _gain_init(model, "proposed", v)


def proposed_he(model: nn.Module) -> nn.Module:
    """The paper's gains with Gaussian ``v ~ N(0, 1/fan_in)`` ("Proposed (He)")."""
    return _gain_init(model, "proposed_he", "he")


def hanin(model: nn.Module, decay: float = 0.9) -> nn.Module:
    """Stage-wise Hanin & Rolnick, as the authors' code: proposed, except that the last conv of the b-th
    block of a stage (b = 1, 2, ... within the stage) gets γ = ``decay**(2b)`` (0.81^b) instead of 1/B_k,
    i.e. ``g = decay**b · sqrt(fan_in/fan_out)``: the branches decay geometrically, with no 1/B_k factor."""
    return _gain_init(model, "hanin", "orthogonal", hanin_decay=decay)


@torch.no_grad()
def default(model: nn.Module, v: str = "he") -> nn.Module:
    """PyTorch's WN default: ``v`` He-normal (or orthogonal), zero bias, ``g = ||v||`` (weights unchanged)."""
    for layer in _wn_layers(model, "default"):
        if v == "he":
            nn.init.kaiming_normal_(layer.v)
        else:
            _init_direction(layer.v, v)
        layer.g.copy_(layer.v_norm())
        if layer.bias is not None:
            layer.bias.zero_()
    return model


def default_orthogonal(model: nn.Module) -> nn.Module:
    """PyTorch's WN default with orthogonal ``v`` (``g = ||v||``): the baseline of the paper's Figure 3."""
    return default(model, "orthogonal")


@torch.no_grad()
def datadep(model: nn.Module, batch: torch.Tensor | None, v: str = "orthogonal") -> nn.Module:
    """Salimans & Kingma (2016) data-dependent init from one (normalized) input batch.

    Layer by layer in forward order, each WN layer's output on the batch (computed with g = 1,
    b = 0 and the already-initialized layers below it) is normalized per channel: ``g = 1/σ``,
    ``b = -μ/σ``, and the normalized output propagates on. One forward pass does it, because a
    forward hook sets each layer's parameters and returns its normalized output.
    """
    if batch is None:
        raise ValueError("init 'datadep' needs a batch of (normalized) training inputs: "
                         "create_model(name, init='datadep', init_batch=x) or wnzoo.init.datadep(model, x)")
    layers = _wn_layers(model, "datadep")

    def hook(layer, _inputs, out):
        dims = [d for d in range(out.dim()) if d != 1]
        mu, sigma = out.mean(dims), out.std(dims, unbiased=False).clamp_min(1e-12)
        layer.g.copy_(1.0 / sigma)
        layer.bias.copy_(-mu / sigma)
        shape = [1, -1] + [1] * (out.dim() - 2)
        return (out - mu.view(shape)) / sigma.view(shape)

    for layer in layers:
        _init_direction(layer.v, v)
        layer.g.fill_(1.0)
        if layer.bias is None:
            raise ValueError("init 'datadep' needs WN layers with a bias")
        layer.bias.zero_()
    handles = [layer.register_forward_hook(hook) for layer in layers]
    was_training = model.training
    try:
        model.train()
        model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return model


def _plain_convs(model: nn.Module, scheme: str) -> list[nn.Conv2d]:
    if any(is_wn(m) for m in model.modules()):
        raise ValueError(f"init '{scheme}' is for BN (non-WN) models; WN models take one of {sorted(WN_SCHEMES)}")
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@torch.no_grad()
def _plain_init(model: nn.Module, scheme: str, fn: Callable[[torch.Tensor], None]) -> nn.Module:
    for conv in _plain_convs(model, scheme):
        fn(conv.weight)
        if conv.bias is not None:
            conv.bias.zero_()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
    return model


def orthogonal(model: nn.Module) -> nn.Module:
    """BN baseline of the paper: orthogonal conv weights, zero biases, BN γ=1, β=0."""
    return _plain_init(model, "orthogonal", nn.init.orthogonal_)


def he(model: nn.Module) -> nn.Module:
    """He-normal conv weights (fan_in, ReLU gain), zero biases, BN γ=1, β=0."""
    return _plain_init(model, "he", lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))


WN_SCHEMES: dict[str, Callable] = {"proposed": proposed, "proposed_he": proposed_he, "default": default,
                                   "default_orthogonal": default_orthogonal,
                                   "hanin": hanin, "datadep": datadep}
BN_SCHEMES: dict[str, Callable] = {"orthogonal": orthogonal, "he": he}
SCHEMES = {"wn": WN_SCHEMES, "bn": BN_SCHEMES}         # by model family (``wnzoo.registry.norm_of``)
DEFAULT_INIT = {"wn": "proposed", "bn": "orthogonal"}  # the paper's choice for each family
DATA_DEPENDENT = frozenset({"datadep"})                # schemes that read an input batch


def apply_init(model: nn.Module, scheme: str, batch: torch.Tensor | None = None) -> nn.Module:
    """Apply a scheme by name. ``batch`` (normalized inputs) goes to the data-dependent schemes,
    which require it; the others ignore it, so a caller can always pass one."""
    fn = WN_SCHEMES.get(scheme) or BN_SCHEMES.get(scheme)
    if fn is None:
        raise ValueError(f"unknown init {scheme!r}; WN models take one of {sorted(WN_SCHEMES)}, "
                         f"BN models one of {sorted(BN_SCHEMES)}")
    return fn(model, batch) if scheme in DATA_DEPENDENT else fn(model)
