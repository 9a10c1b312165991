"""sde_lab command line: flags only; the work happens in sde_lab.run.

  python main.py --config configs/digits.py --workdir DIR [--mode train|eval|sample|...]
  python main.py --config configs/digits.py:runlocal --workdir DIR --config.train.num_steps=20
  python main.py --config configs/cifar10_ddpmpp_vp.py --dry_run

Every bad input (config file, field, value, workdir) ends the program with one `error:`
line and a non-zero exit before anything is compiled.
"""

import os
import sys

from sde_lab import interrupts

interrupts.install()  # first: a signal during start-up is one line, not a traceback

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_string("mode", "train", "What to run: train | eval | sample | "
                            "train_classifier | inpaint | colorize | sdedit | denoise | score "
                            "(see sde_lab/run.py MODES).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved config and parameter "
                             "count, then exit.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Go on in a workdir whose recorded config differs in "
    "fields that define the run (e.g. resume with another learning rate on purpose); the "
    "change is logged to WORKDIR/config_changes.jsonl.")


def _fail(message: str):
    sys.exit(f"error: {' '.join(str(message).split())}")


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected argument(s) {argv[1:]}; options are --flags (see --help)")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore at INFO
    from sde_lab import evaluate, experiment, run, workdir

    if not _DRY_RUN.value and not (_WORKDIR.value or "").strip():
        _fail("--workdir is required (a directory for checkpoints, logs and results)")
    try:
        experiment.check_overrides(_CONFIG.value, _overridden(sys.argv))
        return run.main(_CONFIG.value, _WORKDIR.value, _MODE.value, _DRY_RUN.value,
                        _ALLOW_CHANGE.value)
    except (run.ConfigError, workdir.WorkdirError, evaluate.NoCheckpoint) as e:
        _fail(e)


def _overridden(argv) -> list[str]:
    return [a[len("--config."):].split("=")[0] for a in argv[1:] if a.startswith("--config.")]


def _parse_flags_or_exit(argv):
    """Parses flags once up front so every bad command line is one line, not a traceback."""
    from sde_lab import experiment

    spec = _config_spec(argv)
    try:
        base = experiment.load_config(spec)
    except experiment.ConfigError as e:
        _fail(e)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # absl and ml_collections raise several types for bad values
        unknown = [k for k in _overridden(argv) if k not in experiment.flat_keys(base)]
        _fail(experiment.suggest(unknown[0], base) if unknown else str(e).strip("'\""))


def _config_spec(argv) -> str:
    spec = _DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config":
            spec = argv[i + 1] if i + 1 < len(argv) else ""
    return spec


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags_or_exit)
