"""Weight-normalized layers with an explicit direction ``v`` and gain ``g``, and inference fusing.

State-dict keys of a WN layer (``prefix`` is the module path):

- ``prefix.g``    gain, shape ``(out,)``: one scalar per output unit / channel;
- ``prefix.v``    direction, shape of the plain weight (``(out, in)`` or ``(out, in, kh, kw)``);
- ``prefix.bias`` bias, shape ``(out,)`` (absent when ``bias=False``).

The effective weight is ``w = g * v / ||v||`` with the norm over all dims but the first, computed
once per forward call. Two legacy formats load transparently into these keys:
``weight_g``/``weight_v`` (``torch.nn.utils.weight_norm``, the authors' code) and
``parametrizations.weight.original0``/``original1`` (``torch.nn.utils.parametrizations.weight_norm``).
"""
import copy
from typing import Iterable, List

import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["WNConv2d", "WNLinear", "is_wn", "rename_legacy_keys", "adapt_wn_input_conv", "fuse", "fold_bn_into_linear"]

_LEGACY_KEYS = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))


def _effective_weight(g: torch.Tensor, v: torch.Tensor, norm_dims: List[int], gain_shape: List[int]) -> torch.Tensor:
    """``g * v / ||v||``, the norm over ``norm_dims`` (all but the first), ``g`` viewed as ``gain_shape``."""
    return v * (g / torch.linalg.vector_norm(v, dim=norm_dims)).view(gain_shape)


class _WeightNorm(nn.Module):
    """Shared parameter handling of the WN layers.

    ``init_role`` tells the init schemes which gain rule applies (set by the model that owns the
    layer): ``'relu'`` (γ = 2, followed by ReLU), ``'residual'`` (γ = 1/B_k, last layer of a
    residual branch; ``stage_blocks`` and ``block_index`` are set too) or ``'linear'`` (γ = 1).
    """

    # Class-level names kept out of TorchScript: they are only used when building or fusing.
    __jit_unused_properties__ = ["fan_in", "fan_out"]
    groups = 1  # a grouped conv (WNConv2d) sets its own

    def _init_params(self, out_features: int, v_shape: tuple[int, ...], bias: bool) -> None:
        self.v = nn.Parameter(torch.empty(v_shape))
        self.g = nn.Parameter(torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Reduce over every dim but the first in place: ``v.flatten(1)`` would copy a channels_last
        # ``v`` on every call; the gain is reshaped to broadcast against ``v``. Lists, not tuples,
        # because TorchScript and torch.fx take them as constant int lists.
        self._norm_dims: List[int] = list(range(1, len(v_shape)))
        self._gain_shape: List[int] = [-1] + [1] * (len(v_shape) - 1)
        self.init_role = "linear"
        self.stage_blocks = 1
        self.block_index = 1
        nn.init.kaiming_normal_(self.v)
        with torch.no_grad():
            self.g.copy_(self.v_norm())

    def v_norm(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.v, dim=self._norm_dims)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``g * v / ||v||`` (a fresh tensor each call)."""
        return _effective_weight(self.g, self.v, self._norm_dims, self._gain_shape)

    def to_plain(self) -> nn.Module:
        """The plain layer computing the same function, with the effective weight frozen in."""
        plain = self._plain()
        with torch.no_grad():
            plain.weight.copy_(self.weight)
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain

    def _plain(self) -> nn.Module:
        raise NotImplementedError

    @property
    def fan_in(self) -> int:
        return self.v[0].numel()

    @property
    def fan_out(self) -> int:
        return self.v.shape[0] // self.groups * self.v[0, 0].numel()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_legacy(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _rename_legacy(state_dict: dict, prefix: str) -> None:
    """The legacy keys of the WN layer at ``prefix``, if any, renamed to ``g``/``v`` in place."""
    for g_key, v_key in _LEGACY_KEYS:
        if prefix + g_key in state_dict and prefix + v_key in state_dict:
            state_dict[prefix + "g"] = state_dict.pop(prefix + g_key).reshape(-1)
            state_dict[prefix + "v"] = state_dict.pop(prefix + v_key)


def rename_legacy_keys(state_dict: dict) -> dict:
    """Every WN layer's legacy keys renamed to ``g``/``v`` in place, for code that compares a
    checkpoint's keys with a model's before loading it."""
    for g_key, _ in _LEGACY_KEYS:
        for prefix in [k[:-len(g_key)] for k in state_dict if k.endswith(g_key)]:
            _rename_legacy(state_dict, prefix)
    return state_dict


class WNConv2d(_WeightNorm):
    """2D convolution with weight normalization per output channel.

    ``groups`` as in ``nn.Conv2d``; each output channel's norm covers its own group's inputs only,
    which is what lets several runs train as one grouped model (:mod:`wnzoo.training.stack`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True, groups: int = 1) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be divisible by "
                             f"groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        self._init_params(out_channels, (out_channels, in_channels // groups, kernel_size, kernel_size), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)

    def _plain(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         groups=self.groups, bias=self.bias is not None, device=self.v.device, dtype=self.v.dtype)

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}{groups}, bias={self.bias is not None}, role={self.init_role}")


