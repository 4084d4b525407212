"""Run every numbered notebook with papermill for one profile (what ``make reproduce`` calls).

    python -m tinyfusion.cli.reproduce --profile cpu [--only 01,06] [--out results]
    make reproduce PROFILE=cpu          # every notebook
    make notebook NB=07 PROFILE=smoke   # one notebook (--only 07)
    make scale RUNGS=cpu,cpu-w128       # the scale ladder on some of its rungs (--study scale --rungs ...)

Executed copies go to ``results/<profile>/notebooks/``, figures and tables to ``results/<profile>/figures`` and
``tables``, the wall time of each notebook to ``results/<profile>/timings.json``; notebook 09 writes
``summary.md``. The run stops at the first failing notebook, names it and the failing cell, keeps the partly
executed copy for inspection under ``results/<profile>/partial/`` and exits non-zero. A notebook's executed copy,
figures, tables, verdicts and "latest" time replace the old ones only when it finished: it is executed into
``partial/`` and moved into ``notebooks/`` at the end, and the outputs it wrote are rolled back when it failed or
the run was interrupted (Ctrl-C, SIGTERM). Finished steps are cached, so a rerun takes minutes.

``--rungs`` runs notebook 12 on part of its ladder (today's teacher first), e.g. as soon as one rung's teacher is
shipped while another still trains: its cached steps count on the scale clock as an attempt that did not finish
the study, its executed copy stays in ``partial/`` (``12_scale__cpu+cpu-w128.ipynb``) and the notebook's "latest"
time is left alone; the tables, figures and ``summary.md`` section it wrote are the part-ladder's (so marked in
``summary.md``) until the whole ladder runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tinyfusion.cli.common import add_switch, make_parser
from tinyfusion.profiles import PROFILES, ROOT

NOTEBOOKS = ROOT / "notebooks"


def run_order(path):
    """Sort key of the numbered notebooks: by number, except that the summary, which reads every verdict, runs last."""
    return ("summary" in path.name, path.name)


# Studies with their own make target and from-empty clock; "main" (make reproduce) is every other notebook.
STUDIES = {"robustness": ("11",),   # notebook 11: does the negative verdict survive? (make robustness)
           "scale": ("12",),        # notebook 12: the scale ladder of teachers (make scale)
           "mar": ("13",)}          # notebook 13: TinyMAR, paper Table 2's MAR row (make mar)


def notebooks(only=None, study="main"):
    """The numbered notebooks of ``study`` in run order: "main" is every notebook no other study in ``STUDIES`` claims,
    the ones ``make reproduce`` runs; ``only`` (number prefixes such as ["00", "06"]) picks by number from every
    notebook, whichever study holds it."""
    if study != "main" and study not in STUDIES:
        raise SystemExit(f"unknown study {study!r}; choose one of: main, {', '.join(STUDIES)}")
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"), key=run_order)
    if only:
        return [p for p in found if p.name[:2] in only]
    if study == "main":
        other = {n for nums in STUDIES.values() for n in nums}
        return [p for p in found if p.name[:2] not in other]
    return [p for p in found if p.name[:2] in STUDIES[study]]


def reproduce(profile="cpu", only=None, results_root=None, kernel="python3", progress=True, study="main", rungs=None):
    """Execute the notebooks of ``study`` ("main": ``make reproduce``; "robustness": ``make robustness``; "scale":
    ``make scale``; "mar": ``make mar``); ``rungs`` (scale only): part of the profile's ladder, see the module
    docstring. Returns {notebook: seconds}. Raises ``SystemExit`` with a message on failure."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    rungs = part_ladder(study, profile, rungs)
    saved_env = {k: os.environ.get(k) for k in ("TINYFUSION_RESULTS", "TINYFUSION_CACHE_LOG", ATTEMPT_ENV,
                                                 "TINYFUSION_TEXT_BARS")}   # set for the kernels
    os.environ["TINYFUSION_TEXT_BARS"] = "1"   # text bars: a saved copy shows where each ended (tinyfusion.progress)
    if results_root:
        os.environ["TINYFUSION_RESULTS"] = str(Path(results_root).resolve())
    try:
        return _run_all(profile, only, kernel, progress, pm, PapermillExecutionError, study, rungs)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compact_streams(path, paths=None):
    """Rewrite an executed notebook's stream outputs as a terminal would show them.

    Progress bars (tqdm without a widget) arrive as thousands of stream outputs, each redrawing one line after a
    carriage return; this merges consecutive outputs of one stream and keeps each line's text after its last
    ``\\r``, so the committed copy holds the final state of every bar instead of megabytes of redraws. ``paths``:
    {"input_path": ..., "output_path": ...} to record in papermill's metadata instead of the absolute paths of the
    machine that ran it (the repository-relative notebook and its place under the results folder).
    """
    import nbformat
    nb = nbformat.read(str(path), as_version=4)
    if paths and "papermill" in nb.metadata:
        nb.metadata["papermill"].update(paths)
    for cell in nb.cells:
        merged = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream" \
                    and merged[-1]["name"] == o["name"]:
                merged[-1]["text"] += o["text"]
            else:
                merged.append(o)
        for o in merged:
            if o.get("output_type") == "stream":
                o["text"] = terminal_text(o["text"])
        if "outputs" in cell:
            cell.outputs = merged
    nbformat.write(nb, str(path))


