"""Notebook 09: gather every notebook's tables and verdicts into a Table 1 analogue and ``summary.md``."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tinyfusion import paper
from tinyfusion.io import load_json

METRICS = ["is", "fid", "sfid", "precision", "recall", "class_accuracy"]
KD_NAMES = {"finetune": "learnable + plain fine-tune", "kd": "learnable + logits KD", "masked_kd_2": "learnable + Masked KD 2σ",
            "masked_kd_4": "learnable + Masked KD 4σ", "repkd": "learnable + RepKD",
            "masked_kd_0.1": "learnable + Masked KD 0.1σ"}


def d7_name(pruned_from, teacher):
    """Our name of a Table 7 row: the D7 pruned from ``pruned_from`` ("XL" or "D14"), distilled from ``teacher``."""
    return f"D7 from {pruned_from}, teacher {teacher}"


# which paper row each of our variants stands beside, as (IS, FID): Table 1's teacher, Table 3 by method (the same
# names as ours), Table 5 by KD variant (no IS given) and Table 7 by (teacher, pruned from); numbers live in paper.py
PAPER_ROWS = {
    "teacher (28 layers)": (paper.TABLE1[0]["IS"], paper.TABLE1[0]["FID"]),
    **{method: (is_, fid) for method, (_, is_, fid) in paper.TABLE3.items()},
    **{name: (np.nan, paper.TABLE5[variant]["FID"]) for variant, name in KD_NAMES.items()},
    **{d7_name(src, teacher): (np.nan, fid) for (teacher, src), fid in paper.TABLE7.items()},
}


def _read(study, name):
    p = study.root / "tables" / f"{name}.csv"
    return pd.read_csv(p) if p.exists() else None


def _agg(df, label, depth, schedule):
    vals = {m: df[m].astype(float) for m in METRICS if m in df}
    row = {"variant": label, "depth": depth, "schedule": schedule, "seeds": len(df)}
    for m, v in vals.items():
        row[m] = v.mean()
        row[f"{m}_std"] = v.std(ddof=1) if len(v) > 1 else np.nan
    return row


def collect(study):
    """(Table 1 analogue DataFrame, verdicts DataFrame) from what notebooks 00-08 wrote. Each row names its
    ``schedule``: notebook 01's models are read off the recovery curves (one cosine over the longest curve run, read at
    the 100K point), notebook 06's and 08's ran the same number of steps on a cosine of their own; the learnable D14
    appears under both (notebook 01's "learnable" and notebook 06's "learnable + plain fine-tune"), so the KD rows
    stand beside a plain fine-tune of their own schedule."""
    p, rows = study.prof, []
    curve = (f"{p.finetune_steps} steps on the cosine of {p.curve_points[-1]} (notebook 01's curves)"
             if p.curve_points else f"{p.finetune_steps} steps")
    own = f"{p.finetune_steps} steps, own cosine (notebook 06)"
    t0 = _read(study, "00_teacher_metrics")
    if t0 is not None:
        ours = t0.iloc[-1]
        rows.append({"variant": "teacher (28 layers)", "depth": 28, "schedule": f"{p.pretrain_steps} steps pre-training",
                     "seeds": 1, "is": ours["IS"], "fid": ours["FID"], "sfid": ours["sFID"], "precision": ours["Prec"],
                     "recall": ours["Rec"], "class_accuracy": ours["class acc"]})
    t3 = _read(study, "01_table3_runs")
    if t3 is not None:
        for method, grp in t3.groupby("method", sort=False):
            rows.append(_agg(grp, method, 14, curve))
    t5 = _read(study, "06_table5_runs")
    if t5 is not None:
        for variant, grp in t5.groupby("variant", sort=False):
            if variant in KD_NAMES:
                rows.append(_agg(grp, KD_NAMES[variant], 14, own))
    t7 = _read(study, "08_table7")
    if t7 is not None:
        for _, r in t7.iterrows():
            rows.append(_agg(pd.DataFrame([r]), d7_name(r["pruned_from"], r["teacher"]), 7,
                             f"{p.finetune_steps} steps of logits KD, own cosine (notebook 08)"))
    speed = _read(study, "07_speedup")
    table = pd.DataFrame(rows)
    if len(table):
        table["paper IS"] = [PAPER_ROWS.get(v, (np.nan, np.nan))[0] for v in table.variant]
        table["paper FID"] = [PAPER_ROWS.get(v, (np.nan, np.nan))[1] for v in table.variant]
        if speed is not None and "method" in speed:
            depth_rows = speed[speed.method == "depth"]
            by_depth = dict(zip(depth_rows.depth, depth_rows.speedup))
            table["speed-up (CPU)"] = [1.0 if d == 28 else by_depth.get(d, np.nan) for d in table.depth]
    verdicts = []
    for claim, text in paper.CLAIMS.items():
        f = study.root / "verdicts" / f"claim{claim}.json"
        v = load_json(f) if f.exists() else {"status": "not run", "evidence": "", "notebook": ""}
        verdicts.append({"claim": claim, "text": text, "verdict": v["status"], "rule": v.get("rule", ""),
                         "yardstick": yardstick_text(v.get("yardstick") or {}), "evidence": v["evidence"],
                         "notebook": v["notebook"]})
    return table, pd.DataFrame(verdicts)


def yardstick_text(yardstick):
    """The numbers of a verdict's yardstick in one cell (``pooled_finetune_seed_sd=0.21, df=9, ...``)."""
    nums = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in yardstick.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(nums) or ("see evidence" if yardstick else "")


