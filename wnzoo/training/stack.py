"""Several runs of one architecture trained as one model: HFTA (Wang et al., MLSys 2021, arXiv:2102.02344).

A CIFAR ResNet step at batch 128 is a chain of tiny kernels (16 to 64 channels at 32×32 or less),
so a GPU waits on launches, not arithmetic, and runs in separate processes only take turns on it.
Stacking N runs makes every kernel N times wider instead. Each conv of the N copies becomes one
conv over N·C channels with ``groups=N`` (run k's images fill channel group k), each BN one BN
over N·C channels, and the classifier a grouped linear layer. Run k owns the k-th chunk (along
dim 0) of every parameter, buffer, gradient and momentum buffer. A WN layer's per-channel norm,
a BN layer's statistics and the SGD update therefore stay the run's own, and a stacked run
computes what it would compute alone, up to float summation order.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from timm.layers import DropPath, SelectAdaptivePool2d
from torch import nn

from ..layers import WNConv2d

__all__ = ["GroupedLinear", "Stacked", "stack_models"]


class GroupedLinear(nn.Module):
    """``groups`` linear layers side by side: group k maps input features k·I..(k+1)·I-1 to outputs
    k·O..(k+1)·O-1. The weight is ``(out_features, in_features // groups)``, the layout of a
    grouped 1×1 conv, so run k's classifier is the k-th chunk of it."""

    def __init__(self, in_features: int, out_features: int, groups: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.unflatten(0, (self.groups, -1))                      # (G, O, I)
        out = torch.einsum("bgi,goi->bgo", x.unflatten(1, (self.groups, -1)), w)
        return (out + self.bias.unflatten(0, (self.groups, -1))).flatten(1)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}"


def _widen(module: nn.Module, n: int) -> nn.Module | None:
    """The layer of ``n`` stacked copies of ``module``; ``None`` for a module that holds no tensors
    of its own and works per channel as it is (activations, pooling, containers)."""
    if isinstance(module, WNConv2d):
        out = WNConv2d(module.in_channels * n, module.out_channels * n, module.kernel_size, module.stride,
                       module.padding, module.bias is not None, module.groups * n)
        out.init_role, out.stage_blocks, out.block_index = module.init_role, module.stage_blocks, module.block_index
        return out
    if type(module) is nn.Conv2d:
        return nn.Conv2d(module.in_channels * n, module.out_channels * n, module.kernel_size, module.stride,
                         module.padding, module.dilation, module.groups * n, module.bias is not None,
                         module.padding_mode)
    if type(module) is nn.BatchNorm2d:
        if module.momentum is None:  # a cumulative average divides by a count that is per run here
            raise ValueError("a BatchNorm with momentum=None cannot be stacked")
        return nn.BatchNorm2d(module.num_features * n, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
    if type(module) is nn.Linear:
        if module.bias is None:
            raise ValueError("a linear layer without a bias cannot be stacked")
        return GroupedLinear(module.in_features * n, module.out_features * n, n)
    if isinstance(module, DropPath) and module.drop_prob > 0:
        raise ValueError("stochastic depth (drop_path_rate > 0) drops an image's branch in every run of a stack "
                         "at once; train such runs alone")
    if isinstance(module, SelectAdaptivePool2d) and module.feat_mult() != 1:
        raise ValueError(f"global_pool={module.pool_type!r} mixes the runs' features; use 'avg' or 'max' to stack")
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        raise ValueError(f"{type(module).__name__} holds tensors that wnzoo cannot stack")
    return None


@dataclass
class Stacked:
    """A stacked model and how to read one run's tensors out of it.

    ``module`` maps ``(B, n·3, H, W)`` (:meth:`inputs`) to ``(B, n·classes)``; ``shapes`` are the
    shapes of one run's state-dict tensors. Run k's part of a stacked tensor ``t`` is its k-th
    chunk along dim 0; a run's scalar (a BN's batch count) is ``t[k]``.
    """

    module: nn.Module
    n: int
    shapes: dict[str, torch.Size]

    def member(self, tensors: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
        """Run ``k``'s tensors (views, no copies) of stacked ``tensors`` (a state dict, momentum, …)."""
        if self.n == 1:
            return dict(tensors)
        return {name: t.unflatten(0, (self.n, -1))[k].reshape(self.shapes[name]) for name, t in tensors.items()}

    def stack(self, members: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The stacked tensors of the runs' ``members`` (the inverse of :meth:`member`)."""
        if self.n == 1:
            return dict(members[0])
        return {name: torch.cat([m[name].reshape(1) if m[name].dim() == 0 else m[name] for m in members])
                for name in members[0]}

    def inputs(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The runs' image batches side by side in channels: run k's fill channel group k."""
        return xs[0] if self.n == 1 else torch.cat(list(xs), dim=1)  # keeps channels_last

    def labels(self, ys: Sequence[torch.Tensor]) -> torch.Tensor:
        """The runs' label batches as ``(B, n)``: column k is run k's (a view for one run)."""
        return ys[0].unsqueeze(1) if self.n == 1 else torch.stack(list(ys), dim=1)


def stack_models(models: Sequence[nn.Module]) -> Stacked:
    """One model computing ``models`` (same architecture, any weights) side by side; their
    weights, BN statistics included, copied in. A single model is returned as it is.

    Raises ``ValueError`` for a model that cannot be stacked (stochastic depth, a pooling that
    concatenates features, a layer wnzoo does not know).
    """
    n = len(models)
    if n == 0:
        raise ValueError("stack_models needs at least one model")
    shapes = {k: t.shape for k, t in models[0].state_dict().items()}
    for m in models[1:]:
        if {k: t.shape for k, t in m.state_dict().items()} != shapes:
            raise ValueError("only models of one architecture can be stacked")
    if n == 1:
        return Stacked(models[0], 1, shapes)
    stacked = copy.deepcopy(models[0])
    for name, module in list(stacked.named_modules()):
        wide = _widen(module, n)
        if wide is not None:
            parent, _, attr = name.rpartition(".")
            setattr(stacked.get_submodule(parent) if parent else stacked, attr, wide)
    out = Stacked(stacked, n, shapes)
    like = next(models[0].parameters())
    stacked.to(device=like.device, dtype=like.dtype)
    tensors = out.stack([m.state_dict() for m in models])
    for name, buf in list(stacked.named_buffers()):
        if buf.shape != tensors[name].shape:  # a BN's batch count: one per run
            parent, _, attr = name.rpartition(".")
            setattr(stacked.get_submodule(parent), attr, torch.zeros_like(tensors[name]))
    stacked.load_state_dict(tensors)
    stacked.train(models[0].training)
    return out
