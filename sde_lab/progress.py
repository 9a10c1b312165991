"""Progress lines: elapsed time and ETA for long loops (training, sampling, bits/dim)."""

from __future__ import annotations

import time

import numpy as np


def fmt_seconds(seconds: float) -> str:
    """'3m07s', or '--' when unknown."""
    if not np.isfinite(seconds):
        return "--"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


class Progress:
    """Prints one line per `advance` with the done count, elapsed time and an ETA from the
    mean time per unit so far (on the main process only, when `enabled`)."""

    def __init__(self, what: str, total: int, enabled: bool = True):
        self.what, self.total, self.enabled = what, total, enabled
        self.t0, self.done = time.time(), 0

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        elapsed = time.time() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        if self.enabled:
            print(f"  {self.what} {self.done}/{self.total}{note}  {fmt_seconds(elapsed)} "
                  f"elapsed, ETA {fmt_seconds(eta)}", flush=True)