def terminal_text(text):
    """What a terminal would show after printing ``text``: a carriage return rewrites its line from the start, the
    cursor-up escape that nested tqdm bars use (``ESC[A``) moves to the line above, and a line a closed bar cleared
    (blanks only) is dropped; an empty line stays, and so does the end after the last newline."""
    import re
    rows, r, col = [""], 0, 0
    for token in re.split(r"(\r|\n|\x1b\[A)", text):
        if token == "\n":
            r, col = r + 1, 0
            rows += [""] * (r + 1 - len(rows))
        elif token == "\r":
            col = 0
        elif token == "\x1b[A":
            r = max(0, r - 1)
        elif token:
            rows[r] = rows[r][:col].ljust(col) + token + rows[r][col + len(token):]
            col += len(token)
    kept = [row.rstrip() for row in rows[:-1] if row == "" or row.strip()]
    return "\n".join([*kept, rows[-1].rstrip()])   # the last row: where the text ends (after its last newline)


OUTPUTS = ("figures", "tables", "verdicts", "summary.md")  # what a notebook writes besides its executed copy


class Snapshot:
    """A copy of a results root's notebook outputs (:data:`OUTPUTS`), to put back when a notebook did not finish."""

    def __init__(self, root):
        self.root, self.dir = Path(root), Path(tempfile.mkdtemp(prefix="tinyfusion-outputs-"))
        for name in OUTPUTS:
            src = self.root / name
            if src.is_dir():
                shutil.copytree(src, self.dir / name)
            elif src.is_file():
                shutil.copy2(src, self.dir / name)

    def restore(self):
        """Put every output back as it was (files the notebook added are removed)."""
        for name in OUTPUTS:
            live, kept = self.root / name, self.dir / name
            if live.is_dir():
                shutil.rmtree(live)
            elif live.exists():
                live.unlink()
            if kept.is_dir():
                shutil.copytree(kept, live)
            elif kept.is_file():
                shutil.copy2(kept, live)

    def drop(self):
        shutil.rmtree(self.dir, ignore_errors=True)


CACHE_KINDS = ("random_study", "mask_study", "baselines", "prune_learn", "pruned", "finetune", "scores")
CLOCK = "reproduce_clock.json"
ATTEMPT_ENV = "TINYFUSION_ATTEMPT"   # the start stamp of the clock attempt that runs a notebook (summary.run_clock)


def clock_name(study="main"):
    """The clock file of a study: ``reproduce_clock.json`` for ``make reproduce``, ``<study>_clock.json`` else."""
    return CLOCK if study == "main" else f"{study}_clock.json"


