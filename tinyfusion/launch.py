"""Run an entry point (``tinyfusion.cli.*``) under torchrun from a notebook cell, and get its result back.

    from tinyfusion.launch import launch, launch_cmd
    result = launch("tinyfusion.cli.pretrain", nproc=2, profile="cpu", steps=100)
    print(launch_cmd("tinyfusion.cli.pretrain", 8, profile="gpu"))   # the same run, for a terminal

``launch`` writes the config to a temporary JSON file, starts

    python -m torch.distributed.run --standalone --nproc_per_node=N --max-restarts=0 -m ENTRY \
        --config-json CFG --result-json RES

(with ``nproc == 1`` it runs ``python -m ENTRY ...`` directly: same code path in the entry point, since
``dist.init`` starts no process group for one process, and a few seconds less start-up; ``torchrun=True`` with
``TINYFUSION_DIST_FORCE=1`` in ``env`` runs one process under torchrun with a process group), streams the child's
output into the cell as it comes (stderr merged into stdout; in a terminal raw chunks, so tqdm's ``\\r`` updates redraw one
line; in a notebook each progress bar is one output updated in place, so an executed notebook stores its last
state, not every redraw; rank 0 prints alone because entry points use ``dist.print0`` and disable tqdm on
other ranks) and returns the dict that rank 0 wrote to RES. Entry points started here show an error's traceback
(``TINYFUSION_TRACEBACK=1``), which ``LaunchError`` cites.

Failures raise ``LaunchError`` with the failing rank's traceback, torchrun's summary (rank, exit code,
signal) and the last output lines. The child runs in its own session and dies with this process
(:func:`die_with_parent`: a killed notebook kernel leaves no torchrun or worker behind); on failure, timeout or
KeyboardInterrupt the whole tree (torchrun and its workers, which torchrun starts in sessions of their own)
gets SIGTERM, then SIGKILL, so nothing is left behind. Without ``timeout`` a run that hangs waits until it is
interrupted. The child inherits the current directory, so relative paths in the config mean the same as here.
"""
from __future__ import annotations

import codecs
import ctypes
import importlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:
    import psutil
except ImportError:  # optional: /proc is scanned instead
    psutil = None

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # put on the child's PYTHONPATH, whatever the cwd
GRACE_S = 10.0  # how long torchrun may take to exit after reporting a failed rank, before we kill it
KILL_WAIT_S = 5.0  # how long SIGTERM gets before SIGKILL
TAIL_CHARS = 200_000  # output kept for the error message
_TORCHRUN_FAILED = re.compile(r"failed \(exitcode: |closing signal SIG")
_SECONDARY = re.compile(r"Connection closed by peer|Connection reset by peer|remote worker crashing|"
                        r"NCCL communicator was aborted|DistNetworkError")  # a rank that lost a dead peer
_AGENT = re.compile(r"ChildFailedError|SignalException")  # torchrun's own exceptions


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None  # loaded before any fork
DIE_WITH_PARENT = "TINYFUSION_DIE_WITH_PARENT"  # set by tinyfusion.launch for the processes it starts


def die_with_parent(sig=signal.SIGKILL, parent=None):
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a run whose
    launcher was killed (a notebook kernel, torchrun) stops instead of writing on as an orphan. ``parent``: the
    pid the parent must still have (a parent that died before the call means: die now). A no-op off Linux."""
    if _LIBC is None:
        return False
    _LIBC.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if (parent is not None and os.getppid() != parent) or os.getppid() == 1:
        os.kill(os.getpid(), sig)
    return True


class LaunchError(RuntimeError):
    """An entry point run by ``launch`` failed, was killed, timed out or wrote no result.

    ``returncode`` is the launcher's exit status (None when we stopped it); ``output`` the captured tail."""

    def __init__(self, message, returncode=None, output=""):
        super().__init__(message)
        self.returncode = returncode
        self.output = output


