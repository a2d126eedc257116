"""The training loop: ``train(cfg, out_dir)``, used by ``train/train.py``, and ``export_run``.

Design points: the dataset lives on the device (``wnzoo.data.DeviceData``), which draws an epoch's
randomness at its start; the step (``wnzoo.training.step``) returns device tensors, and the host
syncs only every ``log_every`` steps (progress bar, NaN check). After every epoch the run's one
state file is written atomically (``wnzoo.training.checkpoint``). Since an epoch's randomness is a
function of ``(seed, epoch)`` and the learning rate one of the step, ``--resume`` after a crash
(even SIGKILL) replays exactly what an uninterrupted run would have done (bit for bit on a CPU;
on a GPU up to the float noise that cuDNN's autotuning and atomic adds leave between any two runs).
Several processes (``torchrun``) use DistributedDataParallel: each takes its slice of the same
global batch, which keeps results equal to a single process with that batch.
"""
from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

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
from .config import NON_RECIPE_KEYS, ConfigError, TrainConfig
from .plots import plot_curves
from .schedule import LRSchedule
from .step import TrainStep

__all__ = ["train", "export_run", "throughput", "make_optimizer", "TrainingDiverged", "hardware_name", "shared_data",
           "initial_model", "DataSource"]


def hardware_name(device: torch.device) -> str:
    """What the card says a run trained on: the GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@dataclass
class _Run:
    """Everything one training run holds between its steps."""

    cfg: TrainConfig
    folder: RunFolder | None  # None: a throughput measurement, which writes nothing
    device: torch.device
    rank: int
    world: int
    train_data: DeviceData
    eval_data: DeviceData | None
    eval_split: str | None
    data_sha256: str  # of the training split, recorded in the state and checked on resume
    model: nn.Module
    opt: torch.optim.Optimizer
    schedule: LRSchedule
    step: TrainStep
    autocast: bool  # bf16 autocast, for training and evaluation alike
    hardware: str   # the name each history row records
    ema: Any = None
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch


# ---- build ---------------------------------------------------------------------------------------

def _setup_device(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
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
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
    torch.backends.cuda.matmul.allow_tf32 = True
    return rank, world, torch.device("cuda", local)


class RunData(NamedTuple):
    train: DeviceData
    eval: DeviceData | None
    eval_split: str | None  # "test", "val" or None
    sha256: str             # of the training split's arrays ("" for synthetic data)


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


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD from timm's factory: the parameters in the model's ``no_weight_decay()`` (the paper's
    recipe exempts none) and, with ``wd_on_gains_biases_bn: false``, every 1-d tensor (WN gains,
    biases, BN affine) are not decayed."""
    return create_optimizer_v2(model, "sgd" if cfg.nesterov else "momentum", lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, filter_bias_and_bn=not cfg.wd_on_gains_biases_bn,
                               **({"fused": True} if device.type == "cuda" else {}))


DataSource = Callable[[TrainConfig, torch.device], RunData]


def shared_data() -> DataSource:
    """A data source for many short runs (sweeps): each split is read from disk once, not per run."""
    read = functools.cache(load_split)
    return lambda cfg, device: _load_data(cfg, device, read)


