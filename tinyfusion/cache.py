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
import time
from pathlib import Path

from tinyfusion import dist
from tinyfusion.io import CorruptArtefactError, check_writable, config_key, folder_lock, load_json, plain, save_json, sha256

RECORD = "run.json"
_HASHES = {}  # (path, size, mtime) -> SHA-256: hash each input file once per process


def file_id(path):
    """A file as a stable key string: its path (relative to the repository when inside it) and, when it exists,
    the start of its SHA-256."""
    from tinyfusion.profiles import ROOT
    p = Path(path).resolve()
    try:
        name = str(p.relative_to(ROOT))
    except ValueError:
        name = str(p)
    if not p.is_file():
        return name
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
    the entry point, or the other way round) is that folder, a finished one first, else one to resume.
    """
    k = key(config)
    before = sorted((Path(root) / kind).glob(f"*-{k}"), key=lambda p: (not (p / RECORD).exists(), p.name))
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


def read_record(out):
    """The finished record in ``out`` (``{"config", "result", ...}``) or None; a record that is damaged or not of
    that shape raises ``CorruptArtefactError`` naming it."""
    record = Path(out) / RECORD
    if not record.exists():
        return None
    rec = load_json(record)
    if not isinstance(rec, dict) or "config" not in rec or "result" not in rec:
        raise CorruptArtefactError(f"{record} is not a step record (a JSON object with 'config' and 'result'); "
                                   f"delete it and recompute it")
    return rec


ARTEFACT_SUFFIXES = (".pt", ".npz", ".npy", ".json", ".csv", ".png", ".txt", ".md")


def missing_artefacts(out, result):
    """Files under ``out`` that ``result`` names (its string values at any depth: absolute paths, or names with an
    artefact suffix relative to ``out``) but that are gone. ``state.pt`` (the resumable state) is not an
    artefact: deleting it after a run is fine."""
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
        if inside and file_like and p.name != "state.pt" and not p.exists():
            gone.append(str(p))
    return gone


def done(out, config):
    """True when ``out`` holds a finished record of ``config`` whose artefacts are all still there (a corrupt
    record raises, naming the file; a record whose artefacts were deleted is not done: the step heals by running
    again, and says why)."""
    rec = read_record(out)
    if rec is None or rec.get("config") != fingerprint(config):
        return False
    gone = missing_artefacts(out, rec["result"])
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
        return load_json(record)["result"]
    check_writable(out)
    with (folder_lock(out) if dist.is_main() else contextlib.nullcontext()):
        if not recompute and done(out, config):  # another run finished it while we waited for nothing
            return load_json(record)["result"]
        if recompute and dist.is_main():
            for stale in (record, out / "state.pt"):
                stale.unlink(missing_ok=True)
        dist.barrier()
        t0 = time.time()
        result = plain(compute(out))
        if dist.is_main() and not (isinstance(result, dict) and result.get("stopped_at")):
            save_json({"config": fp, "result": result, "wall_s": round(time.time() - t0, 2)}, record)
        dist.barrier()
    return result
