"""Reference checkpoint -> Flax variables of an sde_lab network, and back (for tests)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import numpy as np

from sde_lab.convert import mapping
from sde_lab.convert.readers import READERS, Checkpoint, ConversionError
from sde_lab.models import ddpm, ncsnv2

_MAX_NAMES = 3


def load(fmt: str, path: str, net: nn.Module, x_shape: Sequence[int],
         ema: bool = True) -> tuple[dict, int]:
    """Reads a reference checkpoint and returns (variables of `net`, training step).

    Args:
      fmt: "score_sde" (Flax msgpack `checkpoint_N`) or "score_sde_pytorch" (`.pth`).
      path: the checkpoint file, or a directory (its latest checkpoint).
      net: the sde_lab network it must fill (e.g. models.make("ncsnpp", size=...)).
      x_shape: one input's shape [H, W, C].
      ema: the EMA weights (what the reference evaluates and samples with) or the raw ones.

    Raises:
      ConversionError: unreadable file, or parameters that do not map (one line naming
        the first ones and the model field that probably differs).
    """
    if fmt not in READERS:
        raise ConversionError(f"unknown checkpoint format '{fmt}'; available: {list(READERS)}")
    check_network(fmt, net)
    ckpt = READERS[fmt](path, ema=ema)
    return convert(ckpt, net, x_shape), ckpt.step


def check_network(fmt: str, net: nn.Module) -> None:
    """Layer semantics that parameter names cannot reveal."""
    if isinstance(net, ncsnv2.NCSNv2) and net.torch_compat != (fmt == "score_sde_pytorch"):
        want = fmt == "score_sde_pytorch"
        raise ConversionError(
            f"{fmt}'s NCSNv2 needs the network built with torch_compat={want} (score_sde_"
            "pytorch's InstanceNorm++ uses the unbiased variance and its RefineNet resizes "
            "with align_corners=True; score_sde's do neither)")
    if isinstance(net, ddpm.DDPM) and net.norm_groups != 32:
        narrow = [net.nf * m for m in net.ch_mult if net.nf * m < 128]
        if narrow:
            raise ConversionError(
                f"score_sde's DDPM normalises with 32 GroupNorm groups at every width; this "
                f"network has widths {narrow} < 128, where sde_lab uses C // 4 groups: "
                "build it with norm_groups=32")


def convert(ckpt: Checkpoint, net: nn.Module, x_shape: Sequence[int]) -> dict:
    """Flax variables {"params": ...} of `net` holding the checkpoint's weights."""
    entries = mapping.plan(net, x_shape, ckpt.fmt)
    arrays = _with_ema(ckpt, entries) if ckpt.ema is not None else ckpt.arrays
    params, missing, wrong_shape = {}, [], []
    for e in entries:
        if e.key not in arrays:
            missing.append(e)
            continue
        a = np.asarray(arrays[e.key])
        want = mapping.reference_shape(e.shape, e.layout)
        if a.shape != want:
            wrong_shape.append((e, a.shape, want))
            continue
        _set(params, e.path, mapping.to_sde_lab(a, e.layout).astype(np.float32))
    used = {e.key for e in entries}
    unexpected = [k for k in arrays if k not in used and k.split(".")[-1] not in
                  mapping.TORCH_BUFFERS]
    if missing or wrong_shape or unexpected:
        raise ConversionError(_mismatch_message(ckpt.fmt, net, entries, arrays, missing,
                                                wrong_shape, unexpected))
    return {"params": params}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _with_ema(ckpt: Checkpoint, entries: list[mapping.Entry]) -> dict[str, np.ndarray]:
    """The torch state_dict with its trainable parameters replaced by the EMA's.

    The EMA list follows model.parameters() with requires_grad, i.e. the state_dict order
    without buffers and without the Fourier embedding's fixed W.
    """
    trainable = {e.key for e in entries if e.trainable}
    known = {e.key for e in entries}
    keys = [k for k in ckpt.arrays if k in trainable]
    if len(keys) != len(trainable) or any(
            k not in known and k.split(".")[-1] not in mapping.TORCH_BUFFERS for k in ckpt.arrays):
        return ckpt.arrays   # names do not match: convert() reports it by name
    if len(ckpt.ema) != len(keys):
        raise ConversionError(f"the EMA holds {len(ckpt.ema)} tensors but the model has "
                              f"{len(keys)} trainable parameters; convert the raw weights "
                              "with --noema")
    arrays = dict(ckpt.arrays)
    for key, value in zip(keys, ckpt.ema):
        if value.shape != arrays[key].shape:
            raise ConversionError(f"EMA tensor for {key} has shape {value.shape}, the model "
                                  f"{arrays[key].shape}: the EMA list is not in parameter "
                                  "order; convert the raw weights with --noema")
        arrays[key] = value
    return arrays


