"""Building blocks shared by the U-Nets (DDPM, NCSN++/DDPM++) and NCSNv2.

The initialisations follow score_sde (and through it DDPM's TensorFlow code and NCSNv2's
PyTorch code), because they shape early training:

* `default_init(scale)`: variance scaling with fan_avg and a uniform law (DDPM), with
  scale 0 replaced by 1e-10 so "zero-initialised" output layers still carry a gradient
  direction. Used for every conv/dense of DDPM and NCSN++; 1x1 "NIN" layers use 0.1.
* `ncsn_conv`: PyTorch's default, uniform with bound sqrt(1 / fan_in) for kernel and bias.

All image tensors are NHWC: `[B, H, W, C]`.

Mixed precision (Flax's convention): every module takes `dtype`, the dtype of the
computation (convolutions, matmuls, activations), and `param_dtype`, the dtype parameters
are stored in (float32 by default; an optimizer then updates float32 weights that are cast
to `dtype` at each use). What bfloat16's 8-bit mantissa cannot carry stays in float32:
GroupNorm statistics, attention logits and their softmax, sinusoidal/Fourier embedding
arguments (t up to 999 or 2 pi 16 log sigma: a bfloat16 phase would be off by radians).
The networks cast their output to float32, so losses are computed in float32.

`remat=True` on the residual blocks (`nn.remat`) recomputes their activations in the
backward pass instead of storing them: less memory for about one more forward pass of
compute. Parameters and outputs are unchanged.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from sde_lab.models import conv_args

Array = jax.Array
Dtype = Any  # a jnp dtype or its name ("float32", "bfloat16")

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_dtypes(dtype: Dtype, param_dtype: Dtype) -> None:
    """Raises ValueError unless both name floating dtypes sde_lab supports."""
    for option, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        try:
            name = jnp.dtype(value).name
        except TypeError:
            name = None
        if name not in COMPUTE_DTYPES:
            raise ValueError(f"{option}={value!r} is not valid; choose from "
                             f"{list(COMPUTE_DTYPES)}")

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


# ----------------------------------------------------------------------------------------
# Convolutions whose kernel gradient is a matrix product per kernel tap.
# ----------------------------------------------------------------------------------------

CONV_BACKWARDS = ("auto", "xla", "gemm", "onednn")
_NHWC = conv_args.NHWC


def _conv_by_taps(x: Array, w: Array, padding, precision) -> Array:
    """The stride-1 NHWC/HWIO convolution as a sum over kernel taps (i, j) of the product
    z_ij = x [N, C_in] @ w[i, j] [C_in, C_out] (N = B * H * W), shifted into place:
    y[h, w] = sum_ij z_ij[h + i - top, w + j - left] (zero outside the image).

    x enters unshifted, so as the linear map of w that reverse mode transposes it keeps
    only x itself as a residual (no shifted copies), and its transpose is, per tap, a
    window of the zero-padded output cotangent contracted with x over N.
    """
    (top, bottom), (left, right) = padding
    kh, kw, c_in, c_out = w.shape
    b, h, wd = x.shape[:3]
    h_out, w_out = h + top + bottom - kh + 1, wd + left + right - kw + 1
    flat = x.reshape(b * h * wd, c_in)
    out = None
    for i in range(kh):
        for j in range(kw):
            z = jnp.dot(flat, w[i, j], precision=precision).reshape(b, h, wd, c_out)
            z = jnp.pad(z, ((0, 0), (top, bottom), (left, right), (0, 0)))
            term = z[:, i:i + h_out, j:j + w_out, :]
            out = term if out is None else out + term
    # Transposed, the barrier materialises the output cotangent once before its kh * kw
    # windows are read; without it XLA fuses the cotangent's elementwise producers (the
    # GroupNorm/swish backward) into every window and computes them kh * kw times.
    return jax.lax.optimization_barrier(out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _gemm_backward_conv(x: Array, w: Array, padding, precision) -> Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                        precision=precision)


@functools.partial(_gemm_backward_conv.defjvp, symbolic_zeros=True)
def _gemm_backward_conv_jvp(padding, precision, primals, tangents):
    """Tangent conv(dx, w) + conv(x, dw): the first as XLA's convolution (its transpose, the
    input gradient, is XLA's efficient one), the second as `_conv_by_taps`, whose transpose
    (the kernel gradient) is one [C_in, N] x [N, C_out] matrix product per tap."""
    x, w = primals
    dx, dw = tangents
    y = jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                     precision=precision)
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(jax.lax.conv_general_dilated(dx, w, (1, 1), padding,
                                                  dimension_numbers=_NHWC, precision=precision))
    if not isinstance(dw, SymbolicZero):
        terms.append(_conv_by_taps(x, dw, padding, precision))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


def gemm_backward_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, precision=None,
                       **kwargs) -> Array:
    """`lax.conv_general_dilated` with the kernel gradient computed as matrix products.

    For a stride-1, undilated, ungrouped NHWC/HWIO convolution (every 3x3 and 1x1 conv of
    the U-Nets) the forward pass and the input gradient are XLA's convolutions, and the
    kernel gradient dW[i, j] = x_shifted(i, j)^T dY is one GEMM per tap (9 for 3x3), which
    XLA:CPU runs near its matmul rate, where its transposed convolution for the kernel
    gradient ran at a third to a half of it (2-core AVX2 CPU, jaxlib 0.10.2). Same
    numbers up to float summation order; forward-mode derivatives (the likelihood's JVPs)
    work. Any other convolution goes to `lax.conv_general_dilated` unchanged. Pass it as
    `flax.linen.Conv(..., conv_general_dilated=gemm_backward_conv)`.
    """
    explicit = conv_args.stride1_padding(lhs, rhs, window_strides, padding, lhs_dilation,
                                         rhs_dilation, dimension_numbers, feature_group_count,
                                         **kwargs)
    if explicit is None:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                            rhs_dilation, dimension_numbers,
                                            feature_group_count, precision=precision, **kwargs)
    return _gemm_backward_conv(lhs, rhs, explicit, precision)


def conv_fn(conv_backward: str):
    """The `conv_general_dilated` for flax.linen.Conv: None (lax's) for "xla",
    `gemm_backward_conv` for "gemm"; "auto" is "gemm" only where XLA:CPU runs convolutions
    with YNNPACK (jaxlib's default, `parallel.cpu_convolutions()`), whose kernel gradients
    are slow, and "xla" elsewhere: XLA's own CPU convolutions and the GPU/TPU libraries
    compute kernel gradients well. "onednn": `sde_lab.onednn.conv`, forward and both
    gradients by oneDNN on the CPU (bfloat16 on AVX-512 BF16/AMX units, which XLA:CPU does
    not use for convolutions; reverse mode only). Resolved when the network is traced."""
    check_choice("conv_backward", conv_backward, CONV_BACKWARDS)
    if conv_backward == "onednn":
        from sde_lab import onednn
        return onednn.conv
    if conv_backward == "auto":
        from sde_lab import parallel  # the process's XLA:CPU setting
        slow = jax.default_backend() == "cpu" and parallel.cpu_convolutions() == "ynnpack"
        conv_backward = "gemm" if slow else "xla"
    return None if conv_backward == "xla" else gemm_backward_conv


def conv(x: Array, features: int, kernel: int = 3, stride: int = 1, init_scale: float = 1.0,
         use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         conv_backward: str = "xla") -> Array:
    """kxk 'SAME' convolution with DDPM initialisation (zero bias). Call inside @compact."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                   use_bias=use_bias, kernel_init=default_init(init_scale),
                   bias_init=jax.nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype,
                   conv_general_dilated=conv_fn(conv_backward))(x)


@jax.custom_vjp
def _channel_product(x: Array, w: Array) -> Array:
    """x [..., C] @ w [C, D]."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _channel_product_fwd(x, w):
    return _channel_product(x, w), (x, w)


def _channel_product_bwd(residuals, g):
    x, w = residuals
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    # The kernel gradient as (g^T x)^T, the cotangent first. JAX's own transpose rule
    # (x^T g) led XLA:CPU to store g transposed for its dot, and it fused g's producers
    # (the residual stream's gradient through several blocks) into that transposing copy,
    # which then ran in transposed order: 180 ms of DDPM++'s 2.8 s float32 step for the
    # four 16x16 attention blocks' output projections. Written this way XLA reads both
    # operands as they are stored.
    dw_t = jax.lax.dot_general(g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1]),
                               (((0,), (0,)), ((), ())))
    return dx, dw_t.T


_channel_product.defvjp(_channel_product_fwd, _channel_product_bwd)


def _training_dot_general(lhs, rhs, dimension_numbers, precision=None,
                          preferred_element_type=None, **kwargs):
    """`nn.Dense`'s product, through `_channel_product` where it is the plain one."""
    if (rhs.ndim == 2 and dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ()))
            and precision is None and preferred_element_type is None and not kwargs):
        return _channel_product(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)


