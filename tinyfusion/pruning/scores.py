"""The calibration set and the metric-based depth-pruning baselines of Tables 1 and 3.

Every method scores layers (or prunes) on the same calibration set: fixed images, labels, times (of the teacher's
objective) and noise, so calibration losses compare across methods. The baselines rank single layers and keep the
``keep`` highest-scoring ones (no N:M constraint, as in the paper's 28 -> 14 comparisons):

* ShortGPT (Men et al., 2024): block influence ``BI_i = 1 - cos(x_i, x_{i+1})``, averaged over tokens; as in the
  official TinyFusion scoring, on clean inputs at times near the data end (DDPM t < 250) for 128 images, and the
  last layer is never removed.
* Flux-Lite: mean squared change ``||x_{i+1} - x_i||^2`` a layer makes to the hidden state.
* Sensitivity: how much the calibration loss rises when the single layer ``i`` is removed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tinyfusion.models import prunable


def calibration_set(images, labels, n_batches, batch_size, seed=0, objective=None):
    """Fixed calibration batches: a list of dicts {x0, y, t, noise} drawn once from ``seed`` (``t``: times).

    Images are drawn without replacement while the data last; times from the objective's ``sample_t`` (the
    teacher's: ``tinyfusion.diffusion.objective_for(teacher)``; no default, so a flow teacher is never scored at
    DDPM's timesteps); the noise is stored, so every later loss on this set is a deterministic function of the model.
    """
    if objective is None:
        raise TypeError("calibration_set needs the teacher's objective: pass objective=objective_for(teacher)")
    g = torch.Generator().manual_seed(int(seed))
    total = int(n_batches) * int(batch_size)
    if total <= 0:
        raise ValueError(f"calibration set needs n_batches >= 1 and batch_size >= 1, got {n_batches} x {batch_size}")
    if total <= len(images):
        idx = torch.randperm(len(images), generator=g)[:total]
    else:
        idx = torch.randint(len(images), (total,), generator=g)
    out = []
    for b in range(int(n_batches)):
        sel = idx[b * batch_size:(b + 1) * batch_size]
        x0 = images[sel].float()
        noise = torch.randn(x0.shape, generator=g)
        t = objective.sample_t(len(sel), generator=g)
        out.append({"x0": x0, "y": labels[sel].long(), "t": t, "noise": noise})
    return out


def _device(model):
    return next(model.parameters()).device


def _flatten_calib(calib, n_samples=None):
    cat = {k: torch.cat([b[k] for b in calib]) for k in ("x0", "y", "t", "noise")}
    if n_samples is not None:
        cat = {k: v[:n_samples] for k, v in cat.items()}
    return cat


def first_samples(calib, n):
    """The calibration set cut to its first ``n`` samples, as one batch."""
    return [_flatten_calib(calib, n)]


def _objective_for(model, objective):
    if objective is not None:
        return objective
    from tinyfusion.diffusion import objective_for
    return objective_for(model)


@torch.no_grad()
def calibration_losses(model, calib, mask=None, objective=None):
    """Per-sample training losses (the ``loss`` term) of the (masked) model, concatenated
    (``prunable.per_sample_loss``; a model that draws its own noise gets a generator seeded with the batch's index,
    so every mask is scored on the same draws)."""
    objective = _objective_for(model, objective)
    dev = _device(model)
    was_training = model.training
    model.eval()
    try:
        out = []
        for i, batch in enumerate(calib):
            batch = {k: batch[k].to(dev) for k in ("x0", "y", "t", "noise")}
            m = None if mask is None else torch.as_tensor(mask, dtype=torch.float32).to(dev)
            loss = prunable.per_sample_loss(model, objective, batch, m, generator=torch.Generator().manual_seed(i))
            out.append(loss.float().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def calibration_loss(model, calib, mask=None, objective=None):
    """Mean diffusion training loss of the model over the calibration set (eval mode, no grad).

    ``mask``: optional (depth,) layer mask (1 = keep) or (B, depth) per-sample masks.
    """
    return float(calibration_losses(model, calib, mask, objective).mean())


@torch.no_grad()
def block_io_stats(model, calib, objective=None, clean=False):
    """Per layer, over all calibration tokens: mean cosine similarity and mean squared difference between
    the layer's input and output hidden states (the full, unpruned model).

    ``clean``: feed the clean images at times from the objective's ``clean_t`` (drawn from a fixed seed) instead of
    the calibration set's noised inputs (ShortGPT's official setting).

    A model without DiT's layout (one token sequence and one condition through ``embed`` and ``blocks``; MAR) is
    measured by :func:`_hooked_io_stats` on its own forward instead.
    """
    if not prunable.has_parts(model, "embed", "blocks"):
        return _hooked_io_stats(model, calib, objective, clean)
    objective = _objective_for(model, objective)
    dev = _device(model)
    depth = prunable.depth(model)
    cos_sum = torch.zeros(depth, dtype=torch.float64)
    mse_sum = torch.zeros(depth, dtype=torch.float64)
    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(0)
        for batch in calib:
            x0, t, noise = batch["x0"].to(dev), batch["t"].to(dev), batch["noise"].to(dev)
            if clean:
                t = objective.clean_t(len(x0), generator=g).to(dev)
            x_t = x0 if clean else objective.noised(x0, t, noise)
            h, c = model.embed(x_t, objective.model_time(t), batch["y"].to(dev))
            for i, block in enumerate(model.blocks):
                out = block(h, c)
                cos_sum[i] += F.cosine_similarity(h.float(), out.float(), dim=-1).sum().double().cpu()
                mse_sum[i] += ((out.float() - h.float()) ** 2).mean(-1).sum().double().cpu()
                h = out
            n_tokens += h.shape[0] * h.shape[1]
    finally:
        model.train(was_training)
    return (cos_sum / n_tokens).tolist(), (mse_sum / n_tokens).tolist()


@torch.no_grad()
def _hooked_io_stats(model, calib, objective=None, clean=False):
    """:func:`block_io_stats` for any prunable model, from each layer's input and output on the full model's forward
    (``prunable.layer_io``; batch ``i`` draws its random parts from a generator seeded with ``i``, as
    :func:`calibration_losses`). Token counts are per layer (a MAR's encoder layers see the buffer and the known
    tokens, its decoder layers every position). ``clean``: the batch's times from ``clean_t`` (fixed seed) and its
    noise zeroed (a model that computes its own loss sees clean tokens in its layers whatever the times: its noise
    enters only its head)."""
    objective = _objective_for(model, objective)
    dev = _device(model)
    depth = prunable.depth(model)
    cos_sum = torch.zeros(depth, dtype=torch.float64)
    mse_sum = torch.zeros(depth, dtype=torch.float64)
    n_tokens = torch.zeros(depth, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(0)
        for i, batch in enumerate(calib):
            batch = {k: batch[k].to(dev) for k in ("x0", "y", "t", "noise")}
            if clean:
                batch["t"] = objective.clean_t(len(batch["x0"]), generator=g).to(dev)
                batch["noise"] = torch.zeros_like(batch["noise"])
            for j, (h, out) in enumerate(prunable.layer_io(model, objective, batch,
                                                           generator=torch.Generator().manual_seed(i))):
                cos_sum[j] += F.cosine_similarity(h.float(), out.float(), dim=-1).sum().double().cpu()
                mse_sum[j] += ((out.float() - h.float()) ** 2).mean(-1).sum().double().cpu()
                n_tokens[j] += h.shape[0] * h.shape[1]
    finally:
        model.train(was_training)
    return (cos_sum / n_tokens).tolist(), (mse_sum / n_tokens).tolist()


@torch.no_grad()
def residual_sizes(model, calib, objective=None):
    """Per layer of the full model, how much it changes the hidden state: the mean over calibration tokens of
    ``||f(h) - h|| / ||h||`` (0: the layer passes its input through; large values are layers whose removal is hardest
    to paper over, and where a straight-through gate gradient is least reliable)."""
    prunable.require_parts(model, "residual_sizes", "embed", "blocks")
    objective = _objective_for(model, objective)
    dev = _device(model)
    total = torch.zeros(prunable.depth(model), dtype=torch.float64)
    n_tokens = 0
    was_training = model.training
    model.eval()
    try:
        for batch in calib:
            x0, t, noise = batch["x0"].to(dev), batch["t"].to(dev), batch["noise"].to(dev)
            h, c = model.embed(objective.noised(x0, t, noise), objective.model_time(t), batch["y"].to(dev))
            for i, block in enumerate(model.blocks):
                out = block(h, c)
                total[i] += ((out - h).float().norm(dim=-1) / h.float().norm(dim=-1).clamp_min(1e-12)).sum().double()
                h = out
            n_tokens += h.shape[0] * h.shape[1]
    finally:
        model.train(was_training)
    return (total / n_tokens).tolist()


def keep_top(scores, keep):
    """Sorted indices of the ``keep`` highest scores (ties: the earlier layer wins)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 1 <= keep <= len(scores):
        raise ValueError(f"cannot keep {keep} of {len(scores)} layers")
    order = np.argsort(-scores, kind="stable")
    return sorted(int(i) for i in order[:keep])


