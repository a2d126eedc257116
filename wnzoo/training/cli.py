"""The training command line (``train/train.py``; also ``python -m wnzoo.training.cli``)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .._cli import EXIT_CODES, TrainingDiverged, run
from .checkpoint import RunFolder
from .config import PER_RUN_KEYS, ConfigError, TrainConfig, keys_help, load_config, parse_overrides
from .loop import export_run, train, train_stack

__all__ = ["main", "SMOKE", "run_config"]

# A known-good quick run of the short recipe: one epoch on 5,000 images, all of it warmup to a lower lr
# (at lr 0.1, so few warmup steps diverge).
SMOKE = "epochs=1 warmup_epochs=1 subset=5000 lr=0.05"

USAGE = f"""Train a zoo model from a recipe.

  python train/train.py -c configs/X.yaml [--set k=v ...] [--out DIR] [--time-limit MIN]
  python train/train.py --out DIR --resume [--set k=v ...]   continue a run with its own config
  python train/train.py --export DIR [--data PATH]     write a state-only run's weights, metrics, curves
  python train/train.py -c A.yaml B.yaml C.yaml --out DIR_A DIR_B DIR_C   several runs as one stacked model
  torchrun --nproc_per_node=N train/train.py -c configs/X.yaml                     (several GPUs)

Several recipes of one architecture train as one stacked model, in one process. They may differ
only in {", ".join(PER_RUN_KEYS)}.
Each run writes its own folder, as it would alone.

A quick first run (CIFAR-10 from --set data=DIR or $WNZOO_DATA; 15 s on 2 idle CPU cores):
  python train/train.py -c configs/wn_resnet20_c10_short.yaml --set {SMOKE} --out runs/smoke

{EXIT_CODES} A paused run (--time-limit) exits 0.

