"""Writes the converter's test fixtures (this folder) with the reference code itself.

For each model family (NCSN++, DDPM++, NCSNv2, DDPM) this script runs the reference
implementation from a checkout the user gives, at a tiny model size:

  1. takes the published CIFAR-10 config of that family from the checkout's configs/ and
     shrinks only its size fields (nf, ch_mult, num_res_blocks, attn_resolutions, image
     size 8); `init_scale` and everything else stay as published;
  2. builds and initialises the model, optimizer and EMA with the reference's own code and
     runs NUM_STEPS of the reference's own train step on random data (lr LR, no warm-up),
     so that the zero-initialised output layers (init_scale 0) become non-zero and every
     layer influences the output;
  3. builds the state the reference builds when a run starts (State(...) /
     dict(optimizer, model, ema, step) with a fresh optimizer and the EMA equal to the
     trained weights) and writes it with the reference's checkpoint writer
     (flax.training.checkpoints.save_checkpoint / utils.save_checkpoint);
  4. evaluates the reference network on a fixed input (eval mode) and stores the input,
     the conditioning and the output (NHWC) in reference.npz.

The checkpoint is stored xz-compressed: the EMA equals the weights and the optimizer
moments are zero, so compression keeps about one copy of the weights. Rebuilding the
state in step 3 (instead of saving the trained state with its Adam moments) keeps the
files four times smaller; the converter reads neither the optimizer state nor
anything else that step 3 changes.

Usage (each reference needs its own process: both have top-level `models`, `losses`...):

  git clone https://github.com/yang-song/score_sde /tmp/score_sde
  git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_pytorch
  python tests/data/convert/make_fixtures.py score_sde --reference-dir /tmp/score_sde
  python tests/data/convert/make_fixtures.py score_sde_pytorch --reference-dir /tmp/score_sde_pytorch

Neither reference installs on today's JAX/Flax/PyTorch as is. The shims below are the
minimum that lets the unmodified reference code import and run here; each is a few lines
in this file, and none changes what a network computes except the two fixes that make
score_sde_pytorch's NCSNv2 work at all:

  both:      a stub `tensorflow` module (their utils.py imports TensorFlow at module level
             for tf.io.gfile, which this path never calls).
  score_sde: `flax.optim` (since removed from Flax): Optimizer/OptimizerState/Adam with
             flax 0.3's field names and Adam update; `jax.tree_map`, `jax.tree_multimap`,
             `jax.tree_leaves` (removed from JAX) as aliases of jax.tree_util functions;
             flax_return_frozendict=True (init returns a FrozenDict whose pop() gives
             (rest, params), as in flax 0.3); flax_use_orbax_checkpointing=False (the
             legacy msgpack checkpoint file the published checkpoints use); Module.param
             calls initialisers that take two arguments as init(key, shape), as flax 0.3
             did (their ncsn_conv bias initialiser; today's flax also passes the dtype).
  pytorch:   torch.utils.cpp_extension.load returns a dummy: their op/ package compiles CUDA
             kernels at import; on CPU their own code takes the native upfirdn2d path.
             (torch._dynamo is imported before the TensorFlow stub, which it would probe.)
             Their NCSNv2 (never released with checkpoints) can be neither built nor run
             as published; models.layers.ncsn_conv3x3 gets two fixes: with bias=False it
             multiplies conv.bias (None) by init_scale (crash at construction), so the
             conv is built with a bias that is dropped afterwards; with dilation d > 1
             it keeps padding 1, so dilated blocks shrink the feature map and their
             residual sums fail, so it pads by d (NCSNv2's own dilated_conv3x3, and
             score_sde's 'SAME').
             config.data.channels = 3: their NCSNv2 reads this field, which their configs
             do not define (they define data.num_channels).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import lzma
import os
import platform
import subprocess
import sys
import tempfile
import types

import numpy as np

NUM_STEPS = 3
LR = 2e-2
BATCH = 4
SEED = 0

# family -> published CIFAR-10 config (same path in both repositories) and size overrides.
FAMILIES = {
    "ncsnpp": dict(config="configs/ve/cifar10_ncsnpp_continuous.py",
                   model=dict(nf=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))),
    "ddpmpp": dict(config="configs/vp/cifar10_ddpmpp_continuous.py",
                   model=dict(nf=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))),
    "ncsnv2": dict(config="configs/ve/ncsnv2/cifar10.py", model=dict(nf=4)),
    # DDPM's GroupNorm has 32 groups everywhere, so 32 channels is its smallest width.
    "ddpm": dict(config="configs/vp/ddpm/cifar10.py",
                 model=dict(nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,))),
}
IMAGE_SIZE = 8

# Published configurations whose full-size parameter names and shapes (no weights) go to
# structure.json.xz: the converter's plan must produce exactly these.
STRUCTURES = {
    "ncsnpp_cont": "configs/ve/cifar10_ncsnpp_continuous.py",
    "ncsnpp_cont_deep": "configs/ve/cifar10_ncsnpp_deep_continuous.py",
    "ddpmpp_cont": "configs/vp/cifar10_ddpmpp_continuous.py",
    "ddpmpp_cont_deep": "configs/vp/cifar10_ddpmpp_deep_continuous.py",
    "ddpm_cifar10": "configs/vp/ddpm/cifar10.py",
    "ncsnv2_cifar10": "configs/ve/ncsnv2/cifar10.py",
    "ncsnpp_256": "configs/ve/church_ncsnpp_continuous.py",
    "ncsnv2_bedroom128": "configs/ve/ncsnv2/bedroom.py",
    "ddpm_lsun256": "configs/vp/ddpm/church.py",
}


def _load_config(family: str):
    spec = FAMILIES[family]
    module = importlib.import_module(spec["config"][:-3].replace("/", "."))
    config = module.get_config()
    for key, value in spec["model"].items():
        setattr(config.model, key, value)
    config.data.image_size = IMAGE_SIZE
    config.training.batch_size = BATCH
    config.optim.lr = LR
    config.optim.warmup = 0
    config.seed = SEED
    return config


def _reference_inputs(family: str, config):
    """Fixed network input (NHWC, in the family's data range) and reference labels."""
    rng = np.random.default_rng(1)
    low = -1.0 if config.data.centered else 0.0
    x = rng.uniform(low, 1.0, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    labels = {"ncsnpp": [0.03, 7.5],          # sigma (continuous VE, Fourier embedding)
              "ddpmpp": [12.3, 777.0],        # 999 t (continuous VP, sinusoidal embedding)
              "ncsnv2": [3, 200],             # noise-level index into 232 sigmas
              "ddpm": [5.0, 640.0]}[family]   # DDPM timestep
    return x, np.asarray(labels, np.int32 if family == "ncsnv2" else np.float32)


def _sde_lab_conditioning(family: str, labels: np.ndarray, sigmas: np.ndarray):
    """(cond, divisor): sde_lab's output is net.apply(v, x, cond) / divisor."""
    if family == "ncsnpp":   # score parameterization: cond = log sigma, output / sigma
        return np.log(labels).astype(np.float32), labels.astype(np.float32)
    if family == "ncsnv2":   # t is ignored; output / sigma of the label
        return labels.astype(np.float32), sigmas[labels].astype(np.float32)
    return labels, np.ones_like(labels, np.float32)


def _train_batch(config):
    rng = np.random.default_rng(2)
    low = -1.0 if config.data.centered else 0.0
    return rng.uniform(low, 1.0, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def _shim_tensorflow():
    sys.modules.setdefault("tensorflow", types.ModuleType("tensorflow"))


# ---------------------------------------------------------------------------- score_sde

def _shim_flax():
    import flax
    import flax.io  # noqa: F401  (must see that TensorFlow is absent before the stub)
    import flax.training.checkpoints  # noqa: F401
    import jax
    import jax.numpy as jnp

    for name, fn in (("tree_map", jax.tree_util.tree_map),
                     ("tree_multimap", jax.tree_util.tree_map),
                     ("tree_leaves", jax.tree_util.tree_leaves)):
        if not hasattr(jax, name):
            setattr(jax, name, fn)
    flax.config.update("flax_return_frozendict", True)
    flax.config.update("flax_use_orbax_checkpointing", False)

    # flax 0.3 called initialisers as init(key, shape); today's flax adds the dtype. The
    # reference's two-argument lambdas (ncsn_conv's bias_init) get (key, shape).
    param = flax.linen.Module.param

    def param_compat(self, name, init_fn, *init_args, **kwargs):
        if _positional_arity(init_fn) == 2:
            init_fn = functools.partial(lambda fn, key, shape, *rest: fn(key, shape), init_fn)
        return param(self, name, init_fn, *init_args, **kwargs)

    flax.linen.Module.param = param_compat

    optim = types.ModuleType("flax.optim")

    @flax.struct.dataclass
    class OptimizerState:
        step: jax.Array
        param_states: object

    @flax.struct.dataclass
    class Optimizer:
        optimizer_def: object = flax.struct.field(pytree_node=False)
        state: object = None
        target: object = None

        def apply_gradient(self, grads, learning_rate):
            return self.optimizer_def.apply_gradient(self, grads, learning_rate)

    @flax.struct.dataclass
    class _AdamParamState:
        grad_ema: jax.Array
        grad_sq_ema: jax.Array

    class Adam:
        def __init__(self, learning_rate=None, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=0.0):
            self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay

        def create(self, target):
            zeros = lambda p: _AdamParamState(jnp.zeros_like(p), jnp.zeros_like(p))  # noqa
            states = jax.tree_util.tree_map(zeros, target)
            return Optimizer(self, OptimizerState(jnp.asarray(0, jnp.int32), states), target)

        def apply_gradient(self, opt, grads, learning_rate):
            t = opt.state.step + 1.0
            b1, b2 = self.beta1, self.beta2

            def update(p, s, g):
                m = b1 * s.grad_ema + (1 - b1) * g
                v = b2 * s.grad_sq_ema + (1 - b2) * g * g
                step = learning_rate * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + self.eps)
                return p - step - learning_rate * self.weight_decay * p, _AdamParamState(m, v)

            leaves_p, tree = jax.tree_util.tree_flatten(opt.target)
            leaves_s = tree.flatten_up_to(opt.state.param_states)
            leaves_g = tree.flatten_up_to(grads)
            new = [update(p, s, g) for p, s, g in zip(leaves_p, leaves_s, leaves_g)]
            target = tree.unflatten([n[0] for n in new])
            states = tree.unflatten([n[1] for n in new])
            return opt.replace(state=OptimizerState(opt.state.step + 1, states), target=target)

    optim.Optimizer, optim.OptimizerState, optim.Adam = Optimizer, OptimizerState, Adam
    flax.optim = optim
    sys.modules["flax.optim"] = optim


def _positional_arity(fn) -> int | None:
    """Number of positional parameters of fn (None with *args or no signature)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _make_score_sde(family: str, out_dir: str) -> dict:
    import flax
    import jax
    import jax.numpy as jnp
    from flax.training import checkpoints

    import losses
    import sde_lib
    from models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register the models)
    from models import utils as mutils

    config = _load_config(family)
    config.training.n_jitted_steps = 1
    rng = jax.random.PRNGKey(config.seed)
    rng, step_rng = jax.random.split(rng)
    score_model, init_model_state, initial_params = mutils.init_model(step_rng, config)
    optimizer = losses.get_optimizer(config).create(initial_params)
    state = mutils.State(step=0, optimizer=optimizer, lr=config.optim.lr,
                         model_state=init_model_state, ema_rate=config.model.ema_rate,
                         params_ema=initial_params, rng=rng)
    sde = _make_sde(sde_lib, config)
    train_step_fn = losses.get_step_fn(
        sde, score_model, train=True, optimize_fn=losses.optimization_manager(config),
        reduce_mean=config.training.reduce_mean, continuous=config.training.continuous,
        likelihood_weighting=config.training.likelihood_weighting)
    p_train_step = jax.pmap(functools.partial(jax.lax.scan, train_step_fn), axis_name="batch")
    pstate = flax.jax_utils.replicate(state)
    batch = {"image": jnp.asarray(_train_batch(config))[None, None]}  # [devices, steps, B...]
    for _ in range(NUM_STEPS):
        rng, next_rng = jax.random.split(rng)
        (_, pstate), _ = p_train_step((next_rng[None], pstate), batch)
    params = flax.jax_utils.unreplicate(pstate).optimizer.target

    state = mutils.State(step=NUM_STEPS, optimizer=losses.get_optimizer(config).create(params),
                         lr=config.optim.lr, model_state=init_model_state,
                         ema_rate=config.model.ema_rate, params_ema=params, rng=rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoints.save_checkpoint(tmp, state, step=NUM_STEPS, keep=np.inf)
        _write_xz(path, os.path.join(out_dir, os.path.basename(path) + ".xz"))

    x, labels = _reference_inputs(family, config)
    model_fn = mutils.get_model_fn(score_model, state.params_ema, state.model_state)
    out, _ = model_fn(jnp.asarray(x), jnp.asarray(labels))
    sigmas = np.asarray(mutils.get_sigmas(config))
    return dict(config=config, x=x, labels=labels, out=np.asarray(out), sigmas=sigmas)


def _make_sde(sde_lib, config):
    name = config.training.sde.lower()
    if name == "vesde":
        return sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max,
                             N=config.model.num_scales)
    cls = sde_lib.VPSDE if name == "vpsde" else sde_lib.subVPSDE
    return cls(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
               N=config.model.num_scales)


def _structure_score_sde(config) -> list:
    import jax
    import jax.numpy as jnp
    from models import ddpm, ncsnpp, ncsnv2  # noqa: F401
    from models import utils as mutils

    model = mutils.get_model(config.model.name)(config=config)
    size, channels = config.data.image_size, config.data.num_channels
    x = jnp.zeros((1, size, size, channels))
    variables = jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x,
        jnp.zeros((1,), jnp.int32), train=False))
    flat = jax.tree_util.tree_flatten_with_path(dict(variables["params"]))[0]
    return [["/".join(k.key for k in path), list(leaf.shape)] for path, leaf in flat]


# ---------------------------------------------------------------------------- pytorch

def _shim_torch():
    import torch._dynamo  # noqa: F401  (looks TensorFlow up once; before the stub exists)
    import torch.utils.cpp_extension

    torch.utils.cpp_extension.load = lambda *args, **kwargs: types.SimpleNamespace()


def _fix_ncsn_conv3x3():
    """score_sde_pytorch's ncsn_conv3x3 with bias=False scales conv.bias, which is None, and
    with dilation d keeps padding 1 (see the module docstring)."""
    import models.layers

    original = models.layers.ncsn_conv3x3
    if getattr(original, "fixed", False):
        return

    def ncsn_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1.,
                     padding=1):
        if dilation > 1 and padding == 1:
            padding = dilation
        conv = original(in_planes, out_planes, stride, True, dilation, init_scale, padding)
        if not bias:
            conv.bias = None
        return conv

    ncsn_conv3x3.fixed = True
    models.layers.ncsn_conv3x3 = ncsn_conv3x3


def _make_score_sde_pytorch(family: str, out_dir: str) -> dict:
    import torch

    import losses
    import sde_lib
    from models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register the models)
    from models import utils as mutils
    from models.ema import ExponentialMovingAverage
    from utils import save_checkpoint

    _fix_ncsn_conv3x3()
    torch.manual_seed(SEED)
    config = _load_config(family)
    config.device = torch.device("cpu")
    config.data.channels = config.data.num_channels  # read by their NCSNv2 (see docstring)
    score_model = mutils.create_model(config)
    ema = ExponentialMovingAverage(score_model.parameters(), decay=config.model.ema_rate)
    optimizer = losses.get_optimizer(config, score_model.parameters())
    state = dict(optimizer=optimizer, model=score_model, ema=ema, step=0)
    sde = _make_sde(sde_lib, config)  # same constructors in both repositories
    train_step_fn = losses.get_step_fn(
        sde, train=True, optimize_fn=losses.optimization_manager(config),
        reduce_mean=config.training.reduce_mean, continuous=config.training.continuous,
        likelihood_weighting=config.training.likelihood_weighting)
    batch = torch.from_numpy(_train_batch(config)).permute(0, 3, 1, 2).contiguous()
    for _ in range(NUM_STEPS):
        train_step_fn(state, batch)

    state = dict(optimizer=losses.get_optimizer(config, score_model.parameters()),
                 model=score_model,
                 ema=ExponentialMovingAverage(score_model.parameters(),
                                              decay=config.model.ema_rate),
                 step=NUM_STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"checkpoint_{NUM_STEPS}.pth")
        save_checkpoint(path, state)
        _write_xz(path, os.path.join(out_dir, os.path.basename(path) + ".xz"))

    x, labels = _reference_inputs(family, config)
    score_model.eval()
    with torch.no_grad():
        out = score_model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(labels))
    sigmas = np.asarray(mutils.get_sigmas(config))
    return dict(config=config, x=x, labels=labels, out=out.permute(0, 2, 3, 1).numpy(),
                sigmas=sigmas)


def _structure_score_sde_pytorch(config) -> list:
    import torch
    from models import ddpm, ncsnpp, ncsnv2  # noqa: F401
    from models import utils as mutils

    _fix_ncsn_conv3x3()
    config.device = torch.device("cpu")
    config.data.channels = config.data.num_channels
    model = mutils.create_model(config)
    params = dict(model.named_parameters())
    out = []
    for key, tensor in model.state_dict().items():
        kind = "buffer" if key not in params else (
            "param" if params[key].requires_grad else "fixed")
        out.append([key, list(tensor.shape), kind])
    return out


# ---------------------------------------------------------------------------- common

def _write_xz(src: str, dst: str) -> None:
    with open(src, "rb") as f, lzma.open(dst, "wb", preset=9 | lzma.PRESET_EXTREME) as g:
        g.write(f.read())


def _git_commit(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --reference-commit)"


def _versions(fmt: str) -> dict:
    import ml_collections  # noqa: F401
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    if fmt == "score_sde":
        import flax
        import jax
        versions.update(jax=jax.__version__, flax=flax.__version__)
    else:
        import torch
        versions.update(torch=torch.__version__)
    return versions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("format", choices=["score_sde", "score_sde_pytorch"])
    parser.add_argument("--reference-dir", required=True,
                        help="checkout of yang-song/score_sde or yang-song/score_sde_pytorch")
    parser.add_argument("--reference-commit", default=None)
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--structures", default=",".join(STRUCTURES))
    args = parser.parse_args(argv)

    reference_dir = os.path.abspath(args.reference_dir)
    commit = args.reference_commit or _git_commit(reference_dir)
    if args.format == "score_sde":
        _shim_flax()
    else:
        _shim_torch()
    _shim_tensorflow()
    sys.path.insert(0, reference_dir)
    os.chdir(reference_dir)
    make = _make_score_sde if args.format == "score_sde" else _make_score_sde_pytorch

    os.makedirs(os.path.join(args.out, args.format), exist_ok=True)
    manifest_path = os.path.join(args.out, args.format, "manifest.json")
    structure_path = os.path.join(args.out, args.format, "structure.json.xz")
    old = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
    manifest = {"format": args.format, "reference_commit": commit,
                "versions": _versions(args.format), "num_train_steps": NUM_STEPS, "lr": LR,
                "image_size": IMAGE_SIZE, "families": old.get("families", {}),
                "structures": old.get("structures", {})}
    for family in filter(None, args.families.split(",")):
        out_dir = os.path.abspath(os.path.join(args.out, args.format, family))
        os.makedirs(out_dir, exist_ok=True)
        result = make(family, out_dir)
        cond, divisor = _sde_lab_conditioning(family, result["labels"], result["sigmas"])
        np.savez(os.path.join(out_dir, "reference.npz"), x=result["x"],
                 labels=result["labels"], cond=cond, divisor=divisor, out=result["out"])
        manifest["families"][family] = {"config": FAMILIES[family]["config"],
                                        "model": {k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in FAMILIES[family]["model"].items()}}
        print(f"{args.format}/{family}: output max |out| = {np.abs(result['out']).max():.4g}",
              flush=True)
    structure_fn = (_structure_score_sde if args.format == "score_sde"
                    else _structure_score_sde_pytorch)
    structures = {}
    if os.path.exists(structure_path):   # runs restricted by --families/--structures add
        with lzma.open(structure_path, "rt") as f:
            structures = json.load(f)
    for name in filter(None, args.structures.split(",")):
        module = importlib.import_module(STRUCTURES[name][:-3].replace("/", "."))
        structures[name] = structure_fn(module.get_config())
        manifest["structures"][name] = STRUCTURES[name]
        print(f"{args.format} structure {name}: {len(structures[name])} arrays", flush=True)
    with lzma.open(structure_path, "wt", preset=9) as f:
        json.dump(structures, f)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
