"""Where the reproduction's time goes: a JSON summary of ``results/<profile>/timings.json``.

    python benchmarks/reproduce_time.py [--profile cpu] [--timings path/to/timings.json] [--out summary.json]

``timings.json`` is written by ``tinyfusion.cli.reproduce`` ({"runs": [{"notebooks": {name: {"seconds": s}},
"total_seconds": ...}], "latest": {name: s}}). The summary: the seconds of every notebook in its latest run,
their total (against the profile's budget, 240 minutes for cpu from an empty cache), the slowest three, and the last run's own
total and failed notebooks.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BUDGET_MIN = {"cpu": 240, "gpu": 60}  # from an empty cache (issue "A decisive cpu study": 4 hours on 2 cores)


def summarise(timings, profile="cpu"):
    """Summary dict of a timings.json object (see the module docstring)."""
    runs = timings.get("runs") or []
    latest = dict(timings.get("latest") or {})
    if not latest and runs:  # older files: take the last run's notebooks
        latest = {k: v["seconds"] for k, v in runs[-1].get("notebooks", {}).items()}
    if not latest:
        raise ValueError("timings.json holds no notebook timings; run `python -m tinyfusion.cli.reproduce` first")
    latest = dict(sorted(latest.items()))
    total = round(sum(latest.values()), 1)
    slowest = sorted(latest.items(), key=lambda kv: -kv[1])[:3]
    out = dict(profile=profile, notebooks=latest, total_seconds=total, total_minutes=round(total / 60, 2),
               slowest=[dict(notebook=k, seconds=v, share=round(v / total, 3) if total else None) for k, v in slowest],
               n_runs=len(runs))
    if profile in BUDGET_MIN:
        out["budget_minutes"] = BUDGET_MIN[profile]
        out["within_budget"] = total <= 60 * BUDGET_MIN[profile]
    if runs:
        last = runs[-1]
        out["last_run"] = dict(started=last.get("started"), total_seconds=last.get("total_seconds"),
                               notebooks=len(last.get("notebooks", {})),
                               failed=[k for k, v in last.get("notebooks", {}).items() if v.get("failed")],
                               finished=last.get("total_seconds") is not None)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--timings", default=None, help="default results/<profile>/timings.json")
    p.add_argument("--out", default=None, help="also write the summary here")
    a = p.parse_args(argv)
    if a.timings:
        path = Path(a.timings)
    else:
        from tinyfusion.profiles import get_profile
        path = get_profile(a.profile).results / "timings.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run `python -m tinyfusion.cli.reproduce --profile {a.profile}` "
                         f"first (it writes the wall time of every notebook there), or pass --timings")
    res = summarise(json.loads(path.read_text()), a.profile)
    res["timings"] = str(path)
    clock = path.parent / "reproduce_clock.json"  # tinyfusion.cli.reproduce's kill-proof wall clock
    if clock.exists():
        from tinyfusion.cli.reproduce import from_empty_seconds
        seconds, attempts = from_empty_seconds(json.loads(clock.read_text()))
        res.update(from_empty_seconds=seconds, from_empty_attempts=attempts,
                   from_empty_within_budget=None if seconds is None or a.profile not in BUDGET_MIN
                   else seconds <= 60 * BUDGET_MIN[a.profile])
    if a.out:
        from tinyfusion.io import save_json
        save_json(res, a.out)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
