"""The papermill driver on small planted notebooks (a run in order with timings; a failing notebook stops the run),
and notebook 09's summary (the paper's rows beside ours, the timing table) on planted tables and timings.

The real notebooks run once in ``make test``, under nbval; ``notebooks/test_artefacts.py`` then checks every figure,
table, verdict and summary they wrote.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest

import tinyfusion.cli.reproduce as rep
from tinyfusion import paper, summary
from tinyfusion.profiles import get_profile


def _notebook(path, sources, parameters=False):
    """A notebook of code cells; ``parameters``: tag the first cell as papermill's parameters cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    if parameters:
        nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)


def test_planted_notebooks_run_in_order_with_the_profile_and_record_timings(tmp_path, monkeypatch, capfd):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "00_first.ipynb", ["profile = 'cpu'", "print(f'first ran with profile={profile}')",
                                         "from tqdm.auto import tqdm\nfor _ in tqdm(range(300), mininterval=0): pass"],
              True)
    _notebook(nbdir / "01_second.ipynb", ["profile = 'cpu'", "import os, pathlib",
                                          "print('results root:', os.environ['TINYFUSION_RESULTS'])",
                                          "print('cwd:', pathlib.Path.cwd().name)",
                                          "from tinyfusion import cache\nimport tempfile\nd = tempfile.mkdtemp()\n"
                                          "for _ in range(2): cache.cached(pathlib.Path(d) / 'step', {'a': 1}, "
                                          "lambda out: {'x': 1})"], True)
    _notebook(nbdir / "scratch.ipynb", ["raise RuntimeError('not a numbered notebook: never run')"])
    monkeypatch.setattr(rep, "NOTEBOOKS", nbdir)
    monkeypatch.delenv("TINYFUSION_RESULTS", raising=False)
    done = rep.reproduce("smoke", results_root=tmp_path / "res", progress=False)
    assert "TINYFUSION_RESULTS" not in os.environ and "TINYFUSION_CACHE_LOG" not in os.environ  # restored after the run
    said = capfd.readouterr().out   # one line per notebook says how many cached steps it reused and computed
    assert "00_first.ipynb done in" in said and "(0 cached steps reused, 0 computed)" in said
    assert "01_second.ipynb done in" in said and "(1 cached steps reused, 1 computed)" in said
    out = tmp_path / "res" / "smoke"
    assert list(done) == ["00_first.ipynb", "01_second.ipynb"] and all(v["seconds"] >= 0 for v in done.values())
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["00_first.ipynb", "01_second.ipynb"]
    first = (out / "notebooks" / "00_first.ipynb").read_text()
    assert "first ran with profile=smoke" in first  # papermill injected the profile after the parameters cell
    bar = nbformat.reads(first, as_version=4).cells[-1].outputs  # ipywidgets is there: one widget, no warning
    assert [o.output_type for o in bar] == ["display_data"], bar
    assert "application/vnd.jupyter.widget-view+json" in bar[0].data and "IProgress not found" not in first
    second = (out / "notebooks" / "01_second.ipynb").read_text()
    assert f"results root: {(tmp_path / 'res').resolve()}" in second and "cwd: nbs" in second
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["latest"]) == {"00_first.ipynb", "01_second.ipynb"}
    (run,) = timings["runs"]
    assert run["profile"] == "smoke" and set(run["notebooks"]) == set(done) and run["total_seconds"] > 0
    # a rerun of one notebook adds a run and updates only that notebook's latest time
    rep.reproduce("smoke", only=["01"], results_root=tmp_path / "res", progress=False)
    timings = json.loads((out / "timings.json").read_text())
    assert [list(r["notebooks"]) for r in timings["runs"]] == [["00_first.ipynb", "01_second.ipynb"],
                                                               ["01_second.ipynb"]]
    assert timings["latest"]["00_first.ipynb"] == run["notebooks"]["00_first.ipynb"]["seconds"]


