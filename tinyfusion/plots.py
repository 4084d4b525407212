"""Figures shared by the notebooks (seaborn style, one function per kind of picture)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")


def to_uint8(images):
    """Images in [-1, 1] or uint8 (tensor or array, (N,1,H,W) or (N,H,W)) -> uint8 numpy (N,H,W) for imshow."""
    from tinyfusion.metrics import to_uint8 as as_uint8  # the one conversion the metrics use too
    return as_uint8(images)[:, 0].numpy()


def image_grid(images, nrow=10, row_labels=None, title=None, scale=0.9):
    """A grid of grayscale images, ``nrow`` per row; ``row_labels`` names each row (e.g. the classes)."""
    x = to_uint8(images)
    n = len(x)
    rows = int(np.ceil(n / nrow))
    fig, axes = plt.subplots(rows, nrow, figsize=(nrow * scale, rows * scale), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
    if row_labels is not None:
        for r, lab in enumerate(row_labels[:rows]):
            axes[r, 0].text(-3, x.shape[1] / 2, lab, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def keep_matrix(kept_by_method: dict, depth: int, title="Kept layers"):
    """Heatmap: one row per method, one column per layer, dark where the layer is kept."""
    names = list(kept_by_method)
    m = np.zeros((len(names), depth))
    for i, k in enumerate(names):
        m[i, list(kept_by_method[k])] = 1
    fig, ax = plt.subplots(figsize=(max(6, depth * 0.32), 0.45 * len(names) + 1))
    sns.heatmap(m, ax=ax, cbar=False, cmap="Blues", linewidths=0.5, linecolor="white",
                yticklabels=names, xticklabels=list(range(depth)))
    ax.set_xlabel("layer")
    ax.set_title(title)
    return fig
