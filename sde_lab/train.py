"""Training: a pure jitted `train_step`, and the loop around it.

Randomness: the key of step k is `exp.keys.step(k)`, split into one key per example (so
data-parallel runs draw the one-device noise), and the data of step k is a function of
(seed, k) alone (`sde_lab.data`). With the state restored from a checkpoint, a resumed run
therefore repeats an uninterrupted one bit for bit on the same machine; the records it
logged past that checkpoint before it was killed are dropped from metrics.jsonl and
TensorBoard, so every step is logged once.

Divergence: the loss, the gradient norm and the norms of the parameters and their EMA are
checked at every log and checkpoint boundary; the first non-finite one stops the run
naming the step, before any checkpoint after it is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sde_lab import checkpointing, interrupts, parallel, sample, trackers
from sde_lab import workdir as workdir_lib
from sde_lab.losses import example_keys
from sde_lab.progress import fmt_seconds
from sde_lab.state import (TrainState, abstract_state, init_state, learning_rate_schedule,
                            make_optimizer)

WATCHED = ("loss", "grad_norm", "param_norm", "ema_norm")


class NonFinite(RuntimeError):
    pass


def ema_decay(step, ema_rate: float):
    """EMA decay at `step`: min(ema_rate, (1 + step) / (10 + step)).

    The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) keeps short runs
    from averaging in the random initialisation: with a fixed 0.999, 1,500 steps leave
    0.999^1500 = 22% of the initial weights in the EMA, which on the digits run turned
    digit-like samples into noise (digits FID 464 vs the raw weights' digits).
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(ema_rate, (1.0 + step) / (10.0 + step))


def accumulated_value_and_grad(loss_fn: Callable, num_micro: int) -> Callable:
    """value_and_grad of `loss_fn(params, batch, keys)` over a batch taken as `num_micro`
    micro-batches in sequence (`lax.scan`, so only one micro-batch's activations are
    alive), averaged: equal to the whole batch's value and gradient for a loss that is a
    mean over examples with per-example randomness (all of sde_lab's, except that dropout
    masks and VDM's antithetic times are drawn per micro-batch).

    Micro-batch j holds examples j, j + k, j + 2k, ... (k = num_micro), so a batch split
    over devices along its first axis stays split the same way in every micro-batch.
    """
    value_and_grad = jax.value_and_grad(loss_fn)
    if num_micro == 1:
        return value_and_grad

    def fn(params, batch, keys):
        def micro(v):
            v = v.reshape((v.shape[0] // num_micro, num_micro) + v.shape[1:])
            return jnp.swapaxes(v, 0, 1)

        def body(total, inputs):
            value, grads = value_and_grad(params, *inputs)
            return jax.tree.map(jnp.add, total, (value, grads)), None

        zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(body, zero, jax.tree.map(micro, (batch, keys)))
        return jax.tree.map(lambda v: v / num_micro, total)

    return fn


def make_train_step(loss_fn: Callable, optimizer, ema_rate: float,
                    grad_accum_steps: int = 1) -> Callable:
    """train_step(state, batch, keys, reduce_fn) -> (state, metrics).

    `batch` leaves and `keys` are [B, k, ...]: k fused steps (k = steps per dispatch, a
    lax.scan), examples first so data parallelism shards the example axis. `reduce_fn`
    averages across devices in pmap mode and is the identity under jit sharding. Each step
    takes its gradient over `grad_accum_steps` micro-batches of B / grad_accum_steps
    (`accumulated_value_and_grad`). Metrics per step: loss, grad_norm, and the global
    norms of the new parameters and EMA.
    """
    value_and_grad = accumulated_value_and_grad(loss_fn, grad_accum_steps)

    def train_step(state, batch, keys, reduce_fn):
        def one_step(state, inputs):
            batch, keys = inputs
            loss, grads = value_and_grad(state.params, batch, keys)
            loss, grads = reduce_fn((loss, grads))
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            decay = ema_decay(state.step, ema_rate)
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                               state.ema_params, params)
            metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                       "param_norm": optax.tree.norm(params), "ema_norm": optax.tree.norm(ema)}
            return TrainState(state.step + 1, params, ema, opt_state), metrics

        steps_first = jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), (batch, keys))
        if keys.shape[1] == 1:  # XLA:CPU runs a while-loop body far slower: no scan for k=1
            state, metrics = one_step(state, jax.tree.map(lambda v: v[0], steps_first))
            return state, jax.tree.map(lambda v: v[None], metrics)
        return jax.lax.scan(one_step, state, steps_first)  # metrics: [k], one per step

    return train_step


# ---------------------------------------------------------------- logging

