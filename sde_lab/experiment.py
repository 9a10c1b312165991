"""Config -> typed experiment: the one place that reads an ml-collections config.

`build(config)` checks every field (names against the registries, numbers against their
ranges, sizes against each other) and returns a frozen `Experiment` of typed objects: the
SDE, the network and its parameterization, the bound loss, the sampler, and frozen specs
of the data, training, optimizer, evaluation and parallel settings. The runners below it
(`sample`, `train`, `evaluate`) take an `Experiment` and never see the config. A bad value
raises `ConfigError` with one line that names the field and what is valid; nothing has
been compiled at that point.

PRNG streams: every key derives from `seed` through the named offsets of `Keys`, in this
file only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sde_lab import data as data_lib
from sde_lab import guidance as guidance_lib
from sde_lab import losses, models, parallel, parameterization, samplers, sdes
from sde_lab.registry import section_name


class ConfigError(ValueError):
    """A bad configuration value; main.py prints it as one `error:` line."""


PARALLEL_MODES = ("jit", "pmap")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "linear")
FEATURE_EXTRACTORS = ("digits", "inception", "none")
BPD_ESTIMATORS = ("hutchinson", "exact")
GUIDANCE = ("none", "classifier_free", "classifier")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")   # = models.layers.COMPUTE_DTYPES
CONV_BACKWARDS = ("auto", "xla", "gemm", "onednn")    # = models.layers.CONV_BACKWARDS


# ---------------------------------------------------------------- checks

def _require(ok: bool, field: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{field}={value!r} is not valid: {what}")


def _choice(field: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not valid; choose from {sorted(choices)}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(field: str, value) -> None:
    _require(isinstance(value, int) and value >= 1, field, value, "must be an int >= 1")


def _nonnegative_int(field: str, value) -> None:
    _require(isinstance(value, int) and value >= 0, field, value, "must be an int >= 0")


# config section -> (field that names the choice, registry of the choices)
CHOICE_SECTIONS = {"sde": ("name", sdes.REGISTRY), "loss": ("name", losses.REGISTRY),
                   "sample": ("sampler", samplers.REGISTRY)}


def _registry_options(config: ml_collections.ConfigDict, section: str) -> tuple[str, dict]:
    """(chosen name, its options) from `config.<section>`: a `name`-like field and one
    sub-section per registry entry, of which only the chosen one is read."""
    field, registry = CHOICE_SECTIONS[section]
    name = config[section][field]
    _choice(f"{section}.{field}", name, registry.available())
    return name, dict(config[section][section_name(name)].items())


def check_overrides(config: ml_collections.ConfigDict, keys) -> None:
    """Overrides (command line, sweep) must be read: setting `sample.ddim.eta` while
    `sample.sampler` is 'heun' is an error, not silently dropped. (A config file may set
    defaults in several sections; only explicit overrides are checked.)"""
    for key in keys:
        parts = key.split(".")
        if len(parts) < 3 or parts[0] not in CHOICE_SECTIONS:
            continue
        field, registry = CHOICE_SECTIONS[parts[0]]
        chosen = config[parts[0]][field]
        entries = {section_name(n): n for n in registry.available()}
        if parts[1] != section_name(chosen) and parts[1] in entries:
            raise ConfigError(f"{key} is set but {parts[0]}.{field}={chosen!r}; that section "
                              f"is read only when {parts[0]}.{field}={entries[parts[1]]!r}")


def _make(factory: Callable, name: str, options: dict[str, Any], prefix: str):
    try:
        return factory(name, **options)
    except ValueError as e:
        raise ConfigError(f"{prefix}: {e}") from None


# ---------------------------------------------------------------- frozen specs

@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how it is scaled (`data.*`)."""

    dataset: str
    data_dir: str | None
    center_crop: int
    image_size: int
    num_channels: int
    num_levels: int
    centered: bool
    random_flip: bool
    uniform_dequantization: bool
    train_split: str
    eval_split: str
    toy_dim: int
    exclude_classes: tuple[int, ...] = ()   # dropped from train_split only

    @property
    def is_toy(self) -> bool:
        return self.dataset.startswith("toy:")

    @property
    def shape(self) -> tuple[int, ...]:
        if self.is_toy:
            return (self.toy_dim,)
        return (self.image_size, self.image_size, self.num_channels)

    @functools.cached_property
    def scaler(self) -> data_lib.Scaler:
        return data_lib.Scaler(self.num_levels, self.centered)

    @property
    def data_range(self) -> tuple[float, float]:
        return (-1.0, 1.0) if self.centered else (0.0, 1.0)

    def make(self, split: str, train: bool, seed: int) -> data_lib.Dataset:
        """The dataset split; a TFDS set that is not prepared -> ConfigError with the command."""
        try:
            return data_lib.make(
                self.dataset, split, num_levels=self.num_levels, centered=self.centered,
                image_size=self.image_size, random_flip=self.random_flip,
                uniform_dequantization=self.uniform_dequantization, data_dir=self.data_dir,
                toy_dim=self.toy_dim, seed=seed, train=train, center_crop=self.center_crop,
                exclude_classes=self.exclude_classes if split == self.train_split else ())
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    batch_size: int
    num_steps: int
    steps_per_dispatch: int
    log_every_steps: int
    checkpoint_every_steps: int
    sample_every_steps: int
    max_to_keep: int
    eval_at_end: bool
    grad_accum_steps: int = 1


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    optimizer: str
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    ema_rate: float
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    decay_steps: int = 1


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """The configured sampler: `name`, its options, and how many samples `--mode sample`
    draws in batches of `batch_size`."""

    name: str
    options: tuple[tuple[str, Any], ...]
    num_samples: int
    batch_size: int

    def make(self, **hooks):
        """samplers.make(name, **options, **hooks) (hooks: project_fn, guidance_fn)."""
        opts = {k: v for k, v in self.options if v is not None}
        return samplers.make(self.name, **opts, **hooks)

    def describe(self) -> dict[str, Any]:
        return {"sampler": self.name, **dict(self.options)}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    num_samples: int
    batch_size: int
    feature_extractor: str
    inception_weights: str
    reference_stats: str
    enable_bpd: bool
    bpd_num_passes: int
    bpd_num_examples: int
    bpd_rtol: float
    bpd_atol: float
    bpd_estimator: str
    bpd_t_min: float
    checkpoints: tuple[int, ...] | None
    wait_seconds: float
    source_workdir: str | None = None


