"""Training: a pure jitted `train_step`, and the loop around it.

Randomness: the key of step k is fold_in(step_root, k) with step_root from PRNGKey(seed), split into one key per example
(so data-parallel runs draw the one-device noise), and the data of step k is a function of
(seed, k) alone (`sde_lab.data`). With the state restored from a checkpoint, a resumed run
therefore repeats an uninterrupted one bit for bit on the same machine.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sde_lab import checkpointing, parallel
from sde_lab.losses import example_keys


class NonFiniteLoss(RuntimeError):
    pass


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def make_optimizer(optim) -> optax.GradientTransformation:
    """Adam(W) with linear warmup to `lr` (score_sde) and optional global-norm clipping."""
    if optim.optimizer not in ("adam", "adamw"):
        raise ValueError(f"optim.optimizer={optim.optimizer!r} is not valid; choose from "
                         "['adam', 'adamw']")
    schedule = learning_rate_schedule(optim)
    if optim.optimizer == "adam":
        opt = optax.adam(schedule, b1=optim.beta1, eps=optim.eps)
    else:
        opt = optax.adamw(schedule, b1=optim.beta1, eps=optim.eps, weight_decay=optim.weight_decay)
    clip = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
    return optax.chain(*clip, opt)


def learning_rate_schedule(optim) -> Callable:
    if optim.warmup_steps > 0:
        return optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
    return optax.constant_schedule(optim.lr)


def init_state(params, optimizer) -> TrainState:
    # The EMA starts as a copy, not an alias: the step donates both buffers.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params))


def ema_decay(step, ema_rate: float):
    """EMA decay at `step`: min(ema_rate, (1 + step) / (10 + step)).

    The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) keeps short runs
    from averaging in the random initialisation: with a fixed 0.999, 1,500 steps leave
    0.999^1500 = 22% of the initial weights in the EMA, which on the digits run turned
    digit-like samples into noise (digits FID 464 vs the raw weights' digits).
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(ema_rate, (1.0 + step) / (10.0 + step))


def make_train_step(loss_fn: Callable, optimizer, ema_rate: float) -> Callable:
    """train_step(state, batch, keys, reduce_fn) -> (state, metrics).

    `batch` leaves and `keys` are [B, k, ...]: k fused steps (k = steps per dispatch, a
    lax.scan), examples first so data parallelism shards the example axis. `reduce_fn`
    averages across devices in pmap mode and is the identity under jit sharding.
    """

    def train_step(state, batch, keys, reduce_fn):
        def one_step(state, inputs):
            batch, keys = inputs
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, keys)
            loss, grads = reduce_fn((loss, grads))
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            decay = ema_decay(state.step, ema_rate)
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                               state.ema_params, params)
            metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
            return TrainState(state.step + 1, params, ema, opt_state), metrics

        steps_first = jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), (batch, keys))
        if keys.shape[1] == 1:  # XLA:CPU runs a while-loop body far slower: no scan for k=1
            state, metrics = one_step(state, jax.tree.map(lambda v: v[0], steps_first))
            return state, jax.tree.map(lambda v: v[None], metrics)
        return jax.lax.scan(one_step, state, steps_first)  # metrics: [k], one per step

    return train_step


# ---------------------------------------------------------------- the loop

class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


class _Logger:
    """metrics.jsonl, TensorBoard events and a progress line, on the main process only."""

    def __init__(self, workdir: str, total_steps: int):
        self.main = parallel.is_main_process()
        self.total, self.t0, self.step0 = total_steps, time.time(), None
        if self.main:
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def log(self, step: int, metrics: dict, examples_per_sec: float) -> None:
        if not self.main:
            return
        if self.step0 is None:
            self.step0, self.t0 = step, time.time()
        record = {"step": step, **{k: float(v) for k, v in metrics.items()},
                  "examples_per_sec": round(examples_per_sec, 2)}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for k, v in record.items():
            if k != "step":
                self.tb.add_scalar(k, v, step)
        done = step - self.step0
        eta = (time.time() - self.t0) / done * (self.total - step) if done > 0 else float("nan")
        print(f"step {step}/{self.total}  loss {record['loss']:.5f}  "
              f"{examples_per_sec:,.0f} ex/s  ETA {_fmt(eta)}", flush=True)

    def close(self):
        if self.main:
            self.jsonl.close()
            self.tb.close()


