"""Forward SDEs with Gaussian perturbation kernels (Song et al., ICLR 2021).

Every SDE here is linear: dx = f(t) x dt + g(t) dw, so its perturbation kernel is

    p(x_t | x_0) = N(mean_coeff(t) * x_0, std(t)^2 I),

and everything a sampler, loss or likelihood needs follows from `marginal(t)` and
`drift_diffusion(x, t)`. The base class derives the rest (log-SNR, its inverse, exact
Gaussian transitions between two times, Euler-Maruyama discretization) so that adding an
SDE means writing one small class with `marginal`, `drift_diffusion` and the prior, then one
entry in `_REGISTRY` at the bottom of this file.

Shapes: `t` is `[B]` (or a scalar); `x` is `[B, ...]`. Per-example scalars are broadcast to
`x` by appending singleton axes, never by NumPy rank promotion.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def expand_to(v: Array, x: Array) -> Array:
    """Appends singleton axes to `v` ([B] or scalar) so it broadcasts against `x` [B, ...]."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class SDE(abc.ABC):
    """A linear forward SDE dx = f(t) x dt + g(t) dw on [0, T].

    Attributes:
      T: time horizon.
      t_min: default smallest time reached by samplers (score_sde: 1e-3 VP, 1e-5 VE).
    """

    T: float = 1.0
    t_min: float = 1e-3

    @abc.abstractmethod
    def marginal(self, t: Array) -> tuple[Array, Array]:
        """Perturbation kernel: returns (mean_coeff, std), each shaped like `t`."""

    @abc.abstractmethod
    def drift_diffusion(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Returns f(x, t) shaped like x and g(t) shaped like t."""

    @abc.abstractmethod
    def prior_sample(self, key: Array, shape: tuple[int, ...]) -> Array:
        """Samples the prior p_T that reverse-time sampling starts from."""

    @abc.abstractmethod
    def prior_logp(self, z: Array) -> Array:
        """Log-density of the prior in nats, summed over all but the batch axis: [B]."""

    # ---- Derived quantities: exact for every linear SDE, overridable for speed. ----

    def log_snr(self, t: Array) -> Array:
        """lambda(t) = log(mean_coeff^2 / std^2); strictly decreasing in t."""
        mean_coeff, std = self.marginal(t)
        return 2.0 * (jnp.log(mean_coeff) - jnp.log(std))

    def t_from_log_snr(self, log_snr: Array) -> Array:
        """Inverse of `log_snr` on [0, T]; generic 60-step bisection (exact to float32)."""
        lo = jnp.zeros_like(log_snr)
        hi = jnp.full_like(log_snr, self.T)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            go_right = self.log_snr(mid) > log_snr
            return jnp.where(go_right, mid, lo), jnp.where(go_right, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 60, body, (lo, hi))
        return 0.5 * (lo + hi)

    def transition(self, s: Array, t: Array) -> tuple[Array, Array]:
        """Exact kernel p(x_t | x_s) = N(a x_s, b^2 I) for s < t; returns (a, b).

        a = mean_coeff(t) / mean_coeff(s) and b^2 = std(t)^2 - a^2 std(s)^2. For VP this is
        DDPM's beta_t = 1 - a^2; for VE it is SMLD's sigma_t^2 - sigma_s^2.
        """
        mean_s, std_s = self.marginal(s)
        mean_t, std_t = self.marginal(t)
        a = mean_t / mean_s
        b2 = jnp.maximum(std_t**2 - a**2 * std_s**2, 0.0)
        return a, jnp.sqrt(b2)

    def discretize(self, x: Array, t: Array, dt: float) -> tuple[Array, Array]:
        """One forward step x_{t+dt} = x_t + F + G z: Euler-Maruyama F = f dt, G = g sqrt(dt).

        Returns (F shaped like x, G shaped like t). Subclasses override with the discrete
        chain of their paper (DDPM for VP, SMLD for VE).
        """
        f, g = self.drift_diffusion(x, t)
        return f * dt, g * jnp.sqrt(dt)

    def discrete_times(self, num_levels: int) -> Array:
        """The N noise levels of the discrete-time losses: linspace(t_min, T, N)."""
        return jnp.linspace(self.t_min, self.T, num_levels)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _standard_normal_logp(z: Array, scale: float = 1.0) -> Array:
    d = math.prod(z.shape[1:])
    sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
    return -0.5 * d * math.log(2 * math.pi * scale**2) - 0.5 * sq / scale**2


class _UnitPrior:
    """Mixin: prior N(0, I), for VP-type SDEs whose std(T) is about 1."""

    def prior_sample(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape)

    def prior_logp(self, z: Array) -> Array:
        return _standard_normal_logp(z)


class VPSDE(_UnitPrior, SDE):
    """Variance-preserving SDE with linear beta(t) (DDPM; Song et al. 2021, eq. 11).

    dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,  beta(t) = beta_min + t (beta_max - beta_min).
    mean_coeff = exp(-1/2 B(t)), std^2 = 1 - exp(-B(t)), B(t) = int_0^t beta.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0,
                 t_min: float = 1e-3):
        _check(0 <= beta_min < beta_max, f"vp: need 0 <= beta_min < beta_max, got "
               f"beta_min={beta_min}, beta_max={beta_max}")
        _check(T > 0 and 0 < t_min < T, f"vp: need 0 < t_min < T, got t_min={t_min}, T={T}")
        self.beta_min, self.beta_max, self.T, self.t_min = beta_min, beta_max, T, t_min

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Array) -> Array:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def marginal(self, t):
        b = self.integrated_beta(t)
        return jnp.exp(-0.5 * b), jnp.sqrt(-jnp.expm1(-b))

    def drift_diffusion(self, x, t):
        beta = self.beta(t)
        return -0.5 * expand_to(beta, x) * x, jnp.sqrt(beta)

    def log_snr(self, t):
        return -jnp.log(jnp.expm1(self.integrated_beta(t)))

    def t_from_log_snr(self, log_snr):
        return self._t_from_integrated_beta(jax.nn.softplus(-log_snr))

    def _t_from_integrated_beta(self, b: Array) -> Array:
        # Root of beta_min t + (beta_max - beta_min) t^2 / 2 = b, written without cancellation.
        d = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * d * b))

    def discretize(self, x, t, dt):
        """DDPM chain (score_sde): beta_i = beta(t) dt, F = (sqrt(1 - beta_i) - 1) x."""
        beta_i = self.beta(t) * dt
        return (expand_to(jnp.sqrt(1.0 - beta_i), x) - 1.0) * x, jnp.sqrt(beta_i)


