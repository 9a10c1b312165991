"""Readers for the reference checkpoint files, without TensorFlow.

score_sde (Flax) writes `checkpoint_N` with flax.training.checkpoints: a msgpack dump of its
training State {step, optimizer: {target, state}, lr, model_state, ema_rate, params_ema,
rng}; `optimizer.target` holds the raw weights, `params_ema` the EMA ones (nested dicts,
NHWC/HWIO layouts). score_sde_pytorch writes `checkpoint_N.pth` with torch.save:
{optimizer, model (state_dict of nn.DataParallel: keys start with "module."), ema
{decay, num_updates, shadow_params: list in model.parameters() order}, step}.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np


class ConversionError(ValueError):
    """A checkpoint that cannot be read or does not fit the network (one line)."""


@dataclasses.dataclass
class Checkpoint:
    """A reference checkpoint, flattened.

    arrays: reference name -> array. score_sde: "/"-joined paths of the chosen weights
      (EMA or raw). score_sde_pytorch: the model state_dict without "module.", in file
      order (the EMA, a list, is matched to it by `sde_lab.convert.core`).
    ema: score_sde_pytorch's EMA shadow parameters (None for score_sde or raw weights).
    """

    fmt: str
    arrays: dict[str, np.ndarray]
    step: int
    ema: list[np.ndarray] | None = None


def _one_line(error: Exception, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def latest_checkpoint(path: str, pattern: str) -> str:
    """`path` itself if a file, else the file in directory `path` matching `pattern`
    (one integer group: the step) with the largest step."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise ConversionError(f"--checkpoint {path!r} does not exist")
    steps = {int(m.group(1)): name for name in os.listdir(path)
             if (m := re.fullmatch(pattern, name))}
    if not steps:
        raise ConversionError(f"no file matching {pattern!r} in {path!r}")
    return os.path.join(path, steps[max(steps)])


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = np.asarray(value)
    return out


def read_score_sde(path: str, ema: bool = True) -> Checkpoint:
    """Reads a score_sde (Flax) `checkpoint_N` file, or the latest one in a directory."""
    from flax import serialization

    path = latest_checkpoint(path, r"checkpoint_(\d+)")
    with open(path, "rb") as f:
        try:
            state = serialization.msgpack_restore(f.read())
        except Exception as e:  # noqa: BLE001  (msgpack raises several types)
            raise ConversionError(f"{path} is not a Flax msgpack checkpoint "
                                  f"({_one_line(e)})") from None
    if not isinstance(state, dict) or "params_ema" not in state or "optimizer" not in state:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ConversionError(f"{path} is not a score_sde training state (no params_ema/"
                              f"optimizer; top-level keys {keys})")
    weights = state["params_ema"] if ema else state["optimizer"]["target"]
    return Checkpoint("score_sde", _flatten(weights), int(np.asarray(state.get("step", 0))))


def read_score_sde_pytorch(path: str, ema: bool = True) -> Checkpoint:
    """Reads a score_sde_pytorch `checkpoint_N.pth` file, or the latest one in a directory.

    Needs torch (the `[torch]` extra); tensors are loaded on the CPU with
    weights_only=True (no pickled code runs).
    """
    try:
        import torch
    except ImportError:
        raise ConversionError("reading score_sde_pytorch checkpoints needs torch: "
                              "pip install 'sde_lab[torch]'") from None
    path = latest_checkpoint(path, r"checkpoint_(\d+)\.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (zip, pickle and torch errors)
        raise ConversionError(f"{path} is not a torch checkpoint ({_one_line(e)})") from None
    if not isinstance(state, dict) or "model" not in state:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ConversionError(f"{path} is not a score_sde_pytorch checkpoint (no 'model'; "
                              f"top-level keys {keys})")
    arrays = {k.removeprefix("module."): v.detach().cpu().numpy()
              for k, v in state["model"].items()}
    shadow = None
    if ema:
        if "ema" not in state or "shadow_params" not in state["ema"]:
            raise ConversionError(f"{path} has no EMA weights (ema.shadow_params); "
                                  "convert the raw weights with --noema")
        shadow = [t.detach().cpu().numpy() for t in state["ema"]["shadow_params"]]
    return Checkpoint("score_sde_pytorch", arrays, int(state.get("step", 0)), shadow)


READERS = {"score_sde": read_score_sde, "score_sde_pytorch": read_score_sde_pytorch}
