"""The training loop: ``train`` (``train/train.py``), ``train_stack`` for several runs as one model, and ``export_run``.

Design points: the dataset lives on the device (``wnzoo.data.DeviceData``), which draws an epoch's
randomness at its start; the step (``wnzoo.training.step``) is one function of device tensors, and
the host syncs only every ``log_every`` steps (progress bar, NaN check). After every epoch a run's
one state file is written atomically (``wnzoo.training.checkpoint``). Since an epoch's randomness
is a function of ``(seed, epoch)`` and the learning rate one of the step, ``--resume`` after a
crash (even SIGKILL) replays exactly what an uninterrupted run would have done (bit for bit on a
CPU; on a GPU up to the float noise that cuDNN's autotuning and atomic adds leave between any two
runs).

Several runs of one architecture train as one stacked model (``train_stack``; ``wnzoo.training.stack``).
Each keeps its own seed, data order, augmentation, init, schedule, divergence check and state
file. A run that finishes or diverges leaves the stack, and the others go on. A single run is a
stack of one. Several processes (``torchrun``) train one run data-parallel: each takes its slice
of the same global batch and the gradients are averaged, which keeps results equal to a single
process with that batch.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from .._cli import TrainingDiverged
from .._io import save_safetensors
from ..data import DataError, DeviceData, fingerprint, load_split, train_val_indices
from ..evaluation import evaluate, load_test_data
from ..registry import create_model
from .checkpoint import RunFolder, RunState, StateError
from .config import NON_RECIPE_KEYS, ConfigError, TrainConfig, check_stack, shown, world_from_env
from .plots import plot_curves
from .schedule import LRSchedule
from .stack import Stacked, stack_models
from .step import RunOptim, TrainStep, load_compile_cache, save_compile_cache

__all__ = ["train", "train_stack", "export_run", "throughput", "weight_decay_of", "TrainingDiverged", "hardware_name",
           "shared_data", "initial_model", "DataSource", "epoch_share"]


def hardware_name(device: torch.device) -> str:
    """What the card says a run trained on: the GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


class RunData(NamedTuple):
    train: DeviceData
    eval: DeviceData | None
    eval_split: str | None  # "test", "val" or None
    sha256: str             # of the training split's arrays ("" for synthetic data)


@dataclass
class _Member:
    """One run of a stack: its recipe, folder, data and schedule, and where it stands."""

    cfg: TrainConfig
    folder: RunFolder | None  # None: a throughput measurement, which writes nothing
    model: nn.Module          # the run alone; refreshed from the stack (``_sync``) before it is saved or evaluated
    data: RunData
    schedule: LRSchedule
    optim: RunOptim
    momentum: dict[str, torch.Tensor]   # SGD momentum by parameter name (absent: zero)
    ema: dict[str, torch.Tensor] | None  # EMA weights (None: the weights themselves, at the start)
    epoch: int = 0                       # epochs done
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"              # then finished, paused or diverged
    result: dict[str, Any] | None = None  # the summary, once it diverged
    step_used: str = "none"              # the step mode it last trained with
    state: RunState | None = None        # the last state saved

    @property
    def name(self) -> str:
        return self.folder.path.name if self.folder is not None else self.cfg.model


@dataclass
class _Stack:
    """The runs training together, the stacked model that holds them, and its step."""

    members: list[_Member]
    device: torch.device
    rank: int
    world: int
    autocast: bool  # bf16 autocast, for training and evaluation alike
    hardware: str   # the name each history row records
    stacked: Stacked | None = None
    step: TrainStep | None = None
    cache_pending: bool = False  # a new step compiled: its compiler cache is not saved yet

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cfg(self) -> TrainConfig:
        """The first run's config: every key the runs must share (``check_stack``) is read from it."""
        return self.members[0].cfg

    @property
    def steps_per_epoch(self) -> int:
        return self.members[0].schedule.steps_per_epoch


# ---- build ---------------------------------------------------------------------------------------

