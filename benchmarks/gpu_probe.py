#!/usr/bin/env python
"""How fast recipes train on this machine: eager vs compiled step, and several runs at once.

    python benchmarks/gpu_probe.py [-c configs/A.yaml configs/B.yaml] [--modes none,reduce-overhead]
                                   [--runs 1,2,4] [--seconds 4] [--results benchmarks/gpu_results.md]

For each recipe (default: the ResNet-110 pair) and each step mode (``compile`` of the config), one
process measures training images/s of the recipe's own step (``wnzoo.training.throughput``: same
model, batch, precision, memory format, optimizer) on random data. Then, for the first recipe and
the last mode, it runs 2, 4, … processes at once and sums their images/s, which tells whether a
time-boxed job should train several runs at once (``train/timebox.py --parallel``). Each process
compiles first; that fills the compiler's on-disk caches, so training the same recipes next on
this machine starts faster; the single runs of every recipe come first so that a short budget
still compiles every recipe. Prints a table and appends it to ``--results`` row by row, within a
total ``--budget`` of seconds.
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


def _worker(config: str, mode: str, seconds: float, overrides: list[str]) -> None:
    """One measuring process: warm up, say READY, wait for a line on stdin, measure, print RESULT."""
    from wnzoo.training import load_config, throughput

    cfg = load_config(config, [*overrides, f"compile={mode}"])

    def ready() -> None:
        print("READY", flush=True)
        sys.stdin.readline()

    res = throughput(cfg, seconds=seconds, ready=ready)
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


def measure(config: str, mode: str, runs: int, seconds: float, overrides: list[str], until: float) -> dict:
    """``runs`` worker processes measured over the same window; images/s summed over them. A case
    not done by time ``until`` is abandoned (its workers killed) and reported as such."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, __file__, "--worker", config, mode, str(seconds), "--set", *overrides]
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(runs)]  # not a pipe: can't block
        procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                  errors="replace") for log in logs]
        stack.callback(lambda: [p.kill() or p.wait() for p in procs if p.poll() is None])
        outs = [_lines(p.stdout) for p in procs]

        def failed(i: int, why: str) -> dict:
            logs[i].seek(0)
            last = logs[i].read().strip().splitlines()[-1:]
            return dict(config=config, mode=mode, runs=runs, error=(last[0] if last else why)[:160])

        for i, q in enumerate(outs):  # every worker compiled and warmed up
            if _wait_for(q, "READY", until) is None:
                alive = procs[i].poll() is None
                return failed(i, "budget spent while compiling" if alive else f"exit {procs[i].returncode}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for i, q in enumerate(outs):
            line = _wait_for(q, "RESULT ", until)
            if line is None:
                return failed(i, "no result")
            results.append(json.loads(line[7:]))
    return dict(config=config, mode=mode, runs=runs, model=results[0]["model"], hardware=results[0]["hardware"],
                img_per_s=sum(r["img_per_s"] for r in results), warmup_s=max(r["warmup_s"] for r in results),
                mode_used=results[0]["mode"], batch_size=results[0]["batch_size"])


def cases(configs: list[str], modes: list[str], counts: list[int]) -> list[tuple[str, str, int]]:
    """(recipe, mode, runs at once) in the order measured: every recipe's single runs first (each
    compiles, and so caches, its step), then the first recipe's last mode with several runs."""
    single = [(config, mode, 1) for config in configs for mode in modes]
    return single + [(configs[0], modes[-1], n) for n in counts if n != 1]


HEADER = ("| card | model | batch | step | runs at once | img/s (all runs) | img/s per run | vs eager | warm-up s |\n"
          "|---|---|---|---|---|---|---|---|---|")


def row(r: dict, eager: dict[str, float]) -> str:
    """One table row; ``eager`` maps a model to its eager single-run img/s measured before."""
    if "error" in r:
        return f"| | {Path(r['config']).stem} | | {r['mode']} | {r['runs']} | failed: {r['error']} | | | |"
    step = r["mode"] if r["mode_used"] == r["mode"] else f"{r['mode']}, ran as {r['mode_used']}"
    ratio = f"{r['img_per_s'] / eager[r['model']]:.2f}×" if r["model"] in eager else "—"
    return (f"| {r['hardware']} | {r['model']} | {r['batch_size']} | {step} | {r['runs']} | {r['img_per_s']:,.0f} | "
            f"{r['img_per_s'] / r['runs']:,.0f} | {ratio} | {r['warmup_s']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--configs", nargs="+", default=DEFAULT_CONFIGS, help="recipes to measure")
    ap.add_argument("--modes", default="none,reduce-overhead", help="step modes (config key compile), comma-separated")
    ap.add_argument("--runs", default="1,2,4", help="processes at once, for the first recipe and the last mode")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per case, after warm-up")
    ap.add_argument("--budget", type=float, default=300.0, metavar="S",
                    help="stop after S seconds in all: an unfinished case is abandoned, later ones skipped")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--results", help="append the table to this markdown file, row by row as measured")
    ap.add_argument("--worker", nargs=3, metavar=("CONFIG", "MODE", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], float(args.worker[2]), args.set)
        return 0
    import torch

    modes = [m for m in args.modes.split(",") if m]
    counts = [int(n) for n in args.runs.split(",") if n]
    t0 = time.time()
    until = t0 + args.budget
    lines = [f"### Probe, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}", "",
             HEADER]
    out = open(args.results, "a") if args.results else None
    if out is not None:
        out.write("\n" + "\n".join(lines) + "\n")
        out.flush()
    eager: dict[str, float] = {}
    for config, mode, n in cases(args.configs, modes, counts):
        if time.time() > until:
            spent = f"not run: the {args.budget:.0f} s budget is spent"
            r = dict(config=config, mode=mode, runs=n, error=spent)
        else:
            r = measure(config, mode, n, args.seconds, args.set, until)
        if "img_per_s" in r and r["mode_used"] == "none" and n == 1:
            eager[r["model"]] = r["img_per_s"]
        lines.append(row(r, eager))
        print(lines[-1], flush=True)
        if out is not None:
            out.write(lines[-1] + "\n")
            out.flush()
    total = f"\n{time.time() - t0:.0f} s in all, compiling included.\n"
    print(total)
    if out is not None:
        out.write(total)
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