class Clock:
    """The wall time of a reproduction that survives a kill: a thread rewrites ``results/<profile>/reproduce_clock.json``
    every ``every`` seconds with this attempt's elapsed time, so a run cut off (a machine's session ending, SIGKILL)
    and resumed later still adds up. Each attempt records whether the cache was empty when it started
    (``from_empty``) and whether it finished every notebook; :func:`from_empty_seconds` sums the attempts of the last
    reproduction that started from an empty cache up to the one that finished it.

    The elapsed time is the sum of the intervals between heartbeats, each counted up to ``max(3 * every, 5)``
    seconds: a run paused with SIGSTOP (to lend the cores to a test run) does not count the pause; the time left out
    is recorded as ``paused_s``. Stop the whole process group (``kill -STOP -- -<pgid>``): a kernel stopped alone
    leaves this heartbeat running. ``timings.json``'s per-notebook seconds are plain wall time, pauses included."""

    def __init__(self, root, profile, every=30.0, name=CLOCK, checked=None):
        import threading
        from tinyfusion.io import load_json
        self.path = Path(root) / name
        self.clock = load_json(self.path) if self.path.exists() else {"attempts": []}
        checked = [Path(r) for r in (checked or [root])]   # the caches whose emptiness makes a run "from empty"
        empty = not any((r / k).is_dir() and any((r / k).iterdir()) for r in checked for k in CACHE_KINDS)
        self.attempt = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": profile, "from_empty": empty,
                        "checked": [r.name for r in checked],
                        "elapsed_s": 0.0, "paused_s": 0.0, "finished": False, "notebooks_done": []}
        self.clock["attempts"].append(self.attempt)
        self._last, self.every, self._stop, self._lock = time.time(), every, threading.Event(), threading.Lock()
        self._cap, self._elapsed, self._paused = max(3 * every, 5.0), 0.0, 0.0
        self.save()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def save(self):
        from tinyfusion.io import save_json
        with self._lock:  # the heartbeat thread and done()/stop() on the main thread
            now = time.time()
            gap, self._last = now - self._last, now
            self._elapsed += min(gap, self._cap)
            self._paused += max(0.0, gap - self._cap)
            self.attempt["elapsed_s"], self.attempt["paused_s"] = round(self._elapsed, 1), round(self._paused, 1)
            save_json(self.clock, self.path)

    def _beat(self):
        while not self._stop.wait(self.every):
            self.save()

    def done(self, notebook):
        self.attempt["notebooks_done"].append(notebook)
        self.save()

    def stop(self, finished):
        self._stop.set()
        self._thread.join()
        self.attempt["finished"] = bool(finished)
        self.save()


def checked_roots(study, profile, root):
    """The caches whose emptiness makes a ``study``'s run "from empty" on its clock: the profile's (``root``), or for
    the scale ladder its new rungs' (``results/cpu-w128``, ``results/cpu-t49``): today's rung there reuses notebooks
    01-03's runs in the profile's cache, which ``make reproduce`` fills, so that cache is never empty when it runs."""
    if study == "scale":
        from tinyfusion.profiles import SCALE_LADDER
        rungs = SCALE_LADDER.get(profile, (profile,))[1:]
        if rungs:
            return [Path(root).parent / r for r in rungs]
    return [Path(root)]


def part_ladder(study, profile, rungs):
    """``rungs`` ("cpu,cpu-w128" or a list) checked against the profile's scale ladder: a list starting with today's
    teacher, or None for the whole ladder (``rungs`` None, or every rung of it, in any order). Refused, naming the
    ladder: rungs for another study, a name not on the ladder, today's teacher not first."""
    if rungs is None:
        return None
    from tinyfusion.profiles import SCALE_LADDER
    given = [r.strip() for r in rungs.split(",")] if isinstance(rungs, str) else list(rungs)
    ladder = SCALE_LADDER.get(profile)
    if study != "scale" or not ladder:
        raise SystemExit(f"--rungs {','.join(given)}: rungs are the scale ladder's (--study scale, make scale) on a "
                         f"profile with a ladder ({', '.join(SCALE_LADDER)}), not the {study} study on {profile}")
    if len(given) < 2 or given[0] != ladder[0] or any(r not in ladder for r in given) or len(set(given)) < len(given):
        raise SystemExit(f"--rungs {','.join(given)}: give rungs of the {profile} ladder ({','.join(ladder)}), each "
                         f"once, today's teacher {ladder[0]!r} first and at least one rung after it, e.g. --rungs "
                         f"{ladder[0]},{ladder[-1]}")
    return None if set(given) == set(ladder) else given