def _setup_device(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    env = world_from_env()
    world = env.world
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda but this machine has no usable CUDA device; use --set device=cpu (or auto)")
    if cfg.compile == "reduce-overhead" and world > 1:
        raise ConfigError("compile=reduce-overhead (CUDA graphs) runs one process; with torchrun use compile=default")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if not use_cuda:
        return rank, world, torch.device("cpu")
    local = env.local_rank
    torch.cuda.set_device(local)
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
    torch.backends.cuda.matmul.allow_tf32 = True
    return rank, world, torch.device("cuda", local)


def _first(n: int, available: int, key: str, what: str) -> int:
    """``n`` of ``available`` items (0: all), refusing more than there are."""
    if n > available:
        raise ConfigError(f"{key}={n} exceeds the {available} {what}; lower it (0 uses all)")
    return n or available


def _load_data(cfg: TrainConfig, device: torch.device, read: Callable = load_split) -> RunData:
    """The training data and what is evaluated: the held-out 5k (``val_split``), the test split, or
    nothing (``eval_every=0``: the test split need not exist on a training machine). ``read`` reads
    one split, as :func:`wnzoo.data.load_split`."""
    images, labels = read(cfg.data, cfg.dataset, "train")
    sha = fingerprint(images, labels)
    kw = dict(seed=cfg.seed, channels_last=cfg.channels_last)
    ev = split = None
    if cfg.val_split:
        tr, va = train_val_indices(len(labels))
        ev, split = (images[va], labels[va]), "val"
        images, labels = images[tr], labels[tr]
    elif cfg.eval_every:
        ev, split = read(cfg.data, cfg.dataset, "test"), "test"
    n = _first(cfg.subset, len(labels), "subset", "training images")
    if n < cfg.batch_size:
        raise ConfigError(f"the {n} training images are fewer than batch_size={cfg.batch_size}; lower batch_size")
    train_data = DeviceData.from_arrays(images[:n], labels[:n], cfg.dataset, device, cutout=cfg.cutout, **kw)
    if ev is None or not cfg.eval_every:
        return RunData(train_data, None, None, sha)
    m = _first(cfg.eval_subset, len(ev[1]), "eval_subset", f"{split} images")
    return RunData(train_data, DeviceData.from_arrays(ev[0][:m], ev[1][:m], cfg.dataset, device, **kw), split, sha)


def weight_decay_of(model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
    """Each parameter's weight decay, grouped as timm's optimizer factory groups them: the
    parameters in the model's ``no_weight_decay()`` (the paper's recipe exempts none) and, with
    ``wd_on_gains_biases_bn: false``, every 1-d tensor (WN gains, biases, BN affine) get none."""
    opt = create_optimizer_v2(model, "momentum", lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              filter_bias_and_bn=not cfg.wd_on_gains_biases_bn)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    return {name: decay[id(p)] for name, p in model.named_parameters()}


DataSource = Callable[[TrainConfig, torch.device], RunData]


def shared_data() -> DataSource:
    """A data source for many short runs (sweeps): each split is read from disk once, not per run."""
    read = functools.cache(load_split)
    return lambda cfg, device: _load_data(cfg, device, read)


def _member(cfg: TrainConfig, folder: RunFolder | None, state: RunState | None, data: RunData,
            device: torch.device) -> _Member:
    """One run: its model initialized (data-dependent schemes from its first training batch, as
    the authors' code) or restored from ``state``, its schedule and update rule."""
    if state is not None and state.data_sha256 and state.data_sha256 != data.sha256:
        raise StateError(f"the training data in {cfg.data} is not the data this run trained on (sha256 "
                         f"{data.sha256[:12]}… vs {state.data_sha256[:12]}… in its state); resume it with the same "
                         f"data, or start a new --out folder")
    torch.manual_seed(cfg.seed)
    init, batch = None, None  # a resumed model's weights come from the state
    if state is None:
        init, batch = cfg.init, next(data.train.batches(0, cfg.batch_size, train=True))[0].cpu().contiguous()
    model = create_model(cfg.model, num_classes=None, init=init, init_batch=batch, **cfg.model_args).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if state is not None:
        state.restore(model)
    schedule = LRSchedule(cfg.lr, cfg.epochs, data.train.num_batches(cfg.batch_size, drop_last=True),
                          cfg.warmup_epochs, cfg.warmup_lr, cfg.warmup_shape, cfg.schedule, tuple(cfg.milestones),
                          cfg.gamma)
    optim = RunOptim(cfg.momentum, cfg.nesterov, weight_decay_of(model, cfg), cfg.grad_clip, cfg.label_smoothing)
    on_device = lambda tensors: {k: t.to(device) for k, t in tensors.items()}  # noqa: E731
    if state is None:
        return _Member(cfg, folder, model, data, schedule, optim, {}, None)
    return _Member(cfg, folder, model, data, schedule, optim, on_device(state.momentum),
                   on_device(state.ema) if state.ema and cfg.ema_decay else None, state.epoch, list(state.history))


def _build(cfgs: Sequence[TrainConfig], folders: Sequence[RunFolder | None], states: Sequence[RunState | None],
           load_data: DataSource, compile_cache: str | os.PathLike | None = None) -> _Stack:
    """The runs of a stack (not yet assembled), on the device the first config names. The data is
    loaded once: each run draws its own epochs from it (its seed and cutout). A compiled step
    primes the compiler's caches from ``compile_cache`` first."""
    if len(cfgs) > 1:
        check_stack(list(cfgs))
    if compile_cache is not None and cfgs[0].compile != "none":
        load_compile_cache(compile_cache)
    rank, world, device = _setup_device(cfgs[0])
    if world > 1 and len(cfgs) > 1:
        raise ConfigError("a stack of runs trains in one process; with torchrun, train one run")
    if cfgs[0].batch_size % world:
        raise ConfigError(f"batch_size={cfgs[0].batch_size} must be divisible by the {world} processes")
    data = load_data(cfgs[0], device)
    members = []
    for cfg, folder, state in zip(cfgs, folders, states):
        own = data if cfg is cfgs[0] else data._replace(
            train=dataclasses.replace(data.train, seed=cfg.seed, cutout=cfg.cutout))
        members.append(_member(cfg, folder, state, own, device))
    autocast = cfgs[0].amp == "bf16" and device.type == "cuda"
    return _Stack(members, device, rank, world, autocast, hardware_name(device))


def _assemble(stack: _Stack) -> None:
    """Stack the members' models, momentum and EMA weights into one model and its training step."""
    cfg, members = stack.cfg, stack.members
    stacked = stack_models([m.model for m in members])
    if cfg.channels_last:
        stacked.module.to(memory_format=torch.channels_last)
    momentum = stacked.stack([{k: m.momentum[k] if k in m.momentum else torch.zeros_like(p)
                               for k, p in m.model.named_parameters()} for m in members])
    ema = None
    if cfg.ema_decay:
        ema = ModelEmaV3(stacked.module, decay=cfg.ema_decay)
        ema.module.load_state_dict(stacked.stack([m.ema or m.model.state_dict() for m in members]))
    stack.stacked = stacked
    stack.step = TrainStep(stacked, [m.optim for m in members], momentum, compile=cfg.compile,
                           autocast=stack.autocast, ema=ema, world=stack.world)
    stack.cache_pending = cfg.compile != "none"


def _sync(stack: _Stack) -> None:
    """Each member's model, momentum and EMA weights, from the stack (views where they can be)."""
    stacked, step = stack.stacked, stack.step
    tensors = stacked.module.state_dict()
    ema = step.ema.module.state_dict() if step.ema is not None else None
    for k, m in enumerate(stack.members):
        if stacked.n > 1:
            m.model.load_state_dict(stacked.member(tensors, k))
        m.momentum = stacked.member(step.momentum, k)
        if ema is not None:
            m.ema = stacked.member(ema, k)
        m.step_used = step.used


def _leave(stack: _Stack, leaving: Sequence[_Member]) -> None:
    """``leaving`` leave the stack; the others are stacked anew (their step compiles again)."""
    _sync(stack)
    stack.members = [m for m in stack.members if m not in leaving]
    stack.stacked = stack.step = None
    if stack.members:
        _assemble(stack)


def initial_model(cfg: TrainConfig, data: DataSource | None = None) -> tuple[nn.Module, DeviceData]:
    """The model a run of ``cfg`` starts from (initialized as ``train`` does it, data-dependent schemes
    from the first batch) and its training data (``data``: see :func:`train`), without training."""
    member = _build([cfg], [None], [None], data or _load_data).members[0]
    return member.model, member.data.train


def _open_state(folder: RunFolder, cfg: TrainConfig, resume: bool, tensors: bool = True) -> RunState | None:
    """The state to resume from (``resume``), after checking it belongs to this recipe; with
    ``tensors=False`` only its header is read."""
    if (folder / RunFolder.LEGACY_STATE).is_file():
        raise StateError(f"{folder.path} holds a {RunFolder.LEGACY_STATE} from wnzoo 0.1, which this version cannot resume; "
                         f"finish it with wnzoo 0.1 or start a new --out folder")
    if not resume:
        if folder.has_state():
            raise StateError(f"{folder.path} already holds a run; pass --resume to continue it or choose "
                             f"another --out")
        found = [] if folder.diverged_before_saving() else folder.contents()
        if found:  # a finished run without its state, a release folder, anything else: never overwritten
            listed = ", ".join(found[:4]) + (", …" if len(found) > 4 else "")
            raise StateError(f"{folder.path} is not empty ({listed}); training never writes over files: choose a "
                             f"new --out")
        return None
    if not folder.has_state():
        raise FileNotFoundError(f"--resume: {folder.state} not found; nothing to resume (drop --resume to start)")
    state = folder.read_state(tensors)
    ran = {**TrainConfig().to_dict(), **state.config}  # a key added since the run started has its default
    diff = {k: (ran.get(k), v) for k, v in cfg.to_dict().items() if k not in NON_RECIPE_KEYS and ran.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: run has {shown(a)}, given {shown(b)}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume with a different recipe ({lines}); resume with the run's own config.yaml "
                          f"or start a new --out folder")
    return state


# ---- one epoch -------------------------------------------------------------------------------------

def _train_epoch(stack: _Stack, progress: bool = False) -> dict[int, dict[str, Any]]:
    """Train one epoch of every member (each its own next epoch); returns the history row (without
    evaluation) of each member that trained it all, by ``id``. A member that diverges leaves."""
    members, steps, bs = list(stack.members), stack.steps_per_epoch, stack.cfg.batch_size
    t0 = time.time()
    stack.stacked.module.train()
    # Every learning rate of the epoch, moved to the device at its start: no step waits for the host.
    lrs = torch.tensor([[m.schedule.lr_at(m.epoch * steps + i) for m in members] for i in range(steps)],
                       dtype=torch.float32, device=stack.device)
    losses = torch.zeros(steps, len(members), device=stack.device)
    correct = torch.zeros(len(members), device=stack.device, dtype=torch.long)
    bar = None
    if progress and stack.main:
        what = f"epoch {members[0].epoch + 1}/{members[0].cfg.epochs}" if len(members) == 1 else \
            f"{len(members)} runs, epoch {members[0].epoch + 1}"
        bar = tqdm(total=steps, desc=what, unit="step", leave=False)
    batches = [m.data.train.batches(m.epoch, bs, train=True, shard=(stack.rank, stack.world)) for m in members]
    checked = 0
    for i in range(steps):
        parts = [next(b) for b in batches]
        x, y = stack.stacked.inputs([p[0] for p in parts]), stack.stacked.labels([p[1] for p in parts])
        loss, right = stack.step(x, y, lrs[i])
        losses[i] = loss
        correct += right
        if (i + 1) % stack.cfg.log_every == 0 or i + 1 == steps:
            bad = _diverged(stack, members, losses[checked:i + 1], checked)
            if bad:
                keep = [j for j, m in enumerate(members) if m not in bad]
                _leave(stack, bad)
                if not keep:
                    break
                members, batches = [members[j] for j in keep], [batches[j] for j in keep]
                lrs, losses, correct = lrs[:, keep], losses[:, keep], correct[keep]
            if bar is not None:
                seen = (i + 1) * bs
                bar.update(i + 1 - checked)
                bar.set_postfix(loss=f"{losses[:i + 1].mean().item():.3f}",
                                acc=f"{100 * correct.sum().item() * stack.world / seen / len(members):.1f}",
                                lr=f"{lrs[i].max().item():.4f}",
                                img_s=f"{seen * len(members) / (time.time() - t0):.0f}")
            checked = i + 1
    if bar is not None:
        bar.close()
    if not stack.members:
        return {}
    train_time = time.time() - t0
    seen = steps * bs // stack.world
    return {id(m): dict(epoch=m.epoch + 1, lr=m.schedule.lr_at((m.epoch + 1) * steps - 1),
                        train_loss=losses[:, j].mean().item(), train_acc=100.0 * correct[j].item() / seen,
                        epoch_time_s=train_time, img_per_s=steps * bs / train_time, device=stack.hardware,
                        step=stack.step.used, stack=len(members))
            for j, m in enumerate(members)}


def _diverged(stack: _Stack, members: list[_Member], losses: torch.Tensor, first_step: int) -> list[_Member]:
    """The members whose loss became NaN or inf in ``losses`` (steps × members); each gets its
    message and a summary that says where."""
    bad = ~torch.isfinite(losses)
    if not bad.any():
        return []
    out = []
    for j in bad.any(0).nonzero().flatten().tolist():
        m, row = members[j], int(bad[:, j].nonzero()[0, 0])
        step = first_step + row
        lr = m.schedule.lr_at(m.epoch * stack.steps_per_epoch + step)
        kept = (f"the last good checkpoint (epoch {m.epoch}) is kept in {m.folder.path}" if m.epoch and m.folder
                else "no epoch had finished, so there is no checkpoint")
        m.status, message = "diverged", (
            f"training diverged: loss is {losses[row, j].item()} at epoch {m.epoch + 1}, step {step + 1} "
            f"(lr {lr:.4g}); {kept}. Lower lr, or add warmup (warmup_epochs)")
        m.result = _summary(m.cfg.to_dict(), m.history, dict(
            _run_fields(stack, m), survived=False, status="diverged", error=message,
            diverged_at=dict(epoch=m.epoch + 1, step=step + 1, lr=lr)))
        if stack.main and m.folder is not None:
            m.folder.write_summary(m.result)
        out.append(m)
    return out


def _run_fields(stack: _Stack, m: _Member) -> dict[str, Any]:
    """What a summary says about how the run trained."""
    return dict(survived=True, eval_split=m.data.eval_split, world_size=stack.world, device=str(stack.device))


def _evaluate(stack: _Stack, m: _Member, row: dict[str, Any]) -> None:
    """Evaluate every ``eval_every`` epochs and after the last (never with ``eval_every=0``)."""
    cfg, epoch, data = m.cfg, row["epoch"], m.data
    if data.eval is None or (epoch % cfg.eval_every and epoch != cfg.epochs):
        return
    res = evaluate(m.model, data.eval, autocast=stack.autocast)
    row.update({f"{data.eval_split}_acc": res["top1"], f"{data.eval_split}_loss": res["loss"]})
    if m.ema is not None:
        ema = copy.deepcopy(m.model)
        ema.load_state_dict(m.ema)
        row[f"{data.eval_split}_acc_ema"] = evaluate(ema, data.eval, autocast=stack.autocast)["top1"]


# ---- save and finish -------------------------------------------------------------------------------

def epoch_share(row: dict[str, Any]) -> float:
    """The seconds of a history row's epoch that were the run's: the runs of a stack share its time."""
    return row["epoch_time_s"] / row.get("stack", 1)


def _summary(cfg: dict[str, Any], history: list[dict[str, Any]], fields: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``: the run's status (in ``fields``) and what the history says about it."""
    hardware = list(dict.fromkeys(r["device"] for r in history if "device" in r))
    out = dict(model=cfg["model"], dataset=cfg["dataset"], survived=True,
               epochs_done=history[-1]["epoch"] if history else 0, hardware=hardware,
               gpu_minutes=round(sum(epoch_share(r) for r in history if r.get("device", "cpu") != "cpu") / 60, 2))
    out.update(fields)
    if out["status"] == "finished" and history:
        out["final"] = history[-1]
        if "test_acc" in history[-1]:
            out["test_acc"] = history[-1]["test_acc"]
    return out


def _write_exports(folder: RunFolder, state: RunState, summary: dict[str, Any] | None) -> None:
    """Everything in a run folder besides its state, derived from the state alone; the summary and
    curves only when the run stops (``summary`` given): a folder without a summary is still training."""
    meta = {"architecture": state.config["model"], "epoch": str(state.epoch), "format": "pt"}
    save_safetensors(folder / RunFolder.WEIGHTS, state.model, meta)
    if state.ema:
        save_safetensors(folder / RunFolder.EMA_WEIGHTS, state.ema, meta)
    folder.write_metrics(state.history)
    folder.write_config(state.config)
    if summary is None:
        return
    folder.write_summary(summary)
    if state.history:
        try:
            title = f"{state.config['model']} on {state.config['dataset']}"
            plot_curves(state.history, folder / RunFolder.CURVES, title)
        except ImportError as e:  # a bare GPU machine without matplotlib: export_run plots later
            print(f"warning: no curves.png ({e}); plot later with wnzoo.training.export_run", flush=True)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / RunFolder.TENSORBOARD))


def _save(m: _Member, export: bool, writers: dict[int, Any]) -> None:
    """After an epoch: the member's state (and with ``export`` its other files and TensorBoard
    scalars), written atomically."""
    m.state = RunState(m.epoch, m.cfg.to_dict(), list(m.history), m.model.state_dict(),
                       dict(m.momentum) if m.cfg.momentum else {}, dict(m.ema) if m.ema is not None else {},
                       m.data.sha256)
    m.state.save(m.folder.state)
    if not export:
        return
    _write_exports(m.folder, m.state, None)
    writer = writers.get(id(m)) or _tensorboard(m.folder.path)
    if writer is not None:
        writers[id(m)] = writer
        for k, v in m.history[-1].items():
            if isinstance(v, (int, float)) and k not in ("epoch", "stack"):
                writer.add_scalar(k, v, m.epoch)


def _log(m: _Member, named: bool) -> None:
    row = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.history[-1].items())
    print(f"[{m.name}] {row}" if named else row, flush=True)


