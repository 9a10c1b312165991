"""Anomaly detection on digits, one class held out: 10 trainings of configs/digits.py, each
without one digit class in its train split (`data.exclude_classes`), then `--mode score`
on the test split, where the held-out class is the anomaly (inverse.anomaly_classes
defaults to data.exclude_classes): AUROC of bpd, reconstruction and score_norm.

    python -m sde_lab.sweep run experiments/digits_leave_one_out.py --launcher=local \\
        --root workdirs/digits_loo --dry_run            # the 10 command lines
    python -m sde_lab.sweep run experiments/digits_leave_one_out.py --launcher=local \\
        --root workdirs/digits_loo                      # train (~8 min each, 2 quiet cores)
    for c in 0 1 2 3 4 5 6 7 8 9; do
      python main.py --config configs/digits.py --mode score \\
        --workdir workdirs/digits_loo/data.exclude_classes=$c --config.data.exclude_classes=$c \\
        --config.eval.bpd_rtol=1e-3 --config.eval.bpd_atol=1e-3   # ranking only: 2.7 min each
    done                                                # scores/scores.{npz,csv}, scores/auroc.json
    python -m sde_lab.inverse_runner collect workdirs/digits_loo   # the AUROC table (markdown)

Results so far: README.md, "Inverse problems and anomaly detection".
"""


def get_sweep():
    return {
        "config": "configs/digits.py",
        "grid": {"data.exclude_classes": [str(c) for c in range(10)]},
        # The sample-quality eval of the full digits run is not needed here.
        "fixed": {"train.eval_at_end": False},
    }
