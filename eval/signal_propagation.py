#!/usr/bin/env python
"""Plot signal propagation at init for a zoo model under several init schemes (the paper's Figure 1).

    python eval/signal_propagation.py --model wn_resnet110 --out sigprop_wn_resnet110.png

"""
from __future__ import annotations

import argparse
import signal
import sys

if __name__ == "__main__":  # from the first line, a scheduler's stop is a Ctrl-C (wnzoo._cli.run takes over
    for _signum in (signal.SIGTERM, signal.SIGHUP):  # after the imports; one while they load ends quietly)
        signal.signal(_signum, signal.default_int_handler)
try:
    from wnzoo._cli import EXIT_CODES, leave, run
    from wnzoo._io import check_writable
    from wnzoo.diagnostics import compare_inits, compared_schemes, plot_signal_propagation, stage_ratios
    from wnzoo.registry import is_zoo_model, unknown_model
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)


# Enough to measure the signal at init; the memory of the backward pass grows with both, and with the depth.
MAX_BATCH, MAX_IMAGE_SIZE = 128, 32


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2] + EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wn_resnet110")
    ap.add_argument("--inits", nargs="+", default=None,
                    help="schemes to compare (default: proposed default datadep hanin for WN, orthogonal he for BN)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out", default=None, help="PNG path (default sigprop_<model>.png); a new file, unless --force")
    ap.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    args = ap.parse_args(argv)
    if not 1 <= args.batch <= MAX_BATCH or not 8 <= args.image_size <= MAX_IMAGE_SIZE:
        ap.error(f"--batch must be in [1, {MAX_BATCH}] and --image-size in [8, {MAX_IMAGE_SIZE}] (the models "
                 f"downsample by 4; CIFAR images are 32 px)")
    return run(lambda: _plot(args))


def _plot(args: argparse.Namespace) -> int:
    if not is_zoo_model(args.model):
        raise unknown_model(args.model)
    out = check_writable(args.out or f"sigprop_{args.model}.png", overwrite=args.force)
    inits = args.inits or compared_schemes(args.model)
    res = compare_inits(args.model, inits, batch=args.batch, image_size=args.image_size)
    plot_signal_propagation(res, out, title=f"{args.model}: signal propagation at initialization")
    for scheme, sp in res.items():
        ratios = " ".join(f"{r:.3g}" for r in stage_ratios(sp))
        print(f"{scheme:>12}: per-stage forward ratio {ratios}; final forward {sp.forward[-1]:.3g}, "
              f"first-block backward {sp.backward[0]:.3g}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    leave(main())
