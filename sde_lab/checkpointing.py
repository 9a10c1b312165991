"""Checkpoints through orbax's CheckpointManager.

Orbax writes each step into a temporary directory and renames it when complete, so a
process killed at any moment leaves the previous complete checkpoint as the latest one.
Saves are synchronous here: the preemption path must know the save finished before it
exits, and checkpoints are rare next to training steps.

A checkpoint that is there but cannot be read (a truncated file, an emptied directory) is
skipped with a one-line warning in favour of the newest older one that restores; the
trainer moves it aside (`checkpoints/damaged_<step>`) so that training can write that step
again.
"""

from __future__ import annotations

import os
import sys

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores one pytree (the train state) under `workdir/checkpoints`."""

    def __init__(self, workdir: str, max_to_keep: int | None = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (re-read from disk)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state) -> None:
        """Writes `state` as checkpoint `step` (atomic; no-op if it already exists)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, target):
        """Restores checkpoint `step` with the structure, shapes and shardings of `target`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, target, at_most: int | None = None,
                       set_aside: bool = False) -> tuple[object, int] | None:
        """(state, step) of the newest checkpoint (<= `at_most`) that restores, or None.

        Unreadable checkpoints are skipped with a warning on stderr; with `set_aside`
        (the trainer) they are renamed to `damaged_<step>` so the step can be written
        again.
        """
        for step in reversed(self.steps()):
            if at_most is not None and step > at_most:
                continue
            try:
                return self.restore(step, target), step
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                reason = " ".join(str(e).split())[:160]
                print(f"warning: checkpoint {step} in {self.directory} cannot be read "
                      f"({type(e).__name__}: {reason}); trying the previous one",
                      file=sys.stderr, flush=True)
                if set_aside and jax.process_index() == 0:
                    self._set_aside(step)
        return None

    def _set_aside(self, step: int) -> None:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory, f"damaged_{step}")
        n = 1
        while os.path.exists(dst):
            dst = os.path.join(self.directory, f"damaged_{step}.{n}")
            n += 1
        os.replace(src, dst)
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()
