"""The train state (parameters, their EMA, optimizer state) and reading it back.

Parameters are {"net": network variables, "sde": the SDE's trainable parameters ({} for
a fixed SDE)}; the EMA has the same structure and is what sampling and evaluation use.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from sde_lab import checkpointing


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def learning_rate_schedule(optim) -> Callable:
    """Linear warmup from 0 to `optim.lr` over `warmup_steps` (score_sde), then
    `optim.schedule`: "constant", or a "cosine" / "linear" decay to
    `min_lr_ratio * lr` at step `decay_steps` (the run's train.num_steps)."""
    if optim.schedule == "constant":
        if optim.warmup_steps > 0:
            return optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
        return optax.constant_schedule(optim.lr)
    warmup = min(optim.warmup_steps, optim.decay_steps - 1)
    end = optim.lr * optim.min_lr_ratio
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, optim.decay_steps,
                                                  end_value=end)
    decay = optax.linear_schedule(optim.lr, end, optim.decay_steps - warmup)
    if warmup > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), decay],
                                    [warmup])
    return decay


def make_optimizer(optim) -> optax.GradientTransformation:
    """Adam(W) with the learning-rate schedule and optional global-norm clipping."""
    schedule = learning_rate_schedule(optim)
    if optim.optimizer == "adam":
        opt = optax.adam(schedule, b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
    else:
        opt = optax.adamw(schedule, b1=optim.beta1, b2=optim.beta2, eps=optim.eps,
                          weight_decay=optim.weight_decay)
    clip = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
    return optax.chain(*clip, opt)


def init_state(params, optimizer) -> TrainState:
    # The EMA starts as a copy, not an alias: the step donates both buffers.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=optimizer.init(params))


def abstract_state(exp) -> TrainState:
    """Shapes and dtypes of `exp`'s train state (nothing computed)."""
    return jax.eval_shape(lambda: init_state(exp.init_params(jax.random.PRNGKey(0)),
                                             make_optimizer(exp.optim)))


def abstract_classifier_state(exp) -> TrainState:
    """Shapes and dtypes of the noise-conditional classifier's train state."""
    c = exp.classifier
    return jax.eval_shape(lambda: init_state(
        c.init_params(jax.random.PRNGKey(0), exp.shape), make_optimizer(c.optim)))


def restore_classifier(exp, directory: str, step: int | None = None, ema: bool = True):
    """(classifier variables, step) of its checkpoint `step` in `directory` (default the
    newest readable one): the EMA by default. Same errors as `restore_params`."""
    return _restore(directory, step, ema, abstract_classifier_state(exp),
                    "--mode train_classifier")


def restore_params(exp, workdir: str, step: int | None = None, ema: bool = True):
    """(params, step) of checkpoint `step`, or of the newest readable one: EMA by default.

    Raises:
      FileNotFoundError: no (readable) checkpoint, or no checkpoint `step`.
    """
    return _restore(workdir, step, ema, abstract_state(exp), "--mode train")


def _restore(workdir: str, step: int | None, ema: bool, target, how: str):
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=None)
    try:
        if step is None:
            found = ckpt.restore_latest(target)
            if found is None:
                raise FileNotFoundError(f"no readable checkpoint in {ckpt.directory}; train "
                                        f"first ({how})")
            state, step = found
        else:
            if step not in ckpt.steps():
                raise FileNotFoundError(f"no checkpoint {step} in {ckpt.directory}; it has "
                                        f"{ckpt.steps()}")
            state = ckpt.restore(step, target)
    finally:
        ckpt.close()
    return (state.ema_params if ema else state.params), step
