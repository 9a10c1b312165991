"""Learned noise schedules: VDM's monotone network gamma(t) (Kingma et al. 2021).

`sdes.LearnedVPSDE(learned=True)` builds its schedule from this module; its parameters
are the SDE's trainable parameters (`sde.init(key)`, `sde.bind(params)`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class NoiseSchedule(nn.Module):
    """Learned monotone noise schedule gamma(t), t in [0, 1]: the official
    `NoiseSchedule_NNet` (l1 linear, l2 -> sigmoid -> l3 with n features, positive
    weights), with the paper's normalisation to learnable endpoints:

        g~(t) = |w1| t + (1/n) sum_j |w3_j| (2 sigmoid(|w2_j| (2t - 1) + b2_j) - 1),
        gamma(t) = gamma_0 + |delta| (g~(t) - g~(0)) / (g~(1) - g~(0)),

    every weight made positive by abs, so g~ is increasing (strictly: |w1| > 0 almost
    surely) and gamma(0) = gamma_0, gamma(1) = gamma_0 + |delta| exactly (the stored value
    is forced at t = 0 and 1, with the derivative of the smooth expression kept, so
    forward-mode d gamma / dt stays right at the ends). The endpoints `gamma_0` and `delta`
    are parameters initialised to gamma_min and gamma_max - gamma_min, trained by the VLB
    (which, in continuous time, depends on the schedule only through its endpoints).

    Call: `schedule.apply(params, t)`, t of any shape -> gamma of the same shape.

    Attributes:
      gamma_min, gamma_max: initial endpoints (VDM: -13.3 and 5).
      num_features: width n of the hidden layer (VDM: 1024).
    """

    gamma_min: float = -13.3
    gamma_max: float = 5.0
    num_features: int = 1024

    @nn.compact
    def __call__(self, t: Array) -> Array:
        if not self.gamma_min < self.gamma_max or self.num_features < 1:
            raise ValueError(f"NoiseSchedule: need gamma_min < gamma_max and num_features >= "
                             f"1, got {self.gamma_min}, {self.gamma_max}, {self.num_features}")
        const = lambda v: (lambda key, shape: jnp.full(shape, v, jnp.float32))  # noqa: E731
        gamma_0 = self.param("gamma_0", const(self.gamma_min), ())
        delta = self.param("delta", const(self.gamma_max - self.gamma_min), ())
        w1 = self.param("w1", const(self.gamma_max - self.gamma_min), (1, 1))
        w2 = self.param("w2", nn.initializers.normal(1.0), (1, self.num_features))
        b2 = self.param("b2", nn.initializers.zeros, (1, self.num_features))
        w3 = self.param("w3", nn.initializers.normal(1.0), (self.num_features, 1))

        t = jnp.asarray(t, jnp.float32)
        s = jnp.concatenate([t.reshape(-1), jnp.asarray([0.0, 1.0])])[:, None]   # [N + 2, 1]
        h = jax.nn.sigmoid((2.0 * s - 1.0) @ jnp.abs(w2) + b2)
        g = (s @ jnp.abs(w1) + (2.0 * h - 1.0) @ jnp.abs(w3) / self.num_features)[:, 0]
        frac = (g[:-2] - g[-2]) / (g[-1] - g[-2])
        flat = t.reshape(-1)
        exact = jnp.where(flat == 0.0, 0.0, jnp.where(flat == 1.0, 1.0, frac))
        frac = frac + jax.lax.stop_gradient(exact - frac)
        return (gamma_0 + jnp.abs(delta) * frac).reshape(t.shape)