class WNLinear(_WeightNorm):
    """Fully connected layer with weight normalization per output unit."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_params(out_features, (out_features, in_features), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _plain(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.v.device,
                         dtype=self.v.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, role={self.init_role}"


def is_wn(module: nn.Module) -> bool:
    return isinstance(module, _WeightNorm)


@torch.no_grad()
def adapt_wn_input_conv(in_chans: int, g: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's ``adapt_input_conv`` for a WN conv's ``(g, v)``: the effective weight is adapted, then
    split again (``g = ||w||``, ``v = w``), so the layer computes exactly the adapted plain conv."""
    w = adapt_input_conv(in_chans, _effective_weight(g, v, [1, 2, 3], [-1, 1, 1, 1]))
    return torch.linalg.vector_norm(w, dim=(1, 2, 3)), w


@torch.no_grad()
def fold_bn_into_linear(bn: nn.BatchNorm2d, linear: nn.Linear) -> nn.Linear:
    """Fold an eval-mode BN that precedes ``linear`` through a (linear) global average pool.

    torch's ``fuse_linear_bn_eval`` folds a BN that *follows* a linear layer; this one comes before it.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    out = nn.Linear(linear.in_features, linear.out_features, device=linear.weight.device,
                    dtype=linear.weight.dtype)
    out.weight.copy_(linear.weight * scale.view(1, -1))
    out.bias.copy_(linear.bias + linear.weight @ shift)
    return out


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def fuse(model: nn.Module) -> nn.Module:
    """Return an eval-mode inference copy with WN folded into plain weights and BN into convs.

    WN layers become ``nn.Conv2d`` / ``nn.Linear`` with plain ``weight`` keys, so the norm is not
    recomputed per call. BN layers a zoo model lists in ``bn_folds()`` (a BN right after a conv, or
    the final BN before pooling and the classifier) are folded away. The input model is untouched.
    """
    fused = copy.deepcopy(model).eval()
    for name, module in list(fused.named_modules()):
        if is_wn(module):
            _set(fused, name, module.to_plain())
    folds: Iterable[tuple[str, str]] = fused.bn_folds() if hasattr(fused, "bn_folds") else ()
    for producer, bn_name in folds:
        bn, prod = fused.get_submodule(bn_name), fused.get_submodule(producer)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):  # folded already: fuse(fuse(m)) == fuse(m)
            continue
        if isinstance(prod, nn.Conv2d):
            _set(fused, producer, fuse_conv_bn_eval(prod, bn))
        else:
            _set(fused, producer, fold_bn_into_linear(bn, prod))
        _set(fused, bn_name, nn.Identity())
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused
