"""Bad command lines of main.py and `python -m sde_lab.sweep`: one `error:` line each.

Every case must exit non-zero with exactly one line of output on stderr besides JAX's
compile log, that line starting with `error:` and naming the option; no traceback; and no
compilation beyond JAX's few eager scalar ops (nothing of the model is compiled), and
nothing written into a workdir that did not exist. The command lines run through
tests/cli_worker.py: each in its own process forked after the imports, so the ~130 cases
take seconds of CPU, not minutes.
"""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["--config", "configs/digits.py:runlocal"]
TOY = ["--config", "configs/toy.py:runlocal"]
LOG_LINE = re.compile(r"^[IWEF]\d{4} ")   # absl log lines (the compile log)
# The checks evaluate a few scalar expressions eagerly (one tiny XLA compile each: a
# sampler's time grid takes ~25); running the model's init alone compiles ~300 ops, and a
# train step or a sampler would compile the model itself.
MAX_EAGER_COMPILES = 60


def _file_cases(tmp):
    """Config and sweep files with problems, written into `tmp`."""
    files = {
        "syntax.py": "def get_config(:\n",
        "no_get_config.py": "X = 1\n",
        "raises.py": "raise RuntimeError('config module is broken')\n",
        "returns_dict.py": "def get_config(arg=None):\n    return {'a': 1}\n",
        "notpy.txt": "hello\n",
        "sweep_syntax.py": "def get_sweep(:\n",
        "sweep_none.py": "X = 1\n",
        "sweep_raises.py": "def get_sweep():\n    raise KeyError('oops')\n",
        "sweep_list.py": "def get_sweep():\n    return [1, 2]\n",
        "sweep_keys.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                         "'grid': {'sde.name': ['vp']}, 'sizes': 1}\n",
        "sweep_grid.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                         "'grid': {'sde.name': 'vp'}}\n",
        "sweep_both.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                         "'grid': {'sde.name': ['vp']}, 'runs': [{}]}\n",
        "sweep_badkey.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                           "'grid': {'1sde': ['vp']}}\n",
        "sweep_badvalue.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                             "'grid': {'sde.name': [{'a': 1}]}}\n",
        "sweep_unknown_field.py": "def get_sweep():\n    return {'config': "
                                  "'configs/toy.py:runlocal', 'grid': {'optim.learning_rate': "
                                  "[0.1]}}\n",
        "sweep_wrong_type.py": "def get_sweep():\n    return {'config': "
                               "'configs/toy.py:runlocal', 'grid': {'train.num_steps': "
                               "['many']}}\n",
        "sweep_no_config.py": "def get_sweep():\n    return {'config': 'configs/missing.py', "
                              "'grid': {'sde.name': ['vp']}}\n",
        "sweep_dup.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                        "'runs': [{'sde.name': 'vp'}, {'sde.name': 'vp'}]}\n",
        "sweep_unused.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                           "'grid': {'sample.ddim.eta': [0.5]}}\n",
        "sweep_ok.py": "def get_sweep():\n    return {'config': 'configs/toy.py:runlocal', "
                       "'grid': {'sde.name': ['vp', 'subvp']}}\n",
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    import numpy as np

    np.save(tmp / "mask_shape.npy", np.ones((3, 3)))
    np.save(tmp / "mask_values.npy", np.full((8, 8), 0.5))
    os.makedirs(tmp / "adir.py")
    (tmp / "a_file").write_text("not a directory")
    other = tmp / "other_run"
    other.mkdir()
    record = {"seed": 1, "sde": {"name": "ve"}, "optim": {"lr": 0.5}}
    (other / "config.json").write_text(json.dumps(record))
    report = tmp / "report_root" / "sde.name=vp" / "eval"
    report.mkdir(parents=True)
    (report / "20.json").write_text(json.dumps({"sliced_wasserstein": 0.1}))
    return files


