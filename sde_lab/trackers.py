"""Optional experiment trackers beside TensorBoard (which is always written).

`config.log.tracker = "wandb"` (with `log.project`) sends the training and eval metrics
of the main process to Weights & Biases as well. The package is never required: choosing
a tracker whose package is not installed is a one-line error before anything runs. One
workdir is one tracker run (its id derives from the workdir's path), so a resumed run
continues the same record.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Any

from sde_lab.registry import Registry


class Wandb:
    """Weights & Biases: `wandb.init(project, dir=workdir, id, resume="allow")`."""

    package = "wandb"

    def __init__(self, workdir: str, project: str = "sde_lab", config: dict | None = None):
        import wandb

        run_id = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]
        self._run = wandb.init(project=project, dir=workdir, id=run_id, resume="allow",
                               name=os.path.basename(os.path.abspath(workdir)), config=config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


REGISTRY: Registry = Registry("tracker", {"wandb": Wandb})


def check(name: str) -> None:
    """ValueError unless `name` is "" (none) or a tracker whose package is installed."""
    if not name:
        return
    REGISTRY.check_name(name)
    package = REGISTRY[name].package
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"tracker {name!r} needs the {package!r} package, which is not "
                         f"installed (pip install {package}); TensorBoard is always written")


def for_run(exp, workdir: str):
    """The experiment's tracker on the main process (None elsewhere, or if none is set),
    with the workdir's recorded config."""
    from sde_lab import parallel, workdir as workdir_lib

    if not (exp.log.tracker and parallel.is_main_process()):
        return None
    config = workdir_lib.read_json(os.path.join(workdir, workdir_lib.CONFIG_FILE))
    return make(exp.log.tracker, workdir, exp.log.project, config)


def make(name: str, workdir: str, project: str, config: dict | None = None):
    """The tracker `name` for `workdir`, or None for ""."""
    if not name:
        return None
    return REGISTRY.make(name, workdir=workdir, project=project, config=config)
