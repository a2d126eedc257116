"""Resolve, download and verify pretrained weights (safetensors only, never pickle).

Published variants are listed in ``wnzoo/published.json`` (:mod:`wnzoo.published`): per
``arch.tag`` the Hub repo id, the pinned revision, the sha256 of ``model.safetensors`` and its
metrics. Resolution order for ``pretrained=True``:

1. ``pretrained_cfg_overlay=dict(file=...)`` (or timm's ``local-dir:``): a local safetensors file,
   or a folder holding one; it is the user's own file, so no pinned hash applies;
2. the Hugging Face cache / Hub through ``hf_hub_download`` (honours ``HF_ENDPOINT``,
   ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``cache_dir``). A published repo is read at its pinned
   revision; another repo (``hf-hub:org/name[@rev]``, ``pretrained_cfg_overlay=dict(hf_hub_id=...)``)
   at the revision named, or ``main``. A Hub that does not answer one request (:func:`hub_unreachable`)
   is not asked again (a download retries five times, 23 s of waiting): the cache alone is read;
3. for a published variant, the release copy kept in this repository under ``hub/<arch>.<tag>/``,
   so a fresh clone works with no network at all. A publish interrupted there is finished or undone
   first (:meth:`wnzoo.published.ReleaseDir.try_recover`); where it cannot be (another process is
   publishing, a read-only checkout), the copy the current record pins is read as it is.

Published weights must match the pinned sha256 whatever their source. timm's builder then loads
the verified file: it swaps the classifier for another ``num_classes`` and adapts the stem to
``in_chans``; anything else that does not fit the model is an error (``checkpoint_filter_fn``).
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError
from timm.models import get_pretrained_cfg, resolve_pretrained_cfg

from . import published
from ._io import WEIGHTS_FILE, WeightsError, check_weights_file, sha256_file, weights_path

__all__ = ["published_cfg", "resolve_pretrained", "resolve_weights", "hub_unreachable", "sha256_file", "RELEASE_DIR",
           "WEIGHTS_FILE", "WeightsError"]

_log = logging.getLogger(__name__)

RELEASE_DIR = Path(__file__).resolve().parent.parent / "hub"


def hub_unreachable(repo_id: str, filename: str, repo_type: str | None = None,
                    revision: str | None = None) -> str | None:
    """Why the Hub cannot serve ``filename`` of ``repo_id`` now, if it cannot: offline mode, or no answer
    to one request for the file's metadata, with the Hub's own timeout for those (``HF_HUB_ETAG_TIMEOUT``)
    and no retries, where a download (``hf_hub_download``, ``datasets``) retries five times, 23 s of waiting."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision)
    try:
        get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:  # the Hub answered (a missing repo or file): the download says what is wrong
        return None
    except (OSError, *HfHubHTTPError.__bases__) as e:  # refused, timed out, no such host (httpx's base error)
        return f"{constants.ENDPOINT} cannot be reached ({type(e).__name__}: {next(iter(str(e).splitlines()), '')})"
    return None


def published_cfg(name: str) -> dict:
    """The pretrained-cfg fields (weight location) of a published variant; empty if unpublished.

    Called when models are registered: a damaged ``published.json`` must not break ``import wnzoo``,
    so it is a warning here, and an error only when pretrained weights are asked for."""
    try:
        rec = published.get(name)
    except ValueError as e:
        warnings.warn(f"{e}; no pretrained weights are available until then", stacklevel=2)
        return {}
    return dict(hf_hub_id=rec.repo_id, hf_hub_filename=WEIGHTS_FILE) if rec else {}


def _requested_hub_id(name: str, cfg: dict) -> str | None:
    """The repo the caller named (``hf-hub:`` or an overlay), or None when the cfg holds the default
    registered with the model, which the current record supersedes."""
    hub_id = cfg.get("hf_hub_id")
    try:
        default = get_pretrained_cfg(name)
    except RuntimeError:  # a tag the zoo never registered (a fork's own config.json): the caller's repo
        default = None
    return None if default is not None and hub_id == default.hf_hub_id else hub_id


def _check_sha(path: Path, want: str | None, origin: str, fix: str) -> None:
    if want is None:
        return
    got = sha256_file(path)
    if got != want:
        raise WeightsError(f"sha256 mismatch for {path} ({origin}): expected {want}, got {got}. The file is "
                           f"corrupted, truncated or not the published one. {fix}")


