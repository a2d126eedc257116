#!/usr/bin/env python
"""Reproduce the paper's Table 2: the log spectral norm of the loss Hessian at initialization, per init scheme.

    python eval/hessian.py --scale cpu     # minutes on 2 cores; writes results/hessian-cpu/
    python eval/hessian.py --scale paper   # the paper's settings, on a GPU; resumable
"""
from __future__ import annotations

import sys
from pathlib import Path

from wnzoo.reproduce import cli

if __name__ == "__main__":
    sys.exit(cli("hessian", repo=Path(__file__).resolve().parents[1]))
