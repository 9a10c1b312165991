"""The converter's only contact with the runner: the network a config builds, and the
runner checkpoint a converted network becomes.

Everything else in sde_lab.convert takes a Flax module and returns Flax variables. When
the runner's config layout or TrainState changes, these two functions change with it.
"""

from __future__ import annotations

import os

import jax.numpy as jnp


def build_network(config):
    """(net, x_shape): the network main.py builds for `config` and one input's shape."""
    from sde_lab import run

    return run.make_net(config), run.data_shape(config)


def write_workdir(config, workdir: str, net_variables: dict, step: int) -> str:
    """Writes `net_variables` as the runner's checkpoint `step` in workdir/checkpoints,
    so that `main.py --mode sample|eval` (which restore the EMA parameters) use them.

    The TrainState of sde_lab.train gets params = ema_params = net_variables and a fresh
    optimizer state. (After the runner refactor its params are {"net": net_variables,
    "sde": {}}.) Returns the checkpoint directory.
    """
    from sde_lab import checkpointing, train

    state = train.init_state(net_variables, train.make_optimizer(config.optim))
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=None)
    try:
        ckpt.save(step, state)
    finally:
        ckpt.close()
    return os.path.join(ckpt.directory, str(step))


def existing_checkpoints(workdir: str) -> list[int]:
    """Steps of the runner checkpoints already in workdir (the converter refuses those)."""
    from sde_lab import checkpointing

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return []
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=None)
    try:
        return ckpt.steps()
    finally:
        ckpt.close()