def _write_synchronously(writer) -> None:
    """Makes a tensorboardX SummaryWriter write and flush in the caller's thread.

    tensorboardX hands events to a writer thread through a queue, and its flush() does not
    wait for that queue, so a kill right after a checkpoint could lose the events logged
    before it (seen: a SIGKILL-and-resume run missing step 30 whose checkpoint existed).
    The writer thread is stopped first (it drains the queue, e.g. the purge events); if
    tensorboardX's internals differ, the writer stays asynchronous.
    """
    events = getattr(getattr(writer, "file_writer", None), "event_writer", None)
    records, worker = getattr(events, "_ev_writer", None), getattr(events, "_worker", None)
    if records is None or worker is None or not hasattr(worker, "stop"):
        return
    worker.stop()
    events.add_event = records.write_event
    events.flush = records.flush


class Logger:
    """metrics.jsonl, TensorBoard events, an optional tracker (`sde_lab.trackers`) and a
    progress line, on the main process only.

    Started at `start_step` (a resume), it first drops the records past that step that a
    killed run left behind, in the file and (TensorBoard's purge_step) in the event files.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, tracker=None):
        self.main = parallel.is_main_process()
        self.total, self.t0, self.step0 = total_steps, time.time(), None
        self.tracker = tracker
        if not self.main:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        _truncate_records(path, start_step)
        self.jsonl = open(path, "a")
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                purge_step=start_step + 1 if start_step else None)
        _write_synchronously(self.tb)

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
                self.tb.add_scalar(f"train/{k}", v, step)
        self.tb.flush()
        if self.tracker is not None:
            self.tracker.log(step, {f"train/{k}": v for k, v in record.items() if k != "step"})
        done = step - self.step0
        eta = (time.time() - self.t0) / done * (self.total - step) if done > 0 else float("nan")
        print(f"step {step}/{self.total}  loss {record['loss']:.5f}  "
              f"{examples_per_sec:,.0f} ex/s  ETA {fmt_seconds(eta)}", flush=True)

    def close(self):
        if self.main:
            self.jsonl.close()
            self.tb.close()
        if self.tracker is not None:
            self.tracker.close()


def _truncate_records(path: str, last_step: int) -> None:
    """Keeps the records of metrics.jsonl with step <= last_step (atomic rewrite)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a kill
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def _first_nonfinite(pending: list[tuple[int, Any]]) -> tuple[int, str] | None:
    """(step, metric) of the first non-finite watched metric among (first_step, metrics)."""
    for first, metrics in pending:
        host = parallel.to_host(metrics)
        values = np.stack([np.asarray(host[k], np.float64) for k in WATCHED], -1)
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            i, j = bad[0]
            return first + int(i) + 1, WATCHED[j]
    return None


# ---------------------------------------------------------------- the loop

def _compile_ahead(exp, step_fn, ckpt, dataset, mesh):
    """(compiled step, its steps per dispatch) for the run's first dispatch, compiled
    before the train state exists; (None, 0) in pmap mode or with nothing left to train.

    The state's shapes come from `state.abstract_state` (`jax.eval_shape` of its
    initialisation), and the first step from the newest checkpoint the restore will find
    (if that checkpoint turns out unreadable and an older one is restored, a first
    dispatch of another length compiles on its call, as the last one of a run does). Why
    ahead: the compiler's peak memory then does not come on top of the state's, and
    `parallel.compile_ahead` frees the lowered program JAX would keep (DDPM++'s step:
    README "Training speed on CPU").
    """
    t = exp.train
    if not hasattr(step_fn, "lower"):
        return None, 0
    done = [s for s in ckpt.steps() if s <= t.num_steps]
    first = done[-1] if done else 0
    if first >= t.num_steps:
        return None, 0
    n = min(t.steps_per_dispatch, t.num_steps - first)
    batch, keys = _gather_steps(dataset, exp.keys, first, n, t.batch_size)
    batch, keys = parallel.shard_batch(batch, mesh), parallel.shard_batch(keys, mesh)
    return parallel.compile_ahead(step_fn, parallel.abstract(abstract_state(exp)), batch,
                                  keys), n


def _restore_or_init(exp, ckpt, optimizer, mesh):
    state = init_state(exp.init_params(exp.keys.init), optimizer)
    found = ckpt.restore_latest(state, at_most=exp.train.num_steps, set_aside=True)
    start = 0
    if found is not None:
        state, start = found
        print(f"restored checkpoint at step {start}", flush=True)
    return parallel.replicate(state, mesh), start


