"""tools/ship_results.py: a study's outputs come home from another results root; cached runs stay, clocks merge."""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def _clock(*attempts):
    return json.dumps({"attempts": [{"started": s, "profile": "cpu", "from_empty": e, "elapsed_s": t, "finished": True}
                                    for s, e, t in attempts]})


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "elsewhere"))  # write_summary_again points it at dest
    src, dest = tmp_path / "src" / "cpu", tmp_path / "dest" / "cpu"
    (tmp_path / "src" / "tree" / "notebooks").mkdir(parents=True)                 # background.sh's frozen clone
    (tmp_path / "src" / "tree" / "notebooks" / "01_calibration_loss_study.ipynb").write_text("{}")
    for folder, name, text in [("notebooks", "11_robustness.ipynb", "{}"), ("figures", "11_block0.png", "png"),
                               ("finetune/ft-abc", "model.pt", "weights"), ("tables", "11_block0.csv", "a\n1\n")]:
        (src / folder).mkdir(parents=True, exist_ok=True)
        (src / folder / name).write_text(text)
    (src / "tables" / "11_block0.csv.sha256").write_text("0" * 64)
    (src / "partial").mkdir()
    for name in ("12_scale__cpu+cpu-w128.ipynb", "12_scale.ipynb", "kernel.log"):   # a part-ladder copy; a running one
        (src / "partial" / name).write_text("{}")
    (src / "reproduce_clock.json").write_text(_clock(("2026-12-04 11:11:00", False, 600.0)))
    dest.mkdir(parents=True)
    (dest / "reproduce_clock.json").write_text(_clock(("2026-11-23 23:31:41", True, 13920.0)))
    (dest / "tables").mkdir()
    (dest / "tables" / "11_block0.csv").write_text("a\n1\n")
    return src.parent, dest.parent


def test_outputs_are_copied_cached_runs_are_not_and_the_clock_keeps_its_history(roots, capsys):
    import ship_results
    src, dest = roots
    report = ship_results.ship(src, dest, dry_run=True)
    assert sorted(report["new"]) == ["cpu/figures/11_block0.png", "cpu/notebooks/11_robustness.ipynb",
                                     "cpu/partial/12_scale__cpu+cpu-w128.ipynb"]
    assert report["changed"] == ["cpu/reproduce_clock.json"] and report["same"] == 1
    assert not (dest / "cpu" / "figures").exists()                  # a dry run copies nothing
    ship_results.main([str(src), str(dest)])
    out = capsys.readouterr().out
    assert "look at each of these figures" in out and "cpu/figures/11_block0.png" in out
    assert (dest / "cpu" / "notebooks" / "11_robustness.ipynb").read_text() == "{}"
    assert not (dest / "cpu" / "finetune").exists() and not (dest / "cpu" / "tables" / "11_block0.csv.sha256").exists()
    attempts = json.loads((dest / "cpu" / "reproduce_clock.json").read_text())["attempts"]
    assert [a["from_empty"] for a in attempts] == [True, False]      # the from-empty run stays first, the new one after
    for root, started in ((src, "b"), (dest, "a")):
        run = {"started": started, "profile": "cpu", "total_seconds": 1}
        latest = {"00.ipynb": 5.0, f"{started}.ipynb": 1.0}
        (root / "cpu" / "timings.json").write_text(json.dumps({"runs": [run], "latest": latest}))
    (dest / "cpu" / "figures" / "11_block0.png").write_text("older")
    (dest / "cpu" / "figures" / "11_block0.png.sha256").write_text("0" * 64)  # a local run's record of the old file
    ship_results.ship(src, dest)
    timings = json.loads((dest / "cpu" / "timings.json").read_text())
    assert [r["started"] for r in timings["runs"]] == ["a", "b"]
    assert timings["latest"] == {"00.ipynb": 5.0, "a.ipynb": 1.0, "b.ipynb": 1.0}  # kept: reproduce's estimates read it
    assert not (dest / "cpu" / "figures" / "11_block0.png.sha256").exists()
    again = ship_results.ship(src, dest)                             # shipping twice changes nothing
    assert again["new"] == [] and again["changed"] == []


