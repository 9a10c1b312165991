"""Building blocks shared by the U-Nets (DDPM, NCSN++/DDPM++) and NCSNv2.

The initialisations follow score_sde (and through it DDPM's TensorFlow code and NCSNv2's
PyTorch code), because they shape early training:

* `default_init(scale)`: variance scaling with fan_avg and a uniform law (DDPM), with
  scale 0 replaced by 1e-10 so "zero-initialised" output layers still carry a gradient
  direction. Used for every conv/dense of DDPM and NCSN++; 1x1 "NIN" layers use 0.1.
* `ncsn_conv`: PyTorch's default, uniform with bound sqrt(1 / fan_in) for kernel and bias.

All image tensors are NHWC: `[B, H, W, C]`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "swish": nn.swish,
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
}


def check_choice(name: str, value, choices) -> None:
    """Raises ValueError naming the option and its valid values."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose from {sorted(choices)}")


def get_act(name: str) -> Callable[[Array], Array]:
    check_choice("nonlinearity", name, ACTIVATIONS)
    return ACTIVATIONS[name]


def check_divisible(x_shape: Sequence[int], factor: int, model: str) -> None:
    """Build-time check that H and W of an NHWC input can be halved log2(factor) times."""
    if len(x_shape) != 4:
        raise ValueError(f"{model} takes images [B, H, W, C]; got shape {tuple(x_shape)}")
    h, w = x_shape[1], x_shape[2]
    if h % factor or w % factor:
        raise ValueError(f"{model}: input {h}x{w} must have H and W divisible by {factor} "
                         f"(2^(number of downsamplings)); choose another size or ch_mult")


def default_init(scale: float = 1.0):
    """DDPM's initialiser: variance_scaling(scale, fan_avg, uniform); scale 0 -> 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    return jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def conv(x: Array, features: int, kernel: int = 3, stride: int = 1, init_scale: float = 1.0,
         use_bias: bool = True) -> Array:
    """kxk 'SAME' convolution with DDPM initialisation (zero bias). Call inside @compact."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                   use_bias=use_bias, kernel_init=default_init(init_scale),
                   bias_init=jax.nn.initializers.zeros)(x)


def nin(x: Array, features: int, init_scale: float = 0.1) -> Array:
    """1x1 'network in network' projection over channels (DDPM's `nin`)."""
    return nn.Dense(features, kernel_init=default_init(init_scale))(x)


