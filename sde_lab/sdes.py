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

from sde_lab.registry import Registry

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def expand_to(v: Array, x: Array) -> Array:
    """Appends singleton axes to `v` ([B] or scalar) so it broadcasts against `x` [B, ...]."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_times(name: str, T: float, t_min: float) -> None:
    _check(math.isfinite(T) and T > 0 and 0 < t_min < T,
           f"{name}: need finite T > 0 and 0 < t_min < T, got t_min={t_min}, T={T}")


class SDE(abc.ABC):
    """A linear forward SDE dx = f(t) x dt + g(t) dw on [0, T].

    Every subclass is a JAX pytree (registered automatically): its plain attributes are
    static, and the attributes named in `_learned` are leaves, so an SDE whose schedule has
    trainable parameters (VDM's) is one object that jit, grad and losses take like any
    other. `init(key)` returns such parameters ({} for a fixed SDE) and `bind(params)`
    the SDE that uses them (itself for a fixed SDE); the runner keeps them beside the
    network's as params["sde"] and binds them at the boundary, so losses, samplers and the
    likelihood never ask which kind of SDE they have.

    Attributes:
      T: time horizon.
      t_min: default smallest time reached by samplers (score_sde: 1e-3 VP, 1e-5 VE).
    """

    T: float = 1.0
    t_min: float = 1e-3
    _learned: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, cls._flatten, cls._unflatten)

    def _flatten(self):
        leaves = tuple(getattr(self, name) for name in self._learned)
        static = tuple(sorted((k, v) for k, v in vars(self).items() if k not in self._learned))
        return leaves, static

    @classmethod
    def _unflatten(cls, static, leaves):
        obj = object.__new__(cls)
        obj.__dict__.update(dict(static))
        obj.__dict__.update(zip(cls._learned, leaves))
        return obj

    def init(self, key: Array) -> dict:
        """Trainable parameters of the SDE ({} unless its schedule is learned)."""
        del key
        return {}

    def bind(self, params: dict) -> "SDE":
        """The SDE with trainable parameters `params` (from `init`); fixed SDEs: self."""
        del params
        return self

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
        _check(0 <= beta_min < beta_max < math.inf, f"vp: need 0 <= beta_min < beta_max < "
               f"inf, got beta_min={beta_min}, beta_max={beta_max}")
        _check_times("vp", T, t_min)
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
        _check(0 < sigma_min < sigma_max < math.inf, f"ve: need 0 < sigma_min < sigma_max < "
               "inf, got "
               f"sigma_min={sigma_min}, sigma_max={sigma_max}")
        _check_times("ve", T, t_min)
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


def _bisect(fn: Callable[[float], float], lo: float, hi: float) -> float:
    """Root of fn, positive at lo and negative at hi, in float64 (fn is evaluated at
    interior points only)."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if fn(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


class CosineVPSDE(LogSNRVPSDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal 2021, eq. 17, with u = t / T:

        alpha_bar(t) = f(t) / f(0),  f(t) = cos^2((u + s) / (1 + s) * pi / 2),

    offset s = 0.008 (theirs; s = 0 gives alpha_bar = cos^2(pi u / 2)), so beta(t) =
    -d log alpha_bar / dt = 2 a tan(a (u + s)) / T with a = pi / (2 (1 + s)). In log-SNR
    form lambda = log(alpha_bar / (1 - alpha_bar)) = 2 log sin(a (1 - u)) - log sin(a u)
    - log sin(a (u + 2 s)).

    At t = T eq. 17 has alpha_bar = 0, lambda = -inf and beta = inf. This end is made
    finite, smooth (C^1) and strictly decreasing: over [t_b, T] lambda follows the tangent
    line of eq. 17 at t_b, chosen so that lambda(T) = log_snr_min (beta stays finite,
    25,000 at T for the defaults, and the line continues past T, where EDM's churn can take
    the noise level). The prior N(0, I) differs from the marginal at T by alpha_bar(T) =
    sigmoid(-20) = 2e-9 for the default. With log_snr_max (default None: eq. 17 up to
    t = 0, where lambda = +inf and std = 0 as for VP) the t = 0 end is treated the same way
    over [0, t_a], so that std(0) > 0. Eq. 17 holds exactly on [t_a, t_b]; for s = 0.008
    and log_snr_min = -20, T - t_b = 7.9e-5 T.

    `discretize` on an N-step grid gives their discrete chain, beta_i = min(1 -
    alpha_bar(t_i) / alpha_bar(t_{i-1}), 0.999); for N = 1000 the clipping acts at the last
    step only, exactly as in their code. `s=0.0, log_snr_max=20.0` is the schedule this
    class had before eq. 17 (log-SNR clipped to [-20, 20]); then u was interpolated between
    the clipped ends, here eq. 17 holds in between (alpha_bar differs by at most 1.6e-5).
    """

    def __init__(self, s: float = 0.008, log_snr_min: float = -20.0,
                 log_snr_max: float | None = None, T: float = 1.0, t_min: float = 1e-3):
        _check(0 <= s < math.inf and math.isfinite(log_snr_min)
               and (log_snr_max is None or math.isfinite(log_snr_max)),
               f"cosine_vp: need finite s >= 0 and finite log-SNR bounds, got s={s}, "
               f"log_snr_min={log_snr_min}, log_snr_max={log_snr_max}")
        _check(log_snr_max is None or log_snr_min < log_snr_max, f"cosine_vp: need "
               f"log_snr_min < log_snr_max, got {log_snr_min} and {log_snr_max}")
        _check_times("cosine_vp", T, t_min)
        self.s, self.log_snr_min, self.T, self.t_min = float(s), float(log_snr_min), T, t_min
        self.log_snr_max = None if log_snr_max is None else float(log_snr_max)
        # The tangent lines, per unit u = t / T: each root is unique on its half, where
        # lambda is convex (near 0) or concave (near 1).
        lam, dlam = self._lam17_f64, self._dlam17_f64
        bottom = lambda u: lam(u) + dlam(u) * (1 - u) - log_snr_min  # noqa: E731
        _check(bottom(0.5) > 0, f"cosine_vp: log_snr_min={log_snr_min} must be below "
               f"{bottom(0.5) + log_snr_min:.4g} to join eq. 17 by a tangent line")
        u_b = _bisect(bottom, 0.5, 1.0)
        top = (0.0, math.inf, -math.inf)
        if log_snr_max is not None:
            top_fn = lambda u: lam(u) - dlam(u) * u - log_snr_max  # noqa: E731
            _check(top_fn(0.5) < 0, f"cosine_vp: log_snr_max={log_snr_max} must be above "
                   f"{top_fn(0.5) + log_snr_max:.4g} to join eq. 17 by a tangent line")
            u_a = _bisect(top_fn, 0.0, 0.5)
            top = (u_a, lam(u_a), dlam(u_a))
        self._ends = top + (u_b, lam(u_b), dlam(u_b))

    @property
    def _a(self) -> float:
        return 0.5 * math.pi / (1 + self.s)

    def _lam17_f64(self, u: float) -> float:
        a, s = self._a, self.s
        return (2 * math.log(math.sin(a * (1 - u))) - math.log(math.sin(a * u))
                - math.log(math.sin(a * (u + 2 * s))))

    def _dlam17_f64(self, u: float) -> float:
        a, s = self._a, self.s
        cot = lambda v: math.cos(v) / math.sin(v)  # noqa: E731
        return -a * (2 * cot(a * (1 - u)) + cot(a * u) + cot(a * (u + 2 * s)))

    def _tangent(self, u: Array, value: Array) -> Array:
        """`value` (eq. 17's) on [u_a, u_b], the tangent lines' log-SNR outside."""
        u_a, lam_a, slope_a, u_b, lam_b, slope_b = self._ends
        value = jnp.where(u > u_b, lam_b + slope_b * (u - u_b), value)
        return value if self.log_snr_max is None else jnp.where(
            u < u_a, lam_a + slope_a * (u - u_a), value)

    def log_snr(self, t):
        a, s = self._a, self.s
        u = t / self.T
        uc = jnp.clip(u, self._ends[0], self._ends[3])  # keeps unused branches finite
        lam17 = (2 * jnp.log(jnp.sin(a * (1 - uc))) - jnp.log(jnp.sin(a * uc))
                 - jnp.log(jnp.sin(a * (uc + 2 * s))))
        return self._tangent(u, lam17)

    def beta(self, t):
        # 2 a tan(a (u + s)) = 2 a / tan(a (1 - u)), the latter exact near T in float32.
        # On the tangent lines beta = -sigmoid(-lambda) lambda'.
        u_a, _, slope_a, u_b, _, slope_b = self._ends
        u = t / self.T
        uc = jnp.clip(u, u_a, u_b)
        beta = 2 * self._a / jnp.tan(self._a * (1 - uc))
        lam = self.log_snr(t)
        beta = jnp.where(u > u_b, -jax.nn.sigmoid(-lam) * slope_b, beta)
        if self.log_snr_max is not None:
            beta = jnp.where(u < u_a, -jax.nn.sigmoid(-lam) * slope_a, beta)
        return beta / self.T

    def t_from_log_snr(self, log_snr):
        u_a, lam_a, slope_a, u_b, lam_b, slope_b = self._ends
        a, s = self._a, self.s
        lam = jnp.clip(log_snr, lam_b, lam_a)
        # Eq. 17 inverted without cancellation at either end. With alpha_bar =
        # sigmoid(lambda) and u_s = a s: cos^2(a (u + s)) = alpha_bar cos^2(u_s) gives
        # e = a (1 - u) = asin(sqrt(alpha_bar) cos(u_s)) (small near T); and
        # sin(d) sin(d + 2 u_s) = (1 - alpha_bar) cos^2(u_s) =: q, d = a u (small near 0),
        # is a quadratic in tan(d) whose positive root is taken.
        e = jnp.arcsin(jnp.sqrt(jax.nn.sigmoid(jnp.minimum(lam, 0.0))) * math.cos(a * s))
        q = jax.nn.sigmoid(-jnp.maximum(lam, 0.0)) * math.cos(a * s) ** 2
        b, c = math.sin(2 * a * s), math.cos(2 * a * s) - q
        tan_d = jnp.sqrt(q / c) if s == 0 else 2 * q / (b + jnp.sqrt(b**2 + 4 * c * q))
        u = jnp.where(lam >= 0, jnp.arctan(tan_d) / a, 1 - e / a)
        u = jnp.where(log_snr < lam_b, u_b + (log_snr - lam_b) / slope_b, u)
        if self.log_snr_max is not None:
            u = jnp.where(log_snr > lam_a, u_a + (log_snr - lam_a) / slope_a, u)
        return self.T * u

    def __repr__(self) -> str:
        return (f"CosineVPSDE(s={self.s}, log_snr_min={self.log_snr_min}, log_snr_max="
                f"{self.log_snr_max}, T={self.T}, t_min={self.t_min})")


class LearnedVPSDE(LogSNRVPSDE):
    """VDM's VP SDE, defined by its noise schedule gamma(t) = -log_snr(t) (Kingma et al.
    2021, "Variational Diffusion Models"): std^2 = sigmoid(gamma), mean_coeff^2 =
    sigmoid(-gamma), beta(t) = sigmoid(gamma) gamma'(t).

    Two forms, one class:
      * fixed (VDM's "fixed" schedule, `learned=False`): gamma linear in t from gamma_min
        at t = 0 to gamma_max at t = T.
      * learned (`learned=True`): gamma is VDM's monotone network
        (`sde_lab.schedules.NoiseSchedule`, initialised to the same endpoints) with
        trainable parameters: `params = sde.init(key)`, then `sde.bind(params)` is the SDE
        to use, inside the traced loss, so gradients reach the parameters through
        `marginal`, `beta` (forward-mode d gamma / dt) and `log_snr`. Its inverse log-SNR
        is the base-class bisection (gamma is strictly increasing).
    """

    _learned = ("params",)

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0,
                 learned: bool = False, num_features: int = 1024, T: float = 1.0,
                 t_min: float = 1e-3):
        _check(math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max,
               f"vdm: need finite gamma_min < gamma_max, got gamma_min={gamma_min}, "
               f"gamma_max={gamma_max}")
        _check(num_features >= 1, f"vdm: num_features must be >= 1, got {num_features}")
        _check_times("vdm", T, t_min)
        self.gamma_min, self.gamma_max, self.learned = gamma_min, gamma_max, learned
        self.num_features, self.T, self.t_min = num_features, T, t_min
        self.params = None

    def _schedule(self):
        from sde_lab.schedules import NoiseSchedule  # a Flax module: imported when learned

        return NoiseSchedule(self.gamma_min, self.gamma_max, self.num_features)

    def init(self, key):
        if not self.learned:
            return {}
        return self._schedule().init(key, jnp.zeros((1,)))

    def bind(self, params):
        if not self.learned:
            return self
        leaves, static = self._flatten()
        del leaves
        return type(self)._unflatten(static, (params,))

    def gamma(self, t: Array) -> Array:
        """gamma(t) = log(std^2 / mean_coeff^2), increasing; shaped like t."""
        s = t / self.T
        if not self.learned:
            return self.gamma_min + (self.gamma_max - self.gamma_min) * s
        if self.params is None:
            raise ValueError("vdm: a learned schedule needs its parameters: use "
                             "sde.bind(params) with params = sde.init(key) or a checkpoint's")
        return self._schedule().apply(self.params, s)

    def log_snr(self, t):
        return -self.gamma(t)

    def t_from_log_snr(self, log_snr):
        if not self.learned:
            return self.T * (-log_snr - self.gamma_min) / (self.gamma_max - self.gamma_min)
        return super().t_from_log_snr(log_snr)

    def __repr__(self) -> str:
        return (f"LearnedVPSDE(gamma_min={self.gamma_min}, gamma_max={self.gamma_max}, "
                f"learned={self.learned}, T={self.T}, t_min={self.t_min})")


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
        _check(0 < sigma_min < sigma_max < math.inf, f"edm: need 0 < sigma_min < sigma_max < "
               "inf, got "
               f"sigma_min={sigma_min}, sigma_max={sigma_max}")
        _check(0 < rho < math.inf, f"edm: need finite rho > 0, got rho={rho}")
        _check_times("edm", T, t_min)
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


REGISTRY: Registry[SDE] = Registry("sde", {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "cosine_vp": CosineVPSDE,
    "vdm": LearnedVPSDE,
    "edm": EDMSDE,
    "flow": FlowSDE,
})


def register(name: str, cls: type[SDE]) -> None:
    """Adds an SDE class under `name` (for SDEs defined outside this file)."""
    REGISTRY.register(name, cls)


def available() -> list[str]:
    return REGISTRY.available()


def make(name: str, **kwargs) -> SDE:
    """Builds the SDE registered as `name` ("vp", "subvp", "ve", "cosine_vp", "vdm", "edm",
    "flow", ...).

    Raises:
      ValueError: unknown name or option (listing the valid ones), or invalid parameters
        (e.g. beta_min >= beta_max, sigma_min <= 0, a non-finite value).
    """
    return REGISTRY.make(name, **kwargs)
