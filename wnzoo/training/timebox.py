"""Time-boxed training jobs: a queue of recipes trained on one machine within a wall-clock budget.

For machines held for a fixed time: spot or preemptible instances, cluster jobs with a time
limit, a GPU lent for a few minutes. ``run_queue`` trains each recipe into ``out/<recipe name>``
as a separate process (several at once with ``parallel``), each stopping cleanly after the last
epoch that fits in the budget. Each run writes only its state file (13.3 MiB for ResNet-110) after
every epoch, so a job killed at any moment loses at most the epoch in progress of each run, and
the output folder stays small enough to copy off the machine. The next job, with the same ``out``
folder, resumes every run where it stopped and skips the finished ones; ``python train/train.py
--export out/NAME`` then writes the weights, metrics and curves of a run on any machine.
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from .._cli import BAD_INPUT, DIVERGED, OK
from .checkpoint import RunFolder
from .config import ConfigError, TrainConfig, load_config

__all__ = ["QueuedRun", "run_queue", "format_job", "results_rows", "exit_code", "RESULTS_HEADER"]

# Seconds a run may overrun the budget before it is stopped: its last epoch may run over the
# estimate (its first epoch includes compiling), and a stopped run loses that epoch.
DEFAULT_GRACE_S = 45.0
# A run is not started with less than this many seconds left: its first epoch includes compiling
# (and graph capture), and an epoch cut off by the budget is lost.
MIN_START_S = 60.0
JOB_LOG = "job.log"  # in the job's output folder, beside the run folders


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

    @property
    def cmd_args(self) -> list[str]:
        return ["-c", str(self.config_path), "--out", str(self.folder.path), "--state-only", "-q"] + (
            ["--resume"] if self.epochs_before else [])


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
        runs.append(run)
    return runs


def _pump(stream: IO[str], prefix: str, sinks: list[IO[str]], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            for sink in sinks:
                sink.write(f"[{prefix}] {line}" if line.strip() else line)
                sink.flush()


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


# A scheduler's time limit, a spot instance's notice, a closed terminal.
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def _on_termination(handler: Callable | int) -> Iterator[None]:
    """``handler`` for SIGTERM and SIGHUP within the block. The runs live in their own process
    groups, so a job ended by a signal must stop them itself or they outlive it. Only the main
    thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.signal(signum, handler) for signum in _TERMINATING}
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


class _Job:
    """The processes of one job: starting runs, collecting their exits, stopping them at the deadline."""

    def __init__(self, runs: list[QueuedRun], deadline: float, overrides: Sequence[str], sinks: list[IO[str]]) -> None:
        self.runs, self.deadline, self.overrides, self.sinks = runs, deadline, list(overrides), sinks
        self.queue = [r for r in runs if r.status == "queued"]
        self.procs: dict[str, subprocess.Popen] = {}
        self.pumps: list[threading.Thread] = []
        self.by_name = {r.name: r for r in runs}
        self.lock = threading.Lock()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(Path(__file__).resolve().parents[2])  # the children import this very wnzoo
        self.env["PYTHONPATH"] = root + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")

    def say(self, text: str) -> None:
        with self.lock:
            for sink in self.sinks:
                sink.write(text + "\n")

    def start(self, run: QueuedRun, left: float) -> None:
        cmd = [sys.executable, "-m", "wnzoo.training.cli", *run.cmd_args, "--until", f"{self.deadline:.3f}",
               *(["--set", *self.overrides] if self.overrides else [])]
        self.say(f"[job] start {run.name} at epoch {run.epochs_before}/{run.config.epochs}, {left / 60:.1f} min left")
        p = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", start_new_session=True)
        self.procs[run.name] = p
        self.pumps.append(threading.Thread(target=_pump, args=(p.stdout, run.name, self.sinks, self.lock), daemon=True))
        self.pumps[-1].start()

    def reap(self) -> None:
        for name, p in list(self.procs.items()):
            if p.poll() is not None:
                self.by_name[name].returncode = p.returncode
                del self.procs[name]

    def stop_all(self, grace_s: float) -> None:
        """Stop the runs still going ``grace_s`` after the deadline; their last complete epoch is kept."""
        self.say(f"[job] budget over by {grace_s:.0f} s: stopping {sorted(self.procs)}")
        for name, p in self.procs.items():
            if p.poll() is None:
                self.by_name[name].status = "stopped"
        _stop(self.procs)
        for name, p in self.procs.items():
            self.by_name[name].returncode = p.returncode
        self.procs.clear()

    def run(self, parallel: int, grace_s: float, min_start_s: float) -> None:
        try:
            with _on_termination(_interrupt):  # SIGTERM, SIGHUP: as Ctrl-C
                while self.queue or self.procs:
                    self.reap()
                    left = self.deadline - time.time()
                    while self.queue and len(self.procs) < parallel and left > min_start_s:
                        self.start(self.queue.pop(0), left)
                    if self.queue and not self.procs and left <= min_start_s:
                        break
                    if self.procs and time.time() > self.deadline + grace_s:
                        self.stop_all(grace_s)
                    time.sleep(0.2)
        except BaseException:  # Ctrl-C, a signal, or a run that cannot start: no run is left behind
            with _on_termination(signal.SIG_IGN):  # a second signal must not cut the stopping short
                _stop(self.procs)
            raise
        finally:
            for t in self.pumps:
                t.join(timeout=5)


