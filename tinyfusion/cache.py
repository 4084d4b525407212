"""One cache for every expensive step, keyed by the resolved config the computation used.

A step (learnable pruning, fine-tuning, sampling and scoring, the random-prune study, ...) is a library
function ``compute(folder)`` run for a *resolved config*: a dict holding every setting the computation reads
(profile defaults filled in by the step's own resolver, e.g. ``recovery.recovery_config``) and its input files
as ``pathlib.Path`` values. Here, and nowhere else, that config becomes a key: each ``Path`` is replaced by
its repository-relative name and the start of its SHA-256 (:func:`fingerprint`), so a file replaced at the
same path (a retrained teacher or evaluator) changes the key, and the JSON of the result is hashed
(:func:`key`). The step runs in ``<root>/<kind>/<label>-<key>/`` and writes ``run.json`` last
(``{"config": fingerprint, "result": ...}``); :func:`cached` returns that result instead of recomputing
when the record exists and its config matches. The notebooks (through ``Study``) and the entry points
(``python -m tinyfusion.cli.*``, with or without torchrun) use the same folders and the same records.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from tinyfusion import dist
from tinyfusion.io import (OMITTED, SKELETON_SUFFIX, CorruptArtefactError, check_writable, config_key, folder_lock,
                           load_json, omitted_hash, plain, save_json, sha256)

RECORD = "run.json"
LOG_ENV = "TINYFUSION_CACHE_LOG"   # a file to which every step appends "reused <folder>" or "computed <folder>"


def log_step(event, out):
    """Append ``event`` ("reused" or "computed") and the step's folder to the file ``$TINYFUSION_CACHE_LOG`` names,
    when it names one (``cli.reproduce`` does, to say per notebook how many cached steps a run reused)."""
    path = os.environ.get(LOG_ENV)
    if path and dist.is_main():
        with open(path, "a") as f:
            f.write(f"{event} {out}\n")


def count_steps(path):
    """{"reused": n, "computed": n} of a step log written by :func:`log_step` (zeros when there is none)."""
    counts = {"reused": 0, "computed": 0}
    if path and os.path.isfile(path):
        for line in open(path):
            event = line.split(" ", 1)[0]
            if event in counts:
                counts[event] += 1
    return counts
_HASHES = {}  # (path, size, mtime) -> SHA-256: hash each input file once per process

# Records are relocatable: a path a result holds inside its own step folder is written as "$OUT/<name>", one elsewhere
# in the results root as "$RESULTS/<name>", and both are made absolute again when a record is read; cache keys name the
# files of the root the same way (file_id). So a cache folder (or a finished step copied into a committed results
# folder) is found and reused under another root, on another machine, with nothing recomputed.
OUT_MARK, RESULTS_MARK = "$OUT", "$RESULTS"


def results_root():
    """The root every profile's results folder lives in: ``$TINYFUSION_RESULTS``, else ``<repository>/results``."""
    from tinyfusion.profiles import ROOT
    return Path(os.environ.get("TINYFUSION_RESULTS", ROOT / "results"))


def _map_strings(value, fn):
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def relocatable(result, out, root=None):
    """``result`` with absolute paths inside ``out`` as "$OUT/..." and other paths inside the results root (``root``,
    default :func:`results_root`) as "$RESULTS/..." (what a record stores)."""
    bases = ((OUT_MARK, Path(out).resolve()), (RESULTS_MARK, Path(root or results_root()).resolve()))

    def rel(v):
        if not v.startswith("/") or len(v) > 4096:
            return v
        p = Path(v).resolve()
        for mark, base in bases:
            if p == base or p.is_relative_to(base):
                return f"{mark}/{p.relative_to(base)}" if p != base else mark
        return v
    return _map_strings(result, rel)


def resolved(result, out, root=None):
    """A stored result with its "$OUT" and "$RESULTS" paths made absolute again (``out``: the step's folder now;
    ``root``: the results root now, default :func:`results_root`)."""
    bases = {OUT_MARK: Path(out).resolve(), RESULTS_MARK: Path(root or results_root()).resolve()}

    def absolute(v):
        for mark, base in bases.items():
            if v == mark:
                return str(base)
            if v.startswith(mark + "/"):
                return str(base / v[len(mark) + 1:])
        return v
    return _map_strings(result, absolute)


