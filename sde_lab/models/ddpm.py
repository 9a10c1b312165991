"""DDPM U-Net (Ho et al., NeurIPS 2020, App. B), as in score_sde's models/ddpm.py.

A PixelCNN++-style U-Net: levels of wide-ResNet blocks (GroupNorm, swish, dropout), the
sinusoidal embedding of the timestep added to every block, self-attention at 16x16 and in
the middle, stride-2 conv downsampling and nearest+conv upsampling, and skip concatenation
from every down block. Maps x [B, H, W, C] and t [B] to [B, H, W, C]; with the "eps"
parameterization t arrives as 999 t, DDPM's integer timestep scale.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_lab.models import layers

Array = jax.Array


class DDPM(nn.Module):
    """DDPM U-Net. Defaults are the CIFAR-10 model (35.7M params in Ho et al.; score_sde's
    Flax port counts 35.2M, the number checked in tests: the paper's figure counts the
    TF model).

    Attributes:
      nf: base width; level i has nf * ch_mult[i] channels.
      ch_mult: width multipliers; len(ch_mult) - 1 downsamplings by 2.
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      attn_resolutions: feature-map heights with self-attention after each block.
      dropout: dropout rate in residual blocks (train=True, rng 'dropout').
      resamp_with_conv: learnable 3x3 convs in the resampling layers.
      nonlinearity: "swish" | "elu" | "relu" | "lrelu".
      num_classes: >0 adds a class-label embedding to the timestep embedding.
      norm_groups: GroupNorm groups; 0: min(C // 4, 32), lowered to a divisor of C, so
        any width works. score_sde's DDPM uses 32 at every width (equal from 128
        channels up, i.e. at every published size); its converted checkpoints below 128
        channels need norm_groups=32.
      rescale_input: map x from [0, 1] to 2 x - 1 first, as score_sde's networks do when
        trained on data.centered=False.
      dtype: compute dtype, "float32" or "bfloat16" (see `layers`); the output is float32.
      param_dtype: dtype the parameters are stored in ("float32").
      remat: recompute residual- and attention-block activations in the backward pass
        (`nn.remat`, via `layers.checkpointed`).
      conv_backward: how stride-1 convs compute, "auto" | "xla" | "gemm" | "onednn"
        (see `sde_lab.models.ncsnpp.NCSNpp`).
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    nonlinearity: str = "swish"
    num_classes: int = 0
    norm_groups: int = 0
    rescale_input: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    conv_backward: str = "auto"

    def __post_init__(self):
        layers.check_dtypes(self.dtype, self.param_dtype)
        layers.check_choice("conv_backward", self.conv_backward, layers.CONV_BACKWARDS)
        layers.check_choice("nonlinearity", self.nonlinearity, layers.ACTIVATIONS)
        if not self.ch_mult or self.nf < 1 or self.num_res_blocks < 1:
            raise ValueError("DDPM needs nf >= 1, num_res_blocks >= 1 and a non-empty ch_mult")
        widths = [self.nf * m for m in self.ch_mult]
        if self.norm_groups < 0 or self.norm_groups and any(w % self.norm_groups for w in widths):
            raise ValueError(f"DDPM: norm_groups={self.norm_groups} must be 0 or divide every "
                             f"width nf * ch_mult = {widths}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        """x: [B, H, W, C], t: [B] (timestep scale), y: [B] int labels -> [B, H, W, C]."""
        num_levels = len(self.ch_mult)
        layers.check_divisible(x.shape, 2 ** (num_levels - 1), "DDPM")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}]; got {t.shape}")
        if y is not None and not self.num_classes:
            raise ValueError("labels y given but num_classes=0; build with num_classes > 0")
        act = layers.get_act(self.nonlinearity)
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cv = dict(conv_backward=self.conv_backward, **dt)
        temb = layers.timestep_embedding(t, self.nf)
        temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), **dt)(temb)
        temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), **dt)(act(temb))
        if self.num_classes:
            temb = temb + layers.LabelEmbedding(self.num_classes, 4 * self.nf,
                                                param_dtype=self.param_dtype)(y, x.shape[0])

        ResBlock = functools.partial(layers.ResnetBlockDDPM, act=act, dropout=self.dropout,
                                     norm_groups=self.norm_groups, remat=self.remat, **cv)
        Attn = functools.partial(layers.AttnBlock, norm_groups=self.norm_groups,
                                 remat=self.remat, **dt)
        hs = [layers.conv(2.0 * x - 1.0 if self.rescale_input else x, self.nf, **cv)]
        for level in range(num_levels):
            for _ in range(self.num_res_blocks):
                h = ResBlock(out_ch=self.nf * self.ch_mult[level])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = Attn()(h, train)
                hs.append(h)
            if level != num_levels - 1:
                hs.append(layers.Downsample(with_conv=self.resamp_with_conv, **cv)(hs[-1]))

        h = ResBlock()(hs[-1], temb, train)
        h = Attn()(h, train)
        h = ResBlock()(h, temb, train)

        for level in reversed(range(num_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(out_ch=self.nf * self.ch_mult[level])((h, hs.pop()), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = Attn()(h, train)
            if level != 0:
                h = layers.Upsample(with_conv=self.resamp_with_conv, **cv)(h)

        h = act(layers.group_norm(h, self.norm_groups, **dt))
        return layers.conv(h, x.shape[-1], init_scale=0.0, **cv).astype(jnp.float32)


SIZES: dict[str, dict] = {
    "cifar10": dict(),                                             # 35.2M (score_sde count)
    # 256x256 CelebA-HQ / LSUN (score_sde configs/vp/ddpm/{celebahq,church}.py).
    "lsun256": dict(ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0),
    # 8x8x1 digits: 0.68M params, 77 MFLOP per image forward+backward.
    "digits": dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    "tiny": dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    # The converter's reference fixture (tests/data/convert): score_sde's DDPM at its
    # narrowest (32 channels: it always normalises with 32 groups), 8x8 inputs; 163K params.
    "ref_tiny": dict(nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
                     norm_groups=32),
}
