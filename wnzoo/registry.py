"""``create_model`` / ``list_models`` with timm's conventions, restricted to the zoo's models.

The models are registered in timm's own registry (``wnzoo.models``), so ``timm.create_model``
builds the same thing; these wrappers add the zoo's defaults and errors that suggest names. This
module also answers what a name alone says: a model's family (WN or BN) and its twin.
"""
from __future__ import annotations

import difflib
from typing import Iterable

import timm
from timm.models import (get_arch_name, is_model, list_models as _timm_list_models, load_model_config_from_hf,
                         parse_model_name, split_model_name_tag)
from timm.models._hub import load_model_config_from_path  # the local-dir: counterpart, not exported by timm

from . import published
from .models import resnet, wide_resnet

__all__ = ["create_model", "list_models", "is_zoo_model", "split_norm", "norm_of", "twin_name", "bn_twin", "did_you_mean",
           "unknown_model"]

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


def split_norm(name: str) -> tuple[str, str]:
    """``'wn_resnet56.c10'`` → ``('wn', 'resnet56.c10')``: a zoo name is its family, then the topology."""
    if not is_zoo_model(name):
        raise unknown_model(name)
    norm, rest = name.split("_", 1)
    return norm, rest


def norm_of(name: str) -> str:
    """``'wn'`` or ``'bn'``: the family of a zoo model or variant."""
    return split_norm(name)[0]


def twin_name(name: str) -> str:
    """The BN twin of a WN model or variant and vice versa (``wn_resnet56.c10`` ↔ ``bn_resnet56.c10``)."""
    norm, rest = split_norm(name)
    return f"{'bn' if norm == 'wn' else 'wn'}_{rest}"


def bn_twin(name: str) -> str | None:
    """``wn_resnet56.c10`` → ``bn_resnet56.c10``; ``None`` for BN models (they are the twins)."""
    return twin_name(name) if norm_of(name) == "wn" else None


def _typos(a: str, b: str) -> int:
    """Edit distance counting a swap of neighbours as one typo (optimal string alignment)."""
    before, prev = [], list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            d = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                d = min(d, before[j - 2] + 1)
            row.append(d)
        before, prev = prev, row
    return prev[-1]


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """`` Did you mean a, b?`` for the choices close to ``name``, or an empty string.

    difflib's ratio decides what is close; the fewest typos rank first, since the ratio ties a one-letter
    slip (``wn_resnet2O``) with a name two letters off (``wn_resnet32``)."""
    by_lower = {c.lower(): c for c in choices}  # a name typed in capitals is still close to its own
    typed = name.lower()
    ratio = {c: difflib.SequenceMatcher(None, typed, c).ratio() for c in by_lower}
    close = sorted((c for c, r in ratio.items() if r >= 0.5), key=lambda c: (_typos(typed, c), -ratio[c], c))
    return f" Did you mean {', '.join(by_lower[c] for c in close[:n])}?" if close else ""


def unknown_model(name: str) -> ValueError:
    hint = did_you_mean(name, list_models() + list_models(pretrained=True))
    return ValueError(f"unknown model {name!r}.{hint} See wnzoo.list_models() for all {len(list_models())} names.")


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None, init: str | None = None,
                 **kwargs):
    """Build a zoo model, e.g. ``create_model('wn_resnet110', pretrained=True)``.

    ``name`` is an architecture, ``arch.tag`` (``wn_resnet110.c10``; the bare name means the default
    tag), ``hf-hub:org/name[@revision]`` or ``local-dir:path``. A published variant's repo is built
    from the zoo's own record, so it loads from the Hub, a mirror, the cache or the release copy;
    another repo or folder goes to timm, which reads its ``config.json``, if that names a zoo model.
    ``init`` picks an init scheme of :mod:`wnzoo.init` (``init_batch=`` gives the input batch that
    data-dependent schemes use). Other keyword arguments go to timm's ``create_model``
    (``features_only``, ``in_chans``, ``pretrained_cfg_overlay``, ``cache_dir``) or the model class.
    """
    source, model_id = parse_model_name(name)
    rec = published.by_repo(model_id.partition("@")[0]) if source == "hf-hub" else None
    if rec is not None:
        kwargs["pretrained_cfg_overlay"] = dict(kwargs.get("pretrained_cfg_overlay") or {}, source="hf-hub",
                                                hf_hub_id=model_id)
        name = rec.name
    elif source:
        # timm builds what the repo's or folder's config.json names: only a zoo architecture, whose weights
        # go through the zoo's safetensors-only loader (timm's own would accept a pickled pytorch_model.bin)
        load = load_model_config_from_hf if source == "hf-hub" else load_model_config_from_path
        arch = load(model_id)[1]
        if not is_zoo_model(arch):
            raise ValueError(f"{name} holds a {arch}, not a wnzoo model; build it with timm.create_model")
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, init=init, **kwargs)
    arch, tag = split_model_name_tag(name)
    if arch not in _ZOO_ARCHS or not is_model(arch):
        raise unknown_model(name)
    if tag and f"{arch}.{tag}" not in timm.models.get_arch_pretrained_cfgs(arch):
        names = sorted(timm.models.get_arch_pretrained_cfgs(arch))  # full names: arch.tag
        raise ValueError(f"unknown tag {tag!r} for {arch}; it has {', '.join(names)}")
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, init=init, **kwargs)
