#!/usr/bin/env python
"""What the compiler's cache file saves on a fresh machine: the first steps of a compiled recipe, cold vs warm.

    python benchmarks/compile_cache.py [-c configs/A.yaml] [--stack N] [--repeats 3] [--set k=v ...]
                                       [--results benchmarks/compile_cache.md]

A "fresh machine" is a process with an empty compiler cache folder (TORCHINDUCTOR_CACHE_DIR and
TRITON_CACHE_DIR pointed at new folders). Each repeat runs two of them, one after the other: the
cold one compiles the recipe's step (``wnzoo.training.throughput``, ``compile`` from the config)
and writes the cache file, as a time-boxed job does after its first epoch; the warm one loads that
file first, as the next job does. Each reports the seconds of its first steps (compiling
included), and the compiler's cache hits. Prints the median of the repeats and appends a table to
``--results``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = str(REPO / "configs" / "wn_resnet110_c10_proposed_warmup.yaml")


def _worker(config: str, cache: str, stack: int, overrides: list[str]) -> None:
    import torch

    from wnzoo.training import load_config, throughput

    cfg = load_config(config, overrides)
    res = throughput(cfg, seconds=0.5, warmup_steps=3, stack=stack, compile_cache=cache)
    hits = torch._dynamo.utils.counters["inductor"].get("fxgraph_cache_hit", 0)
    print("RESULT " + json.dumps(dict(warmup_s=res["warmup_s"], mode=res["mode"], hardware=res["hardware"],
                                      model=cfg.model, cache_hits=hits)), flush=True)


def fresh_process(config: str, cache: Path, stack: int, overrides: list[str]) -> dict:
    """One worker in a process whose compiler caches start empty; its RESULT."""
    with tempfile.TemporaryDirectory(prefix="wnzoo-compile-") as tmp:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor", TRITON_CACHE_DIR=f"{tmp}/triton",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.time()
        r = subprocess.run([sys.executable, __file__, "--worker", config, str(cache), str(stack), "--set", *overrides],
                           env=env, capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not lines:
            raise RuntimeError(f"worker failed ({r.returncode}): {(r.stderr.strip().splitlines() or [''])[-1][:300]}")
        return dict(json.loads(lines[-1][7:]), process_s=time.time() - t0)


def measure(config: str, stack: int, repeats: int, overrides: list[str]) -> dict:
    """``repeats`` pairs of fresh processes, cold then warm; medians, and the cache file's size."""
    pairs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="wnzoo-cache-file-") as tmp:
            cache = Path(tmp) / "compile-cache.bin"
            cold = fresh_process(config, cache, stack, overrides)
            size = cache.stat().st_size if cache.is_file() else 0
            warm = fresh_process(config, cache, stack, overrides)
            pairs.append((cold, warm, size))
    med = lambda key, i: statistics.median(p[i][key] for p in pairs)  # noqa: E731
    cold, warm = med("warmup_s", 0), med("warmup_s", 1)
    return dict(model=pairs[0][0]["model"], mode=pairs[0][0]["mode"], hardware=pairs[0][0]["hardware"], stack=stack,
                repeats=repeats, cold_s=cold, warm_s=warm, ratio=cold / warm, size_mib=pairs[-1][2] / 2**20,
                cold_hits=pairs[-1][0]["cache_hits"], warm_hits=pairs[-1][1]["cache_hits"],
                cold_process_s=med("process_s", 0), warm_process_s=med("process_s", 1))


HEADER = ("| card | model | step | stack | repeats | first steps, cold s | first steps, warm s | cold / warm | "
          "cache file MiB | whole process cold / warm s |\n|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    return (f"| {r['hardware']} | {r['model']} | {r['mode']} | {r['stack']} | {r['repeats']} | {r['cold_s']:.1f} | "
            f"{r['warm_s']:.1f} | {r['ratio']:.2f}× | {r['size_mib']:.2f} | "
            f"{r['cold_process_s']:.0f} / {r['warm_process_s']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="recipe to compile (default %(default)s)")
    ap.add_argument("--stack", type=int, default=1, help="runs in the stacked model (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="cold/warm pairs; the medians are reported (default 3)")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                    help="config overrides (e.g. device=cpu compile=default)")
    ap.add_argument("--results", help="append the table to this markdown file")
    ap.add_argument("--worker", nargs=3, metavar=("CONFIG", "CACHE", "STACK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.worker[1], int(args.worker[2]), args.set)
        return 0
    r = measure(args.config, args.stack, args.repeats, args.set)
    text = (f"### Compile cache, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{HEADER}\n{row(r)}\n\n"
            f"Compiler cache hits in the last pair: {r['cold_hits']} cold, {r['warm_hits']} warm.\n")
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
