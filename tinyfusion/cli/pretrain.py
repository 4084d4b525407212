"""Train the teacher DiT from scratch on a profile's data (the stand-in for the 7M-step DiT-XL/2).

    python -m tinyfusion.cli.pretrain --profile cpu --out results/cpu/pretrain
    torchrun --nproc_per_node=2 -m tinyfusion.cli.pretrain --profile cpu --out ...

Writes ``<out>/state.pt`` (resumable: model, EMA, optimiser, step, RNG) every ``ckpt_every`` steps,
``<out>/teacher.pt`` (EMA weights + config, the artefact to ship) and ``<out>/summary.json`` at the end.
Killed and started again with the same flags, it resumes from ``state.pt`` and ends with the same weights.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from tinyfusion import dist
from tinyfusion.cli.common import cli_main
from tinyfusion.data import load_dataset
from tinyfusion.diffusion import create_diffusion
from tinyfusion.io import save_checkpoint, save_json
from tinyfusion.models import build_model
from tinyfusion.profiles import check_budget, get_profile
from tinyfusion.training import (NonFiniteGuard, cosine_lr, global_batch, load_train_state, make_ema,
                                 save_train_state, seed_step, shard, unwrap, update_ema)

DEFAULTS = dict(profile="cpu", out="", model="", steps=0, batch_size=0, lr=0.0, min_lr_frac=0.1, warmup=200,
                ema_decay=0.999, seed=0, ckpt_every=500, log_every=50, grad_clip=1.0, stop_after=0)
RESUME_KEYS = ("profile", "model", "steps", "batch_size", "lr", "seed", "ema_decay")


def run(**cfg):
    cfg = {**DEFAULTS, **cfg}
    prof = get_profile(cfg["profile"])
    cfg["model"] = cfg["model"] or prof.model
    cfg["steps"] = check_budget("steps", cfg["steps"] or prof.pretrain_steps)
    cfg["batch_size"] = check_budget("batch_size", cfg["batch_size"] or prof.pretrain_batch)
    cfg["lr"] = cfg["lr"] or prof.pretrain_lr
    out = Path(cfg["out"] or prof.results / "pretrain")
    dev = dist.device()

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"]).to(dev)
    ema = make_ema(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0)
    diffusion = create_diffusion()
    images, labels = load_dataset(prof).tensors()
    start = 0
    state = load_train_state(out / "state.pt", cfg, RESUME_KEYS)
    log = []
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start, log = state["step"], state["log"]
        dist.print0(f"resuming {out / 'state.pt'} at step {start}")
    ddp = DDP(model) if dist.is_dist() else model
    guard = NonFiniteGuard(cfg["steps"])
    guard.skipped = state.get("skipped", 0) if state is not None else 0  # non-finite steps before a resume
    n_params = sum(p.numel() for p in model.parameters())
    dist.print0(f"pretrain {cfg['model']}: {n_params / 1e6:.2f}M params, {cfg['steps']} steps of batch "
                f"{cfg['batch_size']} on {dist.world_size()} process(es), {len(images)} images")

    def checkpoint(step):
        save_train_state(out / "state.pt", step, unwrap(model).config, model=unwrap(model).state_dict(),
                         ema=ema.state_dict(), opt=opt.state_dict(), log=log, skipped=guard.skipped,
                         run_config=cfg)

    t0, seen = time.time(), 0
    model.train()
    bar = tqdm(range(start, cfg["steps"]), initial=start, total=cfg["steps"], disable=not dist.is_main(),
               desc="pretrain", dynamic_ncols=True)
    for step in bar:
        x, y, noise, t = shard(global_batch(images, labels, step, cfg["batch_size"], cfg["seed"]))
        seed_step(cfg["seed"], step)
        lr = cosine_lr(step, cfg["steps"], cfg["lr"], cfg["lr"] * cfg["min_lr_frac"], cfg["warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        terms = diffusion.training_losses(ddp, x.to(dev), t.to(dev), dict(y=y.to(dev)), noise=noise.to(dev))
        loss = terms["loss"].mean()
        opt.zero_grad(set_to_none=True)
        if guard.ok(loss, step):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            update_ema(ema, unwrap(model), min(cfg["ema_decay"], (1 + step) / (10 + step)))  # warm-up
        seen += cfg["batch_size"]
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]:
            stats = dist.reduce_dict({"loss": loss.detach(), "mse": terms["mse"].mean().detach()})
            log.append({"step": step + 1, "lr": lr, **stats})
            bar.set_postfix(loss=f"{stats['loss']:.4f}", sps=f"{seen / (time.time() - t0):.0f}")
        if (step + 1) % cfg["ckpt_every"] == 0 and step + 1 < cfg["steps"]:
            checkpoint(step + 1)
        if cfg["stop_after"] and step + 1 - start >= cfg["stop_after"]:
            checkpoint(step + 1)
            return {"stopped_at": step + 1, "out": str(out)}
    wall = time.time() - t0
    checkpoint(cfg["steps"])
    summary = {"model": cfg["model"], "config": unwrap(model).config, "params": n_params, "steps": cfg["steps"],
               "batch_size": cfg["batch_size"], "world_size": dist.world_size(), "wall_s": round(wall, 1),
               "samples_per_s": round(seen / max(wall, 1e-9), 1), "skipped_steps": guard.skipped,
               "final_loss": log[-1]["loss"] if log else None, "seed": cfg["seed"], "profile": prof.name}
    if dist.is_main():
        save_checkpoint({"ema": ema.state_dict(), "config": unwrap(model).config, "summary": summary},
                        out / "teacher.pt")
        save_json({**summary, "log": log}, out / "summary.json")
    dist.barrier()
    return {**summary, "teacher": str(out / "teacher.pt")}


def main(argv=None):
    return cli_main(run, __doc__.splitlines()[0], DEFAULTS, argv=argv)


if __name__ == "__main__":
    main()
