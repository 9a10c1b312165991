"""Each published config against its authors' own config, field by field (issue #18, 5).

The tables hold the sources' values under the sources' own field names, copied from the
files named with them: yang-song/score_sde, ermongroup/ncsnv2, hojonathanho/diffusion,
google-research/vdm, NVlabs/edm and gnobitab/RectifiedFlow (facts their code fixes outside the config files are constants
with the file named). `_from_score_sde`, `_from_ncsnv2`, `_from_ddpm` and `_from_vdm`
translate them into sde_lab's fields, e.g. score_sde's reduce_mean=False is
reduce="sum", which is its 1/2 x sum. The configs are only built (experiment.build:
nothing read, nothing compiled).
"""

import math

import pytest

from configs import cifar10
from sde_lab import experiment

# ---------------------------------------------------------------- yang-song/score_sde

SCORE_SDE_ADAM_BETA2 = 0.999      # losses.py get_optimizer: flax.optim.Adam's default beta2
SCORE_SDE_LOSS_EPS = 1e-5         # losses.py get_sde_loss_fn(..., eps=1e-5)
# run_lib.py train(): sampling_eps per SDE.
SCORE_SDE_SAMPLING_EPS = {"vesde": 1e-5, "vpsde": 1e-3, "subvpsde": 1e-3}

_SCORE_SDE_COMMON = {  # the fields the three default_*_configs.py files share
    "training.likelihood_weighting": False, "training.continuous": True,
    "training.reduce_mean": False, "sampling.n_steps_each": 1,
    "data.random_flip": True, "data.uniform_dequantization": False, "data.centered": False,
    "model.sigma_min": 0.01, "model.beta_min": 0.1, "model.beta_max": 20.0,
    "optim.weight_decay": 0, "optim.optimizer": "Adam", "optim.lr": 2e-4,
    "optim.beta1": 0.9, "optim.eps": 1e-8, "optim.warmup": 5000, "optim.grad_clip": 1.0,
}
SCORE_SDE_DEFAULTS = {
    "configs/default_cifar10_configs.py": dict(
        _SCORE_SDE_COMMON, **{"training.batch_size": 128, "training.n_iters": 1300001,
                              "sampling.snr": 0.16, "model.sigma_max": 50,
                              "model.num_scales": 1000, "model.dropout": 0.1}),
    "configs/default_celeba_configs.py": dict(
        _SCORE_SDE_COMMON, **{"training.batch_size": 128, "training.n_iters": 1300001,
                              "sampling.snr": 0.17, "model.sigma_max": 90.0,
                              "model.num_scales": 1000, "model.dropout": 0.1}),
    "configs/default_lsun_configs.py": dict(
        _SCORE_SDE_COMMON, **{"training.batch_size": 64, "training.n_iters": 2400001,
                              "sampling.snr": 0.075, "model.sigma_max": 378,
                              "model.num_scales": 2000, "model.dropout": 0.0}),
}
_VE = {"training.sde": "vesde", "sampling.method": "pc",
       "sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin",
       "model.ema_rate": 0.999}
_DDPMPP = {"training.continuous": True, "training.reduce_mean": True, "sampling.method": "pc",
           "sampling.predictor": "euler_maruyama", "sampling.corrector": "none",
           "data.centered": True, "model.ema_rate": 0.9999}
