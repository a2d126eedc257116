"""Turn a finished training run into a published, documented and verified Hub repo (CLI: ``hub/publish.py``).

:func:`publish` does, in order, and stops at the first problem:

1. reads the run folder (finished, its model and dataset match the repo id) and finds the recipe in
   ``configs/`` that reproduces it (differences become ``--set`` overrides in the card's command);
2. builds the Hub folder: ``model.safetensors`` (re-saved from a strict load, so its keys are the
   model's own), ``config.json`` (timm's schema plus wnzoo's fields, where it trained among them),
   ``recipe.yaml`` (the resolved training config), ``metrics.jsonl``, and from those
   (:func:`write_derived`) ``curves.png`` and ``README.md`` (the model card); the run's resume state
   (``state.safetensors``, with optimizer momentum) is never published;
3. verifies it: strict load through the path users take, re-evaluation of the fused model on the
   full test split on CPU (the card states this number, never one from the training log, and the
   two must agree), the card's, config's and record's numbers and hashes equal;
4. pins it. With ``push=True`` it uploads through ``HfApi`` (``create_repo``, ``upload_folder``,
   ``create_tag`` ``v1``, ``v2``, …) to ``HF_ENDPOINT``, downloads the commit back to compare every
   file, and pins the Hub's commit sha. Without a push it pins the sha of a *deterministic* local git
   commit of the folder (fixed author, date and message, no parent): anyone can recompute it from the
   release copy with :func:`commit_folder`, and a git-based mirror built from the release copy (olah's
   ``mirrors-path``, ``git push``) serves exactly that revision. The Hub itself does not know such a
   revision, so users load the release copy until a ``--push`` replaces the pin with the Hub's commit;
5. keeps the release copy ``hub/<arch>.<tag>/`` (weight files up to 10 MB), records the variant in
   ``wnzoo/published.json`` and regenerates ``MODEL_CARD.md``, as one transaction
   (:class:`~wnzoo.published.ReleaseDir`), under a lock: the copy is staged as ``hub/.<name>.new``, a
   journal (``hub/.publish-journal.json``) records the new record and the cards, and the atomic save of
   ``published.json`` is the commit; then the old copy goes aside (``.old``), the new one takes its
   place, and the old one, the journal and the cards follow. Until the commit the old variant loads as
   before, after it the new one; the next publish or load of pretrained weights finishes or undoes an
   interrupted publish, and nothing is deleted before the new record is in place. The twin's card
   names the variant's accuracy, so the same transaction regenerates the twin's release copy
   (:func:`refresh` does it alone) and re-pins it; a twin on the Hub changes only with a push
   (``hub/publish.py --refresh TWIN --push``), which the publish says.

Checks that need no work come first: the run (a diverged one needs a changed recipe, not a resume),
its model, dataset and its weights' number of classes against the repo id, then the published variant
it would replace, and with ``push=True`` the endpoint and the token. The temporary folders of publishes
that were killed are deleted when the next one starts.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import torch
import yaml
from filelock import Timeout
from huggingface_hub import HfApi, ModelCard, get_token, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from timm.models import filter_pretrained_cfg, get_pretrained_cfg_value, split_model_name_tag

from . import __version__, evaluation, published
from ._cli import UserError
from ._datasets import DATASETS, TAG_DATASET
from ._io import (atomic_write, check_weights_file, check_writable, load_weights_file, save_safetensors, sha256_file,
                  write_json)
from .data import DeviceData, load_split
from .hub import RELEASE_DIR
from .layers import fuse
from .model_card import MODEL_CARD, variant_card, zoo_card, zoo_status
from .published import PUBLISHED_JSON, STATUS_END, STATUS_START, HubFolder, PublishedVariant, ReleaseDir
from .registry import create_model, is_zoo_model, twin_name
from .training import RunFolder, load_config
from .training.config import NON_RECIPE_KEYS
from .training.plots import plot_curves

__all__ = ["publish", "refresh", "PublishError", "Run", "build_folder", "write_derived", "measure", "verify_folder",
           "commit_folder", "commit_message", "push_folder", "check_push_access", "recover", "write_zoo_card",
           "write_readme_status", "STATUS_START", "STATUS_END"]

_log = logging.getLogger(__name__)

REPO_ROOT = RELEASE_DIR.parent
RELEASE_MAX_BYTES = 10_000_000        # per weight file kept in the repository
RELEASE_TOTAL_MAX_BYTES = 48 << 20    # all release copies together
LOG_TOLERANCE = 1.0                   # points of top-1 between the training log and the publish-time measurement
LOCK_WAIT_S = 60.0                    # for another publish's last phase (seconds, a push is outside it)
# The HTTP library's base error, which huggingface_hub's HfHubHTTPError derives from (httpx's; requests' is an
# OSError): a connection refused, a timeout, a name that does not resolve.
NETWORK_ERRORS = (OSError, *HfHubHTTPError.__bases__)
# A fixed identity and date make the local commit (and so the pinned revision) a function of the files only.
_GIT_ENV = dict(GIT_AUTHOR_NAME="wnzoo", GIT_AUTHOR_EMAIL="wnzoo@users.noreply.huggingface.co",
                GIT_COMMITTER_NAME="wnzoo", GIT_COMMITTER_EMAIL="wnzoo@users.noreply.huggingface.co",
                GIT_AUTHOR_DATE="2019-12-08T00:00:00+0000", GIT_COMMITTER_DATE="2019-12-08T00:00:00+0000",
                GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")


class PublishError(UserError):
    """A run that cannot be published as asked, or a Hub folder that fails verification; the message says why."""


@dataclass
class Run:
    """A finished training run folder (wnzoo/training/loop.py)."""

    dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "Run":
        d = Path(run_dir)
        folder = RunFolder(d)
        summary = folder.read_summary() if (d / RunFolder.SUMMARY).is_file() else {}
        if summary.get("status") == "diverged":  # a resume would diverge again at the same step
            at = summary.get("diverged_at") or {}
            where = (f" at epoch {at['epoch']}, step {at['step']} (lr {at['lr']:.4g})"
                     if {"epoch", "step", "lr"} <= at.keys() else "")
            raise PublishError(f"run {d} diverged{where}, so there is nothing to publish and resuming it diverges "
                               f"again: train it again into a new --out with a changed recipe, a lower lr or a "
                               f"longer warmup (warmup_epochs)")
        files = (RunFolder.WEIGHTS, RunFolder.CONFIG, RunFolder.METRICS, RunFolder.SUMMARY)
        missing = [f for f in files if not (d / f).is_file()]
        if missing and (d / RunFolder.STATE).is_file():
            raise PublishError(f"run {d} holds only its training state; write its weights, metrics and summary "
                               f"first: python train/train.py --export {d}")
        if missing == [RunFolder.SUMMARY]:
            raise PublishError(f"run {d} has no summary.json yet: it is still training, or it stopped; finish it "
                               f"(python train/train.py -c ... --out {d} --resume)")
        if missing:
            raise PublishError(f"{d} is not a finished run folder: {', '.join(missing)} missing "
                               f"(train it with python train/train.py -c configs/X.yaml)")
        if summary.get("status") != "finished":
            done = folder.has_state() and folder.epochs_done() >= folder.read_config().get("epochs", float("inf"))
            fix = f"python train/train.py --export {d}" if done else f"python train/train.py --out {d} --resume"
            raise PublishError(f"run {d} has status {summary.get('status')!r}, not 'finished'; "
                               f"{'its state is finished: rebuild its files' if done else 'finish it first'} ({fix})")
        history = folder.read_metrics()
        # The card plots and tabulates this log: it must be the run's own, as its state (or summary) records it.
        truth, origin = ((folder.read_state(tensors=False).history, RunFolder.STATE) if folder.has_state()
                         else (history[:-1] + [summary.get("final")], RunFolder.SUMMARY))
        if history != truth or len(history) != summary.get("epochs_done"):
            raise PublishError(f"{d / RunFolder.METRICS} does not match the run's {origin}: it was edited, or comes "
                               f"from another run; rebuild it with python train/train.py --export {d}")
        config = folder.read_config()
        if config.get("model_args"):  # the weights would not load into the architecture the name promises
            raise PublishError(f"run {d} trained {config['model']} with model_args={config['model_args']}, not the "
                               f"registered architecture; only runs of registered architectures are published")
        return cls(d, config, summary, history)

    def logged_test_acc(self) -> float | None:
        """The final test accuracy the training loop logged (None when it evaluated on a validation split)."""
        return self.summary.get("test_acc")


def parse_repo_id(repo_id: str) -> tuple[str, str, str]:
    """``'wnzoo/wn_resnet20.c10'`` → ``('wn_resnet20.c10', 'wn_resnet20', 'c10')``, checked against the
    Hub's rules and the zoo."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"repo id {repo_id!r} is not valid on the Hub: {e}") from None
    org, _, name = repo_id.partition("/")
    arch, tag = split_model_name_tag(name)
    if not org or not is_zoo_model(arch) or tag not in TAG_DATASET:
        raise PublishError(f"repo id {repo_id!r} must be '<org>/<arch>.<tag>' with a zoo architecture and a tag in "
                           f"{sorted(TAG_DATASET)}, e.g. 'wnzoo/wn_resnet56.c10'")
    return name, arch, tag


