"""Predictors (one reverse-time step from t to s < t) and Langevin correctors.

A predictor is `step(ctx, key, x, carry, t, s) -> (x, carry)` with scalar times t > s and
`carry` the state kept between steps (multistep methods); a corrector is
`corrector(ctx, key, x, t, s) -> x`, a few MCMC steps targeting p_t.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sde_lab import sdes
from sde_lab.samplers.common import bt
from sde_lab.sdes import expand_to

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A one-step (or multistep, through `carry`) reverse-time update.

    Attributes:
      nfe: score evaluations per step.
      step: (ctx, key, x, carry, t, s) -> (x, carry).
      init: x -> initial carry.
      grid: default time grid ("linear", "edm" or "logsnr").
      validate: (sde, ts) -> None, raises ValueError where the step is undefined on the
        concrete grid ts [N + 1] (called before tracing).
    """

    nfe: int
    step: Callable
    init: Callable[[Array], Any] = lambda x: ()
    grid: str = "linear"
    validate: Callable[[Any, Array], None] = lambda sde, ts: None


def _euler_maruyama(num_steps: int) -> Predictor:
    """x_s = x_t - [f - g^2 score] dt + g sqrt(dt) z, dt = t - s (weak order 1)."""

    def step(ctx, key, x, carry, t, s):
        drift, g = sdes.reverse(ctx.sde, ctx.score).drift_diffusion(x, bt(t, x))
        dt = t - s
        z = jax.random.normal(key, x.shape, x.dtype)
        return x - drift * dt + expand_to(g, x) * jnp.sqrt(dt) * z, carry

    return Predictor(1, step)


def _reverse_diffusion(num_steps: int) -> Predictor:
    """score_sde's reverse diffusion: x_s = x_t - F + G z with the forward chain's
    (F, G) = sde.discretize and F shifted by -G^2 score (DDPM for VP, SMLD for VE)."""

    def step(ctx, key, x, carry, t, s):
        rev_f, big_g = sdes.reverse(ctx.sde, ctx.score).discretize(x, bt(t, x), t - s)
        z = jax.random.normal(key, x.shape, x.dtype)
        return x - rev_f + expand_to(big_g, x) * z, carry

    def validate(sde, ts):
        # A discrete chain can be undefined for large steps: DDPM's needs beta(t) dt < 1.
        ones = jnp.ones((1, 1), ts.dtype)
        f, g = jax.vmap(lambda t, dt: sde.discretize(ones, t[None], dt))(ts[:-1], ts[:-1] - ts[1:])
        if not (jnp.all(jnp.isfinite(f)) and jnp.all(jnp.isfinite(g))):
            raise ValueError(f"reverse_diffusion: sde.discretize of {type(sde).__name__} is "
                             f"undefined on this grid of {len(ts) - 1} steps (e.g. VP's DDPM "
                             f"chain needs beta(t) dt < 1); use more steps")

    return Predictor(1, step, validate=validate)


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
        eps = -std_t * ctx.score(x, bt(t, x))
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


PREDICTORS: dict[str, Callable[..., Predictor]] = {
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
            grad = ctx.score(x, bt(t, x))
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
            return x + step * ctx.score(x, bt(t, x)) + jnp.sqrt(2 * step) * z, None

        return jax.lax.scan(body, x, jax.random.split(key, n_steps_each))[0]

    return corrector


CORRECTORS = {"langevin": _langevin, "annealed_langevin": _annealed_langevin, "none": None}
