"""Reverse-time samplers for any linear SDE and any score function, fully in-graph.

`make(name, **options)` returns

    sample_fn(key, sde, score_fn, shape) -> (x, stats)

with `x` of `shape` (batch first) and `stats["nfe"]` the number of score evaluations made
(an int32 scalar; one evaluation = one call of `score_fn` on the whole batch). Every sampler
runs inside `jax.jit(lambda key: sample_fn(key, sde, score_fn, shape))`: fixed-step
samplers are one `lax.scan` over the time grid, `ode` and `sra` are one diffrax solve.

Samplers only use the SDE's methods (`marginal`, `drift_diffusion`, `discretize`,
`transition`, `log_snr`, `t_from_log_snr`, `prior_sample`) and `sdes.reverse`, never its
type, so they work for VP, sub-VP, VE, cosine VP and any SDE added later. The notation is
alpha = mean_coeff(t), sigma = std(t), lambda = log(alpha / sigma) = log_snr / 2, and the
Tweedie denoiser x0_hat(x, t) = (x + sigma^2 score(x, t)) / alpha = E[x_0 | x_t = x].

| name               | method                                             | NFE          |
|--------------------|----------------------------------------------------|--------------|
| `euler_maruyama`   | reverse SDE, Euler-Maruyama (weak order 1)         | N            |
| `reverse_diffusion`| reverse of `sde.discretize` (score_sde)            | N            |
| `ancestral`        | exact Gaussian posterior q(x_s | x_t, x0_hat)      | N            |
| `ddim`             | DDIM (Song et al. 2021a), `eta` 0 = deterministic  | N            |
| `heun`             | EDM Algorithm 2, rho grid, optional churn (order 2)| 2N           |
| `dpm_solver++`     | DPM-Solver++(2M), lambda-uniform grid (order 2)    | N            |
| `pc`               | predictor + corrector (`langevin`, `annealed_langevin`) | N (p + n_steps_each) |
| `ode`              | probability-flow ODE, diffrax Tsit5/Dopri5 + PID   | adaptive     |
| `sra`              | reverse SDE, diffrax ShARK/SRA1 (additive noise)   | 2N           |

plus one evaluation when `denoise=True`. N is `num_steps`; `p` is the predictor's NFE.

Common options: `t_min` (default `sde.t_min`) is the last time reached; `denoise` (default
True) then replaces x by the Tweedie estimate x0_hat(x, t_min) (one more score evaluation):
it removes the N(0, sigma(t_min)^2) noise left at t_min, as score_sde's final
"noise removal" step does, and is EDM's final Euler step to sigma = 0.
Conditioning hooks, for inpainting, colorization and guidance:
`guidance_fn(x, t) -> [B, ...]` is added to the score at every evaluation (classifier
guidance: grad_x log p_t(y | x)); `project_fn(x, t, key) -> x` is applied after every
corrector and predictor step to x at time t ([B]), and after denoising with t = 0.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable

import diffrax
import jax
import jax.numpy as jnp
import lineax

from sde_lab import sdes
from sde_lab.sdes import SDE, expand_to

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
ProjectFn = Callable[[Array, Array, Array], Array]
SampleFn = Callable[[Array, SDE, ScoreFn, tuple], tuple[Array, dict]]


# ----------------------------------------------------------------------------------------
# Shared pieces.


def _bt(t: Array, x: Array) -> Array:
    """Scalar time -> per-example times [B] (score functions take t: [B])."""
    return jnp.full(x.shape[:1], t, dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class _Ctx:
    """What a step needs: the SDE and the (guided) score."""

    sde: SDE
    score: ScoreFn

    def x0(self, x: Array, t: Array) -> Array:
        """Tweedie denoiser E[x_0 | x_t = x] = (x + sigma^2 score) / alpha (1 NFE)."""
        mean_coeff, std = self.sde.marginal(t)
        return (x + std**2 * self.score(x, _bt(t, x))) / mean_coeff

    def sigma_edm(self, t: Array) -> Array:
        """EDM noise level of x / alpha: sigma / alpha = exp(-lambda)."""
        mean_coeff, std = self.sde.marginal(t)
        return std / mean_coeff

    def t_of_sigma_edm(self, sigma: Array) -> Array:
        return self.sde.t_from_log_snr(-2.0 * jnp.log(sigma))


def _guided(score_fn: ScoreFn, guidance_fn: ScoreFn | None) -> ScoreFn:
    if guidance_fn is None:
        return score_fn
    return lambda x, t: score_fn(x, t) + guidance_fn(x, t)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_positive_int(sampler: str, name: str, value: Any) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
           f"{sampler}: {name} must be a positive int, got {value!r}")


def _check_choice(sampler: str, name: str, value: Any, choices) -> None:
    _check(value in choices, f"{sampler}: unknown {name} '{value}'; available: "
           f"{sorted(choices)}")


_SDE_METHODS = ("marginal", "drift_diffusion", "prior_sample", "T")


def _resolve_t_min(sampler: str, sde: SDE, t_min: float | None, needs=()) -> float:
    """Checks the SDE offers what the sampler needs; returns t_min in (0, T)."""
    missing = [m for m in _SDE_METHODS + tuple(needs) if not hasattr(sde, m)]
    _check(not missing, f"{sampler}: the SDE {type(sde).__name__} lacks {missing}, which "
           f"this sampler needs")
    t_min = sde.t_min if t_min is None else t_min
    _check(0 < t_min < sde.T, f"{sampler}: need 0 < t_min < T, got t_min={t_min}, "
           f"T={sde.T}")
    return float(t_min)


def _finish(ctx: _Ctx, x: Array, t_last: Array, key: Array, denoise: bool,
            project_fn: ProjectFn | None) -> tuple[Array, int]:
    """Final Tweedie denoising (+1 NFE) and projection at t = 0."""
    if not denoise:
        return x, 0
    x = ctx.x0(x, t_last)
    if project_fn is not None:
        x = project_fn(x, jnp.zeros(x.shape[:1], x.dtype), key)
    return x, 1


# ----------------------------------------------------------------------------------------
# Time grids: num_steps + 1 decreasing times from sde.T to t_min.


def _grid_linear(ctx: _Ctx, num_steps: int, t_min: float, rho: float, dtype) -> Array:
    return jnp.linspace(ctx.sde.T, t_min, num_steps + 1, dtype=dtype)


def _grid_edm(ctx: _Ctx, num_steps: int, t_min: float, rho: float, dtype) -> Array:
    """Karras et al. 2022 eq. 5: sigma_i^(1/rho) linear between sigma_max and sigma_min,
    with sigma the EDM noise level sigma / alpha, mapped back to t through the log-SNR."""
    s_max = ctx.sigma_edm(jnp.asarray(ctx.sde.T, dtype))
    s_min = ctx.sigma_edm(jnp.asarray(t_min, dtype))
    u = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)
    sigma = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ts = ctx.t_of_sigma_edm(sigma)
    return ts.at[0].set(ctx.sde.T).at[-1].set(t_min)  # exact ends despite the round trip


def _grid_logsnr(ctx: _Ctx, num_steps: int, t_min: float, rho: float, dtype) -> Array:
    """Lu et al. 2022: uniform in lambda = log_snr / 2 (their recommended grid)."""
    lam = jnp.linspace(ctx.sde.log_snr(jnp.asarray(ctx.sde.T, dtype)),
                       ctx.sde.log_snr(jnp.asarray(t_min, dtype)), num_steps + 1)
    ts = ctx.sde.t_from_log_snr(lam)
    return ts.at[0].set(ctx.sde.T).at[-1].set(t_min)


_GRIDS = {"linear": _grid_linear, "edm": _grid_edm, "logsnr": _grid_logsnr}


# ----------------------------------------------------------------------------------------
# Predictors: one step from time t to s < t. step(ctx, key, x, carry, t, s) -> (x, carry),
# t and s scalars; `carry` is state kept between steps (multistep methods).


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A one-step (or multistep, through `carry`) reverse-time update.

    Attributes:
      nfe: score evaluations per step.
      step: (ctx, key, x, carry, t, s) -> (x, carry).
      init: x -> initial carry.
      grid: default time grid ("linear", "edm" or "logsnr").
    """

    nfe: int
    step: Callable
    init: Callable[[Array], Any] = lambda x: ()
    grid: str = "linear"


