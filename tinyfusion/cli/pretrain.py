"""Train the teacher DiT (or SiT, or MAR) from scratch on a profile's data (the stand-in for the 7M-step DiT-XL/2).

    python -m tinyfusion.cli.pretrain --profile cpu --out results/cpu/pretrain
    python -m tinyfusion.cli.pretrain --profile cpu-sit --out results/cpu-sit/pretrain   # SiT-T28/4, flow
    python -m tinyfusion.cli.pretrain --profile cpu --model MAR-T32/4 --out results/cpu/pretrain-mar  # its own loss
    torchrun --nproc_per_node=2 -m tinyfusion.cli.pretrain --profile cpu --out ...

Writes ``<out>/state.pt`` (resumable: model, EMA, optimiser, step, RNG) every ``ckpt_every`` steps and after 300 s
without one, ``<out>/teacher.pt`` (EMA weights + config, the artefact to ship) and ``<out>/summary.json`` at the end.
Killed and started again with the same flags, it resumes from ``state.pt`` and ends with the same weights.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from tinyfusion.cli.common import check_fits_profile, cli_main
from tinyfusion.profiles import PROFILES

DEFAULTS = dict(profile="cpu", out="", model="", objective="", steps=None, batch_size=None, lr=None, min_lr_frac=0.1,
                warmup=200, ema_decay=0.999, seed=0, ckpt_every=500, log_every=50, grad_clip=1.0, stop_after=0)
TYPES = dict(steps=int, batch_size=int, lr=float)
OUTPUTS = dict(out="folder")
CHOICES = dict(profile=tuple(PROFILES), objective=("ddpm", "flow"))
HELP = dict(profile="profile whose model, data and budgets are used (tinyfusion/profiles.py)",
            out="output folder (default: results/<profile>/pretrain)",
            model="registered model name, e.g. DiT-T28/4 or MAR-T32/4 (default: the profile's)",
            objective="ddpm or flow (default: the one the model's registered config names: DiT ddpm, SiT flow; "
                      "not for a model that computes its own loss, MAR)",
            steps="training steps (default: the profile's pretrain_steps)",
            batch_size="global batch size (default: the profile's pretrain_batch)",
            lr="peak learning rate (default: the profile's pretrain_lr)",
            min_lr_frac="cosine floor as a fraction of --lr", warmup="linear warm-up steps",
            ema_decay="EMA decay of the weights (teacher.pt holds the EMA)",
            seed="seed of the initialisation, batches, noise and timesteps",
            ckpt_every="write state.pt every this many steps (0: by time only), and after 300 s without one",
            log_every="log the loss every this many steps",
            grad_clip="gradient norm clip (0: none)",
            stop_after="stop after this many steps and save state.pt (0: run to the end; to test resuming)")


def run(lock=True, **cfg):
    """Pre-train into ``--out`` while holding its lock (``io.folder_lock``: one run per output folder); ``lock``
    False when the caller already holds it (a cached step of ``Study``, ``cache.cached``)."""
    from tinyfusion import dist
    from tinyfusion.io import folder_lock
    from tinyfusion.profiles import get_profile

    cfg = {**DEFAULTS, **cfg}
    out = Path(cfg["out"] or get_profile(cfg["profile"]).results / "pretrain")
    with folder_lock(out) if lock and dist.is_main() else contextlib.nullcontext():
        return _run(cfg)


def _run(cfg):
    import torch

    from tinyfusion import diffusion, dist, validate
    from tinyfusion.data import load_dataset
    from tinyfusion.io import save_checkpoint, save_json
    from tinyfusion.models import prunable
    from tinyfusion.models.registry import build
    from tinyfusion.profiles import check_budget, get_profile
    from tinyfusion.training import LoopConfig, cosine_lr, make_ema, train

    prof = get_profile(cfg["profile"])
    cfg["model"] = cfg["model"] or prof.model
    cfg["steps"] = check_budget("steps", validate.given_count("steps", cfg["steps"]) or prof.pretrain_steps)
    cfg["batch_size"] = check_budget("batch_size", validate.given_count("batch_size", cfg["batch_size"])
                                     or prof.pretrain_batch)
    cfg["lr"] = prof.pretrain_lr if cfg["lr"] is None else validate.number("lr", cfg["lr"], 0.0, lo_open=True)
    validate.settings(min_lr_frac=cfg["min_lr_frac"], warmup=cfg["warmup"], ema_decay=cfg["ema_decay"],
                      grad_clip=cfg["grad_clip"], seed=cfg["seed"])
    out = Path(cfg["out"] or prof.results / "pretrain")
    dev = dist.device()

    torch.manual_seed(cfg["seed"])
    model = build(cfg["model"], objective=cfg["objective"] or None).to(dev)
    check_fits_profile("--model", cfg["model"], prof.name, (model.config["in_channels"], model.config["input_size"]))
    own_loss = prunable.computes_loss(model)  # MAR: its forward is its loss; the objective only draws the times
    # default: the one the registered config names (DiT: ddpm, SiT: flow); None for a model with its own loss
    cfg["objective"] = None if own_loss else model.objective
    ema = make_ema(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0)
    objective = diffusion.objective_for(model)
    images, labels = load_dataset(prof).tensors()
    n_params = sum(p.numel() for p in model.parameters())
    dist.print0(f"pretrain {cfg['model']}: {n_params / 1e6:.2f}M params, {cfg['steps']} steps of batch "
                f"{cfg['batch_size']} on {dist.world_size()} process(es), {len(images)} images")
    # the model draws its own label dropout (seeded per step and rank), as the shipped teacher was trained
    identity = {k: v for k, v in cfg.items() if k not in ("out", "ckpt_every", "log_every", "stop_after")}
    loop = LoopConfig(steps=cfg["steps"], batch_size=cfg["batch_size"], seed=cfg["seed"], grad_clip=cfg["grad_clip"],
                      ema_decay=cfg["ema_decay"], ema_warmup=10, log_every=cfg["log_every"],
                      ckpt_every=cfg["ckpt_every"], stop_after=cfg["stop_after"])

    def loss_fn(net, batch, step):  # through the seam: the objective's loss, or the model's own (prunable.py)
        x, y, noise, t = batch
        terms = prunable.loss_terms(net, objective, dict(x0=x, y=y, t=t, noise=noise))
        return {k: v.mean() for k, v in terms.items()}

    res = train(model, loss_fn, opt, images, labels, objective, loop,
                lr_at=lambda s: cosine_lr(s, cfg["steps"], cfg["lr"], cfg["lr"] * cfg["min_lr_frac"], cfg["warmup"]),
                ema=ema, state={"model": model, "ema": ema, "opt": opt}, state_path=out / "state.pt",
                identity=identity, desc="pretrain")
    if res["stopped_at"] is not None:
        return {"stopped_at": res["stopped_at"], "out": str(out)}
    log = res["log"]
    summary = {"model": cfg["model"], "config": model.config, "params": n_params, "steps": cfg["steps"],
               "batch_size": cfg["batch_size"], "world_size": dist.world_size(),
               "wall_s": round(res["total_wall_s"], 1), "wall_s_last_call": round(res["wall_s"], 1),
               "samples_per_s": round(res["samples_per_s"], 1), "skipped_steps": res["skipped_steps"],
               "final_loss": log[-1]["loss"] if log else None, "seed": cfg["seed"], "profile": prof.name,
               "segments": res["segments"],
               "objective": None if own_loss else objective.config}
    if dist.is_main():
        save_checkpoint({"ema": ema.state_dict(), "config": model.config, "summary": summary}, out / "teacher.pt")
        save_json({**summary, "log": log}, out / "summary.json")
    dist.barrier()
    return {**summary, "teacher": str(out / "teacher.pt")}


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
