"""Named registries: one way to build SDEs, samplers, losses, parameterizations, networks.

A `Registry` maps names to factories (classes or functions taking keyword options). It
rejects an unknown name or option with a one-line `ValueError` that lists the valid ones,
and it describes each entry's options (name, default, type) from the factory's signature,
which is how the runner turns every option into a config field without a second list:

    _REGISTRY = Registry("sampler", {"ddim": ddim, ...})
    sample_fn = _REGISTRY.make("ddim", num_steps=50, eta=0.0)
    _REGISTRY.options("ddim")   # {"num_steps": Option(50, int), "eta": Option(0.0, float), ...}

Options whose annotation is a callable or whose default is not a plain value (hooks such as
`project_fn`, dicts, tuples) are listed by `options(..., scalar_only=False)` only.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

SCALAR_TYPES = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Option:
    """One keyword option of a registry entry.

    Attributes:
      default: the default value (None for an optional value such as `t_min`).
      type: bool, int, float or str for plain options; None for anything else (hooks,
        containers), which configs do not expose.
      optional: whether None is an accepted value (annotation `X | None`).
    """

    default: Any
    type: type | None
    optional: bool = False


def _scalar_type(annotation: Any, default: Any) -> tuple[type | None, bool]:
    """(bool/int/float/str or None, whether None is allowed) from an annotation string or
    object and the default value."""
    if isinstance(annotation, str):  # `from __future__ import annotations`
        parts = [p.strip() for p in annotation.split("|")]
        optional = "None" in parts
        names = [p for p in parts if p != "None"]
        lookup = {t.__name__: t for t in SCALAR_TYPES}
        kind = lookup.get(names[0]) if len(names) == 1 else None
    else:
        args = typing.get_args(annotation) if isinstance(
            annotation, (types.UnionType, typing._UnionGenericAlias)) else (annotation,)  # noqa: SLF001
        optional = type(None) in args
        names = [a for a in args if a is not type(None)]
        kind = names[0] if len(names) == 1 and names[0] in SCALAR_TYPES else None
    if annotation is inspect.Parameter.empty:
        kind = type(default) if isinstance(default, SCALAR_TYPES) else None
        optional = default is None
    if kind is not None and default is not None and not isinstance(default, kind):
        if not (kind is float and isinstance(default, int) and not isinstance(default, bool)):
            kind = None
    return kind, optional or default is None


def section_name(name: str) -> str:
    """An entry's name as an identifier (its config section): "dpm_solver++" -> "dpm_solver_pp"."""
    return name.replace("++", "_pp")


class Registry(Generic[T]):
    """name -> factory, with option checking and option descriptions."""

    def __init__(self, kind: str, entries: dict[str, Callable[..., T]]):
        self.kind = kind
        self._entries = dict(entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __getitem__(self, name: str) -> Callable[..., T]:
        self.check_name(name)
        return self._entries[name]

    def available(self) -> list[str]:
        return sorted(self._entries)

    def register(self, name: str, factory: Callable[..., T]) -> None:
        self._entries[name] = factory

    def check_name(self, name: str) -> None:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {self.available()}")

    def options(self, name: str, scalar_only: bool = True) -> dict[str, Option]:
        """Keyword options of entry `name` in signature order (see `Option`)."""
        factory = self[name]
        target = factory.__init__ if inspect.isclass(factory) else factory
        out = {}
        for p in inspect.signature(target).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is inspect.Parameter.empty:
                continue  # positional inputs (e.g. a loss's params, batch) are not options
            kind, optional = _scalar_type(p.annotation, p.default)
            if kind is None and scalar_only:
                continue
            out[p.name] = Option(p.default, kind, optional)
        return out

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """ValueError for keywords the factory does not take (defaulted or not)."""
        factory = self[name]
        target = factory.__init__ if inspect.isclass(factory) else factory
        params = inspect.signature(target).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return
        valid = [p.name for p in params if p.name != "self" and p.kind != p.VAR_POSITIONAL]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"{self.kind} {name!r}: unknown option(s) {unknown}; valid "
                             f"options: {valid}")

    def make(self, name: str, **options) -> T:
        """Calls the factory of `name` with `options`.

        Raises:
          ValueError: unknown name or option (listing the valid ones), or whatever
            ValueError the factory raises for a bad value.
        """
        self.check_name(name)
        self.check_options(name, options)
        return self._entries[name](**options)
