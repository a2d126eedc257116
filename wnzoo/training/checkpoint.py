"""The run folder and its one resumable state file, written atomically after every epoch.

A run is resumable from a single file, ``state.safetensors``: the weights (with BN buffers), the
SGD momentum of every parameter, the EMA weights when used, and in its metadata the epoch, the
config and the per-epoch history. Nothing else is needed: the learning rate is a closed form of
the step (:class:`~wnzoo.training.schedule.LRSchedule`) and an epoch's data randomness a function
of ``(seed, epoch)``. So a time-boxed job (a spot instance, a cluster slot with a wall-clock limit)
can keep just this file, and :func:`~wnzoo.training.loop.export_run` rebuilds everything else in
the folder from it on any machine. It is safetensors, not a pickle: loading it runs no code.
For ``wn_resnet110`` it is 13.3 MiB (weights and momentum in float32, 182 epochs of history).

Every file is written to a temporary name and renamed, so a crash never leaves a torn file: the
previous complete checkpoint survives.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .._io import (WEIGHTS_FILE, atomic_write, check_writable, is_temporary, read_metadata, remove_temporaries,
                   save_safetensors, write_json)
from .config import ConfigError, TrainConfig, read_yaml, shown, yaml_problem

__all__ = ["RunState", "RunFolder", "StateError", "STATE_FORMAT"]

STATE_FORMAT = "wnzoo.run-state.v1"


class StateError(ValueError):
    """A state file that cannot be resumed from, or a damaged file of a run folder; the message says
    why and what to do."""


# What to do with a state file that is damaged or not of this run.
_STATE_FIX = "restore a copy, or move it aside to start the run anew"


def _misfit(given: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """How the tensors ``given`` differ from a model's ``own`` by name and shape, in words ("" if not)."""
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & given.keys() if own[k].shape != given[k].shape)
    return ", ".join(f"{len(keys)} {what}, e.g. {shown(keys[0], 50)}" for what, keys in (
        ("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if keys)


def _header(path: Path, meta: dict[str, str]) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """The epoch, config and history in a state's metadata, checked: a state travels between machines
    and may come back edited or from elsewhere, and a header of the wrong shape would crash the run
    that resumes from it, or the export that rebuilds the folder."""
    def damaged(what: str) -> StateError:
        return StateError(f"{path} is a damaged run state ({what}); {_STATE_FIX}")

    missing = [k for k in ("epoch", "config", "history") if k not in meta]
    if missing:
        raise damaged(f"its metadata lacks {', '.join(missing)}")
    epoch = int(meta["epoch"]) if meta["epoch"].isascii() and meta["epoch"].isdigit() else -1
    if epoch < 0:
        raise damaged(f"its epoch {shown(meta['epoch'])} is not a whole number")
    try:
        config, history = json.loads(meta["config"]), json.loads(meta["history"])
    except (ValueError, RecursionError) as e:
        raise damaged(f"its config or history is not JSON: {shown(str(e))}") from None
    if not isinstance(config, dict):
        raise damaged(f"its config is {shown(config)}, not a mapping of config keys")
    try:
        TrainConfig.from_dict(config)
    except ConfigError as e:
        raise damaged(f"its config is not valid: {e}") from None
    if not isinstance(history, list):
        raise damaged(f"its history is {shown(history)}, not a list of per-epoch rows")
    for n, row in enumerate(history, 1):
        why = _bad_row(row)
        if why:
            raise damaged(f"row {n} of its history {why}")
    return epoch, config, history


# What every history row holds (the loop writes them; curves, summaries and cards read them), and the
# numbers some rows hold: an evaluation, or how the epoch was trained.
_ROW_NUMBERS = ("lr", "train_loss", "train_acc", "epoch_time_s")
_ROW_OPTIONAL = ("img_per_s", "test_acc", "test_loss", "val_acc", "val_loss", "test_acc_ema", "val_acc_ema")


def _bad_row(row: Any) -> str | None:
    """What is wrong with a history row, if anything."""
    if not isinstance(row, dict) or type(row.get("epoch")) is not int:
        return f"is {shown(row)}, not a mapping with an integer epoch"
    wrong = [k for k in _ROW_NUMBERS if not _is_real(row.get(k))]
    wrong += [k for k in _ROW_OPTIONAL if k in row and not _is_real(row[k])]
    if "stack" in row and not (type(row["stack"]) is int and row["stack"] >= 1):
        wrong.append("stack")
    if "device" in row and not isinstance(row["device"], str):
        wrong.append("device")
    return f"lacks, or has a wrong value for, {', '.join(wrong)}" if wrong else None


def _is_real(v: Any) -> bool:
    """A number (not a bool), NaN and infinity included, unlike a config value's check: a logged
    loss may be either."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# The summary's fields that commands compute with or print as numbers (a card, a report, a publish).
_SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "epochs_done": (int,), "test_acc": (float,), "gpu_minutes": (float,), "survived": (bool,),
    "diverged_at": (dict,), "final": (dict,), "error": (str,)}


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    """``isinstance`` where an int also stands for a float and a bool for neither number."""
    if float in kinds or int in kinds:
        return _is_real(value) and (float in kinds or isinstance(value, int))
    return isinstance(value, kinds)


@dataclass
class RunState:
    """Everything a run needs to continue: tensors by group, the epochs done, config and history."""

    epoch: int
    config: dict[str, Any]
    history: list[dict[str, Any]]
    model: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name → SGD momentum buffer
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    data_sha256: str = ""  # of the training split's arrays (wnzoo.data.fingerprint); "" in older states
    origin: str = field(default="the state", compare=False)  # the file it was loaded from, for messages

    def restore(self, model: nn.Module, ema: nn.Module | None = None) -> None:
        """Load the weights into ``model`` (and the EMA weights into ``ema``); :attr:`momentum` is
        the training step's to take, once checked to name parameters of ``model``."""
        for tensors, into, what in ((self.model, model, "weights"), (self.ema, ema, "EMA weights")):
            if into is None:
                continue
            misfit = _misfit(tensors, into.state_dict())
            if misfit:
                raise StateError(f"{self.origin}: its {what} do not fit {type(into).__name__} ({misfit}); it is not "
                                 f"a state of this recipe: {_STATE_FIX}")
            into.load_state_dict(tensors)
        params = dict(model.named_parameters())
        misfit = _misfit(self.momentum, {k: params[k] for k in params.keys() & self.momentum.keys()})
        if misfit:  # a state may lack a parameter's momentum (the step starts it at zero), never have another's
            raise StateError(f"{self.origin}: its momentum does not fit {type(model).__name__} ({misfit}); it is not "
                             f"a state of this recipe: {_STATE_FIX}")

    def save(self, path: str | os.PathLike) -> None:
        tensors = {f"{group}.{k}": v for group in ("model", "momentum", "ema") for k, v in getattr(self, group).items()}
        meta = dict(format=STATE_FORMAT, epoch=str(self.epoch), config=json.dumps(self.config),
                    history=json.dumps(self.history), data_sha256=self.data_sha256)
        save_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, tensors: bool = True) -> "RunState":
        """The state in ``path``; with ``tensors=False`` only its header (epoch, config, history),
        which reads a few kilobytes instead of the whole file."""
        path = Path(path)
        try:
            meta = read_metadata(path)
            weights = load_file(path) if tensors else {}
        except (SafetensorError, OSError, ValueError) as e:
            raise StateError(f"{path} is not a readable run state ({e}); it is damaged: {_STATE_FIX}") from e
        if meta.get("format") != STATE_FORMAT:
            raise StateError(f"{path} is not a wnzoo run state (format {shown(meta.get('format'))}, expected "
                             f"{STATE_FORMAT!r})")
        epoch, config, history = _header(path, meta)
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "momentum": {}, "ema": {}}
        for key, t in weights.items():
            group, _, name = key.partition(".")
            if group not in groups or not name:
                raise StateError(f"{path} is a damaged run state (tensor {shown(key)} is in none of its groups "
                                 f"model, momentum, ema); {_STATE_FIX}")
            groups[group][name] = t
        return cls(epoch, config, history, **groups, data_sha256=meta.get("data_sha256", ""), origin=str(path))


class RunFolder:
    """The files of one run folder, by name; the only place that knows them."""

    STATE = "state.safetensors"
    WEIGHTS = WEIGHTS_FILE
    EMA_WEIGHTS = "model_ema.safetensors"
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    CURVES = "curves.png"
    TENSORBOARD = "tb"          # a folder of TensorBoard event files
    LEGACY_STATE = "state.pt"   # wnzoo 0.1's pickled state, which this version refuses to resume
    LOCK = ".lock"              # held by the process writing the folder

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def claim(self, exclusive: bool = True) -> Iterator["RunFolder"]:
        """Create the folder and hold its lock while a run writes it: a second run into the same
        folder fails at once, instead of both writing it and one being silently lost. The lock is
        the operating system's (``flock``), so a killed process never leaves it held."""
        check_writable(self.path, folder=True)
        self.path.mkdir(parents=True, exist_ok=True)
        if not exclusive:  # the other processes of a distributed run: rank 0 holds the lock
            yield self
            return
        lock = FileLock(self / self.LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise StateError(f"{self.path} is being written by another run (it holds {self / self.LOCK}); "
                             f"wait for it to end, or choose another --out") from None
        try:
            remove_temporaries(self.path)  # of a write that a kill cut short; no one else writes here now
            yield self
        finally:
            lock.release()

    def diverged_before_saving(self) -> bool:
        """A run that diverged in its first epoch leaves only its summary: the same command may
        start it again (with another lr or warmup)."""
        if self.contents() != [self.SUMMARY] or self.has_state():
            return False
        try:
            return self.read_summary().get("status") == "diverged"
        except ValueError:  # a damaged summary is the user's to look at
            return False

    def contents(self) -> list[str]:
        """The names in the folder, besides its lock and the temporary files of interrupted writes."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.name != self.LOCK and not is_temporary(p.name))

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    def has_state(self) -> bool:
        return self.state.is_file()

    def read_state(self, tensors: bool = True) -> RunState:
        return RunState.load(self.state, tensors)

    def epochs_done(self) -> int:
        """Epochs the state holds (0 without a state), from its header only."""
        return self.read_state(tensors=False).epoch if self.has_state() else 0

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write(self / self.METRICS, lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in history)))

    def _damaged(self, name: str, what: str) -> StateError:
        """A file of the folder that cannot be read: which, why, and how to get it back."""
        fix = (f"rebuild it from the run's state with: python train/train.py --export {self.path}" if self.has_state()
               else "restore it from a copy")
        return StateError(f"{self / name} is damaged ({what}); {fix}")

    def _text(self, name: str) -> str:
        try:
            return (self / name).read_text()
        except UnicodeDecodeError:
            raise self._damaged(name, "it is not UTF-8 text") from None

    def read_metrics(self) -> list[dict[str, Any]]:
        rows = []
        for n, line in enumerate(self._text(self.METRICS).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                row = None
            if not isinstance(row, dict):
                raise self._damaged(self.METRICS, f"line {n} is not a JSON row of an epoch's metrics")
            rows.append(row)
        return rows

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self / self.CONFIG, lambda p: Path(p).write_text(yaml.safe_dump(config, sort_keys=False)))

    def read_config(self) -> dict[str, Any]:
        text = self._text(self.CONFIG)
        try:
            config = read_yaml(text)
        except yaml.YAMLError as e:
            raise self._damaged(self.CONFIG, f"not the YAML a run writes: {yaml_problem(e)}") from None
        if not isinstance(config, dict):
            raise self._damaged(self.CONFIG, f"it holds {shown(config)}, not a mapping of config keys")
        return config

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self / self.SUMMARY, summary)

    def read_summary(self) -> dict[str, Any]:
        text = self._text(self.SUMMARY)
        try:
            summary = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise self._damaged(self.SUMMARY, f"not JSON: {shown(str(e))}") from None
        if not isinstance(summary, dict):
            raise self._damaged(self.SUMMARY, f"it holds {shown(summary)}, not a mapping")
        wrong = [k for k, kinds in _SUMMARY_TYPES.items() if k in summary and not _is_kind(summary[k], kinds)]
        at = summary.get("diverged_at")
        if isinstance(at, dict):
            wrong += [f"diverged_at.{k}" for k in ("epoch", "step", "lr") if k in at and not _is_real(at[k])]
        if wrong:
            raise self._damaged(self.SUMMARY, f"{', '.join(wrong)} of the wrong type")
        return summary

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"
