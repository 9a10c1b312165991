"""Inverse problems with a score model: denoising, posterior sampling, inpainting,
colorization and image-to-image editing (SDEdit), as pure functions of (sde, score_fn).

Notation as in `sde_lab.samplers`: x_t = alpha(t) x_0 + sigma(t) z, alpha = mean_coeff,
sigma = std, and the Tweedie denoiser x0_hat(x, t) = (x + sigma^2 score(x, t)) / alpha =
E[x_0 | x_t = x]. Every linear SDE has x_t / alpha = x_0 + (sigma / alpha) z, so an
observation y = x_0 + s n (n ~ N(0, I)) *is* a point of the forward process, rescaled:
alpha(t_s) y has the law of x_{t_s} given x_0 at the time t_s where sigma / alpha = s.

| function           | method                                        | exact score gives       |
|--------------------|-----------------------------------------------|-------------------------|
| `denoise`          | Tweedie at t_s: y + s^2 alpha score(alpha y)  | E[x_0 | y] exactly      |
| `posterior_sample` | reverse SDE started at t_s from alpha y       | p(x_0 | y) (+ discr.)   |
| `inpaint`          | "replacement" (score_sde) or "guidance" (DPS) | see `inpaint`           |
| `colorize`         | replacement of the channel mean (score_sde)   | see `colorize`          |
| `sdedit`           | noise the guide to t0, reverse SDE back       | an editing heuristic    |

Samplers are chosen by name with their options (`sampler`, `sampler_options`, as for
`samplers.make`); the conditioning enters through the samplers' hooks (`project_fn`) or a
wrapped score function, and sampling from an intermediate time t_start < T runs the
unchanged sampler on `_StartAt(sde, t_start, x_start)`: the SDE restricted to [0, t_start]
whose "prior sample" is the given x_start (samplers build their grid from `sde.T` and start
from `sde.prior_sample`, and use nothing else of the SDE's identity).

Everything runs under `jax.jit` with `sde`, `score_fn` and the options closed over. Inputs
that fix the time grid (`noise_std` of `posterior_sample`, `t0`) must then be concrete
(Python numbers, closed over); masks are checked for shape always and for values
{0, 1} whenever they are concrete (close over them, or call the function outside jit, to get
the check). Bad input raises a one-line ValueError naming the argument before anything is
traced.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import samplers
from sde_lab.sdes import SDE, expand_to

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Projector = Callable[[Array], Array]

# Samplers of the reverse SDE itself (full noise): started from a given x_t they sample
# p(x_0 | x_t). Deterministic samplers (PF ODE, DDIM eta < 1, DPM-Solver, UniPC, Heun)
# transport marginals, not conditionals, and Langevin correctors target the unconditional
# p_t: neither samples a posterior from a fixed starting point.
POSTERIOR_SAMPLERS = ("euler_maruyama", "reverse_diffusion", "ancestral", "sra")
INPAINT_METHODS = ("replacement", "guidance")
_HOOKS = ("project_fn", "guidance_fn")


# ----------------------------------------------------------------------------------------
# Input checks (before tracing) and small helpers.


def _fail(fn: str, message: str) -> None:
    raise ValueError(f"{fn}: {message}")


def _concrete(value: Any) -> np.ndarray | None:
    """value as a NumPy array, or None when it is traced (its values are unknown)."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _concrete_scalar(fn: str, name: str, value: Any) -> float:
    """A number that fixes the time grid: must be a concrete scalar."""
    arr = _concrete(value)
    if arr is None:
        _fail(fn, f"{name} must be a concrete number (it sets the time grid); close over it "
              f"instead of passing it as a traced argument")
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
        _fail(fn, f"{name} must be a scalar number, got {value!r}")
    return float(arr)


def _edm_sigma(sde: SDE, t: float) -> float:
    """sigma(t) / alpha(t), evaluated eagerly."""
    with jax.ensure_compile_time_eval():
        mean_coeff, std = sde.marginal(jnp.asarray(t, jnp.float32))
        return float(std / mean_coeff)


