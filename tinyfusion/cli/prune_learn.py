"""Learn which layers of the teacher to keep (TinyFusion) and write the pruned shallow model.

    python -m tinyfusion.cli.prune_learn --profile cpu --groups 1:2 --update lora
    torchrun --nproc_per_node=2 -m tinyfusion.cli.prune_learn --profile cpu --groups 2:4 --update frozen

Writes, under ``<out>`` (default ``results/<profile>/prune_learn/<groups>_<update>_s<seed>``):
``kept.json`` (kept layers, confidence per block, groups, update), ``history.json`` (decision snapshots for
plots), ``pruned.pt`` (``{"ema": state_dict, "config": config}``: the ORIGINAL teacher weights of the kept
layers, renumbered; the weight update and the gates are dropped, as in the paper) and ``state.pt``
(resumable). Killed and started again with the same flags, it resumes and ends with the same decision.
"""
from __future__ import annotations

import json
from pathlib import Path

from tinyfusion import dist
from tinyfusion.cli.common import cli_main
from tinyfusion.data import load_dataset
from tinyfusion.io import save_checkpoint, save_json
from tinyfusion.models import load_dit
from tinyfusion.models.gates import groups_label
from tinyfusion.profiles import check_budget, get_profile
from tinyfusion.pruning.indices import prune
from tinyfusion.pruning.learnable import learn_pruning

DEFAULTS = dict(profile="cpu", teacher="", groups="1:2", update="lora", steps=0, batch_size=0, lr=0.0, seed=0,
                out="", stop_after=0, log_every=0, ckpt_every=0, logit_lr_mult=10.0, tau_start=4.0, tau_end=0.1,
                lora_rank=8, lora_alpha=16.0, ema_decay=0.999, grad_clip=1.0)
HELP = dict(teacher="teacher checkpoint (default: the profile's)",
            groups="N:M block size, e.g. 1:2, 2:4, 7:14, or a JSON list of [N, M] blocks",
            update="weight update trained with the gates: lora, full or frozen",
            steps="training steps (default: the profile's prune_steps, standing for one epoch)",
            stop_after="stop after this many steps (and save state.pt) to test resuming")


def default_out(prof, groups, update, seed):
    return prof.results / "prune_learn" / f"{groups_label(groups)}_{update}_s{seed}"


def run(**cfg):
    cfg = {**DEFAULTS, **cfg}
    prof = get_profile(cfg["profile"])
    groups = cfg["groups"]
    if isinstance(groups, str) and groups.strip().startswith("["):
        groups = json.loads(groups)
    steps = check_budget("steps", cfg["steps"] or prof.prune_steps)
    batch_size = check_budget("batch_size", cfg["batch_size"] or prof.prune_batch)
    lr = cfg["lr"] or prof.prune_lr
    teacher_path = prof.path(cfg["teacher"] or prof.teacher)
    out = Path(cfg["out"] or default_out(prof, groups, cfg["update"], cfg["seed"]))
    if not teacher_path.exists():
        raise FileNotFoundError(f"teacher checkpoint {teacher_path} does not exist; train it first "
                                f"(python -m tinyfusion.cli.pretrain --profile {prof.name}) or pass --teacher")
    teacher = load_dit(teacher_path, name=prof.model).to(dist.device())
    images, labels = load_dataset(prof).tensors()

    res = learn_pruning(teacher, images, labels, groups=groups, update=cfg["update"], steps=steps,
                        batch_size=batch_size, lr=lr, logit_lr_mult=cfg["logit_lr_mult"],
                        tau=(cfg["tau_start"], cfg["tau_end"]), lora_rank=cfg["lora_rank"],
                        lora_alpha=cfg["lora_alpha"], ema_decay=cfg["ema_decay"], grad_clip=cfg["grad_clip"],
                        seed=cfg["seed"], log_every=cfg["log_every"] or None, state_path=out / "state.pt",
                        ckpt_every=cfg["ckpt_every"], stop_after=cfg["stop_after"])
    if res["stopped_at"] is not None:
        return {"stopped_at": res["stopped_at"], "out": str(out), "state": str(out / "state.pt")}

    kept, confidence = res["kept"], res["confidence"]
    summary = {"kept": kept, "confidence": confidence, "groups": res["groups"], "update": cfg["update"],
               "steps": steps, "batch_size": batch_size, "lr": lr, "seed": cfg["seed"], "profile": prof.name,
               "teacher": str(teacher_path), "depth": len(kept), "trainable_params": res["trainable_params"],
               "total_params": res["total_params"], "trainable_fraction": res["trainable_fraction"],
               "steps_per_s": res["steps_per_s"], "skipped_steps": res["skipped_steps"],
               "world_size": dist.world_size()}
    if dist.is_main():
        pruned = prune(teacher, kept)  # the original weights: dPhi and the gates are dropped
        save_checkpoint({"ema": pruned.state_dict(), "config": pruned.config, "kept": kept,
                         "source": str(teacher_path)}, out / "pruned.pt")
        save_json(summary, out / "kept.json")
        save_json({"groups": res["groups"], "update": cfg["update"], "history": res["history"], "log": res["log"]},
                  out / "history.json")
    dist.barrier()
    return {**summary, "out": str(out), "kept_json": str(out / "kept.json"),
            "history_json": str(out / "history.json"), "pruned": str(out / "pruned.pt"),
            "state": str(out / "state.pt")}


def main(argv=None):
    return cli_main(run, __doc__.splitlines()[0], DEFAULTS, HELP, argv=argv)


if __name__ == "__main__":
    main()
