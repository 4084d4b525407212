"""The environment files agree, and the package imports with the pinned versions."""
import re
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