def nin(x: Array, features: int, init_scale: float = 0.1, dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32, train: bool = False) -> Array:
    """1x1 'network in network' projection over channels (DDPM's `nin`).

    With train=True its kernel gradient goes through a custom VJP (`_channel_product`):
    the same values to float32 rounding, computed in the order XLA:CPU runs well.
    Forward-mode differentiation is not defined through a custom VJP, so sampling and
    the likelihood (train=False) keep the plain product."""
    kwargs = dict(dot_general=_training_dot_general) if train else {}
    return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype,
                    param_dtype=param_dtype, **kwargs)(x)


def num_groups(channels: int) -> int:
    """score_sde's min(C // 4, 32) GroupNorm groups, lowered to the nearest divisor of C so
    that any width works (all published widths are multiples of 32: unchanged there)."""
    g = max(1, min(channels // 4, 32))
    while channels % g:
        g -= 1
    return g


class GroupNorm(nn.Module):
    """GroupNorm (Wu & He 2018) of channels-last inputs [B, ..., C]: what flax.linen.GroupNorm
    computes, with the same parameters ("scale" [C], "bias" [C]) and epsilon.

    y = (x - mean_g) * rsqrt(var_g + eps) * scale + bias, with the mean and variance of
    each example's group g of C / num_groups channels over all positions, computed in
    float32 whatever `dtype` is (var = E[x^2] - E[x]^2 clipped at 0: one pass over x,
    flax's "fast variance"). The sums run over positions first, per channel (a reduction
    XLA:CPU vectorises along the contiguous channel axis), then over each group's few
    channels; reducing [B, N, G, C/G] over (N, C/G) at once, as flax does, measured about
    1.5x slower for forward + backward on CPU. The normalisation is one fused
    elementwise pass, (x - mean) * (rsqrt(var + eps) * scale) + bias, per-channel factors
    broadcast rather than `jnp.repeat`ed.
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c, g = x.shape[-1], self.num_groups
        if c % g:
            raise ValueError(f"GroupNorm: num_groups={g} must divide the {c} channels")
        batch = x.shape[0]
        flat = x.astype(jnp.float32).reshape(batch, -1, c)                 # [B, N, C]
        count = flat.shape[1] * (c // g)

        def group_mean(v):  # [B, N, C] -> [B, G]
            return v.sum(axis=1).reshape(batch, g, c // g).sum(axis=-1) / count

        mean = group_mean(flat)
        var = jnp.maximum(group_mean(jnp.square(flat)) - jnp.square(mean), 0.0)
        scale = self.param("scale", jax.nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", jax.nn.initializers.zeros, (c,), self.param_dtype)
        mul = (jax.lax.rsqrt(var + self.epsilon)[:, :, None]
               * scale.astype(jnp.float32).reshape(1, g, c // g))           # [B, G, C/G]
        per_channel = (batch,) + (1,) * (x.ndim - 2) + (c,)
        mean = jnp.broadcast_to(mean[:, :, None], (batch, g, c // g)).reshape(per_channel)
        bias = bias.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (c,))
        y = (x.astype(jnp.float32) - mean) * mul.reshape(per_channel) + bias
        return y.astype(self.dtype)


def group_norm(x: Array, groups: int = 0, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> Array:
    """GroupNorm over `groups` groups; 0: num_groups(C) (32 from 128 channels)."""
    return GroupNorm(num_groups=groups or num_groups(x.shape[-1]), dtype=dtype,
                     param_dtype=param_dtype)(x)


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
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: Array) -> Array:
        w = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,),
                       self.param_dtype)
        w = jax.lax.stop_gradient(w).astype(jnp.float32)
        proj = t.astype(jnp.float32)[:, None] * w[None, :] * (2 * np.pi)  # phases in float32
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
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __call__(self, x: Array, train: bool = False) -> Array:
        return checkpointed(self, type(self)._block, x, train)

    @nn.compact
    def _block(self, x: Array, train: bool) -> Array:
        # train: no dropout here; it selects checkpointed()'s and nin()'s training VJPs
        b, h, w, c = x.shape
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = group_norm(x, self.norm_groups, **dt).reshape(b, h * w, c)
        q, k, v = (nin(y, c, train=train, **dt) for _ in range(3))
        # Logits and softmax in float32: exp amplifies a logit's bfloat16 rounding.
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits * c**-0.5, axis=-1).astype(self.dtype)
        y = nin(jnp.einsum("bij,bjc->bic", weights, v), c, init_scale=self.init_scale,
                train=train, **dt)
        y = y.reshape(b, h, w, c)
        return (x + y) / np.sqrt(2.0) if self.skip_rescale else x + y


# ----------------------------------------------------------------------------------------
# Dropout with the Threefry hash written out
# ----------------------------------------------------------------------------------------

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """Threefry-2x32, 20 rounds (Salmon et al. 2011): the hash behind JAX's default
    PRNG, the same function as JAX's, written out round by round.

    JAX lowers its own on CPU as a loop of 5 iterations (to keep compile times down); XLA
    cannot fuse across a loop, so every iteration writes and reads the whole state: for
    a [8, 32, 32, 256] dropout mask that took 15 ms, against 2 ms for this straight-line
    form, which XLA fuses into one elementwise kernel with the mask's use."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r)))
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _threefry_key_data(key: Array) -> Array | None:
    """The uint32[2] data of a Threefry key (typed or raw), or None for another PRNG."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        return jax.random.key_data(key)
    if (key.dtype == jnp.uint32 and key.shape == (2,)
            and jax.config.jax_default_prng_impl == "threefry2x32"):
        return key
    return None


def bernoulli(key: Array, p: float, shape: Sequence[int]) -> Array:
    """`jax.random.bernoulli(key, p, shape)`, bit for bit, with a fused Threefry.

    The same draws as JAX's (its partitionable Threefry bits, hi/lo counters from a
    row-major iota, 23-bit uniform floats compared with p in float32); other PRNG
    implementations, JAX's older non-partitionable bits, and arrays of 2**32 elements
    or more go to `jax.random.bernoulli` itself."""
    shape = tuple(shape)
    data = _threefry_key_data(key)
    size = math.prod(shape)
    if data is None or not jax.config.jax_threefry_partitionable or size >= 2**32:
        return jax.random.bernoulli(key, p, shape)
    lo = jax.lax.iota(jnp.uint32, size).reshape(shape)
    b1, b2 = _threefry2x32(data[0], data[1], jnp.zeros_like(lo), lo)
    bits = b1 ^ b2
    u = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000),
                                     jnp.float32) - np.float32(1.0)
    return u < np.float32(p)


class Dropout(nn.Dropout):
    """`flax.linen.Dropout` with the same masks (same rng stream, same `Dropout_N`
    names), drawn with `bernoulli` above: on CPU DDPM++'s float32 train step spent
    ~0.17 s of 2.8 s in JAX's looped Threefry for its masks."""

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jnp.broadcast_to(bernoulli(rng, keep_prob, shape), inputs.shape)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


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
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("kernel", default_init(),
                       (self.kernel, self.kernel, x.shape[-1], self.features), self.param_dtype)
        x, w = x.astype(self.dtype), w.astype(self.dtype)
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
        bias = self.param("bias", jax.nn.initializers.zeros, (self.features,), self.param_dtype)
        return x + bias.astype(self.dtype).reshape(1, 1, 1, -1)


class Upsample(nn.Module):
    """x2 upsampling: nearest (+3x3 conv) or FIR (+ fused FIR conv)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if not self.fir:
            h = naive_upsample_2d(x)
            return conv(h, out_ch, conv_backward=self.conv_backward, **dt) if self.with_conv else h
        if self.with_conv:
            return FIRConv(out_ch, up=True, fir_kernel=self.fir_kernel, **dt)(x)
        return upsample_2d(x, self.fir_kernel)


class Downsample(nn.Module):
    """/2 downsampling: stride-2 3x3 conv or 2x2 average pool, or their FIR versions."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if not self.fir:
            # TF-style SAME padding for stride 2 pads (0, 1), as in DDPM/score_sde.
            if not self.with_conv:
                return naive_downsample_2d(x)
            return conv(x, out_ch, stride=2, conv_backward=self.conv_backward, **dt)
        if self.with_conv:
            return FIRConv(out_ch, down=True, fir_kernel=self.fir_kernel, **dt)(x)
        return downsample_2d(x, self.fir_kernel)


# ----------------------------------------------------------------------------------------
# Residual blocks.
# ----------------------------------------------------------------------------------------


def _add_temb(h: Array, temb: Array | None, act, dt: dict) -> Array:
    """Adds a per-channel bias computed from the conditioning embedding [B, E]."""
    if temb is None:
        return h
    return h + nn.Dense(h.shape[-1], kernel_init=default_init(), **dt)(act(temb))[:, None, None, :]


def checkpointed(block: nn.Module, body: Callable, *args):
    """body(block, *args): a residual or attention block, with activations recomputed in
    the backward pass if block.remat.

    The last argument (`train`, a Python bool) is static. Lifting the body rather than
    the module class keeps the block's name, so parameters are the same either way.

    Rematerialisation in training gets a custom VJP (`nn.custom_vjp` around `nn.vjp` of
    the `nn.remat` body) that only adds data dependencies, because XLA:CPU's scheduler
    (jaxlib 0.10.2; it drops optimization barriers before scheduling) otherwise undid what
    remat saves, measured on DDPM++'s train step:

    * the recomputation depends only on the saved inputs, so XLA ran it as early as the
      forward pass and its activations lived through the backward pass. The saved inputs
      now carry `0 * max(output cotangent)`: recomputation waits for the block's turn.
    * parameter gradients (kernel gradients, bias and GroupNorm reductions) feed only the
      optimizer, so XLA ran them after the whole chain of input gradients, keeping every
      block's recomputed activations and cotangents alive until then. The block's input
      cotangents now carry `0 * sum(max(parameter gradient))`: the chain cannot go on
      before the block's parameter gradients exist.

    XLA's temporaries for that step fell from 0.91 GiB (0.86 without remat) to 0.45 GiB.
    `0 * v` stays in the graph (XLA folds it only for integers) and changes no finite
    value; a non-finite gradient, already fatal to the step, spreads to the inputs'.
    Without remat the wrapper is not used: there the same ordering bought 6% of the
    temporaries, no peak RSS (its reductions add kernels), and cost the bfloat16 step
    about 8%. Forward-mode
    differentiation is not defined through a custom VJP, hence train=False (sampling,
    likelihood) keeps plain `nn.remat`.
    """
    *arrays, train = args
    if not block.remat:
        return body(block, *args)
    if not train:
        return nn.remat(body, static_argnums=(len(args),))(block, *args)

    def fn(mdl, *xs):
        return body(mdl, *xs, train)

    def fwd(mdl, *xs):
        return nn.vjp(nn.remat(fn), mdl, *xs)

    def bwd(vjp_fn, g):
        # The residuals with the batch axis first are the saved inputs (the others are
        # parameters and random keys): gate them on the cotangent.
        gate = _zero_of(g)
        leaves, treedef = jax.tree.flatten(vjp_fn)
        leaves = [leaf + gate.astype(leaf.dtype)
                  if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim >= 2
                  and leaf.shape[0] == g.shape[0] else leaf for leaf in leaves]
        params_t, *inputs_t = jax.tree.unflatten(treedef, leaves)(g)
        tie = sum((_zero_of(leaf) for leaf in jax.tree.leaves(params_t)), jnp.float32(0))
        inputs_t = jax.tree.map(lambda t: t + tie.astype(t.dtype), inputs_t)
        return (params_t, *inputs_t)

    return nn.custom_vjp(fn, forward_fn=fwd, backward_fn=bwd)(block, *arrays)


def _zero_of(v: Array) -> Array:
    """0 * max(v) in float32: zero, but computed from all of v. A max, not a sum, so XLA
    cannot merge it with the reduction that produced v (a bias gradient's sum over the
    batch and pixels) and skip materialising v."""
    return jnp.max(v).astype(jnp.float32) * 0.0


def _merge(x):
    """A block's input: an array, or arrays to concatenate along channels (the U-Nets'
    skip connections, concatenated inside the block so that with remat it saves the two
    parts, which live anyway, rather than a copy of both)."""
    return jnp.concatenate(x, axis=-1) if isinstance(x, (tuple, list)) else x


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
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        return checkpointed(self, type(self)._block, x, temb, train)

    @nn.compact
    def _block(self, x: Array, temb: Array | None, train: bool) -> Array:
        x = _merge(x)
        out_ch = self.out_ch or x.shape[-1]
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cv = dict(conv_backward=self.conv_backward, **dt)
        h = conv(self.act(group_norm(x, self.norm_groups, **dt)), out_ch, **cv)
        h = _add_temb(h, temb, self.act, dt)
        h = Dropout(self.dropout)(self.act(group_norm(h, self.norm_groups, **dt)),
                                  deterministic=not train)
        h = conv(h, out_ch, init_scale=self.init_scale, **cv)
        if x.shape[-1] != out_ch:
            x = nin(x, out_ch, train=train, **dt)
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
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    def _resample(self, x: Array) -> Array:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        return checkpointed(self, type(self)._block, x, temb, train)

    @nn.compact
    def _block(self, x: Array, temb: Array | None, train: bool) -> Array:
        x = _merge(x)
        out_ch = self.out_ch or x.shape[-1]
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cv = dict(conv_backward=self.conv_backward, **dt)
        h = self._resample(self.act(group_norm(x, **dt)))
        x = self._resample(x)
        h = _add_temb(conv(h, out_ch, **cv), temb, self.act, dt)
        h = Dropout(self.dropout)(self.act(group_norm(h, **dt)), deterministic=not train)
        h = conv(h, out_ch, init_scale=self.init_scale, **cv)
        if x.shape[-1] != out_ch or self.up or self.down:
            x = conv(x, out_ch, kernel=1, **cv)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Merges an input-pyramid image into features: 1x1 conv then concat or sum."""

    method: str = "cat"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv(x, y.shape[-1], kernel=1, dtype=self.dtype, param_dtype=self.param_dtype,
                 conv_backward=self.conv_backward)
        return jnp.concatenate([h, y], axis=-1) if self.method == "cat" else h + y


class LabelEmbedding(nn.Module):
    """Class-label embedding [B] int -> [B, features], added to the noise embedding.

    The table has num_classes + 1 rows: label `num_classes` (also used when y is None)
    means "no label", so one network can serve conditional and unconditional (classifier-
    free guidance) sampling.
    """

    num_classes: int
    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y: Array | None, batch: int) -> Array:
        if y is None:
            y = jnp.full((batch,), self.num_classes, jnp.int32)
        if y.shape != (batch,):
            raise ValueError(f"class labels y must have shape [{batch}]; got {y.shape}")
        return nn.Embed(self.num_classes + 1, self.features, param_dtype=self.param_dtype,
                        embedding_init=jax.nn.initializers.normal(1.0))(y)