C10, CELEBA, LSUN = SCORE_SDE_DEFAULTS  # the three defaults files, in order
# sde_lab config -> (score_sde experiment file, the defaults it starts from, its overrides)
SCORE_SDE_RUNS = {
    "cifar10_ncsnpp_ve.py": ("configs/ve/cifar10_ncsnpp_continuous.py", C10,
                             dict(_VE, **{"training.continuous": True})),
    "cifar10_ncsnpp_ve_deep.py": ("configs/ve/cifar10_ncsnpp_deep_continuous.py", C10,
                                  dict(_VE, **{"training.continuous": True,
                                               "training.n_iters": 950001})),
    "cifar10_ddpmpp_vp.py": ("configs/vp/cifar10_ddpmpp_continuous.py", C10,
                             dict(_DDPMPP, **{"training.sde": "vpsde"})),
    "cifar10_ddpmpp_subvp.py": ("configs/subvp/cifar10_ddpmpp_continuous.py", C10,
                                dict(_DDPMPP, **{"training.sde": "subvpsde"})),
    "cifar10_ddpmpp_subvp_deep.py": ("configs/subvp/cifar10_ddpmpp_deep_continuous.py", C10,
                                     dict(_DDPMPP, **{"training.sde": "subvpsde",
                                                      "training.n_iters": 950001})),
    "celeba64_ncsnpp_ve.py": ("configs/ve/celeba_ncsnpp.py", CELEBA,
                              dict(_VE, **{"training.continuous": False})),
    "lsun_church256_ncsnpp_ve.py": ("configs/ve/church_ncsnpp_continuous.py", LSUN,
                                    dict(_VE, **{"training.continuous": True,
                                                 "model.sigma_max": 380})),
}
# datasets.py get_dataset: CelebA is cropped to its central 140x140 before resizing; the
# evaluation split of CELEBA and LSUN is 'validation'.
SCORE_SDE_DATA = {"configs/default_celeba_configs.py": {"data.center_crop": 140,
                                                        "data.eval_split": "validation"},
                  "configs/default_lsun_configs.py": {"data.eval_split": "validation"}}

_PREDICTORS = {"reverse_diffusion": "reverse_diffusion", "euler_maruyama": "euler_maruyama",
               "ancestral_sampling": "ancestral", "none": "none"}
_CORRECTORS = {"langevin": "langevin", "ald": "annealed_langevin", "none": "none"}


def _from_score_sde(defaults: str, overrides: dict) -> dict:
    c = dict(SCORE_SDE_DEFAULTS[defaults], **overrides)
    sde = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}[c["training.sde"]]
    out = {
        "sde.name": sde, "sde.t_min": SCORE_SDE_SAMPLING_EPS[c["training.sde"]],
        # run_lib.py's loop saves its last checkpoint at step n_iters - 1.
        "train.batch_size": c["training.batch_size"], "train.num_steps": c["training.n_iters"] - 1,
        "optim.optimizer": c["optim.optimizer"].lower(), "optim.lr": c["optim.lr"],
        "optim.beta1": c["optim.beta1"], "optim.beta2": SCORE_SDE_ADAM_BETA2,
        "optim.eps": c["optim.eps"], "optim.weight_decay": c["optim.weight_decay"],
        "optim.warmup_steps": c["optim.warmup"], "optim.schedule": "constant",
        "optim.grad_clip": c["optim.grad_clip"] if c["optim.grad_clip"] >= 0 else None,
        "optim.ema_rate": c["model.ema_rate"], "model.dropout": c["model.dropout"],
        "data.centered": c["data.centered"], "data.random_flip": c["data.random_flip"],
        "data.uniform_dequantization": c["data.uniform_dequantization"],
        "sample.sampler": c["sampling.method"],
        "sample.predictor": _PREDICTORS[c["sampling.predictor"]],
        "sample.corrector": _CORRECTORS[c["sampling.corrector"]],
        "sample.snr": c["sampling.snr"], "sample.n_steps_each": c["sampling.n_steps_each"],
        "sample.num_steps": c["model.num_scales"],
        "loss.reduce": "mean" if c["training.reduce_mean"] else "sum",
        **SCORE_SDE_DATA.get(defaults, {}),
    }
    if sde == "ve":
        out.update({"sde.sigma_min": c["model.sigma_min"], "sde.sigma_max": c["model.sigma_max"]})
    else:
        out.update({"sde.beta_min": c["model.beta_min"], "sde.beta_max": c["model.beta_max"]})
    if c["training.continuous"]:
        out.update({"loss.name": "dsm", "loss.eps": SCORE_SDE_LOSS_EPS,
                    "loss.weighting": "likelihood" if c["training.likelihood_weighting"]
                    else "std2", "loss.importance_sampling": False})
    else:  # losses.py get_step_fn: get_smld_loss_fn (VE) / get_ddpm_loss_fn (VP)
        out.update({"loss.name": {"ve": "smld", "vp": "ddpm"}[sde],
                    "loss.num_levels": c["model.num_scales"]})
    return out


