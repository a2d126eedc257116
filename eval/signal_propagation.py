#!/usr/bin/env python
"""Plot signal propagation at init for a zoo model under several init schemes (the paper's Figure 1).

    python eval/signal_propagation.py --model wn_resnet110 --out sigprop_wn_resnet110.png

"""
from __future__ import annotations

import argparse
import sys

from wnzoo._cli import EXIT_CODES, run
from wnzoo._io import check_writable
from wnzoo.diagnostics import compare_inits, compared_schemes, plot_signal_propagation, stage_ratios
from wnzoo.registry import is_zoo_model, unknown_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2] + EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wn_resnet110")
    ap.add_argument("--inits", nargs="+", default=None,
                    help="schemes to compare (default: proposed default datadep hanin for WN, orthogonal he for BN)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out", default=None, help="PNG path (default sigprop_<model>.png)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.image_size < 8:
        ap.error("--batch must be at least 1 and --image-size at least 8 (the models downsample by 4)")
    return run(lambda: _plot(args))


def _plot(args: argparse.Namespace) -> int:
    if not is_zoo_model(args.model):
        raise unknown_model(args.model)
    out = check_writable(args.out or f"sigprop_{args.model}.png")
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
    sys.exit(main())
