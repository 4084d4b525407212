"""The environment files agree, and the package imports with the pinned versions."""
import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _req(spec):
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec.strip())
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = dict(_req(s) for s in pip if not s.startswith("-e"))
    py_pins = dict(_req(s) for s in deps)
    assert conda_pins == py_pins


def test_torch_pin_is_the_installed_one():
    import torch
    import torchvision
    deps = dict(_req(s) for s in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert torch.__version__.split("+")[0] == deps["torch"].lstrip("=")
    assert torchvision.__version__.split("+")[0] == deps["torchvision"].lstrip("=")


def _make(*args):
    """``make -o setup ARGS``: the target without building .venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
    return subprocess.run(["make", "--no-print-directory", "-o", "setup", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def test_make_lab_works_for_root_and_takes_lab_args_and_make_notebook_runs_one():
    lab = _make("-n", "lab", "LAB_ARGS=--port=8890 --ip=0.0.0.0").stdout.split()
    assert lab[:2] == [".venv/bin/jupyter", "lab"] and lab[-3:] == ["--port=8890", "--ip=0.0.0.0", "notebooks/"]
    assert ("--allow-root" in lab) == (os.getuid() == 0)  # jupyter refuses root without it (Docker, cloud VMs)
    assert "-m tinyfusion.cli.reproduce --profile smoke --only 07" in _make("-n", "notebook", "NB=07",
                                                                          "PROFILE=smoke").stdout
    r = _make("notebook")
    assert r.returncode != 0 and "usage: make notebook NB=07" in r.stdout


def test_tqdm_finds_ipywidgets_for_notebook_progress_bars():
    from tqdm import notebook
    assert notebook.IProgress is not None  # else every notebook starts with "TqdmWarning: IProgress not found"
