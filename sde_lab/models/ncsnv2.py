"""NCSNv2 (Song & Ermon, NeurIPS 2020, "Improved Techniques for Training Score-Based
Generative Models"): a RefineNet (Lin et al. 2017) on a dilated ResNet backbone.

The network is *not* conditioned on the noise level: the paper's technique 3 makes
s(x, sigma) = s(x) / sigma, which is exactly `parameterization.make("score")` (network
output divided by sigma). So `t` is accepted for the common interface and ignored.

Structure (score_sde models/ncsnv2.py, `ncsnv2_64/128/256`): level 0 has two residual
blocks at full resolution; every further level starts with a "down" block, which halves the
resolution (conv + mean-pool) when its dilation is 1 and otherwise keeps it and dilates
the convolutions, followed by one plain block. RefineBlocks then fuse the levels from the
deepest up (RCU -> multi-resolution fusion by bilinear resizing -> chained residual
pooling -> RCU). Normalisation is InstanceNorm++, activation ELU, convs use PyTorch's
default initialisation (score_sde's `ncsn_conv`). Mixed precision as in `layers`: convs in
`dtype`, InstanceNorm++ statistics in float32, float32 output.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_lab.models import layers
from sde_lab.models.layers import Dtype

Array = jax.Array


def _ncsn_init(scale: float = 1.0):
    """PyTorch's default conv init: uniform with bound sqrt(scale / fan_in)."""
    return jax.nn.initializers.variance_scaling(scale / 3.0, "fan_in", "uniform")


def ncsn_conv(x: Array, features: int, kernel: int = 3, dilation: int = 1,
              use_bias: bool = True, dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32, conv_backward: str = "xla") -> Array:
    """'SAME' kxk conv with PyTorch init for kernel and bias (bias bound 1/sqrt(fan_in))."""
    fan_in = kernel * kernel * x.shape[-1]
    bound = fan_in**-0.5
    bias_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(  # noqa: E731
        key, shape, dtype, -bound, bound)
    return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=use_bias,
                   kernel_dilation=(dilation, dilation), kernel_init=_ncsn_init(),
                   bias_init=bias_init, dtype=dtype, param_dtype=param_dtype,
                   conv_general_dilated=layers.conv_fn(conv_backward))(x)


def _init_around_one(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class InstanceNormPlus(nn.Module):
    """InstanceNorm++ (Song & Ermon 2019, eq. in App. A): instance norm that puts back the
    normalised per-channel means: gamma * (IN(x) + alpha * (mu - mean(mu)) / std(mu)) + beta.
    std(mu) is the biased standard deviation over channels (score_sde), or the unbiased one
    with `unbiased` (torch.var, as score_sde_pytorch and NCSNv2's PyTorch code).
    Statistics and the affine map in float32; the result in `dtype`."""

    unbiased: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x = x.astype(jnp.float32)
        means = jnp.mean(x, axis=(1, 2))
        m = jnp.mean(means, axis=-1, keepdims=True)
        v = jnp.var(means, axis=-1, keepdims=True, ddof=1 if self.unbiased else 0)
        means_plus = (means - m) * jax.lax.rsqrt(v + 1e-5)
        h = (x - means[:, None, None, :]) * jax.lax.rsqrt(
            jnp.var(x, axis=(1, 2), keepdims=True) + 1e-5)
        alpha, gamma, beta = (
            self.param(n, init, (c,), self.param_dtype).astype(jnp.float32).reshape(1, 1, 1, c)
            for n, init in (("alpha", _init_around_one), ("gamma", _init_around_one),
                            ("beta", jax.nn.initializers.zeros)))
        h = h + means_plus[:, None, None, :] * alpha
        return (h * gamma + beta).astype(self.dtype)


class ConvMeanPool(nn.Module):
    """kxk conv (Flax default init, as score_sde) then 2x2 mean pooling."""

    features: int
    kernel: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    conv_general_dilated=layers.conv_fn(self.conv_backward))(x)
        return layers.naive_downsample_2d(x)


