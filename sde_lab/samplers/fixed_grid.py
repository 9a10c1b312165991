"""Fixed-step samplers: one `lax.scan` over a time grid of (corrector +) predictor steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sde_lab.samplers.common import (GRIDS, Ctx, ProjectFn, SampleFn, ScoreFn, bt, check,
                                     check_choice, check_positive_int, finish, guided,
                                     resolve_t_min, time_grid)
from sde_lab.samplers.steps import CORRECTORS, PREDICTORS, Predictor


def fixed_grid(name: str, predictor: Predictor, num_steps: int, corrector=None,
               corrector_nfe: int = 0, t_min: float | None = None, denoise: bool = True,
               grid: str | None = None, rho: float = 7.0, sigma_max: float | None = None,
               project_fn: ProjectFn | None = None, guidance_fn: ScoreFn | None = None,
               needs=()) -> SampleFn:
    """The sampler that scans (corrector, project, predictor, project) over the grid's
    num_steps intervals from T to t_min, then denoises. `needs`: SDE methods it uses."""
    grid = predictor.grid if grid is None else grid
    check_choice(name, "grid", grid, GRIDS)
    check(rho > 0, f"{name}: rho must be > 0, got {rho}")
    check(sigma_max is None or sigma_max > 0,
          f"{name}: sigma_max must be > 0 or None, got {sigma_max}")

    def sample_fn(key, sde, score_fn, shape):
        tmin = resolve_t_min(name, sde, t_min, needs)
        ctx = Ctx(sde, guided(score_fn, guidance_fn))
        key_prior, key_steps, key_final = jax.random.split(key, 3)
        x = sde.prior_sample(key_prior, tuple(shape))
        # The grid depends on the SDE's constants only: compute it eagerly, so that a step
        # that is undefined on it fails here with a clear message.
        with jax.ensure_compile_time_eval():
            if sigma_max is not None:
                s_min = float(ctx.sigma_edm(jnp.asarray(tmin, x.dtype)))
                check(sigma_max > s_min, f"{name}: sigma_max={sigma_max} must exceed the "
                      f"noise level sigma/alpha = {s_min:.4g} at t_min={tmin}")
            ts = time_grid(ctx, grid, num_steps, tmin, rho, sigma_max, x.dtype)
            predictor.validate(sde, ts)

        def body(state, inputs):
            x, carry = state
            t, s, k = inputs
            k_corr, k_proj_c, k_pred, k_proj_p = jax.random.split(k, 4)
            if corrector is not None:
                x = corrector(ctx, k_corr, x, t, s)
                if project_fn is not None:
                    x = project_fn(x, bt(t, x), k_proj_c)
            x, carry = predictor.step(ctx, k_pred, x, carry, t, s)
            if project_fn is not None:
                x = project_fn(x, bt(s, x), k_proj_p)
            return (x, carry), None

        keys = jax.random.split(key_steps, num_steps)
        (x, _), _ = jax.lax.scan(body, (x, predictor.init(x)), (ts[:-1], ts[1:], keys))
        x, extra = finish(ctx, x, ts[-1], key_final, denoise, project_fn,
                          predictor.final)
        nfe = num_steps * (predictor.nfe + corrector_nfe) + extra
        return x, {"nfe": jnp.asarray(nfe, jnp.int32)}

    return sample_fn


def _single(name: str, needs=()):
    """A sampler made of one predictor on its default grid, no corrector."""

    def factory(num_steps, t_min, denoise, grid, project_fn, guidance_fn,
                **predictor_options) -> SampleFn:
        check_positive_int(name, "num_steps", num_steps)
        return fixed_grid(name, PREDICTORS[name](num_steps, **predictor_options), num_steps,
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
    DDPM sampling for VP (with the posterior variance beta_tilde, where score_sde's
    ancestral predictor adds noise of variance beta), SMLD ancestral sampling for VE.
    N (+1) NFE."""
    return _single("ancestral", ("transition",))(
        num_steps, t_min, denoise, grid, project_fn, guidance_fn)


def ddim(num_steps: int = 50, eta: float = 0.0, t_min: float | None = None,
         denoise: bool = True, grid: str = "linear", project_fn: ProjectFn | None = None,
         guidance_fn: ScoreFn | None = None) -> SampleFn:
    """DDIM (Song, Meng & Ermon 2021) on a uniform time grid; eta = 0 is deterministic, eta
    = 1 is ancestral sampling. N (+1) NFE."""
    check(eta >= 0, f"ddim: eta must be >= 0, got {eta}")
    return _single("ddim", ("transition",))(
        num_steps, t_min, denoise, grid, project_fn, guidance_fn, eta=float(eta))


