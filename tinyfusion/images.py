"""Image conversion shared by the evaluator and the metrics: uint8 (N, 1, H, W) tensors and the resampling that lets
the evaluator judge models of another resolution (the 16x16 cpu-profile models) like with like."""
from __future__ import annotations

import numpy as np
import torch

EVAL_SIZE = 28  # the evaluator's input resolution


def to_uint8(images):
    """Images as a uint8 tensor (N, 1, H, W).

    Accepts uint8 (N, H, W), (N, 1, H, W) or (N, H, W, 1) arrays/tensors, or floats in [-1, 1] (the diffusion
    models' range), which are mapped by ``round((x + 1) * 127.5)`` after clamping.
    """
    x = images.detach().cpu() if torch.is_tensor(images) else torch.from_numpy(np.array(images))
    if x.dim() == 4 and x.shape[-1] == 1 and x.shape[1] != 1:
        x = x.permute(0, 3, 1, 2)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x[:, :1].contiguous()
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floats in [-1, 1], got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.5 or hi > 1.5:
        raise ValueError(f"float images must lie in [-1, 1] (got [{lo:.3g}, {hi:.3g}]); pass uint8 for 0..255 data")
    return ((x[:, :1].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resample(images, size):
    """uint8 (N, 1, H, W) images resized to ``size`` x ``size`` (bilinear, antialiased when shrinking)."""
    x = to_uint8(images)
    if x.shape[-1] == size:
        return x
    y = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=size < x.shape[-1])
    return y.round().clamp(0, 255).to(torch.uint8)


def at_resolution(images, size):
    """Real images as a model of resolution ``size`` would see them: down to ``size``, back up to the evaluator's.

    Samples of a lower-resolution model are upsampled to the evaluator's 28x28 the same way, so FID compares
    like with like (the two pass through the same resampling).
    """
    return resample(resample(images, size), EVAL_SIZE) if size != EVAL_SIZE else to_uint8(images)
