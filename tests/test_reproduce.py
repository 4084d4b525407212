"""The papermill driver: every expected figure, table and summary appears; a failing notebook stops the run."""
import json
import os
from pathlib import Path

import nbformat
import pytest

import tinyfusion.cli.reproduce as rep

FIGURES = ["00_data_grid", "00_teacher_samples", "01_calibration_histogram", "01_kept_layers", "01_calib_vs_fid",
           "02_decision_dynamics", "02_kept_vs_baselines", "03_scheme_ablation", "04_lora_vs_full",
           "05_massive_activations", "06_kd_loss_curves", "07_speedup"]
TABLES = ["00_teacher_metrics", "01_table3", "01_table3_runs", "02_block_confidence", "table4_runs", "05_summary",
          "06_table5", "07_speedup", "08_table7"]


def test_reproduce_smoke_writes_every_artefact(tmp_path_factory):
    root = os.environ.get("TINYFUSION_RESULTS") or str(tmp_path_factory.mktemp("results"))
    rep.reproduce("smoke", results_root=root, progress=False)
    out = Path(root) / "smoke"
    missing = [f for f in FIGURES if not (out / "figures" / f"{f}.png").exists()]
    missing += [t for t in TABLES if not (out / "tables" / f"{t}.csv").exists()]
    assert not missing, missing
    assert len(list((out / "notebooks").glob("*.ipynb"))) == len(rep.notebooks())
    summary = (out / "summary.md").read_text()
    assert "Verdicts" in summary and summary.count("| ") > 20
    assert ", this run (s)" in summary  # 09 runs inside the run: its own timings (00-08) are in the table
    for claim in range(1, 9):
        v = json.loads((out / "verdicts" / f"claim{claim}.json").read_text())
        assert v["status"] in ("held", "not held", "mixed", "within noise")
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["latest"]) >= {p.name for p in rep.notebooks()}


def _notebook(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


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
    kept = tmp_path / "res" / "smoke" / "notebooks" / "01_broken.ipynb"
    assert kept.exists() and "planted failure" in kept.read_text()
    assert not (tmp_path / "res" / "smoke" / "notebooks" / "02_never.ipynb").exists()


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


def test_beyond_noise_needs_twice_the_seed_spread():
    from tinyfusion.study import beyond_noise
    assert beyond_noise(1.0, 1.5, 0.1) == "a" and beyond_noise(1.5, 1.0, 0.1) == "b"
    assert beyond_noise(1.0, 1.15, 0.1) == "within noise"
    assert beyond_noise(1.0, 1.01, float("nan")) == "a"  # no yardstick: the raw order
