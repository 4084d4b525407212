"""TinyFusion: learn which layers to keep while simulating the fine-tuning (Eq. 2, section 3).

The N:M gates (``tinyfusion.models.gates.NMGates``) and a weight update dPhi are trained together on the
ordinary diffusion loss of the masked model: every sample of every step draws its own hard mask by
Gumbel-softmax (straight-through), so the distributions learn which layer subsets recover best after a
weight update, not which ones lose least right now. The update is LoRA on every linear layer (default,
through peft), the full weights, or nothing ("frozen", the ablation). After training, each block keeps
its most probable row of the EMA logits; dPhi is dropped and the kept layers of the *original* model are
fine-tuned (``tinyfusion.pruning.indices.prune``).

Settings follow the official code: logits start at 0.02 and are scaled by 100, tau falls linearly from 4
to 0.1, AdamW without weight decay at lr 1e-4 (logits at 10x), LoRA rank 8 / alpha 16, grad clip 1.0,
non-finite steps skipped, EMA 0.999 of the logits.
"""
from __future__ import annotations

import time
from copy import deepcopy

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tinyfusion import dist
from tinyfusion.models.gates import NMGates, parse_groups, tau_schedule
from tinyfusion.profiles import check_budget
from tinyfusion.training import (NonFiniteGuard, global_batch, load_train_state, save_train_state, seed_step,
                                 shard, unwrap)

UPDATES = ("lora", "full", "frozen")
RESUME_KEYS = ("groups", "update", "steps", "batch_size", "lr", "logit_lr_mult", "tau", "lora_rank",
               "lora_alpha", "ema_decay", "seed", "scale", "gate_init", "n_images", "grad_clip")


def linear_module_names(model):
    """Names of every ``nn.Linear`` in the model (the LoRA targets: "every linear layer")."""
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]


