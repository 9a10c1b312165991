"""FID Inception weights: pytorch-fid `.pth` -> Flax variables -> `.npz`, and loading.

The standard FID weights are pytorch-fid's port of TF's `inception-2015-12-05` graph. They are
never downloaded at run time; download them once and convert:

    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m sde_lab.metrics.convert --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

Reading the `.pth` needs PyTorch (`pip install torch`); the `.npz` needs only NumPy, and
`load_variables` also reads a `.pth` directly when PyTorch is installed.

Mapping (torch -> Flax): `<m>.conv.weight` [O, I, kh, kw] -> `params/<m>/conv/kernel`
[kh, kw, I, O]; `<m>.bn.{weight, bias}` -> `params/<m>/bn/{scale, bias}`;
`<m>.bn.running_{mean, var}` -> `batch_stats/<m>/bn/{mean, var}`; `fc.weight` [1008, 2048]
-> `params/fc/kernel` [2048, 1008]; `fc.bias` -> `params/fc/bias`. Module paths keep their
names (`Mixed_5b.branch1x1` -> `Mixed_5b/branch1x1`).
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab.metrics import inception

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_ENV = "SDE_LAB_INCEPTION_WEIGHTS"
MISSING_WEIGHTS_HELP = (
    "The FID Inception weights are not downloaded at run time. Download pytorch-fid's weights "
    f"once from\n  {FID_WEIGHTS_URL}\nand convert them with\n"
    "  python -m sde_lab.metrics.convert --pth pt_inception-2015-12-05-6726825d.pth "
    "--out inception_fid.npz\n"
    f"then pass the .npz (or the .pth, if PyTorch is installed) as the weights path or set "
    f"${WEIGHTS_ENV}.")

_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _set(tree: dict, path: list[str], value: np.ndarray) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    if path[-1] in tree:
        raise ValueError(f"duplicate weight for {'/'.join(path)}")
    tree[path[-1]] = value


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Converts a pytorch-fid `fid_inception_v3()` state dict (NumPy values) to Flax variables.

    Raises:
      ValueError: on a key the FID Inception does not have, or when the result does not have
        exactly the tree and shapes of `inception.InceptionV3`.
    """
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        value = np.asarray(value, np.float32)
        *module, kind, leaf = key.split(".")
        if leaf == "num_batches_tracked":
            continue
        if kind == "conv" and leaf == "weight" and value.ndim == 4:
            _set(variables["params"], module + ["conv", "kernel"], value.transpose(2, 3, 1, 0))
        elif kind == "bn" and leaf in _BN_LEAVES:
            collection, name = _BN_LEAVES[leaf]
            _set(variables[collection], module + ["bn", name], value)
        elif key == "fc.weight":
            _set(variables["params"], ["fc", "kernel"], value.T)
        elif key == "fc.bias":
            _set(variables["params"], ["fc", "bias"], value)
        else:
            raise ValueError(f"unexpected weight '{key}' for the FID InceptionV3")
    check_variables(variables)
    return variables


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(inception.init_variables, jax.random.key(0))
    return {k: tuple(v.shape) for k, v in _items(shapes)}


def check_variables(variables: Mapping) -> None:
    """Raises ValueError unless `variables` has exactly the FID Inception's tree and shapes."""
    got = flatten(variables)
    want = _expected_shapes()
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if tuple(got[k].shape) != want[k])
    if missing or extra or wrong:
        raise ValueError(f"FID Inception weights do not match the network: missing {missing[:5]}"
                         f" ({len(missing)}), unexpected {extra[:5]} ({len(extra)}), wrong shape "
                         f"{[(k, got[k].shape, want[k]) for k in wrong[:5]]} ({len(wrong)})")


def _items(tree: Mapping, prefix: str = ""):
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            yield from _items(v, name)
        else:
            yield name, v


def flatten(tree: Mapping) -> dict[str, np.ndarray]:
    """Nested dict -> {"a/b/c": array}."""
    return {k: np.asarray(v) for k, v in _items(tree)}


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    """{"a/b/c": array} -> nested dict."""
    tree: dict = {}
    for k, v in flat.items():
        _set(tree, k.split("/"), np.asarray(v))
    return tree


def read_pth(path: str) -> dict[str, np.ndarray]:
    """Reads a torch state dict to NumPy (needs PyTorch; tensors only, no pickled code)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading '{path}' needs PyTorch (pip install torch), or convert it "
                          "on a machine that has it:\n" + MISSING_WEIGHTS_HELP) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def save_npz(path: str, variables: Mapping) -> None:
    """Writes variables as a flat `.npz` ("params/Mixed_5b/branch1x1/conv/kernel", ...)."""
    np.savez(path, **flatten(variables))


def resolve_weights_path(path: str | None) -> str:
    """`path`, else $SDE_LAB_INCEPTION_WEIGHTS; raises FileNotFoundError with instructions."""
    path = path or os.environ.get(WEIGHTS_ENV)
    if not path:
        raise FileNotFoundError("no FID Inception weights path given.\n" + MISSING_WEIGHTS_HELP)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID Inception weights '{path}' not found.\n" + MISSING_WEIGHTS_HELP)
    return path


def load_variables(path: str | None = None) -> dict:
    """Loads FID Inception variables from a converted `.npz` or a pytorch-fid `.pth`.

    Args:
      path: weights file; None reads $SDE_LAB_INCEPTION_WEIGHTS.

    Raises:
      FileNotFoundError: no such file (the message says where to download and how to convert).
      ValueError: the file does not hold the FID Inception's tree and shapes.
    """
    path = resolve_weights_path(path)
    if path.endswith(".pth") or path.endswith(".pt"):
        return state_dict_to_variables(read_pth(path))
    with np.load(path) as data:
        variables = unflatten({k: data[k] for k in data.files})
    check_variables(variables)
    return jax.tree_util.tree_map(jnp.asarray, variables)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pth", required=True, help="pytorch-fid pt_inception-2015-12-05-*.pth")
    parser.add_argument("--out", required=True, help="output .npz")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.pth):
        parser.error(f"'{args.pth}' not found.\n" + MISSING_WEIGHTS_HELP)
    variables = state_dict_to_variables(read_pth(args.pth))
    save_npz(args.out, variables)
    n = sum(v.size for v in flatten(variables).values())
    print(f"wrote {args.out}: {n:,} numbers")


if __name__ == "__main__":
    main()
