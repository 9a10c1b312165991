"""Distributions whose diffused densities and scores are known in closed form.

A Gaussian mixture with diagonal components stays a Gaussian mixture under every linear
SDE: if x_0 ~ sum_k w_k N(mu_k, diag(s_k^2)), then

    p_t(x) = sum_k w_k N(x; mean_coeff(t) mu_k, diag(mean_coeff(t)^2 s_k^2 + std(t)^2)).

This gives exact scores and log-densities at every t, so samplers and the likelihood can be
tested (and benchmarked) with solver error separated from training error.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab.sdes import SDE

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """sum_k weights[k] N(means[k], diag(stds[k]^2)) on R^D.

    Attributes:
      means: [K, D].
      stds: [K, D] per-dimension standard deviations (> 0).
      weights: [K], positive, summing to 1.
    """

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray

    @classmethod
    def create(cls, means, stds, weights=None) -> "GaussianMixture":
        means = np.asarray(means, np.float64)
        if means.ndim == 1:
            means = means[None]
        stds = np.broadcast_to(np.asarray(stds, np.float64), means.shape).copy()
        k = means.shape[0]
        weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, np.float64)
        if weights.shape != (k,) or np.any(weights <= 0) or not math.isclose(weights.sum(), 1):
            raise ValueError(f"weights must be {k} positive numbers summing to 1, got {weights}")
        if np.any(stds <= 0):
            raise ValueError("stds must be positive")
        return cls(means, stds, weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    def cov(self) -> np.ndarray:
        """Full covariance of the mixture (float64)."""
        mu = self.mean()
        second = sum(w * (np.diag(s**2) + np.outer(m, m))
                     for w, m, s in zip(self.weights, self.means, self.stds))
        return second - np.outer(mu, mu)

    def sample(self, key: Array, n: int) -> Array:
        """[n, D] samples (float32)."""
        key_k, key_z = jax.random.split(key)
        comp = jax.random.choice(key_k, len(self.weights), (n,), p=jnp.asarray(self.weights))
        z = jax.random.normal(key_z, (n, self.dim))
        return jnp.asarray(self.means, jnp.float32)[comp] + jnp.asarray(self.stds, jnp.float32)[comp] * z

    def _component_logp(self, x: Array, mean_coeff: Array, std: Array) -> Array:
        """log w_k + log N(x; a mu_k, a^2 s_k^2 + std^2): [B, K] for x [B, D], t-terms [B]."""
        mu = jnp.asarray(self.means, x.dtype)[None]            # [1, K, D]
        s2 = jnp.asarray(self.stds, x.dtype)[None] ** 2        # [1, K, D]
        a = mean_coeff[:, None, None]
        var = a**2 * s2 + (std**2)[:, None, None]              # [B, K, D]
        diff = x[:, None, :] - a * mu
        log_n = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        return jnp.log(jnp.asarray(self.weights, x.dtype))[None] + log_n

    def logp(self, sde: SDE, x: Array, t: Array) -> Array:
        """log p_t(x) under `sde`: x [B, D], t [B] (or scalar) -> [B] nats."""
        mean_coeff, std = sde.marginal(jnp.broadcast_to(t, x.shape[:1]))
        return jax.nn.logsumexp(self._component_logp(x, mean_coeff, std), axis=-1)

    def data_logp(self, x: Array) -> Array:
        """log p_0(x) of the clean mixture: [B]."""
        ones = jnp.ones(x.shape[:1], x.dtype)
        return jax.nn.logsumexp(self._component_logp(x, ones, 0.0 * ones), axis=-1)

    def score_fn(self, sde: SDE):
        """The exact score grad_x log p_t(x) as a pure function score_fn(x, t)."""

        def score(x: Array, t: Array) -> Array:
            return jax.grad(lambda x_: jnp.sum(self.logp(sde, x_, t)))(x)

        return score
