"""The training loop: one function, ``train(cfg, out_dir, resume)``, used by ``train/train.py``.

Design points: the dataset lives on the device (``wnzoo.data.DeviceData``); the host syncs only
every ``log_every`` steps (progress bar, NaN check); a checkpoint is written atomically after
every epoch, and an epoch's randomness is a function of ``(seed, epoch)``, so ``--resume`` after
a crash (even SIGKILL) replays exactly what an uninterrupted run would have done.
Several processes (``torchrun``) use DistributedDataParallel: each takes its slice of the same
global batch, which keeps results equal to a single process with that batch.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

from ..data import DeviceData, load_split, train_val_indices
from ..evaluation import evaluate
from ..init import datadep
from ..registry import create_model
from .checkpoint import atomic_write, load_state, save_state, save_weights, write_json
from .config import ConfigError, TrainConfig
from .schedule import LRSchedule

__all__ = ["train", "TrainingDiverged", "RESUME_MAY_CHANGE"]

# Keys that may differ between the saved config and the one given with --resume (they do not
# change the optimization: where the data lives, which device, how often to log).
RESUME_MAY_CHANGE = ("data", "device", "compile", "log_every", "eval_every")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint in the run folder is kept."""


def _setup_dist(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    if cfg.wd_on_gains_biases_bn:
        return [dict(params=list(model.parameters()), weight_decay=cfg.weight_decay)]
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]  # WN gains, biases, BN affine
    return [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=rest, weight_decay=0.0)]


