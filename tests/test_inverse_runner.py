"""The inverse-problem and anomaly-score modes (sde_lab/inverse_runner.py), their masks and
checks, and the data option that holds classes out of training (data.exclude_classes)."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import digits, tabular  # noqa: E402
from sde_lab import data, experiment, inverse_runner, run  # noqa: E402
from sde_lab.experiment import ConfigError  # noqa: E402


def _exp(config_module=digits, variant="runlocal", **fields):
    config = config_module.get_config(variant)
    for key, value in fields.items():
        section, name = key.split("__")
        config[section][name] = value
    return experiment.build(config)


# ------------------------------------------------------------------ data.exclude_classes

def test_exclude_classes_drops_labels_from_the_train_split_only():
    exp = _exp(data__exclude_classes="3,5")
    assert exp.data.exclude_classes == (3, 5)
    train = exp.data.make("train", train=True, seed=0)
    full = data.load_digits()["train"]
    assert len(train) == int(np.sum(~np.isin(full.labels, [3, 5])))
    labels = np.concatenate([train.batch(s, 128)["label"] for s in range(12)])
    assert not np.isin(labels, [3, 5]).any() and set(np.unique(labels)) == set(range(10)) - {3, 5}
    test = exp.data.make("test", train=False, seed=0)   # the eval split keeps every class
    assert len(test) == 297 and {3, 5} <= set(test.examples()[1].tolist())


@pytest.mark.parametrize("value, match", [("a", "data.exclude_classes='a'"),
                                          ("3,3", "lists a label twice")])
def test_bad_exclude_classes_is_a_config_error(value, match):
    with pytest.raises(ConfigError, match=match):
        _exp(data__exclude_classes=value)


def test_excluding_every_class_or_an_unlabelled_toy_set_fails():
    with pytest.raises(ValueError, match="drops every example"):
        data.make("digits", "train", num_levels=17, exclude_classes=tuple(range(10)))
    with pytest.raises(ValueError, match="toy:gmm has no classes"):
        data.make("toy:gmm", "train", exclude_classes=(1,))


def test_toy_outliers_have_the_inlier_marginals_and_labels():
    toy = data.toy_distribution("outliers", 10)
    rng = np.random.default_rng(0)
    x, labels = toy.sample_labeled(rng, 20000)
    assert x.shape == (20000, 10) and labels.dtype == np.int32
    # Binomial(20000, 0.1): 5 standard errors.
    assert abs(labels.mean() - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 20000)
    inl, out = x[labels == 0], x[labels == 1]
    # Same per-feature mean and std (standard errors of ~2000 outliers), different joint law:
    # the inliers' features correlate, the outliers' do not.
    se = inl.std(0) / np.sqrt(len(out))
    np.testing.assert_array_less(np.abs(out.mean(0) - inl.mean(0)), 5 * se)
    np.testing.assert_allclose(out.std(0), inl.std(0), rtol=0.1)
    corr_in = np.corrcoef(inl.T)[np.triu_indices(10, 1)]
    corr_out = np.corrcoef(out.T)[np.triu_indices(10, 1)]
    assert np.abs(corr_in).max() > 0.3 and np.abs(corr_out).max() < 5 / np.sqrt(len(out))
    assert (toy.sample_labeled(rng, 1000, exclude=(1,))[1] == 0).all()
    ds = data.make("toy:outliers", "train", toy_dim=10, exclude_classes=(1,))
    assert ds.batch(0, 512)["label"].sum() == 0
    # The eval split is fixed by the seed and differs from the train split's draws.
    a = data.make("toy:outliers", "test", toy_dim=10).examples(8)[0]
    b = data.make("toy:outliers", "test", toy_dim=10).examples(8)[0]
    c = data.make("toy:outliers", "train", toy_dim=10).examples(8)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_toy_outliers_inlier_density_is_the_mixture_density():
    from scipy.stats import multivariate_normal

    toy = data.toy_distribution("outliers", 10)
    x = toy.sample(np.random.default_rng(1), 5)
    ref = np.log(np.mean([multivariate_normal(m, c @ c.T).pdf(x)
                          for m, c in zip(toy.means, toy.chols)], 0))
    np.testing.assert_allclose(toy.inlier_logpdf(x), ref, rtol=1e-10)


# ------------------------------------------------------------------ masks and checks

def test_masks_half_center_random():
    exp = _exp()
    half = inverse_runner.make_masks(exp, 3)
    assert half.shape == (3, 8, 8, 1)
    assert (half[:, :4] == 1).all() and (half[:, 4:] == 0).all()
    center = inverse_runner.make_masks(_exp(inverse__mask="center"), 2)
    assert (center[:, 2:6, 2:6] == 0).all() and center.sum() == 2 * (64 - 16)
    rand = inverse_runner.make_masks(_exp(inverse__mask="random", inverse__mask_fraction=0.25), 50)
    assert set(np.unique(rand)) == {0.0, 1.0}
    assert (rand.reshape(50, -1).sum(1) == 48).all()          # exactly 16 of 64 hidden each
    assert len({m.tobytes() for m in rand}) == 50
    vec = inverse_runner.make_masks(_exp(tabular), 2)
    assert vec.shape == (2, 10) and (vec[:, :5] == 1).all() and (vec[:, 5:] == 0).all()


def test_mask_file_shapes_and_values(tmp_path):
    shape = (8, 8, 1)
    good = np.zeros((8, 8))
    good[:, :4] = 1
    np.save(tmp_path / "image.npy", good)
    m = inverse_runner.load_mask_file(str(tmp_path / "image.npy"), shape, 3)
    assert m.shape == (3, 8, 8, 1) and m[:, :, :4].all() and not m[:, :, 4:].any()
    np.save(tmp_path / "per_example.npy", np.ones((3,) + shape, bool))
    assert inverse_runner.load_mask_file(str(tmp_path / "per_example.npy"), shape, 3).all()
    for name, array, match in [("small.npy", np.ones((3, 3)), "shape \\(3, 3\\) is not"),
                               ("count.npy", np.ones((4,) + shape), "is not one of"),
                               ("half.npy", np.full(shape, 0.5), "values must be 0 or 1"),
                               ("two.npy", 2 * np.ones(shape), "found \\[2.\\]")]:
        np.save(tmp_path / name, array)
        with pytest.raises(ConfigError, match=match):
            inverse_runner.load_mask_file(str(tmp_path / name), shape, 3)
    with pytest.raises(ConfigError, match="no such file"):
        inverse_runner.load_mask_file(str(tmp_path / "missing.npy"), shape, 3)


@pytest.mark.parametrize("fields, match", [
    (dict(inverse__t0=0.0), "inverse.t0=0.0"), (dict(inverse__t0=1.5), "inverse.t0=1.5"),
    (dict(inverse__noise_std=0.0), "inverse.noise_std=0.0"),
    (dict(inverse__noise_std=-0.1), "inverse.noise_std=-0.1"),
    (dict(inverse__mask="ring"), "inverse.mask='ring'"),
    (dict(inverse__method="dps"), "inverse.method='dps'"),
    (dict(inverse__mask_fraction=1.0), "inverse.mask_fraction=1.0"),
    (dict(inverse__score_methods="bpd,likelihood"), "unknown method 'likelihood'"),
    (dict(inverse__reconstruction_t0s="0.1,2"), "inverse.reconstruction_t0s"),
    (dict(inverse__anomaly_classes="x"), "inverse.anomaly_classes='x'"),
    (dict(inverse__guidance_min_alpha=1.0), r"inverse.guidance_min_alpha=1.0 .*\[0, 1\)"),
    (dict(inverse__guidance_min_alpha=-0.5), "inverse.guidance_min_alpha=-0.5"),
])
def test_bad_inverse_fields_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        _exp(**fields)


@pytest.mark.parametrize("mode, fields, match", [
    ("colorize", {}, "needs colour images"),
    ("denoise", dict(sample__sampler="dpm_solver++"), "needs a reverse-SDE sampler"),
    ("denoise", dict(inverse__noise_std=100.0), "outside the SDE's noise levels"),
    ("inpaint", dict(sample__sampler="ode"), "needs a fixed-step sampler"),
])
def test_mode_checks(mode, fields, match):
    with pytest.raises(ConfigError, match=match):
        inverse_runner.check(_exp(**fields), mode)
    inverse_runner.check(_exp(), "sdedit")
    inverse_runner.check(_exp(sample__sampler="ancestral"), "denoise")


def test_psnr_and_collect(tmp_path):
    truth = np.zeros((2, 4, 4, 1))
    est = truth + np.array([0.1, 0.01])[:, None, None, None]
    assert inverse_runner.psnr(est, truth) == pytest.approx((20.0 + 40.0) / 2)
    for name, auroc in (("a", 0.9), ("b", 0.5)):
        os.makedirs(tmp_path / name / "scores")
        for step, value in ((10, 0.0), (20, auroc)):
            (tmp_path / name / "scores" / f"auroc_{step}.json").write_text(json.dumps(
                {"num_examples": 30, "num_anomalous": 3, "auroc": {"bpd": value}}))
    table = inverse_runner.collect(str(tmp_path))
    assert "| a | 3 of 30 | 0.900 |" in table and "| mean of 2 | | 0.700 |" in table


def test_non_finite_results_are_named_not_scored():
    exp = _exp(tabular, inverse__method="guidance")
    inverse_runner._require_finite(exp, "denoise", tweedie_estimates=np.zeros((3, 2)))
    x = np.zeros((5, 2, 2, 1))
    x[[1, 3], 0, 1, 0] = np.inf
    with pytest.raises(inverse_runner.Diverged, match=r"inpaint: 2 of 5 results are not "
                       r"finite .*inverse.method=replacement"):
        inverse_runner._require_finite(exp, "inpaint", results=x)
    with pytest.raises(inverse_runner.Diverged, match="score: 1 of 3 bpd scores"):
        inverse_runner._require_finite(exp, "score", **{"bpd scores": np.array([0, np.nan, 1])})


# ------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_modes_end_to_end_on_a_tiny_tabular_run(tmp_path, capsys):
    """Train the runlocal tabular config, then score, denoise, inpaint and sdedit."""
    workdir = str(tmp_path / "tab")
    config = tabular.get_config("runlocal")
    config.inverse.score_methods = "bpd,reconstruction,score_norm,score_norm_gmm"
    config.inverse.reconstruction_t0s = "0.3"
    config.inverse.num_posterior_samples = 2
    config.inverse.mask = "random"
    config.eval.bpd_rtol = config.eval.bpd_atol = 1e-3
    assert run.main(config, workdir, "train") == 0
    assert run.main(config, workdir, "score") == 0
    scores = np.load(os.path.join(workdir, "scores", "scores_20.npz"))
    result = json.load(open(os.path.join(workdir, "scores", "auroc_20.json")))
    for m in ("bpd", "reconstruction", "score_norm", "score_norm_gmm", "oracle_nll"):
        assert scores[m].shape == (64,) and np.isfinite(scores[m]).all()
        assert 0.0 <= result["auroc"][m] <= 1.0
    np.testing.assert_array_equal(scores["anomalous"], scores["label"] == 1)
    lines = open(os.path.join(workdir, "scores", "scores_20.csv")).read().splitlines()
    assert lines[0].startswith("index,label,anomalous,bpd") and len(lines) == 65
    for mode in ("inpaint", "sdedit"):
        assert run.main(config, workdir, mode) == 0
    out = np.load(os.path.join(workdir, "inverse",
                               "inpaint_20_random0.5_replacement_dpm_solver_pp10.npz"))
    observed = out["mask"] == 1
    np.testing.assert_array_equal(out["x"][observed], out["truth"][observed])
    config.sample.sampler = "ancestral"
    config.sample.ancestral.num_steps = 5
    assert run.main(config, workdir, "denoise") == 0
    res = json.load(open(os.path.join(workdir, "inverse",
                                      "denoise_20_noise0.1_ancestral5.json")))
    assert res["mse_noisy"] == pytest.approx(0.01, rel=0.25)   # noise_std 0.1: chi^2_640 / 640
    assert np.isfinite(res["mse_tweedie"]) and np.isfinite(res["mse_posterior_mean"])
    # A result that blew up is one error line and exit 1, and writes nothing.
    real_sdedit = inverse_runner.inverse.sdedit

    def blown_up(*args, **kwargs):
        x, stats = real_sdedit(*args, **kwargs)
        return x.at[1].set(np.nan), stats
    inverse_runner.inverse.sdedit = blown_up
    try:
        config.inverse.t0 = 0.25
        assert run.main(config, workdir, "sdedit") == 1
    finally:
        inverse_runner.inverse.sdedit = real_sdedit
    bad = -(-64 // min(config.inverse.batch_size, 64))  # example 1 of every batch
    assert f"error: sdedit: {bad} of 64 results are not finite" in capsys.readouterr().err
    assert not [f for f in os.listdir(os.path.join(workdir, "inverse")) if "t00.25" in f]


@pytest.mark.slow
def test_image_modes_end_to_end_on_a_tiny_digits_run(tmp_path):
    """Train the runlocal digits config, then inpaint and denoise 4 test digits: grids,
    arrays, the digits classifier's accuracy and PSNRs are written."""
    from PIL import Image

    workdir = str(tmp_path / "dig")
    config = digits.get_config("runlocal")
    config.train.eval_at_end = False
    config.inverse.num_examples = 4
    config.inverse.batch_size = 4
    assert run.main(config, workdir, "train") == 0
    assert run.main(config, workdir, "inpaint") == 0
    out = os.path.join(workdir, "inverse", "inpaint_20_half_replacement_reverse_diffusion25")
    res = json.load(open(out + ".json"))
    assert res["observed_kept_exactly"] and 0 <= res["accuracy_result"] <= 1
    assert res["accuracy_truth"] >= 0.75          # the classifier on real test digits
    grid = np.asarray(Image.open(out + ".png"))
    assert grid.shape == (4 * 72 + 8, 4 * 72 + 8)  # 4 rows x (mask, observation, result, truth)
    config.sample.sampler = "ancestral"
    config.sample.ancestral.num_steps = 5
    config.inverse.num_posterior_samples = 2
    assert run.main(config, workdir, "denoise") == 0
    res = json.load(open(os.path.join(workdir, "inverse",
                                      "denoise_20_noise0.1_ancestral5.json")))
    # Noise 0.1 on [0, 1] images: 20 dB for the noisy input, up to the sample's chi^2 spread.
    assert res["psnr_noisy"] == pytest.approx(20.0, abs=1.0)
    assert {"psnr_tweedie", "psnr_posterior_mean", "psnr_gaussian", "psnr_median"} <= set(res)
    grid = np.asarray(Image.open(os.path.join(workdir, "inverse",
                                              "denoise_20_noise0.1_ancestral5.png")))
    assert grid.shape == (4 * 72 + 8, 6 * 72 + 8)
