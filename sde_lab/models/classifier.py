"""Noise-conditional classifier p_t(y | x_t): a time-conditioned Wide-ResNet (images) or
residual MLP (vectors) that returns class logits.

It is score_sde's CIFAR-10 classifier for controllable generation (models/
wideresnet_noise_conditional.py: WRN-28-10, Zagoruyko & Komodakis 2016, with GroupNorm and
a Gaussian Fourier embedding of the log noise level added after the first conv of every
block), generalised to any width, depth, resolution and to vector data:

    images [B, H, W, C]: conv3x3(nf) -> len(ch_mult) groups of num_res_blocks blocks,
        width nf * widen_factor * ch_mult[i], group i > 0 starting with a stride-2 block;
        block: h = conv3x3(act(GN(x))) + Dense(swish(emb)); h = conv3x3(act(GN(h)));
        out = h + skip(x), skip = avg-pool by the stride and zero-pad the channels
        (parameter-free, as WRN) -> act(GN) -> global mean -> Dense(num_classes)
    vectors [B, D]: Dense(width) -> num_res_blocks pre-LayerNorm residual blocks
        (mlp.ResidualBlock) of width nf * widen_factor * ch_mult[-1] -> act(LN) ->
        Dense(num_classes)

The conditioning value cond [B] comes from `guidance.classifier_input`: log(sigma / alpha),
the log of the VE-equivalent noise level, which is the same function of the noise under
every SDE (score_sde fed log sigma of its VE SDE). The output layer is zero-initialised:
an untrained classifier predicts the uniform distribution and its guidance is 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_lab.models import layers
from sde_lab.models.mlp import ResidualBlock

Array = jax.Array


def _skip(x: Array, out: Array, stride: int) -> Array:
    """WRN's parameter-free shortcut: average-pool x by the stride, zero-pad channels."""
    if stride > 1:
        x = nn.avg_pool(x, (stride, stride), (stride, stride))
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out.shape[-1] - x.shape[-1])))


class WideResnetBlock(nn.Module):
    """Pre-activation WRN block with a conditioning bias after the first conv.

    activate_before_residual: the shortcut also takes act(GN(x)) (the first block of the
    network, as in WRN).
    """

    channels: int
    act: object
    stride: int = 1
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, emb: Array) -> Array:
        h = self.act(layers.group_norm(x))
        if self.activate_before_residual:
            x = h
        h = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding="SAME",
                    use_bias=False)(h)
        h = h + nn.Dense(self.channels)(nn.swish(emb))[:, None, None, :]
        h = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False)(
            self.act(layers.group_norm(h)))
        return h + _skip(x, h, self.stride)


class Classifier(nn.Module):
    """Noise-conditional classifier: x [B, H, W, C] or [B, D] and cond [B] -> logits [B, K].

    Defaults are score_sde's CIFAR-10 classifier, WRN-28-10, with ReLU replaced by the
    `nonlinearity` field (the "cifar10" size sets relu): 38.9M parameters at 32x32x3, of
    which 36.2M are the WRN (Zagoruyko & Komodakis count 36.5M with 1x1 projection
    shortcuts, 0.26M, which the zero-padding shortcut here does without) and 2.7M the
    noise embedding and its per-block projections.

    Attributes:
      num_classes: K, the number of logits.
      nf: channels of the stem conv (WRN: 16).
      widen_factor: WRN's k; group i has nf * widen_factor * ch_mult[i] channels.
      ch_mult: per-group width multipliers, non-decreasing (WRN: 1, 2, 4); len - 1
        stride-2 downsamplings.
      num_res_blocks: blocks per group (WRN-28: (28 - 4) / 6 = 4); for vectors, the number
        of residual MLP blocks.
      embed_dim: Gaussian Fourier features of cond (2 embed_dim values), then two dense
        layers of 4 embed_dim.
      fourier_scale: std of the fixed Fourier frequencies (score_sde: 16).
      nonlinearity: "swish" (default: a smooth input gradient for guidance) | "relu" |
        "elu" | "lrelu".
    """

    num_classes: int = 10
    nf: int = 16
    widen_factor: int = 10
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 4
    embed_dim: int = 128
    fourier_scale: float = 16.0
    nonlinearity: str = "swish"

    def __post_init__(self):
        layers.check_choice("nonlinearity", self.nonlinearity, layers.ACTIVATIONS)
        if self.num_classes < 2:
            raise ValueError(f"classifier: num_classes must be >= 2, got {self.num_classes}")
        if (min(self.nf, self.widen_factor, self.num_res_blocks, self.embed_dim) < 1
                or not self.ch_mult or min(self.ch_mult) < 1
                or list(self.ch_mult) != sorted(self.ch_mult)):
            raise ValueError("classifier: need nf, widen_factor, num_res_blocks, embed_dim "
                             ">= 1 and a non-empty, non-decreasing ch_mult of positive ints; "
                             f"got {self.nf}, {self.widen_factor}, {self.num_res_blocks}, "
                             f"{self.embed_dim}, {self.ch_mult}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, cond: Array) -> Array:
        if x.ndim not in (2, 4) or cond.shape != x.shape[:1]:
            raise ValueError(f"classifier: need x [B, H, W, C] or [B, D] and cond [B]; got "
                             f"{x.shape} and {cond.shape}")
        act = layers.get_act(self.nonlinearity)
        emb = layers.GaussianFourierProjection(self.embed_dim, self.fourier_scale)(cond)
        emb = nn.Dense(4 * self.embed_dim)(emb)
        emb = nn.Dense(4 * self.embed_dim)(nn.swish(emb))
        width = [self.nf * self.widen_factor * m for m in self.ch_mult]
        if x.ndim == 2:
            h = nn.Dense(width[-1])(x)
            for _ in range(self.num_res_blocks):
                h = ResidualBlock(width[-1])(h, emb)
            h = act(nn.LayerNorm()(h))
        else:
            layers.check_divisible(x.shape, 2 ** (len(self.ch_mult) - 1), "classifier")
            h = nn.Conv(self.nf, (3, 3), padding="SAME", use_bias=False)(x)
            for i, channels in enumerate(width):
                for j in range(self.num_res_blocks):
                    h = WideResnetBlock(channels, act, stride=2 if i and not j else 1,
                                        activate_before_residual=not (i or j))(h, emb)
            h = jnp.mean(act(layers.group_norm(h)), axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)(h)


SIZES: dict[str, dict] = {
    # score_sde's CIFAR-10 classifier (WRN-28-10, ReLU): 38.9M parameters at 32x32x3.
    "cifar10": dict(nonlinearity="relu"),
    # 8x8x1 digits: groups of 32, 64, 128 channels at 8x8, 4x4, 2x2; 0.76M parameters.
    "digits": dict(widen_factor=2, num_res_blocks=2, embed_dim=32),
    # 2-D toy data (vectors): 2 residual blocks of width 64; 59k parameters.
    "toy": dict(widen_factor=1, ch_mult=(4,), num_res_blocks=2, embed_dim=32),
    # For tests: images or vectors, a few thousand parameters.
    "tiny": dict(nf=8, widen_factor=1, ch_mult=(1, 2), num_res_blocks=1, embed_dim=8),
}