def num_groups(channels: int) -> int:
    """score_sde's min(C // 4, 32) GroupNorm groups, lowered to the nearest divisor of C so
    that any width works (all published widths are multiples of 32: unchanged there)."""
    g = max(1, min(channels // 4, 32))
    while channels % g:
        g -= 1
    return g


def group_norm(x: Array, groups: int = 0) -> Array:
    """GroupNorm over `groups` groups; 0: num_groups(C) (32 from 128 channels)."""
    return nn.GroupNorm(num_groups=groups or num_groups(x.shape[-1]))(x)


def timestep_embedding(t: Array, dim: int, max_positions: float = 10000.0) -> Array:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM): [B] -> [B, dim].

    Frequencies exp(-log(max_positions) k / (dim/2 - 1)), k = 0..dim/2-1; sin then cos.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    arg = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar (Tancik et al. 2020; NCSN++): [B] -> [B, 2 size].

    W ~ N(0, scale^2) is stored as a parameter but never trained (stop_gradient), as in
    score_sde, so checkpoints carry it.
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        w = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        proj = t[:, None] * jax.lax.stop_gradient(w)[None, :] * (2 * np.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions with a residual connection.

    out = x + NIN(softmax(q k^T / sqrt(C)) v), q, k, v = NIN(GroupNorm(x)); divided by
    sqrt(2) with skip_rescale (NCSN++). The output projection starts near zero
    (init_scale 0), so the block begins as the identity.
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        y = group_norm(x, self.norm_groups)
        q, k, v = nin(y, c), nin(y, c), nin(y, c)
        logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k).reshape(b, h, w, h * w) * c**-0.5
        weights = jax.nn.softmax(logits, axis=-1).reshape(b, h, w, h, w)
        y = nin(jnp.einsum("bhwHW,bHWc->bhwc", weights, v), c, init_scale=self.init_scale)
        return (x + y) / np.sqrt(2.0) if self.skip_rescale else x + y


# ----------------------------------------------------------------------------------------
# FIR resampling (StyleGAN2's upfirdn2d, Karras et al. 2020), as used by NCSN++.
# ----------------------------------------------------------------------------------------


def _fir_kernel(k: Sequence[float], gain: float) -> np.ndarray:
    """1-D factor of the separable 2-D filter outer(k, k) / sum^2 * gain."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 1:
        raise ValueError(f"fir_kernel must be a 1-D (separable) filter; got shape {k.shape}")
    return k / k.sum() * np.sqrt(gain)


def _upfirdn1d(x: Array, k: np.ndarray, axis: int, up: int, down: int, pad0: int,
               pad1: int) -> Array:
    """upfirdn along one spatial axis of [B, H, W, C], as a sum of len(k) strided slices
    (cheaper on CPU than a depthwise convolution, and fused by XLA)."""
    if up > 1:  # zero insertion: each sample followed by up - 1 zeros
        n = x.shape[axis]
        x = jnp.expand_dims(x, axis + 1)
        x = jnp.pad(x, [(0, up - 1) if d == axis + 1 else (0, 0) for d in range(x.ndim)])
        x = x.reshape(x.shape[:axis] + (n * up,) + x.shape[axis + 2:])
    x = jnp.pad(x, [(pad0, pad1) if d == axis else (0, 0) for d in range(x.ndim)])
    length = (x.shape[axis] - len(k)) // down + 1
    out = None
    for j, weight in enumerate(k[::-1]):  # correlation with the flipped filter = convolution
        index = [slice(None)] * x.ndim
        index[axis] = slice(j, j + (length - 1) * down + 1, down)
        term = float(weight) * x[tuple(index)]
        out = term if out is None else out + term
    return out


def upfirdn2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0,
              pad1: int = 0) -> Array:
    """Zero-insertion upsample by `up`, zero-pad (pad0, pad1), convolve with the separable
    FIR filter outer(k, k), keep every `down`-th pixel; per channel, on H and W of
    [B, H, W, C] (scipy.signal.upfirdn along each axis, then cropped by the padding)."""
    for axis in (1, 2):
        x = _upfirdn1d(x, k, axis, up, down, pad0, pad1)
    return x


def upsample_2d(x: Array, k: Sequence[float] = (1, 1), factor: int = 2) -> Array:
    """FIR upsampling [B, H, W, C] -> [B, fH, fW, C]; k = (1, 1) is nearest neighbour."""
    k1 = _fir_kernel(k, gain=factor**2)
    p = len(k1) - factor
    return upfirdn2d(x, k1, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: Array, k: Sequence[float] = (1, 1), factor: int = 2) -> Array:
    """FIR downsampling [B, H, W, C] -> [B, H/f, W/f, C]; k = (1, 1) is average pooling."""
    k1 = _fir_kernel(k, gain=1.0)
    p = len(k1) - factor
    return upfirdn2d(x, k1, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class FIRConv(nn.Module):
    """3x3 convolution fused with FIR up- or downsampling by 2 (StyleGAN2's Conv2d).

    Down: FIR-filter with padding then a stride-2 VALID convolution. Up: a stride-2
    transposed convolution then FIR filtering, padding applied once. Kernel
    [k, k, C_in, features] with DDPM init; zero bias.
    """

    features: int
    up: bool = False
    down: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    kernel: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("kernel", default_init(),
                       (self.kernel, self.kernel, x.shape[-1], self.features))
        dn = ("NHWC", "HWIO", "NHWC")
        if self.up:
            k1 = _fir_kernel(self.fir_kernel, gain=4.0)
            p = (len(k1) - 2) - (self.kernel - 1)
            x = jax.lax.conv_transpose(x, w, (2, 2), "VALID", dimension_numbers=dn)
            x = upfirdn2d(x, k1, pad0=(p + 1) // 2 + 1, pad1=p // 2 + 1)
        elif self.down:
            k1 = _fir_kernel(self.fir_kernel, gain=1.0)
            p = (len(k1) - 2) + (self.kernel - 1)
            x = upfirdn2d(x, k1, pad0=(p + 1) // 2, pad1=p // 2)
            x = jax.lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=dn)
        else:
            x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
        bias = self.param("bias", jax.nn.initializers.zeros, (self.features,))
        return x + bias.reshape(1, 1, 1, -1)


class Upsample(nn.Module):
    """x2 upsampling: nearest (+3x3 conv) or FIR (+ fused FIR conv)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            h = naive_upsample_2d(x)
            return conv(h, out_ch) if self.with_conv else h
        if self.with_conv:
            return FIRConv(out_ch, up=True, fir_kernel=self.fir_kernel)(x)
        return upsample_2d(x, self.fir_kernel)


class Downsample(nn.Module):
    """/2 downsampling: stride-2 3x3 conv or 2x2 average pool, or their FIR versions."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            # TF-style SAME padding for stride 2 pads (0, 1), as in DDPM/score_sde.
            return conv(x, out_ch, stride=2) if self.with_conv else naive_downsample_2d(x)
        if self.with_conv:
            return FIRConv(out_ch, down=True, fir_kernel=self.fir_kernel)(x)
        return downsample_2d(x, self.fir_kernel)


# ----------------------------------------------------------------------------------------
# Residual blocks.
# ----------------------------------------------------------------------------------------


def _add_temb(h: Array, temb: Array | None, act) -> Array:
    """Adds a per-channel bias computed from the conditioning embedding [B, E]."""
    if temb is None:
        return h
    return h + nn.Dense(h.shape[-1], kernel_init=default_init())(act(temb))[:, None, None, :]


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block (Ho et al. 2020): GN-act-conv, +temb, GN-act-dropout-conv.

    The second conv starts near zero (init_scale), so the block starts as the identity;
    the skip is a 1x1 NIN when the width changes; optional 1/sqrt(2) skip rescaling
    (DDPM++). `norm_groups` > 0 fixes the GroupNorm group count (0: num_groups(C)).
    """

    act: Callable[[Array], Array]
    out_ch: int | None = None
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    norm_groups: int = 0

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        h = conv(self.act(group_norm(x, self.norm_groups)), out_ch)
        h = _add_temb(h, temb, self.act)
        h = nn.Dropout(self.dropout)(self.act(group_norm(h, self.norm_groups)),
                                     deterministic=not train)
        h = conv(h, out_ch, init_scale=self.init_scale)
        if x.shape[-1] != out_ch:
            x = nin(x, out_ch)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block (Brock et al. 2019; NCSN++) that can resample by 2.

    Resampling (FIR or naive) is applied to both the residual branch, after the first
    GroupNorm-act, and the skip branch, which then gets a 1x1 conv.
    """

    act: Callable[[Array], Array]
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    def _resample(self, x: Array) -> Array:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        h = self._resample(self.act(group_norm(x)))
        x = self._resample(x)
        h = _add_temb(conv(h, out_ch), temb, self.act)
        h = nn.Dropout(self.dropout)(self.act(group_norm(h)), deterministic=not train)
        h = conv(h, out_ch, init_scale=self.init_scale)
        if x.shape[-1] != out_ch or self.up or self.down:
            x = conv(x, out_ch, kernel=1)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Merges an input-pyramid image into features: 1x1 conv then concat or sum."""

    method: str = "cat"

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv(x, y.shape[-1], kernel=1)
        return jnp.concatenate([h, y], axis=-1) if self.method == "cat" else h + y


class LabelEmbedding(nn.Module):
    """Class-label embedding [B] int -> [B, features], added to the noise embedding.

    The table has num_classes + 1 rows: label `num_classes` (also used when y is None)
    means "no label", so one network can serve conditional and unconditional (classifier-
    free guidance) sampling.
    """

    num_classes: int
    features: int

    @nn.compact
    def __call__(self, y: Array | None, batch: int) -> Array:
        if y is None:
            y = jnp.full((batch,), self.num_classes, jnp.int32)
        if y.shape != (batch,):
            raise ValueError(f"class labels y must have shape [{batch}]; got {y.shape}")
        return nn.Embed(self.num_classes + 1, self.features,
                        embedding_init=jax.nn.initializers.normal(1.0))(y)
