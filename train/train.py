#!/usr/bin/env python
"""Train a zoo model from a recipe: python train/train.py -c configs/X.yaml (see --help)."""
import signal
import sys

if __name__ == "__main__":  # from the first line, a scheduler's stop is a Ctrl-C (wnzoo._cli.run takes over
    for _signum in (signal.SIGTERM, signal.SIGHUP):  # after the imports; one while they load ends quietly)
        signal.signal(_signum, signal.default_int_handler)
try:
    from wnzoo._cli import leave
    from wnzoo.training.cli import main
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    leave(main())