def _finish(stack: _Stack, m: _Member, t_start: float, export: bool, writers: dict[int, Any]) -> dict[str, Any]:
    """The member's summary (written, with its curves, when ``export``), once it stopped training."""
    writer = writers.pop(id(m), None)
    if writer is not None:
        writer.close()
    if m.status == "diverged":
        return m.result
    summary = _summary(m.cfg.to_dict(), m.history, dict(_run_fields(stack, m), status=m.status,
                                                         compile_used=m.step_used,
                                                         seconds_this_session=time.time() - t_start))
    if stack.main and export and m.history and m.folder is not None:
        _write_exports(m.folder, m.state or m.folder.read_state(), summary)
    return summary


def train(cfg: TrainConfig, out_dir: str | os.PathLike, resume: bool = False, time_limit_s: float | None = None,
          progress: bool = True, export: bool = True, log_epochs: bool | None = None,
          data: DataSource | None = None, compile_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; returns the run summary.

    ``out_dir`` must be new or empty, or (``resume``) hold an unfinished run of this recipe on the
    same data; it is locked for the run, so a second run into it fails at once. A finished run is
    left as it is. ``progress`` shows a progress bar, ``log_epochs`` (default: ``progress``) prints
    a line per epoch. ``time_limit_s`` stops cleanly after the last epoch that fits (status ``'paused'``), for
    time-boxed jobs; ``--resume`` continues. With ``export=False`` the folder gets only its state
    file (and ``summary.json`` if the run diverges), for jobs whose output must stay small;
    :func:`export_run` writes the rest later. ``data`` loads the data (default: from ``cfg.data``;
    see :func:`shared_data`). ``compile_cache``: a file of the compiler's cache, loaded before a
    compiled step is built and written after its first epoch, so that the next job on a fresh
    machine compiles from it. Raises :class:`TrainingDiverged` on NaN/inf.
    """
    summary, = train_stack([cfg], [out_dir], resume, time_limit_s, progress, export, log_epochs, data, compile_cache)
    if summary["status"] == "diverged":
        raise TrainingDiverged(summary["error"])
    return summary


def train_stack(cfgs: Sequence[TrainConfig], out_dirs: Sequence[str | os.PathLike],
                resume: bool | Sequence[bool] = False, time_limit_s: float | None = None, progress: bool = True,
                export: bool = True, log_epochs: bool | None = None, data: DataSource | None = None,
                compile_cache: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Train several runs of one architecture as one stacked model (:mod:`wnzoo.training.stack`),
    run ``k`` from ``cfgs[k]`` into ``out_dirs[k]``; returns their summaries, in order.

    Each run trains and writes what :func:`train` would (the same weights up to float summation
    order), so its folder exports and publishes like any other. The configs may differ only in
    ``PER_RUN_KEYS`` (seed, init, learning rate and schedule, warmup, epochs, …). ``resume`` is one
    flag for every run or one per run. A run that finishes leaves the stack; one that diverges
    leaves it with status ``'diverged'`` (its summary's ``error`` says where), and the others go
    on. The other arguments are :func:`train`'s, for every run.
    """
    t_start = time.time()
    if time_limit_s is not None and not time_limit_s > 0:
        raise ConfigError(f"the time limit must be a positive number of minutes, got {time_limit_s / 60!r}")
    if not cfgs or len(cfgs) != len(out_dirs):
        raise ConfigError(f"{len(cfgs)} configs for {len(out_dirs)} output folders; give one folder per run")
    if len({Path(o).resolve() for o in out_dirs}) < len(out_dirs):
        raise ConfigError("two runs of the stack share an output folder; give each run its own")
    resumes = [resume] * len(cfgs) if isinstance(resume, bool) else list(resume)
    log_epochs = progress if log_epochs is None else log_epochs
    main = world_from_env().rank == 0
    for cfg, out, r in zip(cfgs, out_dirs, resumes):  # first without the locks: a refused folder gets no lock file
        _open_state(RunFolder(out), cfg, r, tensors=False)
    with contextlib.ExitStack() as locks:
        folders = [locks.enter_context(RunFolder(out).claim(exclusive=main)) for out in out_dirs]
        states = [_open_state(f, cfg, r) for f, cfg, r in zip(folders, cfgs, resumes)]
        results: list[dict[str, Any] | None] = [None] * len(cfgs)
        todo = []
        for i, (cfg, folder, state) in enumerate(zip(cfgs, folders, states)):
            if state is None or state.epoch < cfg.epochs:
                todo.append(i)
                continue
            if log_epochs and main:  # nothing to train, and nothing is rewritten
                print(f"{folder.path} already finished its {state.epoch} epochs; nothing to train", flush=True)
            results[i] = _written_summary(folder, state.epoch)
            files = (RunFolder.WEIGHTS, RunFolder.METRICS, RunFolder.CONFIG, RunFolder.CURVES)
            # stopped while writing its files at the end (a signal, a full disk): write them
            if results[i].get("status") != "finished" or (export and not all((folder / f).is_file() for f in files)):
                results[i] = _summary(state.config, state.history, dict(status="finished"))
                if export and main:
                    _write_exports(folder, state, results[i])
        if todo:
            stack = _build([cfgs[i] for i in todo], [folders[i] for i in todo], [states[i] for i in todo],
                           data or _load_data, compile_cache)
            _assemble(stack)
            for i, s in zip(todo, _train(stack, t_start, time_limit_s, progress, export, log_epochs, compile_cache)):
                results[i] = s
    return results


def _train(stack: _Stack, t_start: float, time_limit_s: float | None, progress: bool, export: bool,
           log_epochs: bool, compile_cache: str | os.PathLike | None) -> list[dict[str, Any]]:
    """The epochs of ``train_stack``, from each run's first unfinished one; the runs' summaries."""
    everyone, writers = list(stack.members), {}  # a writer opens after the run's first saved epoch
    named = len(everyone) > 1
    while stack.members:
        t0 = time.time()
        rows = _train_epoch(stack, progress)
        if not stack.members:
            break
        _sync(stack)
        for m in stack.members:
            _evaluate(stack, m, rows[id(m)])
            m.history.append(rows[id(m)])
            m.epoch += 1
            if stack.main:
                _save(m, export, writers)
                if log_epochs:
                    _log(m, named)
        if stack.world > 1:
            dist.barrier()
        if stack.cache_pending and compile_cache is not None and stack.main:
            size = save_compile_cache(compile_cache)
            if size and log_epochs:
                print(f"compiler cache: {size / 2**20:.1f} MiB written to {compile_cache}", flush=True)
        stack.cache_pending = False
        done = [m for m in stack.members if m.epoch >= m.cfg.epochs]
        for m in done:
            m.status = "finished"
        going = [m for m in stack.members if m not in done]
        if not going:
            break
        if time_limit_s is not None and time.time() - t_start + (time.time() - t0) * 1.1 > time_limit_s:
            for m in going:
                m.status = "paused"
            break
        if done:
            _leave(stack, done)
    return [_finish(stack, m, t_start, export, writers) for m in everyone]


def export_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
               device: str = "cpu") -> dict[str, Any]:
    """Write a run folder's weights, metrics, config, summary and curves from its state file alone.

    For runs trained with ``export=False`` (time-boxed jobs). A finished run whose training did not
    evaluate (``eval_every=0``) is evaluated here, on the test split from ``data`` (default: the
    run's own data source), with the final weights: the number a card would state.
    """
    folder = RunFolder(run_dir)
    if not folder.has_state():
        raise FileNotFoundError(f"{folder.state} not found: {folder.path} is not a run folder")
    folder.read_state(tensors=False)  # a damaged state is refused before the folder gets a lock file
    with folder.claim():
        return _export(folder, data, device)


