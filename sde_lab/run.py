"""The runner's front door: config -> experiment -> the mode's runner.

Layers, each importing only those below it:

    main.py (flags) -> run (modes, checks) -> train / evaluate -> sample -> state,
    checkpointing, workdir -> experiment (config -> typed objects) -> the library.

Everything that can be checked without compiling is checked here first (the config, the
devices, the dataset, weights and stats files, the workdir and its owner), so bad input is
one line before anything is compiled and nothing saved is touched.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax

from sde_lab import (classify, evaluate, experiment, interrupts, inverse_runner, parallel,
                     sample, train)
from sde_lab import workdir as workdir_lib
from sde_lab.experiment import ConfigError


def _train_mode(exp, workdir: str) -> int:
    code = train.run(exp, workdir)
    if code is not None:
        return code
    if exp.train.eval_at_end:
        with workdir_lib.lock(workdir, "eval"):
            return evaluate.run(exp, workdir, steps=[exp.train.num_steps])
    return 0


def _eval_mode(exp, workdir: str) -> int:
    with workdir_lib.lock(workdir, "eval"):
        return evaluate.run(exp, workdir)


# mode -> (runner(exp, workdir) -> exit code, lock role of the whole mode or None,
#          whether it needs an existing checkpoint, one line of help,
#          check(exp, mode) run by prepare() before compiling, or None).
MODES: dict[str, tuple[Callable[..., int], str | None, bool, str, Callable | None]] = {
    "train": (_train_mode, "train", False, "train (resuming), then eval if train.eval_at_end",
              None),
    "eval": (_eval_mode, None, True, "FID/KID/IS and bits/dim of checkpoints", None),
    "sample": (sample.run, "sample", True, "samples of the newest checkpoint (.npz + PNG)",
               None),
    # Locks the classifier's own directory (it may be another run's: classifier.workdir).
    "train_classifier": (classify.run, None, False, "the noise-conditional classifier for "
                         "sample.guidance=classifier (resuming), then its accuracy vs t", None),
    "inpaint": (inverse_runner.run_inpaint, "inpaint", True, "fill inverse.mask of the eval "
                "split (.npz, PNG, JSON with the digits accuracy)", inverse_runner.check),
    "colorize": (inverse_runner.run_colorize, "colorize", True, "colour from the grey eval "
                 "images (RGB data)", inverse_runner.check),
    "sdedit": (inverse_runner.run_sdedit, "sdedit", True, "SDEdit of the eval images from "
               "inverse.t0", inverse_runner.check),
    "denoise": (inverse_runner.run_denoise, "denoise", True, "Tweedie, posterior mean and "
                "filters at inverse.noise_std (data units): PSNR", inverse_runner.check),
    "score": (inverse_runner.run_score, "score", True, "anomaly scores of the eval split "
              "(scores.npz/.csv) and AUROC of inverse.anomaly_classes", inverse_runner.check),
}


def _check_devices(exp, mode: str) -> None:
    mesh = parallel.make_mesh()
    t = exp.train
    train_name = "train.batch_size" + (
        f" / train.grad_accum_steps ({t.batch_size} / {t.grad_accum_steps})"
        if t.grad_accum_steps > 1 else "")
    batches = [(train_name, t.batch_size // t.grad_accum_steps),
               ("eval.batch_size", exp.eval.batch_size),
               ("sample.batch_size", exp.sampler.batch_size)]
    if mode == "train_classifier":
        batches.append(("classifier.batch_size", exp.classifier.batch_size))
    for name, value in batches:
        try:
            parallel.check_batch_size(value, mesh, name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if (mode == "train" and getattr(exp.net, "conv_backward", None) == "onednn"
            and exp.parallel.mode == "jit" and mesh.devices.size > 1):
        # XLA's partitioner cannot split an FFI call over the batch: it would gather the
        # whole batch onto every device and compute every convolution N times.
        raise ConfigError(f"model.conv_backward='onednn' needs parallel.mode='pmap' on "
                          f"{mesh.devices.size} devices (with 'jit' XLA would run each "
                          f"oneDNN convolution on the whole batch on every device)")


def _check_files(exp, mode: str) -> None:
    """The dataset split(s) the mode reads are prepared; weights and stats files exist."""
    d, e = exp.data, exp.eval
    evaluates = mode == "eval" or (mode == "train" and exp.train.eval_at_end)
    if mode in ("train", "train_classifier"):
        d.make(d.train_split, train=True, seed=exp.seed)
    if mode == "train_classifier":
        d.make(d.eval_split, train=False, seed=exp.seed)
    if evaluates and not d.is_toy:
        if e.feature_extractor == "inception":
            from sde_lab.metrics import convert

            try:
                convert.resolve_weights_path(e.inception_weights or None)
            except (FileNotFoundError, ValueError) as err:
                raise ConfigError(f"eval.inception_weights: {str(err).splitlines()[0]} (README, "
                                  "'Sample quality', says how to get and convert them)") from None
        if e.reference_stats and not os.path.isfile(e.reference_stats):
            raise ConfigError(f"eval.reference_stats={e.reference_stats!r}: no such file")
        if e.enable_bpd or (e.feature_extractor != "none" and not e.reference_stats):
            d.make(d.eval_split, train=False, seed=exp.seed)


def _check_checkpoints(exp, workdir: str, mode: str) -> None:
    steps = evaluate.checkpoint_steps(workdir) if os.path.isdir(workdir) else []
    if mode == "eval" and exp.eval.wait_seconds > 0:
        return
    if not steps:
        raise evaluate.NoCheckpoint(f"no checkpoint in {workdir}/checkpoints; train first "
                                    "(--mode train)")
    if mode == "eval" and exp.eval.checkpoints is not None:
        missing = sorted(set(exp.eval.checkpoints) - set(steps))
        if missing:
            raise evaluate.NoCheckpoint(f"eval.checkpoints: no checkpoint {missing} in "
                                        f"{workdir}/checkpoints (it has {steps})")


def _uses_classifier(exp, mode: str) -> bool:
    samples = mode in ("sample", "eval") or (mode == "train" and exp.train.eval_at_end)
    return mode == "train_classifier" or (samples and exp.guidance.method == "classifier")


def _check_classifier(exp, record: dict, workdir: str, mode: str, allow_change: bool) -> None:
    """The classifier can be built for the data; guidance has a trained one whose recorded
    config matches (read-only: nothing is written)."""
    c = exp.classifier
    if c.net is None:
        raise ConfigError("classifier.num_classes=0 and the score model is unconditional "
                          "(model.num_classes=0): set classifier.num_classes to the data's "
                          "number of classes (10 for digits)")
    directory = c.directory(workdir)
    if mode != "train_classifier":
        if c.workdir and not os.path.isdir(c.workdir):
            raise evaluate.NoCheckpoint(f"classifier.workdir={c.workdir!r}: no such directory; "
                                        "train a classifier there with --mode train_classifier")
        if not workdir_lib.has_checkpoints(directory):
            raise evaluate.NoCheckpoint(
                f"sample.guidance='classifier' needs a trained classifier: no checkpoint in "
                f"{directory}/checkpoints; train it first (--mode train_classifier, same "
                "config), or set classifier.workdir to one")
    if parallel.is_main_process():
        workdir_lib.check_config(directory, classify.config_record(record, exp), allow_change,
                                 record=False, mutable=classify.MUTABLE)
    experiment.check_classifier_shapes(exp)


def prepare(config, workdir: str, mode: str, allow_config_change: bool = False):
    """Every check that needs no compilation; returns the experiment.

    Raises:
      ConfigError, WorkdirError, NoCheckpoint: one line each.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode={mode!r} is not valid; choose from {sorted(MODES)}")
    exp = experiment.build(config)
    _check_devices(exp, mode)
    record = json.loads(config.to_json_best_effort())
    source = exp.eval.source_workdir if mode == "eval" else None
    if parallel.is_main_process():  # read-only: nothing is written before every check
        for d in filter(None, (workdir, source)):
            workdir_lib.check_config(d, record, allow_config_change, record=False)
    if _uses_classifier(exp, mode):
        _check_classifier(exp, record, source or workdir, mode, allow_config_change)
    if MODES[mode][4] is not None:
        MODES[mode][4](exp, mode)
    if MODES[mode][2]:
        _check_checkpoints(exp, source or workdir, mode)
    experiment.check_shapes(exp)
    _check_files(exp, mode)
    workdir_lib.check_writable(workdir)
    if mode == "train_classifier":
        workdir_lib.check_writable(exp.classifier.directory(workdir))
    if parallel.is_main_process() and mode == "train":
        workdir_lib.check_config(workdir, record, allow_config_change, record=True)
    if parallel.is_main_process() and mode == "train_classifier":
        workdir_lib.check_config(exp.classifier.directory(workdir),
                                 classify.config_record(record, exp), allow_config_change,
                                 record=True, mutable=classify.MUTABLE)
    return exp


