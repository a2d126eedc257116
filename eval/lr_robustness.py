#!/usr/bin/env python
"""Reproduce the paper's Figure 3, right: the % of runs that train 3 epochs without diverging, over seeds x lr x warmup.

    python eval/lr_robustness.py --scale cpu     # minutes on 2 cores; writes results/lr_robustness-cpu/
    python eval/lr_robustness.py --scale paper   # the paper's settings, on a GPU; resumable
"""
from __future__ import annotations

import sys
from pathlib import Path

from wnzoo.reproduce import cli

if __name__ == "__main__":
    sys.exit(cli("lr_robustness", repo=Path(__file__).resolve().parents[1]))
