"""Anomaly scores from a score model, and the AUROC that evaluates them.

`scores(key, sde, score_fn, x, method)` -> [B], higher = more anomalous:

| method             | score                                                | NFE per batch    |
|--------------------|------------------------------------------------------|------------------|
| `"bpd"`            | -log p_0(x) / (D ln 2) by the probability-flow ODE   | ~100 (adaptive)  |
| `"reconstruction"` | mean over t0s of ||sdedit(x, t0) - x||^2 / D          | sampler per t0   |
| `"score_norm"`     | mean over levels of ||sigma score(alpha x, t)||^2 / D | num_levels       |

The likelihood is the principled score, but it is known to fail as an out-of-distribution
score for images (Nalisnick et al. 2019: models of one dataset can give higher likelihood
to another, simpler one): the other two look at how far x is from what the model
reconstructs or how hard the score pulls on x. All are deterministic functions of x except
for the key (Hutchinson probes, SDEdit noise), jit-able with the options closed over.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import inverse, likelihood
from sde_lab.sdes import SDE, expand_to

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

METHODS = ("bpd", "reconstruction", "score_norm")


def _flat_mean(v: Array) -> Array:
    return jnp.mean(jnp.reshape(v, (v.shape[0], -1)), axis=-1)


def score_norm_times(sde: SDE, num_levels: int, t_min: float | None = None) -> Array:
    """num_levels times from t_min to T, uniform in log-SNR (geometric noise levels
    sigma / alpha, like NCSN's sigmas for VE)."""
    t_min = sde.t_min if t_min is None else t_min
    lam = jnp.linspace(sde.log_snr(jnp.asarray(t_min, jnp.float32)),
                       sde.log_snr(jnp.asarray(sde.T, jnp.float32)), num_levels)
    return sde.t_from_log_snr(lam)


def score_norms(sde: SDE, score_fn: ScoreFn, x: Array, ts: Array) -> Array:
    """Per-level score statistics ||sigma(t) score(alpha(t) x, t)||^2 / D: [B, len(ts)].

    Multiscale score matching for OOD detection (Mahmood et al. 2021) evaluates the score
    of the clean input at several noise levels; sigma * score is the noise the model would
    remove (its eps prediction), so the statistic is dimensionless and O(1) at noise levels
    where x looks like a noisy in-distribution point. Mahmood et al. fit a density model on
    these [B, L] features of training data; `scores(method="score_norm")` averages them.
    """
    def level(t):
        mean_coeff, std = sde.marginal(jnp.full(x.shape[:1], t, x.dtype))
        eps = expand_to(std, x) * score_fn(expand_to(mean_coeff, x) * x,
                                           jnp.full(x.shape[:1], t, x.dtype))
        return _flat_mean(eps**2)

    return jnp.stack([level(t) for t in ts], axis=1)


def _bpd(key, sde, score_fn, x, likelihood_options):
    logp, _ = likelihood.log_likelihood(key, sde, score_fn, x, **likelihood_options)
    return -logp / (math.prod(x.shape[1:]) * math.log(2.0))


def _reconstruction(key, sde, score_fn, x, t0s, sampler, sampler_options):
    errors = []
    for i, t0 in enumerate(t0s):
        x_rec, _ = inverse.sdedit(jax.random.fold_in(key, i), sde, score_fn, x, t0,
                                  sampler=sampler, sampler_options=sampler_options)
        errors.append(_flat_mean((x_rec - x) ** 2))
    return jnp.mean(jnp.stack(errors, axis=1), axis=1)


def scores(key: Array, sde: SDE, score_fn: ScoreFn, x: Array, method: str = "bpd", *,
           likelihood_options: dict | None = None, t0s: tuple[float, ...] = (0.1, 0.3, 0.5),
           sampler: str = "dpm_solver++", sampler_options: dict | None = None,
           num_levels: int = 10) -> Array:
    """Per-example anomaly scores, higher = more anomalous: [B].

    Args:
      key: PRNG key (Hutchinson probes for "bpd", the SDEdit noise for "reconstruction").
      sde, score_fn: the model; score_fn(x [B, ...], t [B]) -> [B, ...].
      x: [B, ...] inputs in the model's input space.
      method: "bpd": -log p(x) / (D ln 2) from `likelihood.log_likelihood` (bits/dim of the
          continuous density; the dequantization offset of `likelihood.bits_per_dim` is a
          constant and changes no ranking).
        "reconstruction": mean over t0 in `t0s` of ||sdedit(x, t0) - x||^2 / D, one
          SDEdit per t0 with `sampler` (default DPM-Solver++, 20 steps per t0: the noise
          is the only randomness). Points the model cannot reconstruct are anomalous.
        "score_norm": mean over `num_levels` noise levels (uniform in log-SNR between
          sde.t_min and T) of ||sigma score(alpha x, t)||^2 / D (see `score_norms`).
      likelihood_options: options of `likelihood.log_likelihood` (estimator, rtol, ...).
      t0s: SDEdit times in (0, T] for "reconstruction".
      sampler, sampler_options: the SDEdit sampler for "reconstruction".
      num_levels: noise levels for "score_norm".

    Returns:
      [B] scores.
    """
    if method not in METHODS:
        raise ValueError(f"anomaly.scores: unknown method '{method}'; available: "
                         f"{list(METHODS)}")
    if np.ndim(x) < 2:
        raise ValueError(f"anomaly.scores: x must be [B, ...], got shape {np.shape(x)}")
    x = jnp.asarray(x)
    if method == "bpd":
        return _bpd(key, sde, score_fn, x, dict(likelihood_options or {}))
    if method == "reconstruction":
        if not (isinstance(t0s, (tuple, list)) and len(t0s) > 0):
            raise ValueError(f"anomaly.scores: t0s must be a non-empty tuple of times, got "
                             f"{t0s!r}")
        return _reconstruction(key, sde, score_fn, x, tuple(t0s), sampler, sampler_options)
    if not (isinstance(num_levels, int) and num_levels >= 1):
        raise ValueError(f"anomaly.scores: num_levels must be a positive int, got "
                         f"{num_levels!r}")
    with jax.ensure_compile_time_eval():
        ts = [float(t) for t in score_norm_times(sde, num_levels)]
    return jnp.mean(score_norms(sde, score_fn, x, ts), axis=1)


def auroc(scores_in: Array, scores_out: Array) -> Array:
    """Area under the ROC curve for detecting `scores_out` (positives) among `scores_in`.

    AUROC = P(s_out > s_in) + 1/2 P(s_out = s_in) over independent pairs: the
    Mann-Whitney U statistic divided by n_in n_out, with ties counted one half. 1 = perfect
    separation, 0.5 = chance. Computed by sorting (O((n + m) log n)); jit-able.

    Args:
      scores_in: [n_in] scores of normal examples.
      scores_out: [n_out] scores of anomalies.

    Returns:
      scalar in [0, 1].
    """
    for name, s in (("scores_in", scores_in), ("scores_out", scores_out)):
        if np.ndim(s) != 1 or np.shape(s)[0] == 0:
            raise ValueError(f"auroc: {name} must be a non-empty 1-D array, got shape "
                             f"{np.shape(s)}")
    sorted_in = jnp.sort(jnp.asarray(scores_in, jnp.float32))
    scores_out = jnp.asarray(scores_out, jnp.float32)
    below = jnp.searchsorted(sorted_in, scores_out, side="left")
    not_above = jnp.searchsorted(sorted_in, scores_out, side="right")
    wins = below + 0.5 * (not_above - below)
    return jnp.sum(wins) / (sorted_in.shape[0] * scores_out.shape[0])


__all__ = ["METHODS", "auroc", "score_norm_times", "score_norms", "scores"]
