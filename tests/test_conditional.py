"""Class-conditional runs: label dropout in the training loss, sample labels, guided score
functions of an experiment, per-class grids; end to end through main.py (train,
train_classifier, sample and eval with guidance) at :runlocal size."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sde_lab import experiment, sample  # noqa: E402
from sde_lab.losses import example_keys  # noqa: E402


def _toy_conditional(**overrides):
    """The toy config with a class-conditional tiny MLP (3 classes): cheap to compile."""
    from configs import toy

    config = toy.get_config("runlocal")
    config.model.num_classes = 3
    config.train.label_dropout = 0.3
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return experiment.build(config)


def _batch(n, num_classes, key=0):
    x = jax.random.normal(jax.random.PRNGKey(key), (n, 2))
    return {"x": x, "label": jnp.arange(n, dtype=jnp.int32) % num_classes}


def test_label_dropout_replaces_labels_drawn_from_each_examples_key():
    """The loss with dropout p equals the loss without dropout on labels where example i's
    label is num_classes ("no label") iff bernoulli(fold_in(key_i, 2), p): the draw is
    per example (so sharded batches drop the same labels), and p = 0.3 drops about 30%."""
    exp = _toy_conditional()
    plain = _toy_conditional(**{"train.label_dropout": 0.0})
    params = exp.init_params(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda v: v + 0.1 * jnp.ones_like(v), params)  # label rows matter
    n = 4096
    batch, keys = _batch(n, 3), example_keys(jax.random.PRNGKey(1), n)
    drop = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 2), 0.3))(keys)
    dropped = dict(batch, label=jnp.where(drop, 3, batch["label"]))
    got = jax.jit(exp.loss_fn())(params, batch, keys)
    want = jax.jit(plain.loss_fn())(params, dropped, keys)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    kept = jax.jit(plain.loss_fn())(params, batch, keys)
    assert abs(float(kept) - float(got)) > 1e-6
    se = np.sqrt(0.3 * 0.7 / n)
    assert abs(float(jnp.mean(drop)) - 0.3) < 4 * se


@pytest.mark.parametrize("loss", ["dsm", "ddpm", "smld", "edm", "flow_matching"])
def test_every_loss_trains_with_label_dropout(loss):
    """Label dropout sits in Experiment.loss_fn, outside the loss: every loss takes it."""
    exp = _toy_conditional(**{"loss.name": loss})
    params = exp.init_params(jax.random.PRNGKey(0))
    value = jax.eval_shape(exp.loss_fn(), params, _batch(8, 3),
                           example_keys(jax.random.PRNGKey(1), 8))
    assert value.shape == ()


@pytest.mark.parametrize("name, size, param", [("ncsnpp", "tiny", "eps"), ("ddpm", "tiny", "eps"),
                                               ("vdm", "tiny", "eps_gamma")])
def test_every_conditional_image_network_trains_with_label_dropout(name, size, param):
    from configs import digits

    config = digits.get_config("runlocal")
    config.model.update(name=name, size=size, parameterization=param, num_classes=10)
    config.train.label_dropout = 0.1
    exp = experiment.build(config)
    batch = {"x": jnp.zeros((2, 8, 8, 1)), "label": jnp.array([1, 2], jnp.int32)}
    value = jax.eval_shape(exp.loss_fn(), exp.init_params(jax.random.PRNGKey(0)), batch,
                           example_keys(jax.random.PRNGKey(1), 2))
    assert value.shape == ()


def test_sample_labels_cycle_through_the_classes_whatever_the_batch():
    spec = experiment.GuidanceSpec(-1, "none", 1.0, 4)
    whole = spec.labels(0, 12)
    np.testing.assert_array_equal(whole, np.arange(12) % 4)
    np.testing.assert_array_equal(np.concatenate([spec.labels(0, 5), spec.labels(5, 7)]), whole)
    np.testing.assert_array_equal(experiment.GuidanceSpec(2, "none", 1.0, 4).labels(3, 3), [2] * 3)
    assert experiment.GuidanceSpec(-1, "none", 1.0, 0).labels(0, 3) is None


def test_guided_score_functions_of_an_experiment():
    """classifier_free at scale 0 is the 'no label' score and at 1 the conditional one;
    classifier guidance with the untrained classifier (zero head: log p uniform, gradient
    0) is the unconditional score at any scale."""
    exp0 = _toy_conditional(**{"sample.guidance": "classifier_free", "sample.guidance_scale": 0.0})
    exp1 = _toy_conditional(**{"sample.guidance": "classifier_free", "sample.guidance_scale": 1.0})
    expc = _toy_conditional(**{"sample.guidance": "classifier", "sample.guidance_scale": 3.0,
                               "classifier.size": "tiny"})
    params = jax.tree.map(lambda v: v + 0.1, exp0.init_params(jax.random.PRNGKey(0)))
    x, t = jax.random.normal(jax.random.PRNGKey(2), (6, 2)), jnp.full(6, 0.3)
    y = jnp.arange(6, dtype=jnp.int32) % 3
    cond, uncond = exp0.score_fn(params, y)(x, t), exp0.score_fn(params)(x, t)
    assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-4
    np.testing.assert_allclose(exp0.guided_score_fn(params, y)(x, t), uncond, rtol=1e-6)
    np.testing.assert_allclose(exp1.guided_score_fn(params, y)(x, t), cond, rtol=1e-5,
                               atol=1e-6)
    cparams = expc.classifier.init_params(jax.random.PRNGKey(3), expc.shape)
    np.testing.assert_allclose(expc.guided_score_fn(params, y, cparams)(x, t), uncond,
                               rtol=1e-6)
    np.testing.assert_allclose(expc.guided_score_fn(params, y, cparams, method="none")(x, t),
                               cond, rtol=1e-6)


def test_class_grid_has_one_row_per_class():
    """Row k holds the samples of class k in order (white where a class has fewer)."""
    labels = np.array([0, 1, 2, 0, 1, 0, 2, 0])
    images = np.stack([np.full((2, 2, 1), 10 * k + i, np.uint8) for i, k in enumerate(labels)])
    cells, columns = sample._class_rows(images, labels, 4)
    assert columns == 4 and cells.shape == (16, 2, 2, 1)
    grid = cells[:, 0, 0, 0].reshape(4, 4)
    np.testing.assert_array_equal(grid[0], [0, 3, 5, 7])
    np.testing.assert_array_equal(grid[1], [11, 14, 255, 255])
    np.testing.assert_array_equal(grid[2], [22, 26, 255, 255])
    np.testing.assert_array_equal(grid[3], [255] * 4)


# ---------------------------------------------------------------- end to end (main.py)

COND = ["--config", "configs/digits_conditional.py:runlocal", "--config.train.num_steps=6",
        "--config.train.checkpoint_every_steps=6", "--config.eval.enable_bpd=False",
        "--config.sample.num_samples=10", "--config.eval.num_samples=32"]


def _main(args, timeout=1200):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args],
                         capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A trained :runlocal conditional model (eval at the end: classifier-free, scale 2)
    and its classifier."""
    workdir = str(tmp_path_factory.mktemp("cond"))
    _main([*COND, "--workdir", workdir])
    _main([*COND, "--workdir", workdir, "--mode", "train_classifier"])
    return workdir


