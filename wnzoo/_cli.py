"""What every command line promises: its exit codes, and one line on stderr, never a traceback, for
bad input, a missing or damaged file, a full disk, a missing GPU or Ctrl-C."""
from __future__ import annotations

import errno
import sys
from typing import Callable

__all__ = ["OK", "CARD_MISMATCH", "BAD_INPUT", "DIVERGED", "INTERRUPTED", "EXIT_CODES", "UserError",
           "TrainingDiverged", "describe", "run"]

OK, CARD_MISMATCH, BAD_INPUT, DIVERGED, INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = ("Exit codes: 0 ok, 1 a published checkpoint does not reproduce its card,\n"
              "2 bad input or environment (the message says which), 3 training diverged, 130 interrupted.")


class UserError(RuntimeError):
    """Bad input or environment that is not a ``ValueError`` or ``OSError``: weights that cannot be
    verified, a run that cannot be published. Exit code 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint in the run folder is kept. Exit code 3."""


_FIXES = {errno.ENOSPC: "free some space", getattr(errno, "EDQUOT", errno.ENOSPC): "free some space",
          errno.EROFS: "choose a writable place", errno.EACCES: "choose a writable place",
          errno.EPERM: "choose a writable place"}


def describe(e: BaseException) -> str:
    """An exception as the one line a user reads: for an OS error, the path, the reason and the fix."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        fix = _FIXES.get(e.errno or 0)
        return f"{where}{e.strerror}" + (f"; {fix}" if fix else "")
    return " ".join(str(e).split()) or type(e).__name__


def run(main: Callable[[], int], after: Callable[[BaseException], str | None] = lambda e: None) -> int:
    """``main()``'s exit code, or the contract's for what it raised, with the message on stderr.

    ``after(exception)`` may add a line: what was kept, and the command that continues. Anything
    else raised is a bug in wnzoo, and keeps its traceback.
    """
    import yaml
    from torch.cuda import OutOfMemoryError

    try:
        return main()
    except KeyboardInterrupt as e:
        code, text, caught = INTERRUPTED, "\ninterrupted", e
    except TrainingDiverged as e:
        code, text, caught = DIVERGED, f"error: {e}", e
    except (ValueError, OSError, UserError, yaml.YAMLError, OutOfMemoryError) as e:
        code, text, caught = BAD_INPUT, f"error: {describe(e)}", e
    extra = after(caught)
    print(text + (f"\n{extra}" if extra else ""), file=sys.stderr)
    return code
