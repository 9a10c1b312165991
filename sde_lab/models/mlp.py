"""Time-conditioned residual MLP for vector data [B, D]: 2-D toy distributions (mixtures,
checkerboard, two moons) and tabular data (e.g. anomaly scoring by likelihood or DSM loss).

    h = Dense(x);  per block: h += Dense(swish(Dense(swish(LN(h))) + Dense(emb)))
    out = Dense_zero(swish(LN(h)))

The conditioning value (999 t for "eps", log sigma for "score", ...) is embedded either
sinusoidally (DDPM's transformer embedding) or with fixed random Gaussian Fourier
features (Tancik et al. 2020; NCSN++'s choice for continuous sigma), then passed through a
two-layer MLP. The output layer is zero-initialised, so the untrained model outputs 0.
Mixed precision as in `sde_lab.models.layers`: dense layers in `dtype`, LayerNorm statistics
and embedding phases in float32, float32 output.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_lab.models import layers

Array = jax.Array
Dtype = Any

EMBEDDINGS = ("sinusoidal", "fourier")


def sinusoidal_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """[sin(t f_k), cos(t f_k)], f_k = max_period^(-k / (dim/2 - 1)): t [B] -> [B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.pad(jnp.concatenate([jnp.sin(args), jnp.cos(args)], 1), ((0, 0), (0, dim % 2)))


class GaussianFourierEmbedding(nn.Module):
    """[sin(2 pi t w), cos(2 pi t w)] with fixed w ~ N(0, scale^2) (not trained: the
    parameter is excluded from the gradient by stop_gradient)."""

    dim: int
    scale: float = 16.0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: Array) -> Array:
        w = self.param("w", nn.initializers.normal(self.scale), (1, self.dim // 2),
                       self.param_dtype)
        w = jax.lax.stop_gradient(w).astype(jnp.float32)
        args = 2.0 * math.pi * t.astype(jnp.float32)[:, None] * w
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], 1)


class ResidualBlock(nn.Module):
    """Pre-LayerNorm residual block with the embedding added after the first layer."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: Array, emb: Array) -> Array:
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.Dense(self.hidden, **dt)(nn.swish(nn.LayerNorm(**dt)(h)))
        y = nn.swish(y + nn.Dense(self.hidden, **dt)(emb))
        return h + nn.Dense(self.hidden, **dt)(y)


class MLP(nn.Module):
    """Score / eps network for x [B, D] and conditioning cond [B]; returns [B, D].

    Attributes:
      hidden: width of the residual stream.
      num_blocks: residual blocks.
      embed_dim: size of the time embedding (even).
      embedding: "sinusoidal" or "fourier".
      fourier_scale: std of the random Fourier frequencies (embedding="fourier").
      max_period: longest period of the sinusoidal embedding.
      num_classes: > 0 adds a class-label embedding to the time embedding (y in
        [0, num_classes); y = num_classes or None is "no label", see
        layers.LabelEmbedding).
      dtype: compute dtype, "float32" or "bfloat16"; the output is float32.
      param_dtype: dtype the parameters are stored in ("float32").
    """

    hidden: int = 128
    num_blocks: int = 3
    embed_dim: int = 64
    embedding: str = "sinusoidal"
    fourier_scale: float = 16.0
    max_period: float = 10000.0
    num_classes: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        layers.check_dtypes(self.dtype, self.param_dtype)
        super().__post_init__()

    def _check(self, x: Array, cond: Array) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"mlp: embedding={self.embedding!r} is not valid; choose from "
                             f"{list(EMBEDDINGS)}")
        if x.ndim != 2 or cond.shape != x.shape[:1]:
            raise ValueError(f"mlp: need x [B, D] and cond [B], got {x.shape} and {cond.shape}")
        if self.embed_dim < 2 or self.embed_dim % 2 or self.hidden < 1 or self.num_blocks < 0:
            raise ValueError(f"mlp: need an even embed_dim >= 2, hidden >= 1, num_blocks >= 0; "
                             f"got {self.embed_dim}, {self.hidden}, {self.num_blocks}")

    @nn.compact
    def __call__(self, x: Array, cond: Array, y: Array | None = None) -> Array:
        self._check(x, cond)
        if y is not None and not self.num_classes:
            raise ValueError("mlp: labels y given but num_classes=0; build with num_classes > 0")
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.embedding == "sinusoidal":
            emb = sinusoidal_embedding(cond, self.embed_dim, self.max_period)
        else:
            emb = GaussianFourierEmbedding(self.embed_dim, self.fourier_scale,
                                           param_dtype=self.param_dtype)(cond)
        emb = nn.Dense(self.hidden, **dt)(nn.swish(nn.Dense(self.hidden, **dt)(emb)))
        if self.num_classes:
            emb = emb + layers.LabelEmbedding(self.num_classes, self.hidden,
                                              param_dtype=self.param_dtype)(y, x.shape[0])
        h = nn.Dense(self.hidden, **dt)(x)
        for i in range(self.num_blocks):
            h = ResidualBlock(self.hidden, name=f"block_{i}", **dt)(h, emb)
        h = nn.swish(nn.LayerNorm(**dt)(h))
        out = nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros, name="out", **dt)(h)
        return out.astype(jnp.float32)


SIZES: dict[str, dict] = {
    "tiny": dict(hidden=32, num_blocks=1, embed_dim=16),
    "toy": dict(hidden=128, num_blocks=3, embed_dim=64),
    "tabular": dict(hidden=256, num_blocks=4, embed_dim=128),
}