# ---------------------------------------------------------------- ermongroup/ncsnv2

NCSNV2_CIFAR10 = {  # configs/cifar10.yml
    "training.batch_size": 128, "training.n_iters": 300001, "training.anneal_power": 2,
    "sampling.step_lr": 0.0000062, "sampling.n_steps_each": 5, "sampling.ckpt_id": 300000,
    "sampling.denoise": True,
    "data.random_flip": True, "data.rescaled": False, "data.uniform_dequantization": False,
    "model.sigma_begin": 50, "model.num_classes": 232, "model.ema": True,
    "model.ema_rate": 0.999, "model.sigma_dist": "geometric", "model.sigma_end": 0.01,
    "optim.weight_decay": 0.000, "optim.optimizer": "Adam", "optim.lr": 0.0001,
    "optim.beta1": 0.9, "optim.amsgrad": False, "optim.eps": 0.00000001,
}
NCSNV2_ADAM_BETA2 = 0.999   # losses/__init__.py get_optimizer: betas=(beta1, 0.999)
# runners/ncsn_runner.py train(): no learning-rate warmup, no gradient clipping;
# losses/dsm.py: 1/2 * sum over dimensions * sigma^anneal_power; models/ncsnv2.py: no
# dropout; models/__init__.py anneal_Langevin_dynamics: step = step_lr (sigma / sigma_L)^2.


def _from_ncsnv2(c: dict) -> dict:
    assert c["model.sigma_dist"] == "geometric" and c["training.anneal_power"] == 2
    assert c["model.ema"] and not c["optim.amsgrad"]
    return {
        "sde.name": "ve", "sde.sigma_min": c["model.sigma_end"],
        "sde.sigma_max": c["model.sigma_begin"],
        "sde.t_min": SCORE_SDE_SAMPLING_EPS["vesde"],   # score_sde's NCSNv2 run
        "loss.name": "smld", "loss.num_levels": c["model.num_classes"], "loss.reduce": "sum",
        "train.batch_size": c["training.batch_size"], "train.num_steps": c["sampling.ckpt_id"],
        "optim.optimizer": c["optim.optimizer"].lower(), "optim.lr": c["optim.lr"],
        "optim.beta1": c["optim.beta1"], "optim.beta2": NCSNV2_ADAM_BETA2,
        "optim.eps": c["optim.eps"], "optim.weight_decay": c["optim.weight_decay"],
        "optim.warmup_steps": 0, "optim.grad_clip": None, "optim.schedule": "constant",
        "optim.ema_rate": c["model.ema_rate"], "model.dropout": 0.0,
        "data.centered": c["data.rescaled"], "data.random_flip": c["data.random_flip"],
        "data.uniform_dequantization": c["data.uniform_dequantization"],
        "sample.sampler": "pc", "sample.predictor": "none",
        "sample.corrector": "annealed_langevin",
        "sample.n_steps_each": c["sampling.n_steps_each"],
        "sample.num_steps": c["model.num_classes"], "sample.denoise": c["sampling.denoise"],
        # 2 (snr sigma)^2 = step_lr (sigma / sigma_end)^2; score_sde's configs/ve/ncsnv2/
        # cifar10.py rounds it to snr = 0.176 (4e-4 relative).
        "sample.snr": pytest.approx(math.sqrt(c["sampling.step_lr"] / 2) / c["model.sigma_end"],
                                    rel=1e-3),
    }


# ---------------------------------------------------------------- hojonathanho/diffusion

DDPM_RUN_CIFAR = {  # scripts/run_cifar.py: the defaults of train()
    "optimizer": "adam", "total_bs": 128, "grad_clip": 1.0, "lr": 2e-4, "warmup": 5000,
    "num_diffusion_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
    "beta_schedule": "linear", "model_mean_type": "eps", "model_var_type": "fixedlarge",
    "loss_type": "mse", "dropout": 0.1, "randflip": 1,
}
DDPM_EMA_DECAY = 0.9999        # diffusion_tf/tpu_utils/tpu_utils.py run_training(ema_decay=)
DDPM_ADAM = (0.9, 0.999, 1e-8)  # diffusion_tf/utils.py make_optimizer: tf.train.AdamOptimizer
                                # (its default betas) with epsilon=1e-8
