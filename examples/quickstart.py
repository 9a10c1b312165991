"""Quickstart: the VP SDE's probability-flow ODE carries the prior back to a 2-D mixture.

Run: python examples/quickstart.py   (a few seconds on a laptop CPU)
"""

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import sdes
from sde_lab.analytic import GaussianMixture


def main():
    sde = sdes.make("vp")
    data = GaussianMixture.create(means=[[-2.0, 0.0], [2.0, 1.0]], stds=0.5, weights=[0.3, 0.7])
    flow = sdes.reverse(sde, data.score_fn(sde), probability_flow=True)
    num_steps, n = 400, 20_000
    h = -(sde.T - sde.t_min) / num_steps

    def heun(x, i):
        t = sde.T + i * h
        d1 = flow.drift_diffusion(x, jnp.full((n,), t))[0]
        d2 = flow.drift_diffusion(x + h * d1, jnp.full((n,), t + h))[0]
        return x + 0.5 * h * (d1 + d2), None

    x_T = sde.prior_sample(jax.random.PRNGKey(0), (n, 2))
    x_0, _ = jax.jit(lambda x: jax.lax.scan(heun, x, jnp.arange(num_steps)))(x_T)
    x_0 = np.asarray(x_0, np.float64)
    print("sample mean", x_0.mean(0).round(3), " target", data.mean().round(3))
    print("sample cov\n", np.cov(x_0.T).round(3), "\n target cov\n", data.cov().round(3))
    print("fraction in right-hand mode", (x_0[:, 0] > 0).mean().round(3), " target 0.7")


if __name__ == "__main__":
    main()