def _check_noise_std(fn: str, sde: SDE, noise_std: Any, batch: int) -> None:
    """noise_std: scalar or [B], > 0 and within the SDE's noise levels sigma/alpha on
    [0, T] (VE cannot express noise below sigma_min, whose level t = 0 already has)."""
    arr = _concrete(noise_std)
    shape = np.shape(noise_std) if arr is None else arr.shape
    if shape not in ((), (batch,)):
        _fail(fn, f"noise_std must be a scalar or of shape [{batch}], got shape {shape}")
    if arr is None:
        return
    if not np.all(arr > 0):
        _fail(fn, f"noise_std must be > 0, got {arr.min() if arr.ndim else arr}")
    lo, hi = _edm_sigma(sde, 0.0), _edm_sigma(sde, sde.T)
    if np.any(arr < lo * (1 - 1e-6)) or np.any(arr > hi):
        _fail(fn, f"noise_std must lie within the SDE's noise levels sigma/alpha in "
              f"[{lo:.4g}, {hi:.4g}] (t = 0 to T), got {arr.min():.4g}..{arr.max():.4g}")


def _check_mask(fn: str, mask: Any, shape: tuple[int, ...], name: str = "mask") -> Array:
    """mask of shape [B, ...] = shape or [...] = shape[1:], values in {0, 1}; returns a
    bool array of `shape`."""
    mask_shape = tuple(np.shape(mask))
    if mask_shape not in (tuple(shape), tuple(shape[1:])):
        _fail(fn, f"{name} must have the shape of the data {tuple(shape)} or of one example "
              f"{tuple(shape[1:])}, got {mask_shape}")
    arr = _concrete(mask)
    if arr is not None and not np.all((arr == 0) | (arr == 1)):
        bad = np.unique(arr[(arr != 0) & (arr != 1)])[:3]
        _fail(fn, f"{name} must hold only 0 and 1 (1 = observed), got values such as "
              f"{bad.tolist()}")
    return jnp.broadcast_to(jnp.asarray(mask) == 1, shape)


def _check_batch(fn: str, name: str, x: Any) -> None:
    if np.ndim(x) < 2:
        _fail(fn, f"{name} must be [B, ...] with at least one data axis, got shape "
              f"{np.shape(x)}")


def noise_time(sde: SDE, noise_std: Array) -> Array:
    """The time t_s at which sigma(t) / alpha(t) = noise_std: t_from_log_snr(-2 log s)."""
    return sde.t_from_log_snr(-2.0 * jnp.log(jnp.asarray(noise_std, jnp.float32)))


def _bt(t: Array, x: Array) -> Array:
    """Scalar or [B] time -> [B] (score functions take t: [B])."""
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


class _StartAt:
    """`sde` restricted to [0, t_start], whose prior sample is the given x_start.

    A sampler run on it integrates the reverse process from t_start (its grid starts at
    `T` = t_start) and starts from x_start; every other attribute is the wrapped SDE's.
    """

    def __init__(self, sde: SDE, t_start: float, x_start: Array):
        self._sde, self.T, self._x_start = sde, float(t_start), x_start

    def prior_sample(self, key: Array, shape: tuple[int, ...]) -> Array:
        del key
        if tuple(shape) != self._x_start.shape:
            raise ValueError(f"shape {tuple(shape)} differs from the start point's "
                             f"{self._x_start.shape}")
        return self._x_start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sde, name)


def _make_sampler(fn: str, sampler: str, sampler_options: dict | None, **hooks):
    options = dict(sampler_options or {})
    taken = sorted(set(options) & set(_HOOKS))
    if taken:
        _fail(fn, f"sampler_options may not set {taken}: {fn} sets the sampler's hooks")
    hooks = {k: v for k, v in hooks.items() if v is not None}
    try:
        return samplers.make(sampler, **options, **hooks)
    except ValueError as e:
        raise ValueError(f"{fn}: {e}") from None


