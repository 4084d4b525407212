"""Copy finished cached steps from one results root to another, relocatable (``tinyfusion.cache.copy_step``).

Long steps (the 10,010-step learnable-pruning runs of notebook 11, hours each on the cpu profile) are computed under a
cache outside the work tree (``TINYFUSION_RESULTS=/work/tf_results``); this ships the finished ones into the
repository's ``results/`` (the default root, committed), or back into a cache, so a later run on any machine reuses
them by key instead of recomputing them:

    python tools/copy_steps.py /work/tf_results results --profile cpu --kind prune_learn --match 10010steps
    python tools/copy_steps.py results /work/tf_results --profile cpu --kind prune_learn --match 10010steps

Only finished steps (a record whose artefacts are all there) are copied; a step already in the destination is left
as it is. The resumable ``state.pt`` is not copied. With ``--kind all`` (and no ``--match``) each profile's study
clocks (``*_clock.json``) are merged into the destination's too, attempt by attempt.

``--lean`` copies a step without its models and samples (``.pt``, ``.npz``; their SHA-256 go into its record): a study
that runs for several sessions under a cache outside the work tree carries what it has finished in kilobytes, in
``results/carry`` (committed; not a results root, so no notebook reads it), and a machine that lost the cache gets it
back before the study resumes; every finished score is reused, and a step that needs a left-behind file stops with an
error naming the folder to delete (that step then runs again):

    python tools/copy_steps.py /work/tf_results results/carry --profile all --kind all --lean   # at a session's end
    python tools/copy_steps.py results/carry /work/tf_results --profile all --kind all          # after a lost cache
"""
import argparse
import os
from pathlib import Path


def step_kinds(folder):
    """The step kinds under a profile ``folder``: its subfolders that hold at least one step record."""
    from tinyfusion.cache import RECORD
    return sorted(k.name for k in folder.iterdir() if k.is_dir()
                  and any((c / RECORD).is_file() for c in k.iterdir() if c.is_dir())) if folder.is_dir() else []


def copy_profile(src_root, dest_root, profile, kinds, match="", lean=False):
    """Copy the finished steps of ``kinds`` (a list, or "all") of one ``profile`` folder; returns the MiB copied."""
    from tinyfusion import cache
    base = Path(src_root) / profile
    if not base.is_dir():
        raise SystemExit(f"error: {base} is not a folder; pass a results root and a profile folder it holds")
    kinds = step_kinds(base) if kinds == "all" else kinds
    missing = [k for k in kinds if not (base / k).is_dir()]
    if missing:
        raise SystemExit(f"error: {base / missing[0]} is not a folder; pass the results root that holds "
                         f"{profile}/<kind>, and a kind it has ({', '.join(step_kinds(base)) or 'none'})")
    total = 0.0
    for kind in kinds:
        for step in sorted((base / kind).iterdir()):
            if not step.is_dir() or match not in step.name:
                continue
            rec = cache.read_record(step)
            dest = Path(dest_root) / profile / kind / step.name
            if rec is None or cache.missing_artefacts(step, rec["result"], rec.get(cache.OMITTED) or {}):
                print(f"skip {profile}/{kind}/{step.name}: not a finished step")
            elif (dest / cache.RECORD).exists():
                print(f"skip {profile}/{kind}/{step.name}: already in {dest.parent}")
            elif dest.is_dir() and any(dest.iterdir()):   # a run of that key was cut there, or runs there now
                print(f"skip {profile}/{kind}/{step.name}: {dest} holds an unfinished run (its state, lock or files); "
                      f"delete that folder to copy the finished step in, or let the run finish")
            else:
                files = cache.copy_step(step, dest, src_root, dest_root, lean=lean)
                size = sum(f.stat().st_size for f in files) / 2**20
                total += size
                left = cache.read_record(dest).get(cache.OMITTED) or {}
                print(f"copied {profile}/{kind}/{step.name}: {len(files)} files, {size:.2f} MiB"
                      + (f", lean: {len(left)} left behind ({', '.join(sorted(left))})" if left else ""))
    return total


LIVE_S = 90   # a clock whose unfinished last attempt beat this recently belongs to a study running now


def running(clock):
    """Whether the clock's last attempt is unfinished and its heartbeat (start + elapsed + paused: the time of its
    last save) is within ``LIVE_S`` seconds of now: a study runs with it, rewriting the file every 30 s."""
    import time
    last = (clock.get("attempts") or [{"finished": True}])[-1]
    if last.get("finished"):
        return False
    try:
        beat = time.mktime(time.strptime(last["started"], "%Y-%m-%d %H:%M:%S"))
    except (KeyError, TypeError, ValueError):
        return False
    return abs(time.time() - beat - (last.get("elapsed_s") or 0.0) - (last.get("paused_s") or 0.0)) < LIVE_S


def copy_clocks(src_root, dest_root, profile):
    """Merge each study clock at the top of ``profile``'s folder (``*_clock.json``: its attempts, each once, the
    further version of one both hold, in the order they started; see ``ship_results.merged_history``) into the
    destination's, so a study that runs over several sessions keeps its from-empty time across a lost cache: a
    restored root's next attempt is not "from empty", and without the first attempts its clock could never say how
    long the study took. A destination clock that a running study rewrites (``running``) is left alone, said so:
    the study would write its own over the merge. Written atomically with a fresh integrity record. Returns the
    clocks written."""
    from ship_results import merged_history

    from tinyfusion.io import load_json, save_json
    written = []
    for src in sorted((Path(src_root) / profile).glob("*_clock.json")):
        dest = Path(dest_root) / profile / src.name
        if dest.is_file() and running(load_json(dest)):
            print(f"skip {profile}/{src.name}: a study running under {dest_root} writes it now; copy it when it ends")
            continue
        merged = merged_history(src, dest, "attempts")
        merged["attempts"].sort(key=lambda a: a.get("started") or "")   # one study's attempts, in their order
        if dest.is_file() and load_json(dest) == merged:
            continue
        save_json(merged, dest)
        written.append(src.name)
        print(f"merged {profile}/{src.name}: {len(merged['attempts'])} attempts")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src_root", help="results root to copy from (a TINYFUSION_RESULTS folder)")
    ap.add_argument("dest_root", help="results root to copy to (e.g. the repository's results/)")
    ap.add_argument("--profile", default="cpu",
                    help="profile folder under each root, several separated by commas, or 'all' (every profile folder)")
    ap.add_argument("--kind", default="prune_learn",
                    help="step kind (a folder under the profile's), several separated by commas, or 'all'")
    ap.add_argument("--match", default="", help="copy only step folders whose name contains this")
    ap.add_argument("--lean", action="store_true", help="leave models and samples (.pt, .npz) behind, their SHA-256 "
                    "in the record: the numbers of a study carried across machines in kilobytes")
    args = ap.parse_args(argv)
    os.environ["TINYFUSION_RESULTS"] = str(Path(args.src_root).resolve())
    from tinyfusion.profiles import PROFILES
    src = Path(args.src_root)
    profiles = sorted(p.name for p in src.iterdir() if p.is_dir() and p.name in PROFILES) if args.profile == "all" \
        and src.is_dir() else args.profile.split(",")
    kinds = "all" if args.kind == "all" else args.kind.split(",")
    total = sum(copy_profile(src, args.dest_root, p, kinds, args.match, args.lean) for p in profiles)
    if kinds == "all" and not args.match:   # a whole root's steps: its study clocks go with them
        for p in profiles:
            copy_clocks(src, args.dest_root, p)
    print(f"{total:.1f} MiB copied ({', '.join(profiles)})")


if __name__ == "__main__":
    main()
