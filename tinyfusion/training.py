"""The one training loop, and what it is made of: deterministic batches, EMA, resumable state, a loss guard.

Pre-training (``cli.pretrain``), fine-tuning and distillation (``recovery.finetune``) and learnable pruning
(``pruning.learnable.learn_pruning``) are each a loss function plus a :class:`LoopConfig` handed to
:func:`train`; seeding, resume, the non-finite guard, clipping, EMA, progress, logging and checkpoints are
written here once.

Determinism: the data indices, noise, timesteps and label dropout of step ``s`` come from generators seeded
by ``(seed, s)``, and the global batch is drawn before it is split across ranks. So a run resumed at step
``s`` sees exactly what an uninterrupted run sees, and 2 processes see the same global batch as 1.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from tinyfusion import dist, validate
from tinyfusion.io import check_writable, load_checkpoint, plain, remove_stale_temps, save_checkpoint
from tinyfusion.progress import tqdm

CHECKPOINT_EVERY_S = 300.0  # with a state_path, the state is also written after this long without a checkpoint


def step_seed(seed, step, salt=0):
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(salt) * 104_729) % (2 ** 62)


def step_generator(seed, step, salt=0):
    return torch.Generator().manual_seed(step_seed(seed, step, salt))


def global_batch(images, labels, step, batch_size, seed, objective=None):
    """The global batch of ``step``: (x, y, noise, t), identical however many ranks share it.

    ``t`` comes from the objective's ``sample_t`` (``tinyfusion.diffusion.objective_for(model)``: DDPM's integer
    timesteps, flow's times in [0, 1)); there is no default, so a flow model never trains on DDPM's timesteps.
    """
    if objective is None:
        raise TypeError("global_batch needs the model's objective: pass objective=objective_for(model)")
    g = step_generator(seed, step)
    idx = torch.randint(len(images), (batch_size,), generator=g)
    x, y = images[idx], labels[idx]
    noise = torch.randn(x.shape, generator=g)
    t = objective.sample_t(batch_size, generator=g)
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


def ema_decay_at(step, ema_decay, ema_warmup):
    """EMA decay with warm-up ``min(decay, (1 + step) / (warmup + step))`` (0 turns the warm-up off).

    Short runs need it: with a constant 0.999 the EMA of a 400-step recovery still holds 67% of the pruned
    weights it started from.
    """
    return ema_decay if not ema_warmup else min(ema_decay, (1 + step) / (ema_warmup + step))


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
    """torch's RNG states as tensors (so ``state.pt`` loads with ``weights_only``). numpy's and Python's are not
    kept: nothing in a run draws from them, and every step reseeds torch from ``(seed, step)`` anyway."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        if hasattr(t, "identity"):  # data read on demand (data.LatentArray): its files' digest, not every byte
            h.update(f"lazy:{t.identity()}".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def input_identity(model, images, labels):
    """What a run starts from, as hashes: the model's weights before training (the student, teacher or freshly
    initialised network) and the training images and labels. Part of every resume identity, so a state written
    for another student or other data of the same shape is refused instead of resumed."""
    weights = [v for v in unwrap(model).state_dict().values() if torch.is_tensor(v)]  # not extra states
    return {"model": _digest(weights), "data": _digest((images, labels))}


def save_train_state(path, step, config, **state):
    """Rank 0 writes a resumable checkpoint: ``state`` (model, ema, opt, ...) plus step, config and RNG."""
    if dist.is_main():
        save_checkpoint({"step": step, "config": config, "rng": rng_state(), **state}, path)
    dist.barrier()


def load_train_state(path, identity=None):
    """The saved state at ``path`` or None; refuses a state written by a run of another ``identity``.

    ``identity``: the resolved settings of the run (everything that changes what it computes); the saved
    state's ``run_config`` must equal it. Rank 0 also deletes the temporary files that a killed run left next
    to ``path`` (see ``io.remove_stale_temps``).
    """
    path = Path(path)
    if dist.is_main():
        remove_stale_temps(path.parent)
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if identity is not None:
        saved, wanted = plain(state.get("run_config")), plain(identity)
        if saved != wanted:
            saved = saved if isinstance(saved, dict) else {}
            diff = {}
            for k, v in wanted.items():
                old = saved.get(k)
                if old != v and isinstance(v, dict) and isinstance(old, dict):  # name the inner keys (inputs.model)
                    diff.update({f"{k}.{i}": (old.get(i), w) for i, w in v.items() if old.get(i) != w})
                elif old != v:
                    diff[k] = (old, v)
            raise ValueError(f"{path} was written by another run (differs in {diff}, saved vs wanted; inputs.model: "
                             f"the starting weights, i.e. another student or teacher; inputs.data: other training "
                             f"data); delete it or use another --out folder")
    return state


class NonFiniteGuard:
    """Skips optimiser steps whose loss is not finite and counts them; too many raise.

    ``max_skipped`` is an absolute count (default: 10% of the run's steps, at least 1), and never every step of a
    run: a run whose every step was skipped would return its starting weights as if trained.
    """

    def __init__(self, total_steps, max_skipped=None):
        self.skipped = 0
        self.max_skipped = max(1, total_steps // 10) if max_skipped is None else int(max_skipped)
        self.max_skipped = min(self.max_skipped, max(int(total_steps) - 1, 0))

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


# --------------------------------------------------------------------------- the loop
def check_loop_inputs(cfg, model, labels):
    """Refuse settings and labels that would fail mid-run or train garbage, before the first step."""
    validate.settings(steps=cfg.steps, batch_size=cfg.batch_size, ema_decay=cfg.ema_decay,
                      ema_warmup=cfg.ema_warmup, grad_clip=cfg.grad_clip, label_dropout=cfg.label_dropout)
    for flag, value, zero in (("--ckpt-every", cfg.ckpt_every, f"0: every {CHECKPOINT_EVERY_S:g} seconds"),
                              ("--stop-after", cfg.stop_after, "0: run to the end")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{flag} {value!r} is not a number of steps; pass a whole number >= 1 ({zero})")
    n_classes = getattr(model, "num_classes", None)
    if n_classes is not None and len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"training labels span {lo}..{hi} but the model has {n_classes} classes (0.."
                             f"{n_classes - 1}); use data with the model's classes or a model built for them")


@dataclass
class LoopConfig:
    """Settings of one run of :func:`train` (what changes the result is also the run's resume identity)."""
    steps: int
    batch_size: int
    seed: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999       # EMA of the model's weights (when ``train`` gets an ``ema`` copy)
    ema_warmup: int = 10           # decay min(ema_decay, (1 + s) / (ema_warmup + s)); 0: constant decay
    label_dropout: float = 0.0     # labels replaced by the null class with this probability, drawn from (seed, s)
    log_every: int = 1             # log (and reduce across ranks) every n steps; step 0 and the last always
    ckpt_every: int = 0            # write the resumable state every n steps (0: by time only), and always after
                                   # CHECKPOINT_EVERY_S seconds without one (a run starved of cores loses little)
    stop_after: int = 0            # stop after n steps of this call, with the state saved (tests of resuming)
    max_skipped: int | None = None # non-finite steps allowed (None: 10% of the steps, at least 1; never all)
    inject_nan_at: tuple = ()      # steps whose loss is replaced by NaN (tests of the guard)
    snapshots: tuple = ()          # step counts after which ``on_snapshot(done)`` runs (EMA copies for recovery curves)


def train(model, loss_fn, opt, images, labels, objective, cfg: LoopConfig, *, lr_at=None, ema=None,
          after_update=None, on_log=None, on_snapshot=None, state=None, state_path=None, identity=None, desc="train",
          progress=True):
    """Run ``cfg.steps`` optimiser steps of ``loss_fn`` on ``model``; resumable, identical on any number of ranks.

    Each step: the global batch of ``(seed, step)`` (``global_batch``; labels dropped to the null class with
    probability ``cfg.label_dropout``), this rank's shard on the device, ``seed_step`` (so Gumbel noise and a
    model's own label dropout are seeded too), the learning rate ``lr_at(step)`` (None: leave the optimiser's),
    ``terms = loss_fn(net, (x0, y, noise, t), step)`` (a dict of scalar tensors; ``terms["loss"]`` is
    minimised), then, unless the loss is not finite (``NonFiniteGuard``): backward, gradient clipping over the
    optimiser's parameters, the optimiser step, the EMA update of ``ema`` and ``after_update(step)``.
    ``net`` is ``model`` wrapped in DDP when a process group is up.

    Logging: step 0, every ``log_every`` steps and the last step append ``{"step", "lr", **terms (averaged over
    ranks), "skipped"}`` to the log; ``on_log(step, entry)`` may add to the entry and return progress-bar fields.
    ``on_snapshot(done)`` runs after step ``done - 1`` for every ``done`` in ``cfg.snapshots`` (skipped or not), before
    that step's checkpoint: a resumed run redoes a snapshot only if it was not yet saved with the state.
    ``state``: dict name -> object with ``state_dict``/``load_state_dict`` (model, ema, optimiser, gates, ...)
    saved to ``state_path`` with the log, every ``ckpt_every`` steps and whenever ``CHECKPOINT_EVERY_S`` seconds
    passed without a save (so a run that shares its cores, or is killed with its session, loses minutes), on
    ``stop_after`` and at the end; a state found there is resumed if its ``identity`` (the run's resolved
    settings) and its inputs (:func:`input_identity`: hashes of the starting weights and of the data) equal this
    run's. The folder of ``state_path`` is checked writable before the first step, and the settings and labels
    too (:func:`check_loop_inputs`).

    Returns dict(log, first (step 0's entry: the "initial loss"), skipped_steps, steps_run, stopped_at (None if
    finished), wall_s and samples_per_s of this call, total_wall_s over every call of a resumed run, segments: one
    ``{"from_step", "threads", "world_size", "torch", "nice", "to_step", "wall_s"}`` per call of a resumed run, the
    last two as of its latest save, "nice" the process's priority, so a rate can be read from a call that had the
    cores to itself). The segments are provenance: a
    run is bit-identical only on the same thread count and world size (float sums run in another order; measured on
    the cpu 1:2 learnable run: 2.6e-8 apart after 40 steps, and a block whose gates sit near 0.5 then keeps the other
    layer).
    """
    dev = next(unwrap(model).parameters()).device
    state = state or {}
    check_loop_inputs(cfg, unwrap(model), labels)
    steps = int(cfg.steps)
    start, log, prior_wall, segments = 0, [], 0.0, []
    guard = NonFiniteGuard(steps, cfg.max_skipped)
    if state_path:
        check_writable(Path(state_path).parent)  # fail now, not after the last step
        inputs = input_identity(model, images, labels)
        identity = {**identity, "inputs": inputs} if isinstance(identity, dict) else {"run": identity, "inputs": inputs}
    saved = load_train_state(state_path, identity) if state_path else None
    if saved is not None:
        for name, obj in state.items():
            obj.load_state_dict(saved[name])
        start, log, guard.skipped, prior_wall = saved["step"], saved["log"], saved["skipped"], saved["wall_s"]
        segments = list(saved.get("segments") or [])  # states written before segments were recorded have none
        dist.print0(f"resuming {state_path} at step {start}")
    segments.append({"from_step": start, "threads": torch.get_num_threads(), "world_size": dist.world_size(),
                     "torch": str(torch.__version__), "nice": os.nice(0) if hasattr(os, "nice") else 0,
                     "to_step": start, "wall_s": 0.0})  # a plain str: TorchVersion is refused by weights_only
    net = DDP(model) if dist.is_dist() else model
    inject = {int(s) for s in cfg.inject_nan_at or ()}
    snaps = {int(s) for s in cfg.snapshots or ()}
    m = unwrap(model)
    params = [p for g in opt.param_groups for p in g["params"]]

    last_save = [time.time()]

    def checkpoint(step, wall):
        last_save[0] = time.time()
        segments[-1].update(to_step=int(step), wall_s=round(wall - prior_wall, 1))
        if state_path:
            save_train_state(state_path, step, getattr(m, "config", None), log=log, skipped=guard.skipped,
                             wall_s=wall, run_config=identity, segments=segments,
                             **{k: v.state_dict() for k, v in state.items()})

    model.train()
    t0, seen, stopped_at = time.time(), 0, None
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, dynamic_ncols=True,
               disable=not (progress and dist.is_main()) or bool(os.environ.get("TINYFUSION_QUIET")))
    for step in bar:
        x0, y, noise, t = global_batch(images, labels, step, cfg.batch_size, cfg.seed, objective)
        if cfg.label_dropout > 0:
            drop = torch.rand(cfg.batch_size, generator=step_generator(cfg.seed, step, salt=2)) < cfg.label_dropout
            y = torch.where(drop, m.num_classes, y)
        batch = tuple(v.to(dev) for v in shard((x0, y, noise, t)))
        seed_step(cfg.seed, step)
        lr = lr_at(step) if lr_at is not None else None
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
        terms = dict(loss_fn(net, batch, step))
        if step in inject:
            terms["loss"] = terms["loss"] + float("nan")
        loss = terms["loss"]
        opt.zero_grad(set_to_none=True)
        ok = guard.ok(loss, step)
        if ok:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if ema is not None:
                update_ema(ema, m, ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup))
            if after_update is not None:
                after_update(step)
        seen += cfg.batch_size
        if step == 0 or (step + 1) % max(1, cfg.log_every) == 0 or step + 1 == steps:
            stats = dist.reduce_dict({k: v.detach() for k, v in terms.items()})
            entry = {"step": step, "lr": opt.param_groups[0]["lr"], **stats, "skipped": not ok}
            shown = (on_log(step, entry) if on_log is not None else None) or {}
            log.append(entry)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", **shown)
        done = step + 1
        if on_snapshot is not None and done in snaps:
            on_snapshot(done)
        by_steps = bool(cfg.ckpt_every) and done % cfg.ckpt_every == 0   # ranks agree: the clock is rank 0's
        late = lambda: dist.broadcast_object(time.time() - last_save[0] >= CHECKPOINT_EVERY_S)  # noqa: E731
        if state_path and done < steps and (by_steps or late()):
            checkpoint(done, prior_wall + time.time() - t0)
        if cfg.stop_after and done - start >= cfg.stop_after and done < steps:
            stopped_at = done
            break
    bar.close()
    wall = time.time() - t0
    checkpoint(stopped_at or steps, prior_wall + wall)
    return dict(log=log, first=log[0] if log and log[0]["step"] == 0 else None, skipped_steps=guard.skipped,
                steps_run=max(0, (stopped_at or steps) - start), stopped_at=stopped_at, wall_s=wall,
                samples_per_s=seen / max(wall, 1e-9), total_wall_s=prior_wall + wall, segments=segments)