def file_id(path):
    """A file as a stable key string: its path (relative to the results root as "$RESULTS/...", or to the
    repository, when inside it) and, when it exists, the start of its SHA-256. Inside both (the default root
    ``results/`` lies in the repository; ``tools/background.sh`` clones the repository into ``RESULTS/tree``), the
    nearer one names it, so a shipped teacher has one name in the work tree and in the background's clone."""
    from tinyfusion.profiles import ROOT
    p = Path(path).resolve()
    # a step's output is named by its place in the results root, so a moved root keeps its keys (relocate)
    bases = [(len(b.parts), mark, b) for mark, b in ((RESULTS_MARK, results_root().resolve()), ("", ROOT.resolve()))
             if p.is_relative_to(b)]
    if bases:
        _, mark, base = max(bases)
        rel = p.relative_to(base).as_posix()
        name = f"{mark}/{rel}" if mark else rel
    else:
        name = str(p)
    if not p.is_file():   # a file a lean copy of its step was shipped without is named by the hash it had
        shipped = omitted_hash(p)
        return f"{name}@{shipped[:12]}" if shipped else name
    st = p.stat()
    k = (str(p), st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        _HASHES[k] = sha256(p)
    return f"{name}@{_HASHES[k][:12]}"


def fingerprint(config):
    """The config as plain JSON values with every ``Path`` replaced by :func:`file_id` (what keys and records
    hold)."""
    if isinstance(config, Path):
        return file_id(config)
    if isinstance(config, dict):
        return {str(k): fingerprint(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [fingerprint(v) for v in config]
    return plain(config)


def key(config):
    """Short stable hash of a resolved config (its :func:`fingerprint`)."""
    return config_key(fingerprint(config))


def folder(root, kind, label, config):
    """Where the step ``kind`` of ``config`` lives: ``<root>/<kind>/<label>-<key>``.

    The label only makes folders readable: a run of the same key under another label (a notebook's run found by
    the entry point, or the other way round) is that folder: a finished one with its files first, then a lean copy
    of one (its models left behind, ``--lean``), else one to resume.
    """
    k = key(config)

    def lean(p):
        try:
            return bool(load_json(p / RECORD).get(OMITTED))
        except Exception:   # no record, or an unreadable one: judged where the step is loaded, not here
            return False
    before = sorted((Path(root) / kind).glob(f"*-{k}"),
                    key=lambda p: (not (p / RECORD).exists(), lean(p), p.name))
    if before:
        return before[0]
    safe = str(label).replace(" ", "_").replace(":", "of").replace("/", "-")
    return Path(root) / kind / f"{safe}-{k}"


def jsonable(config):
    """The config with ``Path`` values as strings: flags for an entry point, or a readable copy."""
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, dict):
        return {k: jsonable(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [jsonable(v) for v in config]
    return config


LEAN_SUFFIXES = (".pt", ".npz")   # what a lean copy leaves behind: models and samples, the bulk of a results root


def _save_skeleton(checkpoint, path):
    """Write ``io.checkpoint_skeleton(checkpoint)`` (its config, kept layers and records; meta tensors in place of
    its weights: kilobytes) to ``path``, which ``io.checkpoint_skeleton`` reads once the checkpoint is left behind;
    returns ``path``, or None for a ``.pt`` that is not a loadable checkpoint (it is left behind without one)."""
    import torch

    from tinyfusion.io import checkpoint_skeleton
    try:
        skeleton = checkpoint_skeleton(checkpoint)
    except CorruptArtefactError as e:   # said, not hidden: a damaged model is left behind with the hash it has now
        print(f"warning: {checkpoint} left behind without a skeleton: {e}")
        return None
    torch.save(skeleton, path)
    return path


def copy_step(src, dest, src_root, dest_root, lean=False):
    """Copy the finished step in folder ``src`` (under the results root ``src_root``) to folder ``dest`` (under
    ``dest_root``): its artefacts, not the resumable ``state.pt``, the lock or integrity sidecars, and its record
    rewritten relocatable (an older record's absolute paths too). Returns the files copied. Used to ship long finished
    steps in a committed results folder (``tools/copy_steps.py``).

    ``lean``: leave its models and samples (``LEAN_SUFFIXES``) behind and write their SHA-256 into the record
    (``"omitted"``), and beside each checkpoint its skeleton (``<name>.skeleton``: config and shapes, which resolving
    a score's config reads). A lean step carries a study's numbers across machines in kilobytes: it counts as done,
    and a step that read one of its files keeps its key (:func:`file_id` names a left-behind file by the hash it had),
    so a study resumed from lean copies reuses every score and recomputes nothing it had finished. Loading a
    left-behind file's weights raises an error naming the step folder to delete (``io.missing_file``)."""
    import shutil
    src, dest = Path(src), Path(dest)
    rec = load_json(src / RECORD)
    rec["result"] = relocatable(resolved(rec["result"], src, src_root), src, src_root)  # the same under dest
    dest.mkdir(parents=True, exist_ok=True)
    copied, omitted = [], dict(rec.get(OMITTED) or {})
    for f in sorted(src.iterdir()):
        stale = f.name.endswith(SKELETON_SUFFIX) and (src / f.name[:-len(SKELETON_SUFFIX)]).is_file()
        if f.is_file() and f.name not in ("state.pt", ".lock", RECORD) and not f.name.endswith(".sha256") and not stale:
            if lean and f.suffix in LEAN_SUFFIXES:
                omitted[f.name] = sha256(f)
                skeleton = f.suffix == ".pt" and _save_skeleton(f, dest / (f.name + SKELETON_SUFFIX))
                copied += [skeleton] if skeleton else []   # what asking its architecture needs (a score's config)
                continue
            shutil.copy2(f, dest / f.name)
            copied.append(dest / f.name)
            omitted.pop(f.name, None)
    save_json({**rec, OMITTED: omitted} if omitted else {k: v for k, v in rec.items() if k != OMITTED}, dest / RECORD)
    return copied + [dest / RECORD]


def read_record(out):
    """The finished record in ``out`` (``{"config", "result", ...}``, the result's paths made absolute for where
    ``out`` is now) or None; a record that is damaged or not of that shape raises ``CorruptArtefactError`` naming
    it."""
    record = Path(out) / RECORD
    if not record.exists():
        return None
    rec = load_json(record)
    if not isinstance(rec, dict) or "config" not in rec or "result" not in rec:
        raise CorruptArtefactError(f"{record} is not a step record (a JSON object with 'config' and 'result'); "
                                   f"delete it and recompute it")
    return {**rec, "result": resolved(rec["result"], out)}


ARTEFACT_SUFFIXES = (".pt", ".npz", ".npy", ".json", ".csv", ".png", ".txt", ".md")


def missing_artefacts(out, result, omitted=()):
    """Files under ``out`` that ``result`` names (its string values at any depth: absolute paths, or names with an
    artefact suffix relative to ``out``) but that are gone. ``state.pt`` (the resumable state) is not an
    artefact: deleting it after a run is fine; nor are the names in ``omitted`` (what a lean copy left behind)."""
    out = Path(out).resolve()
    names = []

    def walk(v):
        if isinstance(v, dict):
            for w in v.values():
                walk(w)
        elif isinstance(v, list):
            for w in v:
                walk(w)
        elif isinstance(v, str) and v and len(v) < 4096:
            names.append(v)
    walk(result)
    gone = []
    for v in names:
        p = Path(v) if Path(v).is_absolute() else out / v
        try:
            inside = p.resolve() != out and p.resolve().is_relative_to(out)
        except (OSError, ValueError):
            continue
        file_like = Path(v).is_absolute() or (p.suffix in ARTEFACT_SUFFIXES and not any(c.isspace() for c in v))
        left_behind = p.name in omitted and p.resolve().parent == out
        if inside and file_like and p.name != "state.pt" and not left_behind and not p.exists():
            gone.append(str(p))
    return gone


def done(out, config):
    """True when ``out`` holds a finished record of ``config`` whose artefacts are all still there (a corrupt
    record raises, naming the file; a record whose artefacts were deleted is not done: the step heals by running
    again, and says why; the files a lean copy left behind, :func:`copy_step`, do not count as deleted)."""
    rec = read_record(out)
    if rec is None or rec.get("config") != fingerprint(config):
        return False
    gone = missing_artefacts(out, rec["result"], rec.get(OMITTED) or {})
    if gone:
        dist.print0(f"{Path(out) / RECORD} names artefacts that are gone ({', '.join(gone[:3])}"
                    f"{' ...' if len(gone) > 3 else ''}); computing the step again")
        return False
    return True


def cached(out, config, compute, recompute=False):
    """``compute(out)``'s result for ``config``, computed only when ``out`` holds no finished record of it.

    A result that says it stopped early (``stopped_at`` set: a ``--stop-after`` run) is returned but not
    recorded, so the next call resumes. ``recompute``: drop the record and the resumable ``state.pt`` first, so
    the step really runs again. A record whose artefacts were deleted is recomputed (see :func:`done`).
    Under torchrun every rank computes and rank 0 writes the record. ``out`` is checked writable before the step
    runs, and rank 0 holds ``io.folder_lock(out)`` while it runs: a second run on the same folder stops at once
    instead of deleting this one's temporary files or resuming its state.
    """
    out = Path(out)
    record = out / RECORD
    fp = fingerprint(config)
    if not recompute and done(out, config):
        log_step("reused", out)
        return read_record(out)["result"]
    check_writable(out)
    with (folder_lock(out) if dist.is_main() else contextlib.nullcontext()):
        if not recompute and done(out, config):  # another run finished it while we waited for nothing
            log_step("reused", out)
            return read_record(out)["result"]
        if recompute and dist.is_main():
            for stale in (record, out / "state.pt"):
                stale.unlink(missing_ok=True)
        dist.barrier()
        t0 = time.time()
        result = plain(compute(out))
        if dist.is_main() and not (isinstance(result, dict) and result.get("stopped_at")):
            save_json({"config": fp, "result": relocatable(result, out), "wall_s": round(time.time() - t0, 2)}, record)
            log_step("computed", out)
        dist.barrier()
    return result