def _cache_fix(path: Path) -> str:
    blob = path.resolve()
    also = f" and its link {path}" if blob != path else ""
    return (f"Delete the cached file {blob}{also} and load again; if the download still mismatches, the repo no "
            f"longer serves the pinned file: load a copy you trust with pretrained_cfg_overlay=dict(file=...)")


def _hub_error(e: Exception) -> str:
    """The exception's class and the first two lines of its message (status, then what was not found)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {' '.join(lines[:2])}"


def resolve_weights(name: str, cfg: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """Find the weight file of ``name`` (``arch.tag``) following the module's resolution order."""
    if cfg.get("file"):
        path = weights_path(cfg["file"])
        if not path.is_file():
            raise WeightsError(f"pretrained file {path} does not exist; pass the path of a model.safetensors file, "
                               f"or of the run folder holding one")
        return path  # an explicit file is the user's own: no pinned hash to compare with
    releases = published.ReleaseDir(RELEASE_DIR)
    releases.try_recover()  # before the record is read: it may be the one an interrupted publish committed
    rec = published.get(name)
    hub_id = _requested_hub_id(name, cfg) or (rec.repo_id if rec else None)
    if not hub_id:
        names = sorted(published.variants())
        raise WeightsError(f"{name} has no published weights yet; published variants: {names or 'none'}. "
                           f"Use pretrained=False, or pass pretrained_cfg_overlay=dict(file='model.safetensors') "
                           f"(eval/cifar.py: --checkpoint FILE --model ARCH)")
    repo_id, _, revision = hub_id.partition("@")
    revision = revision or None
    # The published repo is read at its pinned revision (or its release tag) and must match the pinned hash.
    pinned = rec is not None and repo_id == rec.repo_id and revision in (None, rec.revision, rec.hub_tag)
    want = rec.sha256 if pinned else None
    revision = revision or (rec.revision if pinned else None)
    origin = f"Hub {repo_id}@{revision or 'main'}"
    errors = []
    try:
        # A variant pinned to its local release commit is not on huggingface.co: ask only the cache there
        # (a mirror set with HF_ENDPOINT may serve it), instead of retrying a download that cannot succeed.
        local_only = pinned and not rec.pushed and constants.ENDPOINT.rstrip("/") == "https://huggingface.co"
        # A file cached at a commit is read with no request; else one request tells whether the Hub answers.
        cached = bool(revision and re.fullmatch(r"[0-9a-f]{40}", revision)) and isinstance(
            try_to_load_from_cache(repo_id, WEIGHTS_FILE, cache_dir=cache_dir, revision=revision), str)
        if not (local_only or cached) and hub_unreachable(repo_id, WEIGHTS_FILE, revision=revision):
            local_only = True
        path = Path(hf_hub_download(repo_id, WEIGHTS_FILE, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_only))
    except Exception as e:  # no network, offline cache miss, missing repo or file: fall back, keep the reason
        errors.append(f"{origin}: {_hub_error(e)}")
    else:
        _check_sha(path, want, origin, _cache_fix(path))
        return path
    release = releases.folder(name, rec) / WEIGHTS_FILE
    if pinned and release.is_file():
        _check_sha(release, want, "release copy", f"Restore it from the wnzoo repository (git checkout -- hub/{name})")
        # expected for a variant not pushed to the Hub yet (pinned to its local commit), a surprise otherwise
        _log.log(logging.WARNING if rec.pushed else logging.INFO, "%s unavailable (%s); loading the release "
                 "copy %s", origin, errors[0], release)
        return release
    if pinned:
        errors.append(f"release copy: {release} not found")
    raise WeightsError(f"could not get weights for {name} from {repo_id} (revision {revision or 'main'}):\n  "
                       + "\n  ".join(errors) + "\nCheck the repo id, your network or HF_ENDPOINT (offline: "
                       "HF_HUB_OFFLINE=1 needs a cached copy), or pass pretrained_cfg_overlay=dict(file=...) "
                       "with a local copy")


def resolve_pretrained(variant: str, pretrained_cfg: dict | str | None = None, overlay: dict | None = None,
                       cache_dir: str | os.PathLike | None = None) -> tuple[dict, Path]:
    """The pretrained cfg of a model being built (timm's resolution of its tag and overlay) and its
    weight file, found by :func:`resolve_weights` and checked to be a readable safetensors file."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay).to_dict()
    name = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
    return cfg, check_weights_file(resolve_weights(name, cfg, cache_dir))