@dataclasses.dataclass(frozen=True)
class GuidanceSpec:
    """What samples are drawn (`sample.label`, `sample.guidance`, `sample.guidance_scale`).

    `num_classes` is the K of the sample labels: the score network's, or the classifier's
    for classifier guidance of an unconditional network; 0 means unlabelled samples.
    """

    label: int
    method: str
    scale: float
    num_classes: int

    @property
    def labelled(self) -> bool:
        return self.num_classes > 0

    def labels(self, start: int, num: int) -> np.ndarray | None:
        """Labels of samples start..start+num-1: `label`, or i mod K for label -1 (every
        class equally often, whatever the batch size); None for unlabelled sampling."""
        if not self.labelled:
            return None
        if self.label >= 0:
            return np.full((num,), self.label, np.int32)
        return (np.arange(start, start + num) % self.num_classes).astype(np.int32)

    def describe(self) -> dict[str, Any]:
        out = {"label": self.label, "guidance": self.method}
        if self.method != "none":
            out["guidance_scale"] = self.scale
        return out


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """The noise-conditional classifier p_t(y | x_t) (`classifier.*`).

    `net` is None when its number of classes is unknown (an unconditional score model and
    classifier.num_classes=0); the modes that need it reject that in one line.
    """

    net: Any
    size: str
    num_classes: int
    batch_size: int
    num_steps: int
    optim: OptimSpec
    eps: float
    sigma_data: float
    log_every_steps: int
    checkpoint_every_steps: int
    eval_times: tuple[float, ...]
    eval_repeats: int
    workdir: str

    def directory(self, workdir: str) -> str:
        """Where its checkpoints, logs and accuracy table live."""
        return self.workdir or os.path.join(workdir, "classifier")

    def init_params(self, key, shape: tuple[int, ...]):
        return self.net.init(key, jnp.zeros((1,) + shape), jnp.zeros((1,)))

    def logits_model(self, sde: sdes.SDE) -> Callable:
        """logits(params, x, t) -> [B, K] under `sde` (guidance.classifier_logits_model)."""
        return guidance_lib.classifier_logits_model(self.net.apply, sde, self.sigma_data)


@dataclasses.dataclass(frozen=True)
class InverseSpec:
    """Inverse-problem and anomaly-score modes (`inverse.*`): see configs/default.py."""

    num_examples: int
    batch_size: int
    mask: str
    mask_fraction: float
    mask_file: str
    method: str
    guidance_scale: float
    data_var: float
    guidance_min_alpha: float
    noise_std: float
    num_posterior_samples: int
    t0: float
    score_methods: tuple[str, ...]
    anomaly_classes: tuple[int, ...]
    reconstruction_t0s: tuple[float, ...]
    score_norm_levels: int
    gmm_components: int


@dataclasses.dataclass(frozen=True)
class LogSpec:
    tracker: str
    project: str


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
    mode: str
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    compilation_cache: str | None = None   # directory or "none"; None: JAX's default
    cpu_convolutions: str = "xla"
    cpu_scheduler: str = "memory"
    cache_is_default: bool = False  # compilation_cache came from "auto"


