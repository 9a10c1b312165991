"""End-to-end runner tests: main.py train/eval/sample, resume, preemption, bad input."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _main(args, timeout=600, **env):
    return subprocess.run([sys.executable, MAIN, *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(**env), cwd=ROOT)


def _load_config(spec):
    sys.path.insert(0, ROOT)
    import importlib.util

    path, _, variant = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("_cfg", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(variant or None)


def _restore(config_spec, workdir, step):
    from sde_lab import experiment, state

    exp = experiment.build(_load_config(config_spec))
    return state.restore_params(exp, str(workdir), step, ema=False)[0]


def _wait_for(path_fn, proc, timeout=300):
    t0 = time.time()
    while not path_fn():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.2)


def _checkpoints(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_cifar10_shaped_runlocal_trains_saves_restores_evaluates_samples(tmp_path):
    """A :runlocal CIFAR-10 config under tfds.testing.mock_data: train, resume, eval, sample."""
    import tensorflow_datasets as tfds

    from sde_lab import run

    workdir = str(tmp_path / "c10")
    config = _load_config("configs/cifar10_ddpmpp_vp.py:runlocal")
    config.train.num_steps = 6
    config.train.checkpoint_every_steps = 3
    config.train.log_every_steps = 3
    config.train.eval_at_end = False
    config.eval.num_samples = 8
    config.eval.bpd_num_examples = 4
    with tfds.testing.mock_data(num_examples=16):
        assert run.main(config, workdir, "train") == 0
        assert _checkpoints(workdir) == [3, 6]
        config.train.num_steps = 8  # resume and continue
        assert run.main(config, workdir, "train") == 0
        assert run.main(config, workdir, "eval") == 0
        assert run.main(config, workdir, "sample") == 0
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in logged] == [3, 6, 8]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in logged)
    result = json.load(open(os.path.join(workdir, "eval", "8.json")))
    assert result["step"] == 8 and result["num_samples"] == 8
    assert np.isfinite(result["bpd"]) and result["bpd"] > 0
    samples = np.load(os.path.join(workdir, "samples", "samples_8.npz"))["x"]
    assert samples.shape == (16, 32, 32, 3) and np.all(np.isfinite(samples))
    assert os.path.exists(os.path.join(workdir, "samples", "samples_8.png"))
    assert json.load(open(os.path.join(workdir, "config.json")))["data"]["dataset"] == "cifar10"


@pytest.mark.slow
@pytest.mark.parametrize("spec, sde", [("configs/digits_edm.py:runlocal", "edm"),
                                       ("configs/digits_flow.py:runlocal", "flow")])
def test_family_digits_runlocal_trains_and_evaluates_through_main(tmp_path, spec, sde):
    """The EDM and flow-matching digits configs: train, then the end-of-run eval (digits
    FID, PF-ODE bits/dim, sample grid) through main.py."""
    workdir = tmp_path / sde
    # Four compilations (train step, sampler, digits features, likelihood): 24 minutes
    # measured for digits_edm on the shared 2-core machine at load 30-50.
    out = _main(["--config", spec, "--workdir", str(workdir)], timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.load(open(workdir / "config.json"))["sde"]["name"] == sde
    result = json.load(open(workdir / "eval" / "20.json"))
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert np.isfinite(result["bpd"]) and 0 < result["bpd"] < 20
    assert os.path.exists(workdir / "samples" / "eval_20.png")


TOY = "configs/toy.py:runlocal"
TOY_ARGS = ["--config", TOY, "--config.train.num_steps=60", "--config.train.log_every_steps=10",
            "--config.train.checkpoint_every_steps=10", "--config.train.eval_at_end=False"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    out = _main([*TOY_ARGS, "--workdir", str(workdir)])
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(workdir / "DONE")
    return workdir


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run_exactly(tmp_path, uninterrupted):
    workdir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, MAIN, *TOY_ARGS, "--workdir", str(workdir)],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: len(_checkpoints(workdir)) >= 1, proc)
    time.sleep(random.uniform(0.0, 1.0))  # a random point after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoints(workdir)[-1]
    out = _main([*TOY_ARGS, "--workdir", str(workdir)])
    assert out.returncode == 0, out.stderr[-3000:]
    if killed_at < 60:
        assert f"restored checkpoint at step {killed_at}" in out.stdout
    a = _restore(TOY, workdir, 60)
    b = _restore(TOY, uninterrupted, 60)
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Every step is logged once, with the uninterrupted run's values, in both logs.
    assert _logged(workdir) == _logged(uninterrupted)
    assert [s for s, _ in _tb_scalars(workdir, "train/loss")] == list(range(10, 61, 10))
    np.testing.assert_allclose([v for _, v in _tb_scalars(workdir, "train/loss")],
                               [r["loss"] for r in _logged(uninterrupted)], rtol=1e-6)


def _logged(workdir):
    return [json.loads(line) | {"examples_per_sec": None}
            for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _tb_scalars(workdir, tag):
    """(step, value) of a TensorBoard scalar as TensorBoard shows it (its reader applies
    purge_step, which a resumed run uses to drop what a killed run logged past its last
    checkpoint)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _signal_a_long_run(workdir, sig):
    """Starts a toy run far too long to finish (no checkpoint cadence within it), sends
    `sig` once it has logged, and returns (process, stdout, stderr) after it exits."""
    args = [a.replace("num_steps=60", "num_steps=100000") for a in TOY_ARGS]
    args = [a.replace("checkpoint_every_steps=10", "checkpoint_every_steps=50000") for a in args]
    proc = subprocess.Popen([sys.executable, MAIN, *args, "--workdir", str(workdir)],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: os.path.exists(workdir / "metrics.jsonl") and
              os.path.getsize(workdir / "metrics.jsonl") > 0, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc, stdout, stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    workdir = tmp_path / "term"
    proc, stdout, stderr = _signal_a_long_run(workdir, signal.SIGTERM)
    assert proc.returncode == 0, stderr[-3000:]
    steps = _checkpoints(workdir)
    assert len(steps) == 1 and 10 <= steps[0] < 100000
    assert f"SIGTERM: saved checkpoint at step {steps[0]}" in stdout


@pytest.mark.parametrize("when", ["log", "final_save"])
def test_a_signal_during_a_log_or_save_is_never_announced_without_a_checkpoint(
        tmp_path, monkeypatch, capsys, when):
    """Deterministic version of the race CI hit: SIGTERM arriving while the loop logs (after
    it decided whether to save this step) must still end with the announced checkpoint on
    disk; arriving during the last step's save, training is complete and says so."""
    from sde_lab import experiment, train

    config = _load_config(TOY)
    with config.unlocked():
        config.train.num_steps, config.train.log_every_steps = 30, 10
        config.train.checkpoint_every_steps, config.train.eval_at_end = 0, False
    exp = experiment.build(config)
    if when == "log":
        log = train.Logger.log

        def log_then_signal(self, step, *args):
            log(self, step, *args)
            if step == 10:
                os.kill(os.getpid(), signal.SIGTERM)
        monkeypatch.setattr(train.Logger, "log", log_then_signal)
    else:
        save = train.checkpointing.Checkpointer.save

        def save_then_signal(self, step, state):
            save(self, step, state)
            os.kill(os.getpid(), signal.SIGTERM)
        monkeypatch.setattr(train.checkpointing.Checkpointer, "save", save_then_signal)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = train.run(exp, str(tmp_path))
    finally:  # train.run leaves sde_lab's exit-at-once handlers installed
        for s, handler in handlers.items():
            signal.signal(s, handler)
    out = capsys.readouterr().out
    assert code == 0
    if when == "log":  # handled after the next step, with its checkpoint
        assert _checkpoints(tmp_path) == [11]
        assert "SIGTERM: saved checkpoint at step 11; exiting" in out
    else:
        assert _checkpoints(tmp_path) == [30]
        assert "SIGTERM: training finished at step 30" in out
        assert not os.path.exists(tmp_path / "DONE")  # the rerun writes it and evaluates


@pytest.mark.slow
def test_non_finite_loss_stops_without_overwriting_the_good_checkpoint(tmp_path, uninterrupted):
    import shutil

    workdir = tmp_path / "nan"
    shutil.copytree(uninterrupted, workdir)
    out = _main([*TOY_ARGS, "--workdir", str(workdir), "--config.train.num_steps=90",
                 "--config.optim.lr=1e30", "--allow_config_change"])
    assert out.returncode == 1
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    match = re.search(r"non-finite \w+ at step (\d+)", line[0] if line else "")
    assert match, out.stderr[-2000:]
    # Resumed at 60: the first huge update is step 61's, so a loss goes non-finite before
    # the first checkpoint boundary (70) and nothing after step 60 is saved.
    assert 61 <= int(match.group(1)) <= 70
    assert _checkpoints(workdir)[-1] == 60


@pytest.mark.parametrize("args, message", [
    (["--config.sde.name=vpp"], "sde.name='vpp' is not valid; choose from ['cosine_vp', 'edm',"),
    (["--config.model.name=unet"], "model.name='unet' is not valid; choose from"),
    (["--config.sample.sampler=rk4"], "sample.sampler='rk4' is not valid; choose from"),
    (["--config.sample.sampler=unipc", "--config.sample.unipc.order=7"],
     "unipc: unknown order '7'; available: [1, 2, 3, 4]"),
    (["--config.data.image_size=7"], "cannot take input (7, 7, 1)"),
    (["--config.data.dataset=cifar10", "--config.data.data_dir=/nonexistent_tfds"],
     "tfds build cifar10 --file_format=array_record"),
    (["--config.train.batchsize=3"], "unknown config field 'train.batchsize'; did you mean 'train.batch_size'"),
    (["--config.sde.vp.beta_min=30"], "vp: need 0 <= beta_min < beta_max"),
])
def test_bad_input_is_one_line_before_compilation(tmp_path, args, message):
    out = _main(["--config", "configs/digits.py:runlocal", "--workdir", str(tmp_path / "w"),
                 *args], timeout=120)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_batch_not_divisible_by_devices(tmp_path):
    out = _main(["--config", "configs/digits.py:runlocal", "--workdir", str(tmp_path),
                 "--config.train.batch_size=6"], timeout=120,
                XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "train.batch_size=6" in out.stderr and "4" in out.stderr


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _main(["--config", "configs/digits.py:runlocal", "--workdir", str(blocker / "sub")],
                timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "--workdir" in out.stderr and "not writable" in out.stderr


def test_dry_run_prints_config_and_parameter_count(tmp_path):
    out = _main(["--config", "configs/cifar10_ddpmpp_vp.py", "--dry_run"], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "parameters: 61," in out.stdout  # DDPM++ cont.: 61.8M (score_sde)
    assert "ddpmpp_cont" in out.stdout


def test_ema_decay_warms_up_then_holds_the_configured_rate():
    from sde_lab.train import ema_decay

    np.testing.assert_allclose(ema_decay(0, 0.999), 0.1)
    np.testing.assert_allclose(ema_decay(90, 0.999), 91 / 100)
    np.testing.assert_allclose(ema_decay(10**6, 0.999), 0.999)
    # Weight left on the initial parameters after n steps: prod of decays -> 0 quickly.
    left = np.prod([float(ema_decay(s, 0.999)) for s in range(1500)])
    assert left < 1e-3 < 0.999**1500


CONFIG_FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                      if f.endswith(".py") and f not in ("__init__.py", "default.py",
                                                         "runlocal.py", "cifar10.py"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_and_its_runlocal_variant_build(name):
    """Each experiment file builds its SDE, network and sampler (no data, no compile)."""
    from sde_lab import experiment

    for variant in ("", ":runlocal"):
        config = _load_config(f"configs/{name}{variant}")
        experiment.check_shapes(experiment.build(config))
        if variant:
            assert config.train.num_steps <= 100 and config.model.size == "tiny"


# ---------------------------------------------------------------- faults and workdir rules

def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*.lock"))
    return dst


def _error_line(out):
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert lines and "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[-1]


def test_a_second_trainer_on_a_workdir_fails_at_once(tmp_path):
    from sde_lab import workdir

    wd = tmp_path / "busy"
    wd.mkdir()
    with workdir.lock(str(wd), "train"):
        t0 = time.time()
        out = _main(["--config", TOY, "--workdir", str(wd)], timeout=300)
    assert out.returncode == 1
    assert "is in use: a train run (pid" in _error_line(out)
    assert not os.path.exists(wd / "checkpoints") and time.time() - t0 < 300


@pytest.mark.slow
def test_resuming_with_a_different_config_needs_the_flag(tmp_path, uninterrupted):
    wd = _copy_run(uninterrupted, tmp_path / "run")
    out = _main([*TOY_ARGS, "--workdir", str(wd), "--config.optim.lr=0.5",
                 "--config.sde.name=subvp"])
    assert out.returncode == 1
    line = _error_line(out)
    assert "belongs to a run with another config (2 field(s) differ" in line
    assert "optim.lr: 0.001 -> 0.5" in line and "sde.name: 'vp' -> 'subvp'" in line
    # Longer training and another eval are not changes of the run.
    out = _main([*TOY_ARGS, "--workdir", str(wd), "--config.train.num_steps=70",
                 "--config.eval.num_samples=8"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "restored checkpoint at step 60" in out.stdout
    out = _main([*TOY_ARGS, "--workdir", str(wd), "--config.train.num_steps=80",
                 "--config.optim.lr=0.0005", "--allow_config_change"])
    assert out.returncode == 0, out.stderr[-3000:]
    changes = [json.loads(x) for x in open(wd / "config_changes.jsonl")]
    assert changes[-1]["changes"] == ["optim.lr: 0.001 -> 0.0005"]
    assert json.load(open(wd / "config.json"))["optim"]["lr"] == 0.0005


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    wd = _copy_run(uninterrupted, tmp_path / "damaged")
    assert _checkpoints(wd) == [40, 50, 60]
    for root, _, files in os.walk(wd / "checkpoints" / "60"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 3))
    out = _main(["--config", TOY, "--workdir", str(wd), "--mode", "sample",
                 *TOY_ARGS[2:]])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warning: checkpoint 60" in out.stderr and "samples of step 50" in out.stdout
    assert os.path.isdir(wd / "checkpoints" / "60")        # sample mode leaves it alone
    out = _main([*TOY_ARGS, "--workdir", str(wd)])          # training sets it aside, redoes it
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warning: checkpoint 60" in out.stderr
    assert "restored checkpoint at step 50" in out.stdout
    assert os.path.isdir(wd / "checkpoints" / "damaged_60") and 60 in _checkpoints(wd)
    a, b = _restore(TOY, wd, 60), _restore(TOY, uninterrupted, 60)
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_eval_results_and_sample_caches_are_keyed_by_their_spec(tmp_path, uninterrupted):
    """Another sampler or eval batch size never reuses saved sample batches; the result it
    replaces in eval/<step>.json moves to eval/history.jsonl; the same spec is skipped."""
    wd = _copy_run(uninterrupted, tmp_path / "ev")
    base = [*TOY_ARGS, "--workdir", str(wd), "--mode", "eval", "--config.eval.checkpoints=60",
            "--config.eval.num_samples=16", "--config.eval.batch_size=8"]
    runs = [[], ["--config.sample.sampler=ddim", "--config.sample.ddim.num_steps=5"],
            ["--config.eval.batch_size=16"], ["--config.eval.batch_size=16"]]
    results = []
    for extra in runs:
        out = _main([*base, *extra])
        assert out.returncode == 0, out.stderr[-3000:]
        assert "sampling (" in out.stdout or "already in" in out.stdout   # progress lines
        results.append(json.load(open(wd / "eval" / "60.json")))
    assert [r["sampler"] for r in results] == ["dpm_solver++", "ddim", "dpm_solver++",
                                                "dpm_solver++"]
    assert all(r["num_samples"] == 16 for r in results)
    assert results[3] == results[2]                          # same spec: skipped
    caches = sorted(p.name for p in (wd / "eval" / "60").iterdir())
    assert len(caches) == 3 and all(c.startswith("samples-") for c in caches)
    for cache in caches:
        spec = json.load(open(wd / "eval" / "60" / cache / "spec.json"))
        n = len([p for p in (wd / "eval" / "60" / cache).glob("samples_*.npz")])
        assert n == 16 // spec["batch_size"]
    history = [json.loads(x) for x in open(wd / "eval" / "history.jsonl")]
    assert [h["sampler"] for h in history] == ["dpm_solver++", "ddim"]
    steps = [s for s, _ in _tb_scalars(wd, "eval/sliced_wasserstein")]
    assert steps and set(steps) == {60}


@pytest.mark.slow
def test_huge_learning_rate_stops_on_the_first_nonfinite_gradient(tmp_path):
    """lr = 1e10 keeps the loss finite for a while (1e23 once) but not the gradients: the
    run must stop naming the step and keep no checkpoint after it."""
    wd = tmp_path / "lr"
    out = _main([*TOY_ARGS, "--workdir", str(wd), "--config.optim.lr=1e10",
                 "--config.optim.grad_clip=0"])
    assert out.returncode == 1
    match = re.search(r"non-finite (\w+) at step (\d+)", _error_line(out))
    assert match, out.stderr[-2000:]
    bad_step = int(match.group(2))
    assert all(s < bad_step for s in _checkpoints(wd)) and not os.path.exists(wd / "DONE")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    workdir = tmp_path / "int"
    proc, stdout, stderr = _signal_a_long_run(workdir, signal.SIGINT)
    assert proc.returncode == 130, stderr[-3000:]
    steps = _checkpoints(workdir)
    assert len(steps) == 1 and f"SIGINT: saved checkpoint at step {steps[0]}" in stdout
    assert "Traceback" not in stderr and not os.path.exists(workdir / "DONE")


def test_sigterm_during_start_up_exits_143_with_a_message(tmp_path):
    proc = subprocess.Popen([sys.executable, MAIN, "--config", TOY, "--workdir",
                             str(tmp_path / "s")], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM")


@pytest.mark.slow
def test_eval_of_another_workdirs_checkpoints(tmp_path, uninterrupted):
    """eval.source_workdir: the trained run's checkpoints, this workdir's results; the
    source is left untouched, and a source with another config is refused."""
    src = _copy_run(uninterrupted, tmp_path / "src")
    before = sorted(p.name for p in src.iterdir())
    out = _main([*TOY_ARGS, "--workdir", str(tmp_path / "e1"), "--mode", "eval",
                 f"--config.eval.source_workdir={src}", "--config.eval.checkpoints=60",
                 "--config.eval.num_samples=16", "--config.eval.batch_size=8"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.load(open(tmp_path / "e1" / "eval" / "60.json"))["num_samples"] == 16
    assert sorted(p.name for p in src.iterdir()) == before
    out = _main([*TOY_ARGS, "--workdir", str(tmp_path / "e2"), "--mode", "eval",
                 f"--config.eval.source_workdir={src}", "--config.optim.lr=0.5"])
    assert out.returncode == 1 and "belongs to a run with another config" in _error_line(out)