def _t_min(sde: SDE, sampler_options: dict | None) -> float:
    t_min = (sampler_options or {}).get("t_min")
    return float(sde.t_min if t_min is None else t_min)


def _reverse_from(fn: str, key: Array, sde: SDE, score_fn: ScoreFn, t_start: float,
                  x_start: Array, sampler: str, sampler_options: dict | None,
                  project_fn=None) -> tuple[Array, dict]:
    """Runs `sampler` from (t_start, x_start) down to its t_min (then its final denoising).
    If t_start <= t_min there is nothing to integrate: returns the Tweedie estimate at
    t_start (with denoise, the samplers' default) or x_start, in 1 or 0 NFE."""
    sample_fn = _make_sampler(fn, sampler, sampler_options, project_fn=project_fn)
    if t_start > _t_min(sde, sampler_options):
        x, stats = sample_fn(key, _StartAt(sde, t_start, x_start), score_fn, x_start.shape)
        return x, dict(stats)
    if not (sampler_options or {}).get("denoise", True):
        return x_start, {"nfe": jnp.asarray(0, jnp.int32)}
    mean_coeff, std = sde.marginal(_bt(t_start, x_start))
    x0 = (x_start + expand_to(std**2, x_start) * score_fn(x_start, _bt(t_start, x_start)))
    x0 = x0 / expand_to(mean_coeff, x_start)
    if project_fn is not None:
        x0 = project_fn(x0, jnp.zeros(x0.shape[:1], x0.dtype), key)
    return x0, {"nfe": jnp.asarray(1, jnp.int32)}


# ----------------------------------------------------------------------------------------
# Denoising.


def denoise(sde: SDE, score_fn: ScoreFn, y: Array, noise_std: float | Array) -> Array:
    """The posterior mean E[x_0 | y] for y = x_0 + noise_std * n, n ~ N(0, I) (Tweedie).

    With t_s the time where sigma / alpha = noise_std, x = alpha(t_s) y has the law of x_{t_s}
    given x_0, and E[x_0 | y] = E[x_0 | x_{t_s} = x] = (x + sigma^2 score(x, t_s)) / alpha
    = y + noise_std^2 alpha score(alpha y, t_s) (Efron 2011, "Tweedie's formula"). Exact
    for the exact score; the minimum-MSE estimate of x_0. Deterministic; 1 NFE.

    Args:
      sde: any linear SDE; t_s = sde.t_from_log_snr(-2 log noise_std).
      score_fn: score_fn(x [B, ...], t [B]) -> [B, ...].
      y: [B, ...] noisy observations.
      noise_std: scalar or [B] (per example), > 0, within the SDE's noise levels sigma/alpha
        (e.g. VE: [sigma_min, sigma_max]); may be traced (then unchecked).

    Returns:
      [B, ...] estimates of x_0.
    """
    _check_batch("denoise", "y", y)
    _check_noise_std("denoise", sde, noise_std, np.shape(y)[0])
    y = jnp.asarray(y)
    noise_std = jnp.asarray(noise_std, y.dtype)
    t = _bt(noise_time(sde, noise_std), y)
    mean_coeff = expand_to(sde.marginal(t)[0], y)
    s2 = expand_to(jnp.broadcast_to(noise_std, y.shape[:1]) ** 2, y)
    return y + s2 * mean_coeff * score_fn(mean_coeff * y, t)


