"""Ctrl-C and SIGTERM end a command with one line and the shell's exit code, never a traceback.

``with interruptible("ugs-data", "rerun the same command"):`` around a command's work:

* SIGTERM (``kill PID``, a scheduler's stop) is turned into :class:`Terminated`, a
  ``KeyboardInterrupt``, so that it unwinds the stack like Ctrl-C does: every ``finally`` and
  every temporary-file writer (:func:`ugs_d2.fileio.write_atomic`) cleans up on the way out;
* a Ctrl-C or SIGTERM then prints ``PROG: interrupted (Ctrl-C); HINT`` (or ``... (SIGTERM)``)
  on stderr and exits with 130 (128 + SIGINT) or 143 (128 + SIGTERM).

``kill -9`` cannot be caught; the commands are written so that what it leaves is either
complete or ignored and replaced by the next run (temporary names, the run-directory lock).
"""
import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator, List, Optional

__all__ = ["Terminated", "console_entry", "interruptible", "reraise_if_interrupted"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process was, so that it unwinds like Ctrl-C."""

    signum = signal.SIGTERM


_received = []  # the signals received inside interruptible(), in order


def _raise_terminated(signum, frame) -> None:
    _received.append(signal.SIGTERM)
    raise Terminated()


def _raise_interrupt(signum, frame) -> None:
    _received.append(signal.SIGINT)
    raise KeyboardInterrupt()


def reraise_if_interrupted() -> None:
    """Re-raise a Ctrl-C / SIGTERM that C++ code turned into another exception (``torch.save``
    reports a ``KeyboardInterrupt`` raised in its write callback as a ``RuntimeError``)."""
    if _received:
        raise Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def interruptible(prog: str, hint: str = "") -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs; end a Ctrl-C or SIGTERM with
    one line on stderr and ``SystemExit(128 + signal)``.

    Args:
        prog: the command's name, first on the line.
        hint: what to do next, e.g. "rerun the same command to continue".
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt) if main_thread else None
    del _received[:]
    try:
        yield
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        suffix = f"; {hint}" if hint else ""
        print(f"{prog}: interrupted ({what}){suffix}", file=sys.stderr, flush=True)
        raise SystemExit(128 + int(signum)) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)


def console_entry(prog: str, run: Callable[[Optional[List[str]]], None], hint: str = "rerun the same command"):
    """A command's console entry point: ``run(argv)`` inside :func:`interruptible`, so that its
    errors are one line and Ctrl-C / SIGTERM too (exit 130 / 143)."""

    def main(argv: Optional[List[str]] = None) -> None:
        with interruptible(prog, hint):
            run(argv)

    main.__doc__ = f"``{prog}``'s console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."
    return main
