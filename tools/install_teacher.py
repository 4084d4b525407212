"""Ship a finished pre-training run as a profile's teacher: ``<run>/teacher.pt`` becomes the profile's teacher file
(``data/teacher_cpu_w128.pt`` for ``cpu-w128``) with its integrity record, and ``<run>/summary.json`` (the training
log: steps, batch, wall time, loss curve) becomes ``data/teacher_cpu_w128.json`` beside it.

    python -m tinyfusion.cli.pretrain --profile cpu-w128 --out ~/tf_results/cpu-w128/pretrain   # hours, resumable
    python tools/install_teacher.py ~/tf_results/cpu-w128/pretrain --profile cpu-w128

Refused, naming the file: a run that has not finished (no teacher.pt), a checkpoint that fails its integrity check or
holds more than tensors, one of another model than the profile's (its config against the registered one), and a
different teacher already at the destination (``--force`` replaces it). Says the file's size: the issue tracker asks
for shipped files under about 40 MB.
"""
import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHIP_LIMIT_MB = 40


def install(run, profile, force=False):
    """Copy ``run``'s teacher and training log to ``profile``'s teacher path; returns {"teacher", "log", "mb"}."""
    from tinyfusion.io import _atomic_write, _replace_atomically, load_json, sha256
    from tinyfusion.models.registry import build, load_model
    from tinyfusion.profiles import get_profile

    prof = get_profile(profile)
    run = Path(run)
    src, log = run / "teacher.pt", run / "summary.json"
    if not src.is_file() or not log.is_file():
        raise SystemExit(f"error: {src} or {log} does not exist: the run in {run} has not finished; resume it with "
                         f"`python -m tinyfusion.cli.pretrain --profile {profile} --out {run}`")
    model = load_model(src)  # checks the integrity record and refuses anything but tensors and plain data
    want = build(prof.model).config
    if model.config != want:
        diff = {k: (model.config.get(k), want.get(k)) for k in set(model.config) | set(want)
                if model.config.get(k) != want.get(k)}
        raise SystemExit(f"error: {src} is not a {prof.model} (profile {profile}'s model): (its, expected) {diff}")
    dest = prof.path(prof.teacher)
    if dest.exists() and sha256(dest) != sha256(src) and not force:
        raise SystemExit(f"error: {dest} already holds another teacher; pass --force to replace it")
    _atomic_write(dest, lambda f: shutil.copyfileobj(open(src, "rb"), f))  # and dest.sha256, naming dest
    summary = load_json(log)
    _replace_atomically(dest.with_suffix(".json"), lambda f: f.write(log.read_text()), "w")  # no half-written log
    mb = dest.stat().st_size / 2**20
    return {"teacher": dest, "log": dest.with_suffix(".json"), "mb": mb, "steps": summary.get("steps"),
            "wall_s": summary.get("wall_s")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("run", help="the pre-training run's folder (cli.pretrain --out): teacher.pt and summary.json")
    ap.add_argument("--profile", required=True, help="the profile whose teacher it becomes (e.g. cpu-w128)")
    ap.add_argument("--force", action="store_true", help="replace a different teacher already at the destination")
    args = ap.parse_args(argv)
    out = install(args.run, args.profile, args.force)
    note = f"; over the {SHIP_LIMIT_MB} MB asked of shipped files" if out["mb"] > SHIP_LIMIT_MB else ""
    print(f"installed {out['teacher']} ({out['mb']:.1f} MB{note}; {out['steps']} steps in "
          f"{(out['wall_s'] or 0) / 60:.0f} min) and its training log {out['log']}; commit both with the .sha256")


if __name__ == "__main__":
    main()