def test_summary_is_written_again_from_the_merged_clock(tmp_path, monkeypatch):
    import ship_results
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "elsewhere"))
    src, dest = tmp_path / "src" / "cpu", tmp_path / "dest" / "cpu"
    for folder in ("tables", "verdicts"):                            # the committed cpu results as the destination
        shutil.copytree(ROOT / "results" / "cpu" / folder, dest / folder)
    shutil.copy(ROOT / "results" / "cpu" / "reproduce_clock.json", dest / "reproduce_clock.json")
    src.mkdir(parents=True)
    (src / "summary.md").write_text("# from a run that did not start from an empty cache\n")
    (src / "reproduce_clock.json").write_text(_clock(("2099-01-01 00:00:00", False, 60.0)))
    ship_results.ship(src.parent, dest.parent)
    summary = (dest / "summary.md").read_text()
    assert summary.startswith("# TinyFusion replication: summary (cpu profile)")
    assert "hours of wall time over" in summary                     # the committed from-empty reproduction, kept
    again = ship_results.ship(src.parent, dest.parent)              # nothing new: summary.md is not touched again
    assert again["changed"] == [] and again["summaries"] == [] and (dest / "summary.md").read_text() == summary


def test_a_missing_source_is_refused_naming_it(tmp_path):
    import ship_results
    with pytest.raises(SystemExit, match="is not a folder"):
        ship_results.ship(tmp_path / "nowhere", tmp_path)
    (tmp_path / "src" / "cpu").mkdir(parents=True)
    with pytest.raises(SystemExit, match="profiles there: cpu"):
        ship_results.ship(tmp_path / "src", tmp_path, profiles=["cpu-sit"])


def test_copy_steps_carries_every_profile_and_kind_lean_and_refuses_a_kind_it_lacks(tmp_path, monkeypatch, capsys):
    """tools/copy_steps.py --profile all --kind all --lean: every finished step of every profile folder, without its
    .pt/.npz (their hashes in the record), skipping an unfinished one and the folders that are not steps; a second
    run copies nothing again; a kind the profile lacks is refused, naming the kinds it has."""
    import copy_steps

    from tinyfusion import cache
    src, carry = tmp_path / "src", tmp_path / "carry"
    monkeypatch.setenv("TINYFUSION_RESULTS", str(src))
    for profile in ("cpu", "cpu-w128"):
        def compute(out):
            (out / "model.pt").write_bytes(b"weights")
            return {"model": str(out / "model.pt"), "fid": 1.0}
        cache.cached(cache.folder(src / profile, "finetune", "ft", {"p": profile}), {"p": profile}, compute)
    (src / "cpu" / "finetune" / "unfinished-abc").mkdir()
    (src / "cpu" / "tables").mkdir()
    (src / "cpu" / "tables" / "t.csv").write_text("a\n")
    copy_steps.main([str(src), str(carry), "--profile", "all", "--kind", "all", "--lean"])
    out = capsys.readouterr().out
    assert "skip cpu/finetune/unfinished-abc: not a finished step" in out and "(cpu, cpu-w128)" in out
    steps = sorted(p.relative_to(carry).as_posix() for p in carry.rglob("*") if p.is_file() and "sha256" not in p.name)
    assert sorted(s.split("/", 1)[0] for s in steps) == ["cpu", "cpu-w128"] and all(s.endswith("run.json") for s in steps)
    copy_steps.main([str(src), str(carry), "--profile", "all", "--kind", "all", "--lean"])
    assert "0.0 MiB copied" in capsys.readouterr().out
    again, lost = tmp_path / "carry2", tmp_path / "lost"      # lean of lean keeps the hashes; a cut run is not overwritten
    copy_steps.main([str(carry), str(again), "--profile", "cpu", "--kind", "all", "--lean"])
    assert "lean: 1 left behind (model.pt)" in capsys.readouterr().out
    cut = lost / "cpu" / "finetune" / next((carry / "cpu" / "finetune").iterdir()).name
    cut.mkdir(parents=True)
    (cut / "state.pt").write_bytes(b"resume me")
    copy_steps.main([str(carry), str(lost), "--profile", "cpu", "--kind", "all"])
    assert "holds an unfinished run" in capsys.readouterr().out and not (cut / cache.RECORD).exists()
    with pytest.raises(SystemExit, match="cpu/scores is not a folder.*finetune"):
        copy_steps.main([str(src), str(carry), "--profile", "cpu", "--kind", "scores"])


