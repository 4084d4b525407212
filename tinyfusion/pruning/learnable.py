"""TinyFusion: learn which layers to keep while simulating the fine-tuning (Eq. 2, section 3).

The N:M gates (``tinyfusion.models.gates.NMGates``) and a weight update dPhi are trained together on the
ordinary training loss of the masked model (``prunable.loss_terms``: the objective's diffusion loss of a DiT/SiT,
a MAR's own loss): every sample of every step draws its own hard mask by
Gumbel-softmax (straight-through), so the distributions learn which layer subsets recover best after a
weight update, not which ones lose least right now. The update is LoRA on every linear layer (or the modules
a model names as its ``lora_targets``; default, through peft), the full weights, or nothing ("frozen", the ablation). After training, each block keeps
its most probable row of the EMA logits; dPhi is dropped and the kept layers of the *original* model are
fine-tuned (``tinyfusion.pruning.indices.prune``).

Settings follow the official code: logits start at 0.02 and are scaled by 100, tau falls linearly from 4
to 0.1, AdamW without weight decay at lr 1e-4 (logits at 10x), LoRA rank 8 / alpha 16, grad clip 1.0,
non-finite steps skipped, EMA 0.999 of the logits.
"""
from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn as nn

from tinyfusion import dist
from tinyfusion.models import prunable
from tinyfusion.models.gates import NMGates, parse_groups, settled, tau_schedule
from tinyfusion.profiles import check_budget
from tinyfusion.training import LoopConfig, train, unwrap

UPDATES = ("lora", "full", "frozen")


def linear_module_names(model):
    """Names of the modules LoRA adapts, as the model chooses them (``prunable.lora_targets``: its own
    ``lora_targets``), else every ``nn.Linear`` (the LoRA targets: "every linear layer")."""
    own = prunable.lora_targets(model)
    if own is not None:
        return own
    return [name for name, mod in prunable.base_model(model).named_modules() if isinstance(mod, nn.Linear)]


def add_lora(model, rank=8, alpha=16):
    """Inject LoRA adapters (``W + alpha/rank * B A``, B = 0 at start) into the model's LoRA targets (every linear
    layer unless the model names its own), in place.

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

    ``model``: a model, or a registry name such as "DiT-XL/2" (then built on the meta device: no memory).
    """
    if isinstance(model, str):
        from tinyfusion.models.registry import build
        with torch.device("meta"):
            model = build(model)
    total = sum(p.numel() for p in model.parameters())
    return count_update_params(model, update, lora_rank) / total


class TrainableWeights:
    """The trainable tensors of a model (the weight update dPhi) as a state: LoRA runs save adapters, not the
    frozen copy of the teacher."""

    def __init__(self, model):
        self.model = model

    def state_dict(self):
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_state_dict(self, state):
        missing = set(state) ^ {n for n, p in self.model.named_parameters() if p.requires_grad}
        if missing:
            raise ValueError(f"saved weight update does not match this model ({sorted(missing)[:4]} ...); delete the "
                             f"state file or use another state path")
        self.model.load_state_dict(state, strict=False)


class GatedDiT(nn.Module):
    """A prunable model together with its gates: ``forward`` samples a per-sample mask and runs the masked model.

    One module, so DDP averages the gradients of the gates and the weight update alike. Two calls:
    ``forward(batch=..., objective=..., tau=...)`` returns the per-sample loss terms of the masked model on a batch
    ({x0, y, t, noise}) through the seam (``prunable.loss_terms``: the objective's loss, or the model's own), what
    learnable pruning trains on for any prunable model; ``forward(x, t, y, tau)`` returns the masked prediction
    (``prunable.forward_masked``: models trained through an objective, which then calls it as its network).
    """

    def __init__(self, model, gates):
        super().__init__()
        self.model = model
        self.gates = gates

    def forward(self, x=None, t=None, y=None, tau=1.0, batch=None, objective=None):
        if batch is not None:
            mask = self.gates.sample(batch["x0"].shape[0], tau)
            return prunable.loss_terms(self.model, objective, batch, layer_mask=mask)
        mask = self.gates.sample(x.shape[0], tau)
        return prunable.forward_masked(self.model, x, t, y, mask)


GatedModel = GatedDiT  # the name for any prunable model