class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 12): the VP drift with diffusion
    g^2 = beta(t) (1 - exp(-2 B(t))); std = 1 - exp(-B(t)) (not its square root).
    Discretized by Euler-Maruyama, as in score_sde."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0,
                 t_min: float = 1e-3):
        super().__init__(beta_min, beta_max, T, t_min)

    def marginal(self, t):
        b = self.integrated_beta(t)
        return jnp.exp(-0.5 * b), -jnp.expm1(-b)

    def drift_diffusion(self, x, t):
        beta = self.beta(t)
        g2 = beta * -jnp.expm1(-2.0 * self.integrated_beta(t))
        return -0.5 * expand_to(beta, x) * x, jnp.sqrt(g2)

    def log_snr(self, t):
        b = self.integrated_beta(t)
        return -b - 2.0 * jnp.log(-jnp.expm1(-b))

    def t_from_log_snr(self, log_snr):
        # With a = exp(-B/2): a / (1 - a^2) = exp(log_snr / 2), whose root is
        # B = 2 asinh(exp(-log_snr / 2) / 2) (stable at both ends).
        return self._t_from_integrated_beta(2.0 * jnp.arcsinh(0.5 * jnp.exp(-0.5 * log_snr)))

    discretize = SDE.discretize


class VESDE(SDE):
    """Variance-exploding SDE with geometric sigma (SMLD/NCSN; Song et al. 2021, eq. 9).

    sigma(t) = sigma_min (sigma_max / sigma_min)^t, dx = sigma(t) sqrt(2 log(sigma_max /
    sigma_min)) dw, mean_coeff = 1, std = sigma(t). As in score_sde, std(0) = sigma_min:
    the process starts from the data perturbed by N(0, sigma_min^2), so the kernel from
    clean data is N(x_0, sigma(t)^2 I) at every t. Prior N(0, sigma_max^2 I).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0,
                 t_min: float = 1e-5):
        _check(0 < sigma_min < sigma_max, f"ve: need 0 < sigma_min < sigma_max, got "
               f"sigma_min={sigma_min}, sigma_max={sigma_max}")
        _check(T > 0 and 0 < t_min < T, f"ve: need 0 < t_min < T, got t_min={t_min}, T={T}")
        self.sigma_min, self.sigma_max, self.T, self.t_min = sigma_min, sigma_max, T, t_min

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def marginal(self, t):
        return jnp.ones_like(t), self.sigma(t)

    def drift_diffusion(self, x, t):
        rate = math.sqrt(2 * math.log(self.sigma_max / self.sigma_min) / self.T)
        return jnp.zeros_like(x), self.sigma(t) * rate

    def log_snr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_from_log_snr(self, log_snr):
        return self.T * (-0.5 * log_snr - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min)

    def prior_sample(self, key, shape):
        return self.sigma_max * jax.random.normal(key, shape)

    def prior_logp(self, z):
        return _standard_normal_logp(z, self.sigma_max)

    def discretize(self, x, t, dt):
        """SMLD chain: F = 0, G = sqrt(sigma(t)^2 - sigma(t - dt)^2)."""
        prev = jnp.where(t - dt > 0, self.sigma(t - dt), 0.0)
        return jnp.zeros_like(x), jnp.sqrt(self.sigma(t) ** 2 - prev**2)


class LogSNRVPSDE(_UnitPrior, SDE):
    """A VP SDE defined by its log-SNR schedule lambda(t): mean_coeff^2 = sigmoid(lambda),
    std^2 = sigmoid(-lambda). Drift and diffusion follow exactly from d lambda / dt (by
    forward-mode autodiff): beta(t) = -d log mean_coeff^2 / dt = -sigmoid(-lambda) lambda'.
    Subclasses define `log_snr` (cosine schedule; VDM's learned gamma = -lambda)."""

    def marginal(self, t):
        lam = self.log_snr(t)
        return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))

    def beta(self, t: Array) -> Array:
        lam, dlam = jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))
        return -jax.nn.sigmoid(-lam) * dlam

    def drift_diffusion(self, x, t):
        beta = self.beta(t)
        return -0.5 * expand_to(beta, x) * x, jnp.sqrt(beta)

    def discretize(self, x, t, dt):
        """DDPM chain with the exact beta_i = 1 - abar(t) / abar(t - dt), clipped at 0.999
        (Nichol & Dhariwal 2021)."""
        a, _ = self.transition(jnp.maximum(t - dt, 0.0), t)
        beta_i = jnp.clip(1.0 - a**2, 0.0, 0.999)
        return (expand_to(jnp.sqrt(1.0 - beta_i), x) - 1.0) * x, jnp.sqrt(beta_i)


