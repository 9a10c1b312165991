"""FID, KID, IS against independent float64 NumPy/SciPy; extractors, stats files, digits net.

Independent references used here (none calls the code under test):
* tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})) with symmetric `eigh`
  (S1^{1/2} S2 S1^{1/2} is symmetric PSD and similar to S1 S2), instead of Schur `sqrtm`;
* diagonal Gaussians: FID = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2 with s the std devs;
* MMD^2_u as explicit double loops over pairs (Gretton et al. 2012, eq. 3);
* IS from scipy.special.softmax and scipy.stats.entropy (KL) per example.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats as sps

from sde_lab import metrics
from sde_lab.metrics import convert, digits_classifier, extractors, inception, scores
from sde_lab.metrics import stats as stats_lib


def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, 2 * d))
    return scale * a @ a.T / (2 * d) + 0.05 * np.eye(d)


def _fid_eigh(mu1, s1, mu2, s2):
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(r1 @ s2 @ r1)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum()


# ---------------------------------------------------------------- Frechet distance


@pytest.mark.parametrize("d,seed", [(2, 0), (16, 1), (64, 2), (256, 3)])
def test_frechet_distance_matches_eigh_reference(d, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.0)
    ref = _fid_eigh(mu1, s1, mu2, s2)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    sd1, sd2 = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    ref = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(sd1**2), mu2, np.diag(sd2**2))
    assert got == pytest.approx(ref, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero():
    """sqrtm(S S) = S up to rounding, so FID(x, x) is 0 to ~1e-10 of tr(S) (float64)."""
    x = np.random.default_rng(6).normal(size=(500, 64)) @ np.random.default_rng(7).normal(size=(64, 64))
    mu, sigma = metrics.gaussian_statistics(x)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_gaussian_statistics_is_unbiased_covariance():
    x = np.random.default_rng(8).normal(size=(50, 4))
    mu, sigma = metrics.gaussian_statistics(x.astype(np.float32))
    xc = x.astype(np.float32).astype(np.float64) - x.astype(np.float32).astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, xc.T @ xc / 49, rtol=1e-12)
    assert mu.dtype == sigma.dtype == np.float64


def test_frechet_distance_rank_deficient_covariances():
    """Fewer samples than dims: singular sigmas. The result must stay finite and real and
    within the eps-offset's effect of the eigh reference: each of the <= d near-zero
    eigenvalues of the product can move its square root by at most sqrt(eps * lambda_max)."""
    rng = np.random.default_rng(9)
    d, eps = 32, 1e-6
    mu1, s1 = metrics.gaussian_statistics(rng.normal(size=(10, d)))
    mu2, s2 = metrics.gaussian_statistics(rng.normal(size=(12, d)) + 0.5)
    got = metrics.frechet_distance(mu1, s1, mu2, s2, eps=eps)
    ref = _fid_eigh(mu1, s1, mu2, s2)
    lam_max = np.linalg.eigvalsh(s1).max() * np.linalg.eigvalsh(s2).max()
    assert np.isfinite(got)
    assert abs(got - ref) <= 2 * d * np.sqrt(eps * (lam_max + 1.0)) + 1e-8 * abs(ref)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mu"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- KID


def _mmd2_loops(x, y):
    k = lambda a, b: (a @ b / x.shape[1] + 1.0) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_mmd2_unbiased_matches_pair_loops():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(25, 5)) * 1.2 + 0.3
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(_mmd2_loops(x, y), rel=1e-10)


def test_kid_with_whole_sets_equals_mmd():
    """A subset of size N is a permutation; MMD^2_u is permutation invariant."""
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.2
    got = metrics.kid(x, y, num_subsets=3, subset_size=1000)
    assert got == pytest.approx(_mmd2_loops(x, y), rel=1e-10)


def test_kid_subsets_are_unbiased_for_the_full_set_estimate():
    """Each subset estimate is unbiased for MMD^2, as is the full-set one, so their gap is
    within a few standard errors of the subset mean (std/sqrt(S); subsets overlap, so the
    bound uses 5 standard errors plus the full-set estimate's own spread)."""
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(600, 8)), rng.normal(size=(600, 8)) * 1.1 + 0.1
    per = metrics.kid_subsets(x, y, num_subsets=100, subset_size=100, seed=1)
    full = metrics.mmd2_unbiased(x, y)
    assert per.shape == (100,)
    assert abs(per.mean() - full) < 5 * per.std() / np.sqrt(100) + per.std() / 6
    assert full > 10 * per.std() / np.sqrt(100)  # the shift is detected
    np.testing.assert_array_equal(per, metrics.kid_subsets(x, y, 100, 100, seed=1))


