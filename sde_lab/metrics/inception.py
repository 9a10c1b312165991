"""InceptionV3 in the exact FID configuration, in Flax.

This is the TF-2015 Inception graph (`inception-2015-12-05`) that TTUR, TF-GAN and
pytorch-fid use for FID and Inception Score, written so that pytorch-fid's converted weights
(`pt_inception-2015-12-05-6726825d.pth`) load one-to-one. It differs from torchvision's and
Keras' ImageNet InceptionV3 in three places, all copied from pytorch-fid's `FIDInceptionA`,
`FIDInceptionC`, `FIDInceptionE_1` and `FIDInceptionE_2`:

* the 3x3 average pools inside the A, C and first E blocks divide by the number of *valid*
  pixels (TensorFlow's padding semantics, `count_include_pad=False`);
* the last E block (`Mixed_7c`) max-pools its pool branch instead of average-pooling it;
* the classifier has 1008 outputs (the 2015 graph's label space), not 1000.

Input pipeline (`preprocess`): images in [0, 1] (or uint8 in [0, 255]), NHWC, are resized to
299x299 by bilinear interpolation and mapped to [-1, 1] by `2x - 1`, as pytorch-fid does.
Two resize conventions are offered, because the two reference implementations differ:

* `"pytorch"` (default): half-pixel centres, `F.interpolate(..., mode="bilinear",
  align_corners=False)` without antialiasing, as pytorch-fid;
* `"tf1"`: TF1 `tf.image.resize_bilinear(align_corners=False)` (source = dest * in/out),
  the resize inside the 2015 graph that TTUR feeds.

Outputs: `pool3` [B, 2048] (global average of `Mixed_7c`, the FID features) and `logits`
[B, 1008] (the classifier, for Inception Score). Deterministic; no dropout at inference.

Layer names equal pytorch-fid/torchvision attribute names (`Mixed_5b/branch1x1/conv`), so the
weight converter is a plain rename and transpose (see `convert.py`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
RESIZE_METHODS = ("pytorch", "tf1")


class ConvBN(nn.Module):
    """torchvision `BasicConv2d`: conv (no bias) -> BatchNorm (eps 1e-3, inference) -> ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _conv(features, kernel, strides=1, padding=0, name=None):
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    p = padding if isinstance(padding, tuple) else (padding, padding)
    return ConvBN(features, k, strides, p, name=name)


def _avg_pool_valid(x: Array) -> Array:
    # TF's SAME average pool divides by the count of real pixels, not by 9 at the borders.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_same(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """pytorch-fid `FIDInceptionA` (Mixed_5b/c/d)."""

    pool_features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = _conv(64, 1, name="branch1x1")(x)
        b5 = _conv(48, 1, name="branch5x5_1")(x)
        b5 = _conv(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = _conv(64, 1, name="branch3x3dbl_1")(x)
        b3 = _conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = _conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = _conv(self.pool_features, 1, name="branch_pool")(_avg_pool_valid(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision `InceptionB` (Mixed_6a), a grid reduction 35 -> 17."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = _conv(384, 3, strides=2, name="branch3x3")(x)
        bd = _conv(64, 1, name="branch3x3dbl_1")(x)
        bd = _conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = _conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
    """pytorch-fid `FIDInceptionC` (Mixed_6b..6e), factorized 7x7 convolutions."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        b1 = _conv(192, 1, name="branch1x1")(x)
        b7 = _conv(c7, 1, name="branch7x7_1")(x)
        b7 = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = _conv(c7, 1, name="branch7x7dbl_1")(x)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = _conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = _conv(192, 1, name="branch_pool")(_avg_pool_valid(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision `InceptionD` (Mixed_7a), a grid reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = _conv(192, 1, name="branch3x3_1")(x)
        b3 = _conv(320, 3, strides=2, name="branch3x3_2")(b3)
        b7 = _conv(192, 1, name="branch7x7x3_1")(x)
        b7 = _conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = _conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
    """pytorch-fid `FIDInceptionE_1` (avg pool) / `FIDInceptionE_2` (max pool)."""

    pool: str  # "avg" (Mixed_7b) or "max" (Mixed_7c): the 2015 graph's quirk

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = _conv(320, 1, name="branch1x1")(x)
        b3 = _conv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([_conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              _conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = _conv(448, 1, name="branch3x3dbl_1")(x)
        bd = _conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([_conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              _conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        pooled = _avg_pool_valid(x) if self.pool == "avg" else _max_pool_same(x)
        bp = _conv(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """The FID InceptionV3 body on preprocessed inputs.

    Call: `apply(variables, x)` with x: [B, 299, 299, 3] in [-1, 1] returns
    `(pool3 [B, 2048], logits [B, 1008])`. About 5.7 GMAC (11.5 GFLOP) per image.
    """

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        x = _conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = _conv(32, 3, name="Conv2d_2a_3x3")(x)
        x = _conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_reduce(x)
        x = _conv(80, 1, name="Conv2d_3b_1x1")(x)
        x = _conv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_reduce(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(pool3)
        return pool3, logits


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size: int, out_size: int, method: str = "pytorch") -> np.ndarray:
    """Row-stochastic [out_size, in_size] float64 matrix of 1-D bilinear interpolation.

    `"pytorch"`: source coordinate (d + 0.5) * in/out - 0.5, clamped below at 0 (torch's
    `align_corners=False` without antialiasing, also for downsampling). `"tf1"`: source
    coordinate d * in/out (TF1 `resize_bilinear`, `align_corners=False`,
    `half_pixel_centers=False`). Both clamp the upper neighbour to the last pixel.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method '{method}'; available: {list(RESIZE_METHODS)}")
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    if method == "pytorch":
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    else:
        src = dst * scale
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m


def resize_bilinear(images: Array, size: int = INPUT_SIZE, method: str = "pytorch") -> Array:
    """Separable bilinear resize of [B, H, W, C] to [B, size, size, C] (no antialiasing).

    Written as two small matrix products so it is exact to float32 rounding of the reference
    resizers, jit-friendly, and cheap next to the network.
    """
    _, h, w, _ = images.shape
    if (h, w) == (size, size):
        return images
    mh = jnp.asarray(resize_matrix(h, size, method), images.dtype)
    mw = jnp.asarray(resize_matrix(w, size, method), images.dtype)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", mh, images, precision=hi)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)


def preprocess(images: Array, resize_method: str = "pytorch") -> Array:
    """[B, H, W, C] images in [0, 1] (float) or [0, 255] (uint8), C in {1, 3} ->
    [B, 299, 299, 3] in [-1, 1], as pytorch-fid: resize, then 2x - 1.

    Float32 unless the input is float64 (used under `jax.enable_x64` to test exactness).
    """
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
    images = images.astype(jnp.result_type(images.dtype, jnp.float32))
    if images.shape[-1] == 1:
        # Grayscale enters Inception as RGB with equal channels (PIL's convert("RGB")).
        images = jnp.repeat(images, 3, axis=-1)
    return 2.0 * resize_bilinear(images, INPUT_SIZE, resize_method) - 1.0


def init_variables(key: Array) -> dict:
    """Randomly initialised variables with the FID Inception's tree (tests and timing only)."""
    return InceptionV3().init(key, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))


def check_input_shape(shape: Sequence[int]) -> None:
    """Raises ValueError unless `shape` is [B, H, W, C] with C in {1, 3} and H, W >= 1."""
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(f"inception expects images [B, H, W, C] with C in (1, 3); got {tuple(shape)}")
