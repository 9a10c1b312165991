"""Score networks: `models.make(name, size=..., **fields)` builds a Flax Linen module.

Every image network maps x [B, H, W, C] and a conditioning value t [B] (from a
`sde_lab.parameterization` wrapper) to an output shaped like x:

    net = models.make("ncsnpp", size="ddpmpp_cont")   # or make("ncsnpp", nf=64, ...)
    params = net.init(key, x, t)
    out = net.apply(params, x, t)                     # + y=labels, train=True
                                                      #   (rngs={"dropout": key})

Pair each network with the parameterization whose conditioning it was built for:
Fourier-embedding NCSN++ sizes (`ncsnpp_cont*`, `ncsnpp_64`, `ncsnpp_256`) with "score"
(t = log sigma, output / sigma), sinusoidal-embedding sizes (`ddpmpp_cont*`, `digits`, all
of `ddpm`) with "eps" (t = 999 t), and NCSNv2, which ignores t, with "score".
The noise-conditional `classifier` instead maps x and cond [B] to class logits [B, K];
`guidance.classifier_logits_model` feeds it.

`models.sizes(name)` lists a model's named sizes: the published configurations plus
`tiny` (tests) and, for ncsnpp and ddpm, `digits` (8x8x1 scikit-learn digits). Adding a
model: a module file with a Linen class and a `SIZES` dict, and one line in `_MODELS`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from sde_lab.models import classifier, ddpm, mlp, ncsnpp, ncsnv2, vdm
from sde_lab.registry import Registry

# name -> (Linen module class, {size name: field overrides}).
_MODELS: dict[str, tuple[type[nn.Module], dict[str, dict]]] = {
    "ncsnpp": (ncsnpp.NCSNpp, ncsnpp.SIZES),
    "ncsnv2": (ncsnv2.NCSNv2, ncsnv2.SIZES),
    "ddpm": (ddpm.DDPM, ddpm.SIZES),
    "vdm": (vdm.VDM, vdm.SIZES),
    "mlp": (mlp.MLP, mlp.SIZES),
    "classifier": (classifier.Classifier, classifier.SIZES),
}
REGISTRY: Registry[nn.Module] = Registry("model", {k: v[0] for k, v in _MODELS.items()})


def available() -> list[str]:
    return REGISTRY.available()


def sizes(name: str) -> list[str]:
    """Named sizes of model `name`, e.g. sizes("ncsnpp") -> ["ddpmpp_cont", ...]."""
    REGISTRY.check_name(name)
    return sorted(_MODELS[name][1])


def field_names(name: str) -> list[str]:
    """The fields `make(name, ...)` accepts, e.g. "remat" is one of ncsnpp's, not mlp's."""
    REGISTRY.check_name(name)
    return sorted({f.name for f in dataclasses.fields(_MODELS[name][0])} - {"parent", "name"})


def _check_fields(name: str, fields: dict) -> None:
    """Range checks of the fields most networks share (the rest fail at init)."""
    dropout = fields.get("dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model '{name}': dropout must be in [0, 1), got {dropout}")
    num_classes = fields.get("num_classes", 0)
    if not (isinstance(num_classes, int) and num_classes >= 0):
        raise ValueError(f"model '{name}': num_classes must be an int >= 0, got {num_classes}")


def make(name: str, size: str | None = None, **fields) -> nn.Module:
    """Builds model `name` with the fields of `size` (if given), then `fields` on top.

    Raises:
      ValueError: unknown model, size or field name (the message lists the choices), or
        an invalid field value.
    """
    REGISTRY.check_name(name)
    cls, table = _MODELS[name]
    if size is not None and size not in table:
        raise ValueError(f"unknown size '{size}' for model '{name}'; available: {sorted(table)}")
    valid = set(field_names(name))
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for model '{name}'; "
                         f"available: {sorted(valid)}")
    kwargs = dict(table[size]) if size is not None else {}
    kwargs.update(fields)
    _check_fields(name, kwargs)
    return cls(**kwargs)
