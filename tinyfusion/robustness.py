"""Does the negative verdict survive? (issue 25; notebook 11, ``make robustness``)

The cpu study finds claims 1-3 not holding at our scale, but that answer rests on one learnable-pruning decision
(every 1:2 and 2:4 mask drops layer 0, settled by the first decision snapshot, step 18 of a 938-step run) of one DiT teacher. This module reads the
same claims again in other settings, each through the same recovery-curve protocol (notebook 01: the pruned model
fine-tuned on one cosine, its EMA scored at the curve points up to the 500K-equivalent step) and the same rules of
``tinyfusion.verdicts``:

- **the gate budget**: learnable pruning at the official *step* count (``profile.robust_prune_steps``: one ImageNet
  epoch at global batch 128 = 10,010 steps; the gate-EMA decay ``robust_prune_ema``, 0.999, whose 1,000-step
  horizon is the same share of the run as in the official code) beside the profile's 938 steps, each on
  ``robust_prune_seeds`` pruning seeds, so the decision's own variance is measured at both budgets;
- **a second DiT teacher**: the profile's "-seed1" variant (same config and budget, trained with seed 1);
- **the SiT teacher**: the profile's "-sit" variant, claims 1 and 2 under exactly the DiT rules.

Nothing here decides a status: the rules do; this module gathers their inputs and lays the statuses side by side.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tinyfusion.io import load_json

SCHEMES = ("1:2", "2:4")
BUDGETS = ("profile", "official")   # the profile's prune_steps / the official step count (robust_prune_*)


def budget_settings(prof, budget):
    """``(steps, ema_decay)`` of a gate budget: "profile" (``prune_steps``, ``prune_ema_decay``) or "official"
    (``robust_prune_steps``, ``robust_prune_ema``)."""
    if budget == "profile":
        return prof.prune_steps, prof.prune_ema_decay
    if budget == "official":
        return prof.robust_prune_steps, prof.robust_prune_ema
    raise ValueError(f"unknown gate budget {budget!r}; choose one of {BUDGETS}")


def budget_labels(prof):
    """{budget: label} for tables, legends and setting names: "938 gate steps", "10010 gate steps"; with the budget's
    name as well when both budgets have one step count (the imagenet profile: 10,010 each), so no label is shared."""
    steps = {b: budget_settings(prof, b)[0] for b in BUDGETS}
    same = len(set(steps.values())) < len(steps)
    return {b: f"{steps[b]} gate steps" + (f" ({b})" if same else "") for b in BUDGETS}


def gate_runs(study, budget, schemes=SCHEMES, seeds=None):
    """Learnable pruning (LoRA, as Table 3) of the study's teacher at a gate ``budget`` for every scheme and pruning
    seed (default ``profile.robust_prune_seeds``), ``profile.workers`` runs side by side; each is cached as every
    learnable run is, so a run started from the terminal (``cli.prune_learn --steps ... --ema-decay ...``) is found.
    Returns {(scheme, seed): run result}."""
    seeds = tuple(study.prof.robust_prune_seeds if seeds is None else seeds)
    steps, ema = budget_settings(study.prof, budget)
    # the profile budget passes None, so its runs are the very ones notebooks 01-04 cached
    kw = {} if budget == "profile" else {"steps": steps, "ema_decay": ema}
    keys = [(g, s) for g in schemes for s in seeds]
    runs = study.parallel([("learnable", {"groups": g, "update": "lora", "seed": s, **kw}) for g, s in keys],
                          desc=f"learnable pruning, {steps} steps")
    return dict(zip(keys, runs))


def decisions(runs, budget_label, depth):
    """One row per run and block of ``runs`` ({(scheme, seed): run} of a ``depth``-layer teacher): the block's
    layers, the layers kept at the end, the step of its last change (``gates.settled``) and that step as a share of
    the run, whether it settled (no change over the last 20%) and its final confidence. Block 0 also says whether layer 0 was ever kept after training began
    (the step-0 snapshot, equal gates whose tie keeps layer 0, is left out) and, if it was, from which snapshot on it
    stayed kept (``layer0_from``; NaN when it did not end kept)."""
    from tinyfusion.models.gates import block_bounds, parse_groups
    rows = []
    for (scheme, seed), run in runs.items():
        hist = load_json(run["history_json"])["history"]
        steps = [int(h["step"]) for h in hist]
        total = steps[-1] or 1
        for b, (lo, hi) in enumerate(block_bounds(parse_groups(scheme, depth))):
            row = {"budget": budget_label, "scheme": scheme, "seed": seed, "block": b,
                   "layers": " ".join(map(str, range(lo, hi))),
                   "kept": " ".join(str(k) for k in run["kept"] if lo <= k < hi),
                   "last_change": run["last_change"][b], "last_change_share": run["last_change"][b] / total,
                   "settled": run["settled"][b], "confidence": run["confidence"][b], "steps": total}
            if b == 0:  # from the first snapshot after training began: at step 0 the tie of equal gates keeps layer 0
                trained = [(st, h) for st, h in zip(steps, hist) if st > 0] or list(zip(steps, hist))
                steps0 = [st for st, _ in trained]
                kept0 = [0 in h["kept"] for _, h in trained]
                row["layer0_ever"] = any(kept0)
                row["layer0_end"] = kept0[-1]
                start = len(kept0)
                while start > 0 and kept0[start - 1]:
                    start -= 1
                row["layer0_from"] = steps0[start] if kept0[-1] else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def block0_summary(table):
    """The block-0 rows of :func:`decisions`, one per run: which layer it keeps, when it last changed, whether layer 0
    was ever kept and from which step it stayed kept."""
    b0 = table[table.block == 0]
    return b0[["budget", "scheme", "seed", "steps", "kept", "last_change", "last_change_share", "settled",
               "confidence", "layer0_ever", "layer0_end", "layer0_from"]].reset_index(drop=True)


def histories(runs, label=""):
    """{"<scheme> seed <s><label>": decision snapshots} of ``runs``, for ``plots.decision_dynamics`` and
    ``plots.layer_keep_history``."""
    return {f"{g} seed {s}{label}": load_json(r["history_json"])["history"] for (g, s), r in runs.items()}


def learned_runs(runs, scheme="1:2"):
    """{pruning seed: run} of the ``scheme`` runs of ``runs`` ({(scheme, seed): run}): what
    ``Study.curve_candidates`` takes as ``learned``."""
    return {s: r for (g, s), r in runs.items() if g == scheme}


def setting_curves(study, candidates, name, points=None):
    """The recovery curves of ``candidates`` (``Study.curve_candidates``) up to the 500K-equivalent point
    (``prof.finetune_long``), every run on the cosine of notebook 01's longest run, so a point here is a point there:
    a model notebook 01 already fine-tuned to its last point is read from that run (``Study.curve_run``), a new one
    stops at the 500K point. ``points``: score only these curve points (None: every one up to the 500K point)."""
    return study.recovery_curves(candidates, name=name, stop=study.prof.finetune_long, points=points)


def teacher_row(study, learned_kept, label):
    """The cheap diagnostics of a teacher, before any fine-tuning: parameters, FID / IS / class accuracy of its
    samples, the calibration-loss span of the random study (max / min), max |h| / std over its layers (claim 5's
    measure, and the mean share of positions beyond 10 sigma), the per-layer residual ratio ||f(h) - h|| / ||h|| (largest and which layer), and the layers its learned
    1:2 masks keep in block 0. ``learned_kept``: {pruning seed: kept layers}."""
    teacher = study.teacher()
    score = study.score(study.teacher_path)
    rs = study.random_study()
    stats = study.hidden_stats()
    res = np.asarray(study.residual_sizes(), dtype=float)
    top = int(np.argmax(res))
    second = float(np.sort(res)[-2]) if len(res) > 1 else np.nan
    block0 = sorted({" ".join(str(k) for k in kept if k < 2) for kept in learned_kept.values()})
    return {"teacher": label, "params": sum(p.numel() for p in teacher.parameters()),
            "tokens": (teacher.config["input_size"] // teacher.config["patch_size"]) ** 2, "fid": score["fid"],
            "is": score["is"], "class_accuracy": score["class_accuracy"],
            "calib loss span (max/min)": rs["max"] / rs["min"], "max|h|/std": float(stats.max_abs_over_std.max()),
            "share beyond 10σ": float(stats.share_beyond_10sigma.mean()),
            "largest residual ratio": float(res[top]), "at layer": top, "next largest": second,
            "block 0 keeps (1:2 masks)": ", ".join(f"layer {b}" for b in block0)}


def robustness_table(cells, reference, teachers=None, caveats=None):
    """The claim-robustness table: ``cells`` {setting: {claim: Verdict, status string or None}} (None: the claim
    belongs to the setting but has no status, e.g. not recorded under these rules; a claim absent from a setting is
    not part of it, shown as "—" and left out of the sentences). Returns (DataFrame: one row per claim of
    ``verdicts.ROBUST_CLAIMS``, one column per setting, and a "verdict survives?" column from
    ``verdicts.robustness_sentences``; the sentences). ``reference``,
    ``teachers`` and ``caveats`` go to ``verdicts.robustness_sentences`` (the reference setting, per claim where they
    differ; the teacher of each setting; a bracketed note per setting)."""
    from tinyfusion import verdicts as V
    status = lambda v: "" if v is None else (v if isinstance(v, str) else v.status)  # noqa: E731
    table = {c: {s: status(cells[s][c]) if c in cells[s] else None for s in cells} for c in V.ROBUST_CLAIMS}
    sentences = V.robustness_sentences(table, reference, teachers, caveats)
    df = pd.DataFrame([{"claim": c, **{s: table[c][s] or "—" for s in cells}, "verdict survives?": sentences[c]}
                       for c in V.ROBUST_CLAIMS])
    return df, sentences


def teacher_check(study, floor):
    """Notebook 00's sanity check (``verdicts.teacher_check``: its CFG samples' class accuracy against the bar) of
    the study's teacher; ``floor``: ``Study.fid_floor()`` of the data. It decides no claim here: a teacher under the
    bar is named beside its statuses (:func:`caveats`)."""
    from tinyfusion import verdicts as V
    score = study.score(study.teacher_path)
    return V.teacher_check(score["class_accuracy"], score["fid"], floor["fid"],
                           smoke=study.prof.name.startswith("smoke"))


def caveats(checks, teacher_of):
    """{setting: note} for the settings of ``teacher_of`` ({setting: teacher}) whose teacher fails its check in
    ``checks`` ({teacher: teacher check Verdict}; a teacher not checked gets no note): the note
    :func:`robustness_table` brackets after that setting's name."""
    from tinyfusion import verdicts as V
    return {s: f"its teacher under notebook 00's bar: {checks[t].evidence.split(';')[0]}"
            for s, t in teacher_of.items() if t in checks and checks[t].status != V.HELD}


