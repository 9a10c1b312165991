"""Shared pieces of the samplers: the step context (SDE + guided score, Tweedie
denoiser, EDM noise level), option checks, the final denoising step and the time grids."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sde_lab.sdes import SDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
ProjectFn = Callable[[Array, Array, Array], Array]
SampleFn = Callable[[Array, SDE, ScoreFn, tuple], tuple[Array, dict]]


def bt(t: Array, x: Array) -> Array:
    """Scalar time -> per-example times [B] (score functions take t: [B])."""
    return jnp.full(x.shape[:1], t, dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class Ctx:
    """What a step needs: the SDE and the (guided) score."""

    sde: SDE
    score: ScoreFn

    def x0(self, x: Array, t: Array) -> Array:
        """Tweedie denoiser E[x_0 | x_t = x] = (x + sigma^2 score) / alpha (1 NFE)."""
        mean_coeff, std = self.sde.marginal(t)
        return (x + std**2 * self.score(x, bt(t, x))) / mean_coeff

    def sigma_edm(self, t: Array) -> Array:
        """EDM noise level of x / alpha: sigma / alpha = exp(-lambda)."""
        mean_coeff, std = self.sde.marginal(t)
        return std / mean_coeff

    def t_of_sigma_edm(self, sigma: Array) -> Array:
        return self.sde.t_from_log_snr(-2.0 * jnp.log(sigma))


def guided(score_fn: ScoreFn, guidance_fn: ScoreFn | None) -> ScoreFn:
    if guidance_fn is None:
        return score_fn
    return lambda x, t: score_fn(x, t) + guidance_fn(x, t)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_positive_int(sampler: str, name: str, value: Any) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"{sampler}: {name} must be a positive int, got {value!r}")


def check_choice(sampler: str, name: str, value: Any, choices) -> None:
    check(value in choices, f"{sampler}: unknown {name} '{value}'; available: "
          f"{sorted(choices)}")


_SDE_METHODS = ("marginal", "drift_diffusion", "prior_sample", "T")


def resolve_t_min(sampler: str, sde: SDE, t_min: float | None, needs=()) -> float:
    """Checks the SDE offers what the sampler needs; returns t_min in (0, T)."""
    missing = [m for m in _SDE_METHODS + tuple(needs) if not hasattr(sde, m)]
    check(not missing, f"{sampler}: the SDE {type(sde).__name__} lacks {missing}, which "
          f"this sampler needs")
    t_min = sde.t_min if t_min is None else t_min
    check(0 < t_min < sde.T, f"{sampler}: need 0 < t_min < T, got t_min={t_min}, "
          f"T={sde.T}")
    return float(t_min)


def finish(ctx: Ctx, x: Array, t_last: Array, key: Array, denoise: bool,
           project_fn: ProjectFn | None, final: Callable | None = None) -> tuple[Array, int]:
    """Final denoising step (+1 NFE) and projection at t = 0. `final(ctx, key, x, t)`
    replaces the Tweedie denoiser x0_hat(x, t_last) (heun: EDM's last step, with churn)."""
    if not denoise:
        return x, 0
    if final is None:
        x = ctx.x0(x, t_last)
    else:
        x = final(ctx, jax.random.fold_in(key, 1), x, t_last)
    if project_fn is not None:
        x = project_fn(x, jnp.zeros(x.shape[:1], x.dtype), key)
    return x, 1


# ----------------------------------------------------------------------------------------
# Time grids: num_steps + 1 decreasing times from t_max to t_min (`time_grid` then starts
# them at sde.T).


def _grid_linear(ctx: Ctx, num_steps: int, t_max, t_min: float, rho: float, dtype) -> Array:
    return jnp.linspace(t_max, t_min, num_steps + 1, dtype=dtype)


def _grid_edm(ctx: Ctx, num_steps: int, t_max, t_min: float, rho: float, dtype) -> Array:
    """Karras et al. 2022 eq. 5: sigma_i^(1/rho) linear between sigma_max and sigma_min,
    with sigma the EDM noise level sigma / alpha, mapped back to t through the log-SNR."""
    s_max = ctx.sigma_edm(jnp.asarray(t_max, dtype))
    s_min = ctx.sigma_edm(jnp.asarray(t_min, dtype))
    u = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)
    sigma = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return ctx.t_of_sigma_edm(sigma)


def _grid_logsnr(ctx: Ctx, num_steps: int, t_max, t_min: float, rho: float, dtype) -> Array:
    """Lu et al. 2022: uniform in lambda = log_snr / 2 (their recommended grid)."""
    lam = jnp.linspace(ctx.sde.log_snr(jnp.asarray(t_max, dtype)),
                       ctx.sde.log_snr(jnp.asarray(t_min, dtype)), num_steps + 1)
    return ctx.sde.t_from_log_snr(lam)


GRIDS = {"linear": _grid_linear, "edm": _grid_edm, "logsnr": _grid_logsnr}


def time_grid(ctx: Ctx, grid: str, num_steps: int, t_min: float, rho: float = 7.0,
              sigma_max: float | None = None, dtype=jnp.float32) -> Array:
    """num_steps + 1 times from sde.T down to t_min, spaced by `grid`.

    sigma_max (EDM's sigma_max, in units of the EDM noise level sigma / alpha): the grid is
    laid out from t(sigma_max) instead of T and its first point is then replaced by T, so
    the first step jumps from T past t(sigma_max) and the other num_steps - 1 steps are
    spent where the data shape the flow. At noise levels far above the data's scale the
    denoiser is nearly constant (the data mean) and one step of an exponential integrator
    is nearly exact there; where that starts depends on the data (the benchmark's 2-D
    mixture: sigma ~ 10; EDM uses 80 for images in [-1, 1]). None (default): from T.
    """
    t_max = jnp.asarray(ctx.sde.T, dtype)
    if sigma_max is not None:
        t_max = jnp.minimum(t_max, ctx.t_of_sigma_edm(jnp.asarray(sigma_max, dtype)))
    ts = GRIDS[grid](ctx, num_steps, t_max, t_min, rho, dtype)
    return ts.at[0].set(ctx.sde.T).at[-1].set(t_min)  # exact ends despite round trips
