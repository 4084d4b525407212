"""TinyMAR: paper Table 2's MAR row (claim 10, issue 29; notebook 13, ``make mar``).

The paper prunes MAR-Large (16 encoder + 16 decoder layers) to 16 layers with learnable pruning and fine-tunes 40 of
MAR-L's 400 epochs (TinyMAR-D16: FID 2.28 against the teacher's 1.78). Here the profile's "-mar" variant (the
MAR-T32/4 teacher) runs notebook 01's recovery-curve protocol through ``Study``: the same steps, caches and rules as
for DiT, every layer reached through ``models.prunable``. This module only lays out what the notebook shows: which
candidates, how many encoder and decoder layers each keeps, the teachers side by side, and Table 2 with the paper
beside ours. Nothing here decides a status: the rules of ``tinyfusion.verdicts`` do.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tinyfusion import paper
from tinyfusion.robustness import setting_curves

# learnable 1:2 (LoRA, one run per pruning seed), the metric-based baselines that read a MAR (ShortGPT, sensitivity),
# the calibration-loss pick of the random study and the hand-made Oracle pattern (evenly spaced, first and last kept).
# Flux-Lite runs on a MAR too but is not in Table 2's comparison; the 1:2 references (``Study.mask_study``) would
# score all 2^16 masks of 32 layers, so they are left out.
METHODS = ("learnable", "shortgpt", "min-loss random", "oracle", "sensitivity")


def label(method, prune_seed):
    """A candidate's name in figures and tables: learnable carries its pruning seed."""
    return method if prune_seed is None else f"{method} (pruning seed {prune_seed})"


def kept_by_label(candidates):
    """{label: kept layers} of ``candidates`` ((method, prune seed, kept) triples, ``Study.candidates``), for
    ``plots.keep_matrix``."""
    return {label(m, ps): list(k) for m, ps, k in candidates}


def encoder_decoder(kept, encoder_depth):
    """``(encoder layers kept, decoder layers kept)``: how many of ``kept`` (indices over encoder then decoder
    layers) fall in the first ``encoder_depth`` layers and how many after them."""
    n_enc = sum(1 for k in kept if int(k) < encoder_depth)
    return n_enc, len(kept) - n_enc


def kept_table(study, candidates):
    """One row per candidate of ``study``'s MAR teacher: how many encoder and decoder layers it keeps, which (decoder
    layers numbered from 0 within the decoder) and its calibration loss (``Study.calibration_loss``)."""
    enc = study.teacher().encoder_depth
    rows = []
    for m, ps, k in candidates:
        n_enc, n_dec = encoder_decoder(k, enc)
        rows.append({"method": label(m, ps), "encoder layers kept": n_enc, "decoder layers kept": n_dec,
                     "encoder": " ".join(str(i) for i in k if i < enc),
                     "decoder": " ".join(str(i - enc) for i in k if i >= enc),
                     "calib loss": study.calibration_loss(k)})
    return pd.DataFrame(rows)


def teacher_row(study, family):
    """One teacher beside the others: its training log (``<teacher>.json`` written beside the checkpoint: steps, wall
    time, final loss; NaN when absent), its sampler and its scores (``Study.score`` of the teacher)."""
    from tinyfusion.io import load_json
    log_path = study.teacher_path.with_suffix(".json")
    log = load_json(log_path) if log_path.exists() else {}
    s = study.score(study.teacher_path)
    p = study.prof
    return {"teacher": f"{family} ({p.model}, {study.depth} layers, {study.objective.name})",
            "steps": log.get("steps", np.nan), "train wall (min)": log.get("wall_s", np.nan) / 60,
            "final loss": log.get("final_loss", np.nan), "sampler": f"{p.sampler} {p.sample_steps}",
            "FID": s["fid"], "IS": s["is"], "class acc": s["class_accuracy"]}


def recovery(study, candidates, name):
    """The recovery curves of Table 2's MAR ``candidates`` (``Study.candidates(METHODS)``) as every setting of notebook
    11 (``robustness.setting_curves``), scored only at the 100K- and 500K-equivalent points (each MAR sample runs the
    head's chain per token). Notebook 13 and notebook 11's MAR column call it alike, so the runs are cached once."""
    return setting_curves(study, candidates, name, points=(study.prof.finetune_steps, study.prof.finetune_long))


