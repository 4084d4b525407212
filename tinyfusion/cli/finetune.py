"""Recover a pruned DiT: fine-tune it, or distil it from a teacher (logits KD, RepKD, masked RepKD).

    python -m tinyfusion.cli.finetune --profile cpu --student results/cpu/prune/.../pruned.pt --mode finetune
    torchrun --nproc_per_node=2 -m tinyfusion.cli.finetune --student ... --mode masked_kd --k-sigma 2 \\
        --kept '[1, 3, 4, ...]' --groups 1:2

``--student``: a pruned checkpoint ``{"ema": state_dict, "config": config}`` (as the pruning entry points
write; a ``kept`` entry in it is used when ``--kept`` is not given). ``--teacher`` (default: the profile's
teacher) is needed by the KD modes; RepKD modes also need ``--kept`` and ``--groups`` (and ``--parent-map``
when the student was pruned from an already pruned model but is distilled from the original).

Writes ``<out>/state.pt`` (resumable), ``<out>/model.pt`` (``{"ema": ..., "config": ...}``, loads with
``load_dit``), ``<out>/log.json`` and ``<out>/result.json``. Killed and started again with the same flags, it
resumes from ``state.pt``; a finished run is reused unless ``--recompute true``.
"""
from __future__ import annotations

from pathlib import Path

from tinyfusion import dist
from tinyfusion.cli.common import cli_main
from tinyfusion.data import load_dataset
from tinyfusion.io import config_key, load_checkpoint, load_json, save_checkpoint, save_json, sha256
from tinyfusion.models import load_dit
from tinyfusion.profiles import check_budget, get_profile
from tinyfusion.recovery import MODES, REP_MODES, TEACHER_MODES, finetune, layer_map

DEFAULTS = dict(profile="cpu", student="", teacher="", mode="finetune", k_sigma=0.0, kept=None, groups="1:2",
                parent_map=None, steps=0, batch_size=0, lr=0.0, min_lr=0.0, a_kd=0.9, a_diff=0.1, beta0=1e-2,
                beta1=0.0, ema_decay=0.999, ema_warmup=10, grad_clip=1.0, seed=0, out="", ckpt_every=100,
                log_every=1, stop_after=0, max_skipped=-1, recompute=False, progress=True, inject_nan_at=None)
HELP = dict(student="pruned checkpoint to recover (required)", teacher="teacher checkpoint (default: profile's)",
            mode="one of " + ", ".join(MODES), k_sigma="masked_kd: mask |x-mean| >= k*std (0 = no mask)",
            kept="JSON list: the student's kept layer indices in the model it was pruned from",
            groups="local blocks of the prune: N:M, or a JSON list of [N, M]; 'none' = one block",
            parent_map="JSON list: teacher layer matched to each layer of the intermediate model (D14 -> D7)",
            min_lr="cosine floor (default lr / 2: 2e-4 -> 1e-4)", max_skipped="-1: 10%% of the steps (at least 5)",
            out="output folder (default results/<profile>/finetune/<key>)",
            inject_nan_at="JSON list of steps whose loss is replaced by NaN (tests of the skip guard)")


