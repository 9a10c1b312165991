"""Parameter names and layouts of score_sde / score_sde_pytorch, mapped onto sde_lab's.

sde_lab's networks are module-for-module ports of score_sde's Flax ones, so most names are
score_sde's with a class renamed. What differs:

* score_sde (Flax, NHWC): NIN layers are their own module with `W` [in, out] and `b`
  where sde_lab uses nn.Dense (`kernel` [in, out], `bias`): the same array. In a DDPM
  residual block the skip NIN is `NIN_0` next to the time embedding's `Dense_0`; sde_lab
  numbers both as Dense (`Dense_1` when conditional). The fused FIR convolution is
  `Conv2d_k/weight` (HWIO), sde_lab's `FIRConv_k/kernel`. InstanceNorm++ stores alpha,
  gamma, beta as [1, 1, 1, C], sde_lab as [C]. NCSNv2's RefineNet blocks nest their
  convolutions in RCUBlock/MSFBlock/CRPBlock modules that sde_lab inlines.
* score_sde_pytorch (NCHW): the U-Nets keep every top-level layer in one ModuleList
  `all_modules.{i}` in the order forward() uses them, which is sde_lab's call order
  (layers without parameters have no entry in either). Inside blocks the names are
  score_sde's Flax names. Convolutions are [out, in, kh, kw] (sde_lab HWIO: transposed
  (2, 3, 1, 0)), nn.Linear weights [out, in] (transposed), GroupNorm `weight` is sde_lab's
  `scale`. Keys start with `module.` (the model was saved inside nn.DataParallel); the
  Fourier embedding's `W` has requires_grad=False, so it is not in the EMA, whose
  `shadow_params` list follows `model.parameters()` order (the state_dict order without
  buffers such as `sigmas`).

`plan(net, x_shape, fmt)` lists, for every sde_lab parameter, the reference name and the
layout change; `to_sde_lab` / `to_reference` apply it in either direction.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sde_lab.models import ddpm, ncsnpp, ncsnv2

FORMATS = ("score_sde", "score_sde_pytorch")
# torch buffers of the reference networks: not parameters, not in the EMA, not converted.
TORCH_BUFFERS = ("sigmas",)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One sde_lab parameter and its reference counterpart.

    path: sde_lab leaf path inside variables["params"], e.g. ("Conv_0", "kernel").
    key: reference name, "Conv_0/kernel" (score_sde) or "all_modules.3.weight" (torch).
    layout: "copy", "conv" (torch OIHW), "linear" (torch [out, in]) or "norm4d" ([1,1,1,C]).
    shape: the sde_lab parameter's shape.
    trainable: False for a torch parameter with requires_grad=False (absent from the EMA).
    """

    path: tuple[str, ...]
    key: str
    layout: str
    shape: tuple[int, ...]
    trainable: bool = True


