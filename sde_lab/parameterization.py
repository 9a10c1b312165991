"""Network output -> score, for any SDE, through `sde.marginal(t)` alone.

A parameterization decides what the network sees (its input scaling and the time
conditioning value) and how its raw output becomes grad_x log p_t(x). Each one is a small
frozen dataclass with three methods:

    net_input(sde, x, t)           -> (x_in, cond)   what to feed `apply_fn(params, x_in, cond)`
    to_score(sde, raw, x, t)       -> score          raw network output -> score
    from_score(sde, score, x, t)   -> raw            the exact inverse (tests, distillation)

and `score_model(apply_fn, sde)` returns `score(params, x, t)` for losses and samplers.
No sampler or loss looks at the SDE's type; with mean_coeff = alpha and std = sigma:

  eps     score = -eps / sigma                      cond = 999 t   (DDPM label scale)
  eps_gamma  the same, cond = gamma_t = -log_snr(t) (VDM's conditioning; learned schedules)
  score   score = out / sigma   (NCSN++ scale_by_sigma)  cond = log sigma
  x0      score = (alpha x0 - x) / sigma^2          cond = t
  edm     EDM preconditioning (Karras et al. 2022, Table 1) in the scaled space x / alpha,
          with sigma_edm = sigma / alpha:  D = c_skip x~ + c_out F(c_in x~, c_noise),
          score = (alpha D - x) / sigma^2           cond = c_noise = log(sigma_edm) / 4
  velocity  v = d x_t / dt = alpha' x0 + sigma' eps (flow matching's target on `flow`);
          E[v | x] is the PF-ODE drift, so score = (f x - v) / (g^2 / 2)   cond = 999 t
  v       v-prediction (Salimans & Ho 2022) of the VP process x / r with the same log-SNR,
          r = sqrt(alpha^2 + sigma^2): v = (alpha eps - sigma x0) / r,
          score = -(sigma x / r^2 + alpha v / r) / sigma   (input x / r)     cond = 999 t
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from sde_lab.registry import Registry
from sde_lab.sdes import SDE, expand_to

Array = jax.Array
ApplyFn = Callable[[object, Array, Array], Array]


class Parameterization:
    """Base: identity input, subclasses define the conditioning and output maps."""

    def net_input(self, sde: SDE, x: Array, t: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def to_score(self, sde: SDE, raw: Array, x: Array, t: Array) -> Array:
        raise NotImplementedError

    def from_score(self, sde: SDE, score: Array, x: Array, t: Array) -> Array:
        raise NotImplementedError

    def score_model(self, apply_fn: ApplyFn, sde: SDE) -> Callable[[object, Array, Array], Array]:
        """Returns score(params, x, t) = to_score(apply_fn(params, *net_input(x, t)))."""

        def score(params, x, t):
            x_in, cond = self.net_input(sde, x, t)
            return self.to_score(sde, apply_fn(params, x_in, cond), x, t)

        return score


@dataclasses.dataclass(frozen=True)
class Eps(Parameterization):
    """Noise prediction (DDPM): the network predicts eps in x_t = alpha x_0 + sigma eps.
    Conditioning 999 t matches DDPM's integer timestep labels (score_sde's VP models)."""

    time_scale: float = 999.0

    def net_input(self, sde, x, t):
        return x, self.time_scale * t

    def to_score(self, sde, raw, x, t):
        return -raw / expand_to(sde.marginal(t)[1], x)

    def from_score(self, sde, score, x, t):
        return -score * expand_to(sde.marginal(t)[1], x)


@dataclasses.dataclass(frozen=True)
class EpsGamma(Eps):
    """Noise prediction conditioned on gamma_t = -log_snr(t) (Kingma et al. 2021, VDM): the
    conditioning follows the SDE's own schedule, learned or fixed, so a network trained
    with a learned schedule sees where on the schedule it is, not the raw time."""

    def net_input(self, sde, x, t):
        return x, -sde.log_snr(t)


@dataclasses.dataclass(frozen=True)
class Score(Parameterization):
    """Direct score with output scaled by 1/sigma (NCSN++'s scale_by_sigma): the network
    predicts sigma * score, which has unit scale at every noise level. Conditioning is
    log sigma, what NCSN++'s Fourier embedding consumes."""

    def net_input(self, sde, x, t):
        return x, jnp.log(sde.marginal(t)[1])

    def to_score(self, sde, raw, x, t):
        return raw / expand_to(sde.marginal(t)[1], x)

    def from_score(self, sde, score, x, t):
        return score * expand_to(sde.marginal(t)[1], x)


@dataclasses.dataclass(frozen=True)
class X0(Parameterization):
    """Data prediction: the network predicts x_0; Tweedie gives
    score = (alpha x0_hat - x) / sigma^2. Conditioning is t."""

    def net_input(self, sde, x, t):
        return x, t

    def to_score(self, sde, raw, x, t):
        mean_coeff, std = (expand_to(v, x) for v in sde.marginal(t))
        return (mean_coeff * raw - x) / std**2

    def from_score(self, sde, score, x, t):
        mean_coeff, std = (expand_to(v, x) for v in sde.marginal(t))
        return (x + std**2 * score) / mean_coeff


@dataclasses.dataclass(frozen=True)
class EDM(Parameterization):
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours") for any SDE: work in the
    scaled space x~ = x / alpha whose noise level is sigma_edm = sigma / alpha, then
    c_in = 1 / sqrt(sigma_edm^2 + sigma_data^2), c_skip = sigma_data^2 / (sigma_edm^2 +
    sigma_data^2), c_out = sigma_edm sigma_data / sqrt(sigma_edm^2 + sigma_data^2),
    c_noise = log(sigma_edm) / 4. The network sees c_in x~ and c_noise."""

    sigma_data: float = 0.5

    def _coeffs(self, sde, x, t):
        mean_coeff, std = sde.marginal(t)
        sigma = std / mean_coeff
        norm2 = sigma**2 + self.sigma_data**2
        c_in = jax.lax.rsqrt(norm2)
        c_skip = self.sigma_data**2 / norm2
        c_out = sigma * self.sigma_data * c_in
        c_noise = 0.25 * jnp.log(sigma)
        expand = lambda v: expand_to(v, x)  # noqa: E731 (local shorthand)
        return expand(mean_coeff), expand(std), expand(c_in), expand(c_skip), expand(c_out), c_noise

    def net_input(self, sde, x, t):
        mean_coeff, _, c_in, _, _, c_noise = self._coeffs(sde, x, t)
        return c_in * x / mean_coeff, c_noise

    def to_score(self, sde, raw, x, t):
        mean_coeff, std, _, c_skip, c_out, _ = self._coeffs(sde, x, t)
        denoised = c_skip * x / mean_coeff + c_out * raw
        return (mean_coeff * denoised - x) / std**2

    def from_score(self, sde, score, x, t):
        mean_coeff, std, _, c_skip, c_out, _ = self._coeffs(sde, x, t)
        denoised = (x + std**2 * score) / mean_coeff
        return (denoised - c_skip * x / mean_coeff) / c_out


@dataclasses.dataclass(frozen=True)
class Velocity(Parameterization):
    """Velocity prediction: the network predicts v = d x_t / dt = alpha'(t) x_0 +
    sigma'(t) eps, the time derivative of the path x_t = alpha x_0 + sigma eps. On `flow`
    (alpha = 1 - t, sigma = t) this is z - x_0, the target of (rectified) flow matching.

    Its regression target E[v | x_t = x] is the probability-flow drift: with Tweedie's
    E[x_0 | x] = (x + sigma^2 score) / alpha and E[eps | x] = -sigma score,

        E[v | x] = (alpha'/alpha) x - (sigma sigma' - (alpha'/alpha) sigma^2) score
                 = f x - 1/2 g^2 score,

    since f = alpha'/alpha and g^2 = d sigma^2 / dt - 2 f sigma^2 (the variance ODE). So
    to_score is score = (f x - v) / (g^2 / 2) and from_score v = f x - g^2 / 2 score, with
    f x and g from `sde.drift_diffusion` (no derivative of the schedule is needed). The
    output's scale is that of dx/dt: O(1) on `flow`, but sigma' on SDEs whose time runs
    nonlinearly in sigma (VE: sigma' = sigma log(sigma_max / sigma_min); `edm`: up to
    ~440 at sigma_max), where `eps`, `x0`, `edm` or `v` suit a network better.
    Conditioning time_scale * t (999 t, as `eps` and rectified flow's DDPM++ models).
    Undefined where g = 0 (t = 0 on `flow` and `edm`), which samplers and losses never
    reach."""

    time_scale: float = 999.0

    def net_input(self, sde, x, t):
        return x, self.time_scale * t

    def to_score(self, sde, raw, x, t):
        f, g = sde.drift_diffusion(x, t)
        return (f - raw) / expand_to(0.5 * g**2, x)

    def from_score(self, sde, score, x, t):
        f, g = sde.drift_diffusion(x, t)
        return f - expand_to(0.5 * g**2, x) * score


@dataclasses.dataclass(frozen=True)
class V(Parameterization):
    """v-prediction (Salimans & Ho 2022, "Progressive distillation", Sec. 4): on a VP SDE
    (alpha^2 + sigma^2 = 1, x_t = cos(phi) x_0 + sin(phi) eps) the network predicts
    v = d x_t / d phi = alpha eps - sigma x_0.

    Any other SDE is first made VP: with r = sqrt(alpha^2 + sigma^2), x_t / r = a x_0 + b eps
    (a = alpha / r, b = sigma / r, a^2 + b^2 = 1) is the VP process with the same log-SNR,
    the network sees it (unit scale for unit-scale data at every t) and predicts its
    v = a eps - b x_0. r = 1 on VP, cosine VP and VDM; on VE-type SDEs (alpha = 1) this is
    exactly EDM's preconditioning with sigma_data = 1 and F = -v: x_0 = x / (1 + sigma^2) -
    sigma / sqrt(1 + sigma^2) v, c_in = 1 / r. Inverse maps: x_0 = a x~ - b v,
    eps = b x~ + a v, score = -eps / sigma. Conditioning time_scale * t."""

    time_scale: float = 999.0

    def _coeffs(self, sde, x, t):
        mean_coeff, std = sde.marginal(t)
        r = jnp.sqrt(mean_coeff**2 + std**2)
        return tuple(expand_to(v, x) for v in (mean_coeff / r, std / r, r, std, mean_coeff))

    def net_input(self, sde, x, t):
        r = self._coeffs(sde, x, t)[2]
        return x / r, self.time_scale * t

    def to_score(self, sde, raw, x, t):
        a, b, r, std, _ = self._coeffs(sde, x, t)
        return -(b * x / r + a * raw) / std

    def from_score(self, sde, score, x, t):
        a, b, _, std, mean_coeff = self._coeffs(sde, x, t)
        eps = -std * score
        x0 = (x + std**2 * score) / mean_coeff
        return a * eps - b * x0


REGISTRY: Registry[Parameterization] = Registry("parameterization", {
    "eps": Eps,
    "eps_gamma": EpsGamma,
    "score": Score,
    "x0": X0,
    "edm": EDM,
    "velocity": Velocity,
    "v": V,
})


def available() -> list[str]:
    return REGISTRY.available()


def make(name: str, **kwargs) -> Parameterization:
    """Builds a parameterization: "eps", "eps_gamma", "score", "x0", "edm" (sigma_data=0.5),
    "velocity" or "v" (time_scale=999)."""
    return REGISTRY.make(name, **kwargs)
