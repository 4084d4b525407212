"""The scale ladder (issue 26, notebook 12): does recoverability, or do massive activations, appear as the teacher grows?

Each rung is a profile (``profiles.SCALE_LADDER``): today's teacher (width 64, 16 tokens), then teachers of the same
depth, data, steps, batch and learning rate with one thing changed: width 128, or the full 28x28 image (49 tokens).
On each, before any fine-tuning, the cheap diagnostics of notebook 11 (``robustness.teacher_row``: residual ratios,
calibration-loss span, max |h| / std, the block-0 decision of the learned 1:2 masks); then the core comparison on
notebook 01's curve protocol, scored at the 100K- and 500K-equivalent points, judged with notebook 01's rules; and
one row per rung for the scale figure: learnable's FID relative to the best baseline (``verdicts.relative_fid``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from tinyfusion import robustness
from tinyfusion.io import load_json
from tinyfusion import verdicts as V
from tinyfusion.profiles import PROFILES, ROOT, SCALE_LADDER, TRAIN_HERE, listed, tuple_field
from tinyfusion.study import BASELINES

# The core comparison of every rung (the list): learnable 1:2 on each pruning seed and the baselines.
METHODS = ("learnable", "shortgpt", "sensitivity", "min-loss random", "best-calibration 1:2", "oracle")
# "The best baseline" of the scale figure: the lowest mean FID among claim 2's baselines that the rung ran (ShortGPT,
# sensitivity, Oracle), so the ratio and claim 2's status weigh learnable against the same models; min-loss random
# is claim 1's, best-calibration 1:2 a reference inside learnable's own rule.
BEST_OF = tuple(m for m in BASELINES if m in METHODS)


def ladder(profile):
    """The rung profiles notebook 12 climbs from ``profile`` ("cpu", "smoke"), today's teacher first."""
    if profile not in SCALE_LADDER:
        raise ValueError(f"no scale ladder for profile {profile!r}; choose one of {', '.join(SCALE_LADDER)}")
    return SCALE_LADDER[profile]


def rungs(profile, given=None):
    """The rungs notebook 12 climbs: ``given`` (a list, a JSON list, or names separated by commas, as papermill's
    ``-p rungs cpu,cpu-w128`` passes them), today's teacher first, or None: ``ladder(profile)``. An unknown name is
    refused naming the known ones."""
    if given is None:
        return list(ladder(profile))
    value = listed("rungs", given)
    unknown = [r for r in value if r not in PROFILES]
    if not value or unknown:
        raise ValueError(f"rungs {given!r}: {'unknown profile(s) ' + ', '.join(map(repr, unknown)) if unknown else 'empty'}"
                         f"; give profile names separated by commas, today's teacher first (known: {', '.join(PROFILES)})")
    return list(value)


def seed_list(name, given):
    """Seeds as notebook parameters pass them: a list, a JSON list, one number, or numbers separated by commas."""
    return list(tuple_field(name, given, (0,)))


def pruning_seeds_of(study, given=None):
    """The learnable 1:2 runs' pruning seeds of one rung: ``given`` (as :func:`seed_list` reads it) or, None, the
    profile's seeds (cpu: 0 and 1)."""
    return tuple(study.prof.seeds if given is None else seed_list("pruning_seeds", given))