def _euler_maruyama(num_steps: int) -> Predictor:
    """x_s = x_t - [f - g^2 score] dt + g sqrt(dt) z, dt = t - s (weak order 1)."""

    def step(ctx, key, x, carry, t, s):
        drift, g = sdes.reverse(ctx.sde, ctx.score).drift_diffusion(x, _bt(t, x))
        dt = t - s
        z = jax.random.normal(key, x.shape, x.dtype)
        return x - drift * dt + expand_to(g, x) * jnp.sqrt(dt) * z, carry

    return Predictor(1, step)


def _reverse_diffusion(num_steps: int) -> Predictor:
    """score_sde's reverse diffusion: x_s = x_t - F + G z with the forward chain's
    (F, G) = sde.discretize and F shifted by -G^2 score (DDPM for VP, SMLD for VE)."""

    def step(ctx, key, x, carry, t, s):
        rev_f, big_g = sdes.reverse(ctx.sde, ctx.score).discretize(x, _bt(t, x), t - s)
        z = jax.random.normal(key, x.shape, x.dtype)
        return x - rev_f + expand_to(big_g, x) * z, carry

    return Predictor(1, step)


def _posterior(ctx, t, s):
    """q(x_s | x_t, x_0) = N(c_x x_t + c_0 x_0, var): returns (c_x, c_0, std), from the
    transition x_t = a x_s + b z and the marginal x_s = alpha_s x_0 + sigma_s z."""
    a, b = ctx.sde.transition(s, t)
    mean_s, std_s = ctx.sde.marginal(s)
    std_t2 = a**2 * std_s**2 + b**2
    return a * std_s**2 / std_t2, mean_s * b**2 / std_t2, b * std_s * jax.lax.rsqrt(std_t2)


