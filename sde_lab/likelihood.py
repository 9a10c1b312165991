"""Exact log-likelihood through the probability-flow ODE, and bits/dim.

The probability-flow ODE of a forward SDE (Song et al. 2021, eq. 13),

    dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t),

moves samples of p_t to samples of p_s deterministically. Along one of its trajectories the
instantaneous change of variables (Chen et al. 2018, "Neural ODEs", Thm. 1) gives
d log p_t(x_t) / dt = -div f~(x_t, t), hence, integrating from t_min up to T,

    log p_{t_min}(x) = log p_T(x_T) + int_{t_min}^T div f~(x_t, t) dt,    x_{t_min} = x.

`log_likelihood` solves the augmented ODE d[x, delta]/dt = [f~, div f~] with diffrax
(adaptive Dopri5 or Tsit5 with a PID controller) entirely inside the compiled graph, and
returns prior_logp(x_T) + delta(T). Two approximations separate it from log p_0(x):

* **t_min** (score_sde: 1e-5): the answer is log p_{t_min}(x), the density of the data
  perturbed by the kernel at t_min (for VE that already includes sigma_min).
* **prior gap**: the true p_T is replaced by the prior, so the result is
  log p_{t_min}(x) - [log p_T(x_T) - prior_logp(x_T)]. Averaged over data, the gap is
  KL(p_T || prior) >= 0, so the estimate is biased low (bits/dim biased high). It is
  negligible only when p_T is close to the prior. VP with beta_max = 20 keeps
  a(T) = exp(-B(T)/2) = 0.0066 of the data, so data of mean m leave about
  a(T)^2 |m|^2 / 2 = 2e-5 |m|^2 nats. VE's prior N(0, sigma_max^2 I) ignores the data's
  mean m and covariance C: the gap is about |m|^2 / (2 sigma_max^2) plus a term of order
  tr(C) / (2 sigma_max^2) whose sign varies with x_T, i.e. ~1e-4 nats per dimension for
  zero-mean unit-order data and sigma_max = 50, and large for off-centre data or a
  sigma_max too small for the data. Where p_T is known (tests, toy data), measure it as
  `GaussianMixture.logp(sde, stats["z"], sde.T) - sde.prior_logp(stats["z"])`.

Divergence estimators (all evaluate the drift once per solver stage and share its
linearization, from one `jax.linearize`, with every Jacobian-vector product):

* ``"hutchinson"``: div f~ ~= mean_p eps_p^T J eps_p with Rademacher (default) or Gaussian
  probes eps_p, drawn once per call and held fixed along the trajectory so the ODE is
  deterministic (Hutchinson 1989; Grathwohl et al. 2019). Unbiased; one JVP per probe.
* ``"exact"``: tr J from D JVPs against the basis vectors (D = prod(x.shape[1:])). Exact up
  to the solver, for low-dimensional data and tests.

Both assume the score of one example does not depend on the other examples of the batch
(true for score networks in eval mode): every product is taken for the whole batch at once.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from sde_lab import sdes

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

ESTIMATORS = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
# Error norm of the step-size controller over every coordinate of every example and every
# log-density: "max" bounds each one (each example's accuracy is independent of its batch);
# "rms" is scipy's and score_sde's choice, under which one example's log-density error can
# exceed the tolerance by up to sqrt(B (D + 1)) and depends on its batch-mates.
NORMS = {"max": optx.max_norm, "rms": optx.rms_norm}


# ---------------------------------------------------------------------------------------
# Divergence estimators: (linearized drift, probes) -> div [B].
# ---------------------------------------------------------------------------------------

def _sum_event(v: Array) -> Array:
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=-1)


def _hutchinson_div(jvp_fn: Callable[[Array], Array], probes: Array) -> Array:
    """mean_p eps_p^T J eps_p for probes [P, B, ...]: P JVPs, one vmapped call.

    One probe (the default) is applied without vmap: a vmapped size-1 axis on every
    tangent convolution made DDPM++'s drift-and-divergence evaluation take 1.23x as long on
    XLA:CPU (0.935 s against 0.759 s for one jitted evaluation at batch 4, 2-core Xeon).
    """
    if probes.shape[0] == 1:
        return _sum_event(probes[0] * jvp_fn(probes[0]))
    jvps = jax.vmap(jvp_fn)(probes)
    return jnp.mean(jax.vmap(_sum_event)(probes * jvps), axis=0)


def _exact_div(jvp_fn: Callable[[Array], Array], x: Array) -> Array:
    """tr J = sum_i (J e_i)_i: D JVPs, each against e_i in every example at once."""
    batch, dim = x.shape[0], math.prod(x.shape[1:])
    basis = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim, batch, dim))
    jvps = jax.vmap(jvp_fn)(jnp.reshape(basis, (dim,) + x.shape))   # [D, B, ...]
    return jnp.einsum("ibi->b", jnp.reshape(jvps, (dim, batch, dim)))


def _draw_probes(key: Array, noise: str, num_probes: int, x: Array) -> Array:
    shape = (num_probes,) + x.shape
    if noise == "gaussian":
        return jax.random.normal(key, shape, x.dtype)
    return jax.random.rademacher(key, shape, x.dtype)


# ---------------------------------------------------------------------------------------
# Log-likelihood.
# ---------------------------------------------------------------------------------------

_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
# First trial step as a fraction of the interval; the PID controller adapts it from there.
_FIRST_STEP = 0.01


def _evals_per_step(solver: diffrax.AbstractRungeKutta) -> int:
    """Vector-field evaluations per step, accepted or rejected, of an explicit FSAL RK method.

    An s-stage FSAL method (Tsit5, Dopri5: s = 7) evaluates s - 1 new stages per step; the
    whole solve adds f(t0, y0) once. The first step size is given (`_FIRST_STEP`), so no
    evaluations go to choosing it. tests/test_likelihood.py counts the calls to check this.
    """
    return len(solver.tableau.c)


def _check_options(estimator, num_probes, rtol, atol, t_min, sde, solver, noise, max_steps,
                   error_norm):
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{estimator}'; available: {list(ESTIMATORS)}")
    if solver not in _SOLVERS:
        raise ValueError(f"unknown solver '{solver}'; available: {sorted(_SOLVERS)}")
    if noise not in PROBES:
        raise ValueError(f"unknown noise '{noise}'; available: {list(PROBES)}")
    if error_norm not in NORMS:
        raise ValueError(f"unknown error_norm '{error_norm}'; available: {sorted(NORMS)}")
    if not (isinstance(num_probes, int) and num_probes >= 1):
        raise ValueError(f"num_probes must be a positive int, got {num_probes!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    if not 0 < t_min < sde.T:
        raise ValueError(f"need 0 < t_min < sde.T = {sde.T}, got t_min={t_min}")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")


@eqx.filter_jit
def _solve(key, sde, score_fn, x, estimator, num_probes, rtol, atol, t_min, solver, noise,
           max_steps, error_norm):
    flow = sdes.reverse(sde, score_fn, probability_flow=True)
    probes = _draw_probes(key, noise, num_probes, x) if estimator == "hutchinson" else None

    def vector_field(t, y, args):
        xt, _ = y
        t_vec = jnp.full(xt.shape[:1], t, xt.dtype)
        drift, jvp_fn = jax.linearize(lambda x_: flow.drift_diffusion(x_, t_vec)[0], xt)
        if estimator == "exact":
            return drift, _exact_div(jvp_fn, xt)
        return drift, _hutchinson_div(jvp_fn, probes)

    rk = _SOLVERS[solver]()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), rk, t0=t_min, t1=sde.T,
        dt0=_FIRST_STEP * (sde.T - t_min),
        y0=(x, jnp.zeros(x.shape[:1], x.dtype)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=NORMS[error_norm]),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    z, delta = sol.ys[0][-1], sol.ys[1][-1]
    num_steps = sol.stats["num_steps"]
    stats = {"nfe": _evals_per_step(rk) * num_steps + 1, "num_steps": num_steps,
             "num_rejected_steps": sol.stats["num_rejected_steps"], "z": z,
             "prior_logp": sde.prior_logp(z), "delta_logp": delta}
    return stats["prior_logp"] + delta, stats


def log_likelihood(key: Array, sde: sdes.SDE, score_fn: ScoreFn, x: Array,
                   estimator: str = "hutchinson", num_probes: int = 1, rtol: float = 1e-5,
                   atol: float = 1e-5, t_min: float = 1e-5, *, solver: str = "dopri5",
                   noise: str = "rademacher", max_steps: int = 4096,
                   error_norm: str = "max") -> tuple[Array, dict[str, Any]]:
    """log p_0(x) in nats by the probability-flow ODE (Song et al. 2021, Sec. 4.3).

    Computes prior_logp(x_T) + int_{t_min}^T div f~(x_t, t) dt with the augmented ODE
    integrated forward from x_{t_min} = x by an adaptive explicit Runge-Kutta method inside
    the compiled graph (one diffrax while-loop, no host round trip per step). The batch
    shares one step size; with the default max error norm, rtol/atol bound the local error of
    every coordinate and of every example's log-density. The result estimates log p_{t_min}(x)
    minus the prior gap log p_T(x_T) - prior_logp(x_T) (see the module docstring). The
    trajectory does not depend on the probes, so "hutchinson" is unbiased for the "exact"
    value up to solver error. Deterministic given `key`. NFE = 6 per step (+1).

    Traceable under `jax.jit`; compiled internally with `eqx.filter_jit`, so
    arrays inside `sde` or `score_fn` (e.g. a `jax.tree_util.Partial(score, params)`) are
    traced arguments, while a plain closure is static: reuse the same callable to avoid
    recompiling. rtol and atol are traced too (changing them does not recompile); t_min,
    the solver, the norm and max_steps are static.

    Args:
      key: PRNG key for the Hutchinson probes (unused by "exact").
      sde: forward SDE; only `drift_diffusion` (through `sdes.reverse`), `T` and `prior_logp`
        are used.
      score_fn: score_fn(x [B, ...], t [B]) -> [B, ...].
      x: [B, ...] points in the model's input space (e.g. dequantized, scaled data).
      estimator: "hutchinson" (num_probes JVPs per evaluation) or "exact" (D JVPs).
      num_probes: Hutchinson probes per example, averaged (variance / num_probes).
      rtol, atol: PID controller tolerances (score_sde: 1e-5 and 1e-5 with RK45).
      t_min: start time of the integration (score_sde's eps = 1e-5).
      solver: "dopri5" (default; Dormand-Prince, the tableau of score_sde's SciPy RK45) or
        "tsit5"; both order 5(4), 6 evaluations per step (FSAL). On likelihoods Dopri5's
        error estimate is the more reliable one: at the same tolerance it was as accurate or
        more with fewer evaluations (a trained digits model at rtol = atol = 1e-5: 637
        evaluations against Tsit5's 877 for 7.1e-5 against 8.0e-5 bits/dim of error;
        DDPM++ at 1e-3: 2.1e-5 against 1.1e-4; benchmarks/likelihood_solvers.py and
        benchmarks/likelihood.py, README "Likelihood").
      noise: Hutchinson probe distribution, "rademacher" (lower variance) or "gaussian".
      max_steps: solver step limit; reaching it raises at run time.
      error_norm: "max" (default: rtol/atol bound every coordinate and every example's
        log-density) or "rms" (scipy's RK45 norm, as score_sde; cheaper, batch-dependent).

    Returns:
      logp: [B] nats.
      stats: dict with "nfe" (drift evaluations, one linearization each, from the solver's
        step count), "num_steps", "num_rejected_steps", "z" (x_T, [B, ...]), "prior_logp"
        and "delta_logp" ([B], logp = prior_logp + delta_logp) and "estimator" (a str: leave
        it out of what your own jitted function returns).

    Raises:
      ValueError: unknown estimator/solver/noise or invalid numbers, before compiling.
    """
    _check_options(estimator, num_probes, rtol, atol, t_min, sde, solver, noise, max_steps,
                   error_norm)
    # The tolerances go in as arrays, i.e. traced: one compilation serves every tolerance
    # (a DDPM++-sized solve compiles for minutes); t_min stays a static float.
    tol_dtype = jnp.result_type(float)
    logp, stats = _solve(key, sde, score_fn, x, estimator, num_probes,
                         jnp.asarray(rtol, tol_dtype), jnp.asarray(atol, tol_dtype),
                         float(t_min), solver, noise, max_steps, error_norm)
    return logp, {**stats, "estimator": estimator}


# ---------------------------------------------------------------------------------------
# Bits per dimension.
# ---------------------------------------------------------------------------------------

def _affine_scale(scaler, num_levels: int) -> tuple[float, float]:
    """(scale, shift) of the affine map from dequantized unit-cube data y to model input.

    `scaler` is None (identity), an object with `to_model(k, u)` (sde_lab.data.Scaler:
    y = (k + u) / L), or a callable applied to y (score_sde's data scaler).
    """
    if scaler is None:
        return 1.0, 0.0
    if hasattr(scaler, "to_model"):
        def fn(y):
            return np.asarray(scaler.to_model(np.zeros_like(y), y * num_levels), np.float64)
    elif callable(scaler):
        def fn(y):
            return np.asarray(scaler(y), np.float64)
    else:
        raise ValueError(f"scaler must be None, an object with to_model(k, u) or a callable "
                         f"on [0, 1]; got {scaler!r}")
    y = np.linspace(0.0, 1.0, 9)
    out = fn(y).ravel()
    lo, hi = out[0], out[-1]
    line = lo + (hi - lo) * y
    if not (np.isfinite(hi - lo) and hi != lo
            and np.max(np.abs(out - line)) <= 1e-5 * abs(hi - lo)):
        raise ValueError(f"scaler must be an invertible affine map of [0, 1]; it sends "
                         f"{y.tolist()} to {out.tolist()}")
    return float(hi - lo), float(lo)


def bits_per_dim(logp: Array, data_shape: tuple[int, ...], num_levels: int = 256,
                 scaler=None) -> Array:
    """Discrete-data bits/dim from the continuous log-density of the model input.

    Data are integers k in {0, ..., L-1}^D (L = num_levels), dequantized as y = (k + u) / L,
    u ~ U[0, 1)^D, and scaled to the model input x = a y + b (a = 2 for [0,1] -> [-1,1]).
    Change of variables: p_y(y) = p_x(x) |a|^D, and the density of v = k + u = L y is
    p_v(v) = p_y(y) L^{-D}. Since P(k) = int_{[0,1)^D} p_v(k + u) du >= exp E_u log p_v(k + u)
    (Jensen; Theis et al. 2016), -log2 P(k) / D is bounded above by

        bpd = -log p_x(x) / (D ln 2) - log2 |a| + log2 L.

    Example: the uniform density on the data cube [-1, 1]^D (a = 2) has log p_x = -D ln 2 and
    gets bpd = 1 - 1 + log2 L = log2 L (8 bits for 8-bit images), as it must. score_sde's
    offset `log2(d inverse_scaler / dx) + 8` is -log2 a + log2 256.

    For a model whose bound is already on the discrete data (VDM's VLB with its discretized
    decoder), use `discrete_bits_per_dim` instead: it has no dequantization or scaler term.

    Args:
      logp: [B] nats, log-density of the model input (e.g. from `log_likelihood`).
      data_shape: shape of one example (D = its product).
      num_levels: quantization levels L (256 for 8-bit images, 17 for sklearn digits).
      scaler: affine map from y in [0, 1] to the model input: None (identity), an object with
        `to_model(k, u)` such as `sde_lab.data.Scaler`, or a callable on y.

    Returns:
      [B] bits per dimension.
    """
    if not (isinstance(num_levels, int) and num_levels >= 2):
        raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
    dim = math.prod(data_shape)
    if dim < 1:
        raise ValueError(f"data_shape must describe at least one dimension, got {data_shape}")
    scale, _ = _affine_scale(scaler, num_levels)
    offset = math.log2(num_levels) - math.log2(abs(scale))
    return -jnp.asarray(logp) / (dim * math.log(2.0)) + offset


def discrete_bits_per_dim(log_prob: Array, data_shape: tuple[int, ...]) -> Array:
    """-log2 P(k) / D for a log-probability (or a lower bound on it) of the integer data k.

    The unit of `bits_per_dim`, for models whose likelihood or bound is already discrete,
    e.g. VDM's variational bound with its discretized decoder p(k | z_0) (Kingma et al.
    2021): bpd = -vlb_nats / (D ln 2). Both functions give log2 L for the uniform model
    (P(k) = L^-D here; the uniform density on the data cube there), so their numbers can sit
    in one column.

    Args:
      log_prob: [B] nats, log P(k) or a bound on it.
      data_shape: shape of one example (D = its product).

    Returns:
      [B] bits per dimension.
    """
    dim = math.prod(data_shape)
    if dim < 1:
        raise ValueError(f"data_shape must describe at least one dimension, got {data_shape}")
    return -jnp.asarray(log_prob) / (dim * math.log(2.0))


@eqx.filter_jit
def _batch_bpd(key, sde, score_fn, levels, scale, shift, num_levels, kwargs):
    key_u, key_ll = jax.random.split(key)
    u = jax.random.uniform(key_u, levels.shape, jnp.float32)
    x = scale * (levels.astype(jnp.float32) + u) / num_levels + shift
    logp, stats = log_likelihood(key_ll, sde, score_fn, x, **kwargs)
    stats.pop("estimator")
    return logp, stats["nfe"]


def dataset_bits_per_dim(key: Array, sde: sdes.SDE, score_fn: ScoreFn,
                         batches: Iterable[Any], *, scaler=None, num_levels: int | None = None,
                         num_passes: int = 5, pad_to: int | None = None,
                         **likelihood_kwargs) -> dict[str, float]:
    """Test-set bits/dim with repeated uniform dequantization (score_sde: 5 passes).

    Each integer batch is dequantized `num_passes` times with fresh noise u (and fresh
    Hutchinson probes), x = scaler((k + u) / L); each pass runs `log_likelihood` and
    `bits_per_dim`. An example's bpd is its mean over passes; the result is the mean over
    examples, with the standard error std / sqrt(N) of the per-example means (it covers
    both data sampling and dequantization/probe noise). One compilation per batch shape:
    `pad_to` makes every batch one shape.

    Args:
      key: PRNG key; pass p of batch i uses fold_in(fold_in(key, i), p).
      sde, score_fn: as for `log_likelihood`.
      batches: iterable (may be a one-shot iterator) of integer arrays [B, ...] in [0, L-1].
      scaler: as for `bits_per_dim`; an `sde_lab.data.Scaler` also supplies num_levels.
      num_levels: L; defaults to scaler.num_levels, else 256.
      num_passes: dequantization passes per batch.
      pad_to: if set, a batch of B < pad_to examples is solved padded to pad_to with copies
        of its first example, whose results are dropped (a copy, like any example of the
        batch, can move the shared adaptive step size, not what the others' values estimate).
      **likelihood_kwargs: options of `log_likelihood` (estimator, rtol, atol, t_min, ...).

    Returns:
      {"bpd": mean, "bpd_se": standard error, "num_examples": N, "num_passes": num_passes,
       "nfe": mean NFE per likelihood call}.
    """
    num_levels = _resolve_levels(scaler, num_levels)
    if not (isinstance(num_passes, int) and num_passes >= 1):
        raise ValueError(f"num_passes must be a positive int, got {num_passes!r}")
    if pad_to is not None and not (isinstance(pad_to, int) and pad_to >= 1):
        raise ValueError(f"pad_to must be None or a positive int, got {pad_to!r}")
    # log_likelihood's own defaults (one place to change them), overridden by the caller's.
    probe = {name: p.default for name, p in inspect.signature(log_likelihood).parameters.items()
             if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(likelihood_kwargs) - set(probe))
    if unknown:
        raise ValueError(f"unknown log_likelihood options {unknown}; valid: {sorted(probe)}")
    probe.update(likelihood_kwargs)
    _check_options(sde=sde, **probe)
    scale, shift = _affine_scale(scaler, num_levels)
    per_example, nfes = [], []
    for i, batch in enumerate(batches):
        levels = _check_levels(batch, num_levels)
        size = len(levels)
        if pad_to is not None:
            if size > pad_to:
                raise ValueError(f"batch {i} has {size} examples, more than pad_to={pad_to}")
            levels = np.concatenate([levels, np.repeat(levels[:1], pad_to - size, axis=0)])
        bpd_sum = 0.0
        for p in range(num_passes):
            k = jax.random.fold_in(jax.random.fold_in(key, i), p)
            logp, nfe = _batch_bpd(k, sde, score_fn, jnp.asarray(levels), scale, shift,
                                   num_levels, probe)
            bpd_sum = bpd_sum + np.asarray(bits_per_dim(logp[:size], levels.shape[1:],
                                                        num_levels, scaler), np.float64)
            nfes.append(int(nfe))
        per_example.append(bpd_sum / num_passes)
    if not per_example:
        raise ValueError("batches is empty")
    values = np.concatenate(per_example)
    se = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else float("nan")
    return {"bpd": float(values.mean()), "bpd_se": float(se), "num_examples": int(values.size),
            "num_passes": num_passes, "nfe": float(np.mean(nfes))}


def _resolve_levels(scaler, num_levels: int | None) -> int:
    from_scaler = getattr(scaler, "num_levels", None)
    if num_levels is None:
        num_levels = 256 if from_scaler is None else from_scaler
    elif from_scaler is not None and from_scaler != num_levels:
        raise ValueError(f"num_levels={num_levels} disagrees with scaler.num_levels={from_scaler}")
    if not (isinstance(num_levels, int) and num_levels >= 2):
        raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
    return num_levels


def _check_levels(batch, num_levels: int) -> np.ndarray:
    levels = np.asarray(batch)
    if levels.ndim < 2:
        raise ValueError(f"each batch must be [B, ...] integer levels, got shape {levels.shape}")
    if (not np.array_equal(levels, np.round(levels)) or levels.min() < 0
            or levels.max() >= num_levels):
        raise ValueError(f"batches must hold integers in [0, {num_levels - 1}] (undequantized "
                         f"levels); got values in [{levels.min()}, {levels.max()}]")
    return levels.astype(np.int32)
