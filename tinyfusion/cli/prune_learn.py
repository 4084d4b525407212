"""Learn which layers of the teacher to keep (TinyFusion) and write the pruned shallow model.

    python -m tinyfusion.cli.prune_learn --profile cpu --groups 1:2 --update lora
    torchrun --nproc_per_node=2 -m tinyfusion.cli.prune_learn --profile cpu --groups 2:4 --update frozen

Writes, under ``<out>`` (default ``results/<profile>/prune_learn/<groups>_<update>_s<seed>-<key>``, keyed by the
resolved config like every cached step, see ``tinyfusion.cache``), ``run.json`` last and:
``kept.json`` (kept layers, confidence per block, groups, update), ``history.json`` (decision snapshots for
plots), ``pruned.pt`` (``{"ema": state_dict, "config": config}``: the ORIGINAL teacher weights of the kept
layers, renumbered; the weight update and the gates are dropped, as in the paper) and ``state.pt``
(resumable). Killed and started again with the same flags, it resumes and ends with the same decision.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tinyfusion.cli.common import DIT, check_fits_profile, cli_main
from tinyfusion.profiles import PROFILES

UPDATES = ("lora", "full", "frozen")  # tinyfusion.pruning.learnable.UPDATES (a test checks), without importing torch
DEFAULTS = dict(profile="cpu", teacher="", groups="1:2", update="lora", steps=None, batch_size=None, lr=None, seed=0,
                out="", stop_after=0, log_every=0, ckpt_every=50, logit_lr_mult=10.0, tau_start=4.0, tau_end=0.1,
                lora_rank=None, lora_alpha=16.0, ema_decay=0.0, grad_clip=1.0, objective="", recompute=False,
                model="")
TYPES = dict(steps=int, batch_size=int, lr=float, lora_rank=int)
INPUTS = dict(teacher=("torch", DIT))
OUTPUTS = dict(out="folder")
CHOICES = dict(profile=tuple(PROFILES), update=UPDATES, objective=("ddpm", "flow"))
HELP = dict(profile="profile whose budgets and teacher are used (tinyfusion/profiles.py)",
            teacher="teacher checkpoint (default: the profile's)",
            groups="N:M block size, e.g. 1:2, 2:4, 7:14, or a JSON list of [N, M] blocks",
            update="weight update trained with the gates: lora, full or frozen",
            steps="training steps (default: the profile's prune_steps, standing for one epoch)",
            batch_size="global batch size (default: the profile's prune_batch)",
            lr="learning rate of the weight update (default: the profile's prune_lr)",
            seed="seed of the batches, noise, timesteps and Gumbel draws",
            logit_lr_mult="learning rate of the gate logits, as a multiple of --lr",
            tau_start="Gumbel-softmax temperature at the first step", tau_end="temperature at the last step",
            lora_alpha="LoRA scaling alpha", grad_clip="gradient norm clip (0: none)",
            log_every="record the decisions every this many steps (default 0: steps // 50)",
            ckpt_every="write state.pt every this many steps (0: by time only), and after 300 s without one",
            recompute="run again even when a finished run of the same config is cached",
            lora_rank="LoRA rank (default: the profile's, about the paper's 0.9% of the parameters trained)",
            ema_decay="EMA decay of the gate logits (default: the profile's prune_ema_decay; the paper: 0.999)",
            objective="training objective, ddpm or flow (default: the one the teacher's checkpoint names)",
            model="registered config that builds a raw state dict given as --teacher (the official "
                  "DiT-XL-2-256x256.pt: DiT-XL/2; depth read from its keys; default: the profile's model)",
            stop_after="stop after this many steps (and save state.pt) to test resuming",
            out="output folder (default results/<profile>/prune_learn/<groups>_<update>_s<seed>-<key>)")


def run(**cfg):
    from tinyfusion import cache, validate
    from tinyfusion.profiles import get_profile
    from tinyfusion.pruning.learnable import learnable_config, run_learnable

    cfg = {**DEFAULTS, **cfg}
    config = learnable_config(cfg["profile"], source=cfg["teacher"], groups=cfg["groups"], update=cfg["update"],
                              steps=validate.given_count("steps", cfg["steps"]),
                              batch_size=validate.given_count("batch_size", cfg["batch_size"]),
                              lr=validate.given_rate("lr", cfg["lr"]), seed=cfg["seed"],
                              logit_lr_mult=cfg["logit_lr_mult"], tau=(cfg["tau_start"], cfg["tau_end"]),
                              lora_rank=cfg["lora_rank"], lora_alpha=cfg["lora_alpha"], ema_decay=cfg["ema_decay"],
                              grad_clip=cfg["grad_clip"], objective=cfg["objective"],
                              model=cfg["model"])
    label = f"{str(config['groups']).replace(':', 'of')}_{config['update']}_s{config['seed']}"
    out = Path(cfg["out"]) if cfg["out"] else cache.folder(get_profile(cfg["profile"]).results, "prune_learn",
                                                          label, config)

    def compute(folder):
        if cfg["teacher"]:  # before the first step (not when cached); the profile's own teacher fits it
            check_fits_profile("--teacher", cfg["teacher"], cfg["profile"])
        return run_learnable(config, folder, log_every=cfg["log_every"], ckpt_every=cfg["ckpt_every"],
                             stop_after=cfg["stop_after"])
    return cache.cached(out, config, compute, recompute=cfg["recompute"])


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
