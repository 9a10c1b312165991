"""Samplers built on diffrax: the adaptive probability-flow ODE and stochastic
Runge-Kutta for the reverse SDE."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import lineax

from sde_lab import sdes
from sde_lab.samplers.common import (GRIDS, Ctx, SampleFn, ScoreFn, bt, check, check_choice,
                                     check_positive_int, finish, guided, resolve_t_min,
                                     time_grid)
from sde_lab.sdes import expand_to

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
    check_choice("ode", "solver", solver, _ODE_SOLVERS)
    check(rtol > 0 and atol > 0, f"ode: rtol and atol must be > 0, got {rtol}, {atol}")
    check_positive_int("ode", "max_steps", max_steps)

    def sample_fn(key, sde, score_fn, shape):
        tmin = resolve_t_min("ode", sde, t_min)
        ctx = Ctx(sde, guided(score_fn, guidance_fn))
        key_prior, key_final = jax.random.split(key)
        x = sde.prior_sample(key_prior, tuple(shape))
        flow = sdes.reverse(sde, ctx.score, probability_flow=True)
        term = diffrax.ODETerm(lambda t, y, args: flow.drift_diffusion(y, bt(t, y))[0])
        sol = diffrax.diffeqsolve(
            term, _ODE_SOLVERS[solver](), t0=sde.T, t1=tmin, dt0=None, y0=x,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps, saveat=diffrax.SaveAt(t1=True))
        x, extra = finish(ctx, sol.ys[-1], jnp.asarray(tmin, x.dtype), key_final, denoise,
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
    check_positive_int("sra", "num_steps", num_steps)
    check_choice("sra", "solver", solver, _SRA_SOLVERS)
    check_choice("sra", "grid", grid, GRIDS)

    def sample_fn(key, sde, score_fn, shape):
        tmin = resolve_t_min("sra", sde, t_min, ("log_snr", "t_from_log_snr"))
        ctx = Ctx(sde, guided(score_fn, guidance_fn))
        key_prior, key_bm, key_final = jax.random.split(key, 3)
        x = sde.prior_sample(key_prior, tuple(shape))
        rev = sdes.reverse(sde, ctx.score)
        # The grid is static (it depends on the SDE's constants only): the Brownian tree's
        # resolution is set from its smallest step. StepTo takes exactly num_steps steps,
        # so diffrax's max_steps error check (a host callback) is not needed: throw=False.
        with jax.ensure_compile_time_eval():
            taus = sde.T - time_grid(ctx, grid, num_steps, tmin, dtype=x.dtype)
            tol = float(jnp.min(jnp.diff(taus))) / 16

        def drift(tau, y, args):
            return -rev.drift_diffusion(y, bt(sde.T - tau, y))[0]

        def diffusion(tau, y, args):
            g = sde.drift_diffusion(y, bt(sde.T - tau, y))[1]
            return lineax.DiagonalLinearOperator(expand_to(g, y) * jnp.ones_like(y))

        bm = diffrax.VirtualBrownianTree(
            taus[0], taus[-1], tol=tol, shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
            key=key_bm, levy_area=diffrax.SpaceTimeLevyArea)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        sol = diffrax.diffeqsolve(terms, _SRA_SOLVERS[solver](), t0=taus[0], t1=taus[-1],
                                  dt0=None, y0=x, max_steps=num_steps + 1,
                                  stepsize_controller=diffrax.StepTo(ts=taus),
                                  saveat=diffrax.SaveAt(t1=True), throw=False)
        x, extra = finish(ctx, sol.ys[-1], jnp.asarray(tmin, x.dtype), key_final, denoise,
                          None)
        return x, {"nfe": jnp.asarray(2 * num_steps + extra, jnp.int32)}

    return sample_fn
