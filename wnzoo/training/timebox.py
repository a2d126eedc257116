"""Time-boxed training jobs: a queue of recipes trained on the machines' devices within a wall-clock budget.

For machines held for a fixed time: spot or preemptible instances, cluster jobs with a time
limit, a GPU lent for a few minutes. ``run_queue`` trains each recipe into ``out/<recipe name>``.
Recipes of one architecture that differ only in what makes each a run of its own (seed, init,
learning rate, schedule, …) train as one stacked model (:mod:`wnzoo.training.stack`), up to
``stack`` runs at a time: a GPU that waits on the small kernels of one CIFAR model gets wider
ones. Each stack (or lone run) is a process of its own, placed on the
next free device of ``devices`` (``parallel`` processes per device), and stops cleanly after the
last epoch that fits in the budget. Each run writes only its state file (13.3 MiB for
ResNet-110) after every epoch, so a job killed at any moment loses at most the epoch in progress,
and the output folder stays small enough to copy off the machine; the compiler's cache is kept
beside the states (``out/compile-cache/``), so the next job on a fresh machine does not compile
from scratch. The next job, with the same ``out`` folder, resumes every run where it stopped and
skips the finished ones; ``python train/train.py --export out/NAME`` then writes the weights,
metrics and curves of a run on any machine.
"""
from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

import torch

from .._cli import BAD_INPUT, DIVERGED, OK, interrupt, stopping_on
from .checkpoint import RunFolder
from .config import ConfigError, TrainConfig, load_config, stack_group
from .loop import epoch_share

__all__ = ["QueuedRun", "run_queue", "format_job", "results_rows", "exit_code", "RESULTS_HEADER", "plan_stacks",
           "parse_devices", "default_stack", "MAX_STACK"]

# Seconds a run may overrun the budget before it is stopped: its last epoch may run over the
# estimate (its first epoch includes compiling), and a stopped run loses that epoch.
DEFAULT_GRACE_S = 45.0
# A run is not started with less than this many seconds left: its first epoch includes compiling
# (and graph capture), and an epoch cut off by the budget is lost.
MIN_START_S = 60.0
JOB_LOG = "job.log"  # in the job's output folder, beside the run folders
COMPILE_CACHE = "compile-cache"  # a folder there: one file of the compiler's cache per stack
MAX_STACK = 8  # runs per stack by default on a GPU; on a CPU, grouped convolutions are slower (1 by default)


@dataclass
class QueuedRun:
    """One recipe of the job and what became of it."""

    name: str
    config_path: Path
    config: TrainConfig
    folder: RunFolder
    epochs_before: int = 0
    epochs_after: int = 0
    status: str = "queued"  # queued, finished, paused, diverged, stopped, failed, not started
    returncode: int | None = None


def _prepare(configs: Sequence[str | os.PathLike], out: Path, overrides: Sequence[str]) -> list[QueuedRun]:
    """Every recipe validated, and every existing state read, before anything is started."""
    runs, seen = [], set()
    for path in map(Path, configs):
        cfg = load_config(path, list(overrides))
        if path.stem in seen:
            raise ConfigError(f"recipe name {path.stem!r} appears twice; each run needs its own folder")
        seen.add(path.stem)
        run = QueuedRun(path.stem, path, cfg, RunFolder(out / path.stem))
        run.epochs_before = run.epochs_after = run.folder.epochs_done()
        if run.epochs_before >= cfg.epochs:
            run.status = "finished"
        elif _diverged(run):  # it would diverge again at the same step: its recipe must change first
            run.status = "diverged"
        runs.append(run)
    return runs


def _diverged(run: QueuedRun) -> bool:
    """Whether the run's folder says it diverged (a state-only run writes a summary only then)."""
    try:
        return (run.folder / RunFolder.SUMMARY).is_file() and run.folder.read_summary().get("status") == "diverged"
    except ValueError:
        return False


def plan_stacks(runs: Sequence[QueuedRun], size: int = MAX_STACK) -> list[list[QueuedRun]]:
    """The queued runs as the processes that train them, in queue order: runs that can share a stack
    (:func:`~wnzoo.training.config.stack_group`) in stacks of at most ``size``, the others alone."""
    units: list[list[QueuedRun]] = []
    open_stacks: dict[str, list[QueuedRun]] = {}
    for run in runs:
        if run.status != "queued":
            continue
        group = stack_group(run.config) if size > 1 else None
        unit = open_stacks.get(group) if group is not None else None
        if unit is None or len(unit) >= size:
            unit = []
            units.append(unit)
            if group is not None:
                open_stacks[group] = unit
        unit.append(run)
    return units