def test_copy_steps_carries_a_study_clock_so_a_lost_cache_keeps_its_from_empty_time(tmp_path, monkeypatch, capsys):
    """A whole root's carry (--kind all) merges each profile's *_clock.json attempt by attempt: restored after a lost
    cache, the study's next attempt (not "from empty") still adds up to a from-empty time with the carried ones."""
    import copy_steps

    from tinyfusion.cli.reproduce import from_empty_seconds
    from tinyfusion.io import load_json, save_json
    src, carry, lost = tmp_path / "src", tmp_path / "carry", tmp_path / "lost"
    monkeypatch.setenv("TINYFUSION_RESULTS", str(src))
    first = {"started": "2026-12-05 13:33:28", "profile": "cpu", "from_empty": True, "finished": False,
             "elapsed_s": 3600.0}
    save_json({"attempts": [first]}, src / "cpu" / "scale_clock.json")      # with its integrity record
    copy_steps.main([str(src), str(carry), "--profile", "all", "--kind", "all", "--lean"])
    assert "merged cpu/scale_clock.json: 1 attempts" in capsys.readouterr().out
    save_json({"attempts": [{**first, "elapsed_s": 7200.0}]}, src / "cpu" / "scale_clock.json")  # it ran on
    copy_steps.main([str(src), str(carry), "--profile", "all", "--kind", "all", "--lean"])
    assert load_json(carry / "cpu" / "scale_clock.json")["attempts"] == [{**first, "elapsed_s": 7200.0}]
    copy_steps.main([str(carry), str(lost), "--profile", "all", "--kind", "all"])   # the machine came back empty
    clock = load_json(lost / "cpu" / "scale_clock.json")
    clock["attempts"].append({"started": "2026-12-06 09:00:00", "profile": "cpu", "from_empty": False,
                              "finished": True, "elapsed_s": 1800.0})
    assert from_empty_seconds(clock) == (9000.0, 2)
    save_json({"attempts": [{**first, "elapsed_s": 9000.0, "finished": True}]}, src / "cpu" / "scale_clock.json")
    capsys.readouterr()
    copy_steps.main([str(src), str(carry), "--profile", "all", "--kind", "all", "--match", "x"])
    assert "merged" not in capsys.readouterr().out                           # a picked subset carries no clock
    assert load_json(carry / "cpu" / "scale_clock.json")["attempts"][0]["elapsed_s"] == 7200.0
    save_json(clock, lost / "cpu" / "scale_clock.json")                       # the restored root ran on, then stopped
    os.utime(lost / "cpu" / "scale_clock.json", (0, 0))
    copy_steps.main([str(carry), str(lost), "--profile", "all", "--kind", "all"])   # the older carry again
    assert load_json(lost / "cpu" / "scale_clock.json") == clock              # it never winds an attempt back
    now = {**first, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "from_empty": False, "elapsed_s": 30.0}
    save_json({"attempts": [*clock["attempts"], now]}, src / "cpu" / "scale_clock.json")   # a study runs there now
    copy_steps.main([str(carry), str(src), "--profile", "all", "--kind", "all"])
    assert "a study running under" in capsys.readouterr().out                 # its clock is left to it