def _check_fits(run: Run, name: str) -> None:
    """The run trained the model and dataset ``name`` (``arch.tag``) stands for, and its weights' classifier
    has that dataset's number of classes (weights copied in from another run may not); from the header only."""
    arch, tag = split_model_name_tag(name)
    dataset = DATASETS[TAG_DATASET[tag]]
    if run.config.get("model") != arch or run.config.get("dataset") != dataset.name:
        raise PublishError(f"run {run.dir} trained {run.config.get('model')} on {run.config.get('dataset')}, but "
                           f"{name} is {arch} on {dataset.name}; pick the matching --repo-id")
    file = check_weights_file(run.dir / RunFolder.WEIGHTS)
    key = f"{get_pretrained_cfg_value(name, 'classifier')}.weight"
    with safe_open(str(file), "pt") as f:
        classes = f.get_slice(key).get_shape()[0] if key in set(f.keys()) else dataset.num_classes
    if classes != dataset.num_classes:
        other = [f" (wnzoo/{arch}.{d.tag})" for d in DATASETS.values() if d.num_classes == classes]
        raise PublishError(f"{file} holds a classifier for {classes} classes, but {name} is for {dataset.num_classes} "
                           f"classes: these weights are of another dataset; pick the matching --repo-id"
                           f"{''.join(other[:1])}")