def learn_pruning(model, images, labels, groups="1:2", update="lora", steps=100, batch_size=64, lr=1e-4,
                  logit_lr_mult=10.0, tau=(4.0, 0.1), lora_rank=8, lora_alpha=16, ema_decay=0.999, grad_clip=1.0,
                  seed=0, log_every=None, state_path=None, ckpt_every=0, stop_after=0, progress=True,
                  scale=100.0, gate_init=0.02, objective=None, identity=None):
    """Train N:M gates jointly with a weight update and return the decision.

    ``model``: the teacher, any prunable model (not modified: a copy is trained). ``images``/``labels``: training
    tensors (batches are drawn deterministically per step by ``training.global_batch``). ``groups``: "1:2", "2:4",
    "7:14" or a list of [N, M] blocks. ``update``: "lora", "full" or "frozen". ``state_path``: resumable
    training state (written every ``ckpt_every`` steps, when stopped by ``stop_after`` and at the end;
    read back if present). Under torchrun the global batch is split across ranks and gradients averaged.
    The loss is the masked model's training loss through ``prunable.loss_terms`` (the objective's for a DiT/SiT,
    the model's own for a MAR; one ``training.train`` loop). ``identity``:
    what a saved state must have been written for to be resumed (default: these settings and the data size).

    Returns a dict: kept, confidence, history (decision snapshots every ``log_every`` steps), log,
    trainable_params, gate_params, total_params, trainable_fraction, steps_per_s, skipped_steps, step
    (steps done), segments (threads and world size of each call, see ``training.train``), stopped_at (when
    stopped early), plus the trained ``gates`` and ``model`` (with dPhi).
    """
    from tinyfusion.diffusion import objective_for

    _check_update(update)
    steps = check_budget("steps", steps)
    batch_size = check_budget("batch_size", batch_size)
    log_every = int(log_every) if log_every else max(1, steps // 50)
    base = unwrap(model)
    depth = prunable.depth(base)
    pairs = parse_groups(groups, depth)
    dev = next(base.parameters()).device
    objective = objective or objective_for(base)
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
    n_update = sum(p.numel() for p in weights)
    n_total = sum(p.numel() for n, p in net.named_parameters() if "lora_" not in n)
    n_gates = sum(p.numel() for p in gates.parameters())
    if progress:
        dist.print0(f"learn_pruning {update} {groups}: {len(pairs)} blocks keep {gates.n_keep}/{depth} layers; "
                    f"dPhi {n_update:,} params ({100 * n_update / n_total:.2f}% of {n_total:,}), {steps} steps "
                    f"of batch {batch_size} on {dist.world_size()} process(es)")
    gates.record(0, tau_schedule(0, steps, *tau))  # the start (a resumed run restores its own history)

    def loss_fn(net_, batch, step):  # the masked model's loss through the seam (prunable.loss_terms)
        x, y, noise, t = batch
        terms = net_(batch=dict(x0=x, y=y, t=t, noise=noise), objective=objective, tau=tau_schedule(step, steps, *tau))
        return {k: v.mean() for k, v in terms.items()}

    def on_log(step, entry):
        entry["tau"] = tau_schedule(step, steps, *tau)
        if (step + 1) % log_every and step + 1 < steps:
            return {"tau": f"{entry['tau']:.2f}"}  # step 0's log entry: no decision snapshot (every log_every)
        snap = gates.record(step + 1, entry["tau"], loss=entry["loss"])
        return {"tau": f"{entry['tau']:.2f}", "conf": f"{min(snap['confidence']):.2f}"}

    loop = LoopConfig(steps=steps, batch_size=batch_size, seed=seed, grad_clip=grad_clip, log_every=log_every,
                      ckpt_every=ckpt_every if state_path else 0, stop_after=stop_after)
    res = train(learner, loss_fn, opt, images, labels, objective, loop, after_update=lambda s: gates.update_ema(ema_decay),
                on_log=on_log, state={"weights": TrainableWeights(net), "gates": gates, "opt": opt},
                state_path=state_path, identity=identity or run_config, desc=f"prune {update}", progress=progress)
    done = res["stopped_at"] or steps
    kept, confidence = gates.decision(use_ema=True)
    return {"kept": kept, "confidence": confidence, "history": gates.history, "log": res["log"],
            "groups": [list(p) for p in pairs], "update": update,
            "trainable_params": n_update, "gate_params": n_gates, "total_params": n_total,
            "trainable_fraction": n_update / n_total,
            "steps_per_s": done / res["total_wall_s"] if done and res["total_wall_s"] > 0 else None,
            "skipped_steps": res["skipped_steps"], "step": done, "segments": res["segments"],
            "stopped_at": res["stopped_at"], "gates": gates,
            "model": net}


# --------------------------------------------------------------------------- one learnable-pruning run
def learnable_config(profile=None, *, source=None, groups="1:2", update="lora", steps=0, batch_size=0, lr=0.0,
                     seed=0, logit_lr_mult=10.0, tau=(4.0, 0.1), lora_rank=None, lora_alpha=16.0, ema_decay=0.0,
                     grad_clip=1.0, objective="", model=""):
    """The resolved settings of one learnable-pruning run (what :func:`run_learnable` reads): profile defaults
    filled in for 0 / None (``source``: the profile's teacher; ``ema_decay``: the profile's gate-EMA decay;
    ``lora_rank``: the profile's, chosen so LoRA trains about the paper's 0.9%; ``objective``: the one the teacher's
    checkpoint names; a name given here replaces it and enters the config; ``model``: the registered config that
    builds a raw state dict such as the official DiT-XL-2-256x256.pt, default the profile's)."""
    from pathlib import Path

    from tinyfusion.data import data_identity
    from tinyfusion.diffusion import check_objective
    from tinyfusion.models import registry
    from tinyfusion.profiles import get_profile

    from tinyfusion import validate

    validate.settings(lr=lr, seed=seed, logit_lr_mult=logit_lr_mult, tau=tau, lora_rank=lora_rank,
                      lora_alpha=lora_alpha, ema_decay=ema_decay, grad_clip=grad_clip)
    groups = validate.groups("groups", groups)
    prof = get_profile(profile)
    _check_update(update)
    source = Path(prof.path(source or prof.teacher))
    if not source.exists():
        raise FileNotFoundError(f"teacher checkpoint {source} does not exist; train it first "
                                f"(python -m tinyfusion.cli.pretrain --profile {prof.name}) or pass --teacher")
    if model:  # a registered name of the teacher's architecture, else refused in one line naming both
        registry.check_name_fits(source, model, label=f"--teacher {source}")
    return dict(profile=prof.name, data=data_identity(prof), source=source, model=model or prof.model, groups=groups,
                update=update,
                steps=check_budget("steps", steps or prof.prune_steps),
                batch_size=check_budget("batch_size", batch_size or prof.prune_batch),
                lr=float(lr or prof.prune_lr), seed=int(seed), logit_lr_mult=float(logit_lr_mult),
                tau=[float(v) for v in tau], lora_rank=check_budget("lora_rank", prof.lora_rank if lora_rank is None else lora_rank),
                lora_alpha=float(lora_alpha), ema_decay=float(ema_decay or prof.prune_ema_decay), grad_clip=float(grad_clip),
                **({"objective": check_objective(objective)} if objective else {}))


def run_learnable(config, out, *, log_every=0, ckpt_every=50, stop_after=0, progress=True):
    """Run a :func:`learnable_config` into ``out``: ``kept.json`` (decision, confidences), ``history.json``
    (snapshots for the decision plots), ``pruned.pt`` (the ORIGINAL weights of the kept layers, renumbered: dPhi
    and the gates are dropped, as in the paper) and ``state.pt`` (resumable). Returns the summary and the paths,
    or ``{"stopped_at", ...}`` when ``stop_after`` ended it early."""
    from pathlib import Path

    from tinyfusion import cache
    from tinyfusion.data import load_data
    from tinyfusion.io import save_checkpoint, save_json
    from tinyfusion.models.registry import load_model
    from tinyfusion.pruning.indices import prune

    c, out = config, Path(out)
    # c["model"] builds a raw state dict of its architecture (a profile's default DiT name is ignored for a MAR)
    teacher = load_model(c["source"], default_name=c["model"], objective=c.get("objective")).to(dist.device())
    images, labels = load_data(c["data"]).tensors()
    res = learn_pruning(teacher, images, labels, groups=c["groups"], update=c["update"], steps=c["steps"],
                        batch_size=c["batch_size"], lr=c["lr"], logit_lr_mult=c["logit_lr_mult"], tau=tuple(c["tau"]),
                        lora_rank=c["lora_rank"], lora_alpha=c["lora_alpha"], ema_decay=c["ema_decay"],
                        grad_clip=c["grad_clip"], seed=c["seed"], log_every=log_every or None,
                        state_path=out / "state.pt", ckpt_every=ckpt_every, stop_after=stop_after, progress=progress,
                        identity=cache.fingerprint(c))
    if res["stopped_at"] is not None:
        return {"stopped_at": res["stopped_at"], "out": str(out), "state": str(out / "state.pt")}
    is_settled, last_change = settled(res["history"], res["groups"])
    summary = {"kept": res["kept"], "confidence": res["confidence"], "settled": is_settled, "last_change": last_change,
               "groups": res["groups"], "update": c["update"], "lora_rank": c["lora_rank"],
               "steps": c["steps"], "batch_size": c["batch_size"], "lr": c["lr"], "seed": c["seed"],
               "profile": c["profile"], "teacher": str(c["source"]), "depth": len(res["kept"]),
               "trainable_params": res["trainable_params"], "total_params": res["total_params"],
               "trainable_fraction": res["trainable_fraction"], "steps_per_s": res["steps_per_s"],
               "skipped_steps": res["skipped_steps"], "world_size": dist.world_size(),
               "backend": dist.backend(), "segments": res["segments"]}
    if dist.is_main():
        pruned = prune(teacher, res["kept"])  # the original weights: dPhi and the gates are dropped
        save_checkpoint({"ema": pruned.state_dict(), "config": pruned.config, "kept": res["kept"],
                         "source": cache.file_id(c["source"])}, out / "pruned.pt")
        save_json(summary, out / "kept.json")
        save_json({"groups": res["groups"], "update": c["update"], "history": res["history"], "log": res["log"]},
                  out / "history.json")
    dist.barrier()
    return {**summary, "out": str(out), "kept_json": str(out / "kept.json"),
            "history_json": str(out / "history.json"), "pruned": str(out / "pruned.pt"), "state": str(out / "state.pt")}