def main(config, workdir: str, mode: str = "train", dry_run: bool = False,
         allow_config_change: bool = False) -> int:
    """Runs `mode` for `config` in `workdir`; returns an exit code."""
    interrupts.install()
    p = experiment.parallel_spec(config)  # checked before JAX touches any device
    # Before JAX creates its backends, which read XLA_FLAGS once (a process that already
    # has them, e.g. a notebook or a test calling main() twice, keeps its first setting).
    parallel.set_cpu_convolutions(p.cpu_convolutions)
    parallel.set_cpu_scheduler(p.cpu_scheduler)
    if p.compilation_cache:  # before the first compilation, which fixes JAX's cache
        try:
            parallel.enable_compilation_cache(p.compilation_cache)
        except OSError as e:
            if not p.cache_is_default:
                raise ConfigError(f"parallel.compilation_cache={p.compilation_cache!r}: "
                                  f"cannot create the directory ({e.strerror})") from None
            # The default directory is a convenience: without it the run only compiles.
            parallel.enable_compilation_cache("none")
            print(f"note: no compilation cache ({p.compilation_cache}: {e.strerror}); "
                  "set --config.parallel.compilation_cache=DIR to keep one", flush=True)
    parallel.initialize(p.coordinator_address, p.num_processes, p.process_id)
    if dry_run:
        exp = experiment.build(config)
        experiment.check_shapes(exp)
        n = experiment.count_params(
            jax.eval_shape(lambda: exp.init_params(jax.random.PRNGKey(0))))
        print(config)
        print(f"parameters: {n:,}")
        return 0
    exp = prepare(config, workdir, mode, allow_config_change)
    runner, role = MODES[mode][:2]
    if role is None or not parallel.is_main_process():
        return runner(exp, workdir)
    with workdir_lib.lock(workdir, role):
        return runner(exp, workdir)
