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

from .._io import WEIGHTS_FILE, atomic_write, check_writable, read_metadata, save_safetensors, write_json

__all__ = ["RunState", "RunFolder", "StateError", "STATE_FORMAT"]

STATE_FORMAT = "wnzoo.run-state.v1"


class StateError(ValueError):
    """A state file that cannot be resumed from; the message says why and what to do."""


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

    def restore(self, model: nn.Module, ema: nn.Module | None = None) -> None:
        """Load the weights into ``model`` (and the EMA weights into ``ema``); :attr:`momentum` is
        the training step's to take, once checked to name parameters of ``model``."""
        try:
            model.load_state_dict(self.model)
            if ema is not None:
                ema.load_state_dict(self.ema)
        except RuntimeError as e:
            raise StateError(f"the state's weights do not fit {type(model).__name__} "
                             f"({' '.join(str(e).split())[:300]}); it is not a state of this recipe") from None
        unknown = set(self.momentum) - set(dict(model.named_parameters()))
        if unknown:
            raise StateError(f"the state has momentum for parameters the model lacks: {sorted(unknown)[:3]}")

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
            raise StateError(f"{path} is not a readable run state ({e}); it is damaged: restore a copy, or "
                             f"move it aside to start the run anew") from e
        if meta.get("format") != STATE_FORMAT:
            raise StateError(f"{path} is not a wnzoo run state (format {meta.get('format')!r}, expected "
                             f"{STATE_FORMAT!r})")
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "momentum": {}, "ema": {}}
        for key, t in weights.items():
            group, _, name = key.partition(".")
            groups[group][name] = t
        return cls(int(meta["epoch"]), json.loads(meta["config"]), json.loads(meta["history"]), **groups,
                   data_sha256=meta.get("data_sha256", ""))


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
                      if p.name != self.LOCK and not (p.name.startswith(".") and p.name.endswith(".tmp")))

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

    def read_metrics(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in (self / self.METRICS).read_text().splitlines() if ln.strip()]

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self / self.CONFIG, lambda p: Path(p).write_text(yaml.safe_dump(config, sort_keys=False)))

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load((self / self.CONFIG).read_text())

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self / self.SUMMARY, summary)

    def read_summary(self) -> dict[str, Any]:
        return json.loads((self / self.SUMMARY).read_text())

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"