def posterior_sample(key: Array, sde: SDE, score_fn: ScoreFn, y: Array, noise_std: float,
                     *, sampler: str = "ancestral",
                     sampler_options: dict | None = None) -> tuple[Array, dict]:
    """Samples x_0 ~ p(x_0 | y) for y = x_0 + noise_std * n: the reverse SDE from alpha y.

    Exactness: with t_s the time where sigma / alpha = noise_std, x_{t_s} := alpha(t_s) y
    has exactly the law of the forward process at t_s given x_0, so p(x_0 | y) =
    p(x_0 | x_{t_s}). The reverse-time SDE is the forward process run backwards, a Markov
    process whose transition from t_s to 0 is p(x_0 | x_{t_s}); started at x_{t_s} it
    therefore samples the posterior, with no guidance term. With the exact score the only
    errors are the sampler's discretization (as for unconditional sampling) and its final
    Tweedie step at t_min, which returns E[x_0 | x_{t_min}] and so drops a posterior
    variance of at most sigma(t_min)^2 / alpha^2 (1e-4 with score_sde's defaults). Only
    samplers of the reverse SDE qualify (`POSTERIOR_SAMPLERS`): deterministic samplers
    follow the probability-flow ODE, which maps x_{t_s} to one point.

    Args:
      key: PRNG key.
      sde, score_fn: as for `denoise`.
      y: [B, ...] noisy observations.
      noise_std: concrete scalar > 0 within the SDE's noise levels (it sets the grid).
      sampler: one of POSTERIOR_SAMPLERS.
      sampler_options: options of `samplers.make(sampler, ...)`, e.g. {"num_steps": 500};
        the grid spans [t_min, t_s], so num_steps are spent below t_s. If t_s <= t_min
        the result is the Tweedie mean (1 NFE): the posterior's spread is then below the
        noise any sampler leaves at t_min.

    Returns:
      x: [B, ...] posterior samples; stats: {"nfe", "t_start": t_s}.
    """
    fn = "posterior_sample"
    _check_batch(fn, "y", y)
    noise_std = _concrete_scalar(fn, "noise_std", noise_std)
    _check_noise_std(fn, sde, noise_std, np.shape(y)[0])
    if sampler not in POSTERIOR_SAMPLERS:
        _fail(fn, f"sampler '{sampler}' does not sample the reverse SDE's conditionals; "
              f"use one of {list(POSTERIOR_SAMPLERS)}")
    with jax.ensure_compile_time_eval():
        t_start = float(noise_time(sde, noise_std))
    y = jnp.asarray(y)
    x_start = sde.marginal(jnp.asarray(t_start, y.dtype))[0] * y
    x, stats = _reverse_from(fn, key, sde, score_fn, t_start, x_start, sampler,
                             sampler_options)
    return x, {**stats, "t_start": jnp.asarray(t_start, jnp.float32)}


# ----------------------------------------------------------------------------------------
# Linear observations y = P x_0 with an orthogonal projector P: inpainting (P = diag(mask))
# and colorization (P = projection on the channel mean).


def _replacement_fn(sde: SDE, y: Array, project: Projector):
    """score_sde's replacement: after every sampler step to time t, the observed component
    P x is replaced by a fresh draw of P x_t given x_0 = y: P(alpha(t) y + sigma(t) z)."""

    def project_fn(x, t, key):
        mean_coeff, std = sde.marginal(t)
        z = jax.random.normal(key, x.shape, x.dtype)
        target = expand_to(mean_coeff, x) * y + expand_to(std, x) * z
        return x + project(target - x)

    return project_fn


def _guided_score(sde: SDE, score_fn: ScoreFn, y: Array, project: Projector,
                  guidance_scale: float, data_var: float,
                  min_alpha: float = 0.0) -> ScoreFn:
    """score + scale * grad_x log N(y; P x0_hat(x, t), r_t^2) (reconstruction guidance).

    DPS (Chung et al. 2023) approximates p(y | x_t) by p(y | x_0 = x0_hat(x_t)). For a
    noiseless observation that density is degenerate, so its width is the posterior
    variance of x_0 given x_t for N(0, data_var I) data, r_t^2 = data_var sigma^2 /
    (alpha^2 data_var + sigma^2) (Pseudoinverse-guided DPS, Song et al. 2023). The gradient
    is J^T P (y - x0_hat) / r_t^2 with J = d x0_hat / dx = (I + sigma^2 d score / dx) /
    alpha: one VJP through the same score evaluation (about twice a plain NFE's cost).
    Where the mean coefficient alpha < `min_alpha` the plain score is returned (see
    `inpaint`).
    """

    def score(x, t):
        mean_coeff, std = sde.marginal(t)
        a, s2 = expand_to(mean_coeff, x), expand_to(std**2, x)
        score_x, vjp = jax.vjp(lambda x_: score_fn(x_, t), x)
        x0 = (x + s2 * score_x) / a
        r2 = data_var * s2 / (a**2 * data_var + s2)
        w = guidance_scale * project(y - x0) / r2
        if min_alpha > 0:
            w = w * (a >= min_alpha).astype(x.dtype)
        return score_x + (w + s2 * vjp(w)[0]) / a

    return score