def _build(cfg: TrainConfig, folder: RunFolder | None, state: RunState | None,
           load_data: DataSource = _load_data) -> _Run:
    """Data (``load_data``: from ``cfg.data`` by default), model (initialized, or restored from
    ``state``), optimizer, schedule and step."""
    rank, world, device = _setup_device(cfg)
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(cfg.seed)
    data = load_data(cfg, device)
    train_data = data.train
    if state is not None and state.data_sha256 and state.data_sha256 != data.sha256:
        raise StateError(f"the training data in {cfg.data} is not the data this run trained on (sha256 "
                         f"{data.sha256[:12]}… vs {state.data_sha256[:12]}… in its state); resume it with the same "
                         f"data, or start a new --out folder")
    if state is None:  # data-dependent schemes initialize from the first training batch, as the authors' code
        init, init_batch = cfg.init, next(train_data.batches(0, cfg.batch_size, train=True))[0].cpu().contiguous()
    else:  # a resumed model's weights come from the state
        init, init_batch = None, None
    model = create_model(cfg.model, num_classes=None, init=init, init_batch=init_batch, **cfg.model_args).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg, device)
    ema = None
    if cfg.ema_decay:
        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    if state is not None:
        state.restore(model, opt, ema.module if ema is not None else None)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = cfg.amp == "bf16" and device.type == "cuda"
    step = TrainStep(model, net, opt, compile=cfg.compile, autocast=autocast, label_smoothing=cfg.label_smoothing,
                     grad_clip=cfg.grad_clip, ema=ema)
    schedule = LRSchedule(cfg.lr, cfg.epochs, train_data.num_batches(cfg.batch_size, drop_last=True),
                          cfg.warmup_epochs, cfg.warmup_lr, cfg.warmup_shape, cfg.schedule, tuple(cfg.milestones),
                          cfg.gamma)
    return _Run(cfg, folder, device, rank, world, train_data, data.eval, data.eval_split, data.sha256, model, opt,
                schedule, step, autocast, hardware_name(device), ema, start_epoch=state.epoch if state else 0,
                history=list(state.history) if state else [])


def initial_model(cfg: TrainConfig, data: DataSource | None = None) -> tuple[nn.Module, DeviceData]:
    """The model a run of ``cfg`` starts from (initialized as ``train`` does it, data-dependent schemes
    from the first batch) and its training data (``data``: see :func:`train`), without training."""
    run = _build(cfg, None, None, data or _load_data)
    return run.model, run.train_data


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
        lines = ", ".join(f"{k}: run has {a!r}, given {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume with a different recipe ({lines}); resume with the run's own config.yaml "
                          f"or start a new --out folder")
    return state


# ---- one epoch -------------------------------------------------------------------------------------

