"""Atomic writes and the run folder's checkpoint files.

A run folder holds ``model.safetensors`` (weights only, the export), ``state.pt`` (everything
resume needs: weights, optimizer, scheduler, EMA, epoch, RNG states, history, config) and the
logs. Every file is written to a temporary name and renamed, so a crash never leaves a torn file:
the previous complete checkpoint survives.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

__all__ = ["atomic_write", "save_weights", "save_state", "load_state", "write_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=metadata))


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    # Our own file, but still loaded with weights_only: it holds only tensors and plain containers.
    return torch.load(path, map_location="cpu", weights_only=True)