def markdown_table(df, digits=3):
    cols = list(df.columns)
    out = ["| " + " | ".join(str(c).replace("|", "\\|") for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append("NaN" if np.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v).replace("|", "/"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


KEY_FIGURES = (  # (figure, caption) embedded in summary.md when the notebook wrote it
    ("01_recovery_curves", "Recovery curves: FID against fine-tuning steps, every Table 3 model (notebook 01)"),
    ("01_samples_100k", "Samples of every Table 3 model at the paper-100K point (notebook 01)"),
    ("02_confidence_history", "Learnable gates: EMA confidence of each block over one epoch (notebook 02)"),
    ("02_gate_costs", "Where the gates go wrong: calibration cost per block, residual size per layer (notebook 02)"),
    ("07_speedup", "Speed-up of depth against width pruning, timing rounds as error bars (notebook 07)"),
    ("08_d7_samples", "Samples of the four D7 models (notebook 08)"),
)


def display_key_figures(study):
    """Show the figures of ``KEY_FIGURES`` that the notebooks wrote, each under its caption (in a notebook)."""
    from IPython.display import Image, Markdown, display
    for name, caption in KEY_FIGURES:
        path = study.root / "figures" / f"{name}.png"
        if path.exists():
            display(Markdown(f"**{caption}**"), Image(filename=str(path)))


def run_clock(clock, study="main", writer="summary"):
    """``(seconds, attempts)`` of the last run of ``study`` (`make reproduce`, `make scale` ...) from an empty cache
    (``cli.reproduce.from_empty_seconds``), counting the attempt in progress as finished when every notebook but the
    one writing this summary (``writer`` in its name) is done in it: notebook 09 runs last in `make reproduce`, and
    notebook 12 is the whole of `make scale`, each inside its attempt, so without this a summary could never report
    the run it summarises. A study whose one notebook writes the summary (scale) has no other notebooks to show that
    the summary is written inside that attempt, so there the attempt's start stamp, which `cli.reproduce` hands its
    kernels (``TINYFUSION_ATTEMPT``), must name it; a part of the scale ladder (an attempt with ``rungs``) never
    counts."""
    from tinyfusion.cli.reproduce import ATTEMPT_ENV, from_empty_seconds, notebooks
    attempts = clock.get("attempts", [])
    if attempts and not attempts[-1].get("finished") and not attempts[-1].get("rungs"):
        others = {p.name for p in notebooks(study=study) if writer not in p.name}
        inside = bool(others) or os.environ.get(ATTEMPT_ENV) == attempts[-1].get("started")
        if inside and others <= set(attempts[-1].get("notebooks_done", [])):
            clock = {**clock, "attempts": [*attempts[:-1], {**attempts[-1], "finished": True}]}
    return from_empty_seconds(clock)


def findings(verdicts, robustness=None):
    """The first lines of ``summary.md``: what the replication found, in three or four sentences written from the
    verdicts (``collect``'s DataFrame: claim, verdict, ...) and, when notebook 11 ran, its robustness table's
    "verdict survives?" sentences; nothing here is written by hand."""
    from tinyfusion.verdicts import HELD, MIXED, NOT_HELD, NOT_TESTABLE, WITHIN_NOISE
    by = {st: [int(c) for c, v in zip(verdicts.claim, verdicts.verdict) if v == st]
          for st in (HELD, NOT_HELD, MIXED, WITHIN_NOISE, NOT_TESTABLE)}
    nums = lambda cs: ", ".join(map(str, cs))  # noqa: E731
    parts = [f"{len(cs)} {'is' if len(cs) == 1 else 'are'} {st} ({nums(cs)})" for st, cs in by.items() if cs]
    ran = sum(len(cs) for cs in by.values())
    if not ran:
        return ["No claim has a verdict yet: run `make reproduce`."]
    out = [f"Of the paper's {len(verdicts)} claims, {ran} were judged at our scale: " + "; ".join(parts) + "."]
    core = verdicts.set_index("claim").verdict
    if 1 in core.index and 2 in core.index:
        out.append(f"The method's core, that calibration loss right after pruning does not predict recovery (claim 1) "
                   f"and that learnable pruning beats the baselines after the same fine-tuning (claim 2), is "
                   f"'{core[1]}' and '{core[2]}' here.")
    if robustness is not None and len(robustness):
        text = list(robustness["verdict survives?"])
        keep = [t.split(":")[0] for t in text if "the verdict survives" in t]
        lose = [t.split(":")[0] for t in text if "does not survive" in t]
        out.append("Notebook 11 re-judged the claims in other settings (gate budget, pruning seeds, a second DiT "
                   f"teacher, SiT, MAR): the verdict survives for {', '.join(keep) or 'none'}, and not for "
                   f"{', '.join(lose) or 'none'}.")
    out.append("The table below gives each claim's status with one line of evidence; the full evidence, the rules "
               "and their yardsticks follow it, and every number comes from the executed notebooks.")
    return out


def one_line(text, limit=160):
    """A verdict's evidence cut to about ``limit`` characters for the narrow verdict table: its first sentence, cut
    back to the last whole clause ("; ") that fits, or at ``limit`` with an ellipsis."""
    text = str(text).split(". ")[0]
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind("; ")
    return (cut[:end] if end > limit // 3 else cut.rstrip()) + " …"


SCALE_COLUMNS = ("rung", "params", "tokens", "teacher FID", "teacher class accuracy", "teacher meets notebook 00's bar",
                 "calib loss span", "max|h|/std", "block 0 keeps",
                 "learnable FID 100K", "best baseline FID 100K", "learnable/best 100K", "learnable FID 500K",
                 "best baseline FID 500K", "learnable/best 500K", "claim 1", "claim 2", "claim 5")


def scale_section(root):
    """summary.md's lines on the scale ladder when notebook 12 ran (``tables/12_scale.csv``): the per-rung table's
    main columns, the trend sentences it wrote (``12_scale_trend.csv``) and the from-empty time on its clock."""
    root = Path(root)
    table = root / "tables" / "12_scale.csv"
    if not table.exists():
        return []
    df = pd.read_csv(table)
    from tinyfusion.profiles import SCALE_LADDER
    ran = [r for r in df.rung if not str(r).startswith("paper")]
    df["params"] = [f"{p / 1e6:.1f}M" for p in df.params]
    lines = [f"## The scale ladder (notebook 12, `make scale`; rungs {', '.join(ran)})", ""]
    whole = SCALE_LADDER.get(root.name)
    if whole and ran != list(whole):
        lines += [f"**Part of the ladder** (`make scale RUNGS={','.join(ran)}`), not the study's result: the whole "
                  f"ladder is {', '.join(whole)}.", ""]
    shown = df[[c for c in SCALE_COLUMNS if c in df]]
    lines += [markdown_table(shown.astype(object).where(shown.notna(), "—")), ""]   # — : the paper gives none
    trend = root / "tables" / "12_scale_trend.csv"
    if trend.exists():
        lines += [f"- {t}" for t in pd.read_csv(trend)["trend"]] + [""]
    budgets = root / "tables" / "12_teacher_budgets.csv"
    if budgets.exists():
        lines += ["Each rung's teacher (`data/`, training record beside it; wall time over every call of a resumed "
                  "run, the fastest call's rate, on the threads shown and beside whatever else ran then: "
                  "`results/cpu/scale_cost.json` has the like-for-like cost ratios):", "",
                  markdown_table(pd.read_csv(budgets).convert_dtypes().astype(object)).replace("<NA>", "—"), ""]
    clock = root / "scale_clock.json"
    if clock.exists():
        # a part of the ladder has no from-empty time of the study; the whole one counts the attempt running it now
        partial = whole and ran != list(whole)
        seconds, attempts = (None, 0) if partial else run_clock(load_json(clock), study="scale", writer="12_scale")
        lines += [(f"`make scale` from an empty cache (the new rungs'), teachers excluded: {seconds / 3600:.2f} hours "
                   f"over {attempts} attempt(s) (scale_clock.json)." if seconds else "`make scale` has not finished "
                   "the whole ladder from an empty cache yet (scale_clock.json)."), ""]
    return lines


def write_summary(study, table, verdicts):
    """Write ``results/<profile>/summary.md``: verdicts first, then the main table and the run's timings."""
    p = study.prof
    v = verdicts.copy()
    v["notebook"] = [f"[{n}](notebooks/{n})" if n else "" for n in v.notebook]
    keep = [c for c in ["variant", "depth", "schedule", "seeds", "fid", "fid_std", "is", "sfid", "precision", "recall",
                        "class_accuracy", "paper FID", "paper IS", "speed-up (CPU)"] if c in table]
    timings = study.root / "timings.json"
    robust = study.root / "tables" / "11_robustness.csv"
    rt = pd.read_csv(robust) if robust.exists() else None
    narrow = pd.DataFrame({"claim": verdicts.claim, "status": verdicts.verdict,
                           "evidence (first line)": [one_line(e) for e in verdicts.evidence], "notebook": v.notebook})
    lines = [f"# TinyFusion replication: summary ({p.name} profile)", "",
             *findings(verdicts, rt), "",
             markdown_table(narrow), "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} from the profile's verdicts (notebook 09 writes it; notebook 11 adds "
             f"the robustness table, notebook 12 the scale ladder, notebook 13 claim 10). {p.notes}.", "",
             f"Budgets: fine-tuning {p.finetune_steps} steps (paper 100K; Table 4: {p.ablation_finetune_steps} vs 10K), "
             f"learnable pruning {p.prune_steps} steps of batch {p.prune_batch}, {p.random_candidates} random candidates "
             f"(paper 100,000). Every row is scored on {p.eval_samples} samples, {p.sampler} {p.sample_steps} steps, "
             f"CFG {p.cfg_scale}, against the Fashion-MNIST test set with the project's own evaluator; "
             f"seeds {list(p.seeds)} for the key comparisons.", "",
             "## Verdicts on the paper's claims, with the full evidence", "", markdown_table(v), "",
             "## Table 1 analogue (ours beside the paper's ImageNet numbers; absolute values do not compare)", "",
             markdown_table(table[keep]) if len(table) else "(no runs found)", ""]
    shown = [(f, caption) for f, caption in KEY_FIGURES if (study.root / "figures" / f"{f}.png").exists()]
    if shown:
        lines += ["## Key figures", ""]
        for f, caption in shown:
            lines += [f"**{caption}** (`figures/{f}.png`)", "", f"![{caption}](figures/{f}.png)", ""]
    from tinyfusion.profiles import PROFILES
    sit = PROFILES.get(f"{p.name}-sit")
    table2 = sit.results / "tables" / "10_table2.csv" if sit else None
    if table2 is not None and table2.exists():  # notebook 10, written into the profile's SiT variant
        lines += [f"## Table 2 analogue: TinySiT, the flow-objective teacher ({sit.model}; notebook 10, "
                  f"{sit.sampler} {sit.sample_steps} steps)", "", markdown_table(pd.read_csv(table2)), ""]
    if rt is not None:  # notebook 11 (make robustness): the claims read again in other settings
        lines += ["## Does the verdict survive? (notebook 11, `make robustness`)", "",
                  markdown_table(rt.drop(columns=["verdict survives?"])), "",
                  *[f"- {s}" for s in rt["verdict survives?"]], ""]
        rclock = study.root / "robustness_clock.json"
        if rclock.exists():
            from tinyfusion.cli.reproduce import from_empty_seconds
            seconds, attempts = from_empty_seconds(load_json(rclock))
            lines += [(f"`make robustness` from an empty cache: {seconds / 3600:.2f} hours over {attempts} attempt(s) "
                       f"(robustness_clock.json)." if seconds else "`make robustness` has not finished a run from an "
                       "empty cache yet (robustness_clock.json)."), ""]
    lines += scale_section(study.root)
    clock = study.root / "reproduce_clock.json"
    if clock.exists():
        seconds, attempts = run_clock(load_json(clock))
        lines += ["## Reproduction from an empty cache", "",
                  (f"{seconds / 3600:.2f} hours of wall time over {attempts} attempt(s) of `make reproduce` "
                   f"(reproduce_clock.json; a killed attempt counts up to its last heartbeat)." if seconds else
                   "No reproduction from an empty cache has finished yet (reproduce_clock.json)."), ""]
    if timings.exists():  # every finished `make reproduce` run: the first computes, reruns reuse the cache
        # whole runs only (they start with notebook 00; `--only` reruns of a few notebooks are left out)
        all_runs = [r for r in load_json(timings).get("runs", []) if any(k.startswith("00_") for k in r["notebooks"])]
        runs = [r for r in all_runs if r.get("total_seconds")]
        # this notebook runs inside the newest `make reproduce`, before it records its total: show that run too,
        # with the notebooks finished so far (a run with a failed notebook is left out)
        live = all_runs[-1] if all_runs and not all_runs[-1].get("total_seconds") else None
        if live and live["notebooks"] and not any(v.get("failed") for v in live["notebooks"].values()):
            runs.append({**live, "started": f"{live['started']}, this run",
                         "total_seconds": sum(v["seconds"] for v in live["notebooks"].values())})
        if runs:
            df = pd.DataFrame({f"{r['started']} (s)": {k: v["seconds"] for k, v in r["notebooks"].items()}
                               for r in runs[-3:]}).reset_index().rename(columns={"index": "notebook"})
            total = {"notebook": "total (min)", **{f"{r['started']} (s)": r["total_seconds"] / 60 for r in runs[-3:]}}
            lines += ["## Wall time per notebook (`make reproduce` runs on this machine)", "",
                      markdown_table(pd.concat([df, pd.DataFrame([total])], ignore_index=True), 1), ""]
    path = study.root / "summary.md"
    from tinyfusion.io import _atomic_write
    _atomic_write(path, lambda f: f.write("\n".join(lines)), mode="w")
    return path