def recipe_for(run: Run, recipe: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """The recipe file (repo-relative) that reproduces ``run`` and the ``--set`` overrides it still needs:
    ``recipe``, else the one the run was trained from, else ``configs/<run folder name>.yaml``."""
    if recipe:
        candidates = [Path(recipe)]
    else:  # where the run was trained (maybe another machine), then this repository's copy, then the folder's name
        trained = Path(run.config.get("recipe") or f"{run.dir.name}.yaml")
        candidates = [trained, REPO_ROOT / "configs" / trained.name, REPO_ROOT / "configs" / f"{run.dir.name}.yaml"]
    candidates = [p if p.is_absolute() else Path.cwd() / p for p in candidates]
    path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
        raise PublishError(f"no recipe {path} for run {run.dir.name}; pass --recipe configs/X.yaml (the card links "
                           f"it and states the command that reproduces the run)")
    try:
        rel = path.resolve().relative_to(REPO_ROOT)
    except ValueError:
        raise PublishError(f"recipe {path} is outside the repository {REPO_ROOT}; the card links it, so it must "
                           f"be a tracked file such as configs/X.yaml") from None
    return rel.as_posix(), recipe_overrides(run.config, path)


def recipe_overrides(config: dict[str, Any], recipe_path: Path) -> list[str]:
    """The ``--set`` overrides (shell-quoted) that turn the recipe at ``recipe_path`` into ``config``."""
    want = load_config(recipe_path).to_dict()
    return [shlex.quote(f"{k}={v if isinstance(v, str) else json.dumps(v)}") for k, v in config.items()
            if k not in NON_RECIPE_KEYS and want.get(k) != v]


def recipe_notes(recipe_path: Path) -> str:
    """The leading comment block of a recipe file, which says why the recipe is what it is."""
    notes = []
    for line in recipe_path.read_text().splitlines():
        if not line.startswith("#"):
            break
        notes.append(line[1:].strip())
    return "\n".join(notes).strip()


def build_folder(run: Run, name: str, out: Path) -> torch.nn.Module:
    """Write the weights (strictly loaded and re-saved), the recipe and the metrics into ``out``;
    returns the model holding the weights."""
    _check_fits(run, name)
    arch, tag = split_model_name_tag(name)
    dataset = DATASETS[TAG_DATASET[tag]]
    state = load_weights_file(run.dir / RunFolder.WEIGHTS)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise PublishError(f"{run.dir / RunFolder.WEIGHTS} holds non-finite values in {bad[:5]}; the run diverged")
    model = create_model(arch, num_classes=dataset.num_classes)
    _check_shapes(state, model, run.dir / RunFolder.WEIGHTS, name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PublishError(f"{run.dir / RunFolder.WEIGHTS} does not fit {arch}: missing keys {missing[:5]}, "
                           f"unexpected {unexpected[:5]}. A 'module.' or '_orig_mod.' prefix comes from a DDP or "
                           f"compiled wrapper: save the unwrapped model's state_dict()")
    out.mkdir(parents=True, exist_ok=True)
    # The published files' metadata: any other would change their bytes, and so their pinned sha256.
    save_safetensors(out / HubFolder.WEIGHTS, model.state_dict(), {"format": "pt"})
    (out / HubFolder.RECIPE).write_text(yaml.safe_dump(run.config, sort_keys=False))
    shutil.copyfile(run.dir / RunFolder.METRICS, out / HubFolder.METRICS)
    return model


def _trained_on(summary: dict[str, Any]) -> dict[str, Any]:
    """Where a run trained, from its summary, as ``config.json`` keeps it for the card: the devices'
    names in order (``cpu``, a GPU's), and the processes of a distributed run."""
    hardware = summary.get("hardware") or ([summary["device"]] if summary.get("device") else [])
    return {"hardware": hardware, "world_size": summary.get("world_size", 1)}


# The card's sentence on where the weights trained (templates/variant_card.md), which was its only record in
# the folders published before config.json kept it.
_TRAINED_ON_LINE = re.compile(r"^Trained on (?P<hardware>.+?)(?: × (?P<world_size>\d+))?"
                              r"(?:, \d+ minutes of training epochs)?\.$", re.M)


def _trained_on_from_card(card: Path) -> dict[str, Any]:
    m = _TRAINED_ON_LINE.search(card.read_text()) if card.is_file() else None
    return {"hardware": m["hardware"].split(" then "), "world_size": int(m["world_size"] or 1)} if m else {
        "hardware": [], "world_size": 1}


def write_derived(folder: Path, rec: PublishedVariant, twin: PublishedVariant | None) -> None:
    """Write the files of a Hub folder that follow from its others, its record and its twin's record
    (``None``: not published): ``curves.png`` from ``metrics.jsonl``, and the card. A publish writes
    them, and writes them again in its twin's folder, whose card names the variant's accuracy."""
    config = json.loads((folder / HubFolder.CONFIG).read_text())
    if "trained_on" not in config:  # published before config.json kept it: its card said it
        config["trained_on"] = _trained_on_from_card(folder / HubFolder.CARD)
        write_json(folder / HubFolder.CONFIG, config)
    history = [json.loads(line) for line in (folder / HubFolder.METRICS).read_text().splitlines() if line.strip()]
    plot_curves(history, folder / HubFolder.CURVES, title=f"{rec.name} on {DATASETS[rec.dataset].display}")
    recipe = REPO_ROOT / rec.recipe
    if not recipe.is_file():
        raise PublishError(f"{rec.name} cites the recipe {rec.recipe}, which is not in {REPO_ROOT}; restore it (git "
                           f"checkout -- {rec.recipe}): its card links it")
    train_cfg = yaml.safe_load((folder / HubFolder.RECIPE).read_text())
    overrides = recipe_overrides(train_cfg, recipe)
    reproduce = " ".join(["python train/train.py -c", rec.recipe] + (["--set", *overrides] if overrides else []))
    card = variant_card(rec, train_cfg=train_cfg, trained=config["trained_on"], history=history, reproduce=reproduce,
                        recipe_notes=recipe_notes(recipe), twin=twin,
                        files=sorted(p.name for p in folder.iterdir() if p.name != HubFolder.CARD))
    atomic_write(folder / HubFolder.CARD, lambda p: card.save(p))


def _check_shapes(state: dict[str, torch.Tensor], model: torch.nn.Module, file: Path, name: str) -> None:
    """The tensors of ``state`` have the model's shapes (``load_state_dict`` would raise, not say which fix)."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (the model's: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise PublishError(f"{file} does not fit {name}: {', '.join(wrong[:3])}; it holds another architecture")


def measure(folder: Path, name: str, data: str | os.PathLike) -> dict[str, Any]:
    """Load ``folder``'s weights strictly as users do, fuse, and evaluate on the full test split on CPU."""
    dataset = TAG_DATASET[split_model_name_tag(name)[1]]
    model = create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder)))
    images, labels = load_split(data, dataset, "test")
    if len(labels) != evaluation.TEST_SPLIT_SIZE:
        raise PublishError(f"the test split in {data} has {len(labels)} images, the official {dataset} test split has "
                           f"{evaluation.TEST_SPLIT_SIZE}; pass --data with the full dataset")
    res = evaluation.evaluate(fuse(model), DeviceData.from_arrays(images, labels, dataset, device="cpu"))
    return dict(metrics=dict(top1=round(res["top1"], 2), top5=round(res["top5"], 2)),
                eval=dict(n=res["n"], split="test", device="cpu", dtype="float32", fused=True,
                          torch=torch.__version__.split("+")[0]))


