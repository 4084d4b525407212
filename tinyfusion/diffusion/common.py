"""What every objective shares: the training-loss call around its own ``noised`` / ``model_time`` /
``loss_from_output``, and for sampling the starting noise, the null-label batch of classifier-free guidance and the
(guided) network call. As in the official DiT and SiT code, guidance doubles the batch with the null label and
``DiT.forward_with_cfg`` guides the first ``in_channels`` output channels.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def training_terms(objective, model, x0, t, model_kwargs=None, noise=None, return_output=False):
    """``objective``'s per-sample loss terms for ``model`` on clean data ``x0`` at times ``t`` (``noise`` drawn when
    None); with ``return_output`` also the raw ``output`` and whatever the model returned besides it (``extra``)."""
    noise = torch.randn_like(x0) if noise is None else noise
    x_t = objective.noised(x0, t, noise)
    out = model(x_t, objective.model_time(t), **(model_kwargs or {}))
    extra = None
    if isinstance(out, tuple):
        out, extra = out[0], out[1:]
    terms = objective.loss_from_output(out, x0, x_t, t, noise)
    if return_output:
        terms["output"] = out
        terms["extra"] = extra
    return terms


def guided(cfg_scale):
    """Whether ``cfg_scale`` asks for guidance (None and 1.0 do not)."""
    return cfg_scale is not None and cfg_scale != 1.0


def initial_batch(model, labels, cfg_scale, generator=None):
    """Starting noise and labels for class-conditional sampling of ``labels``.

    With guidance the batch is doubled: the same noise again with the null label (``model.num_classes``).
    """
    device = next(model.parameters()).device
    labels = labels.to(device)
    size = model.x_embedder.img_size[0]
    z = torch.randn((len(labels), model.in_channels, size, size), device=device, generator=generator)
    if guided(cfg_scale):
        z = torch.cat([z, z], 0)
        labels = torch.cat([labels, torch.full_like(labels, model.num_classes)], 0)
    return z, labels


def network(model, x, t, y, cfg_scale, **model_kwargs):
    """The model's raw output at ``(x, t)`` for labels ``y``, guided when ``cfg_scale`` asks for it."""
    if guided(cfg_scale):
        return model.forward_with_cfg(x, t, y=y, cfg_scale=cfg_scale, **model_kwargs)
    return model(x, t, y=y, **model_kwargs)


def conditional_half(x, cfg_scale):
    """The samples of the conditional half of a guided batch (the whole batch without guidance)."""
    return x[: len(x) // 2] if guided(cfg_scale) else x


@contextmanager
def eval_mode(model):
    """Run the body with ``model`` in eval mode (no label dropout), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