def _train_epoch(run: _Run, epoch: int, summary: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """Train one epoch; returns its history row (without evaluation)."""
    cfg, steps = run.cfg, run.steps_per_epoch
    t0 = time.time()
    run.model.train()
    losses = torch.zeros(steps, device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    bar = None
    if progress and run.main:
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
    checked = 0
    batches = run.train_data.batches(epoch, cfg.batch_size, train=True, shard=(run.rank, run.world))
    for i, (x, y) in enumerate(batches):
        loss, right = run.step(x, y, run.schedule.lr_at(epoch * steps + i))
        losses[i] = loss
        correct += right
        if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
            _check_finite(run, losses[checked:i + 1], epoch, checked, summary)
            seen = (i + 1) * cfg.batch_size
            if bar is not None:
                bar.update(i + 1 - checked)
                bar.set_postfix(loss=f"{losses[:i + 1].mean().item():.3f}",
                                acc=f"{100 * correct.item() * run.world / seen:.1f}",
                                lr=f"{run.schedule.lr_at(epoch * steps + i):.4f}",
                                img_s=f"{seen / (time.time() - t0):.0f}")
            checked = i + 1
    if bar is not None:
        bar.close()
    train_time = time.time() - t0
    seen = steps * cfg.batch_size // run.world
    return dict(epoch=epoch + 1, lr=run.schedule.lr_at((epoch + 1) * steps - 1), train_loss=losses.mean().item(),
                train_acc=100.0 * correct.item() / seen, epoch_time_s=train_time,
                img_per_s=steps * cfg.batch_size / train_time, device=run.hardware)


def _check_finite(run: _Run, losses: torch.Tensor, epoch: int, first_step: int, summary: dict[str, Any]) -> None:
    bad = ~torch.isfinite(losses)
    if not bad.any():
        return
    step = first_step + int(bad.nonzero()[0, 0])
    lr = run.schedule.lr_at(epoch * run.steps_per_epoch + step)
    kept = (f"the last good checkpoint (epoch {epoch}) is kept in {run.folder.path}" if epoch
            else "no epoch had finished, so there is no checkpoint")
    msg = (f"training diverged: loss is {losses[bad][0].item()} at epoch {epoch + 1}, step {step + 1} "
           f"(lr {lr:.4g}); {kept}. Lower lr, or add warmup (warmup_epochs)")
    summary.update(survived=False, status="diverged", diverged_at=dict(epoch=epoch + 1, step=step + 1, lr=lr))
    if run.main:
        run.folder.write_summary(summary)
    raise TrainingDiverged(msg)


def _evaluate(run: _Run, row: dict[str, Any]) -> None:
    """Evaluate every ``eval_every`` epochs and after the last (never with ``eval_every=0``)."""
    cfg, epoch = run.cfg, row["epoch"]
    if run.eval_data is None or (epoch % cfg.eval_every and epoch != cfg.epochs):
        return
    res = evaluate(run.model, run.eval_data, autocast=run.autocast)
    row.update({f"{run.eval_split}_acc": res["top1"], f"{run.eval_split}_loss": res["loss"]})
    if run.ema is not None:
        row[f"{run.eval_split}_acc_ema"] = evaluate(run.ema.module, run.eval_data, autocast=run.autocast)["top1"]


# ---- save and finish -------------------------------------------------------------------------------

def _summary(cfg: dict[str, Any], history: list[dict[str, Any]], fields: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``: the run's status (in ``fields``) and what the history says about it."""
    hardware = list(dict.fromkeys(r["device"] for r in history if "device" in r))
    out = dict(model=cfg["model"], dataset=cfg["dataset"], survived=True,
               epochs_done=history[-1]["epoch"] if history else 0, hardware=hardware,
               gpu_minutes=round(sum(r["epoch_time_s"] for r in history if r.get("device", "cpu") != "cpu") / 60, 2))
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


def train(cfg: TrainConfig, out_dir: str | os.PathLike, resume: bool = False, time_limit_s: float | None = None,
          progress: bool = True, export: bool = True, log_epochs: bool | None = None,
          data: DataSource | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; returns the run summary.

    ``out_dir`` must be new or empty, or (``resume``) hold an unfinished run of this recipe on the
    same data; it is locked for the run, so a second run into it fails at once. A finished run is
    left as it is. ``progress`` shows a progress bar, ``log_epochs`` (default: ``progress``) prints
    a line per epoch. ``time_limit_s`` stops cleanly after the last epoch that fits (status ``'paused'``), for
    time-boxed jobs; ``--resume`` continues. With ``export=False`` the folder gets only its state
    file (and ``summary.json`` if the run diverges), for jobs whose output must stay small;
    :func:`export_run` writes the rest later. ``data`` loads the data (default: from ``cfg.data``;
    see :func:`shared_data`). Raises :class:`TrainingDiverged` on NaN/inf.
    """
    t_start = time.time()
    if time_limit_s is not None and not time_limit_s > 0:
        raise ConfigError(f"the time limit must be a positive number of minutes, got {time_limit_s / 60!r}")
    log_epochs = progress if log_epochs is None else log_epochs
    main = int(os.environ.get("WORLD_SIZE", "1")) == 1 or int(os.environ.get("RANK", "0")) == 0
    _open_state(RunFolder(out_dir), cfg, resume, tensors=False)  # first without the lock: a refused folder gets no lock file
    with RunFolder(out_dir).claim(exclusive=main) as folder:
        state = _open_state(folder, cfg, resume)
        if state is not None and state.epoch >= cfg.epochs:  # nothing to train, and nothing is rewritten
            if log_epochs and main:
                print(f"{folder.path} already finished its {state.epoch} epochs; nothing to train", flush=True)
            written = folder.read_summary() if (folder / RunFolder.SUMMARY).is_file() else {}
            if written.get("status") == "finished":  # an older summary (paused, say) is not the run's
                return written
            return _summary(state.config, state.history, dict(status="finished"))
        return _train(_build(cfg, folder, state, data or _load_data), t_start, time_limit_s, progress, export, log_epochs)


def _train(run: _Run, t_start: float, time_limit_s: float | None, progress: bool, export: bool,
           log_epochs: bool) -> dict[str, Any]:
    """The epochs of ``train``, from the run's first unfinished one."""
    cfg, folder = run.cfg, run.folder
    writer = None  # opened after the first saved epoch: a run stopped before it leaves its folder empty
    summary = dict(survived=True, status="running", eval_split=run.eval_split, world_size=run.world,
                   device=str(run.device))
    status, state = "finished", None
    for epoch in range(run.start_epoch, cfg.epochs):
        t0 = time.time()
        row = _train_epoch(run, epoch, summary, progress)
        _evaluate(run, row)
        run.history.append(row)
        if run.main:
            state = RunState.capture(run.model, run.opt, run.ema.module if run.ema else None, epoch + 1,
                                     cfg.to_dict(), run.history, run.data_sha256)
            state.save(folder.state)
            if export:
                _write_exports(folder, state, None)
                writer = writer or _tensorboard(folder.path)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
            if log_epochs:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
        if run.world > 1:
            dist.barrier()
        elapsed = time.time() - t_start
        if time_limit_s is not None and epoch + 1 < cfg.epochs and elapsed + (time.time() - t0) * 1.1 > time_limit_s:
            status = "paused"
            break
    summary = _summary(cfg.to_dict(), run.history, dict(summary, status=status, compile_used=run.step.used,
                                                        seconds_this_session=time.time() - t_start))
    if run.main and export and run.history:
        _write_exports(folder, state or folder.read_state(), summary)
    if writer is not None:
        writer.close()
    return summary


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
    with folder.claim():
        return _export(folder, data, device)


def _export(folder: RunFolder, data: str | os.PathLike | None, device: str) -> dict[str, Any]:
    state = folder.read_state()
    cfg = TrainConfig.from_dict(state.config)
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
            model = create_model(cfg.model, num_classes=None, **cfg.model_args)
            model.load_state_dict(state.model)
            res = evaluate(model.to(device), test)
            extra.update(eval_split="test", test_acc=res["top1"], test_loss=res["loss"], test_measured_by="export_run")
    summary = _summary(state.config, state.history, extra)
    _write_exports(folder, state, summary)
    return summary


def throughput(cfg: TrainConfig, seconds: float = 5.0, warmup_steps: int = 5, images: int = 2560,
               ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Training images per second of ``cfg``'s step, as ``train`` runs it, on random CIFAR-shaped data.

    The first ``warmup_steps`` steps (where compiling and graph capture happen) are timed apart as
    ``warmup_s``; then ``ready()`` is called (a barrier, when several processes are measured at
    once) and steps run for ``seconds``, timed in blocks of 20 steps: ``img_per_s`` is the median
    block's, so one slow block (a cache flush, a neighbour's burst) does not move it. Compiling here
    fills the compiler's on-disk caches, so a training run of the same recipe that follows on the
    machine starts faster.
    """
    gen = torch.Generator().manual_seed(0)
    images = max(images, 20 * cfg.batch_size)  # batches of 20 steps per pass
    pixels = torch.randint(0, 256, (images, 32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
    labels = torch.randint(0, 10, (images,), generator=gen).numpy()

    def random_data(cfg: TrainConfig, device: torch.device) -> RunData:
        return RunData(DeviceData.from_arrays(pixels, labels, cfg.dataset, device, seed=cfg.seed, cutout=cfg.cutout,
                                              channels_last=cfg.channels_last), None, None, "")

    run = _build(cfg, None, None, random_data)
    data, device = run.train_data, run.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run.model.train()

    def steps(n: int, epoch: int) -> int:
        done = 0
        while done < n:
            for x, y in data.batches(epoch, cfg.batch_size, train=True):
                run.step(x, y, cfg.lr)
                done += 1
                if done == n:
                    break
        sync()
        return done

    t0 = time.time()
    steps(warmup_steps, 0)
    warmup_s = time.time() - t0
    if ready is not None:
        ready()
    done, rates, t0 = 0, [], time.time()
    while not rates or time.time() - t0 < seconds:
        start = time.time()
        n = steps(20, 1 + done // 20)
        rates.append(n * cfg.batch_size / (time.time() - start))
        done += n
    return dict(img_per_s=statistics.median(rates), warmup_s=warmup_s, steps=done, mode=run.step.used,
                hardware=hardware_name(device))
