"""A tiny DSM training loop for the data-parallel tests, run in subprocesses.

`python parallel_worker.py OUT.npz MODE [MODE ...]` trains the same MLP for `NUM_STEPS`
Adam steps on the same global batches with each mode and saves the flattened params:
"reference" is a plain `jax.jit` step on one device that never touches sde_lab.parallel;
"jit1" is parallel.py's jit mode on a one-device mesh; "jit" and "pmap" use every device
of every process, with the per-example keys passed like the batch (each process's rows
through `shard_batch`, as the runner does); "jit_fullkeys" and "pmap_fullkeys" pass the
full key array, identical on every process. Multi-process runs set SDE_LAB_COORDINATOR / _NUM_PROCESSES /
_PROCESS_ID, and each process feeds only its own rows of the global batch. With
SDE_LAB_CKPT_DIR set, every mode ends with an orbax save and restore of its state, by all
processes, checked bit for bit.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sde_lab import losses, parallel, parameterization, sdes

GLOBAL_BATCH = 16
DIM = 3
NUM_STEPS = 3
LEARNING_RATE = 1e-2


class MLP(nn.Module):
    """eps-network: [B, DIM] x [B] conditioning -> [B, DIM]."""

    @nn.compact
    def __call__(self, x, cond):
        h = jnp.concatenate([x, jnp.sin(cond[:, None] / 1000.0), jnp.cos(cond[:, None] / 1000.0)],
                            axis=-1)
        h = nn.gelu(nn.Dense(32)(h))
        h = nn.gelu(nn.Dense(32)(h))
        return nn.Dense(DIM)(h)


NET = MLP()
SDE = sdes.make("vp")
SCORE_MODEL = parameterization.make("eps").score_model(NET.apply, SDE)
OPTIMIZER = optax.adam(LEARNING_RATE)


def init_state():
    params = NET.init(jax.random.PRNGKey(0), jnp.zeros((1, DIM)), jnp.zeros((1,)))
    return {"params": params, "opt_state": OPTIMIZER.init(params)}


def global_batch(step: int) -> np.ndarray:
    """The step's global batch, [GLOBAL_BATCH, DIM], the same on every process."""
    return np.random.RandomState(step).normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32)


def step_keys(step: int) -> jax.Array:
    return losses.example_keys(jax.random.fold_in(jax.random.PRNGKey(1), step), GLOBAL_BATCH)


def step_fn(state, batch, keys, reduce_fn):
    def loss_fn(params):
        return losses.dsm_loss(params, SCORE_MODEL, SDE, batch, keys)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    grads, loss = reduce_fn((grads, loss))
    updates, opt_state = OPTIMIZER.update(grads, state["opt_state"], state["params"])
    return ({"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state},
            {"loss": loss})


def train(mode: str) -> tuple[dict, list[float]]:
    """Params (numpy, flattened by path) and losses after NUM_STEPS steps."""
    state, losses_seen = init_state(), []
    if mode == "reference":
        step = jax.jit(lambda s, b, k: step_fn(s, b, k, lambda tree: tree))
        for i in range(NUM_STEPS):
            state, metrics = step(state, jnp.asarray(global_batch(i)), step_keys(i))
            losses_seen.append(float(metrics["loss"]))
        return _flatten(jax.device_get(state["params"])), losses_seen
    mesh = parallel.make_mesh(jax.devices()[:1] if mode == "jit1" else None)
    parallel.check_batch_size(GLOBAL_BATCH, mesh)
    step = parallel.compile_step(step_fn, mesh, mode="pmap" if "pmap" in mode else "jit")
    state = parallel.replicate(state, mesh)
    rows = parallel.local_batch_size(GLOBAL_BATCH)
    start = jax.process_index() * rows
    for i in range(NUM_STEPS):
        batch = parallel.shard_batch(global_batch(i)[start:start + rows], mesh)
        keys = step_keys(i)
        if not mode.endswith("fullkeys"):
            keys = parallel.shard_batch(np.asarray(keys)[start:start + rows], mesh)
        state, metrics = step(state, batch, keys)
        losses_seen.append(float(parallel.to_host(metrics)["loss"]))
    # Both modes hand back state replicated over every device of every process (what an
    # orbax save of a global array needs).
    assert all(x.is_fully_replicated and len(x.sharding.device_set) == mesh.devices.size
               for x in jax.tree.leaves(state)), mode
    if os.environ.get("SDE_LAB_CKPT_DIR"):
        _check_checkpoint_round_trip(state, os.path.join(os.environ["SDE_LAB_CKPT_DIR"], mode))
    return _flatten(parallel.to_host(state["params"])), losses_seen


def _check_checkpoint_round_trip(state, directory: str) -> None:
    """Every process saves the replicated state with orbax and restores it unchanged."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, options=options) as manager:
        manager.save(NUM_STEPS, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(NUM_STEPS, args=ocp.args.StandardRestore(abstract))
    for a, b in zip(jax.tree.leaves(parallel.to_host(state)),
                    jax.tree.leaves(parallel.to_host(restored))):
        np.testing.assert_array_equal(a, b)
    assert all(x.sharding == y.sharding
               for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)))


def _flatten(params) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}


def main(out: str, modes: list[str]) -> None:
    if "SDE_LAB_COORDINATOR" in os.environ:
        parallel.initialize(os.environ["SDE_LAB_COORDINATOR"],
                            int(os.environ["SDE_LAB_NUM_PROCESSES"]),
                            int(os.environ["SDE_LAB_PROCESS_ID"]))
    arrays = {}
    for mode in modes:
        params, losses_seen = train(mode)
        arrays.update({f"{mode}/{k}": v for k, v in params.items()})
        arrays[f"{mode}/loss"] = np.asarray(losses_seen)
    arrays["device_count"] = np.asarray(jax.device_count())
    arrays["process_count"] = np.asarray(jax.process_count())
    if parallel.is_main_process():
        np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
