#!/usr/bin/env python
"""Train a zoo model from a recipe: python train/train.py -c configs/X.yaml (see --help)."""
import sys

from wnzoo.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
