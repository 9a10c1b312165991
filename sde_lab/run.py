"""The runner's front door: config -> typed objects -> train / eval / sample.

This is the one place that reads an ml-collections config; everything below it takes typed
arguments. `validate` checks every name and size against the registries, the batch size
against the devices, the dataset and the workdir, so bad input fails in one line before
anything is compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sde_lab import data as data_lib
from sde_lab import losses, parallel, parameterization, sdes

MODES = ("train", "eval", "sample")
PARALLEL_MODES = ("jit", "pmap")


class ConfigError(ValueError):
    """A bad configuration value; main.py prints it as one line."""


# ---------------------------------------------------------------- config helpers

def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out += flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def suggest(key: str, config: ml_collections.ConfigDict) -> str:
    """'unknown config field X; did you mean ...?' with the closest valid names."""
    close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config field '{key}'{hint}"


def _choice(option: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{option}={value!r} is not valid; choose from {sorted(choices)}")


def _kwargs_for(cls_or_fn: Callable, section: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields of a config section that `cls_or_fn` accepts as keyword arguments."""
    target = cls_or_fn.__init__ if inspect.isclass(cls_or_fn) else cls_or_fn
    names = inspect.signature(target).parameters
    return {k: section[k] for k in section.keys() if k in names and k != "name"}


# ---------------------------------------------------------------- typed objects

def make_sde(config) -> sdes.SDE:
    _choice("sde.name", config.sde.name, sdes.available())
    cls = sdes._REGISTRY[config.sde.name]  # noqa: SLF001 (registry lookup for its signature)
    try:
        return sdes.make(config.sde.name, **_kwargs_for(cls, config.sde))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_net(config):
    from sde_lab import models

    _choice("model.name", config.model.name, models.available())
    _choice("model.size", config.model.size, models.sizes(config.model.name))
    fields = {}
    if config.model.num_classes > 0:
        fields["num_classes"] = config.model.num_classes
    if config.model.dropout >= 0:
        fields["dropout"] = config.model.dropout
    if not config.data.centered and config.model.name in ("ncsnpp", "ddpm", "ncsnv2"):
        # As score_sde's networks: data in [0, 1] enters as 2 x - 1 (their converted
        # checkpoints need it; sde_lab.convert).
        fields["rescale_input"] = True
    try:
        return models.make(config.model.name, size=config.model.size, **fields)
    except ValueError as e:
        raise ConfigError(f"model.*: {e}") from None


def data_shape(config) -> tuple[int, ...]:
    if config.data.dataset.startswith("toy:"):
        return (config.data.toy_dim,)
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


@dataclasses.dataclass
class Experiment:
    """Everything the runners need, built from a config."""

    config: ml_collections.ConfigDict
    sde: sdes.SDE
    net: Any
    param: parameterization.Parameterization
    shape: tuple[int, ...]
    schedule: Any = None   # VDM's learned gamma(t) network when train.loss == "vdm_vlb"
    _eval_model: Callable | None = dataclasses.field(default=None, repr=False)

    @property
    def learned_schedule(self) -> bool:
        return self.schedule is not None

    def sde_fn(self, params) -> sdes.SDE:
        """The SDE for `params`: fixed, or VDM's learned schedule read from params."""
        if not self.learned_schedule:
            return self.sde
        from sde_lab.models import vdm

        return vdm.schedule_sde(self.schedule, t_min=self.config.sde.t_min)(params)

    def apply_fn(self, labels=None, train: bool = False, dropout_key=None):
        """net.apply(params, x_in, cond) with labels / dropout bound."""
        kwargs = {}
        if self.config.model.num_classes > 0:
            kwargs["y"] = labels
        if train and dropout_key is not None and getattr(self.net, "dropout", 0.0) > 0:
            kwargs.update(train=True, rngs={"dropout": dropout_key})

        def apply(params, x, cond):
            return self.net.apply(params, x, cond, **kwargs)

        return apply

    def score_model(self, labels=None, train=False, dropout_key=None):
        """score(params, x, t)."""
        apply_fn = self.apply_fn(labels, train, dropout_key)
        if self.learned_schedule:  # eps network conditioned on gamma_t, params {net, schedule}
            from sde_lab.models import vdm

            return vdm.score_model(apply_fn, self.sde_fn)
        return self.param.score_model(apply_fn, self.sde)

    def score_fn(self, params, labels=None):
        """A pure score_fn(x, t) for samplers and the likelihood (eval mode).

        Unconditional: a `jax.tree_util.Partial` of one cached function, so jitted callers
        that take the score as an argument do not recompile for new parameters.
        """
        if labels is None:
            if self._eval_model is None:
                self._eval_model = self.score_model()
            return jax.tree_util.Partial(self._eval_model, params)
        model = self.score_model(labels)
        return lambda x, t: model(params, x, t)

    def init_params(self, key):
        x = jnp.zeros((1,) + self.shape)
        cond = jnp.zeros((1,))
        kwargs = {"y": jnp.zeros((1,), jnp.int32)} if self.config.model.num_classes > 0 else {}
        net_params = self.net.init(key, x, cond, **kwargs)
        if not self.learned_schedule:
            return net_params
        return {"net": net_params, "schedule": self.schedule.init(key, jnp.zeros((1,)))}

    def loss_fn(self) -> Callable:
        """loss(params, batch, example_keys) -> scalar, for the train step."""
        cfg = self.config.train
        name = cfg.loss
        options = {"dsm": dict(weighting=cfg.weighting, importance_sampling=cfg.importance_sampling,
                               reduce=cfg.reduce, eps=cfg.t_eps),
                   "ddpm": dict(num_levels=cfg.num_levels, reduce=cfg.reduce),
                   "smld": dict(num_levels=cfg.num_levels, reduce=cfg.reduce),
                   "vdm_vlb": dict(num_levels=self.config.data.num_levels,
                                   data_range=(-1.0, 1.0) if self.config.data.centered
                                   else (0.0, 1.0))}[name]
        loss = losses.make(name, **options)
        sde = self.sde_fn if self.learned_schedule else self.sde

        def fn(params, batch, keys):
            dropout_key = jax.random.fold_in(keys[0], 1)
            model = self.score_model(batch.get("label"), train=True, dropout_key=dropout_key)
            return loss(params, model, sde, batch["x"], keys)

        return fn

    def sampler(self, **overrides):
        from sde_lab import samplers

        return samplers.make(**sampler_options(self.config.sample, **overrides))


