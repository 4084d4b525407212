"""Massive activations (paper Figure 8): statistics of every block's hidden states.

For each block output h (B, T, D) the per-sample mean and std are taken over tokens and channels (the same
statistics Masked RepKD thresholds with), and we report the extremes, the std, and the share of positions
lying beyond 2, 4 and 10 standard deviations.
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def hidden_states(model, batch, objective=None):
    """Every block's output for one calibration batch (dict with x0, y, t, noise), as a list of tensors."""
    from tinyfusion.diffusion import objective_for
    objective = objective or objective_for(model)
    model.eval()
    x_t = objective.noised(batch["x0"], batch["t"], batch["noise"])
    _, hidden = model(x_t, objective.model_time(batch["t"]), batch["y"], return_hidden=True)
    return hidden


def hidden_stats(hidden, sigmas=(2, 4, 10)):
    """Per-layer table (list of dicts): min, max, std, max |z| and the share of positions beyond k sigma."""
    rows = []
    for i, h in enumerate(hidden):
        h = h.float()
        mean = h.mean(dim=(1, 2), keepdim=True)
        std = h.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        z = (h - mean).abs() / std
        row = {"layer": i, "min": h.min().item(), "max": h.max().item(), "std": h.std().item(),
               "max_abs_over_std": (h.abs().max() / h.std().clamp_min(1e-12)).item(), "max_z": z.max().item()}
        for k in sigmas:
            row[f"share_beyond_{k}sigma"] = (z >= k).float().mean().item()
        rows.append(row)
    return rows


def value_sample(hidden, n=200_000, seed=0):
    """A random sample of hidden-state values across all layers (for histograms)."""
    flat = torch.cat([h.reshape(-1) for h in hidden]).float().numpy()
    rng = np.random.default_rng(seed)
    return flat if len(flat) <= n else rng.choice(flat, n, replace=False)
