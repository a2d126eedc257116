#!/usr/bin/env python
"""How fast recipes train on this machine: eager vs compiled step, stacked runs, and several runs at once.

    python benchmarks/gpu_probe.py [-c configs/A.yaml configs/B.yaml] [--modes none,reduce-overhead]
                                   [--stacks 2,4,8] [--runs 1,2,4] [--seconds 4] [--results benchmarks/gpu_results.md]

For each recipe (default: the ResNet-110 pair) and each step mode (``compile`` of the config), one
process measures training images/s of the recipe's own step (``wnzoo.training.throughput``: same
model, batch, precision, memory format, optimizer) on random data. For the first recipe and the
last mode it then measures one process training a stack of N runs as one model (``--stacks``,
what ``train/timebox.py --stack`` does), and 2, 4, … processes at once (``--runs``), summing their
images/s. Every single process compiles at the same time (compiling is CPU work) and is measured
alone; each compile fills the compiler's on-disk caches, so training the same recipes next on this
machine starts faster. Prints a table and appends it to ``--results`` row by row, within a total
``--budget`` of seconds.

Stacked runs only, cheaply (one compile each, in parallel):
    python benchmarks/gpu_probe.py -c configs/wn_resnet110_c10_proposed_warmup.yaml --modes reduce-overhead \
        --stacks 1,2,4,8 --runs 1 --budget 120
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = [str(REPO / "configs" / "wn_resnet110_c10_proposed_warmup.yaml"),
                   str(REPO / "configs" / "bn_resnet110_c10.yaml")]


def _worker(config: str, mode: str, stack: int, seconds: float, overrides: list[str]) -> None:
    """One measuring process: warm up, say READY, wait for a line on stdin, measure, print RESULT."""
    from wnzoo.training import load_config, throughput

    cfg = load_config(config, [*overrides, f"compile={mode}"])

    def ready() -> None:
        print("READY", flush=True)
        sys.stdin.readline()

    res = throughput(cfg, seconds=seconds, ready=ready, stack=stack)
    print("RESULT " + json.dumps(dict(res, model=cfg.model, batch_size=cfg.batch_size)), flush=True)


def _lines(stream) -> queue.Queue:
    """The stream's lines, read by a thread, so the parent can wait for them with a timeout."""
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_for(q: queue.Queue, prefix: str, until: float) -> str | None:
    """The first line starting with ``prefix`` before time ``until``; None if the worker ended or time ran out."""
    while time.time() < until:
        try:
            line = q.get(timeout=max(0.05, until - time.time()))
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith(prefix):
            return line
    return None


class _Worker:
    """A measuring process: its output lines, its stderr log, and how it failed if it did."""

    def __init__(self, case: tuple[str, str, int, int], seconds: float, overrides: list[str],
                 stack: contextlib.ExitStack) -> None:
        config, mode, _, size = self.case = case
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        cmd = [sys.executable, __file__, "--worker", config, mode, str(size), str(seconds), "--set", *overrides]
        self.log = stack.enter_context(tempfile.TemporaryFile("w+"))  # not a pipe: it cannot block
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, errors="replace")
        stack.callback(lambda: self.proc.poll() is None and (self.proc.kill() or self.proc.wait()))
        self.lines = _lines(self.proc.stdout)

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def failed(self, why: str) -> dict:
        self.log.seek(0)
        last = self.log.read().strip().splitlines()[-1:]
        config, mode, runs, size = self.case
        return dict(config=config, mode=mode, runs=runs, stack=size, error=(last[0] if last else why)[:160])

    def not_ready(self) -> dict:
        return self.failed("budget spent while compiling" if self.proc.poll() is None else
                           f"exit {self.proc.returncode}")


def _result(case: tuple[str, str, int, int], results: list[dict]) -> dict:
    config, mode, runs, size = case
    return dict(config=config, mode=mode, runs=runs, stack=size, model=results[0]["model"],
                hardware=results[0]["hardware"], img_per_s=sum(r["img_per_s"] for r in results),
                warmup_s=max(r["warmup_s"] for r in results), mode_used=results[0]["mode"],
                batch_size=results[0]["batch_size"])


def measure(config: str, mode: str, runs: int, seconds: float, overrides: list[str], until: float) -> dict:
    """``runs`` worker processes measured over the same window; images/s summed over them. A case
    not done by time ``until`` is abandoned (its workers killed) and reported as such."""
    with contextlib.ExitStack() as stack:
        workers = [_Worker((config, mode, runs, 1), seconds, overrides, stack) for _ in range(runs)]
        for w in workers:  # every worker compiled and warmed up
            if _wait_for(w.lines, "READY", until) is None:
                return w.not_ready()
        for w in workers:
            w.go()
        results = []
        for w in workers:
            line = _wait_for(w.lines, "RESULT ", until)
            if line is None:
                return w.failed("no result")
            results.append(json.loads(line[7:]))
    return _result((config, mode, runs, 1), results)