class LaunchTimeout(LaunchError):
    """The run did not finish within ``timeout`` seconds; it was stopped."""


def resolve_nproc(nproc=1):
    """The number of processes to start.

    ``"auto"``, 0 or None: every GPU, or on a CPU-only machine ``min(2, cpu_count)``. With CUDA, asking for more
    processes than GPUs warns and uses the GPUs there are. On CPU any count >= 1 is allowed (gloo)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc in (None, 0, "auto"):
        return gpus or min(2, os.cpu_count() or 1)
    try:
        n = int(nproc)
        if float(nproc) != n:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"nproc={nproc!r}: use a positive whole number of processes, or 'auto'") from None
    if n < 1:
        raise ValueError(f"nproc={nproc!r}: use a positive number of processes, or 'auto'")
    if gpus and n > gpus:
        warnings.warn(f"asked for {n} processes but only {gpus} GPU{'s' if gpus > 1 else ''} "
                      f"{'are' if gpus > 1 else 'is'} present; using {gpus}", stacklevel=3)
        return gpus
    return n


def _flags(key, v):
    """A config value as the flags ``tinyfusion.cli.common.parser_for`` parses back: a switch for a bool
    (``--progress`` / ``--no-progress``), JSON for lists, dicts and None, else the value as text."""
    flag = key.replace("_", "-")
    if isinstance(v, bool):
        return ["--" + flag if v else "--no-" + flag]
    return ["--" + flag, json.dumps(v) if isinstance(v, (list, tuple, dict)) or v is None else str(v)]


def launch_cmd(entry_point, nproc=1, **config):
    """The shell command that runs ``entry_point`` with ``config`` as flags, for a terminal or a README."""
    nproc = resolve_nproc(nproc) if nproc in (None, 0, "auto") else int(nproc)
    head = (["python", "-m", entry_point] if nproc == 1 else
            ["torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m", entry_point])
    flags = [x for k, v in config.items() for x in _flags(k, v)]
    return " ".join(shlex.quote(x) for x in head + flags)


def _check_entry_point(entry_point, config):
    """Fail before spending seconds on start-up: the module must import and know every config key."""
    try:
        module = importlib.import_module(entry_point)
    except ModuleNotFoundError as e:
        if e.name is None or not (entry_point + ".").startswith(e.name + "."):
            raise  # the module exists but imports something missing: show that
        raise ValueError(f"entry point {entry_point!r} not found ({e}); use a module name such as "
                         f"'tinyfusion.cli.pretrain'") from e
    defaults = getattr(module, "DEFAULTS", None)
    unknown = sorted(set(config) - set(defaults)) if isinstance(defaults, dict) else []
    if unknown:
        raise ValueError(f"{entry_point} has no config key(s) {unknown}; it knows {sorted(defaults)}")


def _command(entry_point, nproc, use_torchrun, cfg_path, res_path):
    tail = ["-m", entry_point, "--config-json", str(cfg_path), "--result-json", str(res_path)]
    if not use_torchrun:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "--max-restarts=0", *tail]


def _child_env(nproc, env):
    out = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
    out.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    out["PYTHONUNBUFFERED"] = "1"
    out.setdefault("TINYFUSION_TRACEBACK", "1")  # an entry point's error shows its traceback, which LaunchError cites
    out["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + ([out["PYTHONPATH"]] if out.get("PYTHONPATH") else []))
    return out


# ---- the process tree ----------------------------------------------------------------------------------

def _identity(pid):
    """Start time of a running ``pid`` (tells it from a later process that reuses the number); None if gone."""
    if psutil is not None:
        try:
            p = psutil.Process(pid)
            return None if p.status() == psutil.STATUS_ZOMBIE else p.create_time()
        except psutil.Error:
            return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def _children(pid):
    """PIDs of every process below ``pid``."""
    if psutil is not None:
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    kids = {}
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else []:  # Linux; elsewhere install psutil
        if d.name.isdigit():
            try:
                kids.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        nxt = kids.get(todo.pop(), [])
        out += nxt
        todo += nxt
    return out


class _Tree:
    """The launcher and every process seen below it, remembered so that re-parented orphans are stopped too
    (torchrun starts each worker in a session of its own, so killing our process group is not enough)."""

    def __init__(self, proc):
        self.proc, self.seen = proc, {}

    def scan(self):
        if self.proc.poll() is None:
            for pid in _children(self.proc.pid):
                if self.seen.get(pid) is None:  # new, or caught mid-creation when it could not be read: look again
                    self.seen[pid] = _identity(pid)

    def alive(self):
        return [pid for pid, ident in self.seen.items() if ident is not None and _identity(pid) == ident]

    def stop(self):
        """SIGTERM everything, SIGKILL what is left after a few seconds; return once all of it has exited."""
        self.scan()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for send, pid in [(os.killpg, self.proc.pid)] + [(os.kill, p) for p in self.alive()]:
                try:
                    send(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            end = time.monotonic() + KILL_WAIT_S
            while time.monotonic() < end:
                self.scan()  # torchrun may still be starting a worker
                if self.proc.poll() is not None and not self.alive():
                    return
                time.sleep(0.05)


# ---- reading the output for the error message ----------------------------------------------------------

def _lines(text):
    """Output lines, keeping only the last state of a line that tqdm redrew with ``\\r``."""
    return [([p for p in line.split("\r") if p.strip()] or [""])[-1] for line in text.split("\n")]


# a traceback may start right after a progress bar on the same line; torch's excepthook prefixes "[rankN]: "
_TB_START = re.compile(r"(\[rank(\d+)\]: )?Traceback \(most recent call last\):")


def _tracebacks(lines):
    """``[(rank or None, text, exception line, line indices)]`` for every traceback in ``lines``."""
    found = []
    for i, line in enumerate(lines):
        m = _TB_START.search(line)
        if not m:
            continue
        prefix, rank = m.group(1) or "", m.group(2)
        block, used = [line[m.start() + len(prefix):]], [i]
        for j in range(i + 1, min(len(lines), i + 400)):
            if prefix and not lines[j].startswith(prefix):
                continue  # another rank's line interleaved with this traceback
            body = lines[j][len(prefix):]
            block.append(body)
            used.append(j)
            if body and not body[0].isspace():
                break  # the exception line ends the traceback
        found.append((None if rank is None else int(rank), "\n".join(block), block[-1], used))
    return found


def _torchrun_summary(lines):
    """torchrun's '<entry> FAILED ... Root Cause ...' block, with its line indices, and the exit code of each
    rank it lists as ``[(rank, exitcode, signal name or "", is_root_cause)]``."""
    for i, line in enumerate(lines):
        if line.rstrip().endswith(" FAILED") and i > 0 and set(lines[i - 1].strip()) == {"="}:
            end = next((j for j in range(i + 1, len(lines)) if set(lines[j].strip()) == {"="}), len(lines) - 1)
            exits, rank, root = [], None, False
            for ln in lines[i:end]:
                root = root or ln.startswith("Root Cause")
                if m := re.match(r"\s*rank\s*:\s*(\d+)", ln):
                    rank = int(m.group(1))
                elif (m := re.match(r"\s*exitcode\s*:\s*(-?\d+)", ln)) and rank is not None:
                    sig = re.search(r"\((SIG\w+)\)", ln)
                    exits.append((rank, int(m.group(1)), sig.group(1) if sig else "", root))
            return "\n".join(lines[i - 1:end + 1]), set(range(i - 1, end + 1)), exits
    return "", set(), []


def _failure_message(header, output, n_last=15):
    """``header``, then what explains the failure: the failing rank's exception and traceback, the exit code
    of every rank (torchrun's summary) and the last output lines that are neither."""
    lines = _lines(output)
    tbs = _tracebacks(lines)
    summary, used, exits = _torchrun_summary(lines)
    for _, _, _, idx in tbs:
        used |= set(idx)
    # under torchrun a rank's traceback comes with a "[rankN]: " prefix (torch's excepthook, and cli_main's own
    # report); labelled copies beat unlabelled ones, whose lines other ranks' progress bars may have broken into
    labelled = any(rank is not None for rank, _, _, _ in tbs)
    keep, seen = [], set()
    for rank, text, exc, _ in tbs:
        if (labelled and rank is None) or (rank, exc) in seen or _AGENT.search(exc):
            continue  # duplicates, and torchrun's own traceback
        seen.add((rank, exc))
        keep.append((rank, text, exc))
    keep.sort(key=lambda t: bool(_SECONDARY.search(t[2])))  # errors that only report a dead peer go last
    parts = [header]
    if keep:
        parts.append(("rank %d: " % keep[0][0] if keep[0][0] is not None else "") + keep[0][2])
    if exits:
        parts.append("exit codes: " + ", ".join(
            f"rank {r}: {code}" + (f" ({sig})" if sig else "") + (" <- first failure" if root else "")
            for r, code, sig, root in sorted(exits, key=lambda e: not e[3])))
    for rank, text, _ in keep[:4]:
        parts.append(f"--- traceback{' of rank %d' % rank if rank is not None else ''} ---\n{text}")
    if summary:
        parts.append("--- torchrun's summary ---\n" + summary)
    rest = [ln for i, ln in enumerate(lines) if i not in used and ln.strip()]
    if rest:
        parts.append(f"--- last {min(n_last, len(rest))} output lines ---\n" + "\n".join(rest[-n_last:]))
    return "\n".join(parts)


# ---- echoing the output ---------------------------------------------------------------------------------

class _Echo:
    """Echo a child's output as it comes. ``show=None``: raw to ``sys.stdout`` (a terminal redraws progress bars on
    ``\r``). With ``show`` (in a Jupyter kernel, :func:`_kernel_show`): finished lines go to ``sys.stdout``, and a
    line being redrawn (a progress bar) is shown by ``show(text)``, which returns a function that replaces what it
    showed; so the saved notebook holds each bar once, in its last state, not one output per redraw (papermill
    and nbclient keep every stream message as its own output)."""

    def __init__(self, show=None):
        self.show, self.line, self.replace = show, "", None

    def write(self, text):
        if self.show is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        *done, self.line = (self.line + text).split("\n")
        for line in done:
            self._put(_lines(line)[0], final=True)
        if self.line:
            self._put(_lines(self.line)[0], final=False)

    def _put(self, text, final):
        if self.replace is None and final:
            sys.stdout.write(text + "\n")
            return
        if self.replace is None:
            sys.stdout.flush()  # what came before stays above the bar
            self.replace = self.show(text)
        else:
            self.replace(text)
        if final:
            self.replace = None

    def close(self):
        if self.show is not None and self.line:
            self._put(_lines(self.line)[0], final=True)
        self.line = ""
        sys.stdout.flush()


def _kernel_show():
    """In a Jupyter kernel: a ``show`` for :class:`_Echo` (an IPython display, updated in place); else None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None

    def show(text):
        handle = display({"text/plain": text}, raw=True, display_id=True)
        return lambda new: handle.update({"text/plain": new}, raw=True)
    return show


# ---- launch --------------------------------------------------------------------------------------------

def _watch(proc, what, timeout, stream, torchrun):
    """Echo ``proc``'s output until it and everything it started are done; return the output's tail.

    Stops the whole tree on timeout (raising ``LaunchTimeout``), on KeyboardInterrupt, when torchrun has
    reported a failed rank but not exited ``GRACE_S`` later, or when an orphan outlives the launcher."""
    tree = _Tree(proc)
    echo = _Echo(_kernel_show()) if stream else None
    out, decode = "", codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    start = last_scan = time.monotonic()
    failed_at = exited_at = None
    stop = True  # unless the loop ends with nothing left running
    try:
        fd = proc.stdout.fileno()
        while True:
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # EOF: every process holding the pipe has exited
                    try:
                        proc.wait(timeout=GRACE_S)  # the exit status can come a moment after EOF
                    except subprocess.TimeoutExpired:
                        pass
                    break
                text = decode(chunk)
                out = (out + text)[-TAIL_CHARS:]
                if echo is not None:
                    echo.write(text)
                if failed_at is None and torchrun and _TORCHRUN_FAILED.search(out[-len(text) - 200:]):
                    failed_at = time.monotonic()
            now = time.monotonic()
            if now - last_scan > 0.5:
                tree.scan()
                last_scan = now
            if timeout is not None and now - start > timeout:
                raise LaunchTimeout(_failure_message(f"{what} did not finish within {timeout} s; stopped it", out),
                                    None, out)
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > GRACE_S:
                break  # the launcher is gone but an orphan still holds the pipe
            if failed_at is not None and exited_at is None and now - failed_at > GRACE_S:
                break  # a rank failed and torchrun has not wound down
        stop = proc.poll() is None or bool(tree.alive())
    finally:
        if echo is not None:
            echo.close()
        if stop:
            tree.stop()
        proc.wait()
        proc.stdout.close()
    return out


def launch(entry_point, nproc=1, timeout=None, env=None, *, stream=True, torchrun=None, **config):
    """Run ``entry_point`` (``tinyfusion.cli.NAME``) on ``nproc`` processes with ``config``; return its result.

    ``nproc``: see ``resolve_nproc`` ("auto"/0 = every GPU, or 2 on CPU). ``timeout``: seconds before the run
    is stopped and ``LaunchTimeout`` raised. ``env``: extra environment variables for the child
    (``OMP_NUM_THREADS`` defaults to cpu_count // nproc). ``stream``: echo the child's output to
    ``sys.stdout`` as it comes. ``torchrun``: force (True) or avoid (False) torchrun; by default it is used
    when ``nproc > 1``. Raises ``LaunchError`` when a rank fails or the entry point writes no result."""
    nproc = resolve_nproc(nproc)
    use_torchrun = nproc > 1 if torchrun is None else bool(torchrun)
    if nproc > 1 and not use_torchrun:
        raise ValueError(f"nproc={nproc} needs torchrun; leave torchrun=None or True")
    _check_entry_point(entry_point, config)
    what = (f"{entry_point} (torchrun, {nproc} process{'es' if nproc > 1 else ''})" if use_torchrun else
            f"{entry_point} (python -m, 1 process)")
    tmp = Path(tempfile.mkdtemp(prefix="tinyfusion-launch-"))
    try:
        cfg_path, res_path = tmp / "config.json", tmp / "result.json"
        cfg_path.write_text(json.dumps(config, default=str))
        me = os.getpid()
        proc = subprocess.Popen(_command(entry_point, nproc, use_torchrun, cfg_path, res_path),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**_child_env(nproc, env), DIE_WITH_PARENT: "1"}, start_new_session=True,
                                # if this process dies (a killed kernel), torchrun gets SIGTERM and stops its
                                # workers, which also die with torchrun (dist.init): nothing keeps running
                                preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent=me))
        out = _watch(proc, what, timeout, stream, use_torchrun)
        rc = proc.returncode
        if rc != 0:
            how = f"exit code {rc}" if rc > 0 else f"signal {-rc}" + (
                f" ({signal.Signals(-rc).name})" if -rc in signal.valid_signals() else "")
            raise LaunchError(_failure_message(f"{what} failed with {how}", out), rc, out)
        if not res_path.exists():
            raise LaunchError(_failure_message(
                f"{what} exited with status 0 but wrote no result JSON: an entry point must end in "
                f"cli_main(run, ...) (see tinyfusion/cli/pretrain.py) and its rank 0 must return from run()", out),
                rc, out)
        return json.loads(res_path.read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
