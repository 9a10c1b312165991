"""Published CIFAR-10 experiments (Song et al. 2021; Ho et al. 2020; Song & Ermon 2020;
Kingma et al. 2021), one variant each. Needs CIFAR-10 prepared as array_record:

  pip install "sde_lab[tf]" && tfds build cifar10 --file_format=array_record
  python main.py --config configs/cifar10.py:ncsnpp_ve --workdir runs/ncsnpp_ve
  python main.py --config configs/cifar10.py:ddpmpp_vp,runlocal --workdir /tmp/c10   # laptop

| variant              | SDE / loss            | network            | published result                      |
|----------------------|-----------------------|--------------------|---------------------------------------|
| ncsnpp_ve            | VE, DSM               | ncsnpp_cont        | FID 2.38, IS 9.83 (Song+21, Table 3)  |
| ncsnpp_ve_deep       | VE, DSM               | ncsnpp_cont_deep   | FID 2.20, IS 9.89 (Song+21, Table 3)  |
| ddpmpp_vp            | VP, DSM               | ddpmpp_cont        | FID 2.55, IS 9.58 (Song+21, Table 3)  |
| ddpmpp_subvp         | sub-VP, DSM           | ddpmpp_cont        | FID 2.61, IS 9.56 (Song+21, Table 3)  |
| ddpmpp_subvp_deep    | sub-VP, likelihood wt | ddpmpp_cont_deep   | 2.99 bits/dim (Song+21, Table 2)      |
| ddpm                 | VP, DDPM eps-MSE      | ddpm cifar10       | FID 3.17, IS 9.46 (Ho+20, Table 1)    |
| ncsnv2               | VE, SMLD              | ncsnv2 cifar10     | FID 10.87, IS 8.40 (Song & Ermon 2020)|
| vdm                  | learned VP, VLB       | vdm cifar10        | 2.65 bits/dim (Kingma+21, Table 1)    |

Each trains 1.3M steps at batch 128 as in the papers (score_sde: 8 TPU v3 cores, days).
Append ",runlocal" to any variant for a one-minute laptop run of the same pipeline.
"""

from configs import default, runlocal

VARIANTS = ("ncsnpp_ve", "ncsnpp_ve_deep", "ddpmpp_vp", "ddpmpp_subvp", "ddpmpp_subvp_deep",
            "ddpm", "ncsnv2", "vdm")


def _cifar10(config):
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_levels = 256
    config.data.random_flip = True
    config.train.batch_size = 128
    config.train.num_steps = 1_300_000
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 50_000
    config.train.sample_every_steps = 50_000
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.ema_rate = 0.9999
    config.eval.num_samples = 50_000
    config.eval.batch_size = 500
    config.eval.feature_extractor = "inception"
    config.eval.bpd_num_passes = 5
    config.sample.sampler = "pc"


def _apply(config, variant):
    m, s, loss, pc = config.model, config.sde, config.loss, config.sample.pc
    if variant.startswith("ncsnpp_ve"):
        s.name, s.ve.sigma_max, s.ve.t_min = "ve", 50.0, 1e-5
        config.data.centered = False  # score_sde's VE models see [0, 1] data
        m.name, m.parameterization = "ncsnpp", "score"
        m.size = "ncsnpp_cont_deep" if variant.endswith("deep") else "ncsnpp_cont"
        pc.predictor, pc.corrector = "reverse_diffusion", "langevin"
    elif variant.startswith("ddpmpp"):
        s.name = "subvp" if "subvp" in variant else "vp"
        m.name, m.parameterization = "ncsnpp", "eps"
        m.size = "ddpmpp_cont_deep" if variant.endswith("deep") else "ddpmpp_cont"
        m.dropout = 0.1
        pc.predictor, pc.corrector = "euler_maruyama", "none"
        if variant == "ddpmpp_subvp_deep":
            loss.dsm.weighting, loss.dsm.importance_sampling = "likelihood", True
            config.data.uniform_dequantization = True
    elif variant == "ddpm":
        s.name, m.name, m.size, m.parameterization = "vp", "ddpm", "cifar10", "eps"
        loss.name, m.dropout = "ddpm", 0.1
        config.sample.sampler = "ancestral"
    elif variant == "ncsnv2":
        s.name, s.ve.sigma_min, s.ve.sigma_max = "ve", 0.01, 50.0
        config.data.centered = False
        m.name, m.size, m.parameterization = "ncsnv2", "cifar10", "score"
        loss.name, loss.smld.num_levels = "smld", 232
        pc.predictor, pc.corrector = "none", "annealed_langevin"
        pc.n_steps_each, pc.snr, pc.num_steps = 5, 0.176, 232
    elif variant == "vdm":
        s.name, s.vdm.learned = "vdm", True
        m.name, m.size, m.parameterization = "vdm", "cifar10", "eps_gamma"
        loss.name = "vdm_vlb"
        config.sample.sampler = "ancestral"


def get_config(arg: str | None = None):
    tokens = [t for t in (arg or "ddpmpp_vp").split(",") if t]
    variants = [t for t in tokens if t != "runlocal"] or ["ddpmpp_vp"]
    if len(variants) != 1 or variants[0] not in VARIANTS:
        raise ValueError(f"configs/cifar10.py: unknown variant '{arg}'; available: "
                         f"{list(VARIANTS)}, each optionally with ',runlocal'")
    config = default.get_default()
    _cifar10(config)
    _apply(config, variants[0])
    if "runlocal" in tokens:
        runlocal.shrink(config)
        config.eval.feature_extractor = "none"
    return config
