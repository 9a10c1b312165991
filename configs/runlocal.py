"""The `:runlocal` variant shared by every config: the same experiment, shrunk to run on a
laptop CPU in under a minute (tiny network, small batch, a few steps, cheap eval). The
configured sampler is kept, with few steps (or loose tolerances for `ode`)."""

from sde_lab.registry import section_name


def shrink(config):
    config.model.size = "tiny"
    config.train.batch_size = 8
    config.train.num_steps = 20
    config.train.log_every_steps = 5
    config.train.checkpoint_every_steps = 10
    config.optim.warmup_steps = 0
    options = config.sample[section_name(config.sample.sampler)]
    if "num_steps" in options:
        # VP's discrete reverse-diffusion chain needs beta(t) dt < 1: beta_max 20 on T = 1
        # takes more than 20 steps.
        options.num_steps = 25 if config.sample.sampler == "reverse_diffusion" else 10
    if "rtol" in options:
        options.rtol, options.atol = 1e-3, 1e-3
    config.sample.num_samples = 16
    config.sample.batch_size = 8
    config.eval.num_samples = 16
    config.eval.batch_size = 8
    config.eval.bpd_num_examples = 8
    config.eval.bpd_rtol = 1e-3
    config.eval.bpd_atol = 1e-3
    return config
