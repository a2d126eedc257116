"""Resolve, download, verify and load pretrained weights (safetensors only, never pickle).

Published variants are listed in ``wnzoo/published.json`` (written by ``hub/publish.py``): per
``arch.tag`` the Hub repo id, the pinned revision, the sha256 of ``model.safetensors`` and its
metrics. Resolution order for ``pretrained=True``:

1. ``pretrained_cfg_overlay=dict(file=...)``: a local safetensors file, or a folder holding one;
2. the Hugging Face cache / Hub through ``hf_hub_download`` at the pinned revision (honours
   ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``cache_dir``);
3. the release copy kept in this repository under ``hub/<arch>.<tag>/``, so a fresh clone works
   with no network at all.

Whatever the source, published weights must match the pinned sha256, and loading is strict.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

__all__ = ["published", "published_cfg", "load_pretrained", "resolve_weights", "sha256_file",
           "load_weights_file", "PUBLISHED_JSON", "RELEASE_DIR", "WeightsError"]

_log = logging.getLogger(__name__)

PUBLISHED_JSON = Path(__file__).with_name("published.json")
RELEASE_DIR = Path(__file__).resolve().parent.parent / "hub"
WEIGHTS_FILE = "model.safetensors"


class WeightsError(RuntimeError):
    """Weights that cannot be found, verified or loaded; the message says how to fix it."""


@lru_cache(maxsize=None)
def published() -> dict[str, dict]:
    """``arch.tag`` → record (``repo_id``, ``revision``, ``sha256``, ``metrics``, …) of every published variant."""
    if not PUBLISHED_JSON.exists():
        return {}
    return json.loads(PUBLISHED_JSON.read_text())


def published_cfg(name: str) -> dict:
    """The pretrained-cfg fields (weight location) of a published variant; empty if unpublished."""
    rec = published().get(name)
    return dict(hf_hub_id=rec["repo_id"], hf_hub_filename=WEIGHTS_FILE) if rec else {}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (pickles included) is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass a model.safetensors file or a folder holding one")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path} is not a .safetensors file; wnzoo never unpickles weights. Convert it with "
                           f"safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupted: "
                           f"delete it and download it again") from e


def _check_sha(path: Path, want: str | None, origin: str) -> None:
    if want is None:
        return
    got = sha256_file(path)
    if got != want:
        raise WeightsError(f"sha256 mismatch for {path} ({origin}): expected {want}, got {got}. The file is "
                           f"corrupted or not the published one; delete it (or the HF cache entry) and load again, "
                           f"or pass force_download=True")


def resolve_weights(name: str, cfg: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """Find the weight file of ``name`` (``arch.tag``) following the module's resolution order."""
    rec = published().get(name)
    want = rec["sha256"] if rec else None
    if cfg.get("file"):
        path = Path(cfg["file"])
        path = path / WEIGHTS_FILE if path.is_dir() else path
        if not path.is_file():
            raise WeightsError(f"pretrained file {path} does not exist")
        return path  # an explicit file is the user's own: no pinned hash to compare with
    if rec is None:
        names = sorted(published())
        raise WeightsError(f"{name} has no published weights yet; published variants: {names or 'none'}. "
                           f"Use pretrained=False, or pass pretrained_cfg_overlay=dict(file='model.safetensors')")
    errors = []
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(rec["repo_id"], WEIGHTS_FILE, revision=rec["revision"], cache_dir=cache_dir))
        _check_sha(path, want, f"Hub {rec['repo_id']}@{rec['revision'][:12]}")
        return path
    except WeightsError:
        raise
    except Exception as e:  # no network, offline cache miss, missing repo or file: fall back, keep the reason
        errors.append(f"Hub: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    release = RELEASE_DIR / name / WEIGHTS_FILE
    if release.is_file():
        _check_sha(release, want, "release copy")
        _log.info("loaded %s from the release copy %s", name, release)
        return release
    errors.append(f"release copy: {release} not found")
    raise WeightsError(f"could not get weights for {name} (repo {rec['repo_id']}, revision {rec['revision']}):\n  "
                       + "\n  ".join(errors) + "\nCheck your network or HF_ENDPOINT, or pass "
                       "pretrained_cfg_overlay=dict(file=...) with a local copy")


def load_pretrained(model: nn.Module, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """Load the weights named by ``model.pretrained_cfg`` strictly; a different ``num_classes``
    drops the classifier (kept freshly initialized), as timm does."""
    cfg = model.pretrained_cfg
    name = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
    path = resolve_weights(name, cfg, cache_dir)
    state = load_weights_file(path)
    classifier = cfg.get("classifier", "fc")
    if getattr(model, "num_classes", None) != cfg.get("num_classes"):
        state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad_missing = [k for k in missing if not k.startswith(classifier + ".")]
        if bad_missing or unexpected:
            raise WeightsError(f"{path} does not fit {name}: missing {bad_missing[:5]}, unexpected {unexpected[:5]}")
        return model
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path} does not fit {name}: {e}") from e
    return model
