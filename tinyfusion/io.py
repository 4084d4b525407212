"""Atomic artefact writes, integrity records, checked and code-free loads, and output-folder locks.

Every checkpoint, sample file and metrics JSON is written to a temporary file in the same folder and then
renamed, so a killed run never leaves a half-written artefact under its final name. Each write also leaves an
integrity record ``<file>.sha256`` (``sha256sum`` format, the form the shipped ``data/*.pt.sha256`` have);
every load checks the file against its record when there is one, so a truncated, bit-flipped or replaced
artefact raises ``CorruptArtefactError`` naming it instead of being half-read or read wrong. Checkpoints are
read with ``torch.load(weights_only=True)`` only: tensors and plain containers, never pickled code.
Files are written with the permissions the umask gives (readable by the group and others as usual), not 0600.

A run that writes into a folder holds :func:`folder_lock` on it, so a second run on the same folder stops at
once with a message instead of deleting the first one's temporary files or mixing its artefacts in.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


class CorruptArtefactError(RuntimeError):
    """An artefact on disk cannot be read; the message names it and says what to do."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def record_path(path):
    """Where the integrity record of ``path`` lives: ``<path>.sha256``."""
    return Path(str(path) + ".sha256")


def _replace_atomically(path, write_fn, mode):
    """Write ``write_fn``'s output to a temp file beside ``path``, fsync, set ordinary permissions, rename;
    returns the SHA-256 of what was written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artefacts are shared like any other file
        digest = sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return digest


def _atomic_write(path, write_fn, mode="wb"):
    """Write ``path`` atomically, then its integrity record (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = _replace_atomically(path, write_fn, mode)
    _replace_atomically(record_path(path), lambda f: f.write(f"{digest}  {path.name}\n"), "w")
    return path


def check_integrity(path):
    """Raise ``CorruptArtefactError`` when ``path`` has an integrity record that its content does not match."""
    record = record_path(path)
    if not record.is_file():
        return None
    try:
        expected = record.read_text().split()[0]
    except (IndexError, OSError, UnicodeDecodeError) as e:
        raise CorruptArtefactError(f"the integrity record {record} of {path} is unreadable or empty ({e}); "
                                   f"delete both and recompute them, or restore them from git") from None
    got = sha256(path)
    if got != expected:
        raise CorruptArtefactError(
            f"{path} is truncated or corrupted: its SHA-256 {got[:16]}... differs from its integrity record "
            f"{record} ({expected[:16]}...); delete it and recompute it, or restore a "
            f"shipped file from git (git checkout -- {path})")
    return got


def check_zip(path):
    """For a file without an integrity record: a ``.pt`` or ``.npz`` is a zip whose members carry CRC-32s, which
    ``torch.load`` and ``np.load`` do not check; check them, so a damaged copy that travelled without its record
    (copied to another machine, attached to an e-mail) is refused by name instead of loading garbage."""
    import zipfile
    if record_path(path).is_file() or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        bad = f"its zip structure ({type(e).__name__}: {e})"
    if bad:
        raise CorruptArtefactError(
            f"{path} is corrupted: {bad if bad.startswith('its zip') else f'its member {bad}'} fails the zip's "
            f"CRC-32 check (no integrity record beside it); delete it and recompute it, or copy it again from where "
            f"it came")


def check_writable(folder, what="output folder"):
    """Create ``folder`` if needed and prove it takes a file, before any work is done for it (a read-only or
    full results folder then fails at once, naming it, instead of after the last training step)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"{what} {folder} cannot be written ({type(e).__name__}: {e.strerror or e}); "
                              f"make it writable, free space, or choose another folder (--out / "
                              f"TINYFUSION_RESULTS)") from None
    return folder


class FolderBusyError(RuntimeError):
    """Another live process holds the lock of an output folder."""


_LOCKS = {}  # resolved folder -> [fd, depth]: a process may re-enter its own lock


@contextlib.contextmanager
def folder_lock(folder):
    """Hold an exclusive lock on ``folder`` (``<folder>/.lock``, ``flock``: released by the kernel when the process
    dies, so a killed run never leaves a stale lock). Raises ``FolderBusyError`` at once when another process
    holds it. Re-entrant within one process."""
    folder = check_writable(folder)
    key = str(folder.resolve())
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        try:
            yield folder
        finally:
            _LOCKS[key][1] -= 1
        return
    lock = folder / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderBusyError(f"{folder} is in use by another run (pid {holder}); wait for it to finish, or "
                              f"give this run another output folder (--out)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _LOCKS[key] = [fd, 1]
    try:
        yield folder
    finally:
        _LOCKS[key][1] -= 1
        if not _LOCKS[key][1]:
            del _LOCKS[key]
            os.close(fd)  # closing releases the flock


def remove_stale_temps(folder):
    """Delete the temporary files that writes killed mid-way (SIGKILL, power loss) left in ``folder``.

    ``_atomic_write`` cleans up after an exception, but nothing runs after SIGKILL. Call this only while holding
    :func:`folder_lock` on ``folder`` (no other live run then writes there).
    """
    folder = Path(folder)
    stale = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# The digest a file of ours carries inside it (besides the zip's CRC-32s and the <file>.sha256 record beside it), so
# that a copy travelling alone is checked against what was written, not only against damage to its bytes: a
# checkpoint of ours (a dict with a "config") holds it under DIGEST_KEY, an .npz as the array NPZ_DIGEST. Raw state
# dicts (the official layout, which the official code loads strictly) carry none. Loads check it and take it out.
DIGEST_KEY = "content_sha256"
NPZ_DIGEST = "__content_sha256__"


def content_digest(obj):
    """SHA-256 of every tensor, array and plain value in ``obj`` (nested dicts, lists, tuples) in a fixed order:
    names, dtypes, shapes and bytes; the same for an object and what ``torch.load`` / ``np.load`` give back."""
    h = hashlib.sha256()

    def walk(o, name):
        if isinstance(o, dict):
            for k in sorted(o, key=str):
                walk(o[k], f"{name}/{k}")
        elif isinstance(o, (list, tuple)):
            h.update(f"{name}:{type(o).__name__}[{len(o)}]".encode())
            for i, v in enumerate(o):
                walk(v, f"{name}/{i}")
        elif torch.is_tensor(o):
            t = o.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{name}:{t.dtype}:{tuple(o.shape)}".encode())
            h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
        elif isinstance(o, np.ndarray):
            h.update(f"{name}:{o.dtype.str}:{o.shape}".encode())
            h.update(memoryview(np.ascontiguousarray(o).reshape(-1).view(np.uint8)) if o.size else b"")
        else:
            h.update(f"{name}={o!r}".encode())
    walk(obj, "")
    return h.hexdigest()


def _altered(path, where):
    return CorruptArtefactError(
        f"{path} was altered after it was written: its content does not match the digest stored {where}; "
        f"delete it and recompute it, or copy it again from where it came")


def save_checkpoint(obj, path):
    """torch.save ``obj`` to ``path`` atomically, with its integrity record; a checkpoint of ours (a dict with a
    ``config``) also carries the digest of its content inside it (``DIGEST_KEY``)."""
    if isinstance(obj, dict) and "config" in obj and DIGEST_KEY not in obj:
        obj = {**obj, DIGEST_KEY: content_digest(obj)}
    return _atomic_write(path, lambda f: torch.save(obj, f))


# plain data that older artefacts hold besides tensors: the shipped evaluator records torch.__version__, a str subclass
SAFE_GLOBALS = [torch.torch_version.TorchVersion]


OMITTED = "omitted"   # in a lean copy's step record: {artefact name: SHA-256} of the files it was shipped without
SKELETON_SUFFIX = ".skeleton"   # beside a left-behind checkpoint: its checkpoint_skeleton (config, shapes; no weights)


def omitted_hash(path):
    """The SHA-256 that the record beside ``path`` (``run.json`` of its step folder) holds for it when that step is a
    lean copy shipped without it (``cache.copy_step(lean=True)``, ``tools/copy_steps.py --lean``), else None."""
    record = Path(path).parent / "run.json"
    try:
        rec = json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        return None
    omitted = rec.get(OMITTED) if isinstance(rec, dict) else None
    return omitted.get(Path(path).name) if isinstance(omitted, dict) else None


def missing_file(path, what):
    """The FileNotFoundError for an artefact ``path`` (a ``what``) that is not there; for one a lean copy of its step
    was shipped without, it says so and what to do: delete the step's folder, so the next run computes it anew."""
    path = Path(path)
    lean = (f": its step {path.parent} is a lean copy (tools/copy_steps.py --lean), shipped with its numbers but "
            f"without this file; delete that folder and run again to compute the step anew") if omitted_hash(path) else ""
    return FileNotFoundError(f"{what} {path} does not exist{lean}")


def load_checkpoint(path, map_location="cpu", weights_only=True):
    """torch.load of tensors and plain containers only (``weights_only=True``: a file carrying pickled objects is
    refused unread, because unpickling could run code), after checking the file against its integrity record;
    a missing, truncated, corrupted or foreign file raises an error naming it."""
    if weights_only is not True:
        raise ValueError("load_checkpoint(weights_only=False) is not offered: loading never executes code; save "
                         "tensors, numbers, strings and plain containers only")
    path = Path(path)
    if not path.exists():
        raise missing_file(path, "checkpoint")
    check_integrity(path)
    check_zip(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, or a pickle asking for more than data
        if "weights only load failed" in str(e).lower():
            raise CorruptArtefactError(
                f"{path} holds objects other than tensors and plain containers; it is refused unread, because "
                f"unpickling it could run code. Use a checkpoint saved as a state dict (ours, or the official "
                f"DiT/SiT release)") from None
        raise CorruptArtefactError(
            f"{path} is truncated or corrupted and cannot be loaded ({type(e).__name__}: {e}); "
            f"delete it and recompute it") from e
    if isinstance(obj, dict) and DIGEST_KEY in obj:
        stored = obj.pop(DIGEST_KEY)
        if stored != content_digest(obj):
            raise _altered(path, f"inside it ({DIGEST_KEY})")
    return obj


_SKELETONS = {}  # a file version's key (see checkpoint_skeleton) -> its skeleton
_SKELETON_VALUES = 64  # tensors of at most this many elements keep their values (a stored ``kept`` list as a tensor)


def _to_meta(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.numel() <= _SKELETON_VALUES else torch.empty(obj.shape, dtype=obj.dtype,
                                                                                device="meta")
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_meta(v) for v in obj)
    return obj


def checkpoint_skeleton(path):
    """The checkpoint at ``path`` as :func:`load_checkpoint` returns it (same checks, same errors) with every tensor
    of more than 64 elements a meta tensor of its shape and dtype: what reading a stored config, the keys or the
    shapes needs. Read once per version of the file in a process, so asking a checkpoint its architecture,
    objective or depth many times does not unpickle its weights each time. A version is the file's size, mtime,
    ctime and inode and the digest in its integrity record: any rewrite, rename onto it, copy over it or change of
    its record reads it again (and checks it again). Not for weights."""
    path = Path(path)
    if not path.exists():
        kept = Path(str(path) + SKELETON_SUFFIX)   # a lean copy keeps what this function returns, beside the record
        if kept.is_file() and omitted_hash(path):
            return load_checkpoint(kept)
        raise missing_file(path, "checkpoint")
    st = path.stat()
    record = record_path(path)
    digest = record.read_text()[:64] if record.is_file() else None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest)
    if key not in _SKELETONS:
        _SKELETONS[key] = _to_meta(load_checkpoint(path))
    return copy.deepcopy(_SKELETONS[key])


def print_json(obj, path=""):
    """Print ``obj`` as indented JSON (a benchmark's report) and, when ``path`` is given, write the same text there."""
    text = json.dumps(obj, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
    return obj


def save_json(obj, path):
    return _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=_json_default)), mode="w")


