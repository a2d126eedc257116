#!/usr/bin/env python
"""Train a zoo model from a recipe: python train/train.py -c configs/X.yaml [--set k=v ...] [--out DIR] [--resume]

Multi-GPU: torchrun --nproc_per_node=N train/train.py -c configs/X.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wnzoo.training import ConfigError, TrainingDiverged, load_config, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", help="recipe YAML (configs/*.yaml)")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                    help="override config keys (repeatable; later values win)")
    ap.add_argument("--out", help="run folder (default runs/<config name>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ap.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                    help="stop cleanly after the last epoch that fits in MIN minutes (resume later)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        out = Path(args.out or Path("runs") / (Path(args.config).stem if args.config else cfg.model))
        summary = train(cfg, out, resume=args.resume,
                        time_limit_s=args.time_limit * 60 if args.time_limit else None)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(f"{summary['status']}: {out}" + (f"  test top-1 {summary['test_acc']:.2f}%" if "test_acc" in summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