def _observed_sampling(fn: str, key: Array, sde: SDE, score_fn: ScoreFn, y: Array,
                       project: Projector, pin: Callable[[Array], Array], method: str,
                       sampler: str, sampler_options: dict | None, guidance_scale: float,
                       data_var: float, guidance_min_alpha: float) -> tuple[Array, dict]:
    """Samples x_0 given P x_0 = y by `method`, from T, then pins P x = y."""
    if method not in INPAINT_METHODS:
        _fail(fn, f"unknown method '{method}'; available: {list(INPAINT_METHODS)}")
    if not guidance_scale >= 0:
        _fail(fn, f"guidance_scale must be >= 0, got {guidance_scale}")
    if not data_var > 0:
        _fail(fn, f"data_var must be > 0, got {data_var}")
    if not 0 <= guidance_min_alpha < 1:
        _fail(fn, f"guidance_min_alpha must be in [0, 1), got {guidance_min_alpha}")
    project_fn = _replacement_fn(sde, y, project) if method == "replacement" else None
    sample_fn = _make_sampler(fn, sampler, sampler_options, project_fn=project_fn)
    key_start, key_run = jax.random.split(key)
    x_start = sde.prior_sample(key_start, y.shape)
    if method == "replacement":
        # Start from x_T given the observation too (score_sde starts from y itself there).
        x_start = project_fn(x_start, _bt(sde.T, y), jax.random.fold_in(key_start, 1))
    else:
        score_fn = _guided_score(sde, score_fn, y, project, guidance_scale, data_var,
                                 guidance_min_alpha)
    x, stats = sample_fn(key_run, _StartAt(sde, sde.T, x_start), score_fn, y.shape)
    return pin(x), dict(stats)


