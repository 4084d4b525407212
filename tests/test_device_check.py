"""The prepared GPU-session script (tools/device_check.py) on the CPU at toy size, and the tree slimming around it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def test_device_check_smoke_runs_every_section_and_a_real_process_group(tmp_path):
    import device_check
    record = device_check.run(tmp_path, "smoke")
    assert record["errors"] == {}
    assert tuple(record["sections"]) == device_check.DEFAULT_SECTIONS   # the teachers only when asked
    assert json.loads((tmp_path / "device_check.json").read_text())["sections"].keys() == record["sections"].keys()
    layers = record["sections"]["shapes"]["layers"]
    assert set(layers) == {"D4", "D2"} and all(r["output_ok"] and r["finite"] for r in layers.values())
    assert layers["D2"]["params"] < layers["D4"]["params"]
    speed = record["sections"]["sampling_speed"]
    assert speed["paper"]["d28_it_s"] == 6.91 and speed["cases"][0]["d14_it_s"] > 0
    step = record["sections"]["prune_step"]["cases"][0]
    assert "error" not in step and step["ours_steps_per_s"] > 0 and step["ours_saved_activation_mb"] > 0
    run = record["sections"]["torchrun"]
    # one process under torchrun, yet a process group (TINYFUSION_DIST_FORCE): gloo here, NCCL on a GPU
    for part in ("prune_learn", "finetune"):
        assert run[part]["world_size"] == 1 and run[part]["backend"] == "gloo"
    k = run["prune_learn"]["kept"]
    assert len(k) == 2 and k[0] in (0, 1) and k[1] in (2, 3)  # one layer of each 1:2 block of the 4-layer toy
    assert run["finetune"]["finite"] and run["finetune"]["mode"] == "masked_kd"
    # a rerun of some sections keeps the others' results; an unknown section is refused by name
    again = device_check.run(tmp_path, "smoke", only=["environment"])
    assert tuple(again["sections"]) == device_check.DEFAULT_SECTIONS
    assert again["sections"]["torchrun"] == run
    with pytest.raises(SystemExit, match="unknown section.*'speed'"):
        device_check.run(tmp_path, "smoke", only=["speed"])


def test_teachers_come_back_in_parts_that_join_to_the_trained_file_or_are_refused(tmp_path):
    import device_check
    from tinyfusion.io import load_checkpoint
    out = tmp_path / "out"
    device_check.PART_BYTES, old = 500_000, device_check.PART_BYTES   # several parts from a toy teacher
    try:
        record = device_check.run(out, "smoke", only=["teachers"])
    finally:
        device_check.PART_BYTES = old
    assert record["errors"] == {}, record["errors"]
    row = record["sections"]["teachers"]["runs"]["smoke"]
    assert row["finished"] and row["parts"] >= 2 and row["summary"]["steps"] == 3
    assert {p.name for p in out.glob("teacher_smoke.pt.*")} == {f"teacher_smoke.pt.{i}" for i in range(row["parts"])}
    dest, = device_check.unpack_teachers(out, tmp_path / "root")
    ckpt = load_checkpoint(Path(dest) / "teacher.pt")        # checked against its record and its content digest
    assert "ema" in ckpt and json.loads((Path(dest) / "summary.json").read_text())["steps"] == 3
    part = out / "teacher_smoke.pt.1"
    part.write_bytes(part.read_bytes()[:-1] + b"x")          # one byte changed in transit
    with pytest.raises(SystemExit, match="do not join to the teacher the GPU wrote"):
        device_check.unpack_teachers(out, tmp_path / "again")


def test_device_check_refuses_the_gpu_mode_without_cuda(tmp_path):
    import device_check
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="no CUDA device"):
        device_check.run(tmp_path, "gpu")


def test_device_tree_slim_and_restore_leave_the_repository_as_it_was(tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "tools" / "device_tree.sh").write_bytes((ROOT / "tools" / "device_tree.sh").read_bytes())
    (repo / "big.pt").write_bytes(os.urandom(1_500_000))
    (repo / "small.py").write_text("x = 1\n")
    script = str(repo / "tools" / "device_tree.sh")
    sh = lambda *a: subprocess.run(a, cwd=repo, capture_output=True, text=True)  # noqa: E731
    sh("git", "init", "-q")
    sh(*git, "add", ".")
    sh(*git, "commit", "-qm", "init")
    (repo / "small.py").write_text("x = 2\n")
    sh("git", "add", "small.py")  # a staged change: restore puts the index back as it was, this included
    staged = sh("git", "status", "--porcelain").stdout
    before = int(sh("bash", script, "size").stdout.split()[0])
    slim = sh("bash", script, "slim")
    assert slim.returncode == 0 and "untracked 1 files" in slim.stdout
    assert int(slim.stdout.split("; ")[1].split()[0]) < before - 1_000_000  # big.pt no longer travels
    assert (repo / "big.pt").exists()  # ... but stays on disk
    again = sh("bash", script, "slim")
    assert again.returncode == 1 and "already slim" in again.stderr
    sh(*git, "commit", "-qm", "a commit between slim and restore records the deletion")
    moved = sh("bash", script, "restore")
    assert moved.returncode == 1 and "HEAD moved" in moved.stderr
    sh("git", "reset", "-q", "--soft", "HEAD~1")
    assert sh("bash", script, "restore").returncode == 0
    assert sh("git", "status", "--porcelain").stdout == staged == "M  small.py\n"
    assert int(sh("bash", script, "size").stdout.split()[0]) == before
    assert "device_tree.sh" not in (repo / ".git" / "info" / "exclude").read_text()
