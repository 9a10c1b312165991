"""The `:runlocal` variant shared by every config: the same experiment, shrunk to run on a
laptop CPU in under a minute (tiny network, small batch, a few steps, cheap eval)."""


def shrink(config):
    config.model.size = "tiny"
    config.train.batch_size = 8
    config.train.num_steps = 20
    config.train.log_every_steps = 5
    config.train.checkpoint_every_steps = 10
    config.optim.warmup_steps = 0
    config.sample.sampler = "dpm_solver++"
    config.sample.num_steps = 10
    config.sample.num_samples = 16
    config.sample.batch_size = 8
    config.eval.num_samples = 16
    config.eval.batch_size = 8
    config.eval.bpd_num_examples = 8
    config.eval.bpd_rtol = 1e-3
    config.eval.bpd_atol = 1e-3
    return config
