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
      final: (ctx, key, x, t) -> x at t = 0, the last step from the grid's last time t
        when the sampler denoises (1 NFE). None: the Tweedie denoiser ctx.x0(x, t).
    """

    nfe: int
    step: Callable
    init: Callable[[Array], Any] = lambda x: ()
    grid: str = "linear"
    validate: Callable[[Any, Array], None] = lambda sde, ts: None
    final: Callable | None = None


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
    eq. 7) and SMLD's ancestral step x_t + (sigma_t^2 - sigma_s^2) score for VE.

    For VP the noise variance is the posterior's beta_tilde = (1 - abar_s) / (1 - abar_t)
    beta; score_sde's AncestralSamplingPredictor uses beta itself (and the mean
    (x + beta score) / sqrt(1 - beta)); Ho et al. (Sec. 3.2) report similar results
    with either variance."""

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
    where every linear SDE's PF ODE is dx~/dsigma = (x~ - D(x~, sigma)) / sigma and
    D(x~, sigma) = x0_hat(alpha x~, t(sigma)) (EDM's VPPrecond feeds the network alpha x~,
    alpha = 1 / sqrt(sigma^2 + 1), at the t of that sigma). 2 NFE/step; deterministic and
    second order when churn = 0.

    EDM's N noise levels sigma_0 > ... > sigma_{N-1} are the grid's num_steps + 1 points
    and its last step, to sigma_N = 0, is the final denoising step (`final`). Churn, as in
    the algorithm box: at every level sigma_i in [s_tmin, s_tmax], the last one included,
    gamma_i = min(churn / N, sqrt(2) - 1) raises the noise level to sigma_i (1 + gamma_i)
    by adding fresh noise N(0, (sigma_hat^2 - sigma_i^2) s_noise^2 I) before the step.
    """
    gamma_max = min(churn / (num_steps + 1), math.sqrt(2) - 1)

    def denoise(ctx, x_tilde, t):
        mean_coeff = ctx.sde.marginal(t)[0]
        return ctx.x0(mean_coeff * x_tilde, t)

    def churned(ctx, key, x, t):
        """Algorithm 2, lines 4-6: (x_hat, sigma_hat, t_hat) in EDM's variables."""
        sigma_t = ctx.sigma_edm(t)
        x_tilde = x / ctx.sde.marginal(t)[0]
        if gamma_max == 0:
            return x_tilde, sigma_t, t
        gamma = jnp.where((sigma_t >= s_tmin) & (sigma_t <= s_tmax), gamma_max, 0.0)
        sigma_hat = sigma_t * (1 + gamma)
        z = jax.random.normal(key, x.shape, x.dtype)
        # sqrt(sigma_hat^2 - sigma_t^2) written as sigma_t sqrt(gamma (2 + gamma)): the
        # difference of squares can round to a tiny negative number (XLA contracts it into
        # a fused multiply-add), whose square root is NaN where gamma = 0.
        x_hat = x_tilde + sigma_t * jnp.sqrt(gamma * (2 + gamma)) * s_noise * z
        t_hat = jnp.where(gamma > 0, ctx.t_of_sigma_edm(sigma_hat), t)
        return x_hat, sigma_hat, t_hat

    def step(ctx, key, x, carry, t, s):
        x_hat, sigma_hat, t_hat = churned(ctx, key, x, t)
        sigma_s = ctx.sigma_edm(s)
        d = (x_hat - denoise(ctx, x_hat, t_hat)) / sigma_hat
        x_euler = x_hat + (sigma_s - sigma_hat) * d
        d_s = (x_euler - denoise(ctx, x_euler, s)) / sigma_s
        x_tilde = x_hat + (sigma_s - sigma_hat) * 0.5 * (d + d_s)
        return ctx.sde.marginal(s)[0] * x_tilde, carry

    def final(ctx, key, x, t):
        # The Euler step to sigma = 0, x_hat + (0 - sigma_hat) d, is D(x_hat, sigma_hat).
        x_hat, _, t_hat = churned(ctx, key, x, t)
        return denoise(ctx, x_hat, t_hat)

    return Predictor(2, step, grid="edm", final=final)