def _ancestral(num_steps: int) -> Predictor:
    """x_s ~ q(x_s | x_t, x0_hat(x_t, t)): DDPM's posterior step for VP (Ho et al. 2020,
    eq. 7) and SMLD's ancestral step x_t + (sigma_t^2 - sigma_s^2) score for VE."""

    def step(ctx, key, x, carry, t, s):
        c_x, c_0, std = _posterior(ctx, t, s)
        z = jax.random.normal(key, x.shape, x.dtype)
        return c_x * x + c_0 * ctx.x0(x, t) + std * z, carry

    return Predictor(1, step)


def _ddim(num_steps: int, eta: float = 0.0) -> Predictor:
    """DDIM (Song et al. 2021a, eq. 12) in (alpha, sigma) form:
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z, c = eta * posterior std.
    eta = 0 is deterministic (first-order PF-ODE solver); eta = 1 equals `ancestral`."""

    def step(ctx, key, x, carry, t, s):
        mean_t, std_t = ctx.sde.marginal(t)
        mean_s, std_s = ctx.sde.marginal(s)
        eps = -std_t * ctx.score(x, _bt(t, x))
        x0 = (x - std_t * eps) / mean_t
        x_new = mean_s * x0
        if eta == 0:
            return x_new + std_s * eps, carry
        c = eta * _posterior(ctx, t, s)[2]
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_new + jnp.sqrt(jnp.maximum(std_s**2 - c**2, 0.0)) * eps + c * z, carry

    return Predictor(1, step)


def _heun(num_steps: int, churn: float = 0.0, s_tmin: float = 0.0,
          s_tmax: float = float("inf"), s_noise: float = 1.0) -> Predictor:
    """EDM Algorithm 2 (Karras et al. 2022) in x~ = x / alpha, sigma = sigma_t / alpha_t,
    where every linear SDE's PF ODE is dx~/dsigma = (x~ - D(x~, sigma)) / sigma.
    Churn: gamma = min(churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax] raises the
    noise level to sigma (1 + gamma) by adding fresh noise (s_noise scales it). 2 NFE/step;
    deterministic and second order when churn = 0."""
    gamma_max = min(churn / num_steps, math.sqrt(2) - 1)

    def denoise(ctx, x_tilde, t):
        mean_coeff = ctx.sde.marginal(t)[0]
        return ctx.x0(mean_coeff * x_tilde, t)

    def step(ctx, key, x, carry, t, s):
        sigma_t, sigma_s = ctx.sigma_edm(t), ctx.sigma_edm(s)
        x_tilde = x / ctx.sde.marginal(t)[0]
        if gamma_max > 0:
            gamma = jnp.where((sigma_t >= s_tmin) & (sigma_t <= s_tmax), gamma_max, 0.0)
            sigma_hat = sigma_t * (1 + gamma)
            z = jax.random.normal(key, x.shape, x.dtype)
            x_tilde = x_tilde + jnp.sqrt(sigma_hat**2 - sigma_t**2) * s_noise * z
            sigma_t, t = sigma_hat, ctx.t_of_sigma_edm(sigma_hat)
        d = (x_tilde - denoise(ctx, x_tilde, t)) / sigma_t
        x_euler = x_tilde + (sigma_s - sigma_t) * d
        d_s = (x_euler - denoise(ctx, x_euler, s)) / sigma_s
        x_tilde = x_tilde + (sigma_s - sigma_t) * 0.5 * (d + d_s)
        return ctx.sde.marginal(s)[0] * x_tilde, carry

    return Predictor(2, step, grid="edm")