def from_empty_seconds(clock):
    """Seconds of the last reproduction that started from an empty cache and finished, summed over its attempts
    (a killed attempt counts up to its last heartbeat), and the attempts counted; (None, 0) when there is none."""
    attempts = clock.get("attempts", [])
    for end in range(len(attempts) - 1, -1, -1):
        if not attempts[end].get("finished"):
            continue
        start = end
        while start > 0 and not attempts[start].get("from_empty") and not attempts[start - 1].get("finished"):
            start -= 1
        if attempts[start].get("from_empty"):
            return round(sum(a.get("elapsed_s", 0.0) for a in attempts[start:end + 1]), 1), end - start + 1
    return None, 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _failing_cell(path):
    """First line of the cell that raised in an executed notebook (names the cell whatever papermill inserted)."""
    try:
        import nbformat
        for cell in nbformat.read(str(path), as_version=4).cells:
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                lines = cell.source.strip().splitlines()
                return lines[0][:100] if lines else ""
    except Exception:
        pass
    return ""


def _run_all(profile, only, kernel, progress, pm, PapermillExecutionError, study="main", rungs=None):
    from tinyfusion.io import load_json, save_json
    root = Path(os.environ.get("TINYFUSION_RESULTS", ROOT / "results")) / profile
    out_dir, partial_dir = root / "notebooks", root / "partial"
    out_dir.mkdir(parents=True, exist_ok=True)
    partial_dir.mkdir(parents=True, exist_ok=True)
    timings_path = root / "timings.json"
    timings = load_json(timings_path) if timings_path.exists() else {}
    runs = timings.setdefault("runs", [])
    this_run = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": profile, "notebooks": {}}
    runs.append(this_run)
    total0 = time.time()
    todo = notebooks(only, study)
    if not todo:
        raise SystemExit(f"no notebooks of the {study} study matched {only!r} in {NOTEBOOKS}")
    clock = Clock(root, profile, name=clock_name(study), checked=checked_roots(study, profile, root))
    os.environ[ATTEMPT_ENV] = clock.attempt["started"]   # the kernels know which attempt runs them
    if rungs:
        this_run["rungs"] = clock.attempt["rungs"] = rungs
    try:
        _run_notebooks(todo, profile, kernel, progress, pm, PapermillExecutionError, root, out_dir, partial_dir,
                       timings, timings_path, this_run, clock, rungs)
    finally:
        clock.stop(finished=only is None and not rungs and len(this_run["notebooks"]) == len(todo)
                   and not any(v.get("failed") for v in this_run["notebooks"].values()))
    this_run["total_seconds"] = round(time.time() - total0, 1)
    save_json(timings, timings_path)
    print(f"[reproduce] all {len(todo)} notebooks done in {this_run['total_seconds'] / 60:.1f} min; "
          f"results in {root}", flush=True)
    return this_run["notebooks"]


RUNNING = {"notebook": None, "root": None}   # where a run is, for the one-line message of an interrupt


def _kernel_manager():
    """A kernel manager over IPC (unix sockets in a private temporary folder) instead of TCP on localhost: the
    notebooks' kernel then has nothing to warn about ("Kernel is running over TCP without encryption")."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"
            self.ip = str(Path(_ipc_dir()) / "kernel")

        async def start_kernel(self, **kw):
            # the kernel's own log (not the cells' outputs, which the notebook keeps) goes to a file, so an interrupt
            # shows one line, not the kernel's traceback of the cell it stopped
            folder = Path(RUNNING["root"]) / "partial" if RUNNING["root"] else Path(_ipc_dir())
            folder.mkdir(parents=True, exist_ok=True)
            kw.setdefault("stderr", open(folder / "kernel.log", "a"))
            return await super().start_kernel(**kw)

    return IPCKernelManager


_IPC = []


def _ipc_dir():
    """One private temporary folder per run for the kernels' sockets, removed when the run ends."""
    if not _IPC:
        import atexit
        _IPC.append(tempfile.mkdtemp(prefix="tinyfusion-kernel-"))
        atexit.register(shutil.rmtree, _IPC[0], True)
    return _IPC[0]