def to_sde_lab(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return np.transpose(a, (2, 3, 1, 0))
    if layout == "linear":
        return np.transpose(a)
    if layout == "norm4d":
        return np.reshape(a, (-1,))
    return a


def to_reference(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return np.transpose(a, (3, 2, 0, 1))
    if layout == "linear":
        return np.transpose(a)
    if layout == "norm4d":
        return np.reshape(a, (1, 1, 1, -1))
    return a


def reference_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """Shape the reference stores for an sde_lab parameter of `shape`."""
    return to_reference(np.empty(tuple(shape), np.int8), layout).shape


def _split(name: str) -> tuple[str, int]:
    base, _, index = name.rpartition("_")
    return base, int(index)


# ---------------------------------------------------------------- sde_lab's tree

def abstract_params(net: nn.Module, x_shape: Sequence[int]) -> dict:
    """Shapes of net's parameters for inputs [1, *x_shape] (no FLOPs, no memory)."""
    return trace(net, x_shape)[0]


def trace(net: nn.Module, x_shape: Sequence[int]) -> tuple[dict, list[tuple[str, ...]]]:
    """(parameter shapes, submodule paths in the order their __call__ first runs), from
    one abstract init on inputs [1, *x_shape]."""
    order: list[tuple[str, ...]] = []

    def interceptor(next_fun, args, kwargs, context):
        path = tuple(context.module.scope.path) if context.module.scope is not None else ()
        if context.method_name == "__call__" and path not in order:
            order.append(path)
        return next_fun(*args, **kwargs)

    def init():
        x = jnp.zeros((1, *x_shape), jnp.float32)
        with nn.intercept_methods(interceptor):
            return net.init(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.float32))

    params = jax.eval_shape(init)["params"]
    return params, [p for p in order if p]


def leaves(tree: dict) -> dict[tuple[str, ...], object]:
    """{path: leaf} of a nested dict, paths as tuples of keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update({(key, *sub): leaf for sub, leaf in leaves(value).items()})
        else:
            out[(key,)] = value
    return out


# ---------------------------------------------------------------- U-Nets (NCSN++, DDPM++, DDPM)

# sde_lab class -> score_sde class for NCSN++'s top-level blocks (score_sde's DDPM keeps
# the names of models/layers.py, which sde_lab's already are).
_NCSNPP_CLASSES = {"ResnetBlockBigGAN": "ResnetBlockBigGANpp",
                   "ResnetBlockDDPM": "ResnetBlockDDPMpp", "AttnBlock": "AttnBlockpp"}


def _unet_modules(modules: tuple[str, ...], conditional: bool, rename_top: bool) -> list[str]:
    """score_sde's module names for an sde_lab module path of NCSN++/DDPM."""
    out = []
    for depth, name in enumerate(modules):
        base, index = _split(name)
        parent = _split(modules[depth - 1])[0] if depth else None
        if depth == 0 and rename_top and base in _NCSNPP_CLASSES:
            name = f"{_NCSNPP_CLASSES[base]}_{index}"
        elif parent == "AttnBlock" and base == "Dense":
            name = f"NIN_{index}"
        elif parent == "ResnetBlockDDPM" and base == "Dense":   # Dense_0: time embedding
            name = "Dense_0" if conditional and index == 0 else f"NIN_{index - conditional}"
        elif base == "FIRConv":
            name = f"Conv2d_{index}"
        out.append(name)
    return out


def _param(layer: str, param: str, fmt: str) -> tuple[str, str]:
    """(reference parameter name, layout) of sde_lab's `param` in reference layer `layer`."""
    base = _split(layer)[0]
    if base == "NIN":
        return {"kernel": "W", "bias": "b"}[param], "copy"
    if base == "GaussianFourierProjection" or param == "bias":
        return param, "copy"
    if fmt == "score_sde":
        return ("weight" if base == "Conv2d" else param), "copy"
    if base in ("Conv", "Conv2d"):
        return "weight", "conv"
    if base == "Dense":
        return "weight", "linear"
    return "weight", "copy"   # GroupNorm scale


def _unet_plan(params: dict, net, fmt: str, order) -> list[Entry]:
    conditional = getattr(net, "conditional", True)
    rename_top = isinstance(net, ncsnpp.NCSNpp)
    tops = [p[0] for p in order if len(p) == 1 and p[0] in params]
    index = {name: i for i, name in enumerate(tops)}
    entries = []
    for path, leaf in leaves(params).items():
        modules = _unet_modules(path[:-1], conditional, rename_top)
        name, layout = _param(modules[-1], path[-1], fmt)
        if fmt == "score_sde":
            key = "/".join([*modules, name])
        else:
            key = ".".join([f"all_modules.{index[path[0]]}", *modules[1:], name])
        trainable = not (fmt != "score_sde" and modules[-1].startswith("GaussianFourier"))
        entries.append(Entry(path, key, layout, tuple(leaf.shape), trainable))
    return entries


# ---------------------------------------------------------------- NCSNv2

def _ncsnv2_names(num_levels: int) -> tuple[list[str], list[str]]:
    """score_sde_pytorch's attribute names of the residual levels and RefineBlocks (in
    forward order) of ncsnv2_64 / _128 / _256."""
    if num_levels == 6:
        return (["res1", "res2", "res3", "res31", "res4", "res5"],
                ["refine1", "refine2", "refine31", "refine3", "refine4", "refine5"])
    return ([f"res{i + 1}" for i in range(num_levels)],
            [f"refine{i + 1}" for i in range(num_levels)])


def _refine_convs(num_inputs: int, start: bool, end: bool, fmt: str) -> list[tuple[str, bool]]:
    """Reference names of a RefineBlock's convolutions in sde_lab's order (Conv_0, ...),
    with whether they have a bias: RCU per input, MSF (unless start), CRP, output RCU."""
    flax = fmt == "score_sde"
    names = []
    for i in range(num_inputs):
        for b in range(2):
            for s in range(2):
                names.append((f"RCUBlock_{i}/Conv_{2 * b + s}" if flax
                              else f"adapt_convs.{i}.{b + 1}_{s + 1}_conv", False))
    if not start:
        names += [(f"MSFBlock_0/Conv_{i}" if flax else f"msf.convs.{i}", True)
                  for i in range(num_inputs)]
    names += [(f"CRPBlock_0/Conv_{s}" if flax else f"crp.convs.{s}", False) for s in range(2)]
    for b in range(3 if end else 1):
        for s in range(2):
            names.append((f"RCUBlock_{num_inputs}/Conv_{2 * b + s}" if flax
                          else f"output_convs.{b + 1}_{s + 1}_conv", False))
    return names


def _residual_block_torch(modules: tuple[str, ...], down: bool, dilation: int) -> str:
    """score_sde_pytorch's ResidualBlock attribute for an sde_lab path inside the block."""
    base, index = _split(modules[0])
    if base == "InstanceNormPlus":
        return f"normalize{index + 1}"
    if base == "ConvMeanPool":   # down, dilation 1: conv2 then the 1x1 shortcut
        return ("conv2", "shortcut")[index] + ".conv"
    if down:                     # dilated down block: conv1, conv2, shortcut
        return ("conv1", "conv2", "shortcut")[index]
    return ("conv1", "conv2")[index]


def _ncsnv2_plan(params: dict, net, fmt: str) -> list[Entry]:
    flax = fmt == "score_sde"
    n = len(net.ch_mult)
    res_names, refine_names = _ncsnv2_names(n)
    entries = []
    for path, leaf in leaves(params).items():
        top, inner, param = path[0], path[1:-1], path[-1]
        base, index = _split(top)
        layout = "copy"
        if base == "ResidualBlock":
            level = index // 2
            down, dilation = level > 0 and index % 2 == 0, net.dilations[level]
            if flax:
                module = "/".join([top, *inner]).replace("InstanceNormPlus", "InstanceNorm2dPlus")
            else:
                module = (f"{res_names[level]}.{index % 2}."
                          f"{_residual_block_torch(inner, down, dilation)}")
        elif base == "RefineBlock":
            convs = _refine_convs(1 if index == 0 else 2, index == 0, index == n - 1, fmt)
            name = convs[_split(inner[0])[1]][0]
            module = f"{top}/{name}" if flax else f"{refine_names[index]}.{name}"
        elif base == "InstanceNormPlus":
            module = "InstanceNorm2dPlus_0" if flax else "normalizer"
        else:   # Conv_0: first conv, Conv_1: last conv
            module = top if flax else ("begin_conv", "end_conv")[index]
        if "InstanceNormPlus" in "/".join(path[:-1]):   # alpha, gamma, beta
            layout = "norm4d" if flax else "copy"
        elif not flax:
            param, layout = ("bias", "copy") if param == "bias" else ("weight", "conv")
        key = f"{module}{'/' if flax else '.'}{param}"
        entries.append(Entry(path, key, layout, tuple(leaf.shape)))
    return entries


# ---------------------------------------------------------------- entry point

def plan(net: nn.Module, x_shape: Sequence[int], fmt: str, traced=None) -> list[Entry]:
    """The reference name and layout of every parameter of `net` (inputs [B, *x_shape]);
    `traced`: trace(net, x_shape) if already computed (it costs one abstract init)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format '{fmt}'; available: {list(FORMATS)}")
    params, order = traced or trace(net, x_shape)
    if isinstance(net, ncsnv2.NCSNv2):
        return _ncsnv2_plan(params, net, fmt)
    if isinstance(net, (ncsnpp.NCSNpp, ddpm.DDPM)):
        return _unet_plan(params, net, fmt, order)
    raise ValueError(f"no score_sde counterpart for {type(net).__name__}; convertible: "
                     "ncsnpp (NCSN++, DDPM++), ddpm, ncsnv2")
