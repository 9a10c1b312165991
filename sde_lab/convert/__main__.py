"""python -m sde_lab.convert score_sde|score_sde_pytorch --checkpoint PATH --config CONFIG
--workdir DIR [--config.field=value ...] [--noema]

Converts a reference checkpoint into an sde_lab workdir whose checkpoint `main.py --mode
sample` and `--mode eval` use with the same --config. See sde_lab/convert/__init__.py.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sde_lab.convert import core, mapping, workdir
from sde_lab.convert.readers import ConversionError

_CONFIG = config_flags.DEFINE_config_file("config", None, "sde_lab config file[:variant] "
                                          "whose network the checkpoint fills.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Reference checkpoint file (or a "
                                  "directory: its latest checkpoint_N[.pth]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "sde_lab workdir to create.")
_EMA = flags.DEFINE_bool("ema", True, "Convert the EMA weights (as the reference's "
                         "evaluation does); --noema converts the raw weights.")

USAGE = ("usage: python -m sde_lab.convert score_sde|score_sde_pytorch --checkpoint PATH "
         "--config CONFIG --workdir DIR")


def main(argv) -> int:
    logging.set_verbosity(logging.WARNING)
    if len(argv) != 2 or argv[1] not in mapping.FORMATS:
        sys.exit(f"error: give the checkpoint format {list(mapping.FORMATS)} first\n{USAGE}")
    missing = [f"--{f}" for f, v in (("checkpoint", _CHECKPOINT.value),
                                     ("config", _CONFIG.value), ("workdir", _WORKDIR.value))
               if v is None]
    if missing:
        sys.exit(f"error: {', '.join(missing)} required\n{USAGE}")
    from sde_lab import experiment
    from sde_lab import workdir as workdir_lib

    fmt, config = argv[1], _CONFIG.value
    try:
        existing = workdir.existing_checkpoints(_WORKDIR.value)
        if existing:
            raise ConversionError(f"{_WORKDIR.value} already has checkpoints {existing}; "
                                  "convert into a new workdir")
        net, x_shape = workdir.build_network(config)
        variables, step = core.load(fmt, _CHECKPOINT.value, net, x_shape, ema=_EMA.value)
        path = workdir.write_workdir(config, _WORKDIR.value, variables, step)
    except (ConversionError, experiment.ConfigError, workdir_lib.WorkdirError,
            FileNotFoundError) as e:
        sys.exit(f"error: {' '.join(str(e).split())}")
    count = sum(a.size for a in mapping.leaves(variables["params"]).values())
    print(f"converted {fmt} checkpoint (step {step}, {'EMA' if _EMA.value else 'raw'} "
          f"weights, {count:,} parameters) into {path}; sample with: python main.py "
          f"--config <same config> --workdir {_WORKDIR.value} --mode sample", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
