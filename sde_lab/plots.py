"""Pictures of 2-D samples over the true data distribution (toy runs)."""

from __future__ import annotations

import numpy as np


def scatter(path: str, x: np.ndarray, toy_set: str, dim: int) -> None:
    """Samples (red dots) over a 2-D histogram of 200,000 true samples of `toy_set` (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sde_lab import data

    true = data.toy_distribution(toy_set, dim).sample(
        np.random.default_rng(0), 200_000)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    lim = np.abs(true[:, :2]).max() * 1.15
    for ax, title in zip(axes, ("data density", f"{len(x)} samples")):
        ax.hist2d(true[:, 0], true[:, 1], bins=120, range=[[-lim, lim], [-lim, lim]],
                  cmap="Greys")
        ax.set_title(title)
        ax.set_aspect("equal")
    axes[1].scatter(x[:, 0], x[:, 1], s=2, c="tab:red", alpha=0.6)
    axes[1].set_xlim(-lim, lim)
    axes[1].set_ylim(-lim, lim)
    outside = int(np.sum(np.any(np.abs(x[:, :2]) > lim, axis=1)))
    if outside:
        axes[1].set_title(f"{len(x)} samples ({outside} outside the frame)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