def _dpm_solver_pp(num_steps: int, lower_order_final: bool = True,
                   order: int = 2) -> Predictor:
    """DPM-Solver++ multistep (Lu et al. 2022b, Algorithm 2 and the authors' 3M update),
    data prediction, 1 NFE/step, with m_j the Tweedie x0_hat at the last grid times
    (m_0 now), h = lambda_s - lambda_t and phi_1 = expm1(-h):

      order 1:  x_s = (sigma_s / sigma_t) x_t - alpha_s phi_1 m_0          (= DDIM)
      order 2:  ... with m_0 -> m_0 + (m_0 - m_1) / (2 r_0),  r_0 = h_prev / h
      order 3:  x_s = (sigma_s / sigma_t) x_t - alpha_s [phi_1 m_0 - phi_2 D_1 + phi_3 D_2],
                phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2, with D_1 ~ h m' and
                D_2 ~ h^2 m'' the first and second derivatives of m(lambda) from divided
                differences. Note D_2 = 2 (D1_0 - D1_1) / (r_0 + r_1): the authors' own
                multistep code (LuChengTHU/dpm-solver, multistep_dpm_solver_third_update)
                uses half of it, which matches the Taylor expansion only to first order in
                m'' and leaves that method second order (measured global slope 2.0-2.3 vs
                3 here; see the tests).

    Step i uses order min(order, i + 1) (too little history at the start) and, with
    lower_order_final and num_steps < 10, the last steps drop to order num_steps - i, as
    in the authors' code (their lower_order_final; their docstring says < 15, their code
    and this one < 10). Deterministic.
    """

    def step(ctx, key, x, carry, t, s):
        m1, m2, h1, h2, i = carry           # x0_hat and step size one and two steps back
        mean_s, std_s = ctx.sde.marginal(s)
        std_t = ctx.sde.marginal(t)[1]
        h = 0.5 * (ctx.sde.log_snr(s) - ctx.sde.log_snr(t))
        m0 = ctx.x0(x, t)
        phi_1 = jnp.expm1(-h)
        k = jnp.minimum(order, i + 1)
        if lower_order_final and num_steps < 10:
            k = jnp.minimum(k, num_steps - i)
        # Divided differences; the guards only keep unused branches finite at i = 0, 1.
        r0 = jnp.where(i >= 1, h1, h) / h
        r1 = jnp.where(i >= 2, h2, h) / h
        d1_0 = (m0 - m1) / r0
        d1_1 = (m1 - m2) / r1
        sigma_ratio = std_s / std_t
        x1 = sigma_ratio * x - mean_s * phi_1 * m0
        x2 = x1 - mean_s * phi_1 * 0.5 * d1_0
        if order >= 3:
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
            x3 = x1 + mean_s * (phi_2 * d1 - phi_3 * d2)
            x = jnp.where(k >= 3, x3, jnp.where(k == 2, x2, x1))
        else:
            x = jnp.where(k >= 2, x2, x1)
        return x, (m0, m1, h, h1, i + 1)

    def init(x):
        zero = jnp.zeros((), x.dtype)
        return jnp.zeros_like(x), jnp.zeros_like(x), zero, zero, jnp.zeros((), jnp.int32)

    return Predictor(1, step, init, grid="logsnr")