def _run_notebooks(todo, profile, kernel, progress, pm, PapermillExecutionError, root, out_dir, partial_dir, timings,
                   timings_path, this_run, clock, rungs=None):
    from tinyfusion import cache
    from tinyfusion.io import load_json, save_json
    RUNNING["root"] = root
    shipped = ROOT / "results" / profile / "timings.json"   # the repository's: times to go by in a fresh results root
    try:  # only an estimate: an unreadable file leaves it out, it never stops the run
        own = shipped.resolve() == Path(timings_path).resolve()
        fallback = notebook_times(load_json(shipped)) if shipped.exists() and not own else {}
    except Exception:
        fallback = {}
    started = time.time()
    for i, nb in enumerate(todo):
        RUNNING["notebook"] = nb.name
        out, partial = out_dir / nb.name, partial_dir / nb.name
        if rungs:   # part of the ladder: the executed copy is not the notebook's result
            out = partial_dir / f"{nb.stem}__{'+'.join(rungs)}.ipynb"
        times = notebook_times(timings)
        borrowed = any(n.name not in times and n.name in fallback for n in todo[i:])
        print(progress_line(i, todo, time.time() - started, {**fallback, **times}, profile,
                            borrowed=f"results/{profile}/timings.json" if borrowed else None), flush=True)
        t0 = time.time()
        snapshot = Snapshot(root)
        steps_log = partial_dir / f".{nb.stem}.steps"   # the kernel's cached steps append "reused"/"computed" here
        steps_log.unlink(missing_ok=True)
        os.environ[cache.LOG_ENV] = str(steps_log)
        try:
            params = {"profile": profile, **({"rungs": ",".join(rungs)} if rungs else {})}
            pm.execute_notebook(str(nb), str(partial), parameters=params, kernel_name=kernel,
                                cwd=str(NOTEBOOKS), progress_bar=progress, log_output=False,
                                kernel_manager_class=_kernel_manager())
        except BaseException as e:  # failed, or interrupted: the previous outputs stay the current ones
            snapshot.restore()
            this_run["notebooks"][nb.name] = {"seconds": round(time.time() - t0, 1), "failed": True}
            save_json(timings, timings_path)
            try:  # best effort: a copy cut off mid-write may not even be JSON
                compact_streams(partial)
            except Exception:
                pass
            if isinstance(e, PapermillExecutionError):
                raise SystemExit(f"[reproduce] {nb.name} failed in cell {e.cell_index} of the executed copy "
                                 f"(execution count {e.exec_count}; the cell starts {_failing_cell(partial)!r}): "
                                 f"{e.ename}: {e.evalue}\nThe partly executed notebook is kept at {partial}; "
                                 f"{out} and the figures and tables are those of the last finished run") from None
            if isinstance(e, Exception):
                raise SystemExit(f"[reproduce] {nb.name} could not run: {type(e).__name__}: {e}") from None
            raise
        finally:
            snapshot.drop()
        dt = round(time.time() - t0, 1)
        compact_streams(partial, {"input_path": f"notebooks/{nb.name}",
                                  "output_path": f"{out.relative_to(root.parent)} (under the results folder)"})
        os.replace(partial, out)
        this_run["notebooks"][nb.name] = {"seconds": dt}
        if not rungs:
            timings["latest"] = {**timings.get("latest", {}), nb.name: dt}
        save_json(timings, timings_path)
        clock.done(nb.name)
        steps = cache.count_steps(steps_log)
        steps_log.unlink(missing_ok=True)
        print(f"[reproduce] {nb.name} done in {dt:.0f} s ({steps['reused']} cached steps reused, "
              f"{steps['computed']} computed)", flush=True)


def _minutes(seconds):
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def notebook_times(timings):
    """{notebook: (latest, slowest)} from a ``timings.json``: the seconds of the last run that finished each notebook,
    and of its slowest finished run. A run that reused cached steps takes minutes where one from an empty cache
    took hours, so the last run alone can promise far too little. A run on part of the scale ladder (``rungs``) ran
    another workload than the notebook's whole run and is left out."""
    slowest = {}
    for run in timings.get("runs", []):
        if run.get("rungs"):
            continue
        for name, r in run.get("notebooks", {}).items():
            if not r.get("failed"):
                slowest[name] = max(slowest.get(name, 0.0), float(r["seconds"]))
    return {n: (float(t), max(float(t), slowest.get(n, 0.0))) for n, t in timings.get("latest", {}).items()}