def train(exp, workdir: str) -> tuple[TrainState, interrupts.Flag]:
    """Trains `exp` in `workdir`, resuming from the newest readable checkpoint.

    Returns the final state and the interrupt flag (set if SIGTERM/SIGINT stopped the run
    early, after saving a checkpoint).

    Raises:
      NonFinite: a watched metric became NaN or infinite (nothing after it is saved).
    """
    t = exp.train
    mesh = parallel.make_mesh()
    optimizer = make_optimizer(exp.optim)
    step_fn = parallel.compile_step(
        make_train_step(exp.loss_fn(), optimizer, exp.optim.ema_rate, t.grad_accum_steps), mesh,
        mode=exp.parallel.mode)
    ckpt = checkpointing.Checkpointer(workdir, t.max_to_keep)
    dataset = exp.data.make(exp.data.train_split, train=True, seed=exp.seed)
    compiled, compiled_n = _compile_ahead(exp, step_fn, ckpt, dataset, mesh)
    state, start = _restore_or_init(exp, ckpt, optimizer, mesh)
    parallel.drop_jax_caches()  # initialisation's executables; what it or the restore freed
    lr_fn = learning_rate_schedule(exp.optim)
    logger = Logger(workdir, t.num_steps, start, tracker=trackers.for_run(exp, workdir))
    pending: list[tuple[int, Any]] = []
    step, t_last, steps_since_log = start, time.time(), 0
    try:
        with interrupts.deferred() as stop:
            while step < t.num_steps:
                n = min(t.steps_per_dispatch, t.num_steps - step)
                batch, keys = _gather_steps(dataset, exp.keys, step, n, t.batch_size)
                batch, keys = parallel.shard_batch(batch, mesh), parallel.shard_batch(keys, mesh)
                run_step = compiled if compiled is not None and n == compiled_n else step_fn
                state, metrics = run_step(state, batch, keys)
                pending.append((step, metrics))
                step += n
                steps_since_log += n
                boundary = lambda every: every > 0 and step // every != (step - n) // every  # noqa
                final = step >= t.num_steps
                # The flag is read once: a signal that lands after this line (during the
                # log or save below) is handled after the next step, never half-handled
                # (announced as saved without a save).
                stopping = stop.requested
                log_now = boundary(t.log_every_steps) or final
                save_now = boundary(t.checkpoint_every_steps) or final or stopping
                if log_now or save_now:
                    bad = _first_nonfinite(pending)
                    if bad is not None:
                        raise NonFinite(f"non-finite {bad[1]} at step {bad[0]}; the run "
                                        "stopped and no checkpoint after it was written")
                    pending.clear()
                if log_now:
                    host = parallel.to_host(metrics)
                    record = {k: host[k][-1] for k in ("loss", "grad_norm")}
                    record["learning_rate"] = float(lr_fn(step))
                    logger.log(step, record, steps_since_log * t.batch_size /
                               (time.time() - t_last))
                    t_last, steps_since_log = time.time(), 0
                if save_now:
                    ckpt.save(step, state)
                if boundary(t.sample_every_steps) and parallel.is_main_process():
                    sample.write_grid(exp, state.ema_params, os.path.join(
                        workdir, "samples", f"step_{step}.png"), exp.keys.step(step))
                if stopping:
                    print(f"{stop.name}: saved checkpoint at step {step}; exiting", flush=True)
                    break
            else:
                if stop.requested:  # landed during the last step's log/save
                    print(f"{stop.name}: training finished at step {step} (checkpoint "
                          "saved); exiting before the end-of-run work", flush=True)
    finally:
        logger.close()
        ckpt.close()
    return state, stop


def _gather_steps(dataset, keys, step: int, n: int, global_batch: int):
    """This process's batches of steps step..step+n-1 and their per-example keys, stacked
    as [B_local, n, ...] (examples first, for sharding)."""
    pi, pc = jax.process_index(), jax.process_count()
    batches = [dataset.batch(step + i, global_batch, pi, pc) for i in range(n)]
    batch = {key: np.stack([b[key] for b in batches], 1) for key in batches[0]}
    local = global_batch // pc
    # Keys are derived on the host CPU device: on an accelerator these small ops would
    # otherwise queue behind the running train step and stall the input pipeline.
    with jax.default_device(jax.devices("cpu")[0]):
        ex_keys = np.stack([
            np.asarray(example_keys(keys.step(step + i), global_batch))[
                pi * local:(pi + 1) * local] for i in range(n)], 1)
    return batch, ex_keys


def run(exp, workdir: str) -> int | None:
    """--mode train: trains and writes DONE. Returns an exit code if the run stopped early
    (interrupt: 0 for SIGTERM, 130 for SIGINT; non-finite metric: 1), None when done."""
    if parallel.is_main_process():
        workdir_lib.clear_done(workdir)
    try:
        _, stop = train(exp, workdir)
    except NonFinite as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if stop.requested:
        return stop.exit_code
    if parallel.is_main_process():
        workdir_lib.mark_done(workdir, exp.train.num_steps)
    return None