def _export(folder: RunFolder, data: str | os.PathLike | None, device: str) -> dict[str, Any]:
    state = folder.read_state()
    cfg = TrainConfig.from_dict(state.config)
    model = create_model(cfg.model, num_classes=None, **cfg.model_args)
    state.restore(model)  # the state's weights must be this architecture's, whether evaluated or not
    on_gpu = any(r.get("device", "cpu") != "cpu" for r in state.history)
    status = "finished" if state.epoch >= cfg.epochs else "paused"
    extra: dict[str, Any] = dict(status=status, world_size=1, device="cuda" if on_gpu else "cpu")
    last = state.history[-1] if state.history else {}
    if status == "finished" and not cfg.val_split and "test_acc" not in last:
        try:
            test = load_test_data(data if data is not None else cfg.data, cfg.dataset, device)
        except DataError as e:
            if data is not None:
                raise
            print(f"warning: the final weights are not evaluated: {e}. Pass the test data (--data)", flush=True)
        else:
            res = evaluate(model.to(device), test)
            extra.update(eval_split="test", test_acc=res["top1"], test_loss=res["loss"], test_measured_by="export_run")
    written = _written_summary(folder, state.epoch)
    summary = {**written, **{k: v for k, v in _summary(state.config, state.history, extra).items() if k not in written}}
    _write_exports(folder, state, summary)
    return summary