class Keys:
    """Named PRNG streams derived from the seed (the offsets keep earlier runs' numbers)."""

    SAMPLE = 10**6      # --mode sample of checkpoint `step`
    EVAL = 2 * 10**6    # eval samples of checkpoint `step`
    BPD = 3 * 10**6     # eval bits/dim of checkpoint `step`
    CLASSIFIER = 4 * 10**6   # the noise-conditional classifier: init, steps, accuracy table
    # Sub-streams of one example's training key (see `Experiment.loss_fn`): fold_in(k, 1) of
    # the batch's first key is the network's dropout key, fold_in(k, 2) of each example's
    # key draws whether its label is dropped.
    LABEL_DROPOUT = 2
    INVERSE = 5 * 10**6  # inverse-problem / anomaly-score modes of checkpoint `step`

    def __init__(self, seed: int):
        self.root = jax.random.PRNGKey(seed)
        self.init, self.train = jax.random.split(self.root)

    def step(self, step: int):
        """Key of training step `step` (split per example by the loss)."""
        return jax.random.fold_in(self.train, step)

    def sample(self, step: int):
        return jax.random.fold_in(self.root, self.SAMPLE + step)

    def eval(self, step: int):
        return jax.random.fold_in(self.root, self.EVAL + step)

    def bpd(self, step: int):
        return jax.random.fold_in(self.root, self.BPD + step)

    def classifier_init(self):
        return jax.random.fold_in(jax.random.fold_in(self.root, self.CLASSIFIER), 0)

    def classifier_step(self, step: int):
        """Key of classifier training step `step` (split per example by its loss)."""
        return jax.random.fold_in(jax.random.fold_in(self.root, self.CLASSIFIER + 1), step)

    def classifier_eval(self, i: int):
        """Key of the i-th noise draw of the classifier's accuracy table."""
        return jax.random.fold_in(jax.random.fold_in(self.root, self.CLASSIFIER + 2), i)

    def inverse(self, step: int, mode: str):
        """Key of inverse mode `mode` at checkpoint `step` (one stream per mode)."""
        stream = jax.random.fold_in(self.root, self.INVERSE + step)
        return jax.random.fold_in(stream, zlib.crc32(mode.encode()) % 2**31)


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything the runners need, typed and frozen.

    Parameters are {"net": network variables, "sde": the SDE's own (learned schedule;
    {} otherwise)}; `sde_of(params)` binds them, so the runners never ask which SDE it is.
    """

    seed: int
    sde: sdes.SDE
    net: Any
    param: parameterization.Parameterization
    loss: Callable
    loss_name: str
    num_classes: int
    data: DataSpec
    train: TrainSpec
    optim: OptimSpec
    sampler: SamplerSpec
    eval: EvalSpec
    parallel: ParallelSpec
    log: LogSpec = LogSpec("", "sde_lab")
    label_dropout: float = 0.0
    guidance: GuidanceSpec = GuidanceSpec(-1, "none", 1.0, 0)
    classifier: ClassifierSpec | None = None
    inverse: InverseSpec | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @functools.cached_property
    def keys(self) -> Keys:
        return Keys(self.seed)

    def sde_of(self, params) -> sdes.SDE:
        return self.sde.bind(params["sde"])

    def init_params(self, key) -> dict:
        x = jnp.zeros((1,) + self.shape)
        kwargs = {"y": jnp.zeros((1,), jnp.int32)} if self.num_classes > 0 else {}
        return {"net": self.net.init(key, x, jnp.zeros((1,)), **kwargs),
                "sde": self.sde.init(key)}

    @functools.cached_property
    def eval_net(self):
        """The network for sampling, likelihoods and the other modes: `net` computing in
        float32 with XLA's convolutions (same parameters). `train.compute_dtype` is the
        train step's compute dtype only: the adaptive PF-ODE solves (bits/dim at rtol 1e-5)
        need float32 evaluations, and the likelihood's JVPs XLA's convolutions."""
        fields = {}
        if getattr(self.net, "dtype", "float32") != "float32":
            fields["dtype"] = "float32"
        if getattr(self.net, "conv_backward", None) == "onednn":
            fields["conv_backward"] = "auto"  # oneDNN's convs are reverse-mode only (JVPs)
        return self.net.clone(**fields) if fields else self.net

    def apply_fn(self, labels=None, train: bool = False, dropout_key=None) -> Callable:
        """apply(net_params, x_in, cond) -> float32 output, with labels and dropout bound;
        `net` when `train` (the configured compute dtype), else `eval_net`."""
        kwargs = {}
        if self.num_classes > 0:
            kwargs["y"] = labels
        if train and dropout_key is not None and getattr(self.net, "dropout", 0.0) > 0:
            kwargs.update(train=True, rngs={"dropout": dropout_key})
        return functools.partial(_apply, self.net if train else self.eval_net, kwargs=kwargs)

    def score_model(self, sde: sdes.SDE, labels=None, train: bool = False,
                    dropout_key=None) -> Callable:
        """score(net_params, x, t) of the network under `sde`."""
        return self.param.score_model(self.apply_fn(labels, train, dropout_key), sde)

    @functools.cached_property
    def _eval_score(self) -> Callable:
        return functools.partial(_eval_score, self)

    def score_fn(self, params, labels=None) -> Callable:
        """A pure score_fn(x, t) of `params` (eval mode), for samplers and the likelihood.

        A `jax.tree_util.Partial` of one cached function, so jitted callers that take the
        score as an argument do not recompile for new parameters.
        """
        return jax.tree_util.Partial(self._eval_score, params, labels)

    def guided_score_fn(self, params, labels=None, classifier_params=None,
                        method: str | None = None) -> Callable:
        """score_fn(x, t) of the configured sampling (`sample.guidance`, or `method`).

        none: the network's score with `labels` (None for an unconditional network).
        classifier_free: uncond + scale (cond - uncond), uncond the "no label" score.
        classifier: uncond + scale grad_x log p_t(labels | x) of the classifier with
        `classifier_params`; uncond is the network's score (with "no label" for a
        class-conditional network).
        """
        method = method or self.guidance.method
        scale = self.guidance.scale
        if method == "none":
            return self.score_fn(params, labels)
        uncond = self.score_fn(params)   # conditional networks: y=None is "no label"
        if method == "classifier_free":
            return guidance_lib.classifier_free(self.score_fn(params, labels), uncond, scale)
        logits_model = self.classifier.logits_model(self.sde_of(params))
        log_prob = guidance_lib.classifier_log_prob_fn(logits_model, classifier_params, labels)
        return guidance_lib.classifier(uncond, log_prob, scale)

    def loss_fn(self) -> Callable:
        """loss(params, batch, example_keys) -> scalar, for the train step.

        With `label_dropout` p > 0 each example's label becomes "no label" (index
        num_classes) with probability p, drawn from its own key (Keys.LABEL_DROPOUT), so
        one network learns the conditional and the unconditional score (classifier-free
        guidance) with any loss.
        """

        def fn(params, batch, keys):
            sde = self.sde_of(params)
            dropout_key = jax.random.fold_in(keys[0], 1)
            labels = batch.get("label")
            if self.label_dropout > 0:
                drop_keys = jax.vmap(lambda k: jax.random.fold_in(k, Keys.LABEL_DROPOUT))(keys)
                labels = guidance_lib.drop_labels(drop_keys, labels, self.num_classes,
                                                  self.label_dropout)
            model = self.score_model(sde, labels, True, dropout_key)
            return self.loss(params["net"], model, sde, batch["x"], keys)

        return fn


def _apply(net, params, x, cond, kwargs):
    # The networks already return float32; the cast keeps every loss in float32 whatever
    # train.compute_dtype is.
    return net.apply(params, x, cond, **kwargs).astype(jnp.float32)


def _eval_score(exp: Experiment, params, labels, x, t):
    sde = exp.sde_of(params)
    return exp.score_model(sde, labels)(params["net"], x, t)


# ---------------------------------------------------------------- building

def _sde(config) -> sdes.SDE:
    name, options = _registry_options(config, "sde")
    return _make(sdes.make, name, options, f"sde.{section_name(name)}")


def _net(config):
    m = config.model
    _choice("model.name", m.name, models.available())
    if m.name == "classifier":
        raise ConfigError("model.name='classifier' is the noise-conditional classifier, not a "
                          "score network; train it with --mode train_classifier (its settings "
                          "are config.classifier.*)")
    _choice("model.size", m.size, models.sizes(m.name))
    _choice("model.parameterization", m.parameterization, parameterization.available())
    _require(m.dropout == -1.0 or 0.0 <= m.dropout < 1.0, "model.dropout", m.dropout,
             "must be in [0, 1), or -1 for the size's own")
    _nonnegative_int("model.num_classes", m.num_classes)
    compute_dtype = config.train.compute_dtype
    _choice("train.compute_dtype", compute_dtype, COMPUTE_DTYPES)
    _require(isinstance(m.remat, bool), "model.remat", m.remat, "must be True or False")
    _choice("model.conv_backward", m.conv_backward, CONV_BACKWARDS)
    if m.conv_backward == "onednn":
        from sde_lab import onednn
        why = onednn.unavailable(config.train.compute_dtype)
        _require(why is None, "model.conv_backward", m.conv_backward, str(why))
    fields = {"dtype": compute_dtype}   # parameters stay float32 (param_dtype's default)
    supported = models.field_names(m.name)
    for option, value, default in (("remat", m.remat, False),
                                   ("conv_backward", m.conv_backward, "auto")):
        _require(value == default or option in supported, f"model.{option}", value,
                 f"model.name={m.name!r} has no {option} option (leave it at {default!r})")
        if option in supported:
            fields[option] = value
    if m.num_classes > 0:
        fields["num_classes"] = m.num_classes
    if m.dropout >= 0:
        fields["dropout"] = m.dropout
    if not config.data.centered and m.name in ("ncsnpp", "ddpm", "ncsnv2"):
        # As score_sde's networks: data in [0, 1] enters them as 2 x - 1 (so their
        # converted checkpoints see what they were trained on; sde_lab.convert).
        fields["rescale_input"] = True
    try:
        return models.make(m.name, size=m.size, **fields)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def _data(config) -> DataSpec:
    d = config.data
    if d.dataset.startswith("toy:"):
        _choice("data.dataset", d.dataset, [f"toy:{s}" for s in data_lib.TOY_SETS])
        _positive_int("data.toy_dim", d.toy_dim)
    else:
        _positive_int("data.image_size", d.image_size)
        _positive_int("data.num_channels", d.num_channels)
        _nonnegative_int("data.center_crop", d.center_crop)
    _require(isinstance(d.num_levels, int) and d.num_levels >= 2, "data.num_levels",
             d.num_levels, "must be an int >= 2")
    return DataSpec(d.dataset, d.data_dir or None, d.center_crop, d.image_size,
                    d.num_channels, d.num_levels, d.centered, d.random_flip,
                    d.uniform_dequantization, d.train_split, d.eval_split, d.toy_dim,
                    int_list("data.exclude_classes", d.exclude_classes))


def int_list(field: str, value: str) -> tuple[int, ...]:
    """'3' or '3,5' -> (3, 5); '' -> (); anything else -> ConfigError naming `field`."""
    try:
        out = tuple(int(v) for v in value.split(",")) if value.strip() else ()
    except ValueError:
        raise ConfigError(f"{field}={value!r} is not valid: give comma-separated integer "
                          "labels, e.g. '3' or '3,5'") from None
    _require(len(set(out)) == len(out), field, value, "lists a label twice")
    return out


def _loss(config, sde: sdes.SDE, data: DataSpec) -> tuple[str, Callable]:
    name, options = _registry_options(config, "loss")
    prefix = f"loss.{section_name(name)}"
    if "eps" in options:  # needs the SDE: checked here, not by losses.make
        _require(_finite(options["eps"]) and 0 < options["eps"] < sde.T, f"{prefix}.eps",
                 options["eps"], f"the smallest training time must be in (0, T={sde.T})")
    if name == "vdm_vlb":
        # A learned schedule is checked at its initial parameters (its endpoints). Only
        # std(T) is checked: the prior KL term is exact for any mean_coeff(T), and VDM's own
        # gamma_max = 5 leaves mean_coeff(1) = sqrt(sigmoid(-5)) = 0.082.
        initial = sde.bind(sde.init(jax.random.PRNGKey(0)))
        std = float(initial.marginal(jnp.asarray(sde.T))[1])
        _require(abs(std - 1.0) < 1e-2, "loss.name", name,
                 "VDM's bound needs an SDE whose prior is N(0, I) (the VP family), not "
                 f"sde.name={config.sde.name!r}")
        options = dict(options, num_levels=data.num_levels, data_range=data.data_range)
    elif getattr(sde, "learned", False):
        raise ConfigError(f"sde.{config.sde.name}.learned=True trains the noise schedule by "
                          f"VDM's bound: it needs loss.name='vdm_vlb', not {name!r}")
    return name, _make(losses.make, name, options, prefix)


def _train(config) -> TrainSpec:
    t = config.train
    for field in ("batch_size", "num_steps", "steps_per_dispatch", "max_to_keep",
                  "grad_accum_steps"):
        _positive_int(f"train.{field}", t[field])
    _require(t.batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps",
             t.grad_accum_steps, f"must divide train.batch_size={t.batch_size}")
    for field in ("log_every_steps", "checkpoint_every_steps", "sample_every_steps"):
        _nonnegative_int(f"train.{field}", t[field])
    return TrainSpec(t.batch_size, t.num_steps, t.steps_per_dispatch, t.log_every_steps,
                     t.checkpoint_every_steps, t.sample_every_steps, t.max_to_keep,
                     t.eval_at_end, t.grad_accum_steps)


def _optim(config) -> OptimSpec:
    o = config.optim
    _choice("optim.optimizer", o.optimizer, OPTIMIZERS)
    _require(_finite(o.lr) and o.lr > 0, "optim.lr", o.lr, "must be finite and > 0")
    for field in ("beta1", "beta2", "ema_rate"):
        _require(_finite(o[field]) and 0 <= o[field] < 1, f"optim.{field}", o[field],
                 "must be in [0, 1)")
    _require(_finite(o.eps) and o.eps > 0, "optim.eps", o.eps, "must be finite and > 0")
    _require(_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay",
             o.weight_decay, "must be finite and >= 0")
    _nonnegative_int("optim.warmup_steps", o.warmup_steps)
    _require(_finite(o.grad_clip), "optim.grad_clip", o.grad_clip,
             "must be finite (<= 0 disables clipping)")
    _choice("optim.schedule", o.schedule, LR_SCHEDULES)
    _require(_finite(o.min_lr_ratio) and 0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio",
             o.min_lr_ratio, "must be in [0, 1]")
    return OptimSpec(o.optimizer, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay,
                     o.warmup_steps, o.grad_clip, o.ema_rate, o.schedule, o.min_lr_ratio,
                     max(1, config.train.num_steps))


def _sampler(config) -> SamplerSpec:
    name, options = _registry_options(config, "sample")
    spec = SamplerSpec(name, tuple(sorted(options.items())), config.sample.num_samples,
                       config.sample.batch_size)
    _positive_int("sample.num_samples", spec.num_samples)
    _positive_int("sample.batch_size", spec.batch_size)
    try:
        spec.make()  # checks every option's value
    except ValueError as e:
        raise ConfigError(f"sample.{section_name(name)}: {e}") from None
    return spec


def _eval(config, sde: sdes.SDE) -> EvalSpec:
    e = config.eval
    _positive_int("eval.num_samples", e.num_samples)
    _positive_int("eval.batch_size", e.batch_size)
    _choice("eval.feature_extractor", e.feature_extractor, FEATURE_EXTRACTORS)
    _choice("eval.bpd_estimator", e.bpd_estimator, BPD_ESTIMATORS)
    _positive_int("eval.bpd_num_passes", e.bpd_num_passes)
    _nonnegative_int("eval.bpd_num_examples", e.bpd_num_examples)
    for field in ("bpd_rtol", "bpd_atol"):
        _require(_finite(e[field]) and e[field] > 0, f"eval.{field}", e[field],
                 "must be finite and > 0")
    _require(_finite(e.bpd_t_min) and 0 < e.bpd_t_min < sde.T, "eval.bpd_t_min", e.bpd_t_min,
             f"must be in (0, T={sde.T})")
    _require(_finite(e.wait_seconds) and e.wait_seconds >= 0, "eval.wait_seconds",
             e.wait_seconds, "must be >= 0")
    steps = None
    if e.checkpoints.strip():
        try:
            steps = tuple(int(s) for s in e.checkpoints.split(","))
        except ValueError:
            raise ConfigError(f"eval.checkpoints={e.checkpoints!r} is not valid: give "
                              "comma-separated step numbers, e.g. '500,1000'") from None
    return EvalSpec(e.num_samples, e.batch_size, e.feature_extractor, e.inception_weights,
                    e.reference_stats, e.enable_bpd, e.bpd_num_passes, e.bpd_num_examples,
                    e.bpd_rtol, e.bpd_atol, e.bpd_estimator, e.bpd_t_min, steps,
                    e.wait_seconds, e.source_workdir or None)


def _label_dropout(config) -> float:
    p = config.train.label_dropout
    _require(_finite(p) and 0 <= p < 1, "train.label_dropout", p, "must be in [0, 1)")
    _require(p == 0 or config.model.num_classes > 0, "train.label_dropout", p,
             "label dropout needs a class-conditional model (model.num_classes > 0)")
    return float(p)


def _times(field: str, text: str, sde: sdes.SDE) -> tuple[float, ...]:
    if not text.strip():
        return (sde.t_min,) + tuple(sde.T * k / 10 for k in range(1, 11))
    try:
        times = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"{field}={text!r} is not valid: give comma-separated times, e.g. "
                          "'0.1,0.5,1.0'") from None
    _require(all(_finite(t) and 0 < t <= sde.T for t in times), field, text,
             f"every time must be in (0, T={sde.T}]")
    return times


def _classifier(config, sde: sdes.SDE) -> ClassifierSpec:
    c, model_classes = config.classifier, config.model.num_classes
    _choice("classifier.size", c.size, models.sizes("classifier"))
    _nonnegative_int("classifier.num_classes", c.num_classes)
    _require(c.num_classes != 1, "classifier.num_classes", c.num_classes,
             "a classifier needs >= 2 classes (0: model.num_classes)")
    _require(not (model_classes and c.num_classes not in (0, model_classes)),
             "classifier.num_classes", c.num_classes,
             f"must be 0 or model.num_classes={model_classes} (it classifies the model's labels)")
    for field in ("batch_size", "num_steps", "eval_repeats"):
        _positive_int(f"classifier.{field}", c[field])
    for field in ("log_every_steps", "checkpoint_every_steps", "warmup_steps"):
        _nonnegative_int(f"classifier.{field}", c[field])
    _require(_finite(c.lr) and c.lr > 0, "classifier.lr", c.lr, "must be finite and > 0")
    _require(_finite(c.weight_decay) and c.weight_decay >= 0, "classifier.weight_decay",
             c.weight_decay, "must be finite and >= 0")
    _require(_finite(c.ema_rate) and 0 <= c.ema_rate < 1, "classifier.ema_rate", c.ema_rate,
             "must be in [0, 1)")
    _require(_finite(c.eps) and 0 < c.eps < sde.T, "classifier.eps", c.eps,
             f"the smallest training time must be in (0, T={sde.T})")
    _require(_finite(c.sigma_data) and c.sigma_data > 0, "classifier.sigma_data",
             c.sigma_data, "must be finite and > 0")
    num_classes = c.num_classes or model_classes
    net = None
    if num_classes:
        net = _make(models.make, "classifier", {"size": c.size, "num_classes": num_classes},
                    "classifier")
    optim = OptimSpec("adamw" if c.weight_decay > 0 else "adam", c.lr, 0.9, 0.999, 1e-8,
                      c.weight_decay, c.warmup_steps, 1.0, c.ema_rate, "constant", 0.0,
                      c.num_steps)
    return ClassifierSpec(net, c.size, num_classes, c.batch_size, c.num_steps, optim, c.eps,
                          c.sigma_data, c.log_every_steps, c.checkpoint_every_steps,
                          _times("classifier.eval_times", c.eval_times, sde), c.eval_repeats,
                          c.workdir)


def _guidance(config, classifier: ClassifierSpec, label_dropout: float) -> GuidanceSpec:
    s, model_classes = config.sample, config.model.num_classes
    _choice("sample.guidance", s.guidance, GUIDANCE)
    _require(_finite(s.guidance_scale) and s.guidance_scale >= 0, "sample.guidance_scale",
             s.guidance_scale, "must be finite and >= 0")
    if s.guidance == "classifier_free":
        _require(model_classes > 0, "sample.guidance", s.guidance,
                 "classifier-free guidance needs a class-conditional model (model.num_classes "
                 "> 0) trained with train.label_dropout > 0; for an unconditional model use "
                 "sample.guidance='classifier'")
    if s.guidance != "none" and model_classes > 0:
        _require(label_dropout > 0, "sample.guidance", s.guidance,
                 "guidance needs the network's unconditional ('no label') score, which is "
                 "trained only with train.label_dropout > 0 (e.g. 0.1)")
    num_classes = model_classes
    if s.guidance == "classifier":
        _require(classifier.num_classes > 0, "sample.guidance", s.guidance,
                 "the model is unconditional: set classifier.num_classes (e.g. 10 for digits)")
        num_classes = classifier.num_classes
    _require(isinstance(s.label, int), "sample.label", s.label, "must be an int")
    if num_classes == 0:
        _require(s.label == -1, "sample.label", s.label,
                 "the model is unconditional (model.num_classes=0): labels need a "
                 "class-conditional model or sample.guidance='classifier'")
    else:
        _require(-1 <= s.label < num_classes, "sample.label", s.label,
                 f"must be in [0, {num_classes}), or -1 for all classes")
    return GuidanceSpec(s.label, s.guidance, float(s.guidance_scale), num_classes)


MASKS = ("half", "center", "random")
INVERSE_METHODS = ("replacement", "guidance")        # = inverse.INPAINT_METHODS
SCORE_METHODS = ("bpd", "reconstruction", "score_norm", "score_norm_gmm")


def _inverse(config, sde: sdes.SDE, data: DataSpec) -> InverseSpec:
    v = config.inverse
    _nonnegative_int("inverse.num_examples", v.num_examples)
    _positive_int("inverse.batch_size", v.batch_size)
    _choice("inverse.mask", v.mask, MASKS)
    _require(_finite(v.mask_fraction) and 0 < v.mask_fraction < 1, "inverse.mask_fraction",
             v.mask_fraction, "the fraction of hidden pixels must be in (0, 1)")
    _choice("inverse.method", v.method, INVERSE_METHODS)
    _require(_finite(v.guidance_scale) and v.guidance_scale >= 0, "inverse.guidance_scale",
             v.guidance_scale, "must be finite and >= 0")
    _require(_finite(v.data_var) and v.data_var > 0, "inverse.data_var", v.data_var,
             "must be finite and > 0")
    _require(_finite(v.guidance_min_alpha) and 0 <= v.guidance_min_alpha < 1,
             "inverse.guidance_min_alpha", v.guidance_min_alpha,
             "must be in [0, 1) (0: guide at every t)")
    _require(_finite(v.noise_std) and v.noise_std > 0, "inverse.noise_std", v.noise_std,
             "must be finite and > 0 (data units)")
    _nonnegative_int("inverse.num_posterior_samples", v.num_posterior_samples)
    _require(_finite(v.t0) and 0 < v.t0 <= sde.T, "inverse.t0", v.t0,
             f"must be in (0, T] = (0, {sde.T}]")
    methods = tuple(m.strip() for m in v.score_methods.split(",") if m.strip())
    _require(len(methods) > 0, "inverse.score_methods", v.score_methods,
             f"name at least one of {list(SCORE_METHODS)}")
    for m in methods:
        _require(m in SCORE_METHODS, "inverse.score_methods", v.score_methods,
                 f"unknown method {m!r}; choose from {list(SCORE_METHODS)}")
    try:
        t0s = tuple(float(s) for s in v.reconstruction_t0s.split(","))
    except ValueError:
        t0s = ()
    _require(len(t0s) > 0 and all(math.isfinite(t) and 0 < t <= sde.T for t in t0s),
             "inverse.reconstruction_t0s", v.reconstruction_t0s,
             f"give comma-separated times in (0, T] = (0, {sde.T}]")
    _positive_int("inverse.score_norm_levels", v.score_norm_levels)
    _positive_int("inverse.gmm_components", v.gmm_components)
    anomalies = int_list("inverse.anomaly_classes", v.anomaly_classes) or data.exclude_classes
    return InverseSpec(v.num_examples, v.batch_size, v.mask, v.mask_fraction, v.mask_file,
                       v.method, v.guidance_scale, v.data_var, v.guidance_min_alpha,
                       v.noise_std,
                       v.num_posterior_samples, v.t0, methods, anomalies, t0s,
                       v.score_norm_levels, v.gmm_components)


def _log(config) -> LogSpec:
    from sde_lab import trackers

    try:
        trackers.check(config.log.tracker)
    except ValueError as e:
        raise ConfigError(f"log.tracker: {e}") from None
    return LogSpec(config.log.tracker, config.log.project)


def parallel_spec(config) -> ParallelSpec:
    p = config.parallel
    _choice("parallel.mode", p.mode, PARALLEL_MODES)
    _nonnegative_int("parallel.num_processes", p.num_processes)
    _require(isinstance(p.process_id, int) and p.process_id >= -1, "parallel.process_id",
             p.process_id, "must be an int >= 0, or -1 (from the environment)")
    cache = p.compilation_cache
    _require(isinstance(cache, str), "parallel.compilation_cache", cache,
             "must be a directory path, 'auto' (the default directory), 'none' (no cache) "
             "or '' (JAX's own setting)")
    cache_is_default = cache.strip().lower() == "auto"
    if cache_is_default:
        cache = parallel.default_cache_dir()
    if cache.strip().lower() == "none":
        path = "none"
    else:
        path = os.path.abspath(os.path.expanduser(cache)) if cache else None
        _require(path is None or not os.path.exists(path) or os.path.isdir(path),
                 "parallel.compilation_cache", p.compilation_cache,
                 f"{path} exists and is not a directory")
    kernels = p.get("cpu_convolutions", "xla")
    _choice("parallel.cpu_convolutions", kernels, parallel.CPU_CONVOLUTIONS)
    scheduler = p.get("cpu_scheduler", "memory")
    _choice("parallel.cpu_scheduler", scheduler, list(parallel.CPU_SCHEDULERS))
    return ParallelSpec(p.mode, p.coordinator_address or None, p.num_processes or None,
                        None if p.process_id < 0 else p.process_id, path, kernels, scheduler,
                        cache_is_default)


def build(config: ml_collections.ConfigDict) -> Experiment:
    """Checks the config and builds the experiment (no data read, nothing compiled).

    Raises:
      ConfigError: the first bad field, in one line naming it and what is valid.
    """
    _require(isinstance(config.seed, int), "seed", config.seed, "must be an int")
    sde = _sde(config)
    data = _data(config)
    loss_name, loss = _loss(config, sde, data)
    net = _net(config)
    label_dropout = _label_dropout(config)
    classifier = _classifier(config, sde)
    return Experiment(
        seed=config.seed, sde=sde, net=net,
        param=parameterization.make(config.model.parameterization), loss=loss,
        loss_name=loss_name, num_classes=config.model.num_classes, data=data,
        train=_train(config), optim=_optim(config), sampler=_sampler(config),
        eval=_eval(config, sde), parallel=parallel_spec(config), log=_log(config),
        label_dropout=label_dropout, guidance=_guidance(config, classifier, label_dropout),
        classifier=classifier,
        inverse=_inverse(config, sde, data) if "inverse" in config else None)


def check_shapes(exp: Experiment) -> None:
    """Shape-only traces (nothing is computed or compiled): the network's init rejects image
    sizes it cannot take; the sampler, run on this SDE with a stand-in score, rejects
    options that are wrong only for it (t_min outside (0, T), sigma_max below the noise at
    t_min, a grid its discrete chain cannot take)."""
    try:  # the key is made inside: nothing runs eagerly
        jax.eval_shape(lambda: exp.init_params(jax.random.PRNGKey(0)))
    except ValueError as e:
        raise ConfigError(f"model {type(exp.net).__name__} cannot take input {exp.shape}: "
                          f"{e}") from None
    sample_fn = exp.sampler.make()

    def probe():
        key = jax.random.PRNGKey(0)
        return sample_fn(key, exp.sde_of(exp.init_params(key)), lambda x, t: -x,
                         (1,) + exp.shape)

    try:
        jax.eval_shape(probe)
    except ValueError as e:
        raise ConfigError(f"sample.{section_name(exp.sampler.name)}: "
                          f"{' '.join(str(e).split())}") from None


def check_classifier_shapes(exp: Experiment) -> None:
    """The classifier takes the data's shape (shape-only trace, nothing compiled)."""
    try:
        jax.eval_shape(lambda: exp.classifier.init_params(jax.random.PRNGKey(0), exp.shape))
    except ValueError as e:
        raise ConfigError(f"classifier.size={exp.classifier.size!r} cannot take input "
                          f"{exp.shape}: {e}") from None


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------- config files