def _dpm_solver_pp(num_steps: int, lower_order_final: bool = True) -> Predictor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), data prediction, 1 NFE/step:
    x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) D, h = lambda_s - lambda_t,
    D = (1 + 1/(2r)) x0_hat_t - 1/(2r) x0_hat_prev, r = h_prev / h; the first step (and,
    with lower_order_final and num_steps < 15, the last, as in the authors' code) uses
    D = x0_hat_t. Deterministic, second order."""
    first_order_last = lower_order_final and num_steps < 15

    def step(ctx, key, x, carry, t, s):
        x0_prev, h_prev, i = carry
        mean_t, std_t = ctx.sde.marginal(t)
        mean_s, std_s = ctx.sde.marginal(s)
        h = 0.5 * (ctx.sde.log_snr(s) - ctx.sde.log_snr(t))
        x0 = ctx.x0(x, t)
        half_inv_r = 0.5 * h / jnp.where(i == 0, h, h_prev)
        first = (i == 0) | (first_order_last & (i == num_steps - 1))
        d = jnp.where(first, x0, (1 + half_inv_r) * x0 - half_inv_r * x0_prev)
        x = (std_s / std_t) * x - mean_s * jnp.expm1(-h) * d
        return x, (x0, h, i + 1)

    def init(x):
        return jnp.zeros_like(x), jnp.zeros((), x.dtype), jnp.zeros((), jnp.int32)

    return Predictor(1, step, init, grid="logsnr")


def _no_predictor(num_steps: int) -> Predictor:
    """Stays at the same x (corrector-only sampling, e.g. NCSN's annealed Langevin)."""
    return Predictor(0, lambda ctx, key, x, carry, t, s: (x, carry))


_PREDICTORS: dict[str, Callable[..., Predictor]] = {
    "euler_maruyama": _euler_maruyama,
    "reverse_diffusion": _reverse_diffusion,
    "ancestral": _ancestral,
    "ddim": _ddim,
    "heun": _heun,
    "dpm_solver++": _dpm_solver_pp,
    "none": _no_predictor,
}


# ----------------------------------------------------------------------------------------
# Correctors: n_steps_each Langevin steps targeting p_t. corrector(ctx, key, x, t, s) -> x.


def _langevin_step_scale(ctx, t, s):
    """score_sde's alpha_i: 1 - beta_i = a(s, t)^2 of the forward transition (1 for VE)."""
    return ctx.sde.transition(s, t)[0] ** 2


def _langevin(snr: float, n_steps_each: int):
    """Langevin MCMC with the signal-to-noise step size of Song et al. 2021 (Algorithm 5):
    eps = 2 alpha_i (snr ||z|| / ||score||)^2 (batch-mean norms), x += eps score +
    sqrt(2 eps) z. n_steps_each NFE per time step."""

    def corrector(ctx, key, x, t, s):
        alpha = _langevin_step_scale(ctx, t, s)

        def body(x, k):
            grad = ctx.score(x, _bt(t, x))
            z = jax.random.normal(k, x.shape, x.dtype)
            grad_norm = jnp.mean(jnp.linalg.norm(grad.reshape(x.shape[0], -1), axis=-1))
            noise_norm = jnp.mean(jnp.linalg.norm(z.reshape(x.shape[0], -1), axis=-1))
            step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
            return x + step * grad + jnp.sqrt(2 * step) * z, None

        return jax.lax.scan(body, x, jax.random.split(key, n_steps_each))[0]

    return corrector


def _annealed_langevin(snr: float, n_steps_each: int):
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1 as in score_sde):
    eps = 2 alpha_i (snr sigma_t)^2, x += eps score + sqrt(2 eps) z."""

    def corrector(ctx, key, x, t, s):
        step = 2 * _langevin_step_scale(ctx, t, s) * (snr * ctx.sde.marginal(t)[1]) ** 2

        def body(x, k):
            z = jax.random.normal(k, x.shape, x.dtype)
            return x + step * ctx.score(x, _bt(t, x)) + jnp.sqrt(2 * step) * z, None

        return jax.lax.scan(body, x, jax.random.split(key, n_steps_each))[0]

    return corrector


_CORRECTORS = {"langevin": _langevin, "annealed_langevin": _annealed_langevin, "none": None}


# ----------------------------------------------------------------------------------------
# Fixed-grid driver: one lax.scan over (t_i, t_{i+1}).


def _fixed_grid(name: str, predictor: Predictor, num_steps: int, corrector=None,
                corrector_nfe: int = 0, t_min: float | None = None, denoise: bool = True,
                grid: str | None = None, rho: float = 7.0, project_fn: ProjectFn | None = None,
                guidance_fn: ScoreFn | None = None, needs=()) -> SampleFn:
    grid = predictor.grid if grid is None else grid
    _check_choice(name, "grid", grid, _GRIDS)
    _check(rho > 0, f"{name}: rho must be > 0, got {rho}")

    def sample_fn(key, sde, score_fn, shape):
        tmin = _resolve_t_min(name, sde, t_min, needs)
        ctx = _Ctx(sde, _guided(score_fn, guidance_fn))
        key_prior, key_steps, key_final = jax.random.split(key, 3)
        x = sde.prior_sample(key_prior, tuple(shape))
        ts = _GRIDS[grid](ctx, num_steps, tmin, rho, x.dtype)

        def body(state, inputs):
            x, carry = state
            t, s, k = inputs
            k_corr, k_proj_c, k_pred, k_proj_p = jax.random.split(k, 4)
            if corrector is not None:
                x = corrector(ctx, k_corr, x, t, s)
                if project_fn is not None:
                    x = project_fn(x, _bt(t, x), k_proj_c)
            x, carry = predictor.step(ctx, k_pred, x, carry, t, s)
            if project_fn is not None:
                x = project_fn(x, _bt(s, x), k_proj_p)
            return (x, carry), None

        keys = jax.random.split(key_steps, num_steps)
        (x, _), _ = jax.lax.scan(body, (x, predictor.init(x)), (ts[:-1], ts[1:], keys))
        x, extra = _finish(ctx, x, ts[-1], key_final, denoise, project_fn)
        nfe = num_steps * (predictor.nfe + corrector_nfe) + extra
        return x, {"nfe": jnp.asarray(nfe, jnp.int32)}

    return sample_fn


def _single(name: str, needs=()):
    """A sampler made of one predictor on its default grid, no corrector."""

    def factory(num_steps, t_min, denoise, grid, project_fn, guidance_fn,
                **predictor_options) -> SampleFn:
        _check_positive_int(name, "num_steps", num_steps)
        return _fixed_grid(name, _PREDICTORS[name](num_steps, **predictor_options), num_steps,
                           t_min=t_min, denoise=denoise, grid=grid, project_fn=project_fn,
                           guidance_fn=guidance_fn, needs=needs)

    return factory


def euler_maruyama(num_steps: int = 1000, t_min: float | None = None, denoise: bool = True,
                   grid: str = "linear", project_fn: ProjectFn | None = None,
                   guidance_fn: ScoreFn | None = None) -> SampleFn:
    """Euler-Maruyama on the reverse SDE dx = [f - g^2 score] dt + g dw_bar (Song et al.
    2021, eq. 6), by default on a uniform grid from T to t_min. Weak order 1; N (+1) NFE.
    `grid` ("linear", "logsnr", "edm") applies to every fixed-step sampler."""
    return _single("euler_maruyama")(num_steps, t_min, denoise, grid, project_fn,
                                     guidance_fn)


def reverse_diffusion(num_steps: int = 1000, t_min: float | None = None,
                      denoise: bool = True, grid: str = "linear",
                      project_fn: ProjectFn | None = None,
                      guidance_fn: ScoreFn | None = None) -> SampleFn:
    """score_sde's reverse-diffusion predictor: the reverse of `sde.discretize`'s chain on a
    uniform grid (DDPM chain for VP, SMLD for VE, EM otherwise). N (+1) NFE."""
    return _single("reverse_diffusion", ("discretize",))(
        num_steps, t_min, denoise, grid, project_fn, guidance_fn)


def ancestral(num_steps: int = 1000, t_min: float | None = None, denoise: bool = True,
              grid: str = "linear", project_fn: ProjectFn | None = None,
              guidance_fn: ScoreFn | None = None) -> SampleFn:
    """Ancestral sampling from the exact Gaussian posterior q(x_s | x_t, x0_hat) given by
    `sde.transition` and the marginal, with the Tweedie x0_hat, on a uniform grid.
    DDPM sampling for VP, SMLD ancestral sampling for VE. N (+1) NFE."""
    return _single("ancestral", ("transition",))(
        num_steps, t_min, denoise, grid, project_fn, guidance_fn)


def ddim(num_steps: int = 50, eta: float = 0.0, t_min: float | None = None,
         denoise: bool = True, grid: str = "linear", project_fn: ProjectFn | None = None,
         guidance_fn: ScoreFn | None = None) -> SampleFn:
    """DDIM (Song, Meng & Ermon 2021) on a uniform time grid; eta = 0 is deterministic, eta
    = 1 is ancestral sampling. N (+1) NFE."""
    _check(eta >= 0, f"ddim: eta must be >= 0, got {eta}")
    return _single("ddim", ("transition",))(
        num_steps, t_min, denoise, grid, project_fn, guidance_fn, eta=float(eta))


def heun(num_steps: int = 18, rho: float = 7.0, churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = float("inf"), s_noise: float = 1.0, t_min: float | None = None,
         denoise: bool = True, grid: str = "edm", project_fn: ProjectFn | None = None,
         guidance_fn: ScoreFn | None = None) -> SampleFn:
    """EDM's second-order Heun sampler (Karras et al. 2022, Algorithms 1-2) for any linear
    SDE, on the rho-spaced grid of sigma = std / mean_coeff from T to t_min.

    NFE = 2 num_steps (+1 with denoise, which is EDM's final Euler step to sigma = 0: EDM's
    N = 18 levels / 35 NFE are num_steps = 17 here). Deterministic when churn = 0, then
    global order 2. Churn options as in EDM Table 5 (S_churn, S_tmin, S_tmax, S_noise).
    """
    _check_positive_int("heun", "num_steps", num_steps)
    _check(churn >= 0 and s_noise >= 0, f"heun: churn and s_noise must be >= 0, got "
           f"churn={churn}, s_noise={s_noise}")
    predictor = _heun(num_steps, churn, s_tmin, s_tmax, s_noise)
    return _fixed_grid("heun", predictor, num_steps, t_min=t_min, denoise=denoise, rho=rho,
                       grid=grid, project_fn=project_fn, guidance_fn=guidance_fn,
                       needs=("log_snr", "t_from_log_snr"))


def dpm_solver_pp(num_steps: int = 20, grid: str = "logsnr", lower_order_final: bool = True,
                  t_min: float | None = None, denoise: bool = True,
                  project_fn: ProjectFn | None = None,
                  guidance_fn: ScoreFn | None = None) -> SampleFn:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep, second
    order, deterministic, 1 NFE per step (+1 with denoise). `grid`: "logsnr" (uniform in
    lambda, the paper's choice for pixel-space models at low resolution), "linear" (uniform
    t) or "edm" (rho = 7)."""
    _check_positive_int("dpm_solver++", "num_steps", num_steps)
    _check_choice("dpm_solver++", "grid", grid, _GRIDS)
    return _fixed_grid("dpm_solver++", _dpm_solver_pp(num_steps, lower_order_final),
                       num_steps, t_min=t_min, denoise=denoise, grid=grid,
                       project_fn=project_fn, guidance_fn=guidance_fn,
                       needs=("log_snr", "t_from_log_snr"))


def pc(predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
       n_steps_each: int = 1, num_steps: int = 1000, t_min: float | None = None,
       denoise: bool = True, grid: str | None = None, predictor_options: dict | None = None,
       project_fn: ProjectFn | None = None, guidance_fn: ScoreFn | None = None) -> SampleFn:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1): at each grid time t,
    `n_steps_each` corrector steps targeting p_t, then one predictor step to the next time.

    Args:
      predictor: any of `predictors()` ("none" = corrector only, NCSN's sampler).
      corrector: "langevin" (snr step size, Algorithm 5), "annealed_langevin" (NCSN) or
        "none".
      snr: corrector signal-to-noise ratio (score_sde: 0.16 for VE CIFAR-10, 0.01 for VP).
      grid: time grid, default the predictor's own ("linear", "edm" or "logsnr").
      predictor_options: extra options of the predictor (e.g. {"eta": 1.0} for ddim).

    NFE = num_steps * (predictor NFE + n_steps_each for a corrector) (+1 with denoise).
    """
    _check_choice("pc", "predictor", predictor, _PREDICTORS)
    _check_choice("pc", "corrector", corrector, _CORRECTORS)
    _check_positive_int("pc", "num_steps", num_steps)
    _check_positive_int("pc", "n_steps_each", n_steps_each)
    _check(snr > 0, f"pc: snr must be > 0, got {snr}")
    pred = _PREDICTORS[predictor](num_steps, **(predictor_options or {}))
    corr = None if corrector == "none" else _CORRECTORS[corrector](snr, n_steps_each)
    return _fixed_grid("pc", pred, num_steps, corrector=corr,
                       corrector_nfe=0 if corr is None else n_steps_each, t_min=t_min,
                       denoise=denoise, grid=grid, project_fn=project_fn,
                       guidance_fn=guidance_fn, needs=("transition",))


# ----------------------------------------------------------------------------------------
# diffrax samplers.

# NFE per step: Tsit5 and Dopri5 are FSAL 7-stage methods (6 new evaluations per attempted
# step, accepted or rejected), plus one evaluation before the first step (the tests count
# evaluations of the score independently to check this).
_ODE_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}


def ode(rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5", max_steps: int = 4096,
        t_min: float | None = None, denoise: bool = True,
        guidance_fn: ScoreFn | None = None) -> SampleFn:
    """Probability-flow ODE dx/dt = f - 1/2 g^2 score (Song et al. 2021, eq. 13) from T to
    t_min with an adaptive explicit Runge-Kutta method (diffrax Tsit5 or Dopri5, 5th order)
    and a PID step-size controller. Deterministic given the prior sample.

    stats: "nfe" = 6 (attempted steps) + 1 (+1 denoise), from diffrax's own step counts;
    "num_steps", "num_rejected_steps". A solve that needs more than `max_steps` steps
    raises at run time (diffrax's checked error).
    """
    _check_choice("ode", "solver", solver, _ODE_SOLVERS)
    _check(rtol > 0 and atol > 0, f"ode: rtol and atol must be > 0, got {rtol}, {atol}")
    _check_positive_int("ode", "max_steps", max_steps)

    def sample_fn(key, sde, score_fn, shape):
        tmin = _resolve_t_min("ode", sde, t_min)
        ctx = _Ctx(sde, _guided(score_fn, guidance_fn))
        key_prior, key_final = jax.random.split(key)
        x = sde.prior_sample(key_prior, tuple(shape))
        flow = sdes.reverse(sde, ctx.score, probability_flow=True)
        term = diffrax.ODETerm(lambda t, y, args: flow.drift_diffusion(y, _bt(t, y))[0])
        sol = diffrax.diffeqsolve(
            term, _ODE_SOLVERS[solver](), t0=sde.T, t1=tmin, dt0=None, y0=x,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps, saveat=diffrax.SaveAt(t1=True))
        x, extra = _finish(ctx, sol.ys[-1], jnp.asarray(tmin, x.dtype), key_final, denoise,
                           None)
        num_steps = sol.stats["num_steps"]
        nfe = 6 * num_steps + 1 + extra
        return x, {"nfe": nfe.astype(jnp.int32), "num_steps": num_steps,
                   "num_rejected_steps": sol.stats["num_rejected_steps"]}

    return sample_fn


# Both are two-stage stochastic Runge-Kutta methods for additive noise (2 drift evaluations
# per step): ShARK (Foster et al. 2023, strong order 1.5 with space-time Levy area) and SRA1
# (Roessler 2010).
_SRA_SOLVERS = {"shark": diffrax.ShARK, "sra1": diffrax.SRA1}


def sra(num_steps: int = 100, solver: str = "shark", grid: str = "linear",
        t_min: float | None = None, denoise: bool = True,
        guidance_fn: ScoreFn | None = None) -> SampleFn:
    """Reverse SDE with a stochastic Runge-Kutta method for additive noise (diffrax ShARK
    or SRA1), Brownian motion from a VirtualBrownianTree with space-time Levy area. The
    reverse SDE's noise is additive (g depends on t only); it is solved in reversed time
    tau = T - t: dy = -[f - g^2 score](y, T - tau) dtau + g(T - tau) dW, on the `grid`
    ("linear" in t by default; "logsnr" suits SDEs whose diffusion is stiff near T, such
    as cosine_vp with its default log_snr_min = -20).

    NFE = 2 num_steps (+1 denoise).
    """
    _check_positive_int("sra", "num_steps", num_steps)
    _check_choice("sra", "solver", solver, _SRA_SOLVERS)
    _check_choice("sra", "grid", grid, _GRIDS)

    def sample_fn(key, sde, score_fn, shape):
        tmin = _resolve_t_min("sra", sde, t_min, ("log_snr", "t_from_log_snr"))
        ctx = _Ctx(sde, _guided(score_fn, guidance_fn))
        key_prior, key_bm, key_final = jax.random.split(key, 3)
        x = sde.prior_sample(key_prior, tuple(shape))
        rev = sdes.reverse(sde, ctx.score)
        # The grid is static (it depends on the SDE's constants only): the Brownian tree's
        # resolution is set from its smallest step. StepTo takes exactly num_steps steps,
        # so diffrax's max_steps error check (a host callback) is not needed: throw=False.
        with jax.ensure_compile_time_eval():
            taus = sde.T - _GRIDS[grid](ctx, num_steps, tmin, 7.0, x.dtype)
            tol = float(jnp.min(jnp.diff(taus))) / 16

        def drift(tau, y, args):
            return -rev.drift_diffusion(y, _bt(sde.T - tau, y))[0]

        def diffusion(tau, y, args):
            g = sde.drift_diffusion(y, _bt(sde.T - tau, y))[1]
            return lineax.DiagonalLinearOperator(expand_to(g, y) * jnp.ones_like(y))

        bm = diffrax.VirtualBrownianTree(
            taus[0], taus[-1], tol=tol, shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            key=key_bm, levy_area=diffrax.SpaceTimeLevyArea)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        sol = diffrax.diffeqsolve(terms, _SRA_SOLVERS[solver](), t0=taus[0], t1=taus[-1],
                                  dt0=None, y0=x, max_steps=num_steps + 1,
                                  stepsize_controller=diffrax.StepTo(ts=taus),
                                  saveat=diffrax.SaveAt(t1=True), throw=False)
        x, extra = _finish(ctx, sol.ys[-1], jnp.asarray(tmin, x.dtype), key_final, denoise,
                           None)
        return x, {"nfe": jnp.asarray(2 * num_steps + extra, jnp.int32)}

    return sample_fn


# ----------------------------------------------------------------------------------------
# Registry.

_REGISTRY: dict[str, Callable[..., SampleFn]] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
    "pc": pc,
    "ode": ode,
    "sra": sra,
    "ddim": ddim,
    "heun": heun,
    "dpm_solver++": dpm_solver_pp,
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def predictors() -> list[str]:
    return sorted(_PREDICTORS)


def correctors() -> list[str]:
    return sorted(_CORRECTORS)


def make(name: str, **options) -> SampleFn:
    """Builds the sampler registered as `name` with its keyword options (see each factory).

    Raises:
      ValueError: unknown name or option (listing the valid ones), or an invalid value.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler '{name}'; available: {available()}")
    factory = _REGISTRY[name]
    valid = list(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"sampler '{name}': unknown options {unknown}; valid options: {valid}")
    return factory(**options)
