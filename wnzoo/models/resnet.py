"""CIFAR ResNets (6n+2, basic blocks): weight-normalized, initialized as Arpit et al. (2019), and BN twins.

WN block (docs/paper.md §2.1): ``x + conv2(ReLU(conv1(x)))`` with no ReLU on the residual stream,
a 1×1 projection shortcut only where the shape changes, no ReLU after the stem, global average
pooling and a plain (non-WN) linear classifier. The BN twin has the same graph with the paper's
pre-activation BN block, a BN after the stem and a final BN (no ReLU), as in the authors' ResNet
class. :class:`CifarResNet` also builds the paper's WideResNets (``wide_resnet.py``).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .. import paper
from .._datasets import DATASETS
from ..hub import load_pretrained, published_cfg
from ..init import DEFAULT_INIT, apply_init
from ..layers import WNConv2d

__all__ = ["CifarResNet", "WNBasicBlock", "PreActBasicBlock"]


class WNBasicBlock(nn.Module):
    """``conv2(ReLU(conv1(x))) + shortcut(x)``, every conv weight-normalized with a bias."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, stage_blocks: int, block_index: int) -> None:
        super().__init__()
        self.conv1 = WNConv2d(in_chs, out_chs, 3, stride, 1)
        self.conv1.init_role = "relu"
        self.conv2 = WNConv2d(out_chs, out_chs, 3, 1, 1)
        self.conv2.init_role, self.conv2.stage_blocks, self.conv2.block_index = "residual", stage_blocks, block_index
        self.shortcut = WNConv2d(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))) + self.shortcut(x)


