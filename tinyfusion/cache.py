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

import time
from pathlib import Path

from tinyfusion import dist
from tinyfusion.io import config_key, load_json, plain, save_json, sha256

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


def done(out, config):
    """True when ``out`` holds a finished record of ``config`` (a corrupt record raises, naming the file)."""
    record = Path(out) / RECORD
    return record.exists() and load_json(record).get("config") == fingerprint(config)


def cached(out, config, compute, recompute=False):
    """``compute(out)``'s result for ``config``, computed only when ``out`` holds no finished record of it.

    A result that says it stopped early (``stopped_at`` set: a ``--stop-after`` run) is returned but not
    recorded, so the next call resumes. ``recompute``: drop the record and the resumable ``state.pt`` first, so
    the step really runs again. Under torchrun every rank computes and rank 0 writes the record.
    """
    out = Path(out)
    record = out / RECORD
    fp = fingerprint(config)
    if not recompute and done(out, config):
        return load_json(record)["result"]
    if recompute and dist.is_main():
        for stale in (record, out / "state.pt"):
            stale.unlink(missing_ok=True)
    dist.barrier()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = plain(compute(out))
    if dist.is_main() and not (isinstance(result, dict) and result.get("stopped_at")):
        save_json({"config": fp, "result": result, "wall_s": round(time.time() - t0, 2)}, record)
    dist.barrier()
    return result
