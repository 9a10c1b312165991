"""Toy sweep: VP vs sub-VP SDE at two learning rates, 4 runs of the laptop-size toy config.

    python -m sde_lab.sweep run experiments/toy_sde_grid.py --launcher=local --root workdirs/toy_sde_grid
    python -m sde_lab.sweep report experiments/toy_sde_grid.py --root workdirs/toy_sde_grid
"""


def get_sweep():
    return {
        "config": "configs/toy.py:runlocal",
        "grid": {
            "sde.name": ["vp", "subvp"],
            "optim.lr": [1e-3, 2e-4],
        },
    }