def _unipc_coefficients(h: Array, rks: list, variant: str):
    """UniPC's weights for k = len(rks) points (Zhao et al. 2023, Algorithms 1-2 with
    data prediction): rks = [r_1, ..., r_{k-1}, 1], r_j = (lambda_{t_j} - lambda_t) / h the
    earlier grid times relative to the step (r_j < 0) and 1 for the new time s.

    Returns (B(h), predictor weights for the k - 1 earlier differences, corrector weights
    for all k differences). The weights solve R rho = b with R_ij = r_j^(i-1) and
    b_i = i! phi_{i+1}(h) / B(h) (phi of -h, data prediction); order-2 predictors and
    order-1 correctors use the paper's fixed 1/2."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    b_h = jnp.expm1(hh) if variant == "bh2" else hh
    k = len(rks)
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1.0, 1.0
    for i in range(1, k + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    big_r = jnp.stack([jnp.stack([r ** (i - 1) for r in rks]) for i in range(1, k + 1)])
    b = jnp.stack(b)
    if k == 1:
        rho_p, rho_c = [], [0.5]
    else:
        rho_p = ([0.5] if k == 2 else
                 list(jnp.linalg.solve(big_r[:-1, :-1], b[:-1])))
        rho_c = list(jnp.linalg.solve(big_r, b))
    return b_h, rho_p, rho_c


def _unipc(num_steps: int, order: int = 3, variant: str = "bh2",
           lower_order_final: bool = True) -> Predictor:
    """UniPC (Zhao et al. 2023): the UniP-k multistep predictor (k = order, the
    DPM-Solver++ family) with the UniC corrector, which re-uses the score evaluated at the
    predicted point to correct it, raising the order by one at no extra NFE.

    In this scan a step from t to s (1 NFE) evaluates x0_hat at the predicted x_t, applies
    the previous step's corrector with it (from step 1 on), and predicts x_s. The last
    prediction is not corrected (that would cost one more NFE), as in the authors' code.
    Step i uses order min(order, i + 1) and, with lower_order_final and num_steps < 15,
    min(., num_steps - i): low orders are more stable with few, large steps. The authors'
    code lowers the final orders at every num_steps; here not from 15 steps on, where a
    first-order last step would cap the global order at 2 (measured on the 2-D benchmark
    at 20 NFE, order 4: 0.00094 with it, 0.00078 without). (`dpm_solver++` follows its
    authors' threshold, 10.)
    """

    def step(ctx, key, x, carry, t, s):
        # m_prev: x0_hat at the order - 1 previous grid times (latest first), lam_prev their
        # lambdas; the previous step's UniC correction is x_corr = base - c_new * m, with
        # everything but the new evaluation m folded into `base` (at i = 0: base = x,
        # c_new = 0, so x is unchanged).
        m_prev, lam_prev, base, c_new, i = carry
        lam_t = 0.5 * ctx.sde.log_snr(t)
        lam_s = 0.5 * ctx.sde.log_snr(s)
        mean_s, std_s = ctx.sde.marginal(s)
        std_t = ctx.sde.marginal(t)[1]
        m = ctx.x0(x, t)
        x = base - c_new * m
        h = lam_s - lam_t
        k_now = jnp.minimum(order, i + 1)
        if lower_order_final and num_steps < 15:
            k_now = jnp.minimum(k_now, num_steps - i)
        # Earlier points j = 1 .. order - 1 (the guard keeps unused ones finite early on);
        # order k uses the first k - 1. Only scalar weights depend on k: they are selected,
        # then each combination of the differences is formed once.
        rks = [jnp.where(i >= j, (lam_prev[j - 1] - lam_t) / h, -float(j))
               for j in range(1, order)]
        d1s = [(m_j - m) / r for m_j, r in zip(m_prev, rks)]
        zero = jnp.zeros_like(h)
        w_pred, w_corr, w_last = [zero] * (order - 1), [zero] * (order - 1), zero
        for k in range(1, order + 1):
            b_h, rho_p, rho_c = _unipc_coefficients(h, rks[:k - 1] + [jnp.ones_like(h)],
                                                    variant)
            pad = [zero] * (order - k)
            sel = k_now == k
            w_pred = [jnp.where(sel, a, b) for a, b in zip(list(rho_p) + pad, w_pred)]
            w_corr = [jnp.where(sel, a, b) for a, b in zip(list(rho_c[:-1]) + pad, w_corr)]
            w_last = jnp.where(sel, rho_c[-1], w_last)
        coef = mean_s * b_h      # B(h) does not depend on k
        x_base = (std_s / std_t) * x - mean_s * jnp.expm1(-h) * m
        pred = x_base - coef * sum((w * d for w, d in zip(w_pred, d1s)), jnp.zeros_like(x))
        # UniC at s: x_base - coef * (sum_j w_corr_j d1s_j + w_last (m_s - m)).
        base = x_base - coef * (sum((w * d for w, d in zip(w_corr, d1s)), jnp.zeros_like(x))
                                - w_last * m)
        carry = (((m,) + m_prev)[:order - 1],
                 jnp.concatenate([lam_t[None], lam_prev])[:lam_prev.shape[0]], base,
                 coef * w_last, i + 1)
        return pred, carry

    def init(x):
        zero = jnp.zeros((), x.dtype)
        return (tuple(jnp.zeros_like(x) for _ in range(order - 1)),
                jnp.zeros((max(order - 1, 1),), x.dtype), x, zero, jnp.zeros((), jnp.int32))

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
    "unipc": _unipc,
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