def default_stack(runs: Sequence[QueuedRun], devices: Sequence[str | None]) -> int:
    """Runs per stack when the job does not say: :data:`MAX_STACK` when the job trains on GPUs, 1
    on a CPU, where a stack trains slower than its runs one by one (``benchmarks/cpu_results.md``)."""
    if any(d is not None for d in devices):
        on_gpu = all(d is not None and d.startswith("cuda") for d in devices)
    else:
        on_gpu = all(r.config.device == "cuda" or (r.config.device == "auto" and torch.cuda.is_available())
                     for r in runs)
    return MAX_STACK if on_gpu else 1


MAX_MINUTES = 525_600  # a year: a job's deadline is a time, which a larger budget would overflow


def parse_devices(text: str | None) -> list[str | None]:
    """``--devices cuda:0,cuda:1`` (or ``cpu``; a device may repeat) as a list; ``None``: the
    runs' own ``device`` key, and the machine's default GPU."""
    if text is None:
        return [None]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        if not (d == "cpu" or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ConfigError(f"--devices takes cpu or cuda:N, comma-separated (e.g. cuda:0,cuda:1), got {d!r}")
    if not devices:
        raise ConfigError("--devices is empty; name at least one device, e.g. cuda:0")
    gpus = torch.cuda.device_count()
    missing = [d for d in devices if d != "cpu" and int(d[5:]) >= gpus]
    if missing:
        raise ConfigError(f"--devices names {', '.join(missing)}, but this machine has {gpus} usable CUDA device(s); "
                          f"name those it has ({', '.join(f'cuda:{i}' for i in range(gpus)) or 'cpu'})")
    return devices


def _unit_name(unit: Sequence[QueuedRun]) -> str:
    return unit[0].name if len(unit) == 1 else f"{unit[0].name}+{len(unit) - 1}"


def _write(sinks: list[IO[str]], text: str) -> None:
    """``text`` to every sink; a sink that closed (the terminal's reader went away: ``| head``) is
    dropped, and the others (the job's log) keep every line. The caller holds the sinks' lock."""
    for sink in list(sinks):
        try:
            sink.write(text)
            sink.flush()
        except (OSError, ValueError):  # a closed pipe, or a file closed at the job's end
            sinks.remove(sink)


def _pump(stream: IO[str], prefix: str, sinks: list[IO[str]], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            _write(sinks, f"[{prefix}] {line}" if line.strip() else line)


def _signal(p: subprocess.Popen, sig: int) -> None:
    """``sig`` to the run's whole process group: its compile workers too."""
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(procs: dict[str, subprocess.Popen], wait_s: float = 10.0) -> None:
    for p in procs.values():
        _signal(p, signal.SIGTERM)
    end = time.time() + wait_s
    for p in procs.values():
        try:
            p.wait(max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            _signal(p, signal.SIGKILL)
            p.wait()


class _Job:
    """The processes of one job: starting stacks on free devices, collecting their exits, stopping them
    at the deadline."""

    def __init__(self, units: list[list[QueuedRun]], deadline: float, overrides: Sequence[str],
                 sinks: list[IO[str]], slots: list[str | None], cache: Path) -> None:
        self.deadline, self.overrides, self.sinks, self.cache = deadline, list(overrides), sinks, cache
        self.queue = list(units)
        self.free = list(slots)  # one entry per process that may run: its device (None: the runs' own)
        self.procs: dict[str, tuple[subprocess.Popen, list[QueuedRun], str | None]] = {}
        self.pumps: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(Path(__file__).resolve().parents[2])  # the children import this very wnzoo
        self.env["PYTHONPATH"] = root + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")

    def say(self, text: str) -> None:
        with self.lock:
            _write(self.sinks, text + "\n")

    def _env(self, device: str | None) -> dict[str, str]:
        """The child's environment: a GPU of the job is the only one it sees (as ``cuda``)."""
        if device is None or device == "cpu":
            return self.env
        visible = [v for v in self.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        index = int(device.split(":")[1])
        return dict(self.env, CUDA_VISIBLE_DEVICES=visible[index] if index < len(visible) else str(index))

    def start(self, unit: list[QueuedRun], left: float) -> None:
        device = self.free.pop(0)
        name = _unit_name(unit)
        sets = self.overrides + ([f"device={'cpu' if device == 'cpu' else 'cuda'}"] if device else [])
        cmd = [sys.executable, "-m", "wnzoo.training.cli", "-c", *(str(r.config_path) for r in unit),
               "--out", *(str(r.folder.path) for r in unit), "--state-only", "-q", "--until", f"{self.deadline:.3f}",
               "--compile-cache", str(self.cache / f"{unit[0].name}.bin")]
        if any(r.epochs_before for r in unit):
            cmd.append("--resume")  # each run with a state continues, the others start
        if sets:
            cmd += ["--set", *sets]
        where = f" on {device}" if device else ""
        what = ", ".join(f"{r.name} at epoch {r.epochs_before}/{r.config.epochs}" for r in unit)
        self.say(f"[job] start {f'a stack of {len(unit)}: ' if len(unit) > 1 else ''}{what}{where}, "
                 f"{left / 60:.1f} min left")
        p = subprocess.Popen(cmd, env=self._env(device), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", start_new_session=True)
        self.procs[name] = (p, unit, device)
        self.pumps.append(threading.Thread(target=_pump, args=(p.stdout, name, self.sinks, self.lock), daemon=True))
        self.pumps[-1].start()

    def reap(self) -> None:
        for name, (p, unit, device) in list(self.procs.items()):
            if p.poll() is not None:
                for run in unit:
                    run.returncode = p.returncode
                self.free.append(device)
                del self.procs[name]

    def stop_all(self, grace_s: float) -> None:
        """Stop the runs still going ``grace_s`` after the deadline; their last complete epoch is kept."""
        self.say(f"[job] budget over by {grace_s:.0f} s: stopping {sorted(self.procs)}")
        for p, unit, _ in self.procs.values():
            if p.poll() is None:
                for run in unit:
                    run.status = "stopped"
        _stop({name: p for name, (p, _, _) in self.procs.items()})
        for p, unit, _ in self.procs.values():
            for run in unit:
                run.returncode = p.returncode
        self.procs.clear()

    def run(self, grace_s: float, min_start_s: float) -> None:
        try:
            # SIGTERM, SIGHUP: as Ctrl-C. The runs live in their own process groups, so a job ended by a
            # signal must stop them itself, or they outlive it.
            with stopping_on(interrupt):
                while self.queue or self.procs:
                    self.reap()
                    left = self.deadline - time.time()
                    while self.queue and self.free and left > min_start_s:
                        self.start(self.queue.pop(0), left)
                    if self.queue and not self.procs and left <= min_start_s:
                        break
                    if self.procs and time.time() > self.deadline + grace_s:
                        self.stop_all(grace_s)
                    time.sleep(0.2)
        except BaseException:  # Ctrl-C, a signal, or a run that cannot start: no run is left behind
            with stopping_on(signal.SIG_IGN):  # a second signal must not cut the stopping short
                _stop({name: p for name, (p, _, _) in self.procs.items()})
            raise
        finally:
            for t in self.pumps:
                t.join(timeout=5)


def run_queue(configs: Sequence[str | os.PathLike], out: str | os.PathLike, minutes: float, *, parallel: int = 1,
              overrides: Sequence[str] = (), log: str | os.PathLike | None = None,
              grace_s: float = DEFAULT_GRACE_S, min_start_s: float = MIN_START_S, stack: int | None = None,
              devices: Sequence[str | None] = (None,), echo: IO[str] | None = sys.stdout) -> list[QueuedRun]:
    """Train ``configs`` (recipe files) into ``out/<recipe name>`` within ``minutes`` of wall clock.

    Runs that can share a stack train as one, at most ``stack`` per stack (1: every run alone;
    ``None``: :func:`default_stack`).
    Each stack or lone run is a process, started on the next free device of ``devices``
    (``'cuda:N'`` or ``'cpu'``; ``None``: the runs' own ``device`` key), with up to ``parallel``
    processes per device; each gets the time left when it starts. ``overrides`` (``key=value``)
    apply to every recipe. Every process's output goes, prefixed by its name, to ``log`` (default
    ``out/job.log``) and to ``echo``. A run still going ``grace_s`` after the budget is stopped
    (its last complete epoch is kept); none starts with under ``min_start_s`` left. Returns the
    runs, with their status.
    """
    if not 0 < minutes <= MAX_MINUTES:
        raise ConfigError(f"--time-limit must be a positive number of minutes, at most {MAX_MINUTES} (a year), got "
                          f"{minutes!r}")
    if not 0 <= grace_s < math.inf:
        raise ConfigError(f"--grace must be a number of seconds >= 0 (default {DEFAULT_GRACE_S:.0f}), got {grace_s!r}")
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel!r}")
    if stack is not None and stack < 1:
        raise ConfigError(f"--stack must be at least 1 (1: every run alone), got {stack!r}")
    t_start = time.time()
    out = Path(out)
    runs = _prepare(configs, out, overrides)
    units = plan_stacks(runs, default_stack(runs, devices) if stack is None else stack)
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPILE_CACHE).mkdir(exist_ok=True)
    with open(log or out / JOB_LOG, "a", buffering=1) as log_file:
        job = _Job(units, t_start + minutes * 60, overrides, [log_file] + ([echo] if echo is not None else []),
                   [d for d in devices for _ in range(parallel)], out / COMPILE_CACHE)
        for run in runs:
            if run.status == "diverged":
                job.say(f"[job] skip {run.name}: it diverged (see {run.folder / RunFolder.SUMMARY}); change its "
                        f"recipe and train it into a new folder")
        job.run(grace_s, min_start_s)
        for run in runs:
            _settle(run)
        job.say(format_job(runs, time.time() - t_start))
    return runs


def _settle(run: QueuedRun) -> None:
    """The run's status from its exit code and its folder."""
    try:
        run.epochs_after = run.folder.epochs_done()
    except ValueError:
        run.epochs_after = run.epochs_before
    if run.returncode is None:
        if run.status not in ("finished", "diverged"):  # else: so before this job
            run.status = "not started"
    elif _diverged(run):
        run.status = "diverged"
    elif run.status == "stopped" and run.returncode != 0:
        pass
    elif run.returncode in (0, DIVERGED):  # DIVERGED: another run of its stack diverged
        run.status = "finished" if run.epochs_after >= run.config.epochs else "paused"
    else:
        run.status = "failed"


def format_job(runs: Sequence[QueuedRun], seconds: float) -> str:
    lines = [f"[job] done in {seconds / 60:.1f} min"]
    for r in runs:
        lines.append(f"[job] {r.name}: {r.status}, epochs {r.epochs_before} -> {r.epochs_after} of {r.config.epochs}"
                     + (f" (exit {r.returncode})" if r.returncode not in (None, 0) else ""))
    return "\n".join(lines)


def exit_code(runs: Sequence[QueuedRun]) -> int:
    """3 if a run diverged, 2 if one failed (bad input or environment), else 0."""
    if any(r.status == "diverged" for r in runs):
        return DIVERGED
    return BAD_INPUT if any(r.status == "failed" for r in runs) else OK


def results_rows(runs: Sequence[QueuedRun]) -> list[str]:
    """Markdown table rows: what each run trained in this job, in a stack of how many, with which
    step (the compile mode in effect, and whether CUDA graphs were skipped), its seconds per epoch
    and its minutes. The first epoch after a start includes compiling; the median of the others is
    the steady speed. The minutes are the run's share: the runs of a stack split its epochs' time."""
    rows = []
    for r in runs:
        if not r.folder.has_state() or r.epochs_after <= r.epochs_before:
            continue
        history = r.folder.read_state(tensors=False).history
        new = [h for h in history if h["epoch"] > r.epochs_before]
        steady = [h["epoch_time_s"] for h in new[1:]] or [new[0]["epoch_time_s"]]
        total = sum(map(epoch_share, history)) / 60
        last, img_s = new[-1], statistics.median(h["img_per_s"] for h in new[1:] or new)
        rows.append(f"| {last.get('device', '?')} | {r.name} | {last.get('stack', 1)} | {last.get('step', '?')} | "
                    f"{r.epochs_before} → {r.epochs_after} of {r.config.epochs} | {new[0]['epoch_time_s']:.1f} | "
                    f"{statistics.median(steady):.1f} | {img_s:,.0f} | "
                    f"{sum(map(epoch_share, new)) / 60:.1f} | {total:.1f} |")
    return rows


RESULTS_HEADER = ("| card | run | stack | step | epochs | first epoch s | s/epoch (median) | img/s (this run) | "
                  "minutes (this job) | minutes (run total) |\n|---|---|---|---|---|---|---|---|---|---|")
