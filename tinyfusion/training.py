"""Pieces every training entry point shares: deterministic batches, EMA, resumable state, loss guards.

Determinism: the data indices, noise, timesteps and label dropout of step ``s`` come from generators seeded
by ``(seed, s)``, and the global batch is drawn before it is split across ranks. So a run resumed at step
``s`` sees exactly what an uninterrupted run sees, and 2 processes see the same global batch as 1.
"""
from __future__ import annotations

import math
import random
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

from tinyfusion import dist
from tinyfusion.io import load_checkpoint, remove_stale_temps, save_checkpoint


def step_seed(seed, step, salt=0):
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(salt) * 104_729) % (2 ** 62)


def step_generator(seed, step, salt=0):
    return torch.Generator().manual_seed(step_seed(seed, step, salt))


def global_batch(images, labels, step, batch_size, seed, num_timesteps=1000):
    """The global batch of ``step``: (x, y, noise, t), identical however many ranks share it."""
    g = step_generator(seed, step)
    idx = torch.randint(len(images), (batch_size,), generator=g)
    x, y = images[idx], labels[idx]
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(num_timesteps, (batch_size,), generator=g)
    return x, y, noise, t


def shard(tensors, rank=None, world=None):
    """This rank's contiguous slice of each tensor's first dimension."""
    rank = dist.rank() if rank is None else rank
    world = dist.world_size() if world is None else world
    out = []
    for t in tensors:
        if len(t) % world:
            raise ValueError(f"global batch {len(t)} does not split evenly across {world} processes")
        n = len(t) // world
        out.append(t[rank * n:(rank + 1) * n])
    return out


def seed_step(seed, step):
    """Seed torch's global RNG for a step (label dropout and Gumbel noise draw from it)."""
    torch.manual_seed(step_seed(seed, step, salt=1) + dist.rank())


def make_ema(model):
    ema = deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema, model, decay=0.9999):
    ema_params = dict(ema.named_parameters())
    for name, p in model.named_parameters():
        if name in ema_params:
            ema_params[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def cosine_lr(step, total, lr_max, lr_min, warmup=0):
    if warmup and step < warmup:
        return lr_max * (step + 1) / warmup
    frac = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * frac))


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path, step, config, **state):
    """Rank 0 writes a resumable checkpoint: ``state`` (model, ema, opt, ...) plus step, config and RNG."""
    if dist.is_main():
        save_checkpoint({"step": step, "config": config, "rng": rng_state(), **state}, path)
    dist.barrier()


def load_train_state(path, config=None, resume_keys=()):
    """The saved state at ``path`` or None; refuses a checkpoint written for a different config.

    Rank 0 also deletes the temporary files that a killed run left next to ``path`` (see ``io.remove_stale_temps``).
    """
    path = Path(path)
    if dist.is_main():
        remove_stale_temps(path.parent)
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if config is not None:
        saved = {k: state.get("run_config", {}).get(k) for k in resume_keys}
        wanted = {k: config.get(k) for k in resume_keys}
        if saved != wanted:
            raise ValueError(f"{path} was written by a run with {saved}, not {wanted}; "
                             f"delete it or use another --out folder")
    return state


class NonFiniteGuard:
    """Skips optimiser steps whose loss is not finite and counts them; too many raise.

    ``max_skipped`` is an absolute count (default: 10% of the run's steps, at least 5).
    """

    def __init__(self, total_steps, max_skipped=None):
        self.skipped = 0
        self.max_skipped = max(5, total_steps // 10) if max_skipped is None else max_skipped

    def ok(self, loss, step):
        finite = torch.isfinite(loss.detach()).all()
        if dist.is_dist():  # every rank must agree to skip, or DDP hangs
            flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
            torch.distributed.all_reduce(flag)
            finite = flag.item() == 0
        if bool(finite):
            return True
        self.skipped += 1
        dist.print0(f"step {step}: non-finite loss, step skipped ({self.skipped} so far)")
        if self.skipped > self.max_skipped:
            raise FloatingPointError(f"{self.skipped} steps had non-finite losses (more than the allowed "
                                     f"{self.max_skipped}); stopping instead of producing a broken model. "
                                     f"Lower the learning rate or check the loss weights.")
        return False


def clip_and_step(model_params, opt, max_norm=1.0):
    gn = torch.nn.utils.clip_grad_norm_(model_params, max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(gn)
