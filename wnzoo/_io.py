"""File I/O every layer shares: atomic writes, JSON, safetensors with metadata, sha256, weight paths.

Every file is written to a temporary name, fsynced and renamed, so a crash leaves the previous
complete file, never a torn one. Weights are read from safetensors only: loading them runs no code.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub.utils.sha import sha_fileobj
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ._cli import UserError

__all__ = ["WEIGHTS_FILE", "WeightsError", "atomic_write", "is_temporary", "remove_temporaries", "write_json",
           "save_safetensors", "read_metadata", "check_weights_file", "load_weights_file", "weights_path", "sha256_file",
           "check_writable"]

WEIGHTS_FILE = "model.safetensors"


class WeightsError(UserError):
    """Weights that cannot be found, verified or loaded; the message says how to fix it."""


# The name of an atomic write's temporary file: ``.<name>.<8 hex digits>.tmp`` beside the file.
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of an atomic write's temporary file."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files that writes cut short by a kill (``SIGKILL``, a power cut) left in
    ``folder``; call it only while no other process writes there (holding the folder's lock).
    Returns their names."""
    names = [p.name for p in Path(folder).iterdir() if p.is_file() and is_temporary(p.name)]
    for name in names:
        Path(folder, name).unlink(missing_ok=True)
    return names


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = os.stat(tmp).st_mode & 0o777  # the umask's permissions, as open() gives them
    try:
        write(tmp)
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with an owner-only one
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # name the file the user knows, not the temporary one (nor none: matplotlib's)
        if e.filename in (None, tmp) and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def check_writable(path: str | os.PathLike, folder: bool = False, overwrite: bool = True) -> Path:
    """``path`` (a file, or with ``folder`` a folder), checked now to be writable, so a long job
    fails at its start rather than when it saves; raises the ``OSError`` the write would have met.
    With ``overwrite=False`` an existing file is refused: a user's file is replaced only on request."""
    path = Path(path)
    for p in (path, *path.parents):  # writing would replace the link, or fail in its missing target
        if p.exists():
            break
        if p.is_symlink():
            raise FileNotFoundError(errno.ENOENT, f"a broken symbolic link (to {os.readlink(p)}); remove it or "
                                    f"choose another path", str(p))
    if not overwrite and path.is_file():
        raise FileExistsError(errno.EEXIST, "the file exists; pass --force to replace it, or choose another path",
                              str(path))
    if path.is_dir() != folder and path.exists():
        raise (NotADirectoryError if folder else IsADirectoryError)(
            errno.ENOTDIR if folder else errno.EISDIR, "a folder is needed here" if folder else "it is a folder",
            str(path))
    base = path if folder else path.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder is needed", str(base))
    try:
        with tempfile.TemporaryFile(dir=base):  # a write test: os.access misleads root and network mounts
            pass
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(base)) from None  # the folder, not the probe's name
    return path


def _sort_metadata(path: str) -> None:
    """safetensors writes its metadata in hash order, which varies between processes; sorting it in
    place (same keys, so same length) makes equal tensors and metadata give equal bytes and sha256."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # serde_json and json.dumps escape alike: never expected
            raise RuntimeError(f"re-serializing the safetensors header of {path} changed its length")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))  # safetensors pads its header with spaces


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to the CPU, made contiguous) and string ``metadata`` atomically;
    the bytes depend on the tensors and metadata only."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(cpu, tmp, metadata=metadata)
        except SafetensorError as e:  # safetensors reports an OS error (a full disk) as its own, with the errno
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e
        _sort_metadata(tmp)

    atomic_write(path, write)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file, from its header alone (a few kilobytes)."""
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def weights_path(path: str | os.PathLike) -> Path:
    """A weight file given as itself or as the folder holding ``model.safetensors``."""
    path = Path(path)
    return path / WEIGHTS_FILE if path.is_dir() else path


def check_weights_file(path: str | os.PathLike) -> Path:
    """The safetensors weight file at ``path`` (or in that folder), checked from its header; anything
    else, pickles included, is refused with a :class:`WeightsError` that says how to fix it."""
    path = weights_path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass a model.safetensors file or a folder holding one")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path} is not a .safetensors file; wnzoo never unpickles weights. Convert it with "
                           f"safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')")
    try:
        read_metadata(path)  # safetensors checks the header against the file's length: truncation shows here
    except (SafetensorError, OSError, ValueError) as e:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith((b"PK\x03\x04", b"\x80")):  # a torch.save zip archive, or a bare pickle
            raise WeightsError(f"{path} is a PyTorch pickle (torch.save), not a safetensors file, whatever its name; "
                               f"wnzoo never unpickles weights. Convert it with safetensors.torch.save_file("
                               f"torch.load(f, weights_only=True), 'model.safetensors')") from e
        raise WeightsError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupted: replace "
                           f"it with a complete copy (download it again, or export it again from its run)") from e
    return path


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a weight file that :func:`check_weights_file` accepts."""
    return load_file(str(check_weights_file(path)))


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()
