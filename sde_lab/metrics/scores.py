"""Sample-quality scores from features: Frechet distance (FID), KID and Inception Score.

All three run on the host in float64 NumPy/SciPy: they are O(d^3) or O(n^2 d) once per
evaluation, and the reference implementations (pytorch-fid, TF-GAN, clean-fid) compute them
this way, so matching their numerics matters more than speed.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def _as_2d(name: str, x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, d] features; got shape {x.shape}")
    return x


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] (divisor N - 1) of [N, d] features, float64.

    As pytorch-fid (`np.cov(rowvar=False)`) and TF-GAN.
    """
    x = _as_2d("features", features)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance; got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017):

        d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2}).

    Computed in float64 with scipy's Schur-method `sqrtm`, as pytorch-fid: if the product is
    so near-singular that the root is not finite, eps * I is added to both covariances; a
    complex root whose diagonal has an imaginary part above 1e-3 is an error, a smaller one
    is rounding and dropped. Deterministic.

    Args:
      mu1, mu2: means, [d].
      sigma1, sigma2: covariances, [d, d].
      eps: diagonal offset used only for the near-singular fallback.

    Returns:
      The squared Frechet distance (what papers report as FID when the features are
      Inception pool3), a Python float.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance needs mu [d] and sigma [d, d] of one d; got "
                         f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # scipy warns on singular products; the finiteness check below handles them.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            raise ValueError(f"matrix square root has imaginary component {imag:.3g}: "
                             "covariances are not PSD or far too ill-conditioned")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3, the KID kernel (Binkowski et al. 2018). [n, d], [m, d] -> [n, m]."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Gretton et al. 2012, eq. 3):

        1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
        - 2/(mn) sum_{i,j} k(x_i, y_j).
    """
    x, y = _as_2d("x", x), _as_2d("y", y)
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def kid_subsets(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
                seed: int = 0) -> np.ndarray:
    """Per-subset unbiased MMD^2 estimates [num_subsets] (Binkowski et al. 2018, Sec. 3.2).

    Each subset draws `min(subset_size, N1, N2)` rows of each feature set without replacement
    (numpy `default_rng(seed).choice`), as TF-GAN/clean-fid do. Deterministic given `seed`.
    """
    x, y = _as_2d("features1", features1), _as_2d("features2", features2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2; got {num_subsets}, {subset_size}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set; got {x.shape[0]}, {y.shape[0]}")
    rng = np.random.default_rng(seed)
    out = np.empty(num_subsets)
    for s in range(num_subsets):
        ix = rng.choice(x.shape[0], m, replace=False)
        iy = rng.choice(y.shape[0], m, replace=False)
        out[s] = mmd2_unbiased(x[ix], y[iy])
    return out


def kid(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> float:
    """Kernel Inception Distance: mean over subsets of the unbiased polynomial-kernel MMD^2.

    Defaults are TF-GAN's and clean-fid's (100 subsets of 1000). Unbiased, so it can be
    slightly negative for matching distributions; papers often report it x1000.

    Args:
      features1, features2: [N1, d], [N2, d] features (e.g. Inception pool3).
      num_subsets, subset_size, seed: see `kid_subsets`.

    Returns:
      KID as a Python float; `kid_subsets(...).std()` gives the spread across subsets.
    """
    return float(kid_subsets(features1, features2, num_subsets, subset_size, seed).mean())


def inception_score(logits, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), over splits.

    p(y|x) = softmax(logits) in float64; the N rows are cut into `num_splits` consecutive
    splits as in OpenAI's reference code (improved-gan, split i = rows [i N // k,
    (i + 1) N // k), which also covers N not divisible by k); p(y) is each split's mean.
    For the FID Inception the softmax runs over all 1008 logits, as the 2015 graph's
    `softmax` output.

    Args:
      logits: [N, K] classifier logits.
      num_splits: number of splits (10 is the standard).

    Returns:
      (mean, std) of the per-split scores, Python floats.
    """
    logits = _as_2d("logits", logits)
    if not 1 <= num_splits <= logits.shape[0]:
        raise ValueError(f"num_splits must be in [1, N={logits.shape[0]}]; got {num_splits}")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    n = log_p.shape[0]
    for i in range(num_splits):
        part = log_p[i * n // num_splits:(i + 1) * n // num_splits]
        log_py = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_py)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