DDPM_NUM_STEPS = 800_000       # Ho et al. 2020, App. B (run_cifar.py sets no step limit)
# tpu_utils.py normalize_data = x / 127.5 - 1 (centred); diffusion_utils_2.py: the mse loss
# is nn.meanflat (mean over dimensions), sampling is p_sample_loop over all T levels.


def _from_ddpm(c: dict) -> dict:
    assert c["beta_schedule"] == "linear" and c["loss_type"] == "mse"
    T = c["num_diffusion_timesteps"]
    return {
        "sde.name": "vp", "sde.beta_min": c["beta_start"] * T, "sde.beta_max": c["beta_end"] * T,
        "sde.t_min": 1 / T,
        "loss.name": "ddpm", "loss.num_levels": T, "loss.reduce": "mean",
        "model.parameterization": c["model_mean_type"], "model.dropout": c["dropout"],
        "train.batch_size": c["total_bs"], "train.num_steps": DDPM_NUM_STEPS,
        "optim.optimizer": c["optimizer"], "optim.lr": c["lr"],
        "optim.beta1": DDPM_ADAM[0], "optim.beta2": DDPM_ADAM[1], "optim.eps": DDPM_ADAM[2],
        "optim.weight_decay": 0.0, "optim.warmup_steps": c["warmup"],
        "optim.grad_clip": c["grad_clip"], "optim.schedule": "constant",
        "optim.ema_rate": DDPM_EMA_DECAY,
        "data.centered": True, "data.random_flip": bool(c["randflip"]),
        "data.uniform_dequantization": False,
        "sample.sampler": "ancestral", "sample.num_steps": T,
    }


# ---------------------------------------------------------------- google-research/vdm

VDM_CIFAR10 = {  # configs/cifar10.py
    "data.dataset": "cifar10",
    "model.vocab_size": 256, "model.antithetic_time_sampling": True,
    "model.gamma_type": "learnable_scalar", "model.gamma_min": -13.3, "model.gamma_max": 5.0,
    "model.sm_n_timesteps": 0, "model.sm_pdrop": 0.1,
    "training.num_steps_lr_warmup": 100, "training.num_steps_train": 10_000_000,
    "training.batch_size_train": 128,
    "optimizer.name": "adamw", "optimizer.args.b1": 0.9, "optimizer.args.b2": 0.99,
    "optimizer.args.eps": 1e-8, "optimizer.args.weight_decay": 0.01,
    "optimizer.learning_rate": 2e-4, "optimizer.lr_decay": False, "optimizer.ema_rate": 0.9999,
}
# experiment.py get_optimizer: clipping only with optimizer.gradient_clip_norm (absent);
# dataset.py: 'cifar10' is _preprocess_cifar10 (no flips); model_vdm.py: t ~ U[0, 1);
# experiment_vdm.py sample_fn: T = 1000 ancestral steps when sm_n_timesteps = 0.
VDM_SAMPLE_STEPS = 1000


def _from_vdm(c: dict) -> dict:
    assert c["data.dataset"] == "cifar10" and c["model.sm_n_timesteps"] == 0
    return {
        # sde_lab learns VDM's monotone-network schedule, not 'learnable_scalar' (see
        # configs/cifar10.py); both learn the endpoints the continuous-time VLB depends on.
        "sde.name": "vdm", "sde.learned": c["model.gamma_type"].startswith("learnable"),
        "sde.gamma_min": c["model.gamma_min"], "sde.gamma_max": c["model.gamma_max"],
        "loss.name": "vdm_vlb", "loss.antithetic": c["model.antithetic_time_sampling"],
        "loss.t_min": 0.0, "loss.num_levels": c["model.vocab_size"],
        "model.dropout": c["model.sm_pdrop"],
        "train.batch_size": c["training.batch_size_train"],
        "train.num_steps": c["training.num_steps_train"],
        "optim.optimizer": c["optimizer.name"], "optim.lr": c["optimizer.learning_rate"],
        "optim.beta1": c["optimizer.args.b1"], "optim.beta2": c["optimizer.args.b2"],
        "optim.eps": c["optimizer.args.eps"],
        "optim.weight_decay": c["optimizer.args.weight_decay"],
        "optim.warmup_steps": c["training.num_steps_lr_warmup"],
        "optim.schedule": "linear" if c["optimizer.lr_decay"] else "constant",
        "optim.grad_clip": None, "optim.ema_rate": c["optimizer.ema_rate"],
        "data.centered": True, "data.random_flip": False, "data.uniform_dequantization": False,
        "sample.sampler": "ancestral", "sample.num_steps": VDM_SAMPLE_STEPS,
    }