def measure_alone(cases: list[tuple[str, str, int, int]], seconds: float, overrides: list[str], until: float):
    """One process per case, all compiling at once; then each measured alone, in order. Yields
    each case's result as it is measured."""
    with contextlib.ExitStack() as stack:
        workers = [_Worker(case, seconds, overrides, stack) for case in cases]
        ready = {id(w): _wait_for(w.lines, "READY", until) is not None for w in workers}
        for w in workers:
            if not ready[id(w)]:
                yield w.not_ready()
                continue
            w.go()
            line = _wait_for(w.lines, "RESULT ", until)
            yield w.failed("no result") if line is None else _result(w.case, [json.loads(line[7:])])
            w.proc.stdin.close()


def cases(configs: list[str], modes: list[str], counts: list[int],
          stacks: list[int] = ()) -> list[tuple[str, str, int, int]]:
    """(recipe, mode, processes at once, runs per stack) in the order measured: every recipe's single
    run in every mode, then the first recipe's last mode as stacks, then as several processes. The
    single processes (the first two kinds) compile at once, before any is measured."""
    single = [(config, mode, 1, 1) for config in configs for mode in modes]
    return (single + [(configs[0], modes[-1], 1, n) for n in stacks if n != 1]
            + [(configs[0], modes[-1], n, 1) for n in counts if n != 1])


HEADER = ("| card | model | batch | step | stack | processes | img/s (all runs) | img/s per run | vs eager | "
          "vs one run | warm-up s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict, eager: dict[str, float], one: dict[tuple[str, str], float]) -> str:
    """One table row; ``eager`` maps a model to its eager single-run img/s, ``one`` a (model, mode)
    to its single run's img/s, both measured before."""
    if "error" in r:
        return (f"| | {Path(r['config']).stem} | | {r['mode']} | {r['stack']} | {r['runs']} | failed: {r['error']} "
                f"| | | | |")
    step = r["mode"] if r["mode_used"] == r["mode"] else f"{r['mode']}, ran as {r['mode_used']}"
    runs = r["runs"] * r["stack"]
    ratio = f"{r['img_per_s'] / eager[r['model']]:.2f}×" if r["model"] in eager else "—"
    base = one.get((r["model"], r["mode"]))
    vs_one = f"{r['img_per_s'] / base:.2f}×" if base else "—"
    return (f"| {r['hardware']} | {r['model']} | {r['batch_size']} | {step} | {r['stack']} | {r['runs']} | "
            f"{r['img_per_s']:,.0f} | {r['img_per_s'] / runs:,.0f} | {ratio} | {vs_one} | {r['warmup_s']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--configs", nargs="+", default=DEFAULT_CONFIGS, help="recipes to measure")
    ap.add_argument("--modes", default="none,reduce-overhead", help="step modes (config key compile), comma-separated")
    ap.add_argument("--stacks", default="", help="runs per stacked model, for the first recipe and the last mode "
                    "(e.g. 2,4,8)")
    ap.add_argument("--runs", default="1,2,4", help="processes at once, for the first recipe and the last mode")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per case, after warm-up")
    ap.add_argument("--budget", type=float, default=300.0, metavar="S",
                    help="stop after S seconds in all: an unfinished case is abandoned, later ones skipped")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--results", help="append the table to this markdown file, row by row as measured")
    ap.add_argument("--worker", nargs=4, metavar=("CONFIG", "MODE", "STACK", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], int(args.worker[2]), float(args.worker[3]), args.set)
        return 0
    import torch

    modes = [m for m in args.modes.split(",") if m]
    counts = [int(n) for n in args.runs.split(",") if n]
    stacks = [int(n) for n in args.stacks.split(",") if n]
    t0 = time.time()
    until = t0 + args.budget
    lines = [f"### Probe, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}", "",
             HEADER]
    out = open(args.results, "a") if args.results else None
    if out is not None:
        out.write("\n" + "\n".join(lines) + "\n")
        out.flush()
    eager: dict[str, float] = {}
    one: dict[tuple[str, str], float] = {}

    def report(r: dict) -> None:
        if "img_per_s" in r and r["runs"] == 1 and r["stack"] == 1:
            one[r["model"], r["mode"]] = r["img_per_s"]
            if r["mode_used"] == "none":
                eager[r["model"]] = r["img_per_s"]
        lines.append(row(r, eager, one))
        print(lines[-1], flush=True)
        if out is not None:
            out.write(lines[-1] + "\n")
            out.flush()

    todo = cases(args.configs, modes, counts, stacks)
    for r in measure_alone([c for c in todo if c[2] == 1], args.seconds, args.set, until):
        report(r)
    for config, mode, n, size in (c for c in todo if c[2] != 1):
        if time.time() > until:
            report(dict(config=config, mode=mode, runs=n, stack=size,
                        error=f"not run: the {args.budget:.0f} s budget is spent"))
        else:
            report(measure(config, mode, n, args.seconds, args.set, until))
    total = f"\n{time.time() - t0:.0f} s in all, compiling included.\n"
    print(total)
    if out is not None:
        out.write(total)
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
