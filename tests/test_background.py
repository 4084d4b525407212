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
