"""The paper's robustness measures as library functions, for any zoo model and init scheme.

- :func:`hessian_spectral_norm`: the curvature of the loss at a model's current weights (Table 2).
- :func:`depth_sweep`: train nets of several depths for a fixed budget, per scheme (Figure 3, left).
- :func:`divergence_grid`: seeds × learning rate × warmup, whether each run survives (Figure 3, right).

The sweeps train every cell with :func:`wnzoo.training.train` (its data, schedule, warmup and NaN
check), and the Hessian is taken at the model ``train`` starts from, on the batches it sees first.
A sweep writes each cell's row to a journal as it finishes; run again, it skips the cells done and
resumes a cell that was stopped from its last epoch. A sweep also splits over machines:
``shard=(i, n)`` runs every n-th cell from the i-th into a journal of its own (the n shards of an
array job share the folder), and ``merge=True`` collects the shards' rows (refusing while cells
are missing) for the report.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import filelock
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._cli import UserError
from .training.checkpoint import RunFolder
from .training.config import NON_RECIPE_KEYS, TrainConfig, shown
from .training.loop import DataSource, TrainingDiverged, initial_model, shared_data, train

__all__ = ["hessian_spectral_norm", "hessian_at_init", "hessian_sweep", "hessian_outcome", "train_cell", "depth_sweep",
           "divergence_grid", "blocks_for_depth", "Journal", "Shard", "parse_shard"]

Batch = tuple[torch.Tensor, torch.Tensor]
Shard = tuple[int, int]  # (i, n): the i-th of n shards, 0 <= i < n


def parse_shard(text: str) -> Shard:
    """``'i/n'`` (e.g. a cluster array job's task index over its size) as ``(i, n)``."""
    i, _, n = text.partition("/")
    try:
        shard = int(i), int(n)
    except ValueError:
        shard = (-1, 0)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4 ... 3/4; SLURM: $SLURM_ARRAY_TASK_ID/N), "
                         f"got {text!r}")
    return shard


# ---- Hessian -------------------------------------------------------------------------------------

def _hvp(model: nn.Module, params: list[nn.Parameter], batches: list[Batch], v: list[torch.Tensor],
         loss_fn: Callable) -> list[torch.Tensor]:
    """H·v for the mean over ``batches`` of the loss's Hessian, by double backprop per batch."""
    out = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        dot = sum((g * u).sum() for g, u in zip(grads, v) if g is not None)
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        for acc, h in zip(out, hv):
            if h is not None:
                acc.add_(h, alpha=1 / len(batches))
    return out


