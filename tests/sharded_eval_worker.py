"""Sampling and likelihoods through `parallel.data_parallel` vs one device (subprocess).

`python sharded_eval_worker.py OUT.npz` evaluates each case twice, with a plain `jax.jit`
on the default device and with `parallel.data_parallel` over every device, on a
2-D Gaussian mixture with its exact score, and saves both results. Cases:

- "toy_em": a self-contained Euler-Maruyama reverse-SDE loop (lax.scan) whose initial
  noise and increments are drawn inside the function from one key;
- "exact_logp": the analytic diffused log-density, a pure batch map;
- "sampler_<name>" / "likelihood_<estimator>": sde_lab.samplers / sde_lab.likelihood,
  when those modules exist in this checkout.
"""

from __future__ import annotations

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab import parallel, sdes
from sde_lab.analytic import GaussianMixture
from sde_lab.sdes import expand_to

BATCH = 16
DATA = GaussianMixture.create([[-1.0, 0.5], [1.5, -0.5]], [0.3, 0.5])
SDE = sdes.make("vp")
SCORE = DATA.score_fn(SDE)


def toy_em(key):
    """N = 50 reverse Euler-Maruyama steps from the prior, [BATCH, 2]."""
    num_steps = 50
    dt = -(SDE.T - 1e-3) / num_steps
    key, k0 = jax.random.split(key)
    x0 = SDE.prior_sample(k0, (BATCH, 2))

    def body(x, inputs):
        i, k = inputs
        t = jnp.full((BATCH,), SDE.T + i * dt)
        f, g = SDE.drift_diffusion(x, t)
        drift = f - expand_to(g**2, x) * SCORE(x, t)
        noise = jax.random.normal(k, x.shape)
        return x + drift * dt + expand_to(g, x) * jnp.sqrt(-dt) * noise, None

    keys = jax.random.split(key, num_steps)
    x, _ = jax.lax.scan(body, x0, (jnp.arange(num_steps, dtype=jnp.float32), keys))
    return x


def exact_logp(x):
    return DATA.logp(SDE, x, jnp.full((x.shape[0],), 0.3))


def cases() -> dict:
    """name -> (fn, args, batch_argnums); fn returns a tuple of arrays."""
    key = jax.random.PRNGKey(3)
    x = DATA.sample(jax.random.PRNGKey(4), BATCH)
    out = {"toy_em": (lambda k: (toy_em(k),), (key,), ()),
           "exact_logp": (lambda x: (exact_logp(x),), (x,), (0,))}
    if importlib.util.find_spec("sde_lab.samplers") is not None:
        from sde_lab import samplers

        for name in ("euler_maruyama", "dpm_solver++"):
            sample_fn = samplers.make(name, num_steps=20)
            out[f"sampler_{name}"] = (
                lambda k, f=sample_fn: (lambda r: (r[0], r[1]["nfe"]))(
                    f(k, SDE, SCORE, (BATCH, 2))), (key,), ())
    if importlib.util.find_spec("sde_lab.likelihood") is not None:
        from sde_lab import likelihood

        for estimator in ("exact", "hutchinson"):
            out[f"likelihood_{estimator}"] = (
                lambda k, x, e=estimator: (lambda r: (r[0], r[1]["nfe"]))(
                    likelihood.log_likelihood(k, SDE, SCORE, x, estimator=e)),
                (key, x), (1,))
    return out


def main(out_path: str) -> None:
    mesh = parallel.make_mesh()
    arrays = {"device_count": np.asarray(jax.device_count())}
    for name, (fn, args, batch_argnums) in cases().items():
        one = jax.jit(fn)(*args)
        sharded = parallel.data_parallel(fn, mesh, batch_argnums)(*args)
        arrays[f"{name}/num_shards"] = np.asarray(len(sharded[0].sharding.device_set))
        for i, (a, b) in enumerate(zip(one, sharded)):
            arrays[f"{name}/one/{i}"] = np.asarray(a)
            arrays[f"{name}/sharded/{i}"] = parallel.to_host(b)
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
