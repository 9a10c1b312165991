"""Score networks: Flax Linen modules with typed fields and named sizes.

    net = models.make("vdm", size="cifar10")    # models.sizes("vdm") lists the sizes
    params = net.init(key, x, t)               # net.apply(params, x, t)

Each model module defines its Linen class and a `SIZES` table (published configurations
plus `tiny` for tests); `make` merges a size with explicit field overrides.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from sde_lab.models import mlp, vdm

_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, dict]]] = {
    "vdm": (vdm.VDM, vdm.SIZES),
    "mlp": (mlp.MLP, mlp.SIZES),
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[type[nn.Module], dict[str, dict]]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}'; available: {available()}")
    return _REGISTRY[name]


def sizes(name: str) -> list[str]:
    """The named sizes of model `name`."""
    return sorted(_entry(name)[1])


def make(name: str, size: str | None = None, **fields) -> nn.Module:
    """Builds model `name` at `size` (None: the class defaults), fields overriding the size.

    Raises:
      ValueError: unknown model, size or field (each message lists the valid choices).
    """
    cls, table = _entry(name)
    if size is not None and size not in table:
        raise ValueError(f"unknown size '{size}' for model '{name}'; available: {sorted(table)}")
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"model '{name}': unknown fields {unknown}; valid fields: {valid}")
    return cls(**{**(table[size] if size is not None else {}), **fields})
