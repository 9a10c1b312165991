"""Denoising score-matching losses (Vincent 2011; Song et al. 2021, eq. 7).

Every loss is a pure function `loss(params, score_model, sde, batch, key, **options)`
returning a scalar (`key`: one PRNG key, or one per example, see `example_keys`), where `score_model(params, x, t)` is the score (see
`parameterization.Parameterization.score_model`) and `batch` is the clean data x_0
`[B, ...]`. With x_t = mean_coeff(t) x_0 + std(t) z, the per-example loss is

    lambda(t) * reduce_d( (score(x_t, t) + z / std(t))^2 )

Conventions follow score_sde: no factor 1/2, `reduce="mean"` averages over data dimensions
(`"sum"` sums them, which makes the likelihood-weighted loss an upper-bound estimate of the
negative log-likelihood up to constants), and the batch is averaged.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from sde_lab.sdes import SDE, expand_to

Array = jax.Array
ScoreModel = Callable[[object, Array, Array], Array]

WEIGHTINGS = ("std2", "likelihood")
REDUCTIONS = ("mean", "sum")


def _reduce(v: Array, reduce: str) -> Array:
    flat = v.reshape(v.shape[0], -1)
    return jnp.mean(flat, axis=-1) if reduce == "mean" else jnp.sum(flat, axis=-1)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose from {list(choices)}")


def example_keys(key: Array, batch_size: int) -> Array:
    """One PRNG key per example: `key` split B ways, or `key` itself if it already is [B].

    Losses draw every random number per example from these keys, so a data-parallel run
    that shards the per-example keys with the batch (jit or pmap) draws exactly the noise of
    the one-device run.
    """
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    single_ndim = 0 if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else 1
    if key.ndim == single_ndim:
        return jax.random.split(key, batch_size)
    if key.shape[0] != batch_size:
        raise ValueError(f"got {key.shape[0]} per-example keys for a batch of {batch_size}")
    return key


def _uniform_and_normal(key: Array, batch: Array) -> tuple[Array, Array]:
    """Per-example u ~ U[0, 1) [B] and z ~ N(0, I) shaped like `batch`."""
    def draw(k):
        k_u, k_z = jax.random.split(k)
        return jax.random.uniform(k_u), jax.random.normal(k_z, batch.shape[1:])

    return jax.vmap(draw)(example_keys(key, batch.shape[0]))


def _scaled_residual(params, score_model, sde, x0, t, z, reduce) -> Array:
    """reduce_d((std * score(x_t, t) + z)^2), i.e. std^2 times the DSM residual: [B]."""
    mean_coeff, std = sde.marginal(t)
    xt = expand_to(mean_coeff, x0) * x0 + expand_to(std, x0) * z
    score = score_model(params, xt, t)
    return _reduce((expand_to(std, x0) * score + z) ** 2, reduce)


def dsm_loss(params, score_model: ScoreModel, sde: SDE, batch: Array, key: Array, *,
             weighting: str = "std2", importance_sampling: bool = False,
             reduce: str = "mean", eps: float = 1e-5) -> Array:
    """Continuous-time DSM with t ~ U[eps, T] (score_sde's `get_sde_loss_fn`).

    Args:
      weighting: "std2" (lambda = std^2, score_sde's default) or "likelihood"
        (lambda = g(t)^2, Song et al. 2021b, which bounds the NLL).
      importance_sampling: with likelihood weighting, draw t with density proportional to
        g^2 / std^2 instead of uniformly. For every linear SDE g^2 / std^2 = -d log_snr / dt,
        so t is uniform in log-SNR; the estimator stays unbiased for the same expectation
        and its weight becomes the constant (log_snr(eps) - log_snr(T)) / (T - eps).
      reduce: "mean" or "sum" over data dimensions.
      eps: smallest training time.
    """
    _check_choice("weighting", weighting, WEIGHTINGS)
    _check_choice("reduce", reduce, REDUCTIONS)
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling=True needs weighting='likelihood'")
    u, z = _uniform_and_normal(key, batch)
    if importance_sampling:
        hi, lo = sde.log_snr(jnp.asarray(eps)), sde.log_snr(jnp.asarray(sde.T))
        t = sde.t_from_log_snr(hi - u * (hi - lo))
        weight = (hi - lo) / (sde.T - eps)
    else:
        t = eps + u * (sde.T - eps)
        if weighting == "std2":
            weight = 1.0
        else:
            std, g = sde.marginal(t)[1], sde.drift_diffusion(batch, t)[1]
            weight = g**2 / std**2
    return jnp.mean(weight * _scaled_residual(params, score_model, sde, batch, t, z, reduce))


def discrete_dsm_loss(params, score_model: ScoreModel, sde: SDE, batch: Array, key: Array,
                      *, num_levels: int = 1000, reduce: str = "mean") -> Array:
    """Discrete-time DSM over N noise levels t_i = sde.discrete_times(N), index uniform.

    With lambda = std^2 this is, term for term, DDPM's eps-MSE ||eps_hat - z||^2 (Ho et al.
    2020, "simple" loss, since eps_hat = -std * score) on a VP SDE, and NCSN's SMLD loss
    sigma_i^2 ||score + z / sigma_i||^2 (Song & Ermon 2019) on a VE SDE, whose levels
    sigma(t_i) are the geometric sequence sigma_min ... sigma_max.
    """
    _check_choice("reduce", reduce, REDUCTIONS)
    u, z = _uniform_and_normal(key, batch)
    index = jnp.minimum(jnp.floor(u * num_levels).astype(jnp.int32), num_levels - 1)
    t = sde.discrete_times(num_levels)[index]
    return jnp.mean(_scaled_residual(params, score_model, sde, batch, t, z, reduce))


ddpm_loss = discrete_dsm_loss
smld_loss = discrete_dsm_loss

_REGISTRY: dict[str, Callable] = {
    "dsm": dsm_loss,
    "ddpm": ddpm_loss,
    "smld": smld_loss,
}


def make(name: str, **options) -> Callable:
    """Returns loss(params, score_model, sde, batch, key) with `options` bound."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss '{name}'; available: {sorted(_REGISTRY)}")
    return functools.partial(_REGISTRY[name], **options)
