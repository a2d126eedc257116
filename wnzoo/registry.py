"""``create_model`` / ``list_models`` with timm's conventions, restricted to the zoo's models.

The models are registered in timm's own registry (``wnzoo.models``), so ``timm.create_model``
builds the same thing; these wrappers add the zoo's defaults and errors that suggest names.
"""
from __future__ import annotations

import difflib

import timm
from timm.models import get_arch_name, is_model, list_models as _timm_list_models

from .models import resnet, wide_resnet

__all__ = ["create_model", "list_models", "is_zoo_model", "twin_name"]

# timm keys its module index by the file's last name, which clashes with timm's own resnet.py,
# so the zoo keeps its own list of architectures.
_ZOO_ARCHS = frozenset(resnet.default_cfgs) | frozenset(wide_resnet.default_cfgs)


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Zoo model names matching a wildcard ``filter``; with ``pretrained`` the ``arch.tag`` names that
    have published weights (as ``timm.list_models``)."""
    names = _timm_list_models(filter or "*", pretrained=pretrained, include_tags=pretrained)
    return [n for n in names if get_arch_name(n) in _ZOO_ARCHS]


def is_zoo_model(name: str) -> bool:
    return get_arch_name(name) in _ZOO_ARCHS


def twin_name(name: str) -> str:
    """The BN twin of a WN model or variant and vice versa (``wn_resnet56.c10`` ↔ ``bn_resnet56.c10``)."""
    norm, rest = name.split("_", 1)
    return f"{'bn' if norm == 'wn' else 'wn'}_{rest}"


def _unknown(name: str) -> ValueError:
    names = list_models() + list_models(pretrained=True)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown model {name!r}.{hint} See wnzoo.list_models() for all {len(list_models())} names.")


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None, init: str | None = None,
                 **kwargs):
    """Build a zoo model, e.g. ``create_model('wn_resnet110', pretrained=True)``.

    ``name`` is an architecture or ``arch.tag`` (``wn_resnet110.c10``; the bare name means the
    default tag). ``init`` picks an init scheme of :mod:`wnzoo.init` (``init_batch=`` for datadep).
    Other keyword arguments go to timm's ``create_model`` (``pretrained_cfg_overlay``,
    ``cache_dir``) or the model class.
    """
    arch, tag = name.split(".", 1) if "." in name else (name, "")
    if arch not in _ZOO_ARCHS or not is_model(arch):
        raise _unknown(name)
    if tag and f"{arch}.{tag}" not in timm.models.get_arch_pretrained_cfgs(arch):
        tags = sorted(timm.models.get_arch_pretrained_cfgs(arch))
        raise ValueError(f"unknown tag {tag!r} for {arch}; it has {', '.join(f'{arch}.{t}' for t in tags)}")
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, init=init, **kwargs)