def hessian_spectral_norm(model: nn.Module, batches: Iterable[Batch], iters: int = 40, seed: int = 0,
                          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> float:
    """Spectral norm of the Hessian of ``loss_fn(model(x), y)`` with respect to every trainable
    parameter, averaged over ``batches``: ``iters`` steps of power iteration on exact Hessian-vector
    products (double backprop), from ``v ~ N(0, I)`` drawn under ``seed``.

    As the authors, the model runs in train mode (BN normalizes with batch statistics); its BN
    running statistics are restored afterwards. Returns ``||H v||`` for the last unit ``v``: the
    magnitude of the eigenvalue largest in magnitude (``inf`` if the products overflow, 0 if one is
    exactly zero: a degenerate measurement, e.g. of a model whose every ReLU is off).
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    batches = list(batches)
    if not batches:
        raise ValueError("hessian_spectral_norm needs at least one batch")
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        for _ in range(iters):
            hv = _hvp(model, params, batches, v, loss_fn)
            norm = torch.sqrt(sum((h * h).sum() for h in hv))
            if not torch.isfinite(norm) or norm == 0:
                break
            v = [h / norm for h in hv]
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        model.train(was_training)
    return norm.item() if torch.isfinite(norm) else math.inf


def hessian_at_init(cfg: TrainConfig, batches: int, iters: int, data: DataSource | None = None) -> float:
    """:func:`hessian_spectral_norm` of the model a run of ``cfg`` starts from (its init scheme and
    seed), over the first ``batches`` training batches of its first epoch (shuffled and augmented)."""
    model, train_data = initial_model(cfg, data)
    first = list(itertools.islice(train_data.batches(0, cfg.batch_size, train=True), batches))
    if len(first) < batches:
        raise ValueError(f"the training data has only {len(first)} batches of {cfg.batch_size}; lower the number "
                         f"of batches or raise subset")
    return hessian_spectral_norm(model, first, iters, seed=cfg.seed)


def hessian_sweep(base: TrainConfig, schemes: Sequence[str], seeds: Sequence[int], batches: int, iters: int,
                  out: str | Path, settings: dict[str, Any] | None = None, progress: bool = True,
                  shard: Shard | None = None, merge: bool = False) -> list[dict[str, Any]]:
    """:func:`hessian_at_init` for every scheme × seed; one row per model: ``init, seed``,
    ``spectral_norm`` (``None`` if the products overflowed; 0 for a zero product) and its natural
    log ``log_norm`` (``None`` for both). Resumable in ``out``; ``shard`` and ``merge`` as in the module docs."""
    cells = [dict(init=s, seed=k) for s in schemes for k in seeds]
    data = shared_data()

    def measure(cell: dict[str, Any]) -> dict[str, Any]:
        norm = hessian_at_init(dataclasses.replace(base, **cell), batches, iters, data)
        finite = math.isfinite(norm)
        return dict(spectral_norm=norm if finite else None, log_norm=math.log(norm) if finite and norm > 0 else None)

    extra = dict(settings or {}, batches=batches, iters=iters)
    with _journal(out, base, cells, extra, shard, ("spectral_norm", "log_norm")) as journal:
        return _run_cells(cells, measure, journal, progress, merge)


# ---- sweeps ----------------------------------------------------------------------------------------

def train_cell(cfg: TrainConfig, folder: str | Path, data: DataSource | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Train one run of a sweep in ``folder`` (continuing the run a stopped sweep left there) and
    say how it ended: ``survived``, ``diverged_at`` (epoch, step and lr of the first NaN or inf loss) and the
    accuracy of its last evaluation (``test_acc``, ``None`` without one)."""
    try:
        s = train(cfg, folder, resume=RunFolder(folder).has_state(), progress=progress, export=False, data=data)
    except TrainingDiverged:
        s = RunFolder(folder).read_summary()
    split = "val" if cfg.val_split else "test"
    last = s.get("final") or {}
    return dict(survived=s["survived"], diverged_at=s.get("diverged_at"),
                test_acc=last.get(f"{split}_acc") if s["survived"] else None)


_TRAINED = ("survived", "diverged_at", "test_acc")  # the keys of train_cell's outcome
# What a journal row's results may hold (null: not measured, or diverged); the report computes with them.
_NUMBER = (int, float, type(None))
_ROW_TYPES = {"seconds": (int, float), "spectral_norm": _NUMBER, "log_norm": _NUMBER, "test_acc": _NUMBER,
              "survived": (bool,), "diverged_at": (dict, type(None))}


class Journal:
    """A sweep's folder: ``journal.jsonl`` holds its settings (first line) and one row per finished
    cell, each flushed to disk when written: a mapping of ``keys``. Unfinished cells train under ``runs/``.
    The folder is locked while a sweep writes it; one of other settings, or anything else, is never
    written over. A shard ``(i, n)`` keeps its rows in ``journal-shard-i-of-n.jsonl`` under a lock of
    its own."""

    FILE, RUNS, LOCK = "journal.jsonl", "runs", ".lock"

    def __init__(self, folder: str | Path, settings: dict[str, Any], shard: Shard | None = None,
                 keys: Sequence[str] = ()) -> None:
        self.folder, self.settings, self.shard = Path(folder), json.loads(json.dumps(settings)), shard
        self.keys = tuple(keys)
        suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""
        self.path = self.folder / f"journal{suffix}.jsonl"
        self.lock_path = self.folder / f"{self.LOCK}{suffix}"
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            self.rows = self._rows(self.path)
        elif self.folder.is_dir() and any(not self._ours(p) for p in self.folder.iterdir()):
            raise UserError(f"{self.folder} is not empty and holds no sweep; choose a new --out")

    def _ours(self, p: Path) -> bool:
        """A file a sweep writes: a journal, a lock, the runs folder (also of the other shards)."""
        return p.name == self.RUNS or p.name.startswith(self.LOCK) or (p.name.startswith("journal")
                                                                       and p.suffix == ".jsonl")

    def _rows(self, path: Path) -> list[dict[str, Any]]:
        """A journal's rows, after checking it holds a sweep of these settings, and rows of its shape (a
        line of the wrong shape would crash the report, or make the sweep train its cell again)."""
        lines = self._read(path)
        edited = "the journal was edited or is not one: restore it, or choose another --out"
        if not lines or not isinstance(lines[0], dict) or not isinstance(lines[0].get("settings"), dict):
            raise UserError(f"{path}, line 1, is not a sweep's settings ({{\"settings\": {{...}}}}); {edited}")
        if lines[0]["settings"] != self.settings:
            raise UserError(f"{self.folder} holds a sweep of other settings ({path.name}); resume it with its own "
                            f"command, or choose another --out")
        for n, row in enumerate(lines[1:], 2):
            missing = [k for k in self.keys if k not in row] if isinstance(row, dict) else None
            if missing is None:
                raise UserError(f"{path}, line {n}, is {shown(row)}, not a row (a mapping of "
                                f"{', '.join(self.keys)}); {edited}")
            if missing:
                raise UserError(f"{path}, line {n}, lacks {', '.join(missing)}; {edited}")
            wrong = [f"{k}={shown(row[k])}" for k, kinds in _ROW_TYPES.items() if k in row and
                     not isinstance(row[k], kinds)]
            if wrong:
                raise UserError(f"{path}, line {n}, has {', '.join(wrong)}, of the wrong type; {edited}")
        return lines[1:]

    def _read(self, path: Path) -> list[Any]:
        """The journal's lines; a last line cut short (the process was killed while writing it) is dropped."""
        try:
            text = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise UserError(f"{path} is not a text file: the journal was edited or is not one; restore it, or "
                            f"choose another --out") from None
        lines = []
        for n, line in enumerate(text):
            try:
                lines.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                if n + 1 < len(text):
                    raise UserError(f"{path}, line {n + 1}, is not JSON: the journal was edited; restore it or "
                                    f"choose another --out") from None
        return lines

    def shard_rows(self) -> list[dict[str, Any]]:
        """The rows of every shard's journal in the folder (the same settings, or an error)."""
        return [row for p in sorted(self.folder.glob("journal-shard-*-of-*.jsonl")) for row in self._rows(p)]

    def __enter__(self) -> "Journal":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = filelock.FileLock(str(self.lock_path), timeout=0)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise UserError(f"{self.folder} is being written by another sweep{' shard' if self.shard else ''}; wait "
                            f"for it or choose another --out") from None
        if not self.path.is_file():
            self._append({"settings": self.settings})
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a+") as f:
            f.seek(0)
            text = f.read()
            if text and not text.endswith("\n"):  # a line cut short by a kill: write over it
                f.truncate(text.rfind("\n") + 1)
            f.write(json.dumps(row, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def row(self, cell: dict[str, Any]) -> dict[str, Any] | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in cell.items())), None)

    def add(self, row: dict[str, Any]) -> None:
        self._append(row)
        self.rows.append(row)


