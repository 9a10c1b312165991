"""SIGTERM and SIGINT (Ctrl-C): stop cleanly, say so in one line, never lose a checkpoint.

Outside the training loop nothing is half-written (eval and sample files are written
atomically), so `install()` makes both signals end the process at once with a message.
Inside the loop, `deferred()` turns them into a flag that the loop reads between steps: it
saves a checkpoint, prints one line and exits (SIGTERM with 0, so a Slurm requeue resumes
the task; SIGINT with 130, so a script sees the interruption). A second Ctrl-C while the
loop is finishing exits at once. Python runs handlers between bytecodes, so a signal that
arrives during a long compiled call (an XLA compile, a train step) acts when it returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}
_STARTUP_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _exit_now(signum, frame) -> None:
    del frame
    print(f"error: interrupted by {_name(signum)}; stopped before training began or after "
          "it ended (checkpoints already saved are kept)", file=sys.stderr, flush=True)
    os._exit(_STARTUP_CODES[signum])


def install() -> None:
    """Both signals exit at once with a one-line message (start-up, eval, sampling)."""
    for signum in _STARTUP_CODES:
        signal.signal(signum, _exit_now)


class Flag:
    """Set by the first SIGTERM/SIGINT inside `deferred()`; the loop polls it."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 0)

    @property
    def name(self) -> str:
        return _name(self.signum) if self.signum else ""

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            print("error: second Ctrl-C: exiting without saving (the last checkpoint is "
                  "kept)", file=sys.stderr, flush=True)
            os._exit(130)
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def deferred() -> Iterator[Flag]:
    """Inside: the signals set the returned flag; on exit `install()`'s handlers return."""
    flag = Flag()
    for signum in EXIT_CODES:
        signal.signal(signum, flag._handle)
    try:
        yield flag
    finally:
        install()