SHORTGPT_IMAGES = 128  # the official scoring's image count


def shortgpt(model, calib, keep, objective=None):
    """ShortGPT: keep the ``keep`` layers with the highest block influence 1 - cos(input, output), measured on the
    first 128 calibration images fed clean at near-data times; the last layer is always kept (official code).

    Returns (sorted kept indices, per-layer block influence).
    """
    cos, _ = block_io_stats(model, first_samples(calib, SHORTGPT_IMAGES), objective, clean=True)
    scores = [1.0 - c for c in cos]
    ranked = scores[:-1] + [float("inf")]  # the last layer is never removed
    return keep_top(ranked, keep), scores


def flux_lite(model, calib, keep, objective=None):
    """Flux-Lite: keep the ``keep`` layers that change the hidden state most (MSE between input and output).

    Returns (sorted kept indices, per-layer MSE).
    """
    _, mse = block_io_stats(model, calib, objective)
    return keep_top(mse, keep), mse


def sensitivity(model, calib, keep, objective=None, progress=False):
    """Sensitivity: keep the ``keep`` layers whose single removal raises the calibration loss most.

    Returns (sorted kept indices, per-layer loss increase over the full model's calibration loss).
    """
    from tinyfusion.progress import tqdm

    depth = prunable.depth(model)
    base = calibration_loss(model, calib, objective=objective)
    scores = []
    for i in tqdm(range(depth), disable=not progress, desc="sensitivity", leave=False):
        mask = torch.ones(depth)
        mask[i] = 0.0
        scores.append(calibration_loss(model, calib, mask, objective) - base)
    return keep_top(scores, keep), scores