def _run_cells(cells: list[dict[str, Any]], measure: Callable[[dict[str, Any]], dict[str, Any]], journal: Journal,
               progress: bool, merge: bool = False) -> list[dict[str, Any]]:
    """``measure`` every cell not yet in the journal, in order, journaling each row (with its seconds);
    the rows of all cells. A shard's journal takes every n-th cell only, and returns their rows;
    the main journal first takes the rows the shards finished, and with ``merge`` measures nothing."""
    if journal.shard is not None:
        i, n = journal.shard
        cells = cells[i::n]
    else:
        for row in journal.shard_rows():
            if journal.row({k: row[k] for k in cells[0] if k in row}) is None:
                journal.add(row)
    todo = [c for c in cells if journal.row(c) is None]
    if merge and todo:
        raise UserError(f"{len(todo)} of {len(cells)} cells are in no journal of {journal.folder} (the first: "
                        f"{todo[0]}); run the shards that hold them (--shard i/n), then merge again")
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", disable=not progress, leave=False)
    for cell in todo:
        bar.set_description(" ".join(f"{k}={v}" for k, v in cell.items()))
        t0 = time.time()
        row = dict(cell, **measure(cell))
        journal.add(dict(row, seconds=round(time.time() - t0, 2)))
        bar.update()
        bar.set_postfix(last=_outcome(row))
    bar.close()
    return [journal.row(c) for c in cells]


def hessian_outcome(row: dict[str, Any]) -> str | None:
    """Why a Hessian row has no log norm: ``'overflow'`` (the products overflowed) or ``'zero HVP'``
    (a Hessian-vector product was exactly zero: a degenerate measurement, not a small curvature);
    ``None`` if it has one."""
    if row["spectral_norm"] is None:
        return "overflow"
    return "zero HVP" if row["log_norm"] is None else None


def _outcome(row: dict[str, Any]) -> str:
    if "log_norm" in row:
        return hessian_outcome(row) or f"ln|H| {row['log_norm']:.2f}"
    if not row["survived"]:
        return "diverged"
    return "survived" if row["test_acc"] is None else f"acc {row['test_acc']:.1f}"