def teacher_budget(study):
    """What one rung's teacher was pre-trained on and what it took, from the training record beside a shipped teacher
    (``data/<teacher>.json``, written by ``tools/install_teacher.py``): {"rung", "teacher" (its path, relative to the
    repository when inside it, so an executed notebook does not carry the runner's tree), "steps", "batch_size",
    "samples", "training h" (wall time over every call of a resumed run), "calls" (a first call from before calls
    were recorded counts once), "s/step (fastest call)" (the
    quickest call of at least 100 steps: a run resumed across sessions shared its cores in some of them, so its wall
    time says less of the cost than its rate), "threads"}; None where there is no record (a teacher the study
    pre-trains itself, as the smoke rungs do).

    A shipped teacher is checked first, so a missing or wrong file stops the ladder here and not hours into a rung:
    the file, its ``.sha256`` (verified) and its record must exist, and the record must name the rung's model; each
    refusal names the file and :mod:`tools.install_teacher`, which writes all three."""
    path = Path(study.teacher_path)
    record = path.with_suffix(".json")
    if study.prof.teacher != TRAIN_HERE:
        info = _check_shipped(study.prof, path, record)
    else:
        info = load_json(record) if record.exists() else {}   # a damaged record is refused, naming the file
    steps, batch = info.get("steps"), info.get("batch_size")
    segments = info.get("segments") or []
    rates = [s["wall_s"] / (s["to_step"] - s["from_step"]) for s in segments
             if s.get("wall_s") and s.get("to_step", 0) - s.get("from_step", 0) >= 100]
    if not rates and info.get("wall_s") and steps and len(segments) <= 1:
        rates = [info["wall_s"] / steps]          # one call (or a record from before calls were timed)
    threads = sorted({s.get("threads") for s in segments if s.get("threads")})
    named = re.search(r"OMP_NUM_THREADS=(\d+)", info.get("command") or "")
    if not threads and named:                      # a record from before calls were timed: its command says
        threads = [int(named.group(1))]
    # calls: a run whose first recorded call starts past step 0 had one earlier call (at least), from before calls
    # were recorded; a record with no calls and a wall time is one call
    calls = len(segments) + bool(segments and segments[0].get("from_step")) or (1 if info.get("wall_s") else None)
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return {"rung": study.prof.name, "teacher": str(shown), "steps": steps, "batch_size": batch,
            "samples": steps * batch if steps and batch else None,
            "training h": info["wall_s"] / 3600 if info.get("wall_s") else None, "calls": calls,
            "s/step (fastest call)": min(rates) if rates else None,
            "threads": ", ".join(map(str, threads)) or None}


def _check_shipped(prof, path, record):
    """Refuse a rung's shipped teacher that is missing, fails its checksum, or whose record names another model;
    every message says which file and how to make it. Returns the record."""
    from tinyfusion.io import verify_sha256
    make = (f"train it with `python -m tinyfusion.cli.pretrain --profile {prof.name} --out <run>` and install it "
            f"with `python tools/install_teacher.py <run> --profile {prof.name}` (teacher, .sha256 and .json)")
    checksum = Path(str(path) + ".sha256")
    for need in (path, checksum, record):
        if not need.exists():
            raise FileNotFoundError(f"rung {prof.name}: {need} is missing; {make}")
    verify_sha256(path, checksum)
    info = load_json(record)
    if info.get("model") != prof.model:   # the model, not the profile: the smoke rung borrows the cpu teacher
        raise ValueError(f"rung {prof.name}: the record {record} names (its, the rung's) "
                         f"{ {'model': (info.get('model'), prof.model)} }: it belongs to another teacher; {make}")
    return info


def teacher_budgets(studies):
    """One row per rung (``studies``: {rung: Study}, today's teacher first) with its teacher's pre-training budget
    (:func:`teacher_budget`). A rung's fine-tune budgets (the 100K/500K points) are its profile's, derived from the
    samples its teacher should have seen: today's on the size rungs, 4x on ``cpu-x4``. A rung whose record says its
    teacher saw another share of today's samples than its budgets assume is refused, naming both."""
    order = list(studies.values())
    rows = [teacher_budget(s) for s in order]
    ref, base = rows[0], order[0].prof
    for r, study in zip(rows[1:], order[1:]):
        if r["samples"] is None or ref["samples"] is None:
            continue
        times = study.prof.finetune_steps / base.finetune_steps   # 1 on a size rung; budgets are whole steps
        if abs(r["samples"] / (ref["samples"] * times) - 1) > 0.01:
            record = Path(r["teacher"]).with_suffix(".json")
            raise ValueError(f"rung {r['rung']}: its teacher {r['teacher']} was pre-trained on {r['samples']:,} "
                             f"samples ({r['steps']} steps of batch {r['batch_size']}, {record}), today's "
                             f"({ref['teacher']}) on {ref['samples']:,}, and the rung's budgets assume "
                             f"{ref['samples'] * times:,.0f} ({times:g}x today's fine-tune steps); train it with its "
                             f"profile's steps and batch (cli.pretrain --profile {r['rung']})")
    return pd.DataFrame(rows)