def test_failing_notebook_stops_with_its_name_and_cell(tmp_path, monkeypatch):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "00_fine.ipynb", ["profile = 'smoke'", "x = 1"])
    _notebook(nbdir / "01_broken.ipynb", ["profile = 'smoke'", "y = 2", "raise ValueError('planted failure')"])
    _notebook(nbdir / "02_never.ipynb", ["profile = 'smoke'"])
    monkeypatch.setattr(rep, "NOTEBOOKS", nbdir)
    with pytest.raises(SystemExit) as e:
        rep.reproduce("smoke", results_root=tmp_path / "res", progress=False)
    msg = str(e.value)
    assert "01_broken.ipynb" in msg and "planted failure" in msg
    assert "raise ValueError('planted failure')" in msg  # the failing cell is quoted
    kept = tmp_path / "res" / "smoke" / "partial" / "01_broken.ipynb"
    assert kept.exists() and "planted failure" in kept.read_text()
    assert not (tmp_path / "res" / "smoke" / "notebooks" / "01_broken.ipynb").exists()  # only finished copies
    assert not (tmp_path / "res" / "smoke" / "notebooks" / "02_never.ipynb").exists()


def _nbval_session(tmp_path, planted, *args):
    """Run pytest (nbval) in a copy of ``notebooks/``'s conftest and artefact check beside ``planted`` notebooks
    ({name: cell sources}); returns (exit code, output)."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir(parents=True)
    for f in ("conftest.py", "test_artefacts.py"):
        shutil.copy(Path(rep.NOTEBOOKS) / f, nbdir / f)
    for name, sources in planted.items():
        _notebook(nbdir / name, sources)
    env = {k: v for k, v in os.environ.items() if k != "TINYFUSION_PROFILE"}  # the conftest's default: smoke
    env["TINYFUSION_RESULTS"] = str(tmp_path / "res")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args, "notebooks"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def test_artefact_check_runs_after_the_notebooks_and_skips_when_they_did_not_all_pass(tmp_path):
    # TINYFUSION_PROFILE is not exported: notebooks/conftest.py makes the kernels run the smoke profile
    ok = {"00_fine.ipynb": ["import os\nassert os.environ['TINYFUSION_PROFILE'] == 'smoke'"], "01_fine.ipynb": ["y = 2"]}
    # both ran in this session: the check runs (and fails here, as planted notebooks write no artefacts)
    rc, out = _nbval_session(tmp_path / "a", ok, "--nbval-lax")
    assert rc == 1 and "2 passed" in out and "1 failed" in out and "not written by the notebooks" in out, out
    # a notebook failed above: the check is skipped, naming it
    rc, out = _nbval_session(tmp_path / "b", {**ok, "01_fine.ipynb": ["raise ValueError('planted')"]}, "--nbval-lax")
    assert rc == 1 and "01_fine.ipynb failed above" in out and "1 skipped" in out, out
    # no nbval: the notebooks were not collected, and the check says so instead of reading stale files
    rc, out = _nbval_session(tmp_path / "c", ok)
    assert rc == 0 and "none ran before it in this pytest session" in out, out


def test_unknown_profile_is_refused():
    with pytest.raises(SystemExit, match="unknown profile 'tiny'.*smoke, cpu, gpu, imagenet"):
        rep.reproduce("tiny")


def test_compact_streams_keeps_the_final_state_of_progress_bars(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("run()")
    bar = [nbformat.v4.new_output("stream", name="stderr", text=f"\rtrain: {i}/100") for i in range(101)]
    cell.outputs = ([nbformat.v4.new_output("stream", name="stdout", text="start\n")] + bar
                    + [nbformat.v4.new_output("stream", name="stderr", text="\n"),
                       nbformat.v4.new_output("display_data", data={"text/plain": "42"}),
                       nbformat.v4.new_output("stream", name="stdout", text="a\rb\nc\n")])
    nb.cells = [cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    rep.compact_streams(path)
    outs = nbformat.read(str(path), as_version=4).cells[0].outputs
    assert [o.output_type for o in outs] == ["stream", "stream", "display_data", "stream"]
    assert outs[0].text == "start\n" and outs[1].text == "train: 100/100\n" and outs[3].text == "b\nc\n"
    # nested bars (tqdm's position 1 writes a line below and moves back up with ESC[A); a closed inner bar is cleared
    outer = lambda i: f"\router {i}/2"  # noqa: E731
    inner = lambda j: f"\n\rinner {j}/3\x1b[A"  # noqa: E731
    text = outer(0) + "".join(inner(j) for j in range(4)) + "\n\r" + " " * 9 + "\r\x1b[A" + outer(1) + outer(2) + "\n"
    assert rep.terminal_text(text) == "outer 2/2\n"
    assert rep.terminal_text("x\n\ny\r   \rz") == "x\n\nz" and rep.terminal_text("") == ""


# ---------------------------------------------------------------------- notebook 09's summary
def _study(root):
    (root / "tables").mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(prof=get_profile("smoke"), root=root)


def test_summary_rows_stand_beside_the_papers_numbers(tmp_path):
    study = _study(tmp_path)
    metrics = dict(fid=1.0, sfid=2.0, precision=0.5, recall=0.5, class_accuracy=0.9)
    pd.DataFrame([{"IS": 5.0, "FID": 1.0, "sFID": 2.0, "Prec": 0.5, "Rec": 0.5, "class acc": 0.9}]).to_csv(
        tmp_path / "tables" / "00_teacher_metrics.csv", index=False)
    pd.DataFrame([{"method": m, "seed": s, "is": 4.0 + s, **metrics} for m in ("learnable", "max-loss random")
                  for s in (0, 1)]).to_csv(tmp_path / "tables" / "01_table3_runs.csv", index=False)
    pd.DataFrame([{"variant": v, "seed": 0, "is": 4.0, **metrics} for v in ("finetune", "kd", "masked_kd_2")]).to_csv(
        tmp_path / "tables" / "06_table5_runs.csv", index=False)
    pd.DataFrame([{"teacher": t, "pruned_from": f, "is": 3.0, **metrics} for t in ("XL", "D14") for f in ("XL", "D14")]
                 ).to_csv(tmp_path / "tables" / "08_table7.csv", index=False)
    table, verdicts = summary.collect(study)
    got = table.set_index("variant")[["paper IS", "paper FID"]]
    want = {"teacher (28 layers)": (paper.TABLE1[0]["IS"], paper.TABLE1[0]["FID"]),
            "learnable": paper.TABLE3["learnable"][1:], "max-loss random": (np.nan, np.nan),
            "learnable + plain fine-tune": (np.nan, paper.TABLE5["finetune"]["FID"]),
            "learnable + logits KD": (np.nan, paper.TABLE5["kd"]["FID"]),
            "learnable + Masked KD 2σ": (np.nan, paper.TABLE5["masked_kd_2"]["FID"]),
            "D7 from XL, teacher XL": (np.nan, paper.TABLE7[("XL", "XL")]),
            "D7 from D14, teacher XL": (np.nan, paper.TABLE7[("XL", "D14")]),
            "D7 from XL, teacher D14": (np.nan, paper.TABLE7[("D14", "XL")]),
            "D7 from D14, teacher D14": (np.nan, paper.TABLE7[("D14", "D14")])}
    assert set(got.index) == set(want)
    # like with like: the KD rows stand beside notebook 06's own plain fine-tune, each row names its schedule
    sched = table.set_index("variant").schedule
    assert "notebook 01" in sched["learnable"] and sched["learnable + plain fine-tune"] == sched["learnable + logits KD"]
    assert sched["learnable"] != sched["learnable + plain fine-tune"] and "notebook 08" in sched["D7 from XL, teacher XL"]
    for variant, pair in want.items():
        np.testing.assert_array_equal(got.loc[variant].to_numpy(dtype=float), np.array(pair, dtype=float), variant)
    assert table.set_index("variant").loc["learnable", "seeds"] == 2
    assert list(verdicts.verdict) == ["not run"] * len(paper.CLAIMS)


def test_summary_times_finished_runs_and_the_run_it_is_part_of(tmp_path):
    study = _study(tmp_path)
    whole = {"00_a.ipynb": {"seconds": 60.0}, "01_b.ipynb": {"seconds": 120.0}}
    runs = [{"started": "2026-01-01 10:00:00", "profile": "smoke", "notebooks": whole, "total_seconds": 181.0},
            # a `--only 03` rerun (no notebook 00) and a run that failed: left out
            {"started": "2026-01-02 10:00:00", "profile": "smoke", "notebooks": {"03_c.ipynb": {"seconds": 5.0}},
             "total_seconds": 5.0},
            {"started": "2026-01-03 10:00:00", "profile": "smoke",
             "notebooks": {"00_a.ipynb": {"seconds": 1.0, "failed": True}}},
            # the run notebook 09 is part of: no total yet, the notebooks finished so far
            {"started": "2026-01-04 10:00:00", "profile": "smoke",
             "notebooks": {"00_a.ipynb": {"seconds": 30.0}, "01_b.ipynb": {"seconds": 90.0}}}]
    (tmp_path / "timings.json").write_text(json.dumps({"runs": runs}))
    text = summary.write_summary(study, *summary.collect(study)).read_text()
    assert "| notebook | 2026-01-01 10:00:00 (s) | 2026-01-04 10:00:00, this run (s) |" in text
    assert "| 01_b.ipynb | 120.0 | 90.0 |" in text
    assert "| total (min) | 3.0 | 2.0 |" in text  # 181 s as recorded; this run: the sum so far, 120 s
    assert "2026-01-02" not in text and "2026-01-03" not in text
    # once the live run has a failed notebook it is not shown as "this run"
    runs[-1]["notebooks"]["02_c.ipynb"] = {"seconds": 2.0, "failed": True}
    (tmp_path / "timings.json").write_text(json.dumps({"runs": runs}))
    text = summary.write_summary(study, *summary.collect(study)).read_text()
    assert "this run" not in text and "| total (min) | 3.0 |" in text


def test_the_reproduce_clock_adds_up_killed_attempts_of_a_run_from_empty(tmp_path):
    import time as _time
    from tinyfusion.cli.reproduce import Clock, from_empty_seconds
    (tmp_path / "finetune").mkdir()
    c = Clock(tmp_path, "smoke", every=0.05)  # empty cache: the finetune folder holds nothing yet
    _time.sleep(0.3)
    c.done("00_a.ipynb")
    c._stop.set()  # killed: no stop() call, only the heartbeats survive
    c._thread.join()
    saved = json.loads((tmp_path / "reproduce_clock.json").read_text())
    assert saved["attempts"][0]["from_empty"] and saved["attempts"][0]["elapsed_s"] >= 0.2
    (tmp_path / "finetune" / "run-abc").mkdir()  # the resumed attempt finds a cache
    c2 = Clock(tmp_path, "smoke", every=0.05)
    _time.sleep(0.1)
    c2.stop(finished=True)
    clock = json.loads((tmp_path / "reproduce_clock.json").read_text())
    assert [a["from_empty"] for a in clock["attempts"]] == [True, False]
    seconds, attempts = from_empty_seconds(clock)
    assert attempts == 2 and seconds == pytest.approx(sum(a["elapsed_s"] for a in clock["attempts"]))
    # a later cached rerun does not start a new from-empty chain: the last finished chain is still reported
    clock["attempts"].append({"from_empty": False, "finished": True, "elapsed_s": 5.0})
    assert from_empty_seconds(clock) == (seconds, attempts)
    assert from_empty_seconds({"attempts": [{"from_empty": False, "finished": True, "elapsed_s": 1}]}) == (None, 0)


def test_the_reproduce_clock_leaves_out_a_pause(tmp_path):
    """A run stopped with SIGSTOP (its heartbeat thread frozen) and continued: the gap beyond a few heartbeats is
    recorded as paused_s, not as elapsed time."""
    from tinyfusion.cli.reproduce import Clock
    c = Clock(tmp_path, "smoke", every=2.0)  # a gap counts up to 3 x every = 6 s
    c._stop.set()
    c._thread.join()
    c._last -= 1000.0  # as if the process had been stopped for 1000 s since its last heartbeat
    c.stop(finished=True)
    attempt = json.loads((tmp_path / "reproduce_clock.json").read_text())["attempts"][0]
    assert 6.0 <= attempt["elapsed_s"] <= 7.0 and 993.0 <= attempt["paused_s"] <= 994.1


def test_the_summary_reports_the_run_it_is_written_in():
    """Notebook 09 writes summary.md inside the last attempt, before that attempt is marked finished: the attempt
    counts as finished when every other notebook is done in it, so the summary shows its own run's time."""
    from tinyfusion.cli.reproduce import notebooks
    from tinyfusion.summary import run_clock
    others = [p.name for p in notebooks() if "summary" not in p.name]
    first = {"from_empty": True, "finished": False, "elapsed_s": 3600.0, "notebooks_done": others[:3]}
    # the resumed attempt runs every notebook again (the first three from the cache) and is now in notebook 09
    last = {"from_empty": False, "finished": False, "elapsed_s": 1800.0, "notebooks_done": others}
    assert run_clock({"attempts": [first, last]}) == (5400.0, 2)
    unfinished = {**last, "notebooks_done": others[:-1]}     # a notebook still to run: no finished run yet
    assert run_clock({"attempts": [first, unfinished]}) == (None, 0)


