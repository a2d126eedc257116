#!/usr/bin/env python
"""Train a queue of recipes within a wall-clock budget (spot instances, cluster time limits).

    python train/timebox.py configs/A.yaml configs/B.yaml --out runs/job --time-limit 50 [--parallel 2]
                            [--devices cuda:0,cuda:1] [--stack 8] [--set device=cuda compile=reduce-overhead
                            eval_every=0] [--results FILE]

Each run trains into OUT/<recipe name> and writes only its state file, after every epoch; run the
same command again to continue every run where it stopped. Recipes of one architecture that
differ only in seed, init, learning rate, schedule and the like train as one stacked model, in
one process (benchmarks/gpu_probe.py --stacks measures what that gains on a machine); each stack,
or lone run, goes to the next free device. The compiler's cache is kept in OUT/compile-cache for
the next job. Then, on any machine: python train/train.py --export OUT/<recipe name> writes its
weights, metrics, summary and curves. Every run finished or paused exits 0; a run that failed
exits 2, one that diverged 3.

"""
import argparse
import signal
import sys
import time

if __name__ == "__main__":  # from the first line, a scheduler's stop is a Ctrl-C (wnzoo._cli.run takes over
    for _signum in (signal.SIGTERM, signal.SIGHUP):  # after the imports; one while they load ends quietly)
        signal.signal(_signum, signal.default_int_handler)
try:
    from wnzoo._cli import EXIT_CODES, leave, resumable, run
    from wnzoo._io import check_writable
    from wnzoo.training.timebox import (DEFAULT_GRACE_S, MAX_STACK, RESULTS_HEADER, exit_code, parse_devices,
                                        results_rows, run_queue)
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__ + EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="recipe YAMLs, trained in this order")
    ap.add_argument("--out", required=True, help="folder of the run folders (one per recipe) and job.log")
    ap.add_argument("--time-limit", type=float, required=True, metavar="MIN", help="wall-clock budget in minutes")
    ap.add_argument("--parallel", type=int, default=1, help="processes (stacks or lone runs) at once on each device "
                    "(default 1)")
    ap.add_argument("--devices", metavar="LIST", help="devices to spread the processes over, e.g. cuda:0,cuda:1 "
                    "(default: each run's device key)")
    ap.add_argument("--stack", type=int, default=None, metavar="N", help=f"at most N runs per stacked model; 1 trains "
                    f"every run alone (default: {MAX_STACK} on GPUs, 1 on a CPU, where a stack trains slower)")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                    help="config overrides for every run (e.g. data=..., device=cuda, compile=reduce-overhead)")
    ap.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="S",
                    help=f"seconds past the budget before running epochs are abandoned (default {DEFAULT_GRACE_S:.0f})")
    ap.add_argument("--log", help="job log (default OUT/job.log)")
    ap.add_argument("--results", help="append a markdown row per run (speed, minutes) to this file")
    args = ap.parse_args(argv)
    started = []

    def hint(e: BaseException) -> str | None:
        if started and resumable(e):
            return f"every run keeps its last finished epoch in {args.out}; continue with the same command"
        return None

    return run(lambda: _job(args, started), hint)


def _job(args: argparse.Namespace, started: list) -> int:
    check_writable(args.out, folder=True)  # now, not after the job
    for path in (args.log, args.results):
        if path:
            check_writable(path)
    started.append(True)
    runs = run_queue(args.configs, args.out, args.time_limit, parallel=args.parallel, overrides=args.set,
                     log=args.log, grace_s=args.grace, stack=args.stack, devices=parse_devices(args.devices))
    rows = results_rows(runs)
    if args.results and rows:
        with open(args.results, "a") as f:
            f.write(f"\n### Training, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{RESULTS_HEADER}\n"
                    + "\n".join(rows) + "\n")
    return exit_code(runs)


if __name__ == "__main__":
    leave(main())