class ResidualBlock(nn.Module):
    """Pre-activation residual block of the NCSNv2 backbone; `down` halves the resolution
    when dilation == 1, otherwise only changes the width with dilated convs."""

    features: int
    down: bool = False
    dilation: int = 1
    unbiased_norm: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    def __call__(self, x: Array) -> Array:
        if self.remat:
            return nn.remat(type(self)._block)(self, x)
        return self._block(x)

    @nn.compact
    def _block(self, x: Array) -> Array:
        d = self.dilation
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cv = dict(conv_backward=self.conv_backward, **dt)
        Norm = functools.partial(InstanceNormPlus, unbiased=self.unbiased_norm, **dt)
        h = nn.elu(Norm()(x))
        if self.down:
            h = nn.elu(Norm()(ncsn_conv(h, x.shape[-1], dilation=d, **cv)))
            if d > 1:
                return ncsn_conv(h, self.features, dilation=d, **cv) + ncsn_conv(
                    x, self.features, dilation=d, **cv)
            return (ConvMeanPool(self.features, **cv)(h)
                    + ConvMeanPool(self.features, kernel=1, **cv)(x))
        if x.shape[-1] == self.features:
            shortcut = x
        else:
            shortcut = ncsn_conv(x, self.features, kernel=3 if d > 1 else 1, dilation=d, **cv)
        h = nn.elu(Norm()(ncsn_conv(h, self.features, dilation=d, **cv)))
        return ncsn_conv(h, self.features, dilation=d, **cv) + shortcut


def _rcu(x: Array, features: int, num_blocks: int, dt: dict, num_stages: int = 2) -> Array:
    """Residual conv units: num_blocks x (num_stages x (ELU, bias-free 3x3 conv)) + skip."""
    for _ in range(num_blocks):
        residual = x
        for _ in range(num_stages):
            x = ncsn_conv(nn.elu(x), features, use_bias=False, **dt)
        x = x + residual
    return x


def _crp(x: Array, features: int, dt: dict, num_stages: int = 2) -> Array:
    """Chained residual pooling: x += conv(maxpool5x5(path)), chained num_stages times."""
    x = nn.elu(x)
    path = x
    for _ in range(num_stages):
        path = nn.max_pool(path, (5, 5), strides=(1, 1), padding="SAME")
        path = ncsn_conv(path, features, use_bias=False, **dt)
        x = path + x
    return x


def resize_align_corners(x: Array, hw: tuple[int, int]) -> Array:
    """Bilinear resize of [B, H, W, C] to hw with aligned corners: output pixel i samples
    the input at i (H - 1) / (H' - 1) (PyTorch's interpolate(..., align_corners=True))."""
    for axis, size in ((1, hw[0]), (2, hw[1])):
        n = x.shape[axis]
        src = np.arange(size) * ((n - 1) / (size - 1) if size > 1 else 0.0)
        lo = np.minimum(np.floor(src).astype(np.int32), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        shape = [1] * x.ndim
        shape[axis] = size
        frac = jnp.asarray((src - lo).reshape(shape), x.dtype)
        x = jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac
    return x


class RefineBlock(nn.Module):
    """RefineNet block: RCU on each input, multi-resolution fusion (sum of bilinearly
    resized 3x3 convs) to `output_hw`, chained residual pooling, output RCU."""

    output_hw: tuple[int, int]
    features: int
    start: bool = False
    end: bool = False
    align_corners: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    @nn.compact
    def __call__(self, xs: list[Array]) -> Array:
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype,
                  conv_backward=self.conv_backward)  # all for ncsn_conv
        hs = [_rcu(x, x.shape[-1], 2, dt) for x in xs]
        if self.start:
            h = hs[0]
        else:
            h = 0.0
            for x in hs:
                y = ncsn_conv(x, self.features, **dt)
                if self.align_corners:
                    h = h + resize_align_corners(y, self.output_hw)
                else:
                    h = h + jax.image.resize(y, (y.shape[0], *self.output_hw, self.features),
                                             "bilinear")
        h = _crp(h, self.features, dt)
        return _rcu(h, self.features, 3 if self.end else 1, dt)


