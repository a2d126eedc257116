"""The training command line (``train/train.py``; also ``python -m wnzoo.training.cli``).

Exit codes: 0 done or paused, 2 bad input, 3 training diverged, 130 interrupted.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..data import DataError
from .checkpoint import StateError
from .config import ConfigError, load_config
from .loop import TrainingDiverged, export_run, train

__all__ = ["main"]

USAGE = """Train a zoo model from a recipe.

  python train/train.py -c configs/X.yaml [--set k=v ...] [--out DIR] [--resume] [--time-limit MIN]
  python train/train.py --export DIR [--data PATH]     write a state-only run's weights, metrics, curves
  torchrun --nproc_per_node=N train/train.py -c configs/X.yaml                     (several GPUs)

Exit codes: 0 finished or paused, 2 bad input, 3 training diverged, 130 interrupted."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.py", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", help="recipe YAML (configs/*.yaml)")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                    help="override config keys (repeatable; later values win)")
    ap.add_argument("--out", help="run folder (default runs/<config name>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ap.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                    help="stop cleanly after the last epoch that fits in MIN minutes (resume later)")
    ap.add_argument("--until", type=float, default=None, metavar="UNIX_TIME",
                    help="like --time-limit, up to a wall-clock time in seconds since 1970 (for job schedulers)")
    ap.add_argument("--state-only", action="store_true",
                    help="write only the run's state file each epoch (time-boxed jobs); --export writes the rest")
    ap.add_argument("--export", metavar="DIR", help="write the weights, metrics, summary and curves of the run "
                    "folder DIR from its state file (evaluating a finished run on the test split)")
    ap.add_argument("--data", help="with --export: the data source of the test split (default: the run's own)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = None
    try:
        if args.export:
            summary, out = export_run(args.export, data=args.data), Path(args.export)
        else:
            cfg = load_config(args.config, args.set)
            out = Path(args.out or Path("runs") / (Path(args.config).stem if args.config else cfg.model))
            limit = args.time_limit * 60 if args.time_limit is not None else None
            if args.until is not None:  # counted from now, after the imports, as the scheduler means it
                limit = min(limit or float("inf"), max(args.until - time.time(), 1e-3))
            summary = train(cfg, out, resume=args.resume, progress=not args.quiet, log_epochs=True,
                            export=not args.state_only, time_limit_s=limit)
    except (ConfigError, DataError, StateError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if out is not None and not args.export:
            cmd = " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
            resume = "" if args.resume else " --resume"
            print(f"\ninterrupted; the last finished epoch is saved in {out}. Continue with: python {cmd}{resume}",
                  file=sys.stderr)
        return 130
    acc = f"  test top-1 {summary['test_acc']:.2f}%" if "test_acc" in summary else ""
    print(f"{summary['status']} ({summary['epochs_done']} epochs): {out}{acc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
