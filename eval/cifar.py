#!/usr/bin/env python
"""Reproduce the zoo's accuracy table: python eval/cifar.py [--model NAME ...] [--data SOURCE] [--paper]

Online:   python eval/cifar.py                    (published variants, data from the HF Hub)
Offline:  python eval/cifar.py --data DATA        (or WNZOO_DATA=DATA python eval/cifar.py)
          DATA: a folder holding cifar10/ and cifar100/, or one dataset's folder: a copy of uoft-cs/cifar10,
          torchvision's cifar-10-batches-py, or train/test.npz
Your own: python eval/cifar.py --checkpoint runs/X/model.safetensors   (--model ARCH: a file outside a run folder)

A published checkpoint is off its card when its top-1 differs by more than 0.05 points (exit 1); a row
that cannot be evaluated (its weights or data missing) exits 2, after the other rows are printed. Your
own checkpoint is a row named by its file, beside the published variant's card: never held to it.
"""
from __future__ import annotations

import argparse
import signal
import sys

if __name__ == "__main__":  # from the first line, a scheduler's stop is a Ctrl-C (wnzoo._cli.run takes over
    for _signum in (signal.SIGTERM, signal.SIGHUP):  # after the imports; one while they load ends quietly)
        signal.signal(_signum, signal.default_int_handler)
try:
    from wnzoo._cli import EXIT_CODES, UserError, leave, run
    from wnzoo._datasets import DATASETS
    from wnzoo._io import check_weights_file, check_writable, weights_path, write_json
    from wnzoo.evaluation import exit_code, format_paper_table, format_table, problems, reproduction_table
    from wnzoo.registry import is_zoo_model
    from wnzoo.training import RunFolder
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]) + "\n\n" + EXIT_CODES)
    ap.add_argument("--model", nargs="+", metavar="NAME", help="variants (arch.tag or arch) to evaluate; "
                    "default: every published one")
    ap.add_argument("--checkpoint", metavar="FILE", help="evaluate this local safetensors file as the model and "
                    "dataset of the run's config.yaml beside it, or as the one --model ARCH")
    ap.add_argument("--data", metavar="SOURCE", help="HF dataset id or local folder (default: $WNZOO_DATA, else "
                    "the dataset's HF id, e.g. uoft-cs/cifar10)")
    ap.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--compile", action="store_true", help="torch.compile the fused model")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON (a new file, unless --force)")
    ap.add_argument("--force", action="store_true", help="replace the --json file if it exists")
    ap.add_argument("--paper", action="store_true", help="also print the paper's Table 1 beside our numbers")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error("--batch-size must be positive")
    return run(lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, overwrite=args.force)  # now, not after the whole evaluation
    models = _checkpoint_models(args.checkpoint, args.model) if args.checkpoint else args.model
    rows = reproduction_table(models, args.checkpoint, args.data, args.device, args.batch_size,
                              args.compile, progress=True)
    if rows:
        print(format_table(rows))
    else:
        print("no published variants yet (wnzoo/published.json lists none); evaluate a local file with "
              "--checkpoint FILE --model ARCH", file=sys.stderr)
    if args.paper:
        print("\nPaper Table 1 (test error %) and ours:\n" + format_paper_table(rows))
    if args.json:
        write_json(args.json, rows)
    for line in problems(rows):
        print(line, file=sys.stderr)
    return exit_code(rows)


def _checkpoint_models(checkpoint: str, models: list[str] | None) -> list[str] | None:
    """The variant a checkpoint loads as: ``--model``, else the model and dataset of the training run's
    config.yaml beside the file; a bare ``--model`` of the run's own architecture gets the run's dataset."""
    folder = RunFolder(weights_path(checkpoint).parent)
    config = folder / RunFolder.CONFIG
    if models and (len(models) != 1 or "." in models[0] or not config.is_file()):
        return models
    check_weights_file(checkpoint)  # a missing file is named as such, not as a missing config
    if not config.is_file():
        raise UserError(f"{checkpoint}: no --model, and no {RunFolder.CONFIG} of a training run beside it to name "
                        f"its architecture; pass --model ARCH (e.g. --model wn_resnet20)")
    cfg = folder.read_config()
    arch, dataset = cfg.get("model"), cfg.get("dataset")
    if not (isinstance(arch, str) and is_zoo_model(arch) and isinstance(dataset, str) and dataset in DATASETS):
        raise UserError(f"{config} names model {arch!r} on dataset {dataset!r}, not a zoo architecture on one of "
                        f"{sorted(DATASETS)}; pass --model ARCH")
    if models and models[0] != arch:  # the user's choice; the loader says whether the weights fit it
        return models
    return [f"{arch}.{DATASETS[dataset].tag}"]


if __name__ == "__main__":
    leave(main())
