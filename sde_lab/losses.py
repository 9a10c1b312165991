"""Denoising score-matching losses (Vincent 2011; Song et al. 2021, eq. 7).

Every loss is a pure function `loss(params, score_model, sde, batch, key, **options)`
returning a scalar (`key`: one PRNG key, or one per example, see `example_keys`), where `score_model(params, x, t)` is the score (see
`parameterization.Parameterization.score_model`) and `batch` is the clean data x_0
`[B, ...]`. With x_t = mean_coeff(t) x_0 + std(t) z, the per-example loss is

    lambda(t) * reduce_d( (score(x_t, t) + z / std(t))^2 )

Conventions follow score_sde's losses.py: `reduce="mean"` (its reduce_mean=True) averages
over data dimensions, with no factor 1/2; `reduce="sum"` (its reduce_mean=False) is 1/2
times the sum over data dimensions. The batch is averaged. With reduce="sum" and the
likelihood weighting, (T - eps) times the loss is the DSM form of the bound of Song et al.
2021b (Theorem 1: 1/2 int g^2 E||score - grad log p_t||^2 dt) up to a constant.
`edm_loss` (EDM's log-normal sigma and lambda) and `flow_matching_loss` (velocity
regression) are this same loss with their own time densities and weights, derived in their
docstrings.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from sde_lab.registry import Registry
from sde_lab.sdes import SDE, expand_to

Array = jax.Array
ScoreModel = Callable[[object, Array, Array], Array]

WEIGHTINGS = ("std2", "likelihood")
REDUCTIONS = ("mean", "sum")


def _reduce(v: Array, reduce: str) -> Array:
    """[B, ...] -> [B]: the mean over data dimensions, or score_sde's 1/2 * sum."""
    flat = v.reshape(v.shape[0], -1)
    return jnp.mean(flat, axis=-1) if reduce == "mean" else 0.5 * jnp.sum(flat, axis=-1)


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
      reduce: "mean" over data dimensions, or "sum": 1/2 * the sum, as score_sde.
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

    With lambda = std^2 this has the form of DDPM's eps-MSE ||eps_hat - z||^2 (Ho et al.
    2020, "simple" loss, since eps_hat = -std * score) on a VP SDE, and is NCSN's SMLD loss
    sigma_i^2 ||score + z / sigma_i||^2 (Song & Ermon 2019) on a VE SDE, whose levels
    sigma(t_i) are the geometric sequence sigma_min ... sigma_max. On a VP SDE the noise
    levels are the SDE's marginals at t_i, not DDPM's discrete chain alpha_bar_i =
    prod_j (1 - beta_j) that score_sde's DDPM loss uses: with 1000 levels their std differ
    by up to 4.9% (first level) and mean_coeff by up to 3.4% (last level). `reduce` as in
    `dsm_loss`.
    """
    _check_choice("reduce", reduce, REDUCTIONS)
    if not (isinstance(num_levels, int) and num_levels >= 1):
        raise ValueError(f"num_levels={num_levels!r} is not valid: must be an int >= 1")
    u, z = _uniform_and_normal(key, batch)
    index = jnp.minimum(jnp.floor(u * num_levels).astype(jnp.int32), num_levels - 1)
    t = sde.discrete_times(num_levels)[index]
    return jnp.mean(_scaled_residual(params, score_model, sde, batch, t, z, reduce))


def vdm_vlb_noise(key: Array, batch: Array, *, antithetic: bool = True, t_min: float = 0.0,
                  T: float = 1.0) -> tuple[Array, Array, Array]:
    """The random numbers of `vdm_vlb_loss`: t [B] in [t_min, T), eps and eps_0 like batch.

    eps and eps_0 are drawn per example from `example_keys`. Antithetic (stratified) time
    sampling, t_i = t_min + (T - t_min) frac(u + i / B) with one shared u ~ U[0, 1)
    (Kingma et al. 2021's low-discrepancy sampler; the official `antithetic_time_sampling`),
    leaves every t_i uniform but couples the batch: u comes from the first example's key,
    so a run with the same global batch and keys draws the same times on any number of
    devices, while a per-device (pmap) batch would draw its own u.
    """
    keys = example_keys(key, batch.shape[0])
    eps, eps_0 = jax.vmap(lambda k: tuple(
        jax.random.normal(kk, batch.shape[1:]) for kk in jax.random.split(k)))(keys)
    if antithetic:
        u = jax.random.uniform(jax.random.fold_in(keys[0], 1))
        u = jnp.mod(u + jnp.arange(batch.shape[0]) / batch.shape[0], 1.0)
    else:
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1)))(keys)
    return t_min + (T - t_min) * u, eps, eps_0


def vdm_vlb_terms(params, score_model: ScoreModel, sde, batch: Array, t: Array, eps: Array,
                  eps_0: Array, *, num_levels: int = 256,
                  data_range: tuple[float, float] = (-1.0, 1.0),
                  t_min: float = 0.0) -> dict[str, Array]:
    """Terms of the continuous-time (T -> infinity) VLB of Kingma et al. 2021, [B] nats
    each, for data on the grid x_k = lo + k (hi - lo) / (num_levels - 1):

      diffusion:      (T - t_min) * 1/2 gamma'(t) ||eps - eps_hat(z_t, t)||^2, t ~ U[t_min, T]
                      (gamma = -log_snr; eps_hat = -std * score; one-sample estimate),
      prior:          KL(q(z_T | x) || N(0, I)) in closed form,
      reconstruction: -log p(x | z_0) of the factorised decoder p(x_k | z_0) proportional
                      to N(z_0 / mean_coeff; x_k, std^2 / mean_coeff^2) at t_min
                      (z_0 = mean_coeff x + std eps_0): VDM's discretised decoder.

    Deterministic given (t, eps, eps_0); `vdm_vlb_loss` draws them. Valid for any SDE with
    a unit Gaussian prior (VP family), where std(t_min) > 0: VDM's schedules at t_min = 0.

    The grid: VDM's code (google-research/vdm, EncDec.encode) puts the L = 256 levels at
    the bin centres 2 (k + 1/2) / L - 1, spacing 2 / L; data_range = (-1 + 1/L, 1 - 1/L)
    on data encoded so gives its reconstruction and prior terms exactly. The default
    (-1, 1) is the grid of sde_lab's data scaling k / (L - 1) (spacing 2 / (L - 1)). Both
    decoders are distributions over the same L levels, so either loss bounds -log2 P(k);
    the bounds differ slightly because the data are embedded 256/255 wider here.

    Args:
      sde: the SDE (a learned schedule: the SDE bound to its parameters, `sde.bind`).
      batch: x [B, ...] on the grid (the decoder rounds it to the nearest level).
    """
    sum_d = lambda v: jnp.sum(v.reshape(v.shape[0], -1), axis=-1)  # noqa: E731
    mean_coeff, std = sde.marginal(t)
    z_t = expand_to(mean_coeff, batch) * batch + expand_to(std, batch) * eps
    eps_hat = -expand_to(std, batch) * score_model(params, z_t, t)
    _, dgamma = jax.jvp(lambda s: -sde.log_snr(s), (t,), (jnp.ones_like(t),))
    diffusion = (sde.T - t_min) * 0.5 * dgamma * sum_d((eps - eps_hat) ** 2)

    mean_1, std_1 = sde.marginal(jnp.asarray(sde.T))
    prior = 0.5 * sum_d(mean_1**2 * batch**2 + std_1**2 - 2.0 * jnp.log(std_1) - 1.0)

    mean_0, std_0 = sde.marginal(jnp.asarray(t_min, batch.dtype))
    lo, hi = data_range
    step = (hi - lo) / (num_levels - 1)
    levels = lo + step * jnp.arange(num_levels, dtype=batch.dtype)
    index = jnp.clip(jnp.round((batch - lo) / step), 0, num_levels - 1).astype(jnp.int32)
    # (z_0 / mean_coeff - x_k) / (std / mean_coeff), written without cancellation.
    levels = levels.reshape((1,) * batch.ndim + (num_levels,))
    dist = (batch[..., None] - levels) * (mean_0 / std_0) + eps_0[..., None]
    log_probs = jax.nn.log_softmax(-0.5 * dist**2, axis=-1)
    reconstruction = -sum_d(jnp.take_along_axis(log_probs, index[..., None], -1)[..., 0])
    return {"diffusion": diffusion, "prior": prior, "reconstruction": reconstruction}


def vdm_vlb_loss(params, score_model: ScoreModel, sde, batch: Array, key: Array, *,
                 num_levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0),
                 antithetic: bool = True, t_min: float = 0.0) -> Array:
    """VDM's continuous-time VLB of discrete data in bits/dim (Kingma et al. 2021): the
    batch mean of diffusion + prior + reconstruction nats (`vdm_vlb_terms`) / (D ln 2),
    D = prod(batch.shape[1:]), an unbiased estimate of an upper bound on -log2 P(x) / D.

    With a learned schedule (`sde = sde.bind(sde_params)` inside the differentiated
    function) the same loss trains the schedule with its plain gradient. For a network
    conditioned on gamma_t (the `eps_gamma` parameterization),
    the diffusion term's expectation depends on the schedule only through gamma(t_min) and
    gamma(T), so the endpoints get a useful gradient and the inner shape a zero-mean one;
    VDM's variance-minimising update of the shape (the paper's "variance minimization"
    section) is not implemented, nor is it in the official model_vdm.py. Randomness:
    `vdm_vlb_noise` (antithetic times couple the batch). Options: num_levels (256 for 8-bit
    images, 17 for the 8x8 digits), data_range (the values of the lowest and highest
    level; VDM's: (-1 + 1/L, 1 - 1/L), see `vdm_vlb_terms`), antithetic, t_min (0 for
    VDM's schedules).
    """
    if num_levels < 2 or not data_range[0] < data_range[1]:
        raise ValueError(f"vdm_vlb: need num_levels >= 2 and data_range lo < hi, got "
                         f"num_levels={num_levels}, data_range={data_range}")
    t, eps, eps_0 = vdm_vlb_noise(key, batch, antithetic=antithetic, t_min=t_min, T=sde.T)
    terms = vdm_vlb_terms(params, score_model, sde, batch, t, eps, eps_0,
                          num_levels=num_levels, data_range=data_range, t_min=t_min)
    nats = terms["diffusion"] + terms["prior"] + terms["reconstruction"]
    return jnp.mean(nats) / (math.prod(batch.shape[1:]) * math.log(2.0))


def _check_eps(loss: str, eps: float, sde: SDE) -> None:
    if not 0 < eps < sde.T:
        raise ValueError(f"{loss}: eps={eps} must be in (0, T = {sde.T})")


def edm_loss(params, score_model: ScoreModel, sde: SDE, batch: Array, key: Array, *,
             p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5,
             reduce: str = "mean", eps: float = 1e-5) -> Array:
    """EDM's training loss (Karras et al. 2022, eq. 8 and Table 1; NVlabs/edm EDMLoss):
    ln sigma ~ N(p_mean, p_std^2), lambda(sigma) = (sigma^2 + sigma_data^2) /
    (sigma sigma_data)^2, loss = lambda(sigma) reduce_d((D(x_0 + sigma n; sigma) - x_0)^2).

    On any SDE, sigma is the noise level sigma_edm = std / mean_coeff of the scaled state
    x_t / mean_coeff = x_0 + sigma_edm z: draw sigma, take t = t_from_log_snr(-2 ln sigma),
    and D is Tweedie's denoiser x0_hat = (x_t + std^2 score) / mean_coeff, the output of
    EDM's D for any parameterization. The loss is then a weighting of the same denoising
    objective as `dsm_loss`:

        D - x_0 = (mean_coeff x_0 + std z + std^2 score) / mean_coeff - x_0
                = sigma_edm (std score + z),
        lambda(sigma) |D - x_0|^2 = (1 + sigma^2 / sigma_data^2) |std score + z|^2,

    i.e. the std^2-weighted DSM residual with weight 1 + sigma^2 / sigma_data^2, at times
    drawn so that ln sigma_edm(t) is N(p_mean, p_std^2). Its value for a given score does not
    depend on the SDE. For data of variance sigma_data^2 per dimension the exact denoiser
    leaves a posterior variance sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2), so the
    minimum is exactly 1 at every sigma (EDM's unit loss).

    sigma is restricted to the SDE's range [sigma_edm(eps), sigma_edm(T)] by clipping the
    log-SNR; the weight uses the sigma actually used. With the defaults the clipped mass is
    below 2e-5 on vp, subvp, cosine_vp, edm (sigma 0.002..80) and flow (1e-5..999), 0.2% on
    ve (std(0) = sigma_min = 0.01), at ends of the range where the exact denoiser's
    weighted error is flat in sigma (1 at sigma -> 0, s^2 / sigma_data^2 at sigma -> inf).
    Conventions as `dsm_loss`: no factor 1/2, reduce="mean" over data dimensions (EDM sums).

    Args:
      p_mean, p_std: mean and standard deviation of ln sigma (EDM: -1.2, 1.2).
      sigma_data: the data's standard deviation in lambda (EDM: 0.5 for images in [-1, 1]).
      reduce: "mean" or "sum" over data dimensions.
      eps: smallest training time (sets the smallest sigma).
    """
    _check_choice("reduce", reduce, REDUCTIONS)
    if not p_std > 0:
        raise ValueError(f"edm: p_std must be > 0, got p_std={p_std}")
    if not sigma_data > 0:
        raise ValueError(f"edm: sigma_data must be > 0, got sigma_data={sigma_data}")
    _check_eps("edm", eps, sde)
    u, z = _uniform_and_normal(key, batch)
    log_sigma = p_mean + p_std * jax.scipy.special.ndtri(u)
    lo, hi = sde.log_snr(jnp.asarray(sde.T)), sde.log_snr(jnp.asarray(eps))
    t = jnp.clip(sde.t_from_log_snr(jnp.clip(-2.0 * log_sigma, lo, hi)), eps, sde.T)
    mean_coeff, std = sde.marginal(t)
    weight = 1.0 + (std / mean_coeff) ** 2 / sigma_data**2
    return jnp.mean(weight * _scaled_residual(params, score_model, sde, batch, t, z, reduce))


TIME_SAMPLINGS = ("uniform", "logit_normal")


def flow_matching_loss(params, score_model: ScoreModel, sde: SDE, batch: Array, key: Array,
                       *, time_sampling: str = "uniform", logit_mean: float = 0.0,
                       logit_std: float = 1.0, reduce: str = "mean",
                       eps: float = 1e-5) -> Array:
    """Conditional flow matching (Lipman et al. 2023; Liu et al. 2023 on `flow`):
    reduce_d((v_hat(x_t, t) - v)^2) with v = d x_t / dt = mean_coeff' x_0 + std' z, the
    velocity of the path (z - x_0 on `flow`), and v_hat = f x_t - 1/2 g^2 score, the
    probability-flow drift (`parameterization.Velocity`: a network that predicts v
    directly returns it exactly).

    A weighting of the same denoising objective as `dsm_loss`: with f = mean_coeff' /
    mean_coeff, f x_t = mean_coeff' x_0 + f std z, and 1/2 g^2 = std (std' - f std)
    (the variance ODE), so with c = g^2 / (2 std):

        v_hat - v = (f std - std') z - 1/2 g^2 score = -c (std score + z),
        |v_hat - v|^2 = (g^2 / (2 std))^2 |std score + z|^2,

    the std^2-weighted DSM residual with weight g^4 / (4 std^2): 1 / (1 - t)^2 on `flow`,
    where g^2 = 2 t / (1 - t), std = t. For data N(m, s^2 I) on `flow` with t ~ U[eps, T]
    the minimum (exact score) per dimension is
    s / (T - eps) [atan((T - t0) / w) - atan((eps - t0) / w)], t0 = s^2 / (1 + s^2),
    w = s / (1 + s^2): pi s / 2 as eps -> 0, T -> 1 (see tests/test_losses.py).

    Args:
      time_sampling: "uniform" (t ~ U[eps, T]) or "logit_normal" (t = eps + (T - eps)
        sigmoid(logit_mean + logit_std n), n ~ N(0, 1): Esser et al. 2024's choice,
        logit_mean = 0, logit_std = 1, which favours the middle of the path).
      logit_mean, logit_std: the logit-normal's location and scale (unused by "uniform").
      reduce: "mean" or "sum" over data dimensions.
      eps: smallest training time (the velocity is undefined where g = 0, t = 0 on flow).

    Going through the score costs precision where f and g^2 are large (flow near T = 0.999:
    f = -1000), about 1e-4 relative in float32 there; no other loss term is affected.
    """
    _check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    _check_choice("reduce", reduce, REDUCTIONS)
    if not logit_std > 0:
        raise ValueError(f"flow_matching: logit_std must be > 0, got logit_std={logit_std}")
    _check_eps("flow_matching", eps, sde)
    u, z = _uniform_and_normal(key, batch)
    if time_sampling == "logit_normal":
        u = jax.nn.sigmoid(logit_mean + logit_std * jax.scipy.special.ndtri(u))
    t = eps + u * (sde.T - eps)
    std, g = sde.marginal(t)[1], sde.drift_diffusion(batch, t)[1]
    weight = (0.5 * g**2 / std) ** 2
    return jnp.mean(weight * _scaled_residual(params, score_model, sde, batch, t, z, reduce))


ddpm_loss = discrete_dsm_loss
smld_loss = discrete_dsm_loss

REGISTRY: Registry[Callable] = Registry("loss", {
    "dsm": dsm_loss,
    "ddpm": ddpm_loss,
    "smld": smld_loss,
    "vdm_vlb": vdm_vlb_loss,
    "edm": edm_loss,
    "flow_matching": flow_matching_loss,
})


def available() -> list[str]:
    return REGISTRY.available()


def make(name: str, **options) -> Callable:
    """Returns loss(params, score_model, sde, batch, key) with `options` bound.

    The options are checked at once: the loss is traced (shapes only, nothing computed) on
    a two-example batch of a VP SDE with a stand-in score, so a bad value fails here.

    Raises:
      ValueError: unknown loss or option (listing the valid ones), or a bad option value.
    """
    REGISTRY.check_name(name)
    REGISTRY.check_options(name, options)
    loss = functools.partial(REGISTRY[name], **options)
    from sde_lab.sdes import VPSDE

    jax.eval_shape(lambda: loss(None, lambda p, x, t: -x, VPSDE(), jnp.zeros((2, 2)),
                                jax.random.PRNGKey(0)))
    return loss