def _load_data(cfg: TrainConfig, device: torch.device) -> tuple[DeviceData, DeviceData, str]:
    images, labels = load_split(cfg.data, cfg.dataset, "train")
    if cfg.val_split:
        tr, va = train_val_indices(len(labels))
        (images, labels), (ev_images, ev_labels), split = (images[tr], labels[tr]), (images[va], labels[va]), "val"
    else:
        (ev_images, ev_labels), split = load_split(cfg.data, cfg.dataset, "test"), "test"
    n, m = cfg.subset or len(labels), cfg.eval_subset or len(ev_labels)
    if n < cfg.batch_size:
        raise ConfigError(f"subset={n} is smaller than batch_size={cfg.batch_size}")
    kw = dict(seed=cfg.seed, channels_last=cfg.channels_last)
    train_data = DeviceData.from_arrays(images[:n], labels[:n], cfg.dataset, device, cutout=cfg.cutout, **kw)
    return train_data, DeviceData.from_arrays(ev_images[:m], ev_labels[:m], cfg.dataset, device, **kw), split


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    diff = {k: (saved.get(k), v) for k, v in cfg.to_dict().items()
            if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: run has {a!r}, given {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume with a different recipe ({lines}); resume with the run's own config.yaml "
                          f"or start a new --out folder")


def _plot(history: list[dict], out: Path, title: str) -> None:
    try:
        from .plots import plot_curves
        plot_curves(history, out / "curves.png", title)
    except ImportError as e:  # e.g. a bare GPU machine without matplotlib: metrics.jsonl has everything
        print(f"warning: no curves.png ({e}); plot later with wnzoo.training.plots.plot_curves", flush=True)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, resume: bool = False,
          time_limit_s: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; returns the run summary (also written to ``summary.json``).

    ``time_limit_s`` stops cleanly after the last epoch that fits (status ``'paused'``), for
    machines lent in slices; ``--resume`` continues. Raises :class:`TrainingDiverged` on NaN/inf.
    """
    out = Path(out_dir)
    t_start = time.time()
    rank, world, device = _setup_dist(cfg)
    main = rank == 0
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    state_path = out / "state.pt"
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"--resume: {state_path} not found; nothing to resume (drop --resume to start)")
    if not resume and state_path.is_file():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    state = load_state(state_path) if resume else None
    if state is not None:
        _check_resume_config(state["config"], cfg)

    torch.manual_seed(cfg.seed)
    train_data, eval_data, eval_split = _load_data(cfg, device)
    model = create_model(cfg.model, num_classes=None, init=None if cfg.init == "datadep" else cfg.init)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.init == "datadep" and state is None:
        datadep(model, next(train_data.batches(0, cfg.batch_size, train=True))[0])

    steps_per_epoch = train_data.num_batches(cfg.batch_size, drop_last=True)
    sched_fn = LRSchedule(cfg.lr, cfg.epochs, steps_per_epoch, cfg.warmup_epochs, cfg.warmup_lr, cfg.warmup_shape,
                          cfg.schedule, tuple(cfg.milestones), cfg.gamma)
    opt = torch.optim.SGD(_param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, sched_fn)
    ema = None
    if cfg.ema_decay:
        from timm.utils.model_ema import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay)

    start_epoch, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start_epoch, history = state["epoch"], list(state["history"])

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    use_amp = cfg.amp == "bf16" and device.type == "cuda"

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    writer = _tensorboard(out) if main else None
    summary: dict[str, Any] = dict(model=cfg.model, dataset=cfg.dataset, eval_split=eval_split, survived=True,
                                   status="running", world_size=world, device=str(device))
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        pending: list[torch.Tensor] = []
        bar = None
        if progress and main:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        for step, (x, y) in enumerate(train_data.batches(epoch, cfg.batch_size, train=True, shard=(rank, world))):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            loss_d = loss.detach()
            pending.append(loss_d)
            loss_sum += loss_d * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps_per_epoch:
                _check_finite(pending, epoch, step + 1 - len(pending), sched_fn, steps_per_epoch, out, summary, main)
                pending = []
                if bar is not None:
                    bar.update(cfg.log_every if (step + 1) % cfg.log_every == 0 else (step + 1) % cfg.log_every)
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}",
                                    lr=f"{opt.param_groups[0]['lr']:.4f}",
                                    img_s=f"{seen * world / (time.time() - t0):.0f}")
        if bar is not None:
            bar.close()
        train_time = time.time() - t0
        row = dict(epoch=epoch + 1, lr=opt.param_groups[0]["lr"], train_loss=loss_sum.item() / seen,
                   train_acc=100.0 * correct.item() / seen, epoch_time_s=train_time,
                   img_per_s=steps_per_epoch * cfg.batch_size / train_time)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            res = evaluate(model, eval_data, autocast=use_amp)
            row.update({f"{eval_split}_acc": res["top1"], f"{eval_split}_loss": res["loss"]})
            if ema is not None:
                row[f"{eval_split}_acc_ema"] = evaluate(ema.module, eval_data, autocast=use_amp)["top1"]
        history.append(row)
        if main:
            _save(out, model, opt, sched, ema, epoch + 1, history, cfg, device)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            if progress:
                print(msg, flush=True)
        if world > 1:
            dist.barrier()
        elapsed = time.time() - t_start
        if time_limit_s is not None and epoch + 1 < cfg.epochs and elapsed + (time.time() - t0) * 1.1 > time_limit_s:
            summary.update(status="paused", epochs_done=epoch + 1, seconds=elapsed)
            if main:
                write_json(out / "summary.json", summary)
            return summary

    summary.update(status="finished", epochs_done=cfg.epochs, seconds_this_session=time.time() - t_start,
                   final=history[-1] if history else None)
    if eval_split == "test" and history:
        summary["test_acc"] = history[-1]["test_acc"]
    if main:
        write_json(out / "summary.json", summary)
        _plot(history, out, f"{cfg.model} on {cfg.dataset}")
        if writer is not None:
            writer.close()
    return summary


def _check_finite(pending: list[torch.Tensor], epoch: int, first_step: int, sched_fn: LRSchedule,
                  steps_per_epoch: int, out: Path, summary: dict, main: bool) -> None:
    losses = torch.stack(pending)
    bad = ~torch.isfinite(losses)
    if bad.any():
        step = first_step + int(bad.nonzero()[0, 0])
        lr = sched_fn.lr_at(epoch * steps_per_epoch + step)
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {out}" if epoch
                else "no epoch had finished, so there is no checkpoint")
        msg = (f"training diverged: loss is {losses[bad][0].item()} at epoch {epoch + 1}, step {step + 1} "
               f"(lr {lr:.4g}); {kept}. Lower lr, or add warmup (warmup_epochs)")
        summary.update(survived=False, status="diverged", diverged_at=dict(epoch=epoch + 1, step=step + 1, lr=lr))
        if main:
            write_json(out / "summary.json", summary)
        raise TrainingDiverged(msg)


def _save(out: Path, model: nn.Module, opt, sched, ema, epoch: int, history: list[dict], cfg: TrainConfig,
          device: torch.device) -> None:
    meta = {"architecture": cfg.model, "epoch": str(epoch), "format": "pt"}
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(), epoch=epoch,
                 history=history, config=cfg.to_dict(), rng_cpu=torch.get_rng_state())
    if ema is not None:
        state["ema"] = ema.module.state_dict()
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state()
    save_state(out / "state.pt", state)
    save_weights(out / "model.safetensors", model.state_dict(), meta)
    if ema is not None:
        save_weights(out / "model_ema.safetensors", ema.module.state_dict(), meta)
    atomic_write(out / "metrics.jsonl", lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in history)))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))
