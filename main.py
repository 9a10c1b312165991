"""sde_lab command line: flags only; the work happens in sde_lab.run.

  python main.py --config configs/digits.py --workdir DIR [--mode train|eval|sample]
  python main.py --config configs/digits.py:runlocal --workdir DIR --config.train.num_steps=20
  python main.py --config configs/cifar10_ddpmpp_vp.py --workdir DIR --dry_run
"""

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved config and parameter "
                             "count, then exit.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
    from sde_lab import run

    if _WORKDIR.value is None and not _DRY_RUN.value:
        sys.exit("error: --workdir is required")
    workdir = _WORKDIR.value or "/tmp/sde_lab_dry_run"
    try:
        return run.main(_CONFIG.value, workdir, _MODE.value, _DRY_RUN.value)
    except (run.ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


def _parse_flags_or_exit(argv):
    """Parses flags once up front so a mistyped config field is one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, ValueError, flags.Error) as e:
        message = " ".join(str(e).strip("'\"").replace("\\n", " ").split())
        from sde_lab import run

        base = _load_base_config(argv)
        unknown = [a[len("--config."):].split("=")[0] for a in argv[1:]
                   if a.startswith("--config.")]
        unknown = [k for k in unknown if k not in run.flat_keys(base)]
        sys.exit(f"error: {run.suggest(unknown[0], base) if unknown else message}")


def _load_base_config(argv):
    spec = _DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    path, _, variant = spec.partition(":")

    mod_spec = importlib.util.spec_from_file_location("_cfg", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags_or_exit)
