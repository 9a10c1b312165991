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
| `dpm_solver++`     | DPM-Solver++(2M) / (3M) with `order=3`, lambda grid| N            |
| `unipc`            | UniPC-p (multistep + UniC corrector, order p + 1)  | N            |
| `pc`               | predictor + `langevin` / `annealed_langevin` corrector | N (p + k)    |
| `ode`              | probability-flow ODE, diffrax Tsit5/Dopri5 + PID   | adaptive     |
| `sra`              | reverse SDE, diffrax ShARK/SRA1 (additive noise)   | 2N           |

plus one evaluation when `denoise=True`. N is `num_steps`; p is the predictor's NFE per
step and k = `n_steps_each`.

Common options: `t_min` (default `sde.t_min`) is the last time reached; `denoise` (default
True) then replaces x by the Tweedie estimate x0_hat(x, t_min) (one more score evaluation),
which removes the N(0, sigma(t_min)^2) noise left at t_min. It is EDM's final Euler step to
sigma = 0 (`heun` churns before it, as EDM does at its last level). It is not score_sde's
"noise removal": there the PC sampler returns the mean of its last predictor step, the
step's noise left out (no extra evaluation), and the ODE sampler the mean of one
reverse-diffusion step at t_min (one extra evaluation).
Conditioning hooks, for inpainting, colorization and guidance:
`guidance_fn(x, t) -> [B, ...]` is added to the score at every evaluation (classifier
guidance: grad_x log p_t(y | x)); `project_fn(x, t, key) -> x` is applied after every
corrector and predictor step to x at time t ([B]), and after denoising with t = 0
(fixed-step samplers only: `ode` and `sra` take steps inside diffrax and accept guidance).
"""

from __future__ import annotations

from sde_lab.registry import Registry
from sde_lab.samplers.common import SampleFn
from sde_lab.samplers.diffrax_solvers import ode, sra
from sde_lab.samplers.fixed_grid import (ancestral, ddim, dpm_solver_pp, euler_maruyama, heun,
                                         pc, reverse_diffusion, unipc)
from sde_lab.samplers.steps import CORRECTORS, PREDICTORS

__all__ = ["REGISTRY", "available", "correctors", "make", "predictors", "ancestral", "ddim",
           "dpm_solver_pp", "euler_maruyama", "heun", "ode", "pc", "reverse_diffusion", "sra",
           "unipc"]


REGISTRY: Registry[SampleFn] = Registry("sampler", {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
    "pc": pc,
    "ode": ode,
    "sra": sra,
    "ddim": ddim,
    "heun": heun,
    "dpm_solver++": dpm_solver_pp,
    "unipc": unipc,
})


def available() -> list[str]:
    return REGISTRY.available()


def predictors() -> list[str]:
    return sorted(PREDICTORS)


def correctors() -> list[str]:
    return sorted(CORRECTORS)


def make(name: str, **options) -> SampleFn:
    """Builds the sampler registered as `name` with its keyword options (see each factory).

    Raises:
      ValueError: unknown name or option (listing the valid ones), or an invalid value.
    """
    return REGISTRY.make(name, **options)
