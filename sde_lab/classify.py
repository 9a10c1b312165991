"""--mode train_classifier: the noise-conditional classifier p_t(y | x_t) and its accuracy.

The classifier (`classifier.size`, a `models.classifier` network) is trained with
`guidance.classifier_loss`: cross-entropy on training images noised by the run's own SDE,
t ~ U[classifier.eps, T], through `guidance.classifier_input` (so it sees the noise level
as log(sigma / alpha), the same under every SDE). Its run lives in
`classifier.directory(workdir)` (default `<workdir>/classifier/`): `config.json` (the
fields that define it: seed, sde, data, classifier), `checkpoints/`, `metrics.jsonl`,
TensorBoard events, `DONE`, and `accuracy.json`. Keys come from `Keys.classifier_*`, data
batches from (seed, step): a killed run resumes from its newest readable checkpoint and
repeats the uninterrupted one; a finished one is not retrained.

When training is done, the EMA classifier's accuracy on the eval split, noised at each time
of `classifier.eval_times` (`eval_repeats` noise draws per image), is printed as a table
and written to `accuracy.json`: how much class information survives at each noise level,
which is what classifier guidance can use there.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types

import jax
import numpy as np

from sde_lab import checkpointing, guidance, interrupts, parallel
from sde_lab import train as train_lib
from sde_lab import workdir as workdir_lib
from sde_lab.losses import example_keys
from sde_lab.state import init_state, learning_rate_schedule, make_optimizer

# Fields that may change between starts of one classifier run (its record is compared
# with these left out).
MUTABLE = ("classifier.num_steps", "classifier.log_every_steps",
           "classifier.checkpoint_every_steps", "classifier.eval_times",
           "classifier.eval_repeats", "classifier.workdir", "data.data_dir")


def config_record(config_dict: dict, exp) -> dict:
    """What defines the classifier's run: the seed, the SDE and the data that noise its
    inputs, and its own section (with the number of classes it resolved to)."""
    return {"seed": config_dict["seed"], "sde": config_dict["sde"], "data": config_dict["data"],
            "classifier": {**config_dict["classifier"],
                           "num_classes": exp.classifier.num_classes}}


def _sde(exp):
    """The SDE whose noise the classifier learns (a learned schedule: its initial one)."""
    return exp.sde.bind(exp.sde.init(exp.keys.classifier_init()))


def train(exp, directory: str):
    """Trains (resuming) to classifier.num_steps; returns (EMA variables, step, flag).

    Raises:
      train.NonFinite: a watched metric became NaN or infinite.
    """
    c, sde = exp.classifier, _sde(exp)
    logits_model = c.logits_model(sde)

    def loss_fn(params, batch, keys):
        return guidance.classifier_loss(params, logits_model, sde, batch["x"], batch["label"],
                                        keys, eps=c.eps)

    mesh = parallel.make_mesh()
    optimizer = make_optimizer(c.optim)
    ckpt = checkpointing.Checkpointer(directory, max_to_keep=2)
    state = init_state(c.init_params(exp.keys.classifier_init(), exp.shape), optimizer)
    found = ckpt.restore_latest(state, at_most=c.num_steps, set_aside=True)
    step = 0
    if found is not None:
        state, step = found
        print(f"restored classifier checkpoint at step {step}", flush=True)
    state = parallel.replicate(state, mesh)
    try:
        with interrupts.deferred() as stop:
            if step < c.num_steps:
                step_fn = parallel.compile_step(
                    train_lib.make_train_step(loss_fn, optimizer, c.optim.ema_rate), mesh,
                    mode=exp.parallel.mode)
                state, step = _loop(exp, directory, step_fn, state, step, ckpt, mesh, stop)
    finally:
        ckpt.close()
    return state.ema_params, step, stop


def _loop(exp, directory, step_fn, state, step, ckpt, mesh, stop):
    c = exp.classifier
    dataset = exp.data.make(exp.data.train_split, train=True, seed=exp.seed)
    keys = types.SimpleNamespace(step=exp.keys.classifier_step)
    lr_fn = learning_rate_schedule(c.optim)
    logger = train_lib.Logger(directory, c.num_steps, step)
    t_last, since_log, pending = time.time(), 0, []
    try:
        while step < c.num_steps:
            batch, ex_keys = train_lib._gather_steps(dataset, keys, step, 1, c.batch_size)
            state, metrics = step_fn(state, parallel.shard_batch(batch, mesh),
                                     parallel.shard_batch(ex_keys, mesh))
            pending.append((step, metrics))
            step += 1
            since_log += 1
            final = step >= c.num_steps
            log_now = (c.log_every_steps > 0 and step % c.log_every_steps == 0) or final
            stopping = stop.requested  # read once (see train.train)
            save_now = (final or stopping or (c.checkpoint_every_steps > 0
                                              and step % c.checkpoint_every_steps == 0))
            if log_now or save_now:
                bad = train_lib._first_nonfinite(pending)
                if bad is not None:
                    raise train_lib.NonFinite(f"classifier: non-finite {bad[1]} at step "
                                              f"{bad[0]}; no checkpoint after it was written")
                pending.clear()
            if log_now:
                host = parallel.to_host(metrics)
                record = {k: host[k][-1] for k in ("loss", "grad_norm")}
                record["learning_rate"] = float(lr_fn(step))
                logger.log(step, record, since_log * c.batch_size / (time.time() - t_last))
                t_last, since_log = time.time(), 0
            if save_now:
                ckpt.save(step, state)
            if stopping:
                print(f"{stop.name}: saved classifier checkpoint at step {step}; exiting",
                      flush=True)
                break
    finally:
        logger.close()
    return state, step


def accuracy_table(exp, params, batch_size: int) -> dict:
    """Accuracy of the classifier `params` on the eval split noised at each time of
    `classifier.eval_times`, over `eval_repeats` noise draws per image.

    Returns {"split", "num_examples", "repeats", "rows": [{"t", "log_snr", "sigma_over_alpha",
    "accuracy"}]}; chance is 1 / K.
    """
    c, d, sde = exp.classifier, exp.data, _sde(exp)
    levels, labels = d.make(d.eval_split, train=False, seed=exp.seed).levels(0, 10**9)
    x = d.scaler.to_model(levels)
    logits_model = c.logits_model(sde)

    @jax.jit
    def hits(params, xb, yb, key, t):
        keys = example_keys(key, xb.shape[0])
        return guidance.noised_accuracy(params, logits_model, sde, xb, yb, keys, t) * xb.shape[0]

    rows = []
    for i, t in enumerate(c.eval_times):
        total = 0.0
        for r in range(c.eval_repeats):
            key = exp.keys.classifier_eval(i * c.eval_repeats + r)
            for start in range(0, len(x), batch_size):
                total += float(hits(params, x[start:start + batch_size],
                                    labels[start:start + batch_size],
                                    jax.random.fold_in(key, start), t))
        log_snr = float(sde.log_snr(np.float32(t)))
        rows.append({"t": t, "log_snr": log_snr, "sigma_over_alpha": float(np.exp(-log_snr / 2)),
                     "accuracy": total / (len(x) * c.eval_repeats)})
    return {"split": d.eval_split, "num_examples": int(len(x)), "repeats": c.eval_repeats,
            "rows": rows}


def format_table(table: dict, step: int, num_classes: int) -> str:
    lines = [f"classifier accuracy (EMA of step {step}) on the {table['num_examples']} "
             f"{table['split']} images, {table['repeats']} noise draw(s) each at each t "
             f"(chance {1 / num_classes:.1%}):",
             f"  {'t':>8}  {'log-SNR':>8}  {'sigma/alpha':>11}  {'accuracy':>8}"]
    for r in table["rows"]:
        lines.append(f"  {r['t']:8.4g}  {r['log_snr']:8.3f}  {r['sigma_over_alpha']:11.4g}  "
                     f"{r['accuracy']:8.1%}")
    return "\n".join(lines)


def run(exp, workdir: str) -> int:
    """--mode train_classifier: train (resuming), then the accuracy table."""
    directory = exp.classifier.directory(workdir)
    os.makedirs(directory, exist_ok=True)
    main = parallel.is_main_process()
    with workdir_lib.lock(directory, "train") if main else contextlib.nullcontext():
        if main:
            workdir_lib.clear_done(directory)
        try:
            params, step, stop = train(exp, directory)
        except train_lib.NonFinite as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        if stop.requested:
            return stop.exit_code
        t0 = time.time()
        table = accuracy_table(exp, params, exp.eval.batch_size)
        table.update(step=step, seconds=round(time.time() - t0, 2))
        if main:
            workdir_lib.mark_done(directory, step)
            path = os.path.join(directory, "accuracy.json")
            workdir_lib.write_json(path, table)
            print(f"{format_table(table, step, exp.classifier.num_classes)}\n  wrote {path}",
                  flush=True)
    return 0
