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
    from sde_lab import experiment

    exp = experiment.build(config)
    return exp.net, exp.shape


def write_workdir(config, workdir: str, net_variables: dict, step: int) -> str:
    """Writes `net_variables` as the runner's checkpoint `step` in workdir/checkpoints and
    records `config` as the workdir's config, so that `main.py --mode sample|eval` with the
    same config (they restore the EMA parameters) use them.

    The train state gets params = ema_params = {"net": net_variables, "sde": the SDE's
    initial parameters ({} for a fixed SDE)} and a fresh optimizer state. Returns the
    checkpoint directory.
    """
    import json

    import jax

    from sde_lab import checkpointing, experiment, state as state_lib, workdir as workdir_lib

    exp = experiment.build(config)
    params = {"net": net_variables, "sde": exp.sde.init(jax.random.PRNGKey(0))}
    state = state_lib.init_state(params, state_lib.make_optimizer(exp.optim))
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.check_config(workdir, json.loads(config.to_json_best_effort()))
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