def load_json(path):
    """The JSON at ``path``, checked against its integrity record; damage raises an error naming the file."""
    path = Path(path)
    check_integrity(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtefactError(f"{path} is not valid JSON ({e}); delete it and recompute it") from e


def save_npz(path, embed_digest=True, **arrays):
    """np.savez ``arrays`` to ``path`` atomically, with its integrity record and the digest of the arrays inside it
    (the array ``NPZ_DIGEST``); ``embed_digest=False`` for a file in another tool's exact layout (the ADM
    evaluator's ``arr_0``/``arr_1``), which then relies on its record and the zip's CRC-32s."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    extra = {NPZ_DIGEST: np.array(content_digest(arrays))} if embed_digest else {}
    return _atomic_write(path, lambda f: np.savez(f, **arrays, **extra))


def load_npz(path):
    """The arrays of the ``.npz`` at ``path`` (no pickled objects), checked against its integrity record."""
    path = Path(path)
    if not path.exists():
        raise missing_file(path, "array file")
    check_integrity(path)
    check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise CorruptArtefactError(f"{path} is truncated or corrupted ({type(e).__name__}: {e}); "
                                   f"delete it and recompute it") from e
    if NPZ_DIGEST in arrays and str(arrays.pop(NPZ_DIGEST)) != content_digest(arrays):
        raise _altered(path, f"inside it (the array {NPZ_DIGEST})")
    return arrays


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