def table2(study, curves, teacher_score, points):
    """Table 2's MAR rows with ours beside them: the teacher, then every method of ``curves``
    (``Study.recovery_curves``) at each of ``points`` (the 100K- and 500K-equivalent steps), FID and IS mean ± sd over
    its distinct runs (identical models counted once); the paper's MAR-Large beside our teacher, TinyMAR-D16 beside
    learnable, and MAR-Base (trained from scratch, not replicated) as a paper-only row."""
    from tinyfusion.verdicts import fmt
    large, tiny, base = (paper.TABLE2_MAR[k] for k in ("MAR-Large", "TinyMAR-D16", "MAR-Base"))
    half = study.depth // 2
    rows = [{"model": f"teacher ({study.prof.model})", "layers": study.depth, "training": "pre-training",
             "FID (ours)": fmt(teacher_score["fid"]), "IS (ours)": fmt(teacher_score["is"]), "runs": 1,
             "paper": "MAR-Large", "paper layers": large[0], "paper training": large[1], "FID (paper)": large[2],
             "IS (paper)": large[3]}]
    sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else None  # noqa: E731
    for steps in points:
        at = curves[curves.steps == steps].drop_duplicates(["method", "kept", "seed"])
        for m, g in at.groupby("method", sort=False):
            beside = tiny if m == "learnable" else (np.nan, "", np.nan, np.nan)
            rows.append({"model": m, "layers": half, "training": f"{steps} fine-tuning steps",
                         "FID (ours)": fmt(g.fid.mean(), sd(g.fid)), "IS (ours)": fmt(g["is"].mean(), sd(g["is"])),
                         "runs": len(g), "paper": "TinyMAR-D16" if m == "learnable" else "", "paper layers": beside[0],
                         "paper training": beside[1], "FID (paper)": beside[2], "IS (paper)": beside[3]})
    rows.append({"model": "—", "layers": "—", "training": "", "FID (ours)": "—", "IS (ours)": "—", "runs": 0,
                 "paper": "MAR-Base (from scratch)", "paper layers": base[0], "paper training": base[1],
                 "FID (paper)": base[2], "IS (paper)": base[3]})
    return pd.DataFrame(rows)


def checkpoint(curves, method, steps, seed=None, prune_seed=None):
    """The checkpoint of ``method``'s curve run at ``steps`` (``Study.recovery_curves``' rows): fine-tune ``seed`` and
    pruning seed ``prune_seed`` (None: the first of each)."""
    at = curves[(curves.method == method) & (curves.steps == steps)]
    if seed is not None:
        at = at[at.seed == seed]
    if prune_seed is not None:
        at = at[at.prune_seed == prune_seed]
    if not len(at):
        raise ValueError(f"no {method} run at {steps} steps (seed {seed}, pruning seed {prune_seed}) in the curves")
    return at.checkpoint.iloc[0]


def sampling_speed(study, tiny_path):
    """The teacher's and the pruned model's (``tiny_path``) whole sampling loops timed round by round
    (``speed.interleaved_sampling``: the profile's sampler, iterations and CFG on ``extra["speed"]``'s batch and
    repeats, default 64 images and 3 rounds), cached under ``speed/`` by both checkpoints. One row per model: depth,
    images/s (median over rounds) and the speed-up over the teacher (mean ± sd over rounds)."""
    from pathlib import Path

    from tinyfusion import speed
    from tinyfusion.models import prunable
    from tinyfusion.models.registry import load_model
    p, sp = study.prof, study.prof.extra.get("speed", {})
    config = {"teacher": study.teacher_path, "tiny": Path(tiny_path), "n": sp.get("batch", 64),
              "repeats": sp.get("repeats", 3), "steps": p.sample_steps, "cfg_scale": p.cfg_scale, "sampler": p.sampler}

    def compute(folder):
        models = {"teacher": study.teacher(), "pruned": load_model(tiny_path).eval()}
        res = speed.interleaved_sampling(models, study.objective, config["n"], config["steps"], config["cfg_scale"],
                                         config["sampler"], repeats=config["repeats"])
        return {k: {**v, "depth": prunable.depth(models[k])} for k, v in res.items()}
    res = study.cached("speed", "mar_sampling", config, compute)
    return pd.DataFrame([{"model": f"{k} ({r['depth']} layers)", "images/s": r["img_s"],
                          "speed-up": r["speedup"], "speed-up sd": r["speedup_sd"], "rounds": len(r["seconds"])}
                         for k, r in res.items()])
