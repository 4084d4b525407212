"""Recover a pruned model: fine-tune it, or distil it from a teacher (logits KD, RepKD, masked RepKD; DiT/SiT only:
a model that computes its own loss, MAR, is fine-tuned with ``--mode finetune`` and refused by the KD modes).

    python -m tinyfusion.cli.finetune --profile cpu --student results/cpu/prune_learn/<label>-<key>/pruned.pt --mode finetune
    torchrun --nproc_per_node=2 -m tinyfusion.cli.finetune --student ... --mode masked_kd --k-sigma 2 \\
        --kept '[1, 3, 4, ...]' --groups 1:2

``--student``: a pruned checkpoint ``{"ema": state_dict, "config": config}`` (as the pruning entry points
write; a ``kept`` entry in it is used when ``--kept`` is not given), or a raw official state dict (TinyDiT-D14)
with ``--model DiT-XL/2``. ``--teacher`` (default: the profile's
teacher) is needed by the KD modes; RepKD modes also need ``--kept`` and ``--groups`` (and ``--parent-map``
when the student was pruned from an already pruned model but is distilled from the original).

Writes ``<out>/state.pt`` (resumable), ``<out>/model.pt`` (``{"ema": ..., "config": ...}``, loads with
``registry.load_model``), ``<out>/log.json`` and ``<out>/run.json`` (the fingerprint of the resolved config and the result,
written last).
The default ``<out>`` is keyed by the resolved config (``tinyfusion.cache``), the folder the notebooks use too.
Killed and started again with the same flags, it resumes from ``state.pt``; a finished run is reused unless
``--recompute``. In-process: ``tinyfusion.recovery.recovery_config`` and ``run_recovery``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tinyfusion.cli.common import DIT, check_fits_profile, cli_main, count_list
from tinyfusion.profiles import PROFILES

MODES = ("finetune", "kd", "repkd", "masked_kd")  # tinyfusion.recovery.MODES (a test checks), without importing torch
DEFAULTS = dict(profile="cpu", student="", teacher="", mode="finetune", k_sigma=0.0, kept=None, groups="1:2",
                parent_map=None, steps=None, batch_size=None, lr=None, min_lr=None, a_kd=0.9, a_diff=0.1, beta0=None,
                beta1=None, ema_decay=0.999, ema_warmup=10, grad_clip=1.0, seed=0, out="", ckpt_every=100,
                log_every=1, stop_after=0, max_skipped=-1, recompute=False, progress=True, inject_nan_at=None,
                objective="", lr_steps=0, snapshots=None, model="")
TYPES = dict(steps=int, batch_size=int, lr=float, min_lr=float, beta0=float, beta1=float)
INPUTS = dict(student=("torch", DIT), teacher=("torch", DIT))
OUTPUTS = dict(out="folder")
CHOICES = dict(profile=tuple(PROFILES), mode=MODES, objective=("ddpm", "flow"))
HELP = dict(profile="profile whose budgets and teacher are used (tinyfusion/profiles.py)",
            student="pruned checkpoint to recover (required)",
            teacher="teacher checkpoint, for the KD modes (default: the profile's)",
            mode="finetune (plain), kd (logits KD), repkd (logits + representation KD) or masked_kd (RepKD with "
                 "massive activations masked)",
            k_sigma="masked_kd: mask |x-mean| >= k*std (0 = no mask)",
            kept="JSON list: the student's kept layer indices in the model it was pruned from (default: the "
                 "'kept' stored in the student's checkpoint)",
            groups="local blocks of the prune: N:M, or a JSON list of [N, M]; 'none' = one block",
            parent_map="JSON list: teacher layer matched to each layer of the intermediate model (D14 -> D7; "
                       "default: none, the student was pruned from the teacher)",
            steps="training steps (default: the profile's finetune_steps)",
            batch_size="global batch size (default: the profile's)",
            lr="peak learning rate (default: the profile's, 2e-4 as the paper)",
            min_lr="cosine floor (default lr / 2: 2e-4 -> 1e-4)",
            a_kd="weight of the KD loss (the paper's alpha_KD)", a_diff="weight of the diffusion loss (alpha_Diff)",
            ema_decay="EMA decay of the weights (the model written is the EMA)",
            ema_warmup="steps before the EMA starts averaging", grad_clip="gradient norm clip (0: none)",
            seed="seed of the batches, noise and timesteps",
            ckpt_every="write state.pt every this many steps (0: by time only), and after 300 s without one",
            log_every="log the losses every this many steps", stop_after="stop after this many steps and save "
            "state.pt (0: run to the end; to test resuming)",
            max_skipped="non-finite losses tolerated before the run stops; -1: 10% of the steps (at least 5)",
            recompute="run again even when a finished run of the same config is cached",
            progress="show a progress bar (rank 0)",
            out="output folder (default results/<profile>/finetune/<mode>-<key of the resolved config>)",
            beta0="weight of L_Rep at the first step (default: the profile's kd_beta; DiT 1e-2, SiT 2e-4)",
            beta1="weight of L_Rep at the last step, linear in between (default: the profile's, 0)",
            objective="training objective, ddpm or flow (default: the one the student's checkpoint names)",
            lr_steps="length of the cosine schedule (default: steps; recovery curves share their longest run's)",
            snapshots="JSON list of step counts at which the EMA is also saved (ema_<step>.pt; recovery curves)",
            model="registered config that builds a raw state dict given as --student or --teacher (the official "
                  "DiT-XL-2-256x256.pt, TinyDiT-D14/D7: --model DiT-XL/2; depth read from its keys; default: the "
                  "profile's model; our checkpoints carry their config)",
            inject_nan_at="JSON list of steps whose loss is replaced by NaN (tests of the skip guard)")


def run(**cfg):
    from tinyfusion import cache, dist, validate
    from tinyfusion.profiles import get_profile
    from tinyfusion.recovery import recovery_config, run_recovery

    cfg = {**DEFAULTS, **cfg}
    config = recovery_config(cfg["profile"], student=cfg["student"], mode=cfg["mode"], teacher=cfg["teacher"],
                             k_sigma=cfg["k_sigma"], kept=cfg["kept"], groups=cfg["groups"],
                             parent_map=cfg["parent_map"], steps=validate.given_count("steps", cfg["steps"]),
                             batch_size=validate.given_count("batch_size", cfg["batch_size"]),
                             lr=validate.given_rate("lr", cfg["lr"]), min_lr=validate.given_rate("min_lr", cfg["min_lr"]),
                             a_kd=cfg["a_kd"], a_diff=cfg["a_diff"],
                             beta=(cfg["beta0"], cfg["beta1"]), ema_decay=cfg["ema_decay"],
                             ema_warmup=cfg["ema_warmup"], grad_clip=cfg["grad_clip"], seed=cfg["seed"],
                             inject_nan_at=count_list("inject_nan_at", cfg["inject_nan_at"], 0) or None,
                             objective=cfg["objective"],
                             lr_steps=cfg["lr_steps"], snapshots=count_list("snapshots", cfg["snapshots"], 1),
                             model=cfg["model"])
    prof = get_profile(cfg["profile"])
    out = Path(cfg["out"]) if cfg["out"] else cache.folder(prof.results, "finetune", cfg["mode"], config)
    reused = not cfg["recompute"] and cache.done(out, config)
    if reused:
        dist.print0(f"reusing {out / cache.RECORD} (pass --recompute to run again)")

    def compute(folder):
        check_fits_profile("--student", config["student"], cfg["profile"])  # before the first step (not when cached)
        return run_recovery(config, folder, log_every=cfg["log_every"], ckpt_every=cfg["ckpt_every"],
                            stop_after=cfg["stop_after"], progress=cfg["progress"],
                            max_skipped=None if cfg["max_skipped"] < 0 else cfg["max_skipped"])
    result = cache.cached(out, config, compute, recompute=cfg["recompute"])
    return {**result, "cached": reused}


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
