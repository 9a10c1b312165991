"""NCSN++ and DDPM++ (Song et al., ICLR 2021, Sec. 4.4 and App. H): one configurable U-Net.

Relative to DDPM's U-Net it adds: Gaussian Fourier noise embeddings, BigGAN residual blocks
that resample, FIR (StyleGAN2) up/downsampling, 1/sqrt(2) skip rescaling, and
progressive growing of the input ("input_skip"/"residual" pyramid of downsampled images)
and of the output ("output_skip"/"residual" pyramid of upsampled predictions).

The network maps x [B, H, W, C] and a conditioning value t [B] to [B, H, W, C]. It does
no input or output scaling of its own: the `sde_lab.parameterization` wrapper provides t
(eps: 999 t for the sinusoidal embedding; score: log sigma, which the Fourier embedding
consumes directly, as score_sde's NCSN++ does with log of its sigma input) and divides by
sigma where needed (score_sde's `scale_by_sigma`).

Published CIFAR-10 configurations (score_sde configs/{ve,vp}/cifar10_*_continuous.py) are
the named sizes in `SIZES`; parameter counts at 32x32x3 are checked in the tests.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_lab.models import layers

Array = jax.Array

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("fourier", "positional")


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network. Defaults are NCSN++ cont. (CIFAR-10, 62.8M params).

    Attributes:
      nf: base width; level i has nf * ch_mult[i] channels.
      ch_mult: width multipliers; len(ch_mult) - 1 downsamplings by 2.
      num_res_blocks: residual blocks per level on the way down (one more on the way up).
      attn_resolutions: feature-map heights at which self-attention follows the blocks.
      dropout: dropout rate inside residual blocks (active with train=True, rng 'dropout').
      resamp_with_conv: up/downsample with a (FIR) convolution rather than a fixed filter.
      conditional: embed the noise level; False gives an unconditional network.
      fir, fir_kernel: FIR resampling and its 1-D separable filter.
      skip_rescale: divide residual sums by sqrt(2).
      resblock_type: "ddpm" (resample by separate layers) or "biggan" (inside the block).
      progressive: output pyramid "none" | "output_skip" | "residual".
      progressive_input: input pyramid "none" | "input_skip" | "residual".
      progressive_combine: "sum" | "cat" for merging the input pyramid ("input_skip").
      embedding_type: "fourier" (Gaussian Fourier features) | "positional" (sinusoidal).
      fourier_scale: std of the Fourier frequencies.
      init_scale: init scale of the last conv of each block and of the output (0: ~zero).
      nonlinearity: "swish" | "elu" | "relu" | "lrelu".
      num_classes: >0 adds a class-label embedding (y in [0, num_classes); see
        layers.LabelEmbedding for the "no label" index).
      rescale_input: map x from [0, 1] to 2 x - 1 first (also for the input pyramid), as
        score_sde's networks do when trained on data.centered=False (its VE models).
      dtype: compute dtype, "float32" or "bfloat16" (mixed precision; see `layers`).
        The output is float32 either way.
      param_dtype: dtype the parameters are stored in ("float32").
      remat: recompute each residual and attention block's activations in the backward
        pass (`nn.remat`, ordered for XLA:CPU by `layers.checkpointed`): on DDPM++'s
        batch-8 CPU step, half the temporaries for 6% more time.
      conv_backward: how stride-1 convolutions compute their kernel gradient: "xla"
        (transposed convolution), "gemm" (a matrix product per kernel tap, faster on
        XLA:CPU with YNNPACK's convolutions), "auto" ("gemm" where XLA:CPU runs YNNPACK's
        convolutions, "xla" elsewhere), all with the same results up to rounding; or
        "onednn": forward and both gradients by oneDNN on the CPU (`sde_lab.onednn`; fast
        bfloat16 on AMX/AVX-512 BF16, reverse mode only).
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    nonlinearity: str = "swish"
    num_classes: int = 0
    rescale_input: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    conv_backward: str = "auto"

    def __post_init__(self):
        layers.check_dtypes(self.dtype, self.param_dtype)
        layers.check_choice("conv_backward", self.conv_backward, layers.CONV_BACKWARDS)
        layers.check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
        layers.check_choice("progressive", self.progressive, PROGRESSIVE)
        layers.check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        layers.check_choice("progressive_combine", self.progressive_combine, COMBINE)
        layers.check_choice("embedding_type", self.embedding_type, EMBEDDINGS)
        layers.check_choice("nonlinearity", self.nonlinearity, layers.ACTIVATIONS)
        if not self.ch_mult or self.nf < 1 or self.num_res_blocks < 1:
            raise ValueError("NCSNpp needs nf >= 1, num_res_blocks >= 1 and a non-empty ch_mult")
        if self.num_classes and not self.conditional:
            raise ValueError("num_classes > 0 needs conditional=True (labels join the "
                             "noise embedding)")
        super().__post_init__()

    def _embed(self, t: Array, y: Array | None, act) -> Array | None:
        """Noise-level (+ label) embedding [B, 4 nf], or None if unconditional."""
        if not self.conditional:
            return None
        if self.embedding_type == "fourier":
            temb = layers.GaussianFourierProjection(self.nf, self.fourier_scale,
                                                    param_dtype=self.param_dtype)(t)
        else:
            temb = layers.timestep_embedding(t, self.nf)
        temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), **self._dt)(temb)
        temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), **self._dt)(act(temb))
        if self.num_classes:
            temb = temb + layers.LabelEmbedding(self.num_classes, 4 * self.nf,
                                                param_dtype=self.param_dtype)(y, t.shape[0])
        return temb

    @property
    def _dt(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    @property
    def _cv(self) -> dict:
        return dict(conv_backward=self.conv_backward, **self._dt)

    def _head(self, h: Array, channels: int, act, init_scale: float) -> Array:
        return layers.conv(act(layers.group_norm(h, **self._dt)), channels,
                           init_scale=init_scale, **self._cv)

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        """x: [B, H, W, C], t: [B] conditioning value, y: [B] int labels -> [B, H, W, C]."""
        num_levels = len(self.ch_mult)
        layers.check_divisible(x.shape, 2 ** (num_levels - 1), "NCSNpp")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}]; got {t.shape}")
        if y is not None and not self.num_classes:
            raise ValueError("labels y given but num_classes=0; build with num_classes > 0")
        act = layers.get_act(self.nonlinearity)
        temb = self._embed(t, y, act)

        ResBlock, Attn = self._block_types(act)

        if self.rescale_input:
            x = 2.0 * x - 1.0
        # Downsampling path; hs keeps every output for the skip connections.
        input_pyramid = x
        hs = [layers.conv(x, self.nf, **self._cv)]
        for level in range(num_levels):
            for _ in range(self.num_res_blocks):
                h = ResBlock(out_ch=self.nf * self.ch_mult[level])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = Attn()(h, train)
                hs.append(h)
            if level != num_levels - 1:
                h = self._resample(hs[-1], temb, train, ResBlock, up=False)
                h, input_pyramid = self._input_pyramid(h, input_pyramid)
                hs.append(h)

        h = ResBlock()(hs[-1], temb, train)
        h = Attn()(h, train)
        h = ResBlock()(h, temb, train)

        # Upsampling path.
        pyramid = None
        for level in reversed(range(num_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(out_ch=self.nf * self.ch_mult[level])((h, hs.pop()), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = Attn()(h, train)
            h, pyramid = self._output_pyramid(h, pyramid, x.shape[-1], act, level == num_levels - 1)
            if level != 0:
                h = self._resample(h, temb, train, ResBlock, up=True)

        if self.progressive == "output_skip":
            return pyramid.astype(jnp.float32)
        return self._head(h, x.shape[-1], act, self.init_scale).astype(jnp.float32)

    def _block_types(self, act):
        """The residual-block and attention constructors with this network's options."""
        res_kw = dict(act=act, dropout=self.dropout, init_scale=self.init_scale,
                      skip_rescale=self.skip_rescale, remat=self.remat, **self._cv)
        if self.resblock_type == "ddpm":
            res_block = functools.partial(layers.ResnetBlockDDPM, **res_kw)
        else:
            res_block = functools.partial(layers.ResnetBlockBigGAN, fir=self.fir,
                                          fir_kernel=self.fir_kernel, **res_kw)
        attn = functools.partial(layers.AttnBlock, skip_rescale=self.skip_rescale,
                                 init_scale=self.init_scale, remat=self.remat, **self._dt)
        return res_block, attn

    def _resample(self, h, temb, train, res_block, up: bool):
        """Between levels: a resampling BigGAN block, or a separate (FIR) layer (DDPM)."""
        if self.resblock_type == "biggan":
            return res_block(up=up, down=not up)(h, temb, train)
        layer = layers.Upsample if up else layers.Downsample
        return layer(with_conv=self.resamp_with_conv, fir=self.fir, fir_kernel=self.fir_kernel,
                     **self._cv)(h)

    def _input_pyramid(self, h, pyramid):
        """Progressive input: "input_skip" merges the downsampled image into h (Combine);
        "residual" adds a learned downsampling of the previous pyramid level to h."""
        resample = dict(fir=self.fir, fir_kernel=self.fir_kernel, **self._cv)
        if self.progressive_input == "none":
            return h, pyramid
        if self.progressive_input == "input_skip":
            pyramid = layers.Downsample(with_conv=False, **resample)(pyramid)
            return layers.Combine(self.progressive_combine, **self._cv)(pyramid, h), pyramid
        pyramid = layers.Downsample(out_ch=h.shape[-1], with_conv=True, **resample)(pyramid)
        pyramid = self._skip_sum(pyramid, h)
        return pyramid, pyramid

    def _skip_sum(self, a: Array, b: Array) -> Array:
        return (a + b) / np.sqrt(2.0) if self.skip_rescale else a + b

    def _output_pyramid(self, h, pyramid, out_channels, act, first):
        """Progressive output: "output_skip" sums upsampled per-level predictions (in image
        channels); "residual" sums upsampled per-level features into h."""
        if self.progressive == "none":
            return h, None
        resample = dict(fir=self.fir, fir_kernel=self.fir_kernel, **self._cv)
        if self.progressive == "output_skip":
            pred = self._head(h, out_channels, act, self.init_scale)
            if first:
                return h, pred
            return h, layers.Upsample(with_conv=False, **resample)(pyramid) + pred
        if first:
            return h, self._head(h, h.shape[-1], act, 1.0)
        pyramid = layers.Upsample(out_ch=h.shape[-1], with_conv=True, **resample)(pyramid)
        pyramid = self._skip_sum(pyramid, h)
        return pyramid, pyramid


