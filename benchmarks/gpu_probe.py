#!/usr/bin/env python
"""How fast recipes train on this machine: eager vs compiled step, and several runs at once.

    python benchmarks/gpu_probe.py [-c configs/A.yaml configs/B.yaml] [--modes none,reduce-overhead]
                                   [--runs 1,2,4] [--seconds 4] [--results benchmarks/gpu_results.md]

For each recipe (default: the ResNet-110 pair) and each step mode (``compile`` of the config), one
process measures training images/s of the recipe's own step (``wnzoo.training.throughput``: same
model, batch, precision, memory format, optimizer) on random data. For the first recipe and the
last mode it also runs 2, 4, … processes at once and sums their images/s, which tells whether a
time-boxed job should train several runs at once (``train/timebox.py --parallel``). Each process
compiles first; that fills the compiler's on-disk caches, so training the same recipes next on
this machine starts faster. Prints a table and appends it to ``--results``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ["configs/wn_resnet110_c10_proposed_warmup.yaml", "configs/bn_resnet110_c10.yaml"]


def _worker(config: str, mode: str, seconds: float, overrides: list[str]) -> None:
    """One measuring process: warm up, say READY, wait for a line on stdin, measure, print RESULT."""
    from wnzoo.training import load_config
    from wnzoo.training.loop import throughput

    cfg = load_config(config, [*overrides, f"compile={mode}"])

    def ready() -> None:
        print("READY", flush=True)
        sys.stdin.readline()

    res = throughput(cfg, seconds=seconds, ready=ready)
    print("RESULT " + json.dumps(dict(res, model=cfg.model, batch_size=cfg.batch_size)), flush=True)


def measure(config: str, mode: str, runs: int, seconds: float, overrides: list[str],
            timeout_s: float = 400.0) -> dict:
    """``runs`` worker processes measured over the same window; images/s summed over them."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, __file__, "--worker", config, mode, str(seconds), "--set", *overrides]
    logs = [tempfile.TemporaryFile("w+") for _ in range(runs)]  # a file, not a pipe: compile warnings can't block
    procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
             for log in logs]

    def last_error(i: int) -> list[str]:
        logs[i].seek(0)
        return logs[i].read().strip().splitlines()[-1:] or [f"exit {procs[i].returncode}"]

    t0, error = time.time(), None
    for i, p in enumerate(procs):  # every worker compiled and warmed up
        line = p.stdout.readline()
        while line and line.strip() != "READY" and time.time() - t0 < timeout_s:
            line = p.stdout.readline()
        if line.strip() != "READY":
            for q in procs:
                q.kill()
                q.wait()
            return dict(config=config, mode=mode, runs=runs, error=" ".join(last_error(i))[:160])
    results = []
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for i, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        found = [json.loads(ln[7:]) for ln in out.splitlines() if ln.startswith("RESULT ")]
        if found:
            results.append(found[0])
        elif error is None:
            error = last_error(i)
    if error is not None or len(results) != runs:
        return dict(config=config, mode=mode, runs=runs, error=" ".join(error or ["no result"])[:160])
    return dict(config=config, mode=mode, runs=runs, model=results[0]["model"], hardware=results[0]["hardware"],
                img_per_s=sum(r["img_per_s"] for r in results), warmup_s=max(r["warmup_s"] for r in results),
                mode_used=results[0]["mode"], batch_size=results[0]["batch_size"])


def table(rows: list[dict]) -> str:
    eager = {r["model"]: r["img_per_s"] for r in rows if r.get("mode_used") == "none" and r["runs"] == 1}
    lines = ["| card | model | batch | step | runs at once | img/s (all runs) | img/s per run | vs eager | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| | {Path(r['config']).stem} | | {r['mode']} | {r['runs']} | failed: {r['error']} | | | |")
            continue
        step = r["mode"] if r["mode_used"] == r["mode"] else f"{r['mode']} (fell back to eager)"
        ratio = f"{r['img_per_s'] / eager[r['model']]:.2f}×" if r["model"] in eager else "—"
        lines.append(f"| {r['hardware']} | {r['model']} | {r['batch_size']} | {step} | {r['runs']} | "
                     f"{r['img_per_s']:,.0f} | {r['img_per_s'] / r['runs']:,.0f} | {ratio} | {r['warmup_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--configs", nargs="+", default=DEFAULT_CONFIGS, help="recipes to measure")
    ap.add_argument("--modes", default="none,reduce-overhead", help="step modes (config key compile), comma-separated")
    ap.add_argument("--runs", default="1,2,4", help="processes at once, for the first recipe and the last mode")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per case, after warm-up")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--results", help="append the table to this markdown file")
    ap.add_argument("--worker", nargs=3, metavar=("CONFIG", "MODE", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], float(args.worker[2]), args.set)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    counts = [int(n) for n in args.runs.split(",") if n]
    t0 = time.time()
    rows = []
    for i, config in enumerate(args.configs):
        for mode in modes:
            for n in (counts if i == 0 and mode == modes[-1] else [1]):
                rows.append(measure(config, mode, n, args.seconds, args.set))
                r = rows[-1]
                done = (f"{r['img_per_s']:,.0f} img/s, warm-up {r['warmup_s']:.1f} s" if "img_per_s" in r
                        else f"failed: {r['error']}")
                print(f"{Path(config).stem} {mode} ×{n}: {done}", flush=True)
    import torch
    text = table(rows)
    heading = (f"### Probe, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
               f"{time.time() - t0:.0f} s in all")
    print(f"\n{heading}\n\n{text}")
    if args.results:
        with open(args.results, "a") as f:
            f.write(f"\n{heading}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