class NCSNv2(nn.Module):
    """NCSNv2 RefineNet. Defaults are score_sde's `ncsnv2_64` (CIFAR-10 and CelebA 64).

    Attributes:
      nf: base width.
      ch_mult: backbone width per level (x nf), shallowest first.
      dilations: conv dilation per level; levels > 0 with dilation 1 halve the resolution.
      refine_mult: RefineBlock width per level (x nf); the deepest must equal ch_mult[-1].
      torch_compat: the layers of score_sde_pytorch's NCSNv2 (and NCSNv2's own PyTorch
        code), which differ from score_sde's in two places: InstanceNorm++ uses the
        unbiased variance of the channel means, and RefineNet fusion resizes with
        align_corners=True. Needed for its converted checkpoints (sde_lab.convert).
      rescale_input: map x from [0, 1] to 2 x - 1 first, as score_sde's networks do when
        trained on data.centered=False (its NCSNv2 configs).
      dtype: compute dtype, "float32" or "bfloat16" (see `layers`); the output is float32.
      param_dtype: dtype the parameters are stored in ("float32").
      remat: recompute residual-block activations in the backward pass (`nn.remat`).
      conv_backward: how stride-1 undilated convs compute, "auto" | "xla" | "gemm" |
        "onednn" (see `sde_lab.models.ncsnpp.NCSNpp`).
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    dilations: tuple[int, ...] = (1, 1, 2, 4)
    refine_mult: tuple[int, ...] = (1, 2, 2, 2)
    torch_compat: bool = False
    rescale_input: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    conv_backward: str = "auto"

    def __post_init__(self):
        layers.check_dtypes(self.dtype, self.param_dtype)
        layers.check_choice("conv_backward", self.conv_backward, layers.CONV_BACKWARDS)
        n = len(self.ch_mult)
        if n < 2 or len(self.dilations) != n or len(self.refine_mult) != n:
            raise ValueError("NCSNv2: ch_mult, dilations and refine_mult need the same "
                             f"length >= 2; got {self.ch_mult}, {self.dilations}, "
                             f"{self.refine_mult}")
        if self.refine_mult[-1] != self.ch_mult[-1] or self.dilations[0] != 1:
            raise ValueError("NCSNv2: refine_mult[-1] must equal ch_mult[-1] and "
                             "dilations[0] must be 1")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        """x: [B, H, W, C]; t: [B], ignored (see module docstring) -> [B, H, W, C]."""
        del train  # no dropout
        num_down = sum(1 for d in self.dilations[1:] if d == 1)
        layers.check_divisible(x.shape, 2**num_down, "NCSNv2")
        if y is not None:
            raise ValueError("NCSNv2 is not class-conditional; use ncsnpp or ddpm with "
                             "num_classes > 0")
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cv = dict(conv_backward=self.conv_backward, **dt)
        block = functools.partial(ResidualBlock, unbiased_norm=self.torch_compat,
                                  remat=self.remat, **cv)
        refine = functools.partial(RefineBlock, align_corners=self.torch_compat, **cv)
        h = ncsn_conv(2.0 * x - 1.0 if self.rescale_input else x, self.nf, **cv)
        h = block(self.nf)(h)
        feats = [block(self.nf)(h)]
        for mult, d in zip(self.ch_mult[1:], self.dilations[1:]):
            h = block(mult * self.nf, down=True, dilation=d)(feats[-1])
            feats.append(block(mult * self.nf, dilation=d)(h))

        n = len(feats)
        h = refine(feats[-1].shape[1:3], self.refine_mult[-1] * self.nf,
                   start=True)([feats[-1]])
        for level in reversed(range(n - 1)):
            h = refine(feats[level].shape[1:3], self.refine_mult[level] * self.nf,
                       end=level == 0)([feats[level], h])
        h = nn.elu(InstanceNormPlus(unbiased=self.torch_compat, **dt)(h))
        return ncsn_conv(h, x.shape[-1], **cv).astype(jnp.float32)


SIZES: dict[str, dict] = {
    # score_sde configs/ve/ncsnv2/{cifar10,celeba}.py (ncsnv2_64, nf=128).
    "cifar10": dict(),
    # configs/ve/ncsnv2/bedroom.py (ncsnv2_128, 96..128 px).
    "bedroom128": dict(ch_mult=(1, 2, 2, 4, 4), dilations=(1, 1, 1, 2, 4),
                       refine_mult=(1, 1, 2, 2, 4)),
    # ncsnv2_256 (129..256 px).
    "ncsnv2_256": dict(ch_mult=(1, 2, 2, 2, 4, 4), dilations=(1, 1, 1, 1, 2, 4),
                       refine_mult=(1, 1, 2, 2, 2, 4)),
    "tiny": dict(nf=8),
    # score_sde_pytorch's ncsnv2_64 (for its checkpoints): its third RefineBlock has nf
    # channels where score_sde's has 2 nf, and its layers differ (NCSNv2.torch_compat).
    "cifar10_pytorch": dict(refine_mult=(1, 1, 2, 2), torch_compat=True),
    # The converter's reference fixtures (tests/data/convert): ncsnv2_64 at nf=4.
    "ref_tiny": dict(nf=4),
    "ref_tiny_pytorch": dict(nf=4, refine_mult=(1, 1, 2, 2), torch_compat=True),
}