class PreActBasicBlock(nn.Module):
    """The paper's BN block: ``conv2(ReLU(BN2(conv1(ReLU(BN1(x)))))) + x`` or ``+ conv1x1(BN1(x))``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, stage_blocks: int, block_index: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.bn1(x)
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarResNet(nn.Module):
    """Stem conv, three stages of ``blocks`` basic blocks (stride 2 at stages 2 and 3), GAP, linear.

    Args:
        blocks: residual blocks per stage (B_k, the same for every stage).
        widths: channels of the three stages.
        norm: ``'wn'`` (weight-normalized, paper's init) or ``'bn'`` (the BN twin).
        stem_width: channels of the stem conv (16 for every model of the paper).
        stem_norm / final_norm: BN after the stem / before pooling (BN family only; the paper's
            ResNet class has both, its WideResNet class neither).
        init: init scheme name (``wnzoo.init``); default ``wnzoo.init.DEFAULT_INIT[norm]``.
        init_batch: a normalized input batch, which data-dependent schemes use (``datadep``).
    """

    def __init__(self, blocks: int, widths: Sequence[int] = (16, 32, 64), norm: str = "wn", num_classes: int = 10,
                 in_chans: int = 3, stem_width: int = 16, stem_norm: bool = True, final_norm: bool = True,
                 init: str | None = None, init_batch: torch.Tensor | None = None) -> None:
        super().__init__()
        if norm not in DEFAULT_INIT:
            raise ValueError(f"norm must be {' or '.join(map(repr, DEFAULT_INIT))}, got {norm!r}")
        if blocks < 1 or len(widths) != 3:
            raise ValueError(f"need blocks >= 1 and three stage widths, got blocks={blocks}, widths={widths}")
        self.norm, self.blocks, self.widths = norm, blocks, tuple(widths)
        self.num_classes, self.num_features = num_classes, widths[-1]
        wn = norm == "wn"
        self.stem = WNConv2d(in_chans, stem_width, 3, 1, 1) if wn else nn.Conv2d(in_chans, stem_width, 3, 1, 1)
        self.stem_norm = nn.BatchNorm2d(stem_width) if (not wn and stem_norm) else nn.Identity()
        block_cls = WNBasicBlock if wn else PreActBasicBlock
        stages, in_chs = [], stem_width
        for i, out_chs in enumerate(widths):
            stage = [block_cls(in_chs if b == 0 else out_chs, out_chs, 2 if (i > 0 and b == 0) else 1, blocks, b + 1)
                     for b in range(blocks)]
            stages.append(nn.Sequential(*stage))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.final_norm = nn.BatchNorm2d(in_chs) if (not wn and final_norm) else nn.Identity()
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        apply_init(self, init or DEFAULT_INIT[norm], init_batch)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_norm(self.stages(self.stem_norm(self.stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        if global_pool != "avg":
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def residual_blocks(self) -> Iterator[tuple[int, nn.Module]]:
        """(stage index, block) for every residual block, in forward order."""
        for s, stage in enumerate(self.stages):
            for block in stage:
                yield s, block

    def bn_folds(self) -> list[tuple[str, str]]:
        """(producer, BN) pairs that :func:`wnzoo.fuse` folds: a conv followed by a BN, or the
        final BN (through GAP) into the classifier."""
        folds = [("stem", "stem_norm")] if isinstance(self.stem_norm, nn.BatchNorm2d) else []
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                if isinstance(block, PreActBasicBlock):
                    folds.append((f"stages.{s}.{b}.conv1", f"stages.{s}.{b}.bn2"))
        if isinstance(self.final_norm, nn.BatchNorm2d) and isinstance(self.fc, nn.Linear):
            folds.append(("fc", "final_norm"))
        return folds


def cifar_cfg(dataset: str = "cifar10", **kwargs) -> dict:
    """timm pretrained cfg for a CIFAR model; normalization stats come from ``wnzoo._datasets``."""
    ds = DATASETS[dataset]
    return dict(input_size=(3, 32, 32), mean=ds.mean, std=ds.std, num_classes=ds.num_classes, crop_pct=1.0,
                interpolation="bilinear", first_conv="stem", classifier="fc", license="mit",
                paper_ids=f"arXiv:{paper.ARXIV_ID}", paper_name=paper.TITLE, **kwargs)


def zoo_cfgs(archs: Sequence[str]) -> dict:
    """A cfg per arch and dataset tag (``arch.c10``, ``arch.c100``), with the published weights' locations."""
    return {f"{arch}.{ds.tag}": cifar_cfg(ds.name, **published_cfg(f"{arch}.{ds.tag}"))
            for arch in archs for ds in DATASETS.values()}


def create_cifar_model(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    """Build through timm (cfg resolution, overlays), then load weights with :mod:`wnzoo.hub`."""
    cache_dir = kwargs.pop("cache_dir", None)
    model = build_model_with_cfg(CifarResNet, variant, pretrained=False, **kwargs)
    if pretrained:
        load_pretrained(model, cache_dir=cache_dir)
    return model


_DEPTHS = (20, 32, 44, 56, 110, 164, 1202)
default_cfgs = generate_default_cfgs(zoo_cfgs([f"{n}_resnet{d}" for n in ("wn", "bn") for d in _DEPTHS]))


def _resnet(variant: str, depth: int, norm: str, pretrained: bool, **kwargs) -> CifarResNet:
    return create_cifar_model(variant, pretrained, **dict(dict(blocks=(depth - 2) // 6, norm=norm), **kwargs))


@register_model
def wn_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet20", 20, "wn", pretrained, **kwargs)


@register_model
def wn_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet32", 32, "wn", pretrained, **kwargs)


@register_model
def wn_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet44", 44, "wn", pretrained, **kwargs)


@register_model
def wn_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet56", 56, "wn", pretrained, **kwargs)


@register_model
def wn_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet110", 110, "wn", pretrained, **kwargs)


@register_model
def wn_resnet164(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Basic-block 6·27+2 net, what the authors' code builds for 'ResNet-164' (docs/paper.md §2.3)."""
    return _resnet("wn_resnet164", 164, "wn", pretrained, **kwargs)


@register_model
def wn_resnet1202(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("wn_resnet1202", 1202, "wn", pretrained, **kwargs)


@register_model
def bn_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet20", 20, "bn", pretrained, **kwargs)


@register_model
def bn_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet32", 32, "bn", pretrained, **kwargs)


@register_model
def bn_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet44", 44, "bn", pretrained, **kwargs)


@register_model
def bn_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet56", 56, "bn", pretrained, **kwargs)


@register_model
def bn_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet110", 110, "bn", pretrained, **kwargs)


@register_model
def bn_resnet164(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet164", 164, "bn", pretrained, **kwargs)


@register_model
def bn_resnet1202(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _resnet("bn_resnet1202", 1202, "bn", pretrained, **kwargs)