def rung(study, pruning_seeds=None):
    """Everything notebook 12 reads of one rung ``study``: ``{"row": teacher_row + claim 5, "kept": {pruning seed:
    kept layers}, "curves": the core comparison's recovery curves, "claims": (claim 1, claim 2, claim 5), "check":
    notebook 00's teacher check, "decisions": the learned masks' per-block decisions (``robustness.decisions``, its
    budget column the rung), "floor": the real-vs-real FID at the rung's samples per score}``. The learned masks
    are the profile's gate budget (1:2, LoRA, as Table 3), so today's rung reuses notebooks 01-03's runs;
    ``pruning_seeds`` None: the profile's seeds (cpu: 0 and 1)."""
    name = study.prof.name
    pruning_seeds = pruning_seeds_of(study, pruning_seeds)
    runs = robustness.learned_runs(robustness.gate_runs(study, "profile", schemes=("1:2",), seeds=pruning_seeds))
    kept = {s: r["kept"] for s, r in runs.items()}
    row = robustness.teacher_row(study, kept, name)
    v5 = V.claim5_massive([row["max|h|/std"]], [row["share beyond 10σ"]])
    points = (study.prof.finetune_steps, study.prof.finetune_long)
    curves = robustness.setting_curves(study, study.candidates(METHODS, learned=runs), f"12_curves_{name}",
                                       points=points)
    v1, v2 = robustness.claims_1_2(study, {name: curves})[name]
    return {"row": row, "kept": kept, "curves": curves, "claims": (v1, v2, v5),
            "decisions": robustness.decisions({("1:2", s): r for s, r in runs.items()}, name, study.depth),
            "check": robustness.teacher_check(study, study.fid_floor()),
            "floor": study.fid_floor(n=study.prof.eval_samples)["fid"]}


def gate_table(results):
    """One row per rung and pruning seed of the learned 1:2 masks (``results``: {rung: :func:`rung`'s result}): what
    block 0 keeps, the step of its last change and its final confidence, how many blocks settled (no change over the
    last 20% of the steps), and the least confident block with its confidence and last change. A 1:2 block's
    confidence is the EMA probability of its choice, so 0.5 is a tie between its two layers: a block near it, or one
    that did not settle, is decided by float-level noise, and two pruning seeds (or one seed on another thread count)
    may split there."""
    rows = []
    for rung_name, res in results.items():
        for seed, d in res["decisions"].groupby("seed", sort=False):
            b0, low = d[d.block == 0].iloc[0], d.loc[d.confidence.idxmin()]
            rows.append({"rung": rung_name, "pruning seed": seed, "steps": int(b0.steps), "block 0 keeps": b0.kept,
                         "block 0 last change": int(b0.last_change), "block 0 confidence": float(b0.confidence),
                         "blocks settled": f"{int(d.settled.sum())} of {len(d)}",
                         "least confident block": f"block {int(low.block)} keeps {low.kept}",
                         "its confidence": float(low.confidence), "its last change": int(low.last_change)})
    return pd.DataFrame(rows)


def _points(study, points):
    """{label: steps} of the rung's 100K- and 500K-equivalent points."""
    return dict(zip(points, (study.prof.finetune_steps, study.prof.finetune_long)))


def rung_row(study, result, points=("100K", "500K")):
    """The per-rung row of the scale table: the teacher's diagnostics and notebook 00's check, learnable's and the
    best baseline's mean FID at the 100K- and 500K-equivalent points, their ratio (``verdicts.relative_fid``) and the
    same ratio above the real-vs-real floor at the rung's samples per score (both means carry it; it pulls the plain
    ratio towards 1 the more, the nearer the FIDs sit to it), the claims' statuses at both points, and the statuses
    notebook 01 recorded on its fuller set of models where the rung's results hold them (today's teacher;
    ``robustness.recorded_status``, None elsewhere)."""
    prof, row = study.prof, result["row"]
    pts = study.curve_points(result["curves"])
    mean = lambda v: float(np.mean(np.asarray(v, dtype=float)))  # noqa: E731  (a diverged run's NaN shows)
    out = {"rung": prof.name, "model": prof.model, "params": row["params"], "tokens": row["tokens"],
           "teacher FID": row["fid"], "teacher class accuracy": row["class_accuracy"],
           "teacher meets notebook 00's bar": result["check"].status, "FID floor": result["floor"],
           "calib loss span": row["calib loss span (max/min)"], "max|h|/std": row["max|h|/std"],
           "block 0 keeps": row["block 0 keeps (1:2 masks)"]}
    for label, steps in _points(study, points).items():
        p = pts[steps]
        base = {m: p["fid"][m] for m in BEST_OF if m in p["fid"]}
        ratio, se, df, best = V.relative_fid(p["fid"]["learnable"], base, p["sd"], p["df"])
        above, above_se, _, _ = V.relative_fid(p["fid"]["learnable"], base, p["sd"], p["df"], floor=result["floor"])
        out.update({f"learnable FID {label}": mean(p["fid"]["learnable"]),
                    f"best baseline {label}": best,
                    f"best baseline FID {label}": mean(p["fid"][best]) if best else float("nan"),
                    f"learnable/best {label}": ratio, f"se {label}": se, f"df {label}": df,
                    f"above floor {label}": above, f"above floor se {label}": above_se})
    for c, v in zip(V.SCALE_CLAIMS, result["claims"]):
        out[f"claim {c}"] = v.status
        by_point = v.details.get("by_point", {})
        if by_point:
            out[f"claim {c} at {points[1]}"] = by_point.get(prof.finetune_long)
    out["claim 1 models"] = result["claims"][0].details.get("n_models")  # its Spearman's n (distinct models)
    out.update({f"claim {c} in notebook 01": robustness.recorded_status(study, c) for c in (1, 2)})  # None: no record
    return out