def inpaint(key: Array, sde: SDE, score_fn: ScoreFn, y: Array, mask: Array, *,
            method: str = "replacement", sampler: str = "pc",
            sampler_options: dict | None = None, guidance_scale: float = 1.0,
            data_var: float = 1.0, guidance_min_alpha: float = 0.0) -> tuple[Array, dict]:
    """Fills in the unobserved entries of y (mask 0) from p(x_0 | observed entries).

    Observed entries (mask 1) are returned bit-exactly equal to y. Methods:

    * "replacement" (score_sde's inpainting, Song et al. 2021, App. I.2): sample the
      unconditional reverse process and, after every predictor and corrector step to time
      t, overwrite the observed entries with a fresh draw of alpha(t) y + sigma(t) z.
      Exact when observed and unobserved entries are independent under the data
      distribution (the unobserved ones then follow their own reverse process, whose
      score does not involve the observed ones). Biased otherwise: the unobserved entries
      see y only through the noisy x_t^obs, i.e. they follow the score of
      p_t(x_t^unobs | x_t^obs) instead of p_t(x_t^unobs | x_0^obs = y), so their
      conditional mean is shrunk toward the unconditional one and their spread is too
      wide (tests/test_inverse.py measures it on correlated Gaussians; Langevin correctors,
      as in the default "pc", reduce it without removing it).
    * "guidance" (reconstruction guidance, DPS-style: Chung et al. 2023; Ho et al. 2022):
      sample with the score plus guidance_scale * grad_x log N(y_obs; x0_hat_obs(x_t), r_t^2)
      with r_t^2 = data_var sigma^2 / (alpha^2 data_var + sigma^2) (see `_guided_score`).
      Exact (guidance_scale = 1) where p(x_0 | x_t) is Gaussian with covariance r_t^2 I
      on the observed entries, e.g. Gaussian data of covariance data_var I; where observed and
      unobserved entries are independent the unobserved ones get no guidance at all and
      are exact for any data_var. Biased otherwise (p(y | x_t) is approximated by a
      Gaussian around the posterior mean with a guessed width), typically far less than
      replacement; guidance_scale > 1 trades diversity for consistency as in DPS. Each
      NFE also takes one VJP through the score. With a learned network, guide only where
      the mean coefficient alpha(t) >= `guidance_min_alpha`: x0_hat = (x + sigma^2 score) /
      alpha and its Jacobian amplify the network's error by 1/alpha, so near T of a VP SDE
      (alpha = 0.0066 at T = 1 for beta in [0.1, 20]) the guidance term, which the exact
      posterior makes nearly zero there, is several times the score and feeds back until
      the sample overflows (digits: NaN for 98 of 100 examples with ancestral, and for all
      of 20 with DPM-Solver++, Euler-Maruyama and PC; finite with the guidance off above
      t = 0.9, 0.7 or 0.5, i.e. alpha < 0.017, 0.084, 0.28). VE and EDM (alpha = 1) are
      never cut. The runner's default is 0.1 (VP: t < 0.68).

    Args:
      key: PRNG key.
      sde, score_fn: as for `denoise`.
      y: [B, ...]; only the observed entries are read.
      mask: [B, ...] or [...] (one mask for the batch) of 0/1 or bool; 1 = observed.
      method: "replacement" or "guidance".
      sampler, sampler_options: as for `samplers.make` (score_sde: "pc", reverse diffusion
        + Langevin, 1000 steps). "replacement" needs a fixed-step sampler (one with
        `project_fn`); "guidance" works with any, `ode` included.
      guidance_scale, data_var: options of "guidance".
      guidance_min_alpha: "guidance" acts where alpha(t) >= guidance_min_alpha only (0: on
        all of [0, T], the method that is exact for Gaussian data).

    Returns:
      x: [B, ...] completed samples; stats: {"nfe"}.
    """
    fn = "inpaint"
    _check_batch(fn, "y", y)
    y = jnp.asarray(y)
    observed = _check_mask(fn, mask, y.shape)
    y = jnp.where(observed, y, 0.0)

    def project(v):
        return jnp.where(observed, v, 0.0)

    def pin(x):
        return jnp.where(observed, y, x)

    return _observed_sampling(fn, key, sde, score_fn, y, project, pin, method, sampler,
                              sampler_options, guidance_scale, data_var, guidance_min_alpha)


def colorize(key: Array, sde: SDE, score_fn: ScoreFn, gray: Array, *,
             method: str = "replacement", sampler: str = "pc",
             sampler_options: dict | None = None, channels: int = 3,
             guidance_scale: float = 1.0, data_var: float = 1.0,
             guidance_min_alpha: float = 0.0) -> tuple[Array, dict]:
    """Samples colour images whose channel mean equals the gray image (score_sde's method).

    score_sde decouples each pixel's C channel values with an orthonormal matrix whose first
    column is (1, ..., 1) / sqrt(C): that coordinate is sqrt(C) times the gray value, the
    other C - 1 carry the colour, and inpainting the first one is colorization. The same
    thing without the matrix: P v = (channel mean of v) broadcast over the channels is the
    orthogonal projection on that coordinate, and `method` ("replacement" or "guidance")
    acts on P exactly as `inpaint` does on the mask. "replacement" is exact when the colour
    coordinates are independent of the gray one under the data distribution and biased
    otherwise (see `inpaint`). The result's channel mean equals the gray value up to float
    rounding. Gray is the plain channel mean (score_sde's), not a luma weighting.

    Args:
      key: PRNG key.
      sde, score_fn: as for `denoise`; the score is over [B, ..., C] colour images.
      gray: [B, ..., C] (the channel mean is read; score_sde passes the gray image repeated
        over the channels) or [B, ..., 1] (repeated to `channels`).
      method, sampler, sampler_options, guidance_scale, data_var, guidance_min_alpha: as for
        `inpaint`.
      channels: number of colour channels when gray has one channel.

    Returns:
      x: [B, ..., C] colour samples; stats: {"nfe"}.
    """
    fn = "colorize"
    _check_batch(fn, "gray", gray)
    if not (isinstance(channels, int) and channels >= 2):
        _fail(fn, f"channels must be an int >= 2, got {channels!r}")
    gray = jnp.asarray(gray)
    if gray.shape[-1] == 1:
        gray = jnp.broadcast_to(gray, gray.shape[:-1] + (channels,))

    def project(v):
        return jnp.broadcast_to(jnp.mean(v, axis=-1, keepdims=True), v.shape)

    y = project(gray)

    def pin(x):
        return x + project(y - x)

    return _observed_sampling(fn, key, sde, score_fn, y, project, pin, method, sampler,
                              sampler_options, guidance_scale, data_var, guidance_min_alpha)


