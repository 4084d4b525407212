"""Atomic artefact writes and checked loads.

Every checkpoint, sample file and metrics JSON is written to a temporary file in the same folder and then
renamed, so a killed run never leaves a half-written artefact under its final name. A file that is
truncated or corrupted anyway raises ``CorruptArtefactError`` naming it, instead of being half-read.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


class CorruptArtefactError(RuntimeError):
    """An artefact on disk cannot be read; the message names it and says what to do."""


def _atomic_write(path, write_fn, mode="wb"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temps(folder):
    """Delete the temporary files that writes killed mid-way (SIGKILL, power loss) left in ``folder``.

    ``_atomic_write`` cleans up after an exception, but nothing runs after SIGKILL. Call this only where no other
    process is writing into ``folder``, e.g. when a run starts on its own output folder.
    """
    folder = Path(folder)
    stale = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(obj, path):
    """torch.save ``obj`` to ``path`` atomically."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, map_location="cpu", weights_only=False):
    """torch.load with a clear error for a missing, truncated or corrupted file. ``weights_only``: accept tensors
    and plain containers only (model weights and their configs), so a file carrying pickled code is refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # truncated zip, pickle garbage, or (weights_only) a pickle asking for more than data
        if weights_only and "weights only load failed" in str(e).lower():
            raise CorruptArtefactError(
                f"{path} holds objects other than tensors and plain containers; it is refused unread, because "
                f"unpickling it could run code. Use a checkpoint saved as a state dict (ours, or the official "
                f"DiT/SiT release)") from e
        raise CorruptArtefactError(
            f"{path} is truncated or corrupted and cannot be loaded ({type(e).__name__}: {e}); "
            f"delete it and recompute it") from e


def save_json(obj, path):
    return _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=_json_default)), mode="w")


def load_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtefactError(f"{path} is not valid JSON ({e}); delete it and recompute it") from e


def save_npz(path, **arrays):
    return _atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path):
    path = Path(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CorruptArtefactError(f"{path} is truncated or corrupted ({type(e).__name__}: {e}); "
                                   f"delete it and recompute it") from e


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path, expected):
    """Raise if ``path``'s SHA-256 differs from ``expected`` (a hex string or a path to a ``.sha256`` file)."""
    if os.path.exists(str(expected)):
        expected = Path(expected).read_text().split()[0]
    got = sha256(path)
    if got != expected:
        raise CorruptArtefactError(f"{path} has SHA-256 {got}, expected {expected}: the file is damaged or "
                                   f"was replaced; restore it from git (git checkout -- {path}) or retrain it")
    return got


def plain(obj):
    """``obj`` as it reads back from JSON (numpy values and tuples become plain numbers and lists)."""
    return json.loads(json.dumps(obj, default=_json_default))


def config_key(config: dict) -> str:
    """Short stable hash of a config dict, used to key cached artefacts."""
    blob = json.dumps(config, sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