def run_queue(configs: Sequence[str | os.PathLike], out: str | os.PathLike, minutes: float, *, parallel: int = 1,
              overrides: Sequence[str] = (), log: str | os.PathLike | None = None,
              grace_s: float = DEFAULT_GRACE_S, min_start_s: float = MIN_START_S,
              echo: IO[str] | None = sys.stdout) -> list[QueuedRun]:
    """Train ``configs`` (recipe files) into ``out/<recipe name>`` within ``minutes`` of wall clock.

    Up to ``parallel`` runs train at once; each gets the time left when it starts. ``overrides``
    (``key=value``) apply to every recipe. Every run's output goes, prefixed by its name, to
    ``log`` (default ``out/job.log``) and to ``echo``. A run still going ``grace_s`` after the
    budget is stopped (its last complete epoch is kept); none starts with under ``min_start_s``
    left. Returns the runs, with their status.
    """
    if not minutes > 0:
        raise ConfigError(f"--time-limit must be a positive number of minutes, got {minutes!r}")
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel!r}")
    t_start = time.time()
    out = Path(out)
    runs = _prepare(configs, out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    with open(log or out / JOB_LOG, "a", buffering=1) as log_file:
        job = _Job(runs, t_start + minutes * 60, overrides, [log_file] + ([echo] if echo is not None else []))
        job.run(parallel, grace_s, min_start_s)
        for run in runs:
            _settle(run)
        job.say(format_job(runs, time.time() - t_start))
    return runs


def _settle(run: QueuedRun) -> None:
    """The run's status from its exit code and its state file."""
    try:
        run.epochs_after = run.folder.epochs_done()
    except ValueError:
        run.epochs_after = run.epochs_before
    if run.status == "finished" and run.returncode is None:
        return  # finished before this job
    if run.returncode is None:
        run.status = "not started"
    elif run.returncode == 3:
        run.status = "diverged"
    elif run.status == "stopped" and run.returncode != 0:
        pass
    elif run.returncode == 0:
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
    """Markdown table rows: what each run trained in this job, its seconds per epoch and its minutes.

    The first epoch after a start includes compiling; the median of the others is the steady speed.
    """
    rows = []
    for r in runs:
        if not r.folder.has_state() or r.epochs_after <= r.epochs_before:
            continue
        history = r.folder.read_state(tensors=False).history
        new = [h for h in history if h["epoch"] > r.epochs_before]
        steady = [h["epoch_time_s"] for h in new[1:]] or [new[0]["epoch_time_s"]]
        total = sum(h["epoch_time_s"] for h in history) / 60
        rows.append(f"| {new[-1].get('device', '?')} | {r.name} | {r.epochs_before} → {r.epochs_after} of "
                    f"{r.config.epochs} | {new[0]['epoch_time_s']:.1f} | {statistics.median(steady):.1f} | "
                    f"{statistics.median(h['img_per_s'] for h in new[1:] or new):,.0f} | "
                    f"{sum(h['epoch_time_s'] for h in new) / 60:.1f} | {total:.1f} |")
    return rows


RESULTS_HEADER = ("| card | run | epochs | first epoch s | s/epoch (median) | img/s | minutes (this job) | "
                  "minutes (run total) |\n|---|---|---|---|---|---|---|---|")