def hub_config(model: torch.nn.Module, rec: PublishedVariant, trained: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` in timm's schema (``timm.create_model('hf-hub:...')`` reads it) plus wnzoo's fields,
    among them where the weights trained (:func:`_trained_on`), which the card states."""
    cfg = filter_pretrained_cfg(model.pretrained_cfg, remove_source=True, remove_null=True)
    cfg.pop("architecture", None)
    return {"architecture": rec.arch, "num_classes": model.num_classes, "num_features": model.num_features,
            "global_pool": "avg", "pretrained_cfg": cfg,
            **{k: getattr(rec, k) for k in ("dataset", "metrics", "eval", "recipe", "params", "epochs", "sha256")},
            "trained_on": trained, "hf_dataset": DATASETS[rec.dataset].hf_id, "library": "wnzoo",
            "wnzoo_version": __version__}


def verify_folder(folder: Path, rec: PublishedVariant, weights: bool = True) -> None:
    """Check a Hub folder against its record: files, hash, config.json, and the card's model-index number.
    ``weights=False`` checks a release copy kept without its (too large) weight file."""
    files = sorted(p.name for p in folder.iterdir())
    unexpected = [f for f in files if f not in HubFolder.FILES]
    required = [f for f in HubFolder.FILES
                if f != HubFolder.CURVES and (weights or f != HubFolder.WEIGHTS) and f not in files]
    if unexpected or required:
        raise PublishError(f"{folder}: unexpected files {unexpected}, missing {required}")
    if weights and sha256_file(folder / HubFolder.WEIGHTS) != rec.sha256:
        raise PublishError(f"{folder / HubFolder.WEIGHTS} does not hash to the recorded sha256 {rec.sha256}")
    cfg = json.loads((folder / HubFolder.CONFIG).read_text())
    for key in ("metrics", "eval", "sha256", "params", "recipe", "dataset"):
        if cfg.get(key) != getattr(rec, key):
            raise PublishError(f"{folder}/config.json has {key}={cfg.get(key)!r}, the record {getattr(rec, key)!r}")
    if (cfg["architecture"], cfg["pretrained_cfg"].get("tag")) != (rec.arch, rec.tag):
        raise PublishError(f"{folder}/config.json describes {cfg['architecture']}.{cfg['pretrained_cfg'].get('tag')}, "
                           f"not {rec.name}")
    card = ModelCard.load(folder / HubFolder.CARD)
    results = card.data.eval_results or []
    if [r.metric_value for r in results] != [rec.top1]:
        raise PublishError(f"{folder}/README.md reports {[r.metric_value for r in results]}, measured {rec.top1}")
    if f"{rec.top1:.2f} %" not in card.text:
        raise PublishError(f"{folder}/README.md does not state the measured top-1 {rec.top1:.2f} %")


def commit_message(rec: PublishedVariant) -> str:
    return f"Publish {rec.name}: top-1 {rec.top1:.2f} % on {rec.dataset} test"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    cmd = ["git", "-c", "core.autocrlf=false", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
           "-c", f"core.hooksPath={os.devnull}", *args]
    try:
        return subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        raise PublishError("git is not installed; publishing needs it to pin a local revision") from None
    except subprocess.CalledProcessError as e:
        raise PublishError(f"git {' '.join(args)} failed in {repo}: {e.stderr.strip()}") from None


def commit_folder(folder: Path, repo_dir: Path, message: str, tag: str | None = None) -> str:
    """Commit exactly the files of ``folder`` to branch ``main`` of the git repo ``repo_dir`` (created if
    needed) with a fixed identity and date; returns the commit sha. In a new repo the commit has no
    parent, so its sha depends on the files and ``message`` only."""
    repo_dir.mkdir(parents=True, exist_ok=True)
    if not (repo_dir / ".git").exists():
        _git(repo_dir, "init", "-q", "-b", "main")
    for p in repo_dir.iterdir():
        if p.name != ".git":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in sorted(folder.iterdir()):
        shutil.copyfile(p, repo_dir / p.name)
    _git(repo_dir, "add", "-A")
    _git(repo_dir, "commit", "-q", "--allow-empty", "-m", message)
    if tag:
        _git(repo_dir, "tag", tag)
    return _git(repo_dir, "rev-parse", "HEAD")


def local_revision(folder: Path, message: str) -> str:
    """The sha of the deterministic root commit of ``folder`` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix=_tmp_prefix("commit")) as tmp:
        return commit_folder(folder, Path(tmp) / "repo", message)


def push_folder(folder: Path, repo_id: str, message: str, endpoint: str | None = None,
                token: str | None = None) -> tuple[str, str]:
    """Upload ``folder`` as one commit to ``repo_id``, tag it ``v<N>`` and check the Hub serves exactly
    these files at that commit; returns ``(commit sha, tag)``."""
    api = _api(endpoint, token)
    try:
        api.create_repo(repo_id, exist_ok=True)
        tags = {t.name for t in api.list_repo_refs(repo_id).tags}
        # delete_patterns="*": files of an earlier version not in this folder are removed (.gitattributes is kept).
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, delete_patterns="*")
        hub_tag = next(f"v{i}" for i in count(1) if f"v{i}" not in tags)
        api.create_tag(repo_id, tag=hub_tag, revision=info.oid, tag_message=message)
    except HfHubHTTPError as e:
        raise PublishError(f"push of {repo_id} to {api.endpoint} failed: {e}. A write token is needed (HF_TOKEN or "
                           f"`hf auth login`) with rights on the namespace; nothing was recorded") from e
    except NETWORK_ERRORS as e:
        raise PublishError(f"push of {repo_id} to {api.endpoint} failed ({_first_line(e)}); check HF_ENDPOINT and "
                           f"the network, and publish again: nothing was recorded") from None
    with tempfile.TemporaryDirectory(prefix=_tmp_prefix("verify")) as tmp:
        try:
            snap = Path(snapshot_download(repo_id, revision=info.oid, cache_dir=tmp, endpoint=api.endpoint,
                                          token=token))
        except NETWORK_ERRORS as e:
            raise PublishError(f"{repo_id}@{info.oid} was pushed but could not be downloaded back to verify it "
                               f"({_first_line(e)}); check the network and publish again: nothing was "
                               f"recorded") from None
        remote = sorted(p.name for p in snap.iterdir() if p.name != ".gitattributes")
        local = sorted(p.name for p in folder.iterdir())
        differ = [f for f in local if f in remote and (snap / f).read_bytes() != (folder / f).read_bytes()]
        if remote != local or differ:
            raise PublishError(f"{repo_id}@{info.oid} does not serve the published folder: files {remote} vs "
                               f"{local}, different content in {differ}")
    return info.oid, hub_tag


def _api(endpoint: str | None, token: str | None) -> HfApi:
    return HfApi(endpoint=endpoint, token=token, library_name="wnzoo", library_version=__version__)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {next(iter(str(e).splitlines()), '')}"


def check_push_access(endpoint: str | None = None, token: str | None = None) -> None:
    """Fail in seconds, before minutes of building and evaluating: there is a token, the endpoint
    answers, and it does not refuse the token. A server without ``whoami`` (a mirror) is let through:
    the push itself checks the rights."""
    api = _api(endpoint, token)
    if not (token or get_token()):
        raise PublishError(f"--push needs a write token for {api.endpoint}: set HF_TOKEN or run `hf auth login`")
    try:
        api.whoami()
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 401:
            raise PublishError(f"{api.endpoint} refuses the token (HTTP 401, {_first_line(e)}); set a write token with "
                               f"HF_TOKEN or `hf auth login`") from None
    except NETWORK_ERRORS as e:
        raise PublishError(f"the Hub endpoint {api.endpoint} cannot be reached ({_first_line(e)}); check HF_ENDPOINT "
                           f"and the network") from None


def write_zoo_card(published_json: Path = PUBLISHED_JSON, path: Path = MODEL_CARD) -> Path:
    """Regenerate ``MODEL_CARD.md`` from the published records, and the status lines of the
    ``README.md`` beside it, if there is one."""
    records = published.load(published_json)
    published.write_cards(path, zoo_card(records), zoo_status(records))
    return path


def write_readme_status(readme: Path, status: str | None) -> None:
    """Put ``status`` between the README's status markers (``None``: only check they are there)."""
    try:
        text = published.with_status(readme, status or "")
    except ValueError as e:
        raise PublishError(str(e)) from None
    if status is not None:
        atomic_write(readme, lambda p: Path(p).write_text(text))


def _tmp_prefix(kind: str) -> str:
    """A temporary folder's name names its process, so the next publish can delete it once that process is gone."""
    return f"wnzoo-{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _clean_temporary_folders() -> None:
    """Delete the temporary folders of killed publishes (SIGKILL, a power cut): those of this user whose
    process is gone. On Windows, where signal 0 would interrupt the process, none."""
    if os.name != "posix":
        return
    for p in Path(tempfile.gettempdir()).glob("wnzoo-*"):
        m = re.match(r"wnzoo-(publish|commit|verify)-(\d+)-", p.name)
        if m and p.is_dir() and p.stat().st_uid == os.getuid() and not _alive(int(m[2])):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def _locked(release_dir: Path) -> Iterator[ReleaseDir]:
    """Hold the release dir's lock; another publish holds it only for seconds (its last phase)."""
    release_dir.mkdir(parents=True, exist_ok=True)
    releases = ReleaseDir(release_dir)
    lock = releases.lock(timeout=LOCK_WAIT_S)
    try:
        lock.acquire()
    except Timeout:
        raise PublishError(f"another publish is writing {release_dir} (it holds {lock.lock_file}); wait for it to "
                           f"end and publish again") from None
    try:
        yield releases
    finally:
        lock.release()


def recover(release_dir: Path = RELEASE_DIR) -> None:
    """Finish or undo a publish that was interrupted in ``release_dir`` (:class:`~wnzoo.published.ReleaseDir`)."""
    if ReleaseDir(release_dir).leftovers():
        with _locked(release_dir) as releases:
            releases.recover()


def _release_size(release_dir: Path, skip: str) -> int:
    if not release_dir.is_dir():
        return 0
    return sum(p.stat().st_size for d in release_dir.iterdir() if d.is_dir() and d.name != skip
               for p in d.rglob("*") if p.is_file())


def publish(run_dir: str | os.PathLike, repo_id: str | None = None, *, data: str | os.PathLike | None = None,
            recipe: str | os.PathLike | None = None, push: bool = False, dry_run: bool = False,
            out: str | os.PathLike | None = None, replace: bool = False, endpoint: str | None = None,
            token: str | None = None, release_dir: Path = RELEASE_DIR, published_json: Path = PUBLISHED_JSON,
            zoo_card_path: Path = MODEL_CARD) -> tuple[PublishedVariant, Path]:
    """Publish ``run_dir`` as ``repo_id`` (see the module docstring); returns the record and the Hub folder.

    ``dry_run`` builds and verifies the folder in ``out`` (default: a new temporary folder) and stops
    there: nothing is pushed, pinned or recorded. ``data`` defaults to the run's own data source, and
    ``repo_id`` to ``wnzoo/<model>.<tag>`` of the run. A published variant is replaced only with ``replace``.
    """
    _clean_temporary_folders()
    if repo_id is not None:
        parse_repo_id(repo_id)  # a bad id fails before anything is read
    run = Run.read(run_dir)
    repo_id = repo_id or f"wnzoo/{run.config['model']}.{DATASETS[run.config['dataset']].tag}"
    name = parse_repo_id(repo_id)[0]
    _check_fits(run, name)  # before the published variant it would replace: the fix is another id, not --replace
    old = published.load(published_json).get(name)
    if old is not None and not (replace or dry_run):
        logged = run.logged_test_acc()
        now = f"logged {logged:.2f} %" if logged is not None else "has no test-set number yet"
        raise PublishError(f"{name} is already published (top-1 {old.top1:.2f} % after {old.epochs} epochs); this run "
                           f"{now} after {run.summary.get('epochs_done')} epochs. Pass --replace to replace it")
    recipe_rel, _ = recipe_for(run, recipe)  # no recipe is an error before the minutes of work
    if out is not None:  # every output is checked before the minutes of evaluation
        if Path(out).exists() and any(Path(out).iterdir()):
            raise PublishError(f"output folder {out} is not empty; choose a new --out")
        check_writable(out, folder=True)
    if not dry_run:
        _check_targets(release_dir, published_json, zoo_card_path, push, endpoint, token)
    tmp = None if out else Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix('publish')}{name}-"))
    stage = Path(out) if out else tmp / name
    try:
        rec = _build_and_verify(run, repo_id, stage, data, recipe_rel, published.load(published_json))
        if dry_run:
            tmp = None  # keep the folder for inspection
            return rec, stage
        rec = _pin_and_record(rec, stage, push, endpoint, token, release_dir, published_json, zoo_card_path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rec, release_dir / name


def _check_targets(release_dir: Path, published_json: Path, zoo_card_path: Path, push: bool, endpoint: str | None,
                   token: str | None) -> None:
    """Before any work: what a publish writes can be written (the README's status markers are there), the
    Hub takes a push, and an interrupted publish is finished or undone."""
    for path, folder in ((release_dir, True), (published_json, False), (zoo_card_path, False)):
        check_writable(path, folder)
    readme = zoo_card_path.with_name("README.md")
    if readme.is_file():
        check_writable(readme)
        write_readme_status(readme, None)  # only checks its status markers
    if push:
        check_push_access(endpoint, token)
    recover(release_dir)


def _build_and_verify(run: Run, repo_id: str, stage: Path, data: str | os.PathLike | None, recipe_rel: str,
                      records: dict[str, PublishedVariant]) -> PublishedVariant:
    name, arch, tag = parse_repo_id(repo_id)
    model = build_folder(run, name, stage)
    measured = measure(stage, name, data if data is not None else run.config["data"])
    logged = run.logged_test_acc()
    if logged is not None and abs(logged - measured["metrics"]["top1"]) > LOG_TOLERANCE:
        raise PublishError(f"publish measured top-1 {measured['metrics']['top1']:.2f} % but the run logged "
                           f"{logged:.2f} % on the test set: is --data the dataset the run was trained on?")
    rec = PublishedVariant(
        repo_id=repo_id, revision=None, sha256=sha256_file(stage / HubFolder.WEIGHTS), dataset=TAG_DATASET[tag],
        metrics=measured["metrics"], recipe=recipe_rel, params=sum(p.numel() for p in model.parameters()),
        arch=arch, tag=tag, epochs=run.summary.get("epochs_done", run.config["epochs"]),
        size=(stage / HubFolder.WEIGHTS).stat().st_size, eval=measured["eval"])
    write_json(stage / HubFolder.CONFIG, hub_config(model, rec, _trained_on(run.summary)))
    write_derived(stage, rec, records.get(twin_name(name)))
    verify_folder(stage, rec)
    return rec


def _pin_and_record(rec: PublishedVariant, stage: Path, push: bool, endpoint: str | None, token: str | None,
                    release_dir: Path, published_json: Path, zoo_card_path: Path) -> PublishedVariant:
    """Pin the verified folder (pushed, or a local commit), then keep its release copy and record it."""
    keep_weights = rec.size <= RELEASE_MAX_BYTES
    total = _release_size(release_dir, rec.name) + sum(p.stat().st_size for p in stage.iterdir()
                                                       if keep_weights or p.name != HubFolder.WEIGHTS)
    if total > RELEASE_TOTAL_MAX_BYTES:
        raise PublishError(f"the release copies would take {total / 2**20:.1f} MiB, over the "
                           f"{RELEASE_TOTAL_MAX_BYTES >> 20} MiB the repository allows")
    rec = _pin(rec, stage, push, endpoint, token)
    if not keep_weights:
        _log.warning("%s is %.1f MB, over the %d MB kept in the repository: the release copy has no weights, so "
                     "a fresh clone loads them from the Hub only", HubFolder.WEIGHTS, rec.size / 1e6,
                     RELEASE_MAX_BYTES // 1_000_000)
    _install(rec, stage, () if keep_weights else (HubFolder.WEIGHTS,), release_dir, published_json, zoo_card_path)
    return rec


def _pin(rec: PublishedVariant, folder: Path, push: bool, endpoint: str | None, token: str | None) -> PublishedVariant:
    """``rec`` pinned to ``folder``: pushed as a new Hub commit, else the folder's deterministic local commit."""
    if push:
        revision, hub_tag = push_folder(folder, rec.repo_id, commit_message(rec), endpoint, token)
        return dataclasses.replace(rec, revision=revision, hub_tag=hub_tag, pushed=True)
    return dataclasses.replace(rec, revision=local_revision(folder, commit_message(rec)))


def _install(rec: PublishedVariant, stage: Path, skip: tuple[str, ...], release_dir: Path, published_json: Path,
             zoo_card_path: Path) -> None:
    """Make ``stage`` (but ``skip``) the release copy of ``rec`` and ``rec`` its record, with the twin's
    copy regenerated to name it, as one transaction."""
    with _locked(release_dir) as releases, tempfile.TemporaryDirectory(prefix=_tmp_prefix("publish")) as tmp:
        releases.recover()
        records = published.load(published_json)
        changes = [(rec, stage)]
        twin = records.get(twin_name(rec.name))
        if twin is not None and (new_twin := _regenerated_twin(releases, twin, rec, Path(tmp) / twin.name)):
            changes.append(new_twin)
        _commit(releases, records, changes, skip, published_json, zoo_card_path)


def _regenerated_twin(releases: ReleaseDir, twin: PublishedVariant, rec: PublishedVariant,
                      out: Path) -> tuple[PublishedVariant, Path] | None:
    """The twin's release copy with its card naming ``rec``, in ``out``, and its record re-pinned to it;
    ``None`` where nothing changed, or where it cannot be pinned here (it is on the Hub, or its weights
    are not in its release copy), which is logged."""
    if twin.pushed:
        _log.warning("%s is on the Hub, so its card there still names the %s it knew; regenerate it with python "
                     "hub/publish.py --refresh %s --push", twin.name, rec.name, twin.name)
        return None
    if not (releases.folder(twin.name, twin) / HubFolder.WEIGHTS).is_file():
        _log.warning("%s's release copy has no weights, so its card cannot be regenerated and pinned here; it still "
                     "names the %s it knew", twin.name, rec.name)
        return None
    folder = _regenerate(releases, twin, rec, out)
    new = dataclasses.replace(twin, revision=local_revision(folder, commit_message(twin)))
    return (new, folder) if new != twin else None


def _regenerate(releases: ReleaseDir, rec: PublishedVariant, twin: PublishedVariant | None, out: Path) -> Path:
    """A copy of ``rec``'s release copy in ``out``, its derived files written anew (:func:`write_derived`)
    and verified."""
    shutil.copytree(releases.folder(rec.name, rec), out)
    write_derived(out, rec, twin)
    verify_folder(out, rec)
    return out


def _commit(releases: ReleaseDir, records: dict[str, PublishedVariant], changes: list[tuple[PublishedVariant, Path]],
            skip: tuple[str, ...], published_json: Path, zoo_card_path: Path) -> None:
    """Under the lock: make each folder of ``changes`` the release copy of its record (the first one less
    ``skip``) and the records those of ``records`` updated with them, as one transaction."""
    records = {**records, **{rec.name: rec for rec, _ in changes}}
    (main, _), *also = changes
    journal = {"name": main.name, "new": main.to_dict(), "also": [rec.to_dict() for rec, _ in also],
               "published_json": os.path.relpath(published_json, releases.path),
               "card": os.path.relpath(zoo_card_path, releases.path), "card_text": zoo_card(records),
               "status": zoo_status(records)}
    releases.begin(journal, {rec.name: folder for rec, folder in changes}, skip)  # from here on undone ...
    published.save(records, published_json)  # ... and from here on finished: the commit
    releases.roll_forward(journal)


def refresh(name: str, *, push: bool = False, endpoint: str | None = None, token: str | None = None,
            release_dir: Path = RELEASE_DIR, published_json: Path = PUBLISHED_JSON,
            zoo_card_path: Path = MODEL_CARD) -> PublishedVariant:
    """Regenerate the derived files of the published variant ``name`` (its card, naming its twin's current
    record, and ``curves.png``) from its release copy, pin them (a local commit; with ``push`` a new Hub
    commit, the only way a variant on the Hub changes) and record them, as one transaction. What a
    publish does to its twin's copy; for a card whose template, twin or recipe notes changed since.
    Returns the new record (the old one where nothing changed)."""
    _clean_temporary_folders()
    _check_targets(release_dir, published_json, zoo_card_path, push, endpoint, token)
    records = published.load(published_json)
    rec = records.get(name)
    if rec is None:
        raise PublishError(f"{name} is not published (published: {', '.join(sorted(records)) or 'none'}); publish a "
                           f"run first: python hub/publish.py RUN_DIR")
    if rec.pushed and not push:
        raise PublishError(f"{name} is on the Hub ({rec.hub_tag or rec.revision}), so its card changes only with a new "
                           f"Hub commit: add --push")
    releases = ReleaseDir(release_dir)
    if not (releases.folder(name, rec) / HubFolder.WEIGHTS).is_file():
        raise PublishError(f"the release copy of {name} has no {HubFolder.WEIGHTS} (it is over "
                           f"{RELEASE_MAX_BYTES // 1_000_000} MB), so its files cannot be pinned here; publish its run "
                           f"again with --replace")
    twin = records.get(twin_name(name))
    with tempfile.TemporaryDirectory(prefix=_tmp_prefix("publish")) as tmp:
        folder = _regenerate(releases, rec, twin, Path(tmp) / name)
        if _same_files(folder, releases.folder(name, rec)):
            return rec
        new = _pin(rec, folder, push, endpoint, token)
        with _locked(release_dir) as releases:
            releases.recover()
            now = published.load(published_json)
            if (now.get(name), now.get(twin_name(name))) != (rec, twin):
                raise PublishError(f"{name} or its twin was published while its files were regenerated; run the "
                                   f"same command again")
            _commit(releases, now, [(new, folder)], (), published_json, zoo_card_path)
    return new


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)
