"""Training pieces: learning-rate schedules, gradient accumulation, the tracker hook."""

import math
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sde_lab import experiment, state, train  # noqa: E402


def _optim(schedule, warmup=10, decay_steps=110, lr=2.0, ratio=0.1):
    return experiment.OptimSpec("adam", lr, 0.9, 0.999, 1e-8, 0.0, warmup, 1.0, 0.999,
                                schedule, ratio, decay_steps)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_learning_rate_schedules_follow_their_formulas(schedule):
    """Linear warmup 0 -> lr over 10 steps, then constant, or a cosine / linear decay to
    0.1 lr at step 110 (the run's num_steps), held after."""
    fn = state.learning_rate_schedule(_optim(schedule))
    lr, end, w, d = 2.0, 0.2, 10, 110

    def want(s):
        if s < w:
            return lr * s / w
        u = min(1.0, (s - w) / (d - w))
        if schedule == "constant":
            return lr
        if schedule == "cosine":
            return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * u))
        return lr + (end - lr) * u

    for s in (0, 3, 10, 11, 37, 60, 109, 110, 500):
        np.testing.assert_allclose(float(fn(s)), want(s), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def tiny_experiment():
    from configs import digits

    config = digits.get_config("runlocal")
    config.model.dropout = 0.0
    return experiment.build(config)


def test_gradient_accumulation_equals_one_large_batch(tiny_experiment):
    """4 micro-batches of 4 give the loss and the updated parameters of one batch of 16
    (same examples, same per-example noise), to float32 summation tolerance."""
    exp = tiny_experiment
    optimizer = state.make_optimizer(exp.optim)
    params = exp.init_params(jax.random.PRNGKey(0))
    st = state.init_state(params, optimizer)
    batch = exp.data.make("train", train=True, seed=0).batch(0, 16)
    batch = {k: jnp.asarray(v)[:, None] for k, v in batch.items()}     # [B, 1 step, ...]
    from sde_lab.losses import example_keys

    keys = example_keys(jax.random.PRNGKey(1), 16)[:, None]
    out = {}
    for k in (1, 4):
        step = jax.jit(train.make_train_step(exp.loss_fn(), optimizer, exp.optim.ema_rate, k),
                       static_argnums=3)
        new, metrics = step(st, batch, keys, lambda tree: tree)
        out[k] = (new, metrics)
    np.testing.assert_allclose(out[4][1]["loss"], out[1][1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(out[4][1]["grad_norm"], out[1][1]["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(out[4][0].params), jax.tree.leaves(out[1][0].params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(out[1][1]["loss"][0]) > 0


def test_tracker_receives_training_records(tmp_path, monkeypatch):
    """The wandb hook (package stubbed: it is optional and offline here) gets the same
    records as metrics.jsonl, under one run id per workdir, and is closed."""
    from sde_lab import trackers

    calls = []

    class Run:
        def log(self, metrics, step):
            calls.append(("log", step, metrics))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    tracker = trackers.make("wandb", str(tmp_path), "proj", {"seed": 1})
    logger = train.Logger(str(tmp_path), 20, tracker=tracker)
    logger.log(10, {"loss": 0.5, "grad_norm": 2.0}, 100.0)
    logger.close()
    assert calls[0][0] == "init" and calls[0][1]["project"] == "proj"
    assert calls[0][1]["resume"] == "allow" and calls[0][1]["config"] == {"seed": 1}
    assert calls[1] == ("log", 10, {"train/loss": 0.5, "train/grad_norm": 2.0,
                                    "train/examples_per_sec": 100.0})
    assert calls[-1] == ("finish",)
    again = trackers.make("wandb", str(tmp_path), "proj")
    assert again is not None and calls[-1][1]["id"] == calls[0][1]["id"]


def test_tracker_without_its_package_is_a_config_error(monkeypatch):
    from sde_lab import trackers

    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"needs the 'wandb' package, which is not installed"):
        trackers.check("wandb")
    with pytest.raises(ValueError, match="unknown tracker 'mlflowx'"):
        trackers.check("mlflowx")
    trackers.check("")


def test_nonfinite_detection_watches_grads_params_and_ema():
    import jax.numpy as jnp

    from sde_lab import train

    ok = {k: jnp.ones(3) for k in train.WATCHED}
    bad = dict(ok, ema_norm=jnp.asarray([1.0, jnp.inf, 1.0]))
    assert train._first_nonfinite([(10, ok)]) is None
    assert train._first_nonfinite([(10, ok), (13, bad)]) == (15, "ema_norm")
    assert train._first_nonfinite([(0, dict(ok, grad_norm=jnp.asarray([jnp.nan] * 3)))]) == (
        1, "grad_norm")


def test_the_step_is_compiled_once_before_the_state_exists(tmp_path, monkeypatch):
    """The trainer compiles its step from the state's shapes before it initialises (or
    restores) the state, runs that compilation for every dispatch of its length (JAX's
    caches are emptied after compiling, so a second compilation would show), and compiles
    again only for a dispatch of another length."""
    from configs import toy
    from jax import monitoring

    config = toy.get_config("runlocal")
    config.train.batch_size = 8
    config.train.num_steps = 6
    config.train.steps_per_dispatch = 2
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 4
    config.train.eval_at_end = False
    exp = experiment.build(config)
    events = []
    real_restore_or_init = train._restore_or_init

    def restore_or_init(*args):
        events.append("state")
        return real_restore_or_init(*args)

    def on_compile(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(kw.get("fun_name"))

    STEP = "jit(train_step)"  # noqa: N806 (JAX's name for the compiled step)
    monkeypatch.setattr(train, "_restore_or_init", restore_or_init)
    monitoring.register_event_duration_secs_listener(on_compile)
    try:
        train.train(exp, str(tmp_path))
        assert [e for e in events if e in (STEP, "state")] == [STEP, "state"]
        events.clear()
        # Resumed at step 6 (its final checkpoint) for 3 more steps: dispatches of 2 and 1.
        train.train(experiment.build(_with_steps(config, 9)), str(tmp_path))
        assert [e for e in events if e in (STEP, "state")] == [STEP, "state", STEP]
    finally:
        monitoring.unregister_event_duration_listener(on_compile)


def _with_steps(config, num_steps):
    config = config.copy_and_resolve_references()
    config.train.num_steps = num_steps
    return config
