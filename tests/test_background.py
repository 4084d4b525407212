"""tools/background.sh: pausing and continuing every process of one results root, and leaving the others alone."""
import os
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "background.sh"


def _state(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_state(pid, want, timeout=10.0):
    end = time.time() + timeout
    while _state(pid) != want and time.time() < end:
        time.sleep(0.05)
    return _state(pid)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
def test_pause_and_continue_reach_only_the_processes_of_that_results_root(tmp_path):
    ours, other = tmp_path / "ours", tmp_path / "other"
    ours.mkdir()
    other.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TINYFUSION_RESULTS"}
    mine = subprocess.Popen(["sleep", "60"], env={**env, "TINYFUSION_RESULTS": str(ours)}, start_new_session=True)
    theirs = subprocess.Popen(["sleep", "60"], env={**env, "TINYFUSION_RESULTS": str(other)})
    try:
        out = subprocess.run([str(SCRIPT), "pause", str(ours)], capture_output=True, text=True, check=True).stdout
        assert "pause: 1 processes" in out
        assert _wait_state(mine.pid, "T") == "T"      # stopped, though it is in a session of its own
        assert _state(theirs.pid) == "S"               # another results root's process runs on
        status = subprocess.run([str(SCRIPT), "status", str(ours)], capture_output=True, text=True, check=True).stdout
        assert str(mine.pid) in status and str(theirs.pid) not in status
        subprocess.run([str(SCRIPT), "continue", str(ours)], capture_output=True, text=True, check=True)
        assert _wait_state(mine.pid, "S") == "S"
    finally:
        for p in (mine, theirs):
            p.kill()
            p.wait()


def test_pause_spares_the_shell_that_called_it_with_the_same_root_exported(tmp_path):
    env = {**os.environ, "TINYFUSION_RESULTS": str(tmp_path)}
    worker = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:  # the calling bash has the root in its environment too: it must not stop itself
        r = subprocess.run(["bash", "-c", f"{SCRIPT} pause {tmp_path} && echo caller-ran-on"], env=env,
                           capture_output=True, text=True, timeout=30)
        said = r.stdout + r.stderr
        assert r.returncode == 0 and "pause: 1 processes" in r.stdout and "caller-ran-on" in r.stdout, said
        assert _wait_state(worker.pid, "T") == "T"
    finally:
        worker.kill()
        worker.wait()


def test_usage_is_shown_for_a_missing_results_root():
    r = subprocess.run([str(SCRIPT), "pause"], capture_output=True, text=True)
    assert r.returncode == 2 and "tools/background.sh run RESULTS TARGET" in r.stdout


def _job_pids(results):
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"@{results}".encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _tree(tmp_path, makefile):
    """A stand-in for the frozen copy (BG_TREE): a .venv/bin/python and a Makefile of ``makefile``."""
    tree = tmp_path / "tree"
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
    (tree / ".venv" / "bin" / "python").chmod(0o755)
    (tree / "Makefile").write_text(makefile)
    return tree


def _wait(cond, timeout=30.0):
    end = time.time() + timeout
    while not cond() and time.time() < end:
        time.sleep(0.1)
    return cond()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
def test_a_killed_job_is_resumed_once_and_forgotten_when_it_succeeds(tmp_path):
    tree, results = _tree(tmp_path, 'a:\n\t@echo a >> "$$TINYFUSION_RESULTS/a.txt"; sleep "$$SLEEP_S"\n'
                                     'b:\n\t@echo b >> "$$TINYFUSION_RESULTS/b.txt"\n'), tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("TINYFUSION_RESULTS", "PROFILE")}
    env.update(BG_TREE=str(tree), SLEEP_S="60")

    def bg(*args, **extra):
        return subprocess.run([str(SCRIPT), *args, str(results), *extra.get("rest", ())], env={**env, **extra.get(
            "env", {})}, capture_output=True, text=True, timeout=60)
    try:
        r = bg("run", rest=["a", "b"])
        assert r.returncode == 0 and "started job run-a+b" in r.stdout, r.stdout + r.stderr
        assert _wait(lambda: (results / "a.txt").exists())
        assert "job run-a+b: runs" in bg("status").stdout
        again = bg("run", rest=["a", "b"])                      # the same chain twice would race on its cache
        assert again.returncode == 1 and "already runs" in again.stderr
        for pid in _job_pids(results):                          # the session ends: every process of it dies
            os.kill(pid, 9)
        assert _wait(lambda: not _job_pids(results))
        assert "job run-a+b: not finished, not running (resume)" in bg("status").stdout
        r = bg("resume", env={"SLEEP_S": "0"})
        assert "resume: 1 jobs started" in r.stdout, r.stdout + r.stderr
        assert _wait(lambda: (results / "b.txt").exists() and not (results / "jobs" / "run-a+b").exists())
        assert (results / "a.txt").read_text() == "a\na\n"      # target a ran again from its start, then b
        assert "resume: 0 jobs started" in bg("resume").stdout  # finished: forgotten
        r = bg("soak", rest=["fails", "false"])                  # a job that fails stays recorded
        assert r.returncode == 0, r.stderr
        assert _wait(lambda: "rc 1" in (results / "logs" / "fails.log").read_text()
                     if (results / "logs" / "fails.log").exists() else False)
        assert "job soak-fails: not finished, not running (resume)" in bg("status").stdout
        (results / "jobs" / "soak-fails").unlink()
        (results / "jobs" / "forged").write_bytes(b"touch\0" + str(tmp_path / "ran").encode() + b"\0run\0x\0a\0")
        r = bg("resume")                                          # a record it did not write is refused, not run
        assert r.returncode == 1 and "is not a job record of this script" in r.stderr
        assert not (tmp_path / "ran").exists()
    finally:
        for pid in _job_pids(results):
            os.kill(pid, 9)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