def test_kid_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="dims"):
        metrics.kid(np.zeros((5, 3)), np.zeros((5, 4)))


# ---------------------------------------------------------------- Inception Score


def _is_reference(logits, splits):
    out = []
    for part in np.array_split(logits, splits):
        p = special.softmax(part, axis=1)
        py = p.mean(axis=0)
        out.append(np.exp(np.mean([sps.entropy(row, py) for row in p])))
    return np.mean(out), np.std(out)


def test_inception_score_matches_scipy():
    logits = np.random.default_rng(13).normal(size=(1000, 1008)) * 3
    mean, std = metrics.inception_score(logits)
    ref_mean, ref_std = _is_reference(logits, 10)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-8)


def _openai_inception_score(logits, splits):
    """openai/improved-gan inception_score/model.py, get_inception_score, from the
    softmax predictions on: split i is preds[i * n // splits:(i + 1) * n // splits]."""
    preds = special.softmax(logits, axis=1)
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("n, splits", [(1003, 10), (57, 4)])
def test_inception_score_splits_as_openai_when_not_divisible(n, splits):
    """With N not divisible by the number of splits, the splits are OpenAI's (sizes
    floor((i + 1) N / k) - floor(i N / k)), not numpy's array_split (larger ones first)."""
    logits = np.random.default_rng(5).normal(size=(n, 50)) * 3
    mean, std = metrics.inception_score(logits, num_splits=splits)
    ref_mean, ref_std = _openai_inception_score(logits, splits)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    assert std == pytest.approx(ref_std, rel=1e-9)


def test_inception_score_limits():
    """Confident, balanced predictions over K classes give IS = K; constant logits give 1."""
    k, n = 10, 1000
    logits = np.full((n, k), -60.0)
    logits[np.arange(n), np.arange(n) % k] = 60.0
    assert metrics.inception_score(logits)[0] == pytest.approx(k, rel=1e-9)
    assert metrics.inception_score(np.zeros((n, k)))[0] == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- resize, extractors


def _tf1_resize_loops(img, size):
    h, w, c = img.shape
    out = np.zeros((size, size, c))
    for i in range(size):
        y = i * h / size
        y0 = int(np.floor(y)); y1 = min(y0 + 1, h - 1); dy = y - y0
        for j in range(size):
            x = j * w / size
            x0 = int(np.floor(x)); x1 = min(x0 + 1, w - 1); dx = x - x0
            top = img[y0, x0] * (1 - dx) + img[y0, x1] * dx
            bot = img[y1, x0] * (1 - dx) + img[y1, x1] * dx
            out[i, j] = top * (1 - dy) + bot * dy
    return out


def test_tf1_resize_matches_loop_reference():
    img = np.random.default_rng(14).random((1, 7, 5, 2))
    with jax.enable_x64(True):
        got = np.asarray(inception.resize_bilinear(jnp.asarray(img), 23, "tf1"))[0]
    np.testing.assert_allclose(got, _tf1_resize_loops(img[0], 23), atol=1e-12)


def test_registry_and_errors():
    assert extractors.available() == ["digits", "inception"]
    with pytest.raises(ValueError, match=r"unknown feature extractor 'vgg'; available: \['digits', 'inception'\]"):
        metrics.make_extractor("vgg")
    with pytest.raises(ValueError, match="resize_method"):
        metrics.make_extractor("inception", resize_method="cubic")
    ext = metrics.make_extractor("digits")
    with pytest.raises(ValueError, match=r"\[B, 8, 8, 1\]"):
        ext.features(np.zeros((2, 28, 28, 1)))


def test_missing_inception_weights_says_where_to_download(tmp_path, monkeypatch):
    monkeypatch.delenv(convert.WEIGHTS_ENV, raising=False)
    for path in (None, str(tmp_path / "nope.npz")):
        with pytest.raises(FileNotFoundError) as err:
            metrics.make_extractor("inception", weights_path=path)
        msg = str(err.value)
        assert convert.FID_WEIGHTS_URL in msg and "python -m sde_lab.metrics.convert --pth" in msg