@pytest.mark.slow
def test_train_evaluates_class_metrics(conditional_run):
    result = json.load(open(os.path.join(conditional_run, "eval", "6.json")))
    assert 0 <= result["class_accuracy"] <= 1 and len(result["class_accuracy_per_class"]) == 10
    assert set(result["fid_per_class"]) == {str(k) for k in range(10)}
    assert np.isfinite(result["fid_per_class_mean"]) and np.isfinite(result["fid"])
    spec = result["spec"]
    assert (spec["label"], spec["guidance"], spec["guidance_scale"]) == (-1, "classifier_free", 2.0)
    assert spec["class_metrics"] == ["class_accuracy", "fid_per_class"]


@pytest.mark.slow
def test_train_classifier_writes_its_table_and_resumes(conditional_run):
    directory = os.path.join(conditional_run, "classifier")
    table = json.load(open(os.path.join(directory, "accuracy.json")))
    assert [r["t"] for r in table["rows"]] == [0.1, 0.5, 1.0]
    assert table["step"] == 10 and table["num_examples"] == 297
    assert all(0 <= r["accuracy"] <= 1 for r in table["rows"])
    log_snr = [r["log_snr"] for r in table["rows"]]
    assert log_snr == sorted(log_snr, reverse=True)
    assert sorted(os.listdir(os.path.join(directory, "checkpoints"))) == ["10", "5"]
    assert json.load(open(os.path.join(directory, "config.json")))["classifier"]["num_classes"] == 10
    out = _main([*COND, "--workdir", conditional_run, "--mode", "train_classifier",
                 "--config.classifier.num_steps=12"])
    assert "restored classifier checkpoint at step 10" in out and "step 12/12" in out
    assert "accuracy" in out and json.load(open(os.path.join(directory, "accuracy.json")))[
        "step"] == 12


@pytest.mark.slow
@pytest.mark.parametrize("method, label", [("classifier", -1), ("classifier_free", 7)])
def test_sample_with_guidance(conditional_run, method, label):
    out = _main([*COND, "--workdir", conditional_run, "--mode", "sample",
                 f"--config.sample.guidance={method}", "--config.sample.guidance_scale=3",
                 f"--config.sample.label={label}"])
    assert f"guidance {method}, guidance_scale 3.0" in out
    with np.load(os.path.join(conditional_run, "samples", "samples_6.npz")) as f:
        x, y = f["x"], f["y"]
    assert x.shape == (10, 8, 8, 1) and np.all(np.isfinite(x))
    np.testing.assert_array_equal(y, np.arange(10) % 10 if label < 0 else [label] * 10)
    from PIL import Image

    png = Image.open(os.path.join(conditional_run, "samples", "samples_6.png"))
    # One row per class (one sample each); else about sqrt(10) = 4 columns, so 3 rows.
    rows, cols = (10, 1) if label < 0 else (3, 4)
    assert png.size == (8 * (cols * 9 + 1), 8 * (rows * 9 + 1))


@pytest.mark.slow
def test_eval_with_classifier_guidance_records_the_classifier(conditional_run):
    _main([*COND, "--workdir", conditional_run, "--mode", "eval",
           "--config.sample.guidance=classifier"])
    result = json.load(open(os.path.join(conditional_run, "eval", "6.json")))
    assert result["spec"]["guidance"] == "classifier"
    assert result["spec"]["classifier"]["step"] in (10, 12)
    assert "class_accuracy" in result and "fid_per_class" in result