class CosineVPSDE(LogSNRVPSDE):
    """VP SDE with the cosine schedule (Nichol & Dhariwal 2021) in log-SNR form:
    lambda(t) = -2 log tan(u(t)), u linear from atan(exp(-lambda_max/2)) at t=0 to
    atan(exp(-lambda_min/2)) at t=T. Clipping lambda to [lambda_min, lambda_max] keeps the
    diffusion finite at T, where the unclipped schedule has beta = infinity."""

    def __init__(self, log_snr_min: float = -20.0, log_snr_max: float = 20.0,
                 T: float = 1.0, t_min: float = 1e-3):
        _check(log_snr_min < log_snr_max, f"cosine_vp: need log_snr_min < log_snr_max, got "
               f"{log_snr_min} and {log_snr_max}")
        _check(T > 0 and 0 < t_min < T, f"cosine_vp: need 0 < t_min < T, got t_min={t_min}")
        self.log_snr_min, self.log_snr_max, self.T, self.t_min = (
            log_snr_min, log_snr_max, T, t_min)

    def _endpoints(self) -> tuple[float, float, float, float]:
        """u at t=0 and t=T, and w = pi/2 - u at both, in float64."""
        u0 = math.atan(math.exp(-0.5 * self.log_snr_max))
        u1 = math.atan(math.exp(-0.5 * self.log_snr_min))
        return u0, u1, math.atan(math.exp(0.5 * self.log_snr_max)), math.atan(
            math.exp(0.5 * self.log_snr_min))

    def log_snr(self, t):
        # u and w = pi/2 - u are both interpolated without cancellation; each end of the
        # schedule uses the one that is small there, so float32 keeps full precision.
        u0, u1, w0, w1 = self._endpoints()
        s = t / self.T
        u, w = u0 * (1 - s) + u1 * s, w0 * (1 - s) + w1 * s
        return jnp.where(u < math.pi / 4, -2.0 * jnp.log(jnp.tan(u)), 2.0 * jnp.log(jnp.tan(w)))

    def t_from_log_snr(self, log_snr):
        u0, u1, w0, w1 = self._endpoints()
        from_u = (jnp.arctan(jnp.exp(-0.5 * log_snr)) - u0) / (u1 - u0)
        from_w = (w0 - jnp.arctan(jnp.exp(0.5 * log_snr))) / (w0 - w1)
        return self.T * jnp.where(log_snr > 0, from_u, from_w)