def heun(num_steps: int = 18, rho: float = 7.0, churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = float("inf"), s_noise: float = 1.0, t_min: float | None = None,
         denoise: bool = True, grid: str = "edm", sigma_max: float | None = None,
         project_fn: ProjectFn | None = None, guidance_fn: ScoreFn | None = None) -> SampleFn:
    """EDM's second-order Heun sampler (Karras et al. 2022, Algorithms 1-2) for any linear
    SDE, on the rho-spaced grid of sigma = std / mean_coeff from T to t_min.

    NFE = 2 num_steps (+1 with denoise, which is EDM's final Euler step to sigma = 0: EDM's
    N = 18 levels / 35 NFE are num_steps = 17 here). Deterministic when churn = 0, then
    global order 2. Churn options are EDM's (Table 5: S_churn, S_tmin, S_tmax, S_noise)
    with its normalisation: gamma = min(churn / N, sqrt(2) - 1), N = num_steps + 1 levels,
    at each level sigma in [s_tmin, s_tmax] including the last one, whose churn happens in
    the final denoising step (with denoise=False the sampler stops before that step).
    `sigma_max` (EDM's sigma_max, e.g. 80): where the grid starts below T (see
    `common.time_grid`).
    """
    check_positive_int("heun", "num_steps", num_steps)
    check(churn >= 0 and s_noise >= 0, f"heun: churn and s_noise must be >= 0, got "
          f"churn={churn}, s_noise={s_noise}")
    predictor = PREDICTORS["heun"](num_steps, churn, s_tmin, s_tmax, s_noise)
    return fixed_grid("heun", predictor, num_steps, t_min=t_min, denoise=denoise, rho=rho,
                      grid=grid, sigma_max=sigma_max, project_fn=project_fn,
                      guidance_fn=guidance_fn,
                      needs=("log_snr", "t_from_log_snr"))


def dpm_solver_pp(num_steps: int = 20, order: int = 2, grid: str = "logsnr",
                  lower_order_final: bool = True, sigma_max: float | None = None,
                  t_min: float | None = None, denoise: bool = True,
                  project_fn: ProjectFn | None = None,
                  guidance_fn: ScoreFn | None = None) -> SampleFn:
    """DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2 for 2M):
    deterministic, 1 NFE per step (+1 with denoise). `order`: 1 (= DDIM), 2 (2M, the
    default, the paper's choice for guided sampling) or 3 (3M, third order; see
    `steps._dpm_solver_pp` for how it differs from the widely copied 3M). `grid`: "logsnr"
    (uniform in lambda, the paper's choice for pixel-space models at low resolution),
    "linear" (uniform t) or "edm" (rho = 7). `sigma_max`: where the grid starts below T
    (see `common.time_grid`)."""
    check_positive_int("dpm_solver++", "num_steps", num_steps)
    check_choice("dpm_solver++", "grid", grid, GRIDS)
    check_choice("dpm_solver++", "order", order, (1, 2, 3))
    predictor = PREDICTORS["dpm_solver++"](num_steps, lower_order_final, order)
    return fixed_grid("dpm_solver++", predictor, num_steps, t_min=t_min, denoise=denoise,
                      grid=grid, sigma_max=sigma_max, project_fn=project_fn,
                      guidance_fn=guidance_fn,
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
      snr: corrector signal-to-noise ratio (0.16, score_sde's CIFAR-10 value).
      grid: time grid, default the predictor's own ("linear", "edm" or "logsnr").
      predictor_options: extra options of the predictor (e.g. {"eta": 1.0} for ddim).

    NFE = num_steps * (predictor NFE + n_steps_each for a corrector) (+1 with denoise).
    """
    check_choice("pc", "predictor", predictor, PREDICTORS)
    check_choice("pc", "corrector", corrector, CORRECTORS)
    check_positive_int("pc", "num_steps", num_steps)
    check_positive_int("pc", "n_steps_each", n_steps_each)
    check(snr > 0, f"pc: snr must be > 0, got {snr}")
    pred = PREDICTORS[predictor](num_steps, **(predictor_options or {}))
    corr = None if corrector == "none" else CORRECTORS[corrector](snr, n_steps_each)
    return fixed_grid("pc", pred, num_steps, corrector=corr,
                      corrector_nfe=0 if corr is None else n_steps_each, t_min=t_min,
                      denoise=denoise, grid=grid, project_fn=project_fn,
                      guidance_fn=guidance_fn, needs=("transition",))


def unipc(num_steps: int = 20, order: int = 3, variant: str = "bh2", grid: str = "logsnr",
          lower_order_final: bool = True, sigma_max: float | None = None,
          t_min: float | None = None, denoise: bool = True,
          project_fn: ProjectFn | None = None,
          guidance_fn: ScoreFn | None = None) -> SampleFn:
    """UniPC (Zhao et al. 2023), multistep predictor-corrector in data prediction: the
    UniP predictor of `order` 1-4 (UniP-2 is DPM-Solver++(2M)'s update) plus the UniC
    corrector, which uses each new score evaluation twice (to correct the point it was
    evaluated at, and for the next step), so order + 1 at 1 NFE per step (+1 with
    denoise). High orders suit unguided sampling (as for every multistep method); orders
    5-6 were less accurate on the benchmark and are not offered. `variant`: B(h) =
    expm1(h) ("bh2", the authors' choice for unconditional sampling) or h ("bh1"). B(h)
    cancels where the weights solve the order conditions; it matters where the paper fixes
    a weight to 1/2: the order-2 predictor (every step with order=2; the second step and
    the lowered final steps with order 3-4) and the order-1 corrector (order=1; the first
    step's correction otherwise). `project_fn` sees the
    predicted points (the correction of step i happens inside step i + 1). `sigma_max`:
    where the grid starts below T (see `common.time_grid`)."""
    check_positive_int("unipc", "num_steps", num_steps)
    check_choice("unipc", "order", order, (1, 2, 3, 4))
    check_choice("unipc", "variant", variant, ("bh1", "bh2"))
    check_choice("unipc", "grid", grid, GRIDS)
    predictor = PREDICTORS["unipc"](num_steps, order, variant, lower_order_final)
    return fixed_grid("unipc", predictor, num_steps, t_min=t_min, denoise=denoise, grid=grid,
                      sigma_max=sigma_max, project_fn=project_fn,
                      guidance_fn=guidance_fn,
                      needs=("log_snr", "t_from_log_snr"))