# ----------------------------------------------------------------------------------------
# Image-to-image.


def sdedit(key: Array, sde: SDE, score_fn: ScoreFn, x_guide: Array, t0: float, *,
           sampler: str = "euler_maruyama", sampler_options: dict | None = None,
           mask: Array | None = None) -> tuple[Array, dict]:
    """SDEdit (Meng et al. 2022): perturb the guide to time t0, then solve the reverse SDE.

    x_{t0} = alpha(t0) x_guide + sigma(t0) z, then `sampler` from t0 down to t_min (and its
    final denoising). t0 trades faithfulness to the guide (small t0) for realism (large
    t0; the paper uses 0.3-0.6). As t0 -> 0 the result tends to x_guide; at t0 = T, x_{t0}
    is (nearly) a prior sample and the result a sample of the data distribution. If t0 <=
    t_min the result is the Tweedie estimate at t0 (1 NFE). With `mask`, entries where it
    is 1 are kept equal to the guide, by replacement at every step (the paper's
    Algorithms 3 and 5) and exactly at the end. Any sampler works: the paper's reverse SDE
    (`euler_maruyama`, the default), or a deterministic one (noising is the only
    randomness); `pc` correctors pull toward the unconditional p_t and forget the guide
    faster.

    Args:
      key: PRNG key.
      sde, score_fn: as for `denoise`.
      x_guide: [B, ...] guide images (in the model's input space).
      t0: concrete number in (0, T].
      sampler, sampler_options: as for `samplers.make`; num_steps are spent on [t_min, t0].
      mask: optional [B, ...] or [...] of 0/1; 1 = keep the guide there (needs a
        fixed-step sampler).

    Returns:
      x: [B, ...] edited samples; stats: {"nfe", "t_start": t0}.
    """
    fn = "sdedit"
    _check_batch(fn, "x_guide", x_guide)
    t0 = _concrete_scalar(fn, "t0", t0)
    if not 0 < t0 <= sde.T:
        _fail(fn, f"t0 must be in (0, T] = (0, {sde.T}], got {t0}")
    x_guide = jnp.asarray(x_guide)
    project_fn = None
    if mask is not None:
        keep = _check_mask(fn, mask, x_guide.shape)
        project_fn = _replacement_fn(sde, x_guide, lambda v: jnp.where(keep, v, 0.0))
    key_noise, key_run = jax.random.split(key)
    mean_coeff, std = sde.marginal(jnp.asarray(t0, x_guide.dtype))
    x_start = mean_coeff * x_guide + std * jax.random.normal(key_noise, x_guide.shape,
                                                             x_guide.dtype)
    x, stats = _reverse_from(fn, key_run, sde, score_fn, t0, x_start, sampler,
                             sampler_options, project_fn)
    if mask is not None:
        x = jnp.where(keep, x_guide, x)
    return x, {**stats, "t_start": jnp.asarray(t0, jnp.float32)}


__all__ = ["INPAINT_METHODS", "POSTERIOR_SAMPLERS", "colorize", "denoise", "inpaint",
           "noise_time", "posterior_sample", "sdedit"]