_NCSNPP_CONT = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                    dropout=0.1, fir=True, skip_rescale=True, resblock_type="biggan",
                    progressive="none", progressive_input="residual",
                    progressive_combine="sum", embedding_type="fourier", fourier_scale=16.0,
                    init_scale=0.0)
_DDPMPP_CONT = dict(_NCSNPP_CONT, fir=False, progressive_input="none",
                    embedding_type="positional")
# 256x256 (CelebA-HQ / LSUN church / FFHQ, score_sde configs/ve/*_256_ncsnpp_continuous.py).
_NCSNPP_256 = dict(_NCSNPP_CONT, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2,
                   dropout=0.0, progressive="output_skip", progressive_input="input_skip")

SIZES: dict[str, dict] = {
    "ncsnpp_cont": _NCSNPP_CONT,                                   # 62.8M, VE, CIFAR-10
    "ncsnpp_cont_deep": dict(_NCSNPP_CONT, num_res_blocks=8),      # 107.6M
    "ddpmpp_cont": _DDPMPP_CONT,                                   # 61.8M, VP/sub-VP
    "ddpmpp_cont_deep": dict(_DDPMPP_CONT, num_res_blocks=8),      # 106.6M
    # EDM's CIFAR-10 networks (Karras et al. 2022, NVlabs/edm train.py --arch=ddpmpp /
    # ncsnpp): the same blocks with channel_mult [2, 2, 2] (no 4x4 level, 256 channels at
    # 32x32) and dropout 0.13. Counts equal EDM's SongUNet: 55,732,739 and 56,395,523 + the
    # 128 Fourier frequencies (a buffer there, a parameter here).
    "ddpmpp_edm": dict(_DDPMPP_CONT, ch_mult=(2, 2, 2), dropout=0.13),   # 55.7M
    "ncsnpp_edm": dict(_NCSNPP_CONT, ch_mult=(2, 2, 2), dropout=0.13),   # 56.4M
    # 64x64 CelebA: the architecture of configs/ve/celeba_ncsnpp.py, with the continuous
    # (Fourier) embedding of the CIFAR-10 models.
    "ncsnpp_64": _NCSNPP_CONT,
    "ncsnpp_256": _NCSNPP_256,
    # 8x8x1 scikit-learn digits: DDPM++ style, attention at 4x4; 0.75M params, 91 MFLOP
    # per image for forward+backward (XLA count), i.e. 11.6 GFLOP per step at batch 128.
    "digits": dict(_DDPMPP_CONT, nf=32, ch_mult=(1, 2), num_res_blocks=1,
                   attn_resolutions=(4,)),
    # For tests: every feature on (FIR, BigGAN, residual input pyramid, attention) at 8x8.
    "tiny": dict(_NCSNPP_CONT, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    # The converter's reference fixtures (tests/data/convert): the published NCSN++ /
    # DDPM++ cont. configs at nf=4 with one downsampling (8x8 inputs, 12.7K params).
    "ref_tiny_ncsnpp": dict(_NCSNPP_CONT, nf=4, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(4,)),
    "ref_tiny_ddpmpp": dict(_DDPMPP_CONT, nf=4, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(4,)),
}