def test_inception_extractor_shapes_with_random_weights():
    """Shapes only (eval_shape: no compile): RGB and grayscale, any input size."""
    variables = jax.eval_shape(inception.init_variables, jax.random.key(0))
    ext = metrics.make_extractor("inception", variables=variables)
    for shape in [(3, 32, 32, 3), (2, 8, 8, 1)]:
        f, l = jax.eval_shape(ext.apply_fn, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
        assert f.shape == (shape[0], 2048) and l.shape == (shape[0], 1008)
    with pytest.raises(ValueError, match="C in"):
        ext.features(np.zeros((1, 32, 32, 4)))


def test_converter_rejects_wrong_weights():
    with pytest.raises(ValueError, match="unexpected weight"):
        convert.state_dict_to_variables({"AuxLogits.fc.weight": np.zeros((1000, 768))})
    with pytest.raises(ValueError, match="missing"):
        convert.state_dict_to_variables({"fc.bias": np.zeros(1008)})


# ---------------------------------------------------------------- digits net and stats


@pytest.fixture(scope="module")
def digits_features():
    ext = metrics.make_extractor("digits")
    x_tr, y_tr, x_te, y_te = digits_classifier.digits_split()
    noise = np.random.default_rng(15).random(x_te.shape, dtype=np.float32)
    return ext, ext.features(x_tr), ext.features(x_te), ext.features(noise)


def test_shipped_digits_classifier_accuracy():
    """>= 95% on the fixed 360-image held-out split (binomial s.e. at 0.99 is 0.5%)."""
    _, _, x_te, y_te = digits_classifier.digits_split()
    assert digits_classifier.accuracy(digits_classifier.load_variables(), x_te, y_te) >= 0.95
    assert os.path.getsize(digits_classifier.DEFAULT_WEIGHTS) < 400 * 1024


def test_digits_fid_real_vs_real_small_real_vs_noise_large(digits_features):
    """Baseline: the FID between the two parts of random 1437/360 splits of all 1,797 real
    digits (same distribution; nonzero only from finite-sample bias). Train-vs-held-out must
    be within 2x that baseline; uniform noise images must be > 20x it."""
    ext, f_tr, f_te, f_noise = digits_features
    fid = lambda a, b: metrics.frechet_distance(*metrics.gaussian_statistics(a), *metrics.gaussian_statistics(b))
    all_f = np.concatenate([f_tr, f_te])
    rng = np.random.default_rng(16)
    baseline = np.mean([fid(all_f[p[:1437]], all_f[p[1437:]])
                        for p in (rng.permutation(len(all_f)) for _ in range(5))])
    assert f_tr.shape == (1437, 64)
    assert fid(f_tr, f_te) < 2 * baseline
    assert fid(f_tr, f_noise) > 20 * baseline


def test_extractor_batching_is_independent_of_batch_size(digits_features):
    ext, f_tr, _, _ = digits_features
    x_tr = digits_classifier.digits_split()[0][:37]
    f, logits = ext.features_and_logits(x_tr, batch_size=16)  # 3 batches, last one padded
    np.testing.assert_allclose(f, f_tr[:37], rtol=1e-5, atol=1e-5)
    assert logits.shape == (37, 10)
    uint8 = np.round(x_tr * 255).astype(np.uint8)
    np.testing.assert_allclose(ext.features(uint8), ext.features(uint8.astype(np.float32) / 255), atol=1e-5)


def test_stats_files_roundtrip_and_formats(tmp_path):
    feats = np.random.default_rng(17).normal(size=(100, 6)).astype(np.float32)
    s = metrics.compute_stats(feats)
    metrics.save_stats(tmp_path / "ours.npz", s)
    back = metrics.load_stats(str(tmp_path / "ours.npz"))
    np.testing.assert_array_equal(back.features, feats)
    np.testing.assert_array_equal(back.sigma, s.sigma)
    np.savez(tmp_path / "score_sde.npz", pool_3=feats)  # score_sde's cifar10_stats.npz layout
    sde = metrics.load_stats(str(tmp_path / "score_sde.npz"))
    np.testing.assert_allclose(sde.sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(sde.mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    np.savez(tmp_path / "pytorch_fid.npz", mu=s.mu, sigma=s.sigma)
    assert metrics.load_stats(str(tmp_path / "pytorch_fid.npz")).features is None
    np.savez(tmp_path / "bad.npz", x=feats)
    with pytest.raises(ValueError, match="pool_3"):
        metrics.load_stats(str(tmp_path / "bad.npz"))


def test_stats_command_on_digits(tmp_path, digits_features, capsys):
    """--images: the stats of a saved array are its features (the classifier's 360-image
    held-out split here); an unknown split is a one-line error. The --dataset path is checked
    against the eval's own statistics in test_reference_stats_command_uses_the_eval_split."""
    _, _, f_te, _ = digits_features
    out = tmp_path / "digits_test_stats.npz"
    x_te = digits_classifier.digits_split()[2]
    np.save(tmp_path / "images.npy", x_te)
    stats_lib.main(["--extractor", "digits", "--images", str(tmp_path / "images.npy"), "--out", str(out)])
    np.testing.assert_allclose(metrics.load_stats(str(out)).features, f_te, rtol=1e-5, atol=1e-5)
    assert "360 x 64" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        stats_lib.main(["--extractor", "digits", "--dataset", "digits", "--split", "val", "--out", str(out)])
    assert e.value.code == 2
    assert "error: digits has splits ['test', 'train'], not 'val'" in capsys.readouterr().err


def test_real_data_scores_subsets_and_digits_floor(capsys):
    """real_data_scores: one draw of every image is the plain FID of all of them (to float
    rounding), draws are reproducible by seed and differ across seeds. On the main job's
    setting (1,000 of the 1,500 train digits against the 297 test digits, as the eval
    computes them) the mean over 200 draws and the all-1,500 figure are the README's 19.4
    and 17.8: FID's finite-sample bias, the score of real data under that eval. Bad sizes
    are one-line errors."""
    rng = np.random.default_rng(21)
    feats, ref_feats = rng.normal(size=(60, 5)), rng.normal(size=(40, 5))
    ref = metrics.compute_stats(ref_feats)
    one = metrics.real_data_scores(feats, ref, 60, 1)
    np.testing.assert_allclose(one["fid"][0], stats_lib.fid(metrics.compute_stats(feats), ref),
                               rtol=1e-10)  # only the order of the sums differs
    a, b = (metrics.real_data_scores(feats, ref, 30, 4, seed=s) for s in (0, 1))
    np.testing.assert_array_equal(a["fid"], metrics.real_data_scores(feats, ref, 30, 4)["fid"])
    assert a["kid"].shape == (4,) and not np.array_equal(a["fid"], b["fid"])
    for n, d in ((61, 1), (0, 1), (10, 0)):
        with pytest.raises(ValueError, match="num_samples|draws"):
            metrics.real_data_scores(feats, ref, n, d)

    ext = metrics.make_extractor("digits")
    split = lambda name: stats_lib._dataset_images("digits", name, None)
    train, test = ext.features(split("train")), ext.features(split("test"))
    no_kid = metrics.Stats(*metrics.gaussian_statistics(test))   # FID only: fast
    floor = metrics.real_data_scores(train, no_kid, 1000, 200)
    assert floor["kid"].shape == (0,)
    assert abs(floor["fid"].mean() - 19.39) < 0.005 and abs(floor["fid"].std(ddof=1) - 1.61) < 0.005
    assert abs(metrics.real_data_scores(train, no_kid, 1500, 1)["fid"][0] - 17.85) < 0.005
    f64 = lambda f: (np.mean(f, 0, dtype=np.float64), np.cov(np.float64(f), rowvar=False))
    assert abs(_fid_eigh(*f64(train), *f64(test)) - 17.85) < 0.005   # independent reference
    with pytest.raises(SystemExit):
        stats_lib.main(["--extractor", "digits", "--images", "x.npy", "--against", "test"])
    assert "error: --against needs --dataset" in capsys.readouterr().err


def test_digits_training_command_runs(tmp_path):
    """A 30-step run of the training command writes loadable weights that beat chance (10%)."""
    out = tmp_path / "d.npz"
    digits_classifier.main(["--out", str(out), "--num_steps", "30"])
    v = digits_classifier.load_variables(str(out))
    _, _, x_te, y_te = digits_classifier.digits_split()
    assert digits_classifier.accuracy(v, x_te, y_te) > 0.3


def test_reference_stats_command_uses_the_eval_split(tmp_path):
    """`python -m sde_lab.metrics.stats --dataset digits --split test` gives the statistics
    the eval computes for the digits run (same 297 images, same uint8 path). Equal to float32
    rounding, not bit for bit: the two batch the images differently, and XLA:CPU's own
    convolutions (the runner's default) round a batch-size-dependent way."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import digits

    from sde_lab import evaluate, experiment, metrics
    from sde_lab.metrics import stats as stats_cli

    exp = experiment.build(digits.get_config())
    extractor = metrics.make_extractor("digits")
    ref = evaluate._reference_stats(exp, str(tmp_path), extractor)
    out = tmp_path / "cli.npz"
    stats_cli.main(["--extractor", "digits", "--dataset", "digits", "--split", "test",
                    "--out", str(out)])
    cli = metrics.load_stats(str(out))
    assert cli.features.shape == ref.features.shape == (297, 64)
    scale = float(np.abs(ref.features).max())
    np.testing.assert_allclose(cli.features, ref.features, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(cli.mu, ref.mu, rtol=1e-5, atol=1e-6 * scale)