def _written_summary(folder: RunFolder, epoch: int) -> dict[str, Any]:
    """The summary the run wrote when it stopped at ``epoch``, if any: it holds what the state does not
    (how and where the run trained, a divergence), so an export keeps it and only adds to it."""
    try:
        written = folder.read_summary() if (folder / RunFolder.SUMMARY).is_file() else {}
    except ValueError:  # damaged: rebuilt from the state
        return {}
    return written if isinstance(written, dict) and written.get("epochs_done") == epoch else {}


def throughput(cfg: TrainConfig, seconds: float = 5.0, warmup_steps: int = 5, images: int = 2560,
               ready: Callable[[], None] | None = None, stack: int = 1,
               compile_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Training images per second of ``cfg``'s step, as ``train`` runs it, on random CIFAR-shaped data;
    with ``stack=N``, of N runs of ``cfg`` (seeds ``seed``, ``seed + 1``, …) trained as one stacked model.

    The first ``warmup_steps`` steps (where compiling and graph capture happen) are timed apart as
    ``warmup_s``; then ``ready()`` is called (a barrier, when several processes are measured at
    once) and steps run for ``seconds``, timed in blocks of 20 steps: ``img_per_s`` (every run's
    images) is the median block's, so one slow block (a cache flush, a neighbour's burst) does not
    move it. Compiling here fills the compiler's on-disk caches (and ``compile_cache``, which is
    loaded first if it exists), so a training run of the same recipe that follows starts faster.
    """
    gen = torch.Generator().manual_seed(0)
    images = max(images, 20 * cfg.batch_size)  # batches of 20 steps per pass
    pixels = torch.randint(0, 256, (images, 32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
    labels = torch.randint(0, 10, (images,), generator=gen).numpy()

    def random_data(cfg: TrainConfig, device: torch.device) -> RunData:
        return RunData(DeviceData.from_arrays(pixels, labels, cfg.dataset, device, seed=cfg.seed, cutout=cfg.cutout,
                                              channels_last=cfg.channels_last), None, None, "")

    run = _build([dataclasses.replace(cfg, seed=cfg.seed + k) for k in range(stack)], [None] * stack,
                 [None] * stack, random_data, compile_cache)
    _assemble(run)
    device = run.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    lr = torch.full((stack,), cfg.lr, device=device)
    run.stacked.module.train()

    def steps(n: int, epoch: int) -> int:
        done = 0
        while done < n:
            for parts in zip(*(m.data.train.batches(epoch, cfg.batch_size, train=True) for m in run.members)):
                run.step(run.stacked.inputs([x for x, _ in parts]), run.stacked.labels([y for _, y in parts]), lr)
                done += 1
                if done == n:
                    break
        sync()
        return done

    t0 = time.time()
    steps(warmup_steps, 0)
    warmup_s = time.time() - t0
    if compile_cache is not None and cfg.compile != "none":
        save_compile_cache(compile_cache)
    if ready is not None:
        ready()
    done, rates, t0 = 0, [], time.time()
    while not rates or time.time() - t0 < seconds:
        start = time.time()
        n = steps(20, 1 + done // 20)
        rates.append(n * cfg.batch_size * stack / (time.time() - start))
        done += n
    return dict(img_per_s=statistics.median(rates), runs=stack, warmup_s=warmup_s, steps=done,
                mode=run.step.used, hardware=hardware_name(device))