def to_reference(variables: dict, net: nn.Module, x_shape: Sequence[int],
                 fmt: str) -> dict[str, np.ndarray]:
    """The inverse of `convert`: reference name -> array, in `plan` order (tests and
    synthetic checkpoints; a real torch state_dict orders its names by module)."""
    flat = mapping.leaves(variables["params"])
    return {e.key: mapping.to_reference(np.asarray(flat[e.path]), e.layout)
            for e in mapping.plan(net, x_shape, fmt)}


# ---------------------------------------------------------------- error messages

# Layers whose presence tells a model field apart: (substring of a name, field).
_PRESENCE_HINTS = (
    ("GaussianFourierProjection", "embedding_type"),
    ("Conv2d_", "fir"),
    ("Combine_", "progressive_input/progressive_combine"),
    ("LabelEmbedding", "num_classes"),
)
# Top-level module classes whose count tells a model field apart, first match wins.
_COUNT_HINTS = (
    (("ResnetBlock", "ResidualBlock", "RefineBlock"), "num_res_blocks/ch_mult"),
    (("AttnBlock",), "attn_resolutions"),
    (("GroupNorm", "Conv", "Upsample"), "progressive"),
    (("Downsample",), "progressive_input"),
)


def _counts(names) -> dict[str, int]:
    """Number of distinct top-level modules per class, from "Module_k/..." names."""
    tops = {n.split("/")[0] for n in names}
    counts: dict[str, int] = {}
    for top in tops:
        base = top.rpartition("_")[0].removesuffix("pp")
        counts[base] = counts.get(base, 0) + 1
    return counts


def _field_hint(fmt, net, entries, arrays, missing, wrong_shape, unexpected) -> str:
    names = [e.key for e in missing] + ["/".join(e.path) for e in missing] + unexpected
    blocks = {n.split("/")[0].rpartition("_")[0] for n in names if "ResnetBlock" in n}
    if any("DDPM" in b for b in blocks) and any("BigGAN" in b for b in blocks):
        return "resblock_type"
    for pattern, field in _PRESENCE_HINTS:
        if any(pattern in n for n in names):
            return field
    if missing or unexpected:
        if fmt == "score_sde_pytorch":
            ours = {e.key.split(".")[1] for e in entries}
            theirs = {k.split(".")[1] for k in arrays if k.startswith("all_modules.")}
            return ("num_res_blocks/ch_mult/attn_resolutions/progressive (the checkpoint has "
                    f"{len(theirs)} top-level layers, the network {len(ours)})")
        ours, theirs = _counts(e.key for e in entries), _counts(arrays)
        for classes, field in _COUNT_HINTS:
            if any(sum(n for k, n in ours.items() if k.startswith(c)) !=
                   sum(n for k, n in theirs.items() if k.startswith(c)) for c in classes):
                return field
        return "num_res_blocks/ch_mult"
    fourier = [e for e, _, _ in wrong_shape if "GaussianFourier" in "/".join(e.path)]
    if fourier:
        return "nf (the embedding size)"
    return "nf/ch_mult/refine_mult (layer widths)" if isinstance(net, ncsnv2.NCSNv2) else \
        "nf/ch_mult (layer widths)"


def _mismatch_message(fmt, net, entries, arrays, missing, wrong_shape, unexpected) -> str:
    def first(items):
        more = f" (+{len(items) - _MAX_NAMES} more)" if len(items) > _MAX_NAMES else ""
        return ", ".join(items[:_MAX_NAMES]) + more

    def name(e):   # torch names say little about the layer: add sde_lab's path
        return e.key if fmt == "score_sde" else f"{e.key} ({'/'.join(e.path)})"

    parts = []
    if missing:
        parts.append(f"missing {first([name(e) for e in missing])}")
    if unexpected:
        parts.append(f"unexpected {first(unexpected)}")
    if wrong_shape:
        parts.append("shape " + first([f"{name(e)} {tuple(got)} (expected {tuple(want)})"
                                       for e, got, want in wrong_shape]))
    field = _field_hint(fmt, net, entries, arrays, missing, wrong_shape, unexpected)
    return (f"{fmt} checkpoint does not fit {type(net).__name__}: {'; '.join(parts)}; "
            f"probably model field {field} differs (choose the config or model.size that "
            "matches the checkpoint)")
