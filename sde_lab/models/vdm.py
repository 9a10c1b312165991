"""VDM: the score network of Kingma et al. 2021, "Variational Diffusion Models" (official
code: google-research/vdm, `model_vdm.py`).

* `VDM` predicts eps from z_t and the conditioning value (VDM conditions on gamma_t). It is
  a U-Net without any up/downsampling: every residual block runs at full resolution,
  `num_blocks` blocks down, a middle (block, self-attention, block), `num_blocks + 1`
  blocks up, each up block taking the matching down activation by concatenation. The
  input is concatenated with its Fourier features sin/cos(2^n 2 pi z) (n in
  [fourier_min, fourier_max)), which lets the network see the fine detail that the
  likelihood depends on; the output layer is zero-initialised and, as in the official
  code, the input is added to the output, so at initialisation eps_hat = z_t (right at
  high noise, where z_t is almost all eps).
* It knows no SDE: pair it with the `eps_gamma` parameterization (eps prediction
  conditioned on gamma_t = -log_snr(t)). The learned schedule is the SDE's own:
  `sdes.make("vdm", learned=True)` with `sde_lab.schedules.NoiseSchedule`.

Sizes (`SIZES`): `cifar10` is the official CIFAR-10 config (`configs/cifar10.py`: 128
channels, 32 blocks, attention only in the middle, dropout 0.1, Fourier features n = 6, 7,
gamma in [-13.3, 5]); at 32x32x3 it has 30,577,667 parameters. Source: the official
`ScoreUNet` built from that config and counted with `jax.eval_shape` gives 30,578,179; the
difference, 512, is the weights of its extra scalar class-conditioning input to the first
embedding layer, which an unconditional model does not have. `tiny` is for tests.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_lab.models import layers
from sde_lab.models.layers import Dtype

Array = jax.Array


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding (Vaswani et al.; DDPM/fairseq variant): t [B] -> [B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def fourier_features(x: Array, exponents: tuple[int, ...]) -> Array:
    """sin and cos of 2^n 2 pi x for each n: [..., C] -> [..., 2 C len(exponents)]."""
    w = 2.0 * math.pi * 2.0 ** jnp.asarray(exponents, x.dtype)
    h = (x[..., :, None] * w.reshape((1,) * x.ndim + (-1,))).reshape(x.shape[:-1] + (-1,))
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv3x3, + projection of the conditioning vector, GroupNorm-swish-
    dropout-conv3x3 (zero-initialised), residual (1x1 projection if channels change)."""

    channels: int
    dropout: float = 0.0
    num_groups: int = 32
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_backward: str = "xla"

    def __call__(self, x: Array, cond: Array, train: bool) -> Array:
        return layers.checkpointed(self, type(self)._block, x, cond, train)

    @nn.compact
    def _block(self, x: Array, cond: Array, train: bool) -> Array:
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv_fn = layers.conv_fn(self.conv_backward)
        h = nn.swish(layers.GroupNorm(self.num_groups, **dt)(x))
        h = nn.Conv(self.channels, (3, 3), name="conv1", conv_general_dilated=conv_fn, **dt)(h)
        h = h + nn.Dense(self.channels, use_bias=False, kernel_init=nn.initializers.zeros,
                         name="cond_proj", **dt)(cond)[:, None, None, :]
        h = nn.swish(layers.GroupNorm(self.num_groups, **dt)(h))
        h = layers.Dropout(self.dropout)(h, deterministic=not train)
        h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros, name="conv2",
                    conv_general_dilated=conv_fn, **dt)(h)
        if x.shape[-1] != self.channels:
            x = nn.Dense(self.channels, name="nin_shortcut", **dt)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual, zero-initialised output.
    Logits and softmax in float32."""

    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, height, width, c = x.shape
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layers.GroupNorm(self.num_groups, **dt)(x).reshape(b, height * width, c)
        q, k, v = (nn.Dense(c, name=n, **dt)(h) for n in ("q", "k", "v"))
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(self.dtype)
        h = jnp.einsum("bij,bjc->bic", weights, v)
        h = nn.Dense(c, kernel_init=nn.initializers.zeros, name="proj_out", **dt)(h)
        return x + h.reshape(x.shape)


class VDM(nn.Module):
    """VDM eps-prediction network (Kingma et al. 2021; the official `ScoreUNet`).

    Call: `net.apply(params, x, cond, train=False)` with x [B, H, W, C] and cond [B] the
    conditioning value (VDM: gamma_t); returns eps_hat [B, H, W, C]. Any H, W work (no
    resampling); dropout needs `rngs={"dropout": key}` when train=True.

    Attributes:
      channels: width of every block (128 for CIFAR-10).
      num_blocks: residual blocks on the way down (32); the way up has one more.
      dropout: dropout rate inside the blocks (0.1 for CIFAR-10).
      fourier_min, fourier_max: Fourier-feature exponents n in [fourier_min, fourier_max).
        fourier_max <= fourier_min disables them.
      attention_in_blocks: self-attention after every block (the official `with_attention`;
        False for CIFAR-10, which has attention only in the middle).
      gamma_min, gamma_max: range of the conditioning value, mapped to [0, 1] (times 1000)
        before the sinusoidal embedding. VDM conditions on gamma_t in [-13.3, 5]; a model
        conditioned on 999 t (parameterization "eps") would use 0 and 999.
      num_groups: GroupNorm groups; must divide `channels`.
      input_skip: add the input to the output (the official "base measure").
      num_classes: > 0 adds a class-label embedding to the conditioning vector (y in
        [0, num_classes); y = num_classes or None is "no label", see
        layers.LabelEmbedding).
      dtype: compute dtype, "float32" or "bfloat16" (see `sde_lab.models.layers`); the
        Fourier features of the input (phases up to 2^7 2 pi x) and the input skip stay
        float32, and so does the output.
      param_dtype: dtype the parameters are stored in ("float32").
      remat: recompute residual-block activations in the backward pass (`nn.remat`).
      conv_backward: how the 3x3 convs compute, "auto" | "xla" | "gemm" | "onednn" (see
        `sde_lab.models.ncsnpp.NCSNpp`).
    """

    channels: int = 128
    num_blocks: int = 32
    dropout: float = 0.1
    fourier_min: int = 6
    fourier_max: int = 8
    attention_in_blocks: bool = False
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    num_groups: int = 32
    input_skip: bool = True
    num_classes: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    conv_backward: str = "auto"

    def __post_init__(self):
        layers.check_dtypes(self.dtype, self.param_dtype)
        layers.check_choice("conv_backward", self.conv_backward, layers.CONV_BACKWARDS)
        super().__post_init__()

    def _check(self, x: Array, cond: Array) -> None:
        if x.ndim != 4 or cond.shape != x.shape[:1]:
            raise ValueError(f"vdm: need x [B, H, W, C] and cond [B], got {x.shape} and "
                             f"{cond.shape}")
        if self.channels % self.num_groups:
            raise ValueError(f"vdm: num_groups={self.num_groups} must divide "
                             f"channels={self.channels}")
        if self.num_blocks < 0 or not self.gamma_min < self.gamma_max:
            raise ValueError(f"vdm: need num_blocks >= 0 and gamma_min < gamma_max, got "
                             f"{self.num_blocks}, {self.gamma_min}, {self.gamma_max}")

    @nn.compact
    def __call__(self, x: Array, cond: Array, train: bool = False,
                 y: Array | None = None) -> Array:
        self._check(x, cond)
        if y is not None and not self.num_classes:
            raise ValueError("vdm: labels y given but num_classes=0; build with num_classes > 0")
        s = (cond - self.gamma_min) / (self.gamma_max - self.gamma_min)
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = timestep_embedding(1000.0 * s, self.channels)
        emb = nn.swish(nn.Dense(4 * self.channels, name="dense0", **dt)(emb))
        emb = nn.swish(nn.Dense(4 * self.channels, name="dense1", **dt)(emb))
        if self.num_classes:
            emb = emb + layers.LabelEmbedding(self.num_classes, 4 * self.channels,
                                              param_dtype=self.param_dtype)(y, x.shape[0])

        exponents = tuple(range(self.fourier_min, self.fourier_max))
        x = x.astype(jnp.float32)
        h = jnp.concatenate([x, fourier_features(x, exponents)], -1) if exponents else x
        block = lambda name: ResnetBlock(  # noqa: E731
            self.channels, self.dropout, self.num_groups, self.remat, name=name,
            conv_backward=self.conv_backward, **dt)
        conv_fn = layers.conv_fn(self.conv_backward)
        attn = lambda name: AttnBlock(self.num_groups, name=name, **dt)  # noqa: E731
        hs = [nn.Conv(self.channels, (3, 3), name="conv_in", conv_general_dilated=conv_fn,
                      **dt)(h)]
        for i in range(self.num_blocks):
            h = block(f"down_block_{i}")(hs[-1], emb, train)
            if self.attention_in_blocks:
                h = attn(f"down_attn_{i}")(h)
            hs.append(h)

        h = block("mid_block_1")(hs[-1], emb, train)
        h = attn("mid_attn")(h)
        h = block("mid_block_2")(h, emb, train)

        for i in range(self.num_blocks + 1):
            h = block(f"up_block_{i}")(jnp.concatenate([h, hs.pop()], -1), emb, train)
            if self.attention_in_blocks:
                h = attn(f"up_attn_{i}")(h)

        h = nn.swish(layers.GroupNorm(self.num_groups, **dt)(h))
        eps = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros,
                      name="conv_out", conv_general_dilated=conv_fn, **dt)(h).astype(jnp.float32)
        return eps + x if self.input_skip else eps


SIZES: dict[str, dict] = {
    "cifar10": dict(channels=128, num_blocks=32, dropout=0.1, fourier_min=6, fourier_max=8,
                    attention_in_blocks=False, gamma_min=-13.3, gamma_max=5.0),
    "tiny": dict(channels=16, num_blocks=1, dropout=0.0, fourier_min=6, fourier_max=8,
                 attention_in_blocks=False, gamma_min=-13.3, gamma_max=5.0, num_groups=4),
}