def _cases(tmp):
    """(program, argv, expected substring of the error line, extra env) for every case."""
    t = str(tmp)
    main = []

    def m(args, expect, base=DIGITS, workdir=None, env=None):
        workdir = ["--workdir", f"{t}/w{len(main)}"] if workdir is None else workdir
        main.append(("main", [*base, *workdir, *args], expect, env or {}))

    # Config files.
    m([], "no such file", base=["--config", f"{t}/missing.py"])
    m([], "not a Python config file", base=["--config", f"{t}/adir.py"])
    m([], "not a Python config file", base=["--config", f"{t}/notpy.txt"])
    m([], "syntax error at line 1", base=["--config", f"{t}/syntax.py"])
    m([], "defines no get_config", base=["--config", f"{t}/no_get_config.py"])
    m([], "config module is broken", base=["--config", f"{t}/raises.py"])
    m([], "not an ml_collections.ConfigDict", base=["--config", f"{t}/returns_dict.py"])
    m([], "unknown variant 'bogus'", base=["--config", "configs/digits.py:bogus"])
    m([], "unknown variant 'large'", base=["--config", "configs/toy.py:large"])
    m([], "unknown variant 'resnet'", base=["--config", "configs/cifar10.py:resnet"])
    m([], "unknown variant", base=["--config", "configs/default.py:x"])
    m([], "--config is empty", base=["--config="])
    # Flags.
    m(["--config.train.batchsize=3"], "did you mean 'train.batch_size'")
    m(["--config.optim.learning_rate=0.1"], "unknown config field 'optim.learning_rate'")
    m(["--config.nothing=1"], "unknown config field 'nothing'")
    m(["--config.sample.dpm_solver_pp.steps=5"], "unknown config field")
    m(["--config.train.num_steps=abc"], "--config.train.num_steps")
    m(["--config.optim.lr=fast"], "--config.optim.lr")
    m(["--config.train.eval_at_end=maybe"], "--config.train.eval_at_end")
    m(["--config.seed=1.5"], "--config.seed")
    m(["--nonsense=1"], "nonsense")
    m(["extra_argument"], "unexpected argument")
    m([], "--workdir is required", workdir=[])
    m([], "--workdir is required", workdir=["--workdir="])
    m(["--mode=serve"], "--mode='serve' is not valid; choose from")
    m([], "--workdir", workdir=["--workdir", f"{t}/a_file/sub"])
    m([], "belongs to a run with another config", workdir=["--workdir", f"{t}/other_run"])
    m(["--mode=eval"], "no checkpoint in", workdir=["--workdir", f"{t}/empty_eval"])
    m(["--mode=sample"], "no checkpoint in", workdir=["--workdir", f"{t}/empty_sample"])
    m(["--mode=eval", "--config.eval.checkpoints=999"], "no checkpoint",
      workdir=["--workdir", f"{t}/empty_eval2"])
    m(["--config.train.batch_size=6"], "train.batch_size=6 must be a positive multiple of "
      "the device count 4", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    m(["--config.eval.batch_size=9"], "eval.batch_size=9",
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    # Values of every section.
    for field, value, expect in [
        ("train.batch_size", 0, "train.batch_size=0"), ("train.batch_size", -8, "train.batch_size"),
        ("train.num_steps", 0, "train.num_steps=0"), ("train.num_steps", -5, "train.num_steps"),
        ("train.steps_per_dispatch", 0, "train.steps_per_dispatch"),
        ("train.log_every_steps", -1, "train.log_every_steps"),
        ("train.checkpoint_every_steps", -1, "train.checkpoint_every_steps"),
        ("train.sample_every_steps", -2, "train.sample_every_steps"),
        ("train.max_to_keep", 0, "train.max_to_keep=0"),
        ("optim.lr", -1.0, "optim.lr=-1.0"), ("optim.lr", 0.0, "optim.lr=0.0"),
        ("optim.lr", "inf", "optim.lr=inf"), ("optim.lr", "nan", "optim.lr=nan"),
        ("optim.beta1", 2.0, "optim.beta1=2.0"), ("optim.beta1", -0.1, "optim.beta1"),
        ("optim.beta2", 1.0, "optim.beta2=1.0"), ("optim.eps", 0.0, "optim.eps=0.0"),
        ("optim.weight_decay", -1.0, "optim.weight_decay"),
        ("optim.warmup_steps", -1, "optim.warmup_steps=-1"),
        ("optim.grad_clip", "nan", "optim.grad_clip=nan"),
        ("optim.grad_clip", "inf", "optim.grad_clip=inf"),
        ("optim.ema_rate", 1.5, "optim.ema_rate=1.5"), ("optim.ema_rate", "nan", "optim.ema_rate"),
        ("optim.ema_rate", 1.0, "optim.ema_rate=1.0"), ("optim.optimizer", "sgd", "optim.optimizer"),
        ("sde.name", "vpp", "sde.name='vpp' is not valid; choose from"),
        ("sde.vp.beta_max", "inf", "beta_max=inf"), ("sde.vp.beta_min", 30.0, "beta_min=30.0"),
        ("sde.vp.beta_min", -1.0, "beta_min=-1.0"), ("sde.vp.t_min", 0.0, "t_min=0.0"),
        ("sde.vp.t_min", 2.0, "t_min=2.0"), ("sde.vp.T", 0.0, "T=0.0"),
        ("sde.ve.sigma_max", 100.0, "sde.ve.sigma_max is set but sde.name='vp'"),
        ("model.name", "unet", "model.name='unet'"), ("model.size", "huge", "model.size='huge'"),
        ("model.parameterization", "v0", "model.parameterization='v0'"),
        ("model.dropout", 1.5, "model.dropout=1.5"), ("model.dropout", -0.5, "model.dropout"),
        ("model.num_classes", -3, "model.num_classes=-3"),
        ("train.compute_dtype", "float64", "train.compute_dtype='float64' is not valid; choose from"),
        ("model.conv_backward", "cudnn", "model.conv_backward='cudnn' is not valid"),
        ("loss.name", "l2", "loss.name='l2'"),
        ("loss.dsm.weighting", "l1", "weighting='l1'"), ("loss.dsm.reduce", "max", "reduce='max'"),
        ("loss.dsm.eps", 2.0, "loss.dsm.eps=2.0"), ("loss.dsm.eps", 0.0, "loss.dsm.eps=0.0"),
        ("loss.dsm.importance_sampling", True, "importance_sampling"),
        ("loss.ddpm.num_levels", 500, "loss.ddpm.num_levels is set but loss.name='dsm'"),
        ("data.dataset", "toy:nope", "data.dataset='toy:nope'"),
        ("data.dataset", "digitz", "digitz"),
        ("data.num_levels", 256, "data.num_levels=17"),
        ("data.num_levels", 1, "data.num_levels=1"),
        ("data.image_size", 0, "data.image_size=0"),
        ("data.image_size", 7, "cannot take input (7, 7, 1)"),
        ("data.num_channels", 0, "data.num_channels=0"),
        ("data.center_crop", -1, "data.center_crop=-1"),
        ("data.center_crop", 20, "center_crop=20"),
        ("data.train_split", "validation", "'validation'"),
        ("sample.sampler", "rk4", "sample.sampler='rk4'"),
        ("sample.num_samples", 0, "sample.num_samples=0"),
        ("sample.batch_size", 0, "sample.batch_size=0"),
        ("sample.reverse_diffusion.num_steps", 0, "num_steps must be a positive int, got 0"),
        ("sample.reverse_diffusion.num_steps", 10, "undefined on this grid of 10 steps"),
        ("sample.ddim.eta", 0.5, "sample.ddim.eta is set but sample.sampler='reverse_diffusion'"),
        ("eval.num_samples", 0, "eval.num_samples=0"), ("eval.batch_size", 0, "eval.batch_size=0"),
        ("eval.feature_extractor", "clip", "eval.feature_extractor='clip'"),
        ("eval.bpd_estimator", "exactish", "eval.bpd_estimator"),
        ("eval.bpd_num_passes", 0, "eval.bpd_num_passes=0"),
        ("eval.bpd_num_examples", -1, "eval.bpd_num_examples"),
        ("eval.bpd_rtol", 0.0, "eval.bpd_rtol=0.0"), ("eval.bpd_t_min", 2.0, "eval.bpd_t_min"),
        ("eval.checkpoints", "abc", "eval.checkpoints='abc'"),
        ("eval.reference_stats", "/nonexistent/stats.npz", "eval.reference_stats"),
        ("eval.feature_extractor", "inception", "eval.inception_weights"),
        ("eval.wait_seconds", -1, "eval.wait_seconds"),
        ("parallel.mode", "spmd", "parallel.mode='spmd'"),
        ("parallel.num_processes", -1, "parallel.num_processes"),
        ("parallel.process_id", -5, "parallel.process_id"),
        ("parallel.cpu_convolutions", "eigen", "parallel.cpu_convolutions='eigen' is not "
         "valid; choose from ['xla', 'ynnpack']"),
        ("parallel.cpu_scheduler", "fast", "parallel.cpu_scheduler='fast' is not valid; "
         "choose from ['concurrency', 'default', 'memory']"),
    ]:
        m([f"--config.{field}={value}"], expect)
    # Another sampler's section (digits' default sampler is reverse_diffusion).
    for field, value, expect in [
        ("num_steps", 0, "num_steps"), ("grid", "cubic", "grid 'cubic'"),
        ("order", 5, "order '5'"), ("t_min", 2.0, "t_min"), ("sigma_max", -1.0, "sigma_max")]:
        m(["--config.sample.sampler=dpm_solver++", f"--config.sample.dpm_solver_pp.{field}={value}"],
          expect)
    # Combinations: an option's value that is wrong only together with another.
    m(["--config.sde.name=ve", "--config.sde.ve.sigma_min=0"], "sigma_min=0")
    m(["--config.sde.name=ve", "--config.sde.ve.sigma_max=inf"], "sigma_max=inf")
    m(["--config.sde.name=subvp", "--config.sde.subvp.beta_max=nan"], "beta_max=nan")
    m(["--config.sde.name=vdm", "--config.sde.vdm.gamma_min=10.0"], "gamma_min")
    m(["--config.sde.name=vdm", "--config.sde.vdm.learned=True"], "loss.name='vdm_vlb'")
    m(["--config.sde.name=ve", "--config.loss.name=vdm_vlb"], "N(0, I)")
    m(["--config.loss.name=ddpm", "--config.loss.ddpm.num_levels=0"], "num_levels=0")
    m(["--config.loss.name=ddpm", "--config.loss.ddpm.reduce=none"], "reduce='none'")
    m(["--config.sample.sampler=unipc", "--config.sample.unipc.order=7"],
      "unipc: unknown order '7'; available: [1, 2, 3, 4]")
    m(["--config.sample.sampler=pc", "--config.sample.pc.snr=-1"], "snr")
    m(["--config.sample.sampler=pc", "--config.sample.pc.corrector=metropolis"], "corrector")
    m(["--config.sample.sampler=pc", "--config.sample.pc.predictor=rk4"], "predictor")
    m(["--config.sample.sampler=ode", "--config.sample.ode.rtol=0"], "rtol")
    m(["--config.sample.sampler=ode", "--config.sample.ode.solver=rk45"], "solver")
    m(["--config.sample.sampler=heun", "--config.sample.heun.churn=-1"], "churn")
    m(["--config.sample.sampler=ddim", "--config.sample.ddim.eta=-1"], "eta")
    m(["--config.sample.sampler=sra", "--config.sample.sra.solver=euler"], "solver")
    m(["--config.data.dataset=cifar10", "--config.data.data_dir=/nonexistent_tfds"],
      "tfds build cifar10 --file_format=array_record")
    m(["--config.data.toy_dim=0"], "data.toy_dim=0", base=TOY)
    m(["--config.data.dataset=toy:gmm", "--config.model.name=mlp", "--config.model.size=nope"],
      "model.size='nope'")
    m(["--config.model.name=ddpm", "--config.model.size=ddpmpp_cont"], "model.size")
    m(["--config.model.remat=True"], "model.remat=True is not valid: model.name='mlp' has no "
      "remat option", base=TOY)
    m([f"--config.parallel.compilation_cache={t}/a_file"], "parallel.compilation_cache")
    # Inverse-problem and anomaly-score modes (checked before the checkpoint is looked for).
    for mode, args, expect in [
        ("inpaint", [f"--config.inverse.mask_file={t}/mask_shape.npy"], "shape (3, 3) is not"),
        ("inpaint", [f"--config.inverse.mask_file={t}/mask_values.npy"],
         "values must be 0 or 1"),
        ("inpaint", [f"--config.inverse.mask_file={t}/missing.npy"], "no such file"),
        ("inpaint", ["--config.inverse.mask=ring"], "inverse.mask='ring'"),
        ("inpaint", ["--config.inverse.mask_fraction=1.0"], "inverse.mask_fraction=1.0"),
        ("inpaint", ["--config.inverse.method=dps"], "inverse.method='dps'"),
        ("inpaint", ["--config.sample.sampler=ode"], "needs a fixed-step sampler"),
        ("sdedit", ["--config.inverse.t0=0"], "inverse.t0=0"),
        ("sdedit", ["--config.inverse.t0=1.5"], "inverse.t0=1.5"),
        ("denoise", ["--config.inverse.noise_std=0"], "inverse.noise_std=0"),
        ("denoise", ["--config.inverse.noise_std=-0.1"], "inverse.noise_std=-0.1"),
        ("denoise", ["--config.sample.sampler=ancestral", "--config.inverse.noise_std=100"],
         "outside the SDE's noise levels"),
        ("denoise", ["--config.sample.sampler=dpm_solver++"], "needs a reverse-SDE sampler"),
        ("colorize", [], "needs colour images"),
        ("score", ["--config.inverse.score_methods=bpd,likelihood"], "'likelihood'"),
        ("score", ["--config.inverse.reconstruction_t0s=0.1,2"], "reconstruction_t0s"),
        ("score", ["--config.inverse.anomaly_classes=x"], "inverse.anomaly_classes='x'"),
        ("score", [], "no checkpoint in"),
    ]:
        m([f"--mode={mode}", *args], expect)
    m(["--config.data.exclude_classes=a"], "data.exclude_classes='a'")
    m(["--config.data.exclude_classes=1,1"], "lists a label twice")
    m(["--config.data.exclude_classes=0,1,2,3,4,5,6,7,8,9"], "drops every example")
    m(["--config.data.exclude_classes=1"], "toy:gmm has no classes", base=TOY)

    # Class-conditional sampling, guidance and the noise-conditional classifier.
    cond = ["--config", "configs/digits_conditional.py:runlocal"]
    m(["--config.sample.label=10"], "sample.label=10 is not valid: must be in [0, 10)", base=cond)
    m(["--config.sample.label=-2"], "sample.label=-2", base=cond)
    m(["--config.sample.label=3"], "sample.label=3 is not valid: the model is unconditional")
    m(["--config.sample.guidance=classifier_free"],
      "classifier-free guidance needs a class-conditional model")
    m(["--config.sample.guidance=cfg"], "sample.guidance='cfg' is not valid; choose from")
    m(["--config.sample.guidance_scale=-1"], "sample.guidance_scale=-1", base=cond)
    m(["--config.sample.guidance_scale=nan"], "sample.guidance_scale=nan", base=cond)
    m(["--config.train.label_dropout=0"], "trained only with train.label_dropout > 0", base=cond)
    m(["--config.train.label_dropout=0.1"], "label dropout needs a class-conditional model")
    m(["--config.train.label_dropout=1.0"], "train.label_dropout=1.0", base=cond)
    m(["--config.model.name=classifier"], "model.name='classifier' is the noise-conditional")
    m(["--config.model.name=ncsnv2", "--config.model.size=tiny"], "num_classes", base=cond)
    m(["--mode=train_classifier"], "set classifier.num_classes")
    m(["--config.sample.guidance=classifier"], "the model is unconditional: set "
      "classifier.num_classes")
    m(["--mode=sample", "--config.sample.guidance=classifier"],
      "needs a trained classifier: no checkpoint in", base=cond,
      workdir=["--workdir", f"{t}/no_classifier"])
    m(["--mode=eval", "--config.sample.guidance=classifier",
       "--config.classifier.num_classes=10"], "needs a trained classifier",
      workdir=["--workdir", f"{t}/no_classifier2"])
    m(["--config.sample.guidance=classifier"], "needs a trained classifier", base=cond)
    m(["--mode=sample", "--config.sample.guidance=classifier",
       f"--config.classifier.workdir={t}/missing_classifier"],
      f"classifier.workdir='{t}/missing_classifier': no such directory", base=cond)
    m(["--mode=train_classifier", "--config.classifier.batch_size=6",
       "--config.sample.batch_size=8"],
      "classifier.batch_size=6 must be a positive multiple of the device count 4", base=cond,
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    m(["--mode=train_classifier", "--config.classifier.size=cifar10",
       "--config.data.image_size=6"], "cannot take input (6, 6, 1)", base=cond)
    m(["--mode=train_classifier", "--config.data.train_split=validation"], "'validation'",
      base=cond)
    for field, value, expect in [
        ("classifier.size", "huge", "classifier.size='huge'"),
        ("classifier.num_classes", 5, "must be 0 or model.num_classes=10"),
        ("classifier.num_classes", 1, "classifier.num_classes=1"),
        ("classifier.num_steps", 0, "classifier.num_steps=0"),
        ("classifier.batch_size", 0, "classifier.batch_size=0"),
        ("classifier.lr", -1.0, "classifier.lr=-1.0"), ("classifier.lr", "nan", "classifier.lr"),
        ("classifier.ema_rate", 1.0, "classifier.ema_rate=1.0"),
        ("classifier.eps", 0.0, "classifier.eps=0.0"),
        ("classifier.sigma_data", 0.0, "classifier.sigma_data=0.0"),
        ("classifier.eval_times", "abc", "classifier.eval_times='abc'"),
        ("classifier.eval_times", "0.5,2.0", "every time must be in (0, T=1.0]"),
        ("classifier.eval_repeats", 0, "classifier.eval_repeats=0"),
        ("classifier.weight_decay", -1.0, "classifier.weight_decay"),
    ]:
        m([f"--config.{field}={value}"], expect, base=cond)

    sweep = []

    def s(args, expect):
        sweep.append(("sweep", args, expect, {}))

    s(["run", f"{t}/missing_sweep.py"], "does not exist")
    s(["run", f"{t}/notpy.txt"], "not a Python file")
    s(["run", f"{t}/sweep_syntax.py"], "syntax error at line 1")
    s(["run", f"{t}/sweep_none.py"], "must define get_sweep()")
    s(["run", f"{t}/sweep_raises.py"], "get_sweep() failed")
    s(["run", f"{t}/sweep_list.py"], "must return a dict")
    s(["run", f"{t}/sweep_keys.py"], "unknown sweep keys ['sizes']")
    s(["run", f"{t}/sweep_grid.py"], "must be a non-empty list")
    s(["run", f"{t}/sweep_both.py"], "exactly one of 'grid'")
    s(["run", f"{t}/sweep_badkey.py"], "'1sde' is not a dotted config path")
    s(["run", f"{t}/sweep_badvalue.py"], "for 'sde.name' must be a str")
    s(["run", f"{t}/sweep_unknown_field.py"], "unknown config field 'optim.learning_rate'")
    s(["run", f"{t}/sweep_wrong_type.py"], "train.num_steps='many'")
    s(["run", f"{t}/sweep_no_config.py"], "no such file")
    s(["run", f"{t}/sweep_dup.py"], "same workdir name")
    s(["run", f"{t}/sweep_unused.py"], "sample.ddim.eta is set but")
    s(["run", f"{t}/sweep_ok.py", "--launcher=lsf", "--root", f"{t}/r"], "unknown launcher 'lsf'")
    s(["run", f"{t}/sweep_ok.py", "--parallel=two"], "--parallel")
    s(["report", f"{t}/sweep_ok.py", "--root", f"{t}/report_root", "--metric=fid"],
      "metric 'fid' is in no eval file; available:")
    s(["report", f"{t}/sweep_ok.py", "--format=xml"], "--format")
    s(["report"], "sweep_file")
    s(["deploy", f"{t}/sweep_ok.py"], "invalid choice")
    s([], "required")
    return main + sweep


def _run_cases(cases, tmp):
    path_in, path_out = tmp / "cases.json", tmp / "results.json"
    path_in.write_text(json.dumps([{"program": p, "argv": a, "env": e}
                                   for p, a, _, e in cases]))
    env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp / "no_tfds"))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cli_worker.py"),
                          str(path_in), str(path_out)], env=env, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(path_out.read_text())


