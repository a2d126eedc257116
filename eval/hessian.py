#!/usr/bin/env python
"""Reproduce the paper's Table 2: the log spectral norm of the loss Hessian at initialization, per init scheme.

    python eval/hessian.py --scale cpu     # on CPU (--help: the measured time); writes results/hessian-cpu/
    python eval/hessian.py --scale paper   # the paper's settings, on a GPU; resumable
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
    leave(cli("hessian", repo=Path(__file__).resolve().parents[1]))
