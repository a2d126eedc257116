#!/usr/bin/env python
"""Reproduce the paper's Figure 3, right: the % of runs that train 3 epochs without diverging, over seeds x lr x warmup.

    python eval/lr_robustness.py --scale cpu     # on CPU (--help: the measured time); writes results/lr_robustness-cpu/
    python eval/lr_robustness.py --scale paper   # the paper's settings, on a GPU; resumable
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

if __name__ == "__main__":  # from the first line, a scheduler's stop is a Ctrl-C (wnzoo._cli.run takes over
    for _signum in (signal.SIGTERM, signal.SIGHUP):  # after the imports; one while they load ends quietly)
        signal.signal(_signum, signal.default_int_handler)
try:
    from wnzoo._cli import leave
    from wnzoo.reproduce import cli
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    leave(cli("lr_robustness", repo=Path(__file__).resolve().parents[1]))