# ---------------------------------------------------------------- NVlabs/edm

EDM_TRAIN = {  # train.py click defaults with --precond=edm (training_loop.py for the rest)
    "batch": 512, "duration_mimg": 200, "lr": 10e-4, "ema_mimg": 0.5, "dropout": 0.13,
    "lr_rampup_kimg": 10000, "adam_betas": (0.9, 0.999), "adam_eps": 1e-8,
    "xflip": False,                       # dataset_kwargs xflip default (augment is not run)
    "P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5,   # loss.py EDMLoss
    "num_steps": 18, "sigma_min": 0.002, "sigma_max": 80, "rho": 7, "S_churn": 0,  # generate.py
}


def _from_edm(c: dict) -> dict:
    steps = round(c["duration_mimg"] * 1e6 / c["batch"])
    return {
        "sde.name": "edm", "sde.sigma_min": c["sigma_min"], "sde.sigma_max": float(c["sigma_max"]),
        "loss.name": "edm", "loss.p_mean": c["P_mean"], "loss.p_std": c["P_std"],
        "loss.sigma_data": c["sigma_data"],
        "model.parameterization": "edm", "model.dropout": c["dropout"],
        "train.batch_size": c["batch"], "train.num_steps": steps,
        "optim.optimizer": "adam", "optim.lr": c["lr"], "optim.beta1": c["adam_betas"][0],
        "optim.beta2": c["adam_betas"][1], "optim.eps": c["adam_eps"],
        "optim.weight_decay": 0.0, "optim.schedule": "constant",
        "optim.warmup_steps": int(c["lr_rampup_kimg"] * 1e3 / c["batch"]),
        "optim.grad_clip": None,
        "optim.ema_rate": 0.5 ** (c["batch"] / (c["ema_mimg"] * 1e6)),
        "data.centered": True, "data.random_flip": c["xflip"],
        "data.uniform_dequantization": False,
        # sde_lab's heun counts steps between levels: 18 levels = 17 steps + the last to 0.
        "sample.sampler": "heun", "sample.num_steps": c["num_steps"] - 1,
        "sample.rho": float(c["rho"]), "sample.churn": float(c["S_churn"]),
    }


# ---------------------------------------------------------------- gnobitab/RectifiedFlow

RF_CIFAR10 = {  # configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py on score_sde's
    # configs/default_cifar10_configs.py
    "training.batch_size": 128, "training.n_iters": 1300001, "model.dropout": 0.15,
    "model.ema_rate": 0.999999, "optim.lr": 2e-4, "optim.warmup": 5000, "optim.grad_clip": 1.0,
    "optim.beta1": 0.9, "optim.eps": 1e-8, "optim.weight_decay": 0,
    "data.centered": True, "data.random_flip": True, "sampling.method": "rk45",
}


def _from_rectified_flow(c: dict) -> dict:
    return {
        "sde.name": "flow", "loss.name": "flow_matching", "loss.time_sampling": "uniform",
        "model.parameterization": "velocity", "model.dropout": c["model.dropout"],
        "train.batch_size": c["training.batch_size"],
        "train.num_steps": c["training.n_iters"] - 1,
        "optim.optimizer": "adam", "optim.lr": c["optim.lr"], "optim.beta1": c["optim.beta1"],
        "optim.beta2": SCORE_SDE_ADAM_BETA2, "optim.eps": c["optim.eps"],
        "optim.weight_decay": float(c["optim.weight_decay"]),
        "optim.warmup_steps": c["optim.warmup"], "optim.grad_clip": c["optim.grad_clip"],
        "optim.schedule": "constant", "optim.ema_rate": c["model.ema_rate"],
        "data.centered": c["data.centered"], "data.random_flip": c["data.random_flip"],
        "data.uniform_dequantization": False,
        # RK45 (scipy) there, Dopri5 (the same Runge-Kutta pair) in diffrax here.
        "sample.sampler": "ode", "sample.solver": "dopri5",
    }