def test_a_name_value_argument_goes_to_every_make_of_the_job_not_run_as_a_target(tmp_path):
    tree, results = _tree(tmp_path, 'first:\n\t@echo default target ran >> "$$TINYFUSION_RESULTS/first.txt"\n'
                                     'a:\n\t@echo "a $(RUNGS)" >> "$$TINYFUSION_RESULTS/a.txt"\n'
                                     'b:\n\t@echo "b $(RUNGS)" >> "$$TINYFUSION_RESULTS/b.txt"\n'), tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("TINYFUSION_RESULTS", "PROFILE", "RUNGS")}
    try:
        r = subprocess.run([str(SCRIPT), "run", str(results), "a", "RUNGS=cpu,cpu-w128 x", "b"],
                           env={**env, "BG_TREE": str(tree)}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _wait(lambda: (results / "b.txt").exists() and not list((results / "jobs").iterdir()))
        assert (results / "a.txt").read_text() == "a cpu,cpu-w128 x\n"   # quoted whole, for every target
        assert (results / "b.txt").read_text() == "b cpu,cpu-w128 x\n"
        assert not (results / "first.txt").exists()                     # never a make of its own
        assert r.stdout.startswith("started job run-a+b ")               # one job per targets, whatever the values
        bad = subprocess.run([str(SCRIPT), "run", str(results), "a", "PROFILE=smoke"], env={**env, "BG_TREE": str(tree)},
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "set the profile in the environment" in bad.stderr
    finally:
        for pid in _job_pids(results):
            os.kill(pid, 9)


def test_status_counts_the_steps_a_notebook_reused_and_computed_and_says_when_it_was_cut(tmp_path):
    (tmp_path / "cpu" / "partial").mkdir(parents=True)
    (tmp_path / "cpu" / "partial" / ".12_scale.steps").write_text(
        f"reused {tmp_path}/cpu/finetune/a-1\nreused {tmp_path}/cpu/scores/b-2\n"
        f"computed {tmp_path}/cpu-w128/prune_learn/1of2_lora_s0-abc\n")
    out = subprocess.run([str(SCRIPT), "status", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    # nothing runs for this root: the counts are a cut run's, and status says so
    assert ("cpu/12_scale steps: 2 reused, 1 computed; cut, nothing runs now; last done: "
            "cpu-w128/prune_learn/1of2_lora_s0-abc") in out
    # a process of this root runs: the counts are a running notebook's
    env = {**os.environ, "TINYFUSION_RESULTS": str(tmp_path)}
    runner = subprocess.Popen(["sleep", "60"], env=env)
    try:
        out = subprocess.run([str(SCRIPT), "status", str(tmp_path)], capture_output=True, text=True,
                             check=True).stdout
    finally:
        runner.kill()
    assert "cpu/12_scale steps: 2 reused, 1 computed; last done: cpu-w128/prune_learn/1of2_lora_s0-abc" in out


def test_resume_on_a_root_that_never_ran_here_points_at_the_carried_steps(tmp_path):
    """A machine that came back empty has no job records: resume starts nothing and says how to put back the steps
    carried in git (results/carry) first; a root whose jobs ran here does not get the hint."""
    env = {k: v for k, v in os.environ.items() if k != "TINYFUSION_RESULTS"}
    r = subprocess.run([str(SCRIPT), "resume", str(tmp_path / "lost")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "resume: 0 jobs started" in r.stdout, r.stdout + r.stderr
    assert f"copy_steps.py results/carry {tmp_path / 'lost'} --profile all --kind all" in r.stdout
    (tmp_path / "ran" / "jobs").mkdir(parents=True)
    r = subprocess.run([str(SCRIPT), "resume", str(tmp_path / "ran")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert "resume: 0 jobs started" in r.stdout and "carry" not in r.stdout