def test_executed_notebooks_record_relative_paths(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": "/home/me/repo/notebooks/x.ipynb", "output_path": "/tmp/r/x.ipynb"}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    rep.compact_streams(path, {"input_path": "notebooks/x.ipynb", "output_path": "cpu/notebooks/x.ipynb"})
    meta = nbformat.read(str(path), as_version=4).metadata["papermill"]
    assert meta["input_path"] == "notebooks/x.ipynb" and "/tmp" not in meta["output_path"]


def test_save_fig_and_save_table_return_paths_relative_to_the_results_folder(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    st = Study("smoke")
    fig = plt.figure()
    assert str(st.save_fig(fig, "x")) == "figures/x.png" and (tmp_path / "smoke" / "figures" / "x.png").exists()
    assert str(st.save_table(pd.DataFrame({"a": [1]}), "t")) == "tables/t.csv"
    plt.close(fig)


def test_the_summary_leads_with_the_finding_written_from_the_verdicts(tmp_path):
    """summary.md opens with three or four sentences generated from the verdicts, then a narrow verdict table."""
    verdicts = pd.DataFrame({"claim": [1, 2, 3, 5], "verdict": ["not held", "held", "not held", "not testable here"],
                             "evidence": ["a; b", "x " * 200, "c", "d"], "notebook": ["n1", "n2", "n3", "n5"]})
    lines = summary.findings(verdicts)
    assert lines[0] == ("Of the paper's 4 claims, 4 were judged at our scale: 1 is held (2); 2 are not held (1, 3); "
                        "1 is not testable here (5).")
    assert "'not held' and 'held' here" in lines[1] and len(lines) == 3
    robust = pd.DataFrame({"verdict survives?": ["Claim 1: 'x' in all 3 settings — the verdict survives.",
                                                 "Claim 2: 'x' in a, but 'y' in b — the verdict does not survive."]})
    assert "survives for Claim 1, and not for Claim 2" in summary.findings(verdicts, robust)[2]
    assert summary.findings(verdicts.assign(verdict="not run")) == ["No claim has a verdict yet: run `make reproduce`."]
    assert len(summary.one_line("x " * 200)) <= 162 and summary.one_line("short. rest") == "short"
    study = _study(tmp_path)
    text = summary.write_summary(study, *summary.collect(study)).read_text()
    assert text.splitlines()[2].startswith("No claim has a verdict yet")


def test_the_summary_gains_the_scale_ladder_with_its_trend_and_clock_when_notebook_12_ran(tmp_path, monkeypatch):
    study = _study(tmp_path)
    assert summary.scale_section(tmp_path) == []                     # notebook 12 has not run: nothing said
    pd.DataFrame([{"rung": "cpu", "params": 2.1e6, "tokens": 16, "learnable/best 100K": 2.27, "claim 2": "not held",
                   "se 100K": 0.1},
                  {"rung": "paper DiT-XL/2", "params": 6.75e8, "tokens": 256, "learnable/best 100K": 0.77,
                   "claim 2": "held", "se 100K": None}]).to_csv(tmp_path / "tables" / "12_scale.csv", index=False)
    pd.DataFrame({"claim": [2], "trend": ["Claim 2 (learnable beats every baseline): 'not held' at cpu."]}).to_csv(
        tmp_path / "tables" / "12_scale_trend.csv", index=False)
    (tmp_path / "scale_clock.json").write_text(json.dumps({"attempts": [
        {"from_empty": True, "finished": False, "elapsed_s": 3600.0, "rungs": ["cpu", "cpu-w128"]},
        {"from_empty": False, "finished": True, "elapsed_s": 1800.0}]}))
    text = summary.write_summary(study, *summary.collect(study)).read_text()
    section = text[text.index("## The scale ladder (notebook 12, `make scale`; rungs cpu)"):]
    assert "**Part of the ladder**" not in section                          # the root is not a profile's
    assert "| 2.270 |" in section and "se 100K" not in section           # the main columns, not the standard errors
    assert "- Claim 2 (learnable beats every baseline): 'not held' at cpu." in section
    assert "1.50 hours over 2 attempt(s)" in section                      # the part-ladder attempt counts
    (tmp_path / "scale_clock.json").write_text(json.dumps({"attempts": [
        {"from_empty": True, "finished": False, "elapsed_s": 3600.0, "rungs": ["cpu", "cpu-w128"]}]}))
    assert "has not finished the whole ladder" in "\n".join(summary.scale_section(tmp_path))   # a part-ladder run
    done = {"started": "2026-12-05 13:33:28", "from_empty": True, "finished": True, "elapsed_s": 36000.0}
    killed = {"started": "2026-12-06 09:00:00", "from_empty": True, "finished": False, "elapsed_s": 600.0}
    (tmp_path / "scale_clock.json").write_text(json.dumps({"attempts": [done, killed]}))
    assert "10.00 hours over 1 attempt(s)" in "\n".join(summary.scale_section(tmp_path))  # a killed run does not count
    monkeypatch.setenv("TINYFUSION_ATTEMPT", killed["started"])   # notebook 12 runs inside it, before its clock stops
    assert "0.17 hours over 1 attempt(s)" in "\n".join(summary.scale_section(tmp_path))
    monkeypatch.delenv("TINYFUSION_ATTEMPT")
    (tmp_path / "cpu" / "tables").mkdir(parents=True)
    shutil.copy(tmp_path / "tables" / "12_scale.csv", tmp_path / "cpu" / "tables")
    shutil.copy(tmp_path / "scale_clock.json", tmp_path / "cpu")
    part = "\n".join(summary.scale_section(tmp_path / "cpu"))
    assert "**Part of the ladder** (`make scale RUNGS=cpu`)" in part
    assert "has not finished the whole ladder" in part                   # a part of the ladder has no study time
    assert "teacher_cpu" not in part                                     # no teachers table: the notebook saved none
    pd.DataFrame([{"rung": "cpu", "teacher": "data/teacher_cpu.pt", "training h": 1.21, "threads": 2}]).to_csv(
        tmp_path / "cpu" / "tables" / "12_teacher_budgets.csv", index=False)
    assert "| data/teacher_cpu.pt |" in "\n".join(summary.scale_section(tmp_path / "cpu"))


def test_the_progress_line_says_where_the_run_is_and_what_is_left():
    todo = [Path(f"{i:02d}_x.ipynb") for i in range(3)]
    line = rep.progress_line(1, todo, 125.0, {"00_x.ipynb": 60.0, "01_x.ipynb": 3000.0, "02_x.ipynb": 900.0}, "cpu")
    assert line == ("[reproduce] notebook 2 of 3: 01_x.ipynb (profile=cpu); 2 min elapsed, left: about 1 h 05 min "
                    "(the last finished run's times)")
    assert "left: unknown" in rep.progress_line(0, todo, 0.0, {"00_x.ipynb": 1.0}, "cpu")


def test_the_time_left_spans_a_cached_rerun_and_a_run_from_an_empty_cache():
    # notebook 01 took 2 h from an empty cache, then 30 s when its steps were cached; a failed attempt does not count
    timings = {"runs": [{"notebooks": {"00_x.ipynb": {"seconds": 20.0}, "01_x.ipynb": {"seconds": 7200.0}}},
                        {"notebooks": {"01_x.ipynb": {"seconds": 9999.0, "failed": True}}},
                        {"notebooks": {"00_x.ipynb": {"seconds": 15.0}, "01_x.ipynb": {"seconds": 30.0}}},
                        # a run on part of the scale ladder is another workload: not the notebook's slowest
                        {"notebooks": {"01_x.ipynb": {"seconds": 9000.0}}, "rungs": ["cpu", "cpu-w128"]}],
               "latest": {"00_x.ipynb": 15.0, "01_x.ipynb": 30.0}}
    times = rep.notebook_times(timings)
    assert times == {"00_x.ipynb": (15.0, 20.0), "01_x.ipynb": (30.0, 7200.0)}
    todo = [Path("00_x.ipynb"), Path("01_x.ipynb")]
    line = rep.progress_line(0, todo, 0.0, times, "cpu")
    assert "left: 1 min to 2 h 00 min (the last finished run's times" in line and "slowest" in line
    line = rep.progress_line(0, todo, 0.0, times, "cpu", borrowed="results/cpu/timings.json")
    assert line.endswith("; times of notebooks never finished here from results/cpu/timings.json")
    assert "about 0 min" in rep.progress_line(0, todo[:1], 0.0, times, "cpu")  # 15 vs 20 s: one estimate


def test_notebooks_run_on_a_kernel_over_ipc_without_the_tcp_warning(tmp_path, monkeypatch, capfd):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "00_a.ipynb", ["profile = 'smoke'", "print('ran')"], parameters=True)
    monkeypatch.setattr(rep, "NOTEBOOKS", nbdir)
    rep.reproduce("smoke", results_root=tmp_path / "res", progress=False)
    out = capfd.readouterr()
    assert "without encryption" not in out.out + out.err and "notebook 1 of 1: 00_a.ipynb" in out.out
    assert rep._kernel_manager()().transport == "ipc"


def test_the_scale_clock_is_from_empty_when_its_new_rungs_caches_are(tmp_path):
    """Today's rung of the scale ladder reuses make reproduce's cache, so the scale study's clock checks the caches of
    the rungs it adds; the other studies check their profile's."""
    from tinyfusion.cli.reproduce import Clock, checked_roots
    root = tmp_path / "cpu"
    assert checked_roots("scale", "cpu", root) == [tmp_path / "cpu-w128", tmp_path / "cpu-t49"]
    assert checked_roots("robustness", "cpu", root) == [root] and checked_roots("main", "cpu", root) == [root]
    (root / "finetune" / "run-abc").mkdir(parents=True)   # today's rung: filled by make reproduce
    c = Clock(root, "cpu", every=0.05, name="scale_clock.json", checked=checked_roots("scale", "cpu", root))
    c.stop(finished=False)
    (tmp_path / "cpu-t49" / "scores" / "run-x").mkdir(parents=True)  # a rung's cache from an earlier attempt
    c = Clock(root, "cpu", every=0.05, name="scale_clock.json", checked=checked_roots("scale", "cpu", root))
    c.stop(finished=True)
    attempts = json.loads((root / "scale_clock.json").read_text())["attempts"]
    assert [a["from_empty"] for a in attempts] == [True, False]
    assert attempts[0]["checked"] == ["cpu-w128", "cpu-t49"]


def test_part_of_the_scale_ladder_runs_on_the_clock_as_an_unfinished_attempt_beside_the_result(tmp_path, monkeypatch):
    """``--rungs`` (make scale RUNGS=...): the rungs reach the notebook as its parameter, the attempt is clocked but
    does not finish the study, and the executed copy and "latest" time stay the whole ladder's."""
    for bad, says in [(("smoke-t49",), "'smoke' first"), (("smoke", "cpu-w128"), "smoke,smoke-t49"),
                      (("smoke", "smoke"), "each once"), (("smoke",), "at least one rung after it")]:
        with pytest.raises(SystemExit, match=says):
            rep.part_ladder("scale", "smoke", ",".join(bad))
    with pytest.raises(SystemExit, match="not the main study"):
        rep.part_ladder("main", "smoke", "smoke")
    assert rep.part_ladder("scale", "smoke", "smoke, smoke-t49") is None   # the whole ladder is the plain run
    assert rep.part_ladder("scale", "cpu", "cpu,cpu-t49,cpu-w128") is None and rep.part_ladder(
        "scale", "cpu", "cpu,cpu-t49") == ["cpu", "cpu-t49"]
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "12_scale.ipynb", ["profile = 'cpu'\nrungs = None", "print(f'rungs={rungs}')"], True)
    monkeypatch.setattr(rep, "NOTEBOOKS", nbdir)
    monkeypatch.delenv("TINYFUSION_RESULTS", raising=False)
    monkeypatch.setitem(rep.__dict__, "part_ladder", lambda study, profile, rungs: ["smoke"])   # a one-rung ladder
    rep.reproduce("smoke", results_root=tmp_path / "res", progress=False, study="scale", rungs="smoke")
    out = tmp_path / "res" / "smoke"
    assert not (out / "notebooks" / "12_scale.ipynb").exists()
    assert "rungs=smoke" in (out / "partial" / "12_scale__smoke.ipynb").read_text()
    (attempt,) = json.loads((out / "scale_clock.json").read_text())["attempts"]
    assert attempt["rungs"] == ["smoke"] and attempt["finished"] is False and attempt["notebooks_done"] == ["12_scale.ipynb"]
    timings = json.loads((out / "timings.json").read_text())
    assert "12_scale.ipynb" not in timings.get("latest", {}) and timings["runs"][-1]["rungs"] == ["smoke"]
    r = subprocess.run([sys.executable, "-m", "tinyfusion.cli.reproduce", "--help"], capture_output=True, text=True)
    assert "--rungs RUNG[,RUNG...]" in r.stdout


def test_a_notebook_run_for_a_saved_copy_gets_text_progress_bars(monkeypatch):
    """Under papermill (cli.reproduce sets TINYFUSION_TEXT_BARS for its kernels) every loop's bar is tqdm's text bar,
    whose last state a saved copy keeps; elsewhere tqdm.auto picks (the widget in an interactive kernel)."""
    import importlib

    import tqdm.auto
    import tqdm.std

    from tinyfusion import progress
    monkeypatch.setenv("TINYFUSION_TEXT_BARS", "1")
    assert importlib.reload(progress).tqdm is tqdm.std.tqdm
    monkeypatch.delenv("TINYFUSION_TEXT_BARS")
    assert importlib.reload(progress).tqdm is tqdm.auto.tqdm
    seen = {}
    monkeypatch.setattr(rep, "_run_all", lambda *a: seen.update(bars=os.environ.get("TINYFUSION_TEXT_BARS")) or {})
    rep.reproduce("smoke")
    assert seen["bars"] == "1" and "TINYFUSION_TEXT_BARS" not in os.environ   # set for the run, restored after