def sampler_options(sample_cfg, **overrides) -> dict[str, Any]:
    """Keyword options of samplers.make for the configured sampler (unused fields dropped)."""
    from sde_lab import samplers

    cfg = dict(sample_cfg.items())
    cfg.update(overrides)
    name = cfg.pop("sampler")
    _choice("sample.sampler", name, samplers.available())
    accepted = inspect.signature(samplers._REGISTRY[name]).parameters  # noqa: SLF001
    # None (an unset placeholder such as sample.order) means the sampler's own default.
    opts = {k: v for k, v in cfg.items() if k in accepted and v is not None}
    return {"name": name, **opts}


def build(config) -> Experiment:
    sde = make_sde(config)
    _choice("model.parameterization", config.model.parameterization,
            list(parameterization._REGISTRY))  # noqa: SLF001
    param = parameterization.make(config.model.parameterization)
    schedule = None
    if config.train.loss == "vdm_vlb":
        if config.model.name != "vdm" or config.sde.name != "vp":
            raise ConfigError("train.loss='vdm_vlb' trains VDM's learned schedule: it needs "
                              "model.name='vdm' and sde.name='vp' (the VP family it learns)")
        from sde_lab.models import vdm

        schedule = vdm.NoiseSchedule()
    return Experiment(config, sde, make_net(config), param, data_shape(config), schedule)


# ---------------------------------------------------------------- validation

def validate(config, workdir: str, mode: str) -> Experiment:
    """Checks the whole config before anything is compiled; returns the built experiment."""
    _choice("--mode", mode, MODES)
    _choice("parallel.mode", config.parallel.mode, PARALLEL_MODES)
    _choice("train.loss", config.train.loss, ["dsm", "ddpm", "smld", "vdm_vlb"])
    exp = build(config)
    try:
        exp.sampler()  # validates the sampler name and its options
    except ValueError as e:   # e.g. sample.order=7 for unipc: one line, not a traceback
        raise ConfigError(f"config.sample: {e}") from None
    mesh = parallel.make_mesh()
    try:
        parallel.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
        parallel.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
        parallel.check_batch_size(config.sample.batch_size, mesh, "sample.batch_size")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:  # shape-only trace: the network rejects image sizes it cannot take
        jax.eval_shape(exp.init_params, jax.random.PRNGKey(0))
    except ValueError as e:
        raise ConfigError(f"model {config.model.name}/{config.model.size} cannot take input "
                          f"{exp.shape}: {e}") from None
    _check_workdir(workdir)
    return exp


def _check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir!r} is not writable ({e.strerror})") from None


def make_dataset(config, split: str, train: bool) -> data_lib.Dataset:
    d = config.data
    try:
        return data_lib.make(d.dataset, split, num_levels=d.num_levels, centered=d.centered,
                             image_size=d.image_size, random_flip=d.random_flip,
                             uniform_dequantization=d.uniform_dequantization,
                             data_dir=d.data_dir or None, toy_dim=d.toy_dim, seed=config.seed,
                             train=train, center_crop=d.center_crop)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------- entry point

def main(config, workdir: str, mode: str = "train", dry_run: bool = False) -> int:
    """Runs `mode` (train | eval | sample) for `config` in `workdir`; returns an exit code."""
    parallel.initialize(config.parallel.coordinator_address or None,
                        config.parallel.num_processes or None,
                        None if config.parallel.process_id < 0 else config.parallel.process_id)
    exp = validate(config, workdir, mode)
    if not dry_run:  # a dataset that is not prepared fails here, before any compilation
        if mode == "train":
            make_dataset(config, config.data.train_split, train=True)
        elif mode == "eval" and (config.eval.enable_bpd or not config.eval.reference_stats):
            make_dataset(config, config.data.eval_split, train=False)
    n_params = count_params(jax.eval_shape(exp.init_params, jax.random.PRNGKey(0)))
    if dry_run:
        print(config)
        print(f"parameters: {n_params:,}")
        return 0
    if parallel.is_main_process():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    if mode == "train":
        from sde_lab import train

        return train.train_and_evaluate(exp, workdir)
    if mode == "eval":
        from sde_lab import evaluate

        return evaluate.run(exp, workdir)
    from sde_lab import sample

    return sample.run(exp, workdir)


def write_json(path: str, obj) -> None:
    """Atomic JSON write (tmp file then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
