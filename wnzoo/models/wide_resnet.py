"""The paper's WideResNets (6n+4 layers, width k): weight-normalized and BN twins.

Same blocks as ``resnet.py``; the graph follows the authors' WideResNet class (docs/paper.md §2.2):
stem 3→16 with no norm or ReLU after it, stages of 16k/32k/64k channels, then global average
pooling directly (no final BN, even in the BN twin), then a linear classifier.
"""
from __future__ import annotations

from timm.models import generate_default_cfgs, register_model

from .resnet import CifarResNet, create_cifar_model, zoo_cfgs

__all__: list[str] = []

_WRNS = ((16, 4), (16, 8), (28, 10), (40, 4), (40, 10))
default_cfgs = generate_default_cfgs(zoo_cfgs([f"{n}_wrn{d}_{k}" for n in ("wn", "bn") for d, k in _WRNS]))


def _wrn(variant: str, depth: int, k: int, norm: str, pretrained: bool, **kwargs) -> CifarResNet:
    args = dict(blocks=(depth - 4) // 6, widths=(16 * k, 32 * k, 64 * k), norm=norm, stem_norm=False,
                final_norm=False)
    return create_cifar_model(variant, pretrained, **dict(args, **kwargs))


@register_model
def wn_wrn16_4(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("wn_wrn16_4", 16, 4, "wn", pretrained, **kwargs)


@register_model
def wn_wrn16_8(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("wn_wrn16_8", 16, 8, "wn", pretrained, **kwargs)


@register_model
def wn_wrn28_10(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("wn_wrn28_10", 28, 10, "wn", pretrained, **kwargs)


@register_model
def wn_wrn40_4(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("wn_wrn40_4", 40, 4, "wn", pretrained, **kwargs)


@register_model
def wn_wrn40_10(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("wn_wrn40_10", 40, 10, "wn", pretrained, **kwargs)


@register_model
def bn_wrn16_4(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("bn_wrn16_4", 16, 4, "bn", pretrained, **kwargs)


@register_model
def bn_wrn16_8(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("bn_wrn16_8", 16, 8, "bn", pretrained, **kwargs)


@register_model
def bn_wrn28_10(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("bn_wrn28_10", 28, 10, "bn", pretrained, **kwargs)


@register_model
def bn_wrn40_4(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("bn_wrn40_4", 40, 4, "bn", pretrained, **kwargs)


@register_model
def bn_wrn40_10(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _wrn("bn_wrn40_10", 40, 10, "bn", pretrained, **kwargs)