class LearnedVPSDE(LogSNRVPSDE):
    """VDM's VP SDE, defined by its noise schedule gamma(t) = -log_snr(t) (Kingma et al.
    2021, "Variational Diffusion Models"): std^2 = sigmoid(gamma), mean_coeff^2 =
    sigmoid(-gamma), beta(t) = sigmoid(gamma) gamma'(t).

    Two forms, one class:
      * fixed (VDM's "fixed" schedule): `LearnedVPSDE(gamma_min=-13.3, gamma_max=5.0)`,
        gamma linear in t; this is what `make("vdm", ...)` builds from plain options.
      * learned: `LearnedVPSDE(gamma_fn)`, with gamma_fn(s) for s = t / T in [0, 1] any
        increasing, shape-preserving JAX function that closes over its parameters, e.g.
        `functools.partial(models.vdm.NoiseSchedule().apply, schedule_params)`. The SDE is
        rebuilt from the parameters at each step, inside the traced loss, so gradients
        reach them through `marginal`, `beta` (forward-mode d gamma / dt) and `log_snr`;
        `models.vdm.schedule_sde` does this. The inverse log-SNR is the base-class
        bisection, which needs gamma_fn strictly increasing.
    """

    def __init__(self, gamma_fn: Callable[[Array], Array] | None = None,
                 gamma_min: float | None = None, gamma_max: float | None = None,
                 T: float = 1.0, t_min: float = 1e-3):
        _check(gamma_fn is None or (gamma_min is None and gamma_max is None),
               "vdm: give either gamma_fn (learned schedule) or gamma_min/gamma_max (fixed "
               "linear schedule), not both")
        _check(gamma_fn is None or callable(gamma_fn), f"vdm: gamma_fn must be callable, "
               f"got {type(gamma_fn).__name__}")
        if gamma_fn is None:
            gamma_min = -13.3 if gamma_min is None else gamma_min
            gamma_max = 5.0 if gamma_max is None else gamma_max
            _check(gamma_min < gamma_max, f"vdm: need gamma_min < gamma_max, got "
                   f"gamma_min={gamma_min}, gamma_max={gamma_max}")
        _check(T > 0 and 0 < t_min < T, f"vdm: need 0 < t_min < T, got t_min={t_min}, T={T}")
        self.gamma_fn, self.gamma_min, self.gamma_max = gamma_fn, gamma_min, gamma_max
        self.T, self.t_min = T, t_min

    def gamma(self, t: Array) -> Array:
        """gamma(t) = log(std^2 / mean_coeff^2), increasing; shaped like t."""
        s = t / self.T
        if self.gamma_fn is None:
            return self.gamma_min + (self.gamma_max - self.gamma_min) * s
        return self.gamma_fn(s)

    def log_snr(self, t):
        return -self.gamma(t)

    def t_from_log_snr(self, log_snr):
        if self.gamma_fn is None:
            return self.T * (-log_snr - self.gamma_min) / (self.gamma_max - self.gamma_min)
        return super().t_from_log_snr(log_snr)

    def __repr__(self) -> str:
        if self.gamma_fn is None:
            return (f"LearnedVPSDE(gamma_min={self.gamma_min}, gamma_max={self.gamma_max}, "
                    f"T={self.T}, t_min={self.t_min})")
        return f"LearnedVPSDE(gamma_fn=<learned>, T={self.T}, t_min={self.t_min})"


def _exact_chain(sde: SDE, x: Array, t: Array, dt: float) -> tuple[Array, Array]:
    """The forward chain whose step from t - dt to t is the exact kernel (`transition`):
    F = (a - 1) x, G = b. Consistent at every step size, including steps that reach an
    endpoint where f or g is large (the flow SDE near t = 1)."""
    a, b = sde.transition(jnp.maximum(t - dt, 0.0), t)
    return (expand_to(a, x) - 1.0) * x, b


