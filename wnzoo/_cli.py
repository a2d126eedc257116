"""What every command line promises: its exit codes, and one line on stderr, never a traceback, for
bad input, a missing or damaged file, a full disk, a missing GPU, Ctrl-C or a scheduler's signal."""
from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn

__all__ = ["OK", "CARD_MISMATCH", "BAD_INPUT", "DIVERGED", "INTERRUPTED", "EXIT_CODES", "UserError",
           "TrainingDiverged", "TERMINATING", "describe", "interrupt", "stopping_on", "run", "leave", "resumable"]

OK, CARD_MISMATCH, BAD_INPUT, DIVERGED, INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = ("Exit codes: 0 ok, 1 a published checkpoint does not reproduce its card,\n"
              "2 bad input or environment (the message says which), 3 training diverged, 130 interrupted.")


class UserError(RuntimeError):
    """Bad input or environment that is not a ``ValueError`` or ``OSError``: weights that cannot be
    verified, a run that cannot be published. Exit code 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint in the run folder is kept. Exit code 3."""


_FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_FIXES = {**{code: "free some space" for code in _FULL_DISK},
          **{code: "choose a writable place" for code in (errno.EROFS, errno.EACCES, errno.EPERM)},
          **{code: "choose another path" for code in (errno.EISDIR, errno.ENOTDIR)}}


def describe(e: BaseException) -> str:
    """An exception as the one line a user reads: for an OS error, the path, the reason and the fix."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        fix = _FIXES.get(e.errno or 0)
        return f"{where}{e.strerror}" + (f"; {fix}" if fix else "")
    return " ".join(str(e).split()) or type(e).__name__


def resumable(e: BaseException) -> bool:
    """Whether ``e`` stopped work that the same command continues: an interruption, or a full disk
    (not a bad input, which would stop it again)."""
    return isinstance(e, KeyboardInterrupt) or getattr(e, "errno", None) in _FULL_DISK


# What a cluster scheduler's time limit, a spot instance's notice or a closed terminal sends. Each is
# a Ctrl-C to us: the same clean stop, the same exit code, the same command to continue.
TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def interrupt(signum: int, frame: object) -> None:
    """A signal handler that stops the program as Ctrl-C does, naming the signal."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stopping_on(handler: Callable | int, signals: tuple[int, ...] = TERMINATING) -> Iterator[None]:
    """``handler`` for ``signals`` within the block. Only the main thread can set handlers; in another
    thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


def leave(code: int) -> NoReturn:
    """End a command line's process with ``code``. Python's shutdown takes seconds (torch's); a signal
    that comes then no longer changes the code, nor prints a traceback: the work is done."""
    for signum in (signal.SIGINT, *TERMINATING):
        signal.signal(signum, signal.SIG_IGN)
    try:
        sys.stdout.flush()
    except OSError:  # the reader went away
        _quiet_stdout()
    sys.exit(code)


def _quiet_stdout() -> None:
    """After the reader of our output went away (``| head``): later writes, and the flush at exit,
    go nowhere instead of raising again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor behind stdout (a test's capture)
        pass


def run(main: Callable[[], int], after: Callable[[BaseException], str | None] = lambda e: None) -> int:
    """``main()``'s exit code, or the contract's for what it raised, with the message on stderr.

    ``after(exception)`` may add a line: what was kept, and the command that continues. Anything
    else raised is a bug in wnzoo, and keeps its traceback.
    """
    import yaml
    from torch.cuda import OutOfMemoryError

    try:
        with stopping_on(interrupt):
            return main()
    except KeyboardInterrupt as e:
        by = f" by {e.args[0]}" if e.args and str(e.args[0]).startswith("SIG") else ""
        code, text, caught = INTERRUPTED, f"\ninterrupted{by}", e
    except BrokenPipeError as e:
        _quiet_stdout()
        code, text, caught = INTERRUPTED, "stopped: the program reading the output closed it", e
    except TrainingDiverged as e:
        code, text, caught = DIVERGED, f"error: {e}", e
    except (ValueError, OSError, UserError, yaml.YAMLError, OutOfMemoryError) as e:
        code, text, caught = BAD_INPUT, f"error: {describe(e)}", e
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):  # the CPU allocator's out-of-memory; anything else is a bug
            raise
        size = re.search(r"allocate (\d+) bytes", str(e))
        need = f" ({int(size[1]) / 2**30:.1f} GiB more)" if size else ""
        code, text, caught = BAD_INPUT, f"error: out of memory{need}; use a smaller batch or model", e
    with stopping_on(signal.SIG_IGN, (signal.SIGINT, *TERMINATING)):  # a second signal must not cut the message
        extra = after(caught)
        try:
            print(text + (f"\n{extra}" if extra else ""), file=sys.stderr)
        except OSError:  # stderr is gone too
            pass
    return code
