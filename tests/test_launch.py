"""tinyfusion.launch: results come back, output streams, and a failing, killed, hanging or interrupted run
raises quickly and leaves no process behind. Entry point: tinyfusion.cli.selftest."""
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from tinyfusion.launch import LaunchError, LaunchTimeout, launch, launch_cmd, resolve_nproc

ENTRY = "tinyfusion.cli.selftest"


def marked_processes(marker):
    """PIDs of live processes whose environment holds ``marker`` (every process a launch started)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes() and \
                    (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(d.name))
        except (OSError, IndexError):
            pass
    return pids


@pytest.fixture
def marker():
    """An environment variable for the child; afterwards, no process that carries it may be left."""
    value = f"tinyfusion-launch-test-{uuid.uuid4().hex}"
    yield {"TINYFUSION_TEST_MARKER": value, "OMP_NUM_THREADS": "1"}
    assert marked_processes(value) == [], "launch left processes behind"


def fail_time(output):
    return float(re.search(r"fails \(\w+\) at unix time ([0-9.]+)", output).group(1))


def test_launch_cmd():
    cmd = launch_cmd("tinyfusion.cli.finetune", 8, profile="gpu", steps=100, keep=[0, 3], ema=True, note="a b")
    assert cmd == ("torchrun --standalone --nproc_per_node=8 -m tinyfusion.cli.finetune --profile gpu "
                   "--steps 100 --keep '[0, 3]' --ema --note 'a b'")
    assert shlex.split(cmd)[-1] == "a b"
    assert launch_cmd(ENTRY, 1, fail_rank=-1) == "python -m tinyfusion.cli.selftest --fail-rank -1"


def test_resolve_nproc(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_nproc("auto") == resolve_nproc(0) == min(2, os.cpu_count())
    assert resolve_nproc(3) == 3  # any count on CPU (gloo)
    with pytest.raises(ValueError, match="positive"):
        resolve_nproc(-1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(UserWarning, match="asked for 8 processes but only 1 GPU is present; using 1"):
        assert resolve_nproc(8) == 1
    assert resolve_nproc("auto") == 1


def test_bad_entry_point_or_config_fails_before_starting():
    with pytest.raises(ValueError, match="not found"):
        launch("tinyfusion.cli.no_such_entry")
    with pytest.raises(ValueError, match="fail_rnak"):
        launch(ENTRY, fail_rnak=1)


def test_single_process_returns_result_and_streams(marker, capsys):
    res = launch(ENTRY, nproc=1, env=marker, message="streamed-line")
    assert res["world_size"] == 1 and res["gathered"][0]["rank"] == 0
    out = capsys.readouterr().out
    assert "streamed-line: world size 1" in out and "selftest: 100%" in out  # print and progress bar


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_failing_rank_raises_quickly(mode, marker):
    with pytest.raises(LaunchError) as info:
        launch(ENTRY, nproc=2, env=marker, fail_rank=1, fail_mode=mode, stream=False)
    detect_s = time.time() - fail_time(info.value.output)
    print(f"{mode}: LaunchError {detect_s:.1f} s after rank 1 failed")
    assert detect_s < 60
    msg = str(info.value)
    assert "exit code 1" in msg  # torchrun's status
    if mode == "raise":
        assert "rank 1: RuntimeError: selftest: deliberate failure on rank 1" in msg
        assert "--- traceback of rank 1 ---" in msg and 'in fail\n    raise RuntimeError' in msg
    else:
        assert "rank 1: -9 (SIGKILL) <- first failure" in msg


def test_missing_result_after_clean_exit(marker):
    with pytest.raises(LaunchError, match="exited with status 0 but wrote no result JSON"):
        launch(ENTRY, nproc=1, env=marker, fail_rank=0, fail_mode="exit0", stream=False)


def test_timeout_stops_a_hanging_run(marker):
    t0 = time.time()
    with pytest.raises(LaunchTimeout, match="did not finish within 5 s"):
        launch(ENTRY, nproc=1, env=marker, timeout=5, fail_rank=0, fail_mode="hang", stream=False)
    assert 5 <= time.time() - t0 < 30


class InterruptOn:
    """A stdout that raises KeyboardInterrupt (as a notebook's stop button does) once ``text`` goes by."""

    def __init__(self, text):
        self.text, self.seen = text, ""

    def write(self, s):
        self.seen += s
        if self.text in self.seen:
            raise KeyboardInterrupt

    def flush(self):
        pass


def test_interrupt_stops_torchrun_and_its_workers(marker, monkeypatch):
    # rank 1 hangs, rank 0 waits for it in a barrier; workers live in sessions of their own under torchrun
    monkeypatch.setattr(sys, "stdout", InterruptOn("fails (hang)"))
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        launch(ENTRY, nproc=2, env=marker, fail_rank=1, fail_mode="hang")
    assert time.time() - t0 < 60


@pytest.mark.parametrize("use_psutil", [True, False])
def test_process_tree_without_and_with_psutil(monkeypatch, use_psutil):
    import tinyfusion.launch as L

    if not use_psutil:
        monkeypatch.setattr(L, "psutil", None)  # the /proc fallback
    elif L.psutil is None:
        pytest.skip("psutil is not installed")
    # a grandchild in a session of its own, like a torchrun worker
    proc = subprocess.Popen(["sh", "-c", "setsid sleep 60 & wait"], start_new_session=True,
                            stdout=subprocess.PIPE)
    tree = L._Tree(proc)
    for _ in range(100):
        tree.scan()
        if any("sleep" in Path(f"/proc/{p}/cmdline").read_text() for p in tree.alive()):
            break
        time.sleep(0.05)
    sleepers = [p for p in tree.alive() if "sleep" in Path(f"/proc/{p}/cmdline").read_text()]
    assert sleepers
    tree.stop()
    proc.wait(5)
    proc.stdout.close()
    assert tree.alive() == [] and L._identity(sleepers[0]) is None


def test_in_a_notebook_a_redrawn_line_is_one_output_updated_in_place(capsys):
    """What launch echoes into a notebook cell: finished lines as text, each progress bar as one display replaced on
    every redraw (papermill would otherwise keep each redraw as an output of its own)."""
    from tinyfusion.launch import _Echo
    shown = []

    def show(text):
        shown.append(text)
        k = len(shown) - 1
        return lambda new: shown.__setitem__(k, new)

    echo = _Echo(show)
    for chunk in ("start\n", "bar  10%", "\rbar  50%", "\rbar 100%\nlog line\nsecond", "\rsecond bar 100%"):
        echo.write(chunk)
    echo.close()
    assert capsys.readouterr().out == "start\nlog line\n"
    assert shown == ["bar 100%", "second bar 100%"]
    echo = _Echo()  # in a terminal: raw, so the terminal redraws
    echo.write("bar 1\rbar 2")
    assert capsys.readouterr().out == "bar 1\rbar 2"