class EDMSDE(SDE):
    """EDM's variance-exploding path (Karras et al. 2022): x_t = x_0 + sigma(t) n, with
    time measured along EDM's sampling discretization (their eq. 5),

        sigma(t) = (sigma_min^(1/rho) + (t / T) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,

    so dx = g(t) dw with g^2 = d sigma^2 / dt = 2 rho sigma^2 u' / u (u = sigma^(1/rho)),
    mean_coeff = 1, log_snr = -2 rho log u (closed-form inverse) and prior
    N(0, sigma_max^2 I). As for VE, std(0) = sigma_min: the process starts from the data
    perturbed by N(0, sigma_min^2), and t in [0, T] covers EDM's whole range
    [sigma_min, sigma_max] = [0.002, 80].

    Why not EDM's own time sigma(t) = t: the contract holds either way (T = 80 would be a
    valid horizon), but every uniform-in-t default of the library (the samplers' linear
    grid, dsm's t ~ U[eps, T], the discrete levels) would then be uniform in sigma, which
    puts 99% of the steps or training noise above sigma = 0.8 and fails the exact-score
    tests at their step counts. With t on EDM's rho grid those defaults become EDM's own
    discretization and T = 1 like every other SDE. A change of time variable does not move
    the probability-flow trajectories: this SDE's PF ODE traces EDM's ODE
    dx / dsigma = (x - D(x; sigma)) / sigma, which `samplers.heun` integrates in sigma.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 T: float = 1.0, t_min: float = 1e-5):
        _check(0 < sigma_min < sigma_max, f"edm: need 0 < sigma_min < sigma_max, got "
               f"sigma_min={sigma_min}, sigma_max={sigma_max}")
        _check(rho > 0, f"edm: need rho > 0, got rho={rho}")
        _check(T > 0 and 0 < t_min < T, f"edm: need 0 < t_min < T, got t_min={t_min}, T={T}")
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.T, self.t_min = T, t_min

    def _u_ends(self) -> tuple[float, float]:
        return self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

    def _u(self, t: Array) -> Array:
        """u(t) = sigma(t)^(1/rho), linear in t."""
        u0, u1 = self._u_ends()
        return u0 + (t / self.T) * (u1 - u0)

    def sigma(self, t: Array) -> Array:
        return self._u(t) ** self.rho

    def marginal(self, t):
        return jnp.ones_like(t), self.sigma(t)

    def drift_diffusion(self, x, t):
        u0, u1 = self._u_ends()
        u = self._u(t)
        g2 = 2 * self.rho * (u1 - u0) / self.T * u ** (2 * self.rho - 1)
        return jnp.zeros_like(x), jnp.sqrt(g2)

    def log_snr(self, t):
        return -2.0 * self.rho * jnp.log(self._u(t))

    def t_from_log_snr(self, log_snr):
        u0, u1 = self._u_ends()
        return self.T * (jnp.exp(-log_snr / (2 * self.rho)) - u0) / (u1 - u0)

    def prior_sample(self, key, shape):
        return self.sigma_max * jax.random.normal(key, shape)

    def prior_logp(self, z):
        return _standard_normal_logp(z, self.sigma_max)

    def discretize(self, x, t, dt):
        """Exact chain (SMLD's form): F = 0, G = sqrt(sigma(t)^2 - sigma(t - dt)^2)."""
        return _exact_chain(self, x, t, dt)


class FlowSDE(SDE):
    """The rectified-flow / conditional-OT path (Liu et al. 2023; Lipman et al. 2023):
    x_t = (1 - t) x_0 + t z, i.e. mean_coeff = 1 - t, std = t, log_snr = 2 log((1 - t) / t)
    and t = sigmoid(-log_snr / 2).

    The linear SDE with these marginals (f = d log alpha / dt, g^2 = d std^2 / dt - 2 f std^2):

        dx = -x / (1 - t) dt + sqrt(2 t / (1 - t)) dw.

    Its probability-flow drift f x - 1/2 g^2 score equals the flow's velocity
    E[z - x_0 | x_t = x] = (x - x0_hat) / t, the field flow matching learns (see
    `parameterization.Velocity`). The SDE family with the same marginals is
    dx = [v + 1/2 gamma(t)^2 score] dt + gamma(t) dw for any gamma >= 0 (Fokker-Planck:
    the score term's drift cancels the added diffusion; in reverse time the score term
    changes sign): gamma = 0 is the flow ODE and gamma^2 = g^2 the linear SDE above, the
    only member whose drift is linear in x.

    Endpoint: at t = 1, mean_coeff = 0, so log_snr = -inf and f, g^2 are infinite (the
    velocity itself stays finite). Samplers evaluate the drift, log_snr, t_from_log_snr and
    Tweedie's x0_hat = (x + std^2 score) / mean_coeff at T, so T must stay below 1: the
    default T = 0.999 gives log_snr(T) = -13.8 (VP's is -10.0, cosine VP's -20), f(T) =
    -1000. The prior is N(0, T^2 I), the exact p_T of data at 0; for other data p_T differs
    from it by the (1 - T) x_0 term only: KL <= (1 - T)^2 E|x_0|^2 / (2 T^2), 5e-7 nats per
    unit-variance dimension (VP's gap is 2e-5 for a unit mean). Sampling from N(0, I) at
    t = 1, as flow-matching code does, differs from this start by the same O(1 - T) term.
    """

    def __init__(self, T: float = 0.999, t_min: float = 1e-3):
        _check(0 < t_min < T < 1, f"flow: need 0 < t_min < T < 1 (alpha = 1 - t vanishes at "
               f"t = 1), got t_min={t_min}, T={T}")
        self.T, self.t_min = T, t_min

    def marginal(self, t):
        return 1.0 - t, t

    def drift_diffusion(self, x, t):
        return -x / expand_to(1.0 - t, x), jnp.sqrt(2.0 * t / (1.0 - t))

    def log_snr(self, t):
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_log_snr(self, log_snr):
        return jax.nn.sigmoid(-0.5 * log_snr)

    def prior_sample(self, key, shape):
        return self.T * jax.random.normal(key, shape)

    def prior_logp(self, z):
        return _standard_normal_logp(z, self.T)

    def discretize(self, x, t, dt):
        """Exact chain: F = (a - 1) x, G = b from `transition(t - dt, t)`. Euler-Maruyama
        (the base class) is inconsistent at the last step before t = 1 (f dt ~ -1)."""
        return _exact_chain(self, x, t, dt)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse-time SDE (Anderson 1982) or probability-flow ODE of `sde` for a score.

    Reverse SDE:  dx = [f - g^2 score] dt + g dw_bar,
    PF ODE:       dx = [f - 1/2 g^2 score] dt   (Song et al. 2021, eqs. 6 and 13),
    both integrated from T down to 0 (dt < 0).
    """

    sde: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def _weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def drift_diffusion(self, x: Array, t: Array) -> tuple[Array, Array]:
        f, g = self.sde.drift_diffusion(x, t)
        drift = f - expand_to(g**2, x) * self.score_fn(x, t) * self._weight
        return drift, jnp.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: Array, t: Array, dt: float) -> tuple[Array, Array]:
        """Reverse of the forward chain step at t (score_sde's reverse diffusion):
        F = f_fwd - G^2 score (1/2 for the flow), so x_{t-dt} = x_t - F + G z."""
        f, big_g = self.sde.discretize(x, t, dt)
        rev_f = f - expand_to(big_g**2, x) * self.score_fn(x, t) * self._weight
        return rev_f, jnp.zeros_like(big_g) if self.probability_flow else big_g


def reverse(sde: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
    """The reverse-time SDE, or with `probability_flow=True` the PF ODE, of `sde`."""
    return ReverseSDE(sde, score_fn, probability_flow)


_REGISTRY: dict[str, type[SDE]] = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "cosine_vp": CosineVPSDE,
    "vdm": LearnedVPSDE,
    "edm": EDMSDE,
    "flow": FlowSDE,
}


def register(name: str, cls: type[SDE]) -> None:
    """Adds an SDE class under `name` (for SDEs defined outside this file, e.g. VDM's)."""
    _REGISTRY[name] = cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **kwargs) -> SDE:
    """Builds the SDE registered as `name` ("vp", "subvp", "ve", "cosine_vp", "vdm", "edm",
    "flow", ...).

    Raises:
      ValueError: unknown name (listing the valid ones), an unknown keyword, or invalid
        parameters (e.g. beta_min >= beta_max, sigma_min <= 0).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown sde '{name}'; available: {available()}")
    cls = _REGISTRY[name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        import inspect
        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"sde '{name}': bad options {sorted(kwargs)} ({e}); valid options: "
                         f"{valid}") from None