def progress_line(i, todo, elapsed, times, profile, borrowed=None):
    """The line printed as notebook ``i`` of ``todo`` starts: its number of the total, the time so far and an
    estimate of what is left from ``times`` ({notebook: seconds, or (latest, slowest) as :func:`notebook_times`};
    "unknown" when a notebook left has no time there): "about" the last finished run's times when the slowest
    finished runs took about as long, else the range between the two. ``borrowed``: the file some times came from
    when this results folder had none (the repository's ``timings.json``), said in the line."""
    left = [times.get(nb.name) for nb in todo[i:]]
    if any(v is None for v in left):
        eta = "unknown (no finished run to go by)"
    else:
        pairs = [v if isinstance(v, (tuple, list)) else (v, v) for v in left]
        lo, hi = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        eta = (f"about {_minutes(lo)} (the last finished run's times)" if hi <= 1.25 * lo + 60 else
               f"{_minutes(lo)} to {_minutes(hi)} (the last finished run's times, which may have reused cached "
               f"steps, to the slowest finished run's)")
        if borrowed:
            eta += f"; times of notebooks never finished here from {borrowed}"
    return (f"[reproduce] notebook {i + 1} of {len(todo)}: {todo[i].name} (profile={profile}); "
            f"{_minutes(elapsed)} elapsed, left: {eta}")


def _numbers(text):
    """``--only``'s value: notebook numbers such as "7" or "00,06" as two-digit prefixes."""
    only = [s.strip().zfill(2) for s in text.split(",") if s.strip()]
    if not all(s.isdigit() and len(s) == 2 for s in only):
        raise ValueError(text)
    return only


_numbers.__name__ = "notebook number list"  # argparse's error: "invalid notebook number list value: 'x'"


def parser():
    p = make_parser(__spec__.name, __doc__)
    p.add_argument("--profile", default=os.environ.get("TINYFUSION_PROFILE", "cpu"), choices=tuple(PROFILES),
                   help="profile every notebook runs with (default: $TINYFUSION_PROFILE, else cpu)")
    p.add_argument("--only", type=_numbers, default=[], metavar="NN[,NN...]",
                   help="run only these notebooks, by number, e.g. 07 or 00,06 (default: all, the summary last)")
    p.add_argument("--study", default="main", choices=("main", *STUDIES),
                   help="which notebooks: main (make reproduce: all but the other studies'), robustness (notebook "
                        "11, make robustness), scale (notebook 12, make scale) or mar (notebook 13, make mar); each "
                        "has its own from-empty clock")
    p.add_argument("--rungs", default=None, metavar="RUNG[,RUNG...]",
                   help="scale study only: run notebook 12 on these rungs of the profile's ladder, today's teacher "
                        "first, e.g. cpu,cpu-w128 (default: the whole ladder); an unfinished attempt on its clock")
    p.add_argument("--out", default=None, help="results root (default: $TINYFUSION_RESULTS, else results/)")
    add_switch(p, "--progress", True, "show papermill's progress bar (cells executed)")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # so a killed run rolls back like Ctrl-C
    try:
        reproduce(a.profile, a.only or None, a.out, progress=a.progress, study=a.study, rungs=a.rungs)
    except KeyboardInterrupt as e:
        target = "reproduce" if a.study == "main" else a.study
        rungs = f" RUNGS={''.join(a.rungs.split())}" if a.rungs else ""
        where = f"in {RUNNING['notebook']}" if RUNNING["notebook"] else "before the first notebook"
        print(f"[reproduce] stopped {where} ({str(e) or 'Ctrl-C'}): every step it finished is cached under "
              f"{RUNNING['root'] or 'the results folder'}, the last finished notebooks' results are untouched; "
              f"`make {target} PROFILE={a.profile}{rungs}` resumes", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
