"""Copy finished cached steps from one results root to another, relocatable (``tinyfusion.cache.copy_step``).

Long steps (the 10,010-step learnable-pruning runs of notebook 11, hours each on the cpu profile) are computed under a
cache outside the work tree (``TINYFUSION_RESULTS=/work/tf_results``); this ships the finished ones into the
repository's ``results/`` (the default root, committed), or back into a cache, so a later run on any machine reuses
them by key instead of recomputing them:

    python tools/copy_steps.py /work/tf_results results --profile cpu --kind prune_learn --match 10010steps
    python tools/copy_steps.py results /work/tf_results --profile cpu --kind prune_learn --match 10010steps

Only finished steps (a record whose artefacts are all there) are copied; a step already in the destination is left
as it is. The resumable ``state.pt`` is not copied.
"""
import argparse
import os
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src_root", help="results root to copy from (a TINYFUSION_RESULTS folder)")
    ap.add_argument("dest_root", help="results root to copy to (e.g. the repository's results/)")
    ap.add_argument("--profile", default="cpu", help="profile folder under each root")
    ap.add_argument("--kind", default="prune_learn", help="step kind (a folder under the profile's)")
    ap.add_argument("--match", default="", help="copy only step folders whose name contains this")
    args = ap.parse_args(argv)
    os.environ["TINYFUSION_RESULTS"] = str(Path(args.src_root).resolve())
    from tinyfusion import cache
    src = Path(args.src_root) / args.profile / args.kind
    if not src.is_dir():
        raise SystemExit(f"error: {src} is not a folder; pass the results root that holds {args.profile}/{args.kind}")
    for step in sorted(src.iterdir()):
        if not step.is_dir() or args.match not in step.name:
            continue
        rec = cache.read_record(step)
        dest = Path(args.dest_root) / args.profile / args.kind / step.name
        if rec is None or cache.missing_artefacts(step, rec["result"]):
            print(f"skip {step.name}: not finished")
        elif (dest / cache.RECORD).exists():
            print(f"skip {step.name}: already in {dest.parent}")
        else:
            files = cache.copy_step(step, dest, args.src_root, args.dest_root)
            size = sum(f.stat().st_size for f in files) / 2**20
            print(f"copied {step.name}: {len(files)} files, {size:.1f} MiB")


if __name__ == "__main__":
    main()
