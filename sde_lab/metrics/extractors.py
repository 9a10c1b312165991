"""Feature extractors: a network that maps images to features (and optionally logits).

Interface: `make_extractor(name, **kw) -> FeatureExtractor`. Every extractor takes images
[N, H, W, C] in [0, 1] (float) or [0, 255] (uint8) and does its own resizing and scaling.

* `extractor.apply_fn(variables, images) -> (features [B, d], logits [B, K] or None)` is pure
  and jittable: the eval runner jits or shards it over its device mesh (no device code here).
* `extractor.features(images, batch_size=50)` / `.logits(...)` / `.features_and_logits(...)`
  run a jitted host loop over fixed-size batches (the last one padded, so one compilation)
  and return float32 NumPy arrays.

Built in: "inception" (FID InceptionV3, pool3 2048-d + 1008 logits; needs the weights file,
see `convert.py`) and "digits" (the shipped 8x8-digits CNN, 64-d + 10 logits). Add your own
with `register(name, factory)`, where `factory(**kw) -> FeatureExtractor`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab.metrics import convert, digits_classifier, inception
from sde_lab.registry import Registry

Array = jax.Array
ApplyFn = Callable[[Any, Array], tuple[Array, Array | None]]


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor:
    """A feature network and its variables.

    Attributes:
      name: registry name.
      apply_fn: pure `(variables, images [B, H, W, C]) -> (features [B, d], logits or None)`.
      variables: the network's Flax variables.
      feature_dim: d.
      num_logits: K, or 0 if the network has no classifier (then no Inception Score).
      check_input: raises ValueError for an image shape the network cannot take.
    """

    name: str
    apply_fn: ApplyFn
    variables: Any
    feature_dim: int
    num_logits: int = 0
    check_input: Callable[[tuple], None] = lambda shape: None

    def __post_init__(self):
        object.__setattr__(self, "_jitted", jax.jit(self.apply_fn))

    def features_and_logits(self, images, batch_size: int = 50) -> tuple[np.ndarray, np.ndarray | None]:
        """Runs the jitted network over `images` [N, H, W, C] in batches of `batch_size`."""
        images = np.asarray(images) if not isinstance(images, jax.Array) else images
        self.check_input(tuple(images.shape))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        feats, logits = [], []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            n = batch.shape[0]
            if n < batch_size:  # pad so every call hits the same compiled shape
                batch = jnp.concatenate([batch, jnp.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
            f, l = self._jitted(self.variables, batch)
            feats.append(np.asarray(f[:n], np.float32))
            if l is not None:
                logits.append(np.asarray(l[:n], np.float32))
        f = np.concatenate(feats) if feats else np.zeros((0, self.feature_dim), np.float32)
        return f, (np.concatenate(logits) if logits else None)

    def features(self, images, batch_size: int = 50) -> np.ndarray:
        """[N, H, W, C] images -> [N, d] float32 features."""
        return self.features_and_logits(images, batch_size)[0]

    def logits(self, images, batch_size: int = 50) -> np.ndarray:
        """[N, H, W, C] images -> [N, K] float32 logits; ValueError if the net has none."""
        if not self.num_logits:
            raise ValueError(f"feature extractor '{self.name}' has no logits")
        return self.features_and_logits(images, batch_size)[1]


def _scale_input(images: Array) -> Array:
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.result_type(images.dtype, jnp.float32))


def make_inception(weights_path: str | None = None, variables: Any = None,
                   resize_method: str = "pytorch", unbiased_logits: bool = False) -> FeatureExtractor:
    """The FID InceptionV3: pool3 [B, 2048] features and [B, 1008] logits.

    Args:
      weights_path: converted `.npz` or pytorch-fid `.pth` (None: $SDE_LAB_INCEPTION_WEIGHTS).
        A missing file raises FileNotFoundError saying where to download and how to convert.
      variables: Flax variables to use instead of a file (tests, timing with random weights).
      resize_method: "pytorch" (pytorch-fid, default) or "tf1" (the 2015 TF graph's resize).
      unbiased_logits: False gives the graph's logits `pool3 W + b` (TF-GAN, which score_sde's
        reported IS uses); True gives `pool3 W` without the bias, as the original Inception
        Score code (Salimans et al. 2016) and torch-fidelity compute it.
    """
    if resize_method not in inception.RESIZE_METHODS:
        raise ValueError(f"unknown resize_method '{resize_method}'; available: {list(inception.RESIZE_METHODS)}")
    if variables is None:
        variables = convert.load_variables(weights_path)
    net = inception.InceptionV3()

    def apply_fn(v, images):
        pool3, logits = net.apply(v, inception.preprocess(images, resize_method))
        if unbiased_logits:
            logits = logits - v["params"]["fc"]["bias"][None, :]
        return pool3, logits

    return FeatureExtractor("inception", apply_fn, variables, inception.FEATURE_DIM,
                            inception.NUM_CLASSES, inception.check_input_shape)


def _check_digits_shape(shape: tuple) -> None:
    if len(shape) != 4 or tuple(shape[1:]) != (8, 8, 1):
        raise ValueError(f"digits extractor expects images [B, 8, 8, 1]; got {shape}")


def make_digits(weights_path: str | None = None, variables: Any = None) -> FeatureExtractor:
    """The shipped 8x8-digits CNN: 64-d penultimate features and 10 logits.

    Args:
      weights_path: `.npz` from `python -m sde_lab.metrics.digits_classifier` (None: shipped).
      variables: Flax variables to use instead of a file.
    """
    if variables is None:
        variables = digits_classifier.load_variables(weights_path)
    net = digits_classifier.DigitsCNN()

    def apply_fn(v, images):
        return net.apply(v, 2.0 * _scale_input(images) - 1.0)

    return FeatureExtractor("digits", apply_fn, variables, digits_classifier.FEATURE_DIM,
                            digits_classifier.NUM_CLASSES, _check_digits_shape)


REGISTRY: Registry[FeatureExtractor] = Registry("feature extractor", {
    "inception": make_inception,
    "digits": make_digits,
})


def register(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Adds a feature extractor factory `factory(**kw) -> FeatureExtractor` under `name`."""
    REGISTRY.register(name, factory)


def available() -> list[str]:
    return REGISTRY.available()


def make_extractor(name: str, **kwargs) -> FeatureExtractor:
    """Builds a registered feature extractor; unknown name -> ValueError listing the valid ones."""
    return REGISTRY.make(name, **kwargs)
