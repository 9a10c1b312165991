"""score_sde_pytorch (github.com/yang-song/score_sde_pytorch) as a baseline, imported from
a checkout the user passes as --reference-dir: none of its code is copied here.

    git clone https://github.com/yang-song/score_sde_pytorch   # needs torch, ml_collections, scipy

Its `op` package compiles CUDA extensions when imported. On a CPU tensor its own
`upfirdn2d` calls `upfirdn2d_native` (plain torch ops), so `import_reference` installs an
`op` module holding exactly those two functions, read from its op/upfirdn2d.py with `ast`
and without the extension build. Everything else (models, losses.get_step_fn, the EMA,
sde_lib, likelihood.get_likelihood_fn) is the reference's own code, called the way its
run_lib.py calls it. This module imports torch, never jax, so a reference worker process
competes with nothing else.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import time
import types

# sde_lab network size -> the reference's config module.
CONFIGS = {
    "ddpmpp_cont": "configs.vp.cifar10_ddpmpp_continuous",
    "ddpmpp_cont_deep": "configs.vp.cifar10_ddpmpp_deep_continuous",
    "ncsnpp_cont": "configs.ve.cifar10_ncsnpp_continuous",
    "ncsnpp_cont_deep": "configs.ve.cifar10_ncsnpp_deep_continuous",
}


def import_reference(path: str, threads: int):
    """Puts the checkout at `path` first on sys.path, with a CPU-only `op` module."""
    import torch

    torch.set_num_threads(threads)
    path = os.path.abspath(path)
    source_file = os.path.join(path, "op", "upfirdn2d.py")
    if not os.path.exists(source_file):
        raise SystemExit(f"--reference-dir {path}: no op/upfirdn2d.py; is it a "
                         "score_sde_pytorch checkout?")
    tree = ast.parse(open(source_file).read(), source_file)
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef)
              and node.name in ("upfirdn2d", "upfirdn2d_native")]
    op = types.ModuleType("op")
    op.__dict__.update(torch=torch, F=torch.nn.functional)
    exec(compile(ast.Module(body=wanted, type_ignores=[]), source_file, "exec"), op.__dict__)
    sys.modules["op"] = op
    for name in list(sys.modules):
        if name.split(".")[0] in ("configs", "models", "losses", "sde_lib", "likelihood",
                                  "utils"):  # e.g. sde_lab's own configs/ package
            del sys.modules[name]
    # The reference's configs/ has no __init__.py (a namespace package), and Python prefers a
    # regular package anywhere on sys.path over a namespace one, so sde_lab's configs/ would
    # shadow it: drop the entries that hold a regular configs/ package.
    sys.path[:] = [p for p in sys.path
                   if not os.path.isfile(os.path.join(p or ".", "configs", "__init__.py"))]
    sys.path.insert(0, path)
    return torch


def get_config(size: str, batch: int):
    import torch

    if size not in CONFIGS:
        raise SystemExit(f"reference: no score_sde config for size '{size}'; have {sorted(CONFIGS)}")
    config = importlib.import_module(CONFIGS[size]).get_config()
    config.device = torch.device("cpu")
    config.training.batch_size = batch
    config.eval.batch_size = batch
    return config


def make_sde(config):
    import sde_lib

    name = config.training.sde.lower()
    m = config.model
    if name == "vpsde":
        return sde_lib.VPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
    if name == "subvpsde":
        return sde_lib.subVPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
    return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)


def make_model(config):
    from models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register the architectures)
    from models import utils as mutils

    return mutils.create_model(config)


def random_batch(config, batch: int, seed: int = 0):
    """Uniform data in the model's input range ([-1, 1] if centered, else [0, 1])."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, config.data.num_channels, config.data.image_size,
                   config.data.image_size, generator=gen)
    return 2 * x - 1 if config.data.centered else x


def make_train_step(size: str, batch: int):
    """(step(), num_params): one call is one score_sde training step (run_lib.train's
    loop body: loss, backward, Adam with warmup and clipping, EMA update)."""
    import losses
    from models.ema import ExponentialMovingAverage

    config = get_config(size, batch)
    model = make_model(config)
    ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    optimizer = losses.get_optimizer(config, model.parameters())
    state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
    step_fn = losses.get_step_fn(make_sde(config), train=True,
                                 optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=config.training.reduce_mean,
                                 continuous=config.training.continuous,
                                 likelihood_weighting=config.training.likelihood_weighting)
    data = random_batch(config, batch)

    def step():
        return step_fn(state, data).detach().item()

    return step, sum(p.numel() for p in model.parameters())


def make_likelihood(size: str, batch: int, init_scale: float | None = None, eps: float = 1e-5,
                    weights: str | None = None):
    """(solve(data, rtol, atol) -> (bpd [B] numpy, nfe), num_params): the reference's
    likelihood.get_likelihood_fn (SciPy RK45 on the host, Rademacher probes) on a randomly
    initialised network in eval mode, or on `weights` (an .npz of state-dict names, e.g.
    sde_lab parameters through `sde_lab.convert.to_reference`). torch's RNG is reseeded
    before each solve, so every call uses the same probes (differences between calls are
    solver error only)."""
    import likelihood
    import torch

    config = get_config(size, batch)
    if init_scale is not None:
        config.model.init_scale = init_scale
    torch.manual_seed(0)
    model = make_model(config)
    if weights:
        import numpy as np

        arrays = {"module." + k: torch.from_numpy(v) for k, v in np.load(weights).items()}
        missing, unexpected = model.load_state_dict(arrays, strict=False)
        names = {n for n, _ in model.named_parameters()}
        if unexpected or names & set(missing):
            raise ValueError(f"weights do not fit the reference model: missing parameters "
                             f"{sorted(names & set(missing))[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    inverse_scaler = (lambda x: (x + 1.0) / 2.0) if config.data.centered else (lambda x: x)
    sde = make_sde(config)

    def solve(data, rtol: float, atol: float):
        fn = likelihood.get_likelihood_fn(sde, inverse_scaler, rtol=rtol, atol=atol, eps=eps)
        torch.manual_seed(1)
        with torch.no_grad():
            bpd, _, nfe = fn(model, data)
        return bpd.numpy(), nfe

    return solve, sum(p.numel() for p in model.parameters())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