# ---------------------------------------------------------------- the comparison

EXPECTED = {name: _from_score_sde(defaults, overrides)
            for name, (_, defaults, overrides) in SCORE_SDE_RUNS.items()}
EXPECTED["cifar10_ncsnv2.py"] = _from_ncsnv2(NCSNV2_CIFAR10)
EXPECTED["cifar10_ddpm.py"] = _from_ddpm(DDPM_RUN_CIFAR)
EXPECTED["cifar10_vdm.py"] = _from_vdm(VDM_CIFAR10)
EXPECTED["cifar10_ddpmpp_edm.py"] = EXPECTED["cifar10_ncsnpp_edm.py"] = _from_edm(EDM_TRAIN)
EXPECTED["cifar10_ddpmpp_flow.py"] = _from_rectified_flow(RF_CIFAR10)

SDE_FIELDS = ("t_min", "sigma_min", "sigma_max", "beta_min", "beta_max", "gamma_min",
              "gamma_max", "learned")


def _observed(config) -> dict:
    """The audited fields of the built experiment (and the choice names of the config)."""
    exp = experiment.build(config)
    o, d = exp.optim, exp.data
    out = {"sde.name": config.sde.name, "loss.name": exp.loss_name,
           "sample.sampler": exp.sampler.name,
           "model.parameterization": config.model.parameterization,
           "model.dropout": getattr(exp.net, "dropout", 0.0),
           "train.batch_size": exp.train.batch_size, "train.num_steps": exp.train.num_steps,
           "optim.grad_clip": o.grad_clip if o.grad_clip > 0 else None,
           "data.center_crop": d.center_crop, "data.eval_split": d.eval_split}
    for f in SDE_FIELDS:
        if hasattr(exp.sde, f):
            out[f"sde.{f}"] = getattr(exp.sde, f)
    for f in ("optimizer", "lr", "beta1", "beta2", "eps", "weight_decay", "warmup_steps",
              "schedule", "ema_rate"):
        out[f"optim.{f}"] = getattr(o, f)
    for f in ("centered", "random_flip", "uniform_dequantization"):
        out[f"data.{f}"] = getattr(d, f)
    out.update({f"loss.{k}": v for k, v in exp.loss.keywords.items()})
    out.update({f"sample.{k}": v for k, v in exp.sampler.options})
    return out


def test_every_published_config_has_a_source_table():
    published = {f"cifar10_{v}.py" for v in cifar10.VARIANTS}
    assert set(EXPECTED) == published | {"celeba64_ncsnpp_ve.py", "lsun_church256_ncsnpp_ve.py"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_config_follows_its_source(name):
    observed = _observed(experiment.load_config(f"configs/{name}"))
    wrong = []
    for field, want in EXPECTED[name].items():
        if isinstance(want, float):
            want = pytest.approx(want, rel=1e-12)
        if field not in observed or observed[field] != want:
            wrong.append(f"{field}: config {observed.get(field, '<absent>')!r}, source {want!r}")
    assert not wrong, f"configs/{name} differs from its source:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_runlocal_keeps_the_recipe_it_does_not_shrink(name):
    """`:runlocal` shrinks size, length, batch and sampler steps, nothing of the recipe."""
    full = _observed(experiment.load_config(f"configs/{name}"))
    local = _observed(experiment.load_config(f"configs/{name}:runlocal"))
    shrunk = {"train.batch_size", "train.num_steps", "optim.warmup_steps", "sample.num_steps"}
    same = {k for k in EXPECTED[name] if k not in shrunk}
    assert {k: local[k] for k in same} == {k: full[k] for k in same}