def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path[:variant]` the way main.py's --config flag does (get_config(variant)).

    Raises:
      ConfigError: a missing or unreadable file, a syntax error, no get_config, a variant
        the file rejects, or a result that is not a ConfigDict; one line each.
    """
    import importlib.util
    import traceback

    path, _, variant = spec.partition(":")
    if not path:
        raise ConfigError("--config is empty; give a config file, e.g. configs/digits.py")
    if not os.path.exists(path):
        raise ConfigError(f"--config {path!r}: no such file")
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ConfigError(f"--config {path!r}: not a Python config file (*.py)")
    module_spec = importlib.util.spec_from_file_location("_sde_lab_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"--config {path!r}: syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # the file's own code failed: show where, in one line
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise ConfigError(f"--config {path!r}: {type(e).__name__}: {e} (at "
                          f"{os.path.basename(where.filename)}:{where.lineno})") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"--config {path!r} defines no get_config()")
    try:
        config = module.get_config(variant) if variant else module.get_config()
    except Exception as e:  # e.g. ValueError for an unknown variant
        raise ConfigError(f"--config {spec!r}: {' '.join(str(e).split())}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config {spec!r}: get_config() returned a "
                          f"{type(config).__name__}, not an ml_collections.ConfigDict")
    return config


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
    import difflib

    close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config field '{key}'{hint}"