def add_lora(model, rank=8, alpha=16):
    """Inject LoRA adapters (``W + alpha/rank * B A``, B = 0 at start) into every linear layer, in place.

    Only the adapters stay trainable; the model keeps its class, ``forward`` and ``config``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=int(rank), lora_alpha=alpha, target_modules=linear_module_names(model),
                        lora_dropout=0.0, bias="none")
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def _check_update(update):
    if update not in UPDATES:
        raise ValueError(f"update must be one of {', '.join(UPDATES)}, got {update!r}")


def count_update_params(model, update, lora_rank=8):
    """Number of weight-update (dPhi) parameters for ``update`` on a plain DiT (gates not counted)."""
    _check_update(update)
    if update == "frozen":
        return 0
    if update == "lora":
        return sum(int(lora_rank) * (m.in_features + m.out_features)
                   for m in model.modules() if isinstance(m, nn.Linear))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_fraction(model, update, lora_rank=8):
    """Fraction of the model's parameters that the weight update trains (the paper: LoRA ~0.9%).

    ``model``: a DiT, or a registry name such as "DiT-XL/2" (then built on the meta device: no memory).
    """
    if isinstance(model, str):
        from tinyfusion.models import build_model
        with torch.device("meta"):
            model = build_model(model)
    total = sum(p.numel() for p in model.parameters())
    return count_update_params(model, update, lora_rank) / total


class GatedDiT(nn.Module):
    """A DiT together with its gates: ``forward`` samples a per-sample mask and runs the masked model.

    One module, so DDP averages the gradients of the gates and the weight update alike.
    """

    def __init__(self, model, gates):
        super().__init__()
        self.model = model
        self.gates = gates

    def forward(self, x, t, y, tau=1.0):
        mask = self.gates.sample(x.shape[0], tau)
        return self.model(x, t, y, mask=mask)


def learn_pruning(model, images, labels, groups="1:2", update="lora", steps=100, batch_size=64, lr=1e-4,
                  logit_lr_mult=10.0, tau=(4.0, 0.1), lora_rank=8, lora_alpha=16, ema_decay=0.999, grad_clip=1.0,
                  seed=0, log_every=None, state_path=None, ckpt_every=0, stop_after=0, progress=True,
                  scale=100.0, gate_init=0.02, diffusion=None):
    """Train N:M gates jointly with a weight update and return the decision.

    ``model``: the teacher DiT (not modified: a copy is trained). ``images``/``labels``: training tensors
    (batches are drawn deterministically per step by ``training.global_batch``). ``groups``: "1:2", "2:4",
    "7:14" or a list of [N, M] blocks. ``update``: "lora", "full" or "frozen". ``state_path``: resumable
    training state (written every ``ckpt_every`` steps, when stopped by ``stop_after`` and at the end;
    read back if present). Under torchrun the global batch is split across ranks and gradients averaged.

    Returns a dict: kept, confidence, history (decision snapshots every ``log_every`` steps), log,
    trainable_params, gate_params, total_params, trainable_fraction, steps_per_s, skipped_steps, step
    (steps done), stopped_at (when stopped early), plus the trained ``gates`` and ``model`` (with dPhi).
    """
    from tinyfusion.diffusion import create_diffusion

    _check_update(update)
    steps = check_budget("steps", steps)
    batch_size = check_budget("batch_size", batch_size)
    log_every = int(log_every) if log_every else max(1, steps // 50)
    base = unwrap(model)
    depth = len(base.blocks)
    pairs = parse_groups(groups, depth)
    dev = next(base.parameters()).device
    diffusion = diffusion or create_diffusion(learn_sigma=base.learn_sigma)
    run_config = dict(groups=[list(p) for p in pairs], update=update, steps=steps, batch_size=batch_size,
                      lr=float(lr), logit_lr_mult=float(logit_lr_mult), tau=[float(v) for v in tau],
                      lora_rank=int(lora_rank), lora_alpha=float(lora_alpha), ema_decay=float(ema_decay),
                      seed=int(seed), scale=float(scale), gate_init=float(gate_init), n_images=len(images),
                      grad_clip=float(grad_clip))

    torch.manual_seed(seed)  # LoRA's initial A matrices
    net = deepcopy(base).to(dev).train()
    if update == "lora":
        net = add_lora(net, lora_rank, lora_alpha)
    elif update == "frozen":
        net.requires_grad_(False)
    weights = [p for p in net.parameters() if p.requires_grad]
    gates = NMGates(depth, pairs, init=gate_init, scale=scale).to(dev)
    learner = GatedDiT(net, gates)
    groups_opt = [{"params": list(gates.parameters()), "lr": lr * logit_lr_mult}]
    if weights:
        groups_opt.insert(0, {"params": weights, "lr": lr})
    opt = torch.optim.AdamW(groups_opt, lr=lr, weight_decay=0.0)
    trainable = [p for g in groups_opt for p in g["params"]]

    start, log, skipped, prior_wall = 0, [], 0, 0.0
    state = load_train_state(state_path, run_config, RESUME_KEYS) if state_path else None
    if state is not None:
        gates.load_state_dict(state["gates"])
        gates.history = list(state["history"])
        missing = set(state["weights"]) ^ {n for n, p in net.named_parameters() if p.requires_grad}
        if missing:
            raise ValueError(f"{state_path}: saved weight update does not match this model "
                             f"({sorted(missing)[:4]} ...); delete it or use another state path")
        net.load_state_dict(state["weights"], strict=False)
        opt.load_state_dict(state["opt"])
        start, log, skipped, prior_wall = state["step"], state["log"], state["skipped"], state["wall_s"]
        dist.print0(f"resuming {state_path} at step {start}")
    ddp = torch.nn.parallel.DistributedDataParallel(learner) if dist.is_dist() else learner
    guard = NonFiniteGuard(steps)
    guard.skipped = skipped
    n_update = sum(p.numel() for p in weights)
    n_total = sum(p.numel() for n, p in net.named_parameters() if "lora_" not in n)
    n_gates = sum(p.numel() for p in gates.parameters())
    if progress:
        dist.print0(f"learn_pruning {update} {groups}: {len(pairs)} blocks keep {gates.n_keep}/{depth} layers; "
                    f"dPhi {n_update:,} params ({100 * n_update / n_total:.2f}% of {n_total:,}), {steps} steps "
                    f"of batch {batch_size} on {dist.world_size()} process(es)")

    def checkpoint(step, wall):
        save_train_state(state_path, step, unwrap(net).config if hasattr(net, "config") else None,
                         gates=gates.state_dict(), history=gates.history, opt=opt.state_dict(), log=log,
                         weights={n: p.detach() for n, p in net.named_parameters() if p.requires_grad},
                         skipped=guard.skipped, wall_s=wall, run_config=run_config)

    if start == 0 and not gates.history:
        gates.record(0, tau_schedule(0, steps, *tau))
    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"prune {update}", dynamic_ncols=True,
               disable=not (progress and dist.is_main()))
    stopped_at = None
    for step in bar:
        x, y, noise, t = (v.to(dev) for v in shard(global_batch(images, labels, step, batch_size, seed,
                                                                 diffusion.num_timesteps)))
        seed_step(seed, step)
        temp = tau_schedule(step, steps, *tau)
        terms = diffusion.training_losses(ddp, x, t, dict(y=y, tau=temp), noise=noise)
        loss = terms["loss"].mean()
        opt.zero_grad(set_to_none=True)
        if guard.ok(loss, step):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
            opt.step()
            gates.update_ema(ema_decay)
        done = step + 1
        if done % log_every == 0 or done == steps:
            stats = dist.reduce_dict({"loss": loss.detach(), "mse": terms["mse"].mean().detach()})
            log.append({"step": done, "tau": temp, **stats})
            entry = gates.record(done, temp, loss=stats["loss"])
            bar.set_postfix(loss=f"{stats['loss']:.4f}", tau=f"{temp:.2f}",
                            conf=f"{min(entry['confidence']):.2f}")
        if state_path and ckpt_every and done % ckpt_every == 0 and done < steps:
            checkpoint(done, prior_wall + time.time() - t0)
        if stop_after and done - start >= stop_after and done < steps:
            stopped_at = done
            break
    bar.close()
    wall = time.time() - t0
    done = stopped_at or steps
    if state_path:
        checkpoint(done, prior_wall + wall)
    total_wall = prior_wall + wall  # over every session of a resumed run
    kept, confidence = gates.decision(use_ema=True)
    return {"kept": kept, "confidence": confidence, "history": gates.history, "log": log,
            "groups": [list(p) for p in pairs], "update": update,
            "trainable_params": n_update, "gate_params": n_gates, "total_params": n_total,
            "trainable_fraction": n_update / n_total,
            "steps_per_s": done / total_wall if done and total_wall > 0 else None, "skipped_steps": guard.skipped,
            "step": done, "stopped_at": stopped_at, "gates": gates, "model": net}