def test_bad_command_lines_fail_in_one_line_before_compiling(tmp_path):
    _file_cases(tmp_path)
    cases = _cases(tmp_path)
    assert len(cases) >= 130
    results = _run_cases(cases, tmp_path)
    failures = []
    for (program, argv, expect, _), r in zip(cases, results):
        lines = [ln for ln in r["stderr"].splitlines() if ln.strip() and not LOG_LINE.match(ln)]
        compiled = re.findall(r"Finished XLA compilation of (\S+)", r["stderr"])
        problems = []
        if r["code"] == 0:
            problems.append("exit code 0")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"stderr lines {lines[-3:]}")
        elif expect not in lines[0]:
            problems.append(f"{expect!r} not in {lines[0]!r}")
        if "Traceback" in r["stderr"]:
            problems.append("traceback")
        if len(compiled) > MAX_EAGER_COMPILES:
            problems.append(f"compiled {len(compiled)} functions: {compiled[:5]}...")
        if problems:
            failures.append(f"{program} {' '.join(argv)}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)
    # Nothing was created where the command lines pointed.
    assert not [p.name for p in tmp_path.glob("w*")]
    assert not (tmp_path / "other_run" / "checkpoints").exists()
    assert json.loads((tmp_path / "other_run" / "config.json").read_text())["optim"]["lr"] == 0.5
