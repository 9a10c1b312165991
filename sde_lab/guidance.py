"""Controllable generation: guided score functions, label dropout, noise-conditional
classifiers.

Class-conditional sampling needs the score of p_t(x | y). By Bayes' rule

    grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x),

so it can come from a class-conditional score network (classifier-free guidance, Ho &
Salimans 2022) or from an unconditional score plus the input gradient of a classifier
trained on noised data x_t (classifier guidance, Song et al. 2021 Sec. 5 and App. I;
Dhariwal & Nichol 2021). Scaling the class term sharpens p_t(x | y) toward its modes
(fidelity up, diversity down). Both transforms below take and return pure score functions
`score_fn(x, t) -> [B, ...]` (x: [B, ...], t: [B]), so they work with every sampler and
every SDE unchanged; a guided score is not the score of a diffused distribution when
scale != 0, 1, so samplers then sample an approximation, as in the papers.

    cond, uncond = guidance.label_score_fns(score_model, params, y, num_classes)
    score_fn = guidance.classifier_free(cond, uncond, scale=3.0)
    x, stats = sample_fn(key, sde, score_fn, shape)

    logits_model = guidance.classifier_logits_model(classifier.apply, sde)
    log_prob_fn = guidance.classifier_log_prob_fn(logits_model, classifier_params, y)
    score_fn = guidance.classifier(uncond_score_fn, log_prob_fn, scale=2.0)

Noise-conditional classifier. p_t(y | x_t) depends on t only through the noise level:
x_t / alpha = x_0 + (sigma / alpha) z with sigma / alpha = exp(-log_snr / 2). The
classifier therefore sees the SDE-free pair (`classifier_input`)

    x_in = x_t / sqrt(alpha^2 sigma_data^2 + sigma^2),   cond = log(sigma / alpha),

(EDM's c_in applied to x_t / alpha, and the log of the VE-equivalent noise level: for a VE
SDE exactly the log sigma that score_sde's CIFAR-10 Wide-ResNet classifier takes). Equal
log-SNR gives equal inputs under VP, sub-VP, VE or any other SDE, so one classifier serves
every SDE, and it is trained by `classifier_loss` (cross-entropy on x_t drawn from the
SDE's perturbation kernel, t ~ U[eps, T]).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_lab.losses import example_keys
from sde_lab.parameterization import Parameterization
from sde_lab.sdes import SDE, expand_to

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]          # score_fn(x, t) -> like x
LogProbFn = Callable[[Array, Array], Array]        # log_prob_fn(x, t) -> [B]
LabelledScoreModel = Callable[[object, Array, Array, Array], Array]   # (params, x, t, y)
LogitsModel = Callable[[object, Array, Array], Array]   # (params, x, t) -> [B, K]


# ---- Guided score functions (public API, DESIGN.md). ----

def classifier_free(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn,
                    scale: float | Array) -> ScoreFn:
    """Classifier-free guidance: uncond + scale * (cond - uncond).

    scale 0 gives the unconditional score, 1 the class-conditional one, > 1 guidance
    (diffusers' `guidance_scale` convention). Ho & Salimans (2022, eq. 6) write
    (1 + w) cond - w uncond, so their w = scale - 1. Each call evaluates both score
    functions (2 network evaluations per sampler NFE).

    Args:
      cond_score_fn: grad_x log p_t(x | y), score_fn(x, t).
      uncond_score_fn: grad_x log p_t(x), score_fn(x, t).
      scale: guidance scale, a float or an array broadcastable against x.

    Returns:
      score_fn(x, t) -> [B, ...]; pure, jit/vmap-safe.
    """
    def score_fn(x: Array, t: Array) -> Array:
        uncond = uncond_score_fn(x, t)
        return uncond + scale * (cond_score_fn(x, t) - uncond)

    return score_fn


def classifier(score_fn: ScoreFn, log_prob_fn: LogProbFn, scale: float | Array) -> ScoreFn:
    """Classifier guidance: score + scale * grad_x log_prob_fn(x, t).

    With log_prob_fn = log p_t(y | x) and scale 1 this is exactly grad_x log p_t(x | y)
    (Bayes); scale > 1 is Dhariwal & Nichol's (2021) classifier scale s. The gradient is
    taken of the batch sum, which equals the per-example gradients because each example's
    log-probability depends on its own x only (true of the classifiers here: GroupNorm /
    LayerNorm, no batch statistics).

    Args:
      score_fn: grad_x log p_t(x), score_fn(x, t).
      log_prob_fn: log p_t(y | x) of the target labels, log_prob_fn(x, t) -> [B].
      scale: guidance scale, a float or an array broadcastable against x.

    Returns:
      score_fn(x, t) -> [B, ...]; pure, jit/vmap-safe; one score and one classifier
      forward + backward per call.
    """
    def guided(x: Array, t: Array) -> Array:
        grad = jax.grad(lambda x_: jnp.sum(log_prob_fn(x_, t)))(x)
        return score_fn(x, t) + scale * grad

    return guided


# ---- Class-conditional score networks (classifier-free training and sampling). ----

def drop_labels(key: Array, y: Array, num_classes: int, p: float) -> Array:
    """Replaces each label by the "no label" index `num_classes` with probability p.

    Classifier-free guidance trains one network on both p(x | y) and p(x) this way (Ho &
    Salimans 2022, Alg. 1; p = 0.1-0.2 there). The index is the extra row of
    `models.layers.LabelEmbedding`, the one it also uses for y=None.

    Args:
      key: one PRNG key, or one per example ([B]; see `losses.example_keys`): example i's
        draw depends only on its key, so a sharded batch drops the same labels.
      y: [B] int labels in [0, num_classes).
      num_classes: number of classes (the network's `num_classes`).
      p: drop probability in [0, 1].

    Returns:
      [B] int labels.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout p must be in [0, 1], got {p}")
    keys = example_keys(key, y.shape[0])
    drop = jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys)
    return jnp.where(drop, jnp.asarray(num_classes, y.dtype), y)


def labelled_score_model(parameterization: Parameterization, apply_fn, sde: SDE
                         ) -> LabelledScoreModel:
    """score(params, x, t, y) of a class-conditional network.

    Args:
      parameterization: how the network output becomes a score (`parameterization.make`).
      apply_fn: apply_fn(params, x_in, cond, y) -> raw output, e.g. `net.apply` of a
        network built with num_classes > 0 (y: [B] int, num_classes = "no label").
      sde: the SDE the network was trained with.

    Returns:
      score(params, x, t, y) -> like x. With y fixed, `lambda p, x, t: score(p, x, t, y)`
      is the `score_model(params, x, t)` that the losses take (labels from `drop_labels`).
    """
    def score(params, x: Array, t: Array, y: Array) -> Array:
        model = parameterization.score_model(lambda p, x_in, cond: apply_fn(p, x_in, cond, y),
                                             sde)
        return model(params, x, t)

    return score


def label_score_fns(score_model: LabelledScoreModel, params, y: Array | int,
                    num_classes: int) -> tuple[ScoreFn, ScoreFn]:
    """(cond_score_fn, uncond_score_fn) of one network trained with label dropout.

    Args:
      score_model: score(params, x, t, y), e.g. from `labelled_score_model`.
      params: the network's variables.
      y: target label(s): an int or a [B] array, broadcast to the batch of x.
      num_classes: the network's num_classes; the unconditional score uses this index.

    Returns:
      The inputs of `classifier_free`: score_fn(x, t) with labels y and with "no label".
    """
    def with_label(label):
        return lambda x, t: score_model(params, x, t, _batch_labels(label, x))

    return with_label(y), with_label(num_classes)


def _batch_labels(y: Array | int, x: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(y, jnp.int32), x.shape[:1])


# ---- Noise-conditional classifier p_t(y | x_t). ----

def classifier_input(sde: SDE, x: Array, t: Array, sigma_data: float = 0.5
                     ) -> tuple[Array, Array]:
    """What a noise-conditional classifier sees: (x_in like x, cond [B]).

    x_in = x / sqrt(alpha^2 sigma_data^2 + sigma^2) and cond = log(sigma / alpha), with
    alpha, sigma = sde.marginal(t). Both depend on (x_t / alpha, log-SNR) only, so equal
    log-SNR gives equal inputs under every SDE; x_in has about unit scale when the data
    has scale sigma_data.
    """
    mean_coeff, std = sde.marginal(t)
    c_in = jax.lax.rsqrt(mean_coeff**2 * sigma_data**2 + std**2)
    return expand_to(c_in, x) * x, jnp.log(std) - jnp.log(mean_coeff)


def classifier_logits_model(apply_fn, sde: SDE, sigma_data: float = 0.5) -> LogitsModel:
    """logits(params, x, t) -> [B, K] of a network apply_fn(params, x_in, cond) -> [B, K]
    (e.g. `models.make("classifier", ...).apply`) fed by `classifier_input`."""
    def logits(params, x: Array, t: Array) -> Array:
        return apply_fn(params, *classifier_input(sde, x, t, sigma_data))

    return logits


def classifier_log_prob_fn(logits_model: LogitsModel, params, y: Array | int) -> LogProbFn:
    """log_prob_fn(x, t) = log_softmax(logits(x, t))[y] -> [B], for `classifier`.

    y: target label(s), an int or a [B] array (broadcast to the batch of x).
    """
    def log_prob(x: Array, t: Array) -> Array:
        return _pick(jax.nn.log_softmax(logits_model(params, x, t), axis=-1),
                     _batch_labels(y, x))

    return log_prob


def _perturb(sde: SDE, x0: Array, t: Array, keys: Array) -> Array:
    """x_t = alpha x0 + sigma z from p(x_t | x_0), z drawn per example from `keys`."""
    mean_coeff, std = sde.marginal(t)
    z = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(keys)
    return expand_to(mean_coeff, x0) * x0 + expand_to(std, x0) * z


def _pick(log_p: Array, y: Array) -> Array:
    """log_p[i, y[i]] -> [B], by a mask rather than a gather: its gradient is a select, not
    a scatter (which XLA constant-folds at length for a fixed label)."""
    mask = y[:, None] == jnp.arange(log_p.shape[-1])[None]
    return jnp.sum(jnp.where(mask, log_p, 0.0), axis=-1)


def classifier_loss(params, logits_model: LogitsModel, sde: SDE, batch: Array, labels: Array,
                    key: Array, *, eps: float = 1e-5) -> Array:
    """Cross-entropy of p_t(y | x_t) on noised data: the noise-conditional classifier loss.

    E_{t ~ U[eps, T], x_t ~ p(x_t | x_0)} [-log softmax(logits(x_t, t))[y]], averaged over
    the batch; its minimiser is the exact log p_t(y | x_t) at every t (score_sde trained
    its CIFAR-10 classifier this way, on VE-perturbed images).

    Args:
      params: the classifier's variables.
      logits_model: logits(params, x, t) -> [B, K], e.g. `classifier_logits_model`.
      sde: the SDE whose perturbation kernel noises the data.
      batch: clean data x_0 [B, ...].
      labels: [B] int classes in [0, K).
      key: one PRNG key or one per example (`losses.example_keys`); t and z are drawn per
        example, so a sharded batch draws the one-device noise.
      eps: smallest training time.

    Returns:
      Scalar loss (nats).
    """
    keys = example_keys(key, batch.shape[0])
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1)))(keys)
    t = eps + u * (sde.T - eps)
    xt = _perturb(sde, batch, t, keys)
    return -jnp.mean(_pick(jax.nn.log_softmax(logits_model(params, xt, t), axis=-1), labels))


def noised_accuracy(params, logits_model: LogitsModel, sde: SDE, batch: Array, labels: Array,
                    key: Array, t: float) -> Array:
    """Fraction of x_t ~ p(x_t | x_0) at the fixed time t whose argmax logit is the label
    (the classifier's accuracy as a function of t). Same key conventions as the loss."""
    keys = example_keys(key, batch.shape[0])
    t_b = jnp.full(batch.shape[:1], t, batch.dtype)
    logits = logits_model(params, _perturb(sde, batch, t_b, keys), t_b)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