def _train_cells(cells: list[dict[str, Any]], make_cfg: Callable[[dict[str, Any]], TrainConfig], journal: Journal,
                 progress: bool, merge: bool = False) -> list[dict[str, Any]]:
    """:func:`_run_cells` that trains each cell under ``runs/`` (resuming a run a stopped sweep left there)."""
    data, runs = shared_data(), journal.folder / Journal.RUNS
    folder = lambda cell: runs / "-".join(f"{k}{v}" for k, v in cell.items())  # noqa: E731

    def measure(cell: dict[str, Any]) -> dict[str, Any]:
        row = train_cell(make_cfg(cell), folder(cell), data)
        shutil.rmtree(folder(cell))
        return row

    rows = _run_cells(cells, measure, journal, progress, merge)
    for row in rows:  # left by a sweep killed between a row and its folder's removal; the other shards' stay
        shutil.rmtree(folder({k: row[k] for k in cells[0]}), ignore_errors=True)
    with contextlib.suppress(OSError):
        runs.rmdir()  # once empty: other shards may still train there
    return rows


# Config keys a sweep's rows do not depend on: those that are not part of a recipe, less the evaluation's.
_NOT_IN_RESULTS = tuple(k for k in NON_RECIPE_KEYS if k not in ("eval_every", "eval_subset"))


def _journal(out: str | Path, base: TrainConfig, cells: list[dict[str, Any]], extra: dict[str, Any] | None,
             shard: Shard | None, results: Sequence[str]) -> Journal:
    """The journal of a sweep of ``cells`` from ``base``: its settings are what its rows depend on (the
    config less ``_NOT_IN_RESULTS``, the cells, ``extra``), and each row holds its cell, the
    ``results`` and its seconds."""
    settings = dict(extra or {}, base={k: v for k, v in base.to_dict().items() if k not in _NOT_IN_RESULTS},
                    cells=cells)
    return Journal(out, settings, shard, keys=(*(cells[0] if cells else ()), *results, "seconds"))


def blocks_for_depth(model: str, depth: int) -> int:
    """Blocks per stage of a zoo family at ``depth`` layers: WRNs have 6n + 4, ResNets 6n + 2."""
    extra = 4 if "_wrn" in model else 2
    if depth < 6 + extra or (depth - extra) % 6:
        raise ValueError(f"{model} has 6n + {extra} layers (n >= 1), not {depth}; e.g. {6 + extra}, {6 * 16 + extra}")
    return (depth - extra) // 6


def depth_sweep(base: TrainConfig, depths: Sequence[int], schemes: Sequence[str], seeds: Sequence[int],
                out: str | Path, settings: dict[str, Any] | None = None, progress: bool = True,
                shard: Shard | None = None, merge: bool = False) -> list[dict[str, Any]]:
    """Train ``base`` (its budget: epochs, subset, evaluation) at every depth × scheme × seed; one
    row per run: ``depth, init, seed`` and :func:`train_cell`'s outcome. Resumable in ``out``;
    ``shard`` and ``merge`` as in the module docs."""
    for d in depths:
        blocks_for_depth(base.model, d)
    cells = [dict(depth=d, init=s, seed=k) for d in depths for s in schemes for k in seeds]

    def make(c: dict[str, Any]) -> TrainConfig:
        args = dict(base.model_args, blocks=blocks_for_depth(base.model, c["depth"]))
        return dataclasses.replace(base, init=c["init"], seed=c["seed"], model_args=args)

    with _journal(out, base, cells, settings, shard, _TRAINED) as journal:
        return _train_cells(cells, make, journal, progress, merge)


def divergence_grid(base: TrainConfig, lrs: Sequence[float], warmups: Sequence[float], schemes: Sequence[str],
                    seeds: Sequence[int], out: str | Path, settings: dict[str, Any] | None = None,
                    progress: bool = True, shard: Shard | None = None, merge: bool = False) -> list[dict[str, Any]]:
    """Train ``base`` for its epochs under every scheme × lr × warmup (epochs; 0: none) × seed; one
    row per run: ``init, lr, warmup_epochs, seed`` and whether it survived (no NaN or inf loss).
    Resumable in ``out``; ``shard`` and ``merge`` as in the module docs."""
    cells = [dict(init=s, lr=lr, warmup_epochs=w, seed=k) for s in schemes for w in warmups for lr in lrs
             for k in seeds]

    def make(c: dict[str, Any]) -> TrainConfig:
        return dataclasses.replace(base, **c)

    with _journal(out, base, cells, settings, shard, _TRAINED) as journal:
        return _train_cells(cells, make, journal, progress, merge)