Config keys (YAML, or --set key=value; default in parentheses):
{keys_help()}"""


def _positive(what: str):
    """An argparse type: a finite number > 0 (NaN, text and infinity fail), else a message naming ``what``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.py", description=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", nargs="+", help="recipe YAML (configs/*.yaml); several: one stacked model, "
                    "with an --out folder each")
    ap.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                    help="override config keys (repeatable; later values win)")
    ap.add_argument("--out", nargs="+", help="run folder (default runs/<config name>); it must be new or empty, or "
                    "hold this recipe's run with --resume; one per recipe")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint (several "
                    "runs: each that has one; the others start)")
    ap.add_argument("--time-limit", type=_positive("a positive number of minutes"), default=None, metavar="MIN",
                    help="stop cleanly after the last epoch that fits in MIN minutes, at least one (resume later)")
    ap.add_argument("--until", type=_positive("a time in seconds since 1970"), default=None, metavar="UNIX_TIME",
                    help="like --time-limit, up to a wall-clock time in seconds since 1970 (for job schedulers; "
                    "a run always trains at least one epoch, so a deadline already past trains one)")
    ap.add_argument("--state-only", action="store_true",
                    help="write only the run's state file each epoch (time-boxed jobs); --export writes the rest")
    ap.add_argument("--export", metavar="DIR", help="write the weights, metrics, summary and curves of the run "
                    "folder DIR from its state file (evaluating a finished run on the test split)")
    ap.add_argument("--data", help="with --export: the data source of the test split (default: the run's own)")
    ap.add_argument("--compile-cache", metavar="FILE", help="load the compiler's cache from FILE before compiling, "
                    "and write it there after the first epoch (keep it with the run: the next machine compiles less)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return ap


def run_config(config: str | None, out: Path | None, resume: bool, overrides: list[str]) -> TrainConfig:
    """The recipe file's config, or with ``--resume`` and no recipe, the run's own (from its state)."""
    if config is not None or not resume:
        return load_config(config, overrides)
    if out is None:
        raise ConfigError("--resume needs the run's folder: --out DIR")
    folder = RunFolder(out)
    if not folder.has_state():
        raise ConfigError(f"--resume: {folder.state} not found; nothing to resume (start a run with -c "
                          f"configs/X.yaml, without --resume)")
    return TrainConfig.from_dict({**folder.read_state(tensors=False).config, **parse_overrides(overrides)})


def _resume_hint(error: BaseException, outs: list[Path], argv: list[str], resuming: bool) -> str | None:
    """After an interruption or an OS error (a full disk) in a run: what it kept, and the exact
    command that continues it."""
    if not outs or not all(o.is_dir() for o in outs) or not isinstance(error, (KeyboardInterrupt, OSError)):
        return None
    if not any(RunFolder(o).has_state() for o in outs):
        return "no epoch had finished, so there is no checkpoint to continue from"
    cmd = " ".join(shlex.quote(a) for a in [*_program(), *_without_deadline(argv)] + ([] if resuming else ["--resume"]))
    where = outs[0] if len(outs) == 1 else ", ".join(map(str, outs))
    return f"the last finished epoch is saved in {where}; continue with: python {cmd}"


def _program() -> list[str]:
    """How this process was started: ``train/train.py``, or ``-m wnzoo.training.cli`` (a time-boxed job's runs)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    this = __spec__.name if __spec__ is not None else __name__  # under -m, __name__ is "__main__"
    return ["-m", spec.name] if spec is not None and spec.name == this else [sys.argv[0]]


def _without_deadline(argv: list[str]) -> list[str]:
    """``argv`` less ``--until TIME``: a deadline that has passed would end the continued run after one epoch."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--until" or a.startswith("--until="):
            skip = a == "--until"
            continue
        out.append(a)
    return out


def _folders(args: argparse.Namespace) -> list[Path]:
    """One run folder per recipe: ``--out`` (one per recipe), else ``runs/<recipe name>``."""
    configs = args.config or []
    if args.out is None:
        if args.resume and not configs:
            raise ConfigError("--resume needs the run's folder: --out DIR")
        if len(configs) > 1:
            raise ConfigError(f"{len(configs)} recipes need {len(configs)} --out folders, one per run")
        return [Path("runs") / (Path(configs[0]).stem if configs else load_config(None, args.set).model)]
    if configs and len(args.out) != len(configs):
        raise ConfigError(f"{len(configs)} recipes but {len(args.out)} --out folders; give one folder per recipe")
    return [Path(o) for o in args.out]


# What --export may be given with: the other options train, and would be ignored.
_EXPORT_FLAGS = {"config": "-c", "set": "--set", "out": "--out", "resume": "--resume", "time_limit": "--time-limit",
                 "until": "--until", "state_only": "--state-only", "compile_cache": "--compile-cache"}


def _check_flags(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that the chosen mode would silently ignore."""
    if args.export:
        given = [flag for key, flag in _EXPORT_FLAGS.items() if getattr(args, key) not in (None, False, [])]
        if given:
            ap.error(f"--export only writes a run's files from its state; it takes --data and -q, not "
                     f"{', '.join(given)}")
    elif args.data is not None:
        ap.error("--data goes with --export; to train on a data folder, pass --set data=DIR")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = _parser()
    args = ap.parse_args(argv)
    _check_flags(ap, args)
    outs: list[Path] = []

    def body() -> int:
        if args.export:
            summary = export_run(args.export, data=args.data)
            _report(args.export, summary)
            return 0
        folders = _folders(args)
        configs = args.config or [None] * len(folders)
        cfgs = [run_config(c, o, args.resume, args.set) for c, o in zip(configs, folders)]
        limit = args.time_limit * 60 if args.time_limit is not None else None
        if args.until is not None:  # counted from now, after the imports, as the scheduler means it
            limit = min(limit or float("inf"), max(args.until - time.time(), 1e-3))
        outs[:] = folders
        kw = dict(progress=not args.quiet, log_epochs=True, export=not args.state_only, time_limit_s=limit,
                  compile_cache=args.compile_cache)
        if len(cfgs) == 1:
            _report(folders[0], train(cfgs[0], folders[0], resume=args.resume, **kw))
            return 0
        resume = [args.resume and RunFolder(f).has_state() for f in folders]
        summaries = train_stack(cfgs, folders, resume=resume, **kw)
        for folder, summary in zip(folders, summaries):
            _report(folder, summary)
        diverged = [f"{f}: {s['error']}" for f, s in zip(folders, summaries) if s["status"] == "diverged"]
        if diverged:  # the others finished or paused, and are saved
            raise TrainingDiverged(" | ".join(diverged))
        return 0

    return run(body, lambda e: _resume_hint(e, outs, argv, args.resume))


def _report(folder: str | Path, summary: dict) -> None:
    acc = f"  test top-1 {summary['test_acc']:.2f}%" if "test_acc" in summary else ""
    print(f"{summary['status']} ({summary['epochs_done']} epochs): {folder}{acc}")


if __name__ == "__main__":
    sys.exit(main())
