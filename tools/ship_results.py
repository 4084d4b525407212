"""Copy what a finished study wrote under a results root (executed notebooks, a part of the scale ladder's executed
copy in ``partial/``, figures, tables, verdicts, timings and clocks) into the repository's ``results/``, to be looked at and committed; ``summary.md`` is written again there.

Long studies run under a root outside the work tree (``TINYFUSION_RESULTS=~/tf_results``, ``tools/background.sh``);
this brings their outputs home without the cached runs (``tools/copy_steps.py`` ships cached steps):

    python tools/ship_results.py ~/tf_results results                          # every profile folder found there
    python tools/ship_results.py ~/tf_results results --profiles cpu,cpu-sit --dry-run

Per file it says new, changed or same, and it lists the new and changed figures last: look at each before you commit.
A file the source root does not hold is left as it is in the destination; nothing is deleted. A history (the clocks
``*_clock.json``, ``timings.json``) is merged, not replaced: the destination keeps the runs it records (the
reproduction from an empty cache, measured once) and gains the source's; ``summary.md`` is then written again from
the destination's verdicts, tables and merged histories, so it reports that measurement.
"""
import argparse
import filecmp
import json
import os
import shutil
from pathlib import Path

FOLDERS = ("notebooks", "figures", "tables", "verdicts")                  # whole folders of outputs
FILES = ("summary.md", "timings.json", "reproduce_clock.json", "robustness_clock.json", "scale_clock.json",
         "mar_clock.json")                                                 # single files at a profile's top


def outputs(profile_dir):
    """The output files of one profile folder, relative to it (cached steps and logs excluded)."""
    found = [Path(name) for name in FILES if (profile_dir / name).is_file()]
    # a part of the scale ladder's executed copy (12_scale__cpu+cpu-w128.ipynb); never a failed or running notebook
    found += sorted(p.relative_to(profile_dir) for p in (profile_dir / "partial").glob("*__*.ipynb"))
    for folder in FOLDERS:
        if (profile_dir / folder).is_dir():
            found += sorted(p.relative_to(profile_dir) for p in (profile_dir / folder).rglob("*") if p.is_file()
                            and not p.name.endswith(".sha256") and ".ipynb_checkpoints" not in p.parts)
    return found


HISTORIES = {"timings.json": "runs"}  # files that are a history of runs, besides the clocks ("attempts")


def history_key(rel):
    """The list a history file holds (a clock's "attempts", timings.json's "runs"), None for any other file."""
    return "attempts" if rel.name.endswith("_clock.json") else HISTORIES.get(rel.name)


def merged_history(src, dest, key):
    """The file ``dest`` with the entries under ``key`` of ``src`` added: each entry once (by its start and profile),
    the destination's in their order and the source's new ones after them, so attempts of two results roots never
    interleave; any other key (timings' "latest": per notebook, the last run's seconds) takes the source's values
    over the destination's. Of an entry both hold, the source's version, as a resumed run updates its own; of a
    clock's attempt, the further one (finished, then the longer elapsed time), whichever file is older."""
    merged, entries = {}, {}
    further = lambda e: (bool(e.get("finished")), e.get("elapsed_s") or 0.0)  # noqa: E731
    for path in (dest, src):
        if path.is_file():
            obj = json.loads(path.read_text())
            for k, v in obj.items():
                if k != key:
                    merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
            for e in obj.get(key, []):
                at = (e.get("started"), e.get("profile"))
                if key != "attempts" or at not in entries or further(e) >= further(entries[at]):
                    entries[at] = e   # a dict keeps the first place of a key
    return {**merged, key: list(entries.values())}


def ship(src_root, dest_root, profiles=None, dry_run=False):
    """Copy the outputs of ``profiles`` (default: every folder of ``src_root`` holding any) from ``src_root`` to
    ``dest_root``. Returns {"new": [...], "changed": [...], "same": n, "summaries": [...]} with paths relative to
    ``dest_root`` ("summaries": the summary.md files written again, for each changed profile whose source has one)."""
    src_root, dest_root = Path(src_root), Path(dest_root)
    if not src_root.is_dir():
        raise SystemExit(f"error: {src_root} is not a folder; pass the results root the study ran under "
                         f"(its TINYFUSION_RESULTS)")
    from tinyfusion.profiles import PROFILES  # the profile folders only (not background.sh's RESULTS/tree)
    names = profiles or sorted(p.name for p in src_root.iterdir() if p.is_dir() and p.name in PROFILES and outputs(p))
    report = {"new": [], "changed": [], "same": 0, "summaries": []}
    for name in names:
        if not (src_root / name).is_dir():
            raise SystemExit(f"error: {src_root / name} does not exist; profiles there: "
                             f"{', '.join(sorted(p.name for p in src_root.iterdir() if p.is_dir()))}")
        for rel in outputs(src_root / name):
            if rel == Path("summary.md"):
                continue  # written again below from the merged files, never copied
            src, dest = src_root / name / rel, dest_root / name / rel
            key = history_key(rel)
            text = json.dumps(merged_history(src, dest, key), indent=2) + "\n" if key else None
            if dest.exists() and (dest.read_text() == text if key else filecmp.cmp(src, dest, shallow=False)):
                report["same"] += 1
                continue
            report["changed" if dest.exists() else "new"].append(str(Path(name) / rel))
            if not dry_run:
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text) if key else shutil.copy2(src, dest)
                Path(str(dest) + ".sha256").unlink(missing_ok=True)  # a local run's record of the old content
    if not dry_run:
        for name in sorted({Path(p).parts[0] for p in report["new"] + report["changed"]}):
            if (src_root / name / "summary.md").is_file():
                write_summary_again(dest_root, name)
                report["summaries"].append(str(Path(name) / "summary.md"))
    return report


def write_summary_again(root, profile):
    """Write ``<root>/<profile>/summary.md`` again from the verdicts, tables and clocks under ``root``."""
    os.environ["TINYFUSION_RESULTS"] = str(Path(root).resolve())
    from tinyfusion.study import Study
    from tinyfusion.summary import collect, write_summary
    study = Study(profile)
    write_summary(study, *collect(study))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src_root", help="results root the study ran under (its TINYFUSION_RESULTS)")
    ap.add_argument("dest_root", help="results root to copy into (the repository's results/)")
    ap.add_argument("--profiles", default="", help="profile folders, comma-separated (default: every one with outputs)")
    ap.add_argument("--dry-run", action="store_true", help="only say what would be copied")
    args = ap.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p] or None
    report = ship(args.src_root, args.dest_root, profiles, args.dry_run)
    verb = "would copy" if args.dry_run else "copied"
    for kind in ("new", "changed"):
        for path in report[kind]:
            print(f"{verb} ({kind}) {path}")
    for path in report["summaries"]:
        print(f"wrote {path} again from the merged files")
    print(f"{len(report['new'])} new, {len(report['changed'])} changed, {report['same']} the same")
    figures = [p for p in report["new"] + report["changed"] if p.endswith(".png")]
    if figures:
        print("look at each of these figures before committing them:\n  " + "\n  ".join(figures))


if __name__ == "__main__":
    main()
