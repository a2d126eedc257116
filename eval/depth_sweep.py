#!/usr/bin/env python
"""Reproduce the paper's Figure 3, left: WN WRNs of 10 to 10,000 layers trained for one epoch, per init scheme.

    python eval/depth_sweep.py --scale cpu     # minutes on 2 cores; writes results/depth_sweep-cpu/
    python eval/depth_sweep.py --scale paper   # the paper's settings, on a GPU; resumable
"""
from __future__ import annotations

import sys
from pathlib import Path

from wnzoo.reproduce import cli

if __name__ == "__main__":
    sys.exit(cli("depth_sweep", repo=Path(__file__).resolve().parents[1]))