def _fmt(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "--"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def _first_nonfinite(pending: list[tuple[int, Any]]) -> int | None:
    """Step number of the first non-finite loss among (first_step, losses[k]) records."""
    for first, losses in pending:
        values = np.asarray(losses)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            return first + int(bad[0]) + 1
    return None


def train(exp, workdir: str) -> tuple[TrainState, bool]:
    """Trains `exp` in `workdir`, resuming from the latest checkpoint.

    Returns the final state and whether the run stopped early on SIGTERM (after saving).
    """
    from sde_lab import run

    cfg = exp.config
    mesh = parallel.make_mesh()
    optimizer = make_optimizer(cfg.optim)
    step_fn = parallel.compile_step(
        make_train_step(exp.loss_fn(), optimizer, cfg.optim.ema_rate), mesh,
        mode=cfg.parallel.mode)
    ckpt = checkpointing.Checkpointer(workdir, cfg.train.max_to_keep)
    init_key, base_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    state = init_state(exp.init_params(init_key), optimizer)
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(start, state)
        print(f"restored checkpoint at step {start}", flush=True)
    state = parallel.replicate(state, mesh)
    start = start or 0

    dataset = run.make_dataset(cfg, cfg.data.train_split, train=True)
    global_batch, k = cfg.train.batch_size, cfg.train.steps_per_dispatch
    logger, preempt = _Logger(workdir, cfg.train.num_steps), _Preemption()
    pending: list[tuple[int, Any]] = []
    step, t_last, steps_since_log = start, time.time(), 0
    try:
        while step < cfg.train.num_steps:
            n = min(k, cfg.train.num_steps - step)
            batch, keys = _gather_steps(dataset, base_key, step, n, global_batch)
            state, metrics = step_fn(state, parallel.shard_batch(batch, mesh),
                                     parallel.shard_batch(keys, mesh))
            pending.append((step, metrics["loss"]))
            step += n
            steps_since_log += n
            boundary = lambda every: every > 0 and step // every != (step - n) // every  # noqa
            final = step >= cfg.train.num_steps
            if boundary(cfg.train.log_every_steps) or final or preempt.requested or boundary(
                    cfg.train.checkpoint_every_steps):
                bad = _first_nonfinite(pending)
                if bad is not None:
                    raise NonFiniteLoss(f"non-finite loss at step {bad}; the run stopped and "
                                        "no checkpoint after it was written")
                pending.clear()
            if boundary(cfg.train.log_every_steps) or final:
                elapsed = time.time() - t_last
                host = parallel.to_host(metrics)
                lr = float(learning_rate_schedule(cfg.optim)(step))
                logger.log(step, {"loss": host["loss"][-1], "grad_norm": host["grad_norm"][-1],
                                  "learning_rate": lr}, steps_since_log * global_batch / elapsed)
                t_last, steps_since_log = time.time(), 0
            if boundary(cfg.train.checkpoint_every_steps) or final or preempt.requested:
                ckpt.save(step, state)
            if boundary(cfg.train.sample_every_steps) and parallel.is_main_process():
                from sde_lab import sample

                sample.write_grid(exp, state.ema_params, os.path.join(
                    workdir, "samples", f"step_{step}.png"), jax.random.fold_in(base_key, step))
            if preempt.requested:
                print(f"SIGTERM: saved checkpoint at step {step}; exiting", flush=True)
                break
    finally:
        logger.close()
        preempt.restore()
        ckpt.close()
    return state, preempt.requested


def _gather_steps(dataset, base_key, step: int, n: int, global_batch: int):
    """This process's batches of steps step..step+n-1 and their per-example keys, stacked
    as [B_local, n, ...] (examples first, for sharding)."""
    pi, pc = jax.process_index(), jax.process_count()
    batches = [dataset.batch(step + i, global_batch, pi, pc) for i in range(n)]
    batch = {key: np.stack([b[key] for b in batches], 1) for key in batches[0]}
    local = global_batch // pc
    # Keys are derived on the host CPU device: on an accelerator these small ops would
    # otherwise queue behind the running train step and stall the input pipeline.
    with jax.default_device(jax.devices("cpu")[0]):
        keys = np.stack([
            np.asarray(example_keys(jax.random.fold_in(base_key, step + i), global_batch))[
                pi * local:(pi + 1) * local] for i in range(n)], 1)
    return batch, keys


def train_and_evaluate(exp, workdir: str) -> int:
    """Trains; writes DONE when finished; then evaluates if `train.eval_at_end`."""
    try:
        state, preempted = train(exp, workdir)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if preempted:
        return 0
    if parallel.is_main_process():
        from sde_lab import sweep

        sweep.mark_done(workdir)
    if exp.config.train.eval_at_end:
        from sde_lab import evaluate

        return evaluate.run(exp, workdir, steps=[exp.config.train.num_steps])
    return 0


def restore_params(exp, workdir: str, step: int | None = None, ema: bool = True):
    """(params, step) of checkpoint `step` (default: the latest): EMA params by default."""
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=None)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first "
                                    "(--mode train)")
        target = jax.eval_shape(lambda: init_state(exp.init_params(jax.random.PRNGKey(0)),
                                                   make_optimizer(exp.config.optim)))
        state = ckpt.restore(step, target)
    finally:
        ckpt.close()
    return (state.ema_params if ema else state.params), step