def ratios(study, result, points=("100K", "500K")):
    """Learnable's FID over each of claim 2's baselines in turn, at both points (``verdicts.relative_fid`` with one
    baseline): "the best baseline" of the scale table is picked by its own noisy mean, so the ratio against every
    baseline is shown beside it. One row per (point, baseline)."""
    pts = study.curve_points(result["curves"])
    rows = []
    for label, steps in _points(study, points).items():
        p = pts[steps]
        for m in (m for m in BEST_OF if m in p["fid"]):
            ratio, se, df, _ = V.relative_fid(p["fid"]["learnable"], {m: p["fid"][m]}, p["sd"], p["df"])
            rows.append({"rung": study.prof.name, "point": label, "baseline": m, "learnable/baseline": ratio,
                         "se": se, "df": df})
    return pd.DataFrame(rows)


def paper_row():
    """The paper's one point of the ladder, from ``paper.py``: DiT-XL/2 (``paper.DIT_XL_PARAMS``, ``paper.DIT_XL_TOKENS``), Table 3's
    100K FIDs (learnable 5.73 against the best baseline, Oracle 7.43), its calibration-loss span and Figure 8's
    max |h| / std. The paper gives no baseline at 500K. Its claim columns say "claimed (paper)": the paper's
    assertions, not statuses of our rules; its FID is ImageNet 256's FID-50K and its span is over 100,000 random
    candidates (ours over the profile's ``random_candidates``), so only the ratios compare."""
    from tinyfusion import paper
    t3 = {m: v[2] for m, v in paper.TABLE3.items()}
    best = min(BEST_OF, key=lambda m: t3[m])
    lo, hi = paper.TABLE3_SPAN
    return {"rung": "paper DiT-XL/2", "model": "DiT-XL/2", "params": paper.DIT_XL_PARAMS, "tokens": paper.DIT_XL_TOKENS,
            "teacher FID": paper.TABLE1[0]["FID"], "calib loss span": hi / lo,
            "max|h|/std": paper.FIGURE8_MAX_OVER_STD["teacher"], "learnable FID 100K": t3["learnable"],
            "best baseline 100K": best, "best baseline FID 100K": t3[best],
            "learnable/best 100K": t3["learnable"] / t3[best],
            **{f"claim {c}": "claimed (paper)" for c in (1, 2, 5)}}


def scale_table(rows):
    """The scale table (one row per rung, the paper's last) and the sentences of ``verdicts.scale_sentences``, with
    one more (``"teachers"``) when a rung's teacher falls under notebook 00's bar: its statuses then judge pruning a
    weaker teacher than today's, trained on the same samples, and the reader of the trend needs to know which."""
    sentences = V.scale_sentences(rows)
    weak = [r for r in rows if r.get("teacher meets notebook 00's bar") not in (None, V.HELD)]
    if weak:
        base = rows[0]
        sentences["teachers"] = (
            "Teachers: " + "; ".join(f"{r['rung']}'s teacher does not meet notebook 00's bar (class accuracy "
                                     f"{r['teacher class accuracy']:.3f}, FID {r['teacher FID']:.2f})" for r in weak)
            + (f", against {base['rung']}'s {base['teacher class accuracy']:.3f} and {base['teacher FID']:.2f} on the "
               f"same pre-training samples, so {'that rung changes' if len(weak) == 1 else 'those rungs change'} the "
               "teacher's quality as well as its size." if base not in weak else
               ": today's teacher among them, so the ladder compares teachers under the bar."))
    return pd.DataFrame([*rows, paper_row()]), sentences
