"""Checkpoints through orbax's CheckpointManager.

Orbax writes each step into a temporary directory and renames it when complete, so a
process killed at any moment leaves the previous complete checkpoint as the latest one.
Saves are synchronous here: the preemption path must know the save finished before it
exits, and checkpoints are rare next to training steps.
"""

from __future__ import annotations

import os

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

    def close(self) -> None:
        self._manager.close()