def run(**cfg):
    cfg = {**DEFAULTS, **cfg}
    prof = get_profile(cfg["profile"])
    mode = cfg["mode"]
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
    if not cfg["student"]:
        raise ValueError("--student is required: the pruned checkpoint to recover")
    steps = check_budget("steps", cfg["steps"] or prof.finetune_steps)
    batch_size = check_budget("batch_size", cfg["batch_size"] or prof.finetune_batch)
    lr = cfg["lr"] or prof.finetune_lr
    min_lr = cfg["min_lr"] or lr / 2
    k_sigma = cfg["k_sigma"] or None
    student_path = Path(cfg["student"])
    ckpt = load_checkpoint(student_path)
    student = load_dit(ckpt)

    teacher, teacher_path, lmap = None, None, None
    if mode in TEACHER_MODES:
        teacher_path = Path(cfg["teacher"]) if cfg["teacher"] else prof.path(prof.teacher)
        if not teacher_path.exists():
            raise FileNotFoundError(f"teacher {teacher_path} does not exist; train it (tinyfusion.cli.pretrain) or "
                                    f"pass --teacher")
        teacher = load_dit(teacher_path)
    kept = cfg["kept"] if cfg["kept"] is not None else (ckpt.get("kept") if isinstance(ckpt, dict) else None)
    groups = None if str(cfg["groups"]).lower() in ("none", "") else cfg["groups"]
    if mode in REP_MODES:
        if kept is None:
            raise ValueError(f"mode {mode!r} matches student layers to teacher layers: pass --kept (JSON list of the "
                             f"student's kept layer indices); {student_path} stores none")
        lmap = layer_map(kept, groups, teacher.depth, cfg["parent_map"])

    key_cfg = dict(student=sha256(student_path), teacher=str(teacher_path) if teacher_path else None, mode=mode,
                   k_sigma=k_sigma, layer_map=lmap, steps=steps, batch_size=batch_size, lr=lr, min_lr=min_lr,
                   a_kd=cfg["a_kd"], a_diff=cfg["a_diff"], beta=[cfg["beta0"], cfg["beta1"]], seed=cfg["seed"],
                   ema_decay=cfg["ema_decay"], ema_warmup=cfg["ema_warmup"], grad_clip=cfg["grad_clip"],
                   profile=prof.name, inject_nan_at=cfg["inject_nan_at"])
    out = Path(cfg["out"] or prof.results / "finetune" / config_key(key_cfg))
    if (out / "result.json").exists() and not cfg["recompute"]:
        cached = load_json(out / "result.json")
        if cached.get("key_config") == key_cfg:
            dist.print0(f"reusing {out / 'result.json'} (pass --recompute true to run again)")
            return {**cached, "cached": True}

    images, labels = load_dataset(prof).tensors()
    dist.print0(f"recovery {mode}: student {student.depth} layers from {student_path}"
                + (f", teacher {teacher.depth} layers, layer_map {lmap}" if teacher is not None else "")
                + f"; {steps} steps of batch {batch_size} on {dist.world_size()} process(es)")
    res = finetune(student, images, labels, mode, teacher, lmap, steps=steps, batch_size=batch_size, lr=lr,
                   min_lr=min_lr, a_kd=cfg["a_kd"], a_diff=cfg["a_diff"], beta=(cfg["beta0"], cfg["beta1"]),
                   k_sigma=k_sigma, ema_decay=cfg["ema_decay"], ema_warmup=cfg["ema_warmup"],
                   grad_clip=cfg["grad_clip"], seed=cfg["seed"], log_every=cfg["log_every"],
                   state_path=out / "state.pt", ckpt_every=cfg["ckpt_every"], stop_after=cfg["stop_after"],
                   max_skipped=None if cfg["max_skipped"] < 0 else cfg["max_skipped"], progress=cfg["progress"],
                   inject_nan_at=cfg["inject_nan_at"])
    if res["stopped_at"] is not None:
        return {"stopped_at": res["stopped_at"], "out": str(out), "state": str(out / "state.pt")}
    log = res["log"]
    result = dict(out=str(out), model=str(out / "model.pt"), state=str(out / "state.pt"), log=str(out / "log.json"),
                  mode=mode, steps=steps, batch_size=batch_size, world_size=dist.world_size(),
                  skipped_steps=res["skipped_steps"], samples_per_s=round(res["samples_per_s"], 1),
                  wall_s=round(res["wall_s"], 1), first_step=res["first_step_components"],
                  final_loss=log[-1]["loss"] if log else None, layer_map=lmap, kept=kept,
                  student=str(student_path), teacher=str(teacher_path) if teacher_path else None,
                  key_config=key_cfg)
    if dist.is_main():
        save_checkpoint({"ema": res["ema"].state_dict(), "config": res["model"].config, "kept": kept,
                         "recovery": {k: v for k, v in result.items() if k != "key_config"}}, out / "model.pt")
        save_json(log, out / "log.json")
        save_json(result, out / "result.json")
    dist.barrier()
    return result


def main(argv=None):
    return cli_main(run, __doc__.splitlines()[0], DEFAULTS, HELP, argv=argv)


if __name__ == "__main__":
    main()
