"""Class-conditional digits: the digits run (configs/digits.py) with labels, trained with
label dropout so that one network gives the conditional and the unconditional score
(classifier-free guidance), plus the settings of a noise-conditional classifier for
classifier guidance. Same network size, steps and batch as the digits run.

  python main.py --config configs/digits_conditional.py --workdir /tmp/dc   # train + eval
  python main.py --config configs/digits_conditional.py --workdir /tmp/dc --mode train_classifier
  python main.py --config configs/digits_conditional.py --workdir /tmp/dc --mode sample \\
      --config.sample.guidance=classifier --config.sample.guidance_scale=2

The eval reports, besides FID and bits/dim (of the unconditional score), the accuracy of
the samples under the shipped digits classifier for the class they were drawn for, and
FID per class; the sample grids have one row per digit. `experiments/digits_guidance.py`
sweeps the guidance scales; results and times are in README.md.
"""

from configs import digits


def get_config(arg: str | None = None):
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"configs/digits_conditional.py: unknown variant '{arg}'; "
                         "available: ['runlocal']")
    config = digits.get_config()
    # The conditional runs' sampler (README's guidance table), pinned: digits.py's default
    # sampler moved to reverse diffusion 200 (issue #15) after that table was measured.
    config.sample.sampler = "dpm_solver++"
    config.sample.dpm_solver_pp.num_steps = 50
    config.model.num_classes = 10
    config.train.label_dropout = 0.2
    config.sample.label = -1              # all classes: one row per digit
    config.sample.guidance = "classifier_free"
    config.sample.guidance_scale = 2.0
    config.sample.num_samples = 100
    config.sample.batch_size = 100
    config.classifier.size = "digits"
    config.classifier.num_steps = 2000
    config.classifier.batch_size = 128
    if arg == "runlocal":
        digits.variant(config, arg, "configs/digits_conditional.py")
        config.sample.num_samples = 20
        config.sample.batch_size = 10
        config.classifier.size = "tiny"
        config.classifier.num_steps = 10
        config.classifier.batch_size = 8
        config.classifier.log_every_steps = 5
        config.classifier.checkpoint_every_steps = 5
        config.classifier.eval_times = "0.1,0.5,1.0"
        config.classifier.eval_repeats = 1
    return config