def checks_table(checks):
    """One row per teacher of ``checks`` ({teacher: teacher check Verdict}): whether it meets notebook 00's bar, and
    the evidence."""
    return pd.DataFrame([{"teacher": t, "meets the bar": v.status, "evidence": v.evidence} for t, v in checks.items()])


def recorded_status(study, claim):
    """The status recorded for ``claim`` by notebooks 01-10 (``verdicts/claim<N>.json``) when it was decided by the
    rules of issue 25 (its yardstick names the t critical value it called with: ``"call"``) or found not testable
    (no yardstick to call with), else None: a verdict recorded under the 2-SE rule does not sit in one table with
    statuses of the t rule."""
    from tinyfusion.verdicts import NOT_TESTABLE
    path = study.root / "verdicts" / f"claim{claim}.json"
    if not path.exists():
        return None
    v = load_json(path)
    return v["status"] if "call" in v.get("yardstick", {}) or v.get("status") == NOT_TESTABLE else None


def claims_1_2(study, curves_by_setting):
    """{setting: (claim 1, claim 2)} for ``curves_by_setting`` ({setting: curves DataFrame}), each with notebook 01's
    rules and yardsticks (``Study.curve_verdicts`` at the paper's 100K point; no table saved: notebook 01's stays
    its own; the sampling sd, which no rule reads, is left to notebook 01)."""
    return {name: study.curve_verdicts(c, float("nan"), save=False)[:2] for name, c in curves_by_setting.items()}


def kept_table(runs, label):
    """One row per run of ``runs`` ({(scheme, seed): run}): the teacher/budget ``label``, scheme, pruning seed and the
    layers it keeps."""
    return pd.DataFrame([{"setting": label, "scheme": g, "pruning seed": s, "kept": " ".join(map(str, r["kept"]))}
                         for (g, s), r in runs.items()])
