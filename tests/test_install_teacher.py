"""tools/install_teacher.py: a finished pre-training run becomes a profile's shipped teacher, checked on the way."""
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture
def run(tmp_path, monkeypatch):
    from tinyfusion import profiles
    dest = tmp_path / "data" / "teacher_rung.pt"
    monkeypatch.setitem(profiles.PROFILES, "cpu-w128", replace(profiles.PROFILES["cpu"], name="cpu-w128",
                                                               teacher=str(dest)))
    folder = tmp_path / "pretrain"
    folder.mkdir()
    shutil.copy(ROOT / "data" / "teacher_cpu_seed1.pt", folder / "teacher.pt")  # a finished cpu run, as shipped
    shutil.copy(ROOT / "data" / "teacher_cpu_seed1.pt.sha256", folder / "teacher.pt.sha256")
    shutil.copy(ROOT / "data" / "teacher_cpu_seed1.json", folder / "summary.json")
    return folder, dest


def test_a_finished_run_is_installed_with_its_record_and_log(run, capsys):
    import install_teacher
    from tinyfusion.io import check_integrity
    from tinyfusion.models.registry import load_model
    folder, dest = run
    install_teacher.main([str(folder), "--profile", "cpu-w128"])
    assert "installed" in capsys.readouterr().out
    check_integrity(dest)                                            # its own record, naming the new file
    assert dest.with_name(dest.name + ".sha256").read_text().split()[1] == dest.name
    assert json.loads(dest.with_suffix(".json").read_text())["steps"] == 12000
    assert load_model(dest).config["hidden_size"] == 64
    install_teacher.install(folder, "cpu-w128")                      # the same file again: nothing to refuse


def test_refused_unfinished_another_model_altered_or_a_different_teacher_in_place(run, monkeypatch):
    import install_teacher
    from tinyfusion import profiles
    from tinyfusion.io import CorruptArtefactError
    folder, dest = run
    (folder / "summary.json").rename(folder / "later.json")
    with pytest.raises(SystemExit, match="has not finished; resume it with"):
        install_teacher.install(folder, "cpu-w128")
    (folder / "later.json").rename(folder / "summary.json")
    monkeypatch.setitem(profiles.PROFILES, "cpu-w128", replace(profiles.PROFILES["cpu-w128"], model="DiT-T28/4-w128"))
    with pytest.raises(SystemExit, match="is not a DiT-T28/4-w128.*hidden_size"):
        install_teacher.install(folder, "cpu-w128")
    monkeypatch.setitem(profiles.PROFILES, "cpu-w128", replace(profiles.PROFILES["cpu-w128"], model="DiT-T28/4"))
    dest.parent.mkdir()
    dest.write_bytes(b"another teacher")
    with pytest.raises(SystemExit, match="already holds another teacher; pass --force"):
        install_teacher.install(folder, "cpu-w128")
    assert dest.read_bytes() == b"another teacher"                  # nothing lost
    data = bytearray((folder / "teacher.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "teacher.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptArtefactError):
        install_teacher.install(folder, "cpu-w128", force=True)
    assert dest.read_bytes() == b"another teacher"
