"""One cache keyed by the resolved config: every setting a step reads, and its input files' contents."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyfusion import cache


@pytest.fixture
def results_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.fixture
def calls(monkeypatch):
    """Replace the compute of learnable pruning, recovery and scoring by counters (no training here)."""
    from tinyfusion import recovery, sampling
    from tinyfusion.pruning import learnable  # the entry points import these names when they run
    seen = []

    def record(kind):
        def fn(config, out, *a, **k):
            seen.append((kind, Path(out)))
            made = Path(out) if Path(out).suffix else Path(out) / "model.pt"  # the artefact a record names exists
            made.parent.mkdir(parents=True, exist_ok=True)
            made.write_bytes(b"artefact")
            return {"model": str(Path(out) / "model.pt"), "kept": [0, 1]}
        return fn
    for module, name, kind in ((learnable, "run_learnable", "prune_learn"), (recovery, "run_recovery", "finetune")):
        monkeypatch.setattr(module, name, record(kind))
    monkeypatch.setattr(sampling, "sample_checkpoint", record("sample"))
    monkeypatch.setattr(sampling, "score_samples", lambda config, path: {"fid": 1.0})
    return seen


def _tiny_teacher(path):
    from tinyfusion.io import save_checkpoint
    from tinyfusion.models import DiT
    m = DiT(input_size=16, patch_size=4, in_channels=1, hidden_size=16, depth=4, num_heads=2, num_classes=10)
    save_checkpoint({"ema": m.state_dict(), "config": m.config}, path)
    return path


def test_every_setting_a_step_reads_is_in_its_key(results_env, calls):
    from tinyfusion.profiles import get_profile
    from tinyfusion.study import Study

    teacher = _tiny_teacher(results_env / "teacher.pt")
    evaluator = results_env / "evaluator.pt"
    evaluator.write_bytes(b"evaluator weights, version 1")
    student = _tiny_teacher(results_env / "student.pt")  # scoring reads its objective from the checkpoint

    def run(**overrides):
        s = Study(get_profile("smoke", teacher=str(teacher), evaluator=str(evaluator), **overrides))
        s.learnable("1:2", "lora", seed=0)
        s.finetune(student, kept=[0, 2])
        s.score(student)
        return [kind for kind, _ in calls]

    assert run() == ["prune_learn", "finetune", "sample"]
    assert run() == ["prune_learn", "finetune", "sample"]  # the same config: everything reused
    for change, recomputed in [({"finetune_batch": 8}, "finetune"), ({"finetune_lr": 1e-4}, "finetune"),
                               ({"prune_lr": 3e-4}, "prune_learn"), ({"batch_eval": 16}, "sample")]:
        before = len(calls)
        run(**change)
        assert [k for k, _ in calls[before:]] == [recomputed], change
    before = len(calls)
    evaluator.write_bytes(b"evaluator weights, version 2: retrained")  # same path, new contents
    run()
    assert [k for k, _ in calls[before:]] == ["sample"]  # old scores are not reused with a new evaluator
    before = len(calls)
    _tiny_teacher(student)  # new weights at the same path
    run()
    assert [k for k, _ in calls[before:]] == ["finetune", "sample"]
    assert len({out for _, out in calls}) == len(calls)  # each recompute went to its own folder


def test_the_entry_point_and_the_study_share_one_folder(results_env, calls):
    from tinyfusion.cli import finetune
    from tinyfusion.study import Study

    student = results_env / "student.pt"
    student.write_bytes(b"a pruned model")
    Study("smoke").finetune(student, kept=[0, 2], name="x")
    res = finetune.run(profile="smoke", student=str(student), kept=[0, 2])
    assert res["cached"] is True and len(calls) == 1  # the CLI found the notebook's run


def test_cached_records_last_and_skips_stopped_runs(tmp_path):
    config = {"steps": 3, "input": tmp_path / "in.txt"}
    config["input"].write_text("a")
    out = cache.folder(tmp_path, "kind", "label", config)
    runs = []

    def stopped(folder):
        runs.append(folder)
        return {"stopped_at": 1}
    assert cache.cached(out, config, stopped)["stopped_at"] == 1
    assert not cache.done(out, config)  # a stopped run is resumed next time, not reused
    assert cache.cached(out, config, lambda f: runs.append(f) or {"v": (1, 2)}) == {"v": [1, 2]}
    assert cache.done(out, config) and len(runs) == 2
    assert cache.cached(out, config, lambda f: runs.append(f) or {"v": 0}) == {"v": [1, 2]} and len(runs) == 2
    assert cache.fingerprint(config)["input"].startswith(str(config["input"]) + "@")
    config["input"].write_text("b")
    assert not cache.done(out, config) and cache.folder(tmp_path, "kind", "label", config) != out


def test_a_state_written_for_another_student_is_not_resumed(tmp_path):
    """Same flags, same --out, a different student file of the same shape: the saved state is refused."""
    from tinyfusion.io import save_checkpoint
    from tinyfusion.models import DiT
    from tinyfusion.recovery import recovery_config, run_recovery

    def student(seed):
        torch.manual_seed(seed)
        m = DiT(input_size=16, patch_size=4, in_channels=1, hidden_size=16, depth=2, num_heads=2, num_classes=10)
        save_checkpoint({"ema": m.state_dict(), "config": m.config, "kept": [0, 1]}, tmp_path / "student.pt")
    student(0)
    config = recovery_config("smoke", student=tmp_path / "student.pt", steps=3, batch_size=4)
    assert run_recovery(config, tmp_path / "out", stop_after=1, progress=False)["stopped_at"] == 1
    student(1)  # replaced at the same path
    config = recovery_config("smoke", student=tmp_path / "student.pt", steps=3, batch_size=4)
    with pytest.raises(ValueError, match="was written by another run.*student"):
        run_recovery(config, tmp_path / "out", progress=False)


def test_study_under_torchrun_reuses_its_cache_and_refuses_a_config_that_does_not_reach_the_entry_point(
        results_env, calls, monkeypatch):
    """nproc > 1: the entry point runs (here in-process) with the resolved settings as flags, resolves the same
    config into the same folder, and is not launched again for a finished step."""
    import importlib

    from tinyfusion import launch as launch_mod
    from tinyfusion.profiles import get_profile
    from tinyfusion.study import Study

    launched = []

    def fake_launch(entry, nproc=1, **flags):
        launched.append((entry, nproc))
        return importlib.import_module(entry).run(**flags)
    monkeypatch.setattr(launch_mod, "launch", fake_launch)
    teacher = _tiny_teacher(results_env / "teacher.pt")
    student = _tiny_teacher(results_env / "student.pt")   # the entry point checks it fits the profile's images
    study = Study(get_profile("smoke", nproc=2, finetune_steps=7, prune_lr=3e-4))
    study.learnable("1:2", "lora", seed=0, source=teacher)
    study.finetune(student, kept=[0, 2])
    assert launched == [("tinyfusion.cli.prune_learn", 2), ("tinyfusion.cli.finetune", 2)]
    assert [k for k, _ in calls] == ["prune_learn", "finetune"]
    study.learnable("1:2", "lora", seed=0, source=teacher)
    study.finetune(student, kept=[0, 2])
    assert len(launched) == 2 and len(calls) == 2  # finished: no torchrun start at all
    with pytest.raises(RuntimeError, match="does not reach the entry point"):
        Study(get_profile("smoke", nproc=2, data_limit=100)).finetune(student, kept=[0, 2])


def test_recompute_runs_again_and_unfinished_runs_resume_under_any_label(tmp_path):
    config = {"a": 1}
    out = cache.folder(tmp_path, "kind", "first", config)
    out.mkdir(parents=True)
    (out / "state.pt").write_text("half-way")
    assert cache.folder(tmp_path, "kind", "other-label", config) == out  # the unfinished run is resumed there
    assert cache.cached(out, config, lambda f: {"v": 1}) == {"v": 1}
    assert cache.cached(out, config, lambda f: {"v": 2}, recompute=True) == {"v": 2}
    assert not (out / "state.pt").exists()  # a recompute does not resume the finished state


def test_a_full_finished_folder_is_found_before_a_lean_copy_of_the_same_key(tmp_path):
    """Two finished folders of one key under two labels, the first in name order a lean copy (its model left
    behind): the step resolves to the one that still has its files, so nothing errors on the missing model."""
    from tinyfusion.io import save_json
    config = {"a": 1}
    lean, full = (tmp_path / "kind" / f"{label}-{cache.key(config)}" for label in ("a-lean", "b-full"))
    for p in (lean, full):
        p.mkdir(parents=True)
    save_json({"v": 1, cache.OMITTED: {"model.pt": "0" * 64}}, lean / cache.RECORD)
    save_json({"v": 1}, full / cache.RECORD)
    assert cache.folder(tmp_path, "kind", "any", config) == full
    (full / cache.RECORD).unlink()   # the full one unfinished: the lean finished copy comes first
    assert cache.folder(tmp_path, "kind", "any", config) == lean


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_fine_tune_budgets_spend_the_papers_share_of_the_teachers_pretraining(name):
    """finetune_steps / finetune_long spend 1.4% / 7% of the teacher's pre-training samples, the shares the issue
    states for the paper's 100K / 500K after DiT-XL/2's 7M steps (exactly 1/70 and 1/14; rounded); the last curve point is at least 4x the 7% point; LoRA's rank is the one whose trainable fraction is
    closest to the paper's ~0.9%."""
    from tinyfusion.profiles import get_profile
    from tinyfusion.pruning.learnable import trainable_fraction
    p = get_profile(name)
    samples = p.pretrain_steps * p.pretrain_batch
    assert p.finetune_steps == round(0.014 * samples / p.finetune_batch)
    assert p.finetune_long == round(0.07 * samples / p.finetune_batch)
    assert p.finetune_steps in p.curve_points and p.finetune_long in p.curve_points
    assert p.curve_points[-1] >= 4 * p.finetune_long and list(p.curve_points) == sorted(p.curve_points)
    closest = min(range(1, 17), key=lambda r: abs(trainable_fraction(p.model, "lora", r) - 0.009))
    assert p.lora_rank == closest


def test_records_are_relocatable_a_moved_root_is_reused_without_recomputing(tmp_path, monkeypatch):
    """A record stores the paths inside its folder as $OUT/... and the rest of the results root as $RESULTS/..., and a
    key names a file of the root by its place in it: a whole root moved elsewhere, or one finished step copied by
    copy_step (tools/copy_steps.py) into another root, is found and reused with its paths pointing at the new place;
    the resumable state is not copied."""
    import shutil

    from tinyfusion.io import load_json
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    monkeypatch.setenv("TINYFUSION_RESULTS", str(a))
    upstream = a / "cpu" / "pruned" / "x" / "model.pt"
    upstream.parent.mkdir(parents=True)
    upstream.write_bytes(b"student")
    config = {"student": upstream, "steps": 3}
    ran = []

    def compute(out):
        ran.append(out)
        (out / "model.pt").write_bytes(b"weights")
        (out / "state.pt").write_bytes(b"resume")
        return {"model": str(out / "model.pt"), "student": str(upstream), "teacher": "/elsewhere/t.pt", "n": 1}
    out_a = cache.folder(a / "cpu", "finetune", "ft", config)
    first = cache.cached(out_a, config, compute)
    stored = load_json(out_a / cache.RECORD)
    assert stored["result"]["model"] == "$OUT/model.pt" and stored["result"]["student"] == "$RESULTS/cpu/pruned/x/model.pt"
    assert stored["config"]["student"].startswith("$RESULTS/cpu/pruned/x/model.pt@")
    assert first["model"] == str((out_a / "model.pt").resolve()) and first["teacher"] == "/elsewhere/t.pt"

    shutil.move(a, b)  # the whole root moves
    monkeypatch.setenv("TINYFUSION_RESULTS", str(b))
    config_b = {"student": b / "cpu" / "pruned" / "x" / "model.pt", "steps": 3}
    out_b = cache.folder(b / "cpu", "finetune", "ft", config_b)
    assert out_b.name == out_a.name  # the same key
    again = cache.cached(out_b, config_b, compute)
    assert len(ran) == 1 and again["model"] == str((out_b / "model.pt").resolve())
    assert again["student"] == str(config_b["student"].resolve())

    copied = cache.copy_step(out_b, c / "cpu" / "finetune" / out_b.name, b, c)  # one step into a third root
    assert {p.name for p in copied} == {"model.pt", cache.RECORD}
    monkeypatch.setenv("TINYFUSION_RESULTS", str(c))
    shutil.copytree(b / "cpu" / "pruned", c / "cpu" / "pruned")
    config_c = {"student": c / "cpu" / "pruned" / "x" / "model.pt", "steps": 3}
    out_c = cache.folder(c / "cpu", "finetune", "ft", config_c)
    assert out_c == c / "cpu" / "finetune" / out_b.name and not (out_c / "state.pt").exists()
    assert cache.cached(out_c, config_c, compute)["model"] == str((out_c / "model.pt").resolve()) and len(ran) == 1


def test_a_lean_copy_carries_a_studys_numbers_without_its_models_and_reuses_every_score(tmp_path, monkeypatch):
    """copy_step(lean=True) leaves models and samples behind with their SHA-256 in the record (and each model's
    skeleton): carried to another root and back, the fine-tune counts as done, the score that read its model keeps
    its key and is reused with nothing recomputed, loading the left-behind weights says which folder to delete, and
    deleting it recomputes."""
    import shutil

    from tinyfusion.io import checkpoint_skeleton, load_checkpoint, load_json, sha256
    a, carry, b = tmp_path / "a", tmp_path / "carry", tmp_path / "b"
    ran = []

    def finetune(out):
        ran.append("finetune")
        torch.save({"w": torch.ones(2)}, out / "model.pt")
        return {"model": str(out / "model.pt"), "steps": 3}

    def score(checkpoint):
        def compute(out):
            ran.append("score")
            np.savez(out / "samples.npz", x=np.zeros(2))
            return {"fid": 1.5, "samples": str(out / "samples.npz")}
        return compute

    def run(root):
        monkeypatch.setenv("TINYFUSION_RESULTS", str(root))
        ft_config = {"steps": 3}
        ft_out = cache.folder(root / "cpu", "finetune", "ft", ft_config)
        model = Path(cache.cached(ft_out, ft_config, finetune)["model"])
        sc_config = {"checkpoint": model, "n": 10}
        sc_out = cache.folder(root / "cpu", "scores", "sc", sc_config)
        return ft_out, sc_out, cache.cached(sc_out, sc_config, score(model))

    ft_a, sc_a, first = run(a)
    assert ran == ["finetune", "score"]
    for step in (ft_a, sc_a):   # to the carry, lean, and from it into a root that lost everything
        kind = step.parent.name
        lean = cache.copy_step(step, carry / "cpu" / kind / step.name, a, carry, lean=True)
        assert not [f for f in lean if f.suffix in (".pt", ".npz")]
        cache.copy_step(carry / "cpu" / kind / step.name, b / "cpu" / kind / step.name, carry, b)
    record = load_json(b / "cpu" / "finetune" / ft_a.name / cache.RECORD)
    assert record[cache.OMITTED] == {"model.pt": sha256(ft_a / "model.pt")}
    ft_b, sc_b, again = run(b)
    assert (ft_b.name, sc_b.name) == (ft_a.name, sc_a.name)      # the same keys: the score's names the model's hash
    assert again["fid"] == first["fid"] and ran == ["finetune", "score"]   # nothing recomputed
    assert not (ft_b / "model.pt").exists()
    assert checkpoint_skeleton(ft_b / "model.pt")["w"].shape == (2,)   # its skeleton stays: a score config reads it
    with pytest.raises(FileNotFoundError, match=f"{ft_b}.*lean copy.*delete that folder"):
        load_checkpoint(ft_b / "model.pt")
    shutil.rmtree(ft_b)   # what the error says: the step runs again, and its score with the new model's hash
    run(b)
    assert ran[2] == "finetune"   # (its score too, unless the new model.pt has the old one's bytes)
    assert (ft_b / "model.pt").exists() and cache.OMITTED not in load_json(ft_b / cache.RECORD)


def test_a_repository_file_has_one_name_in_the_work_tree_and_in_a_clone_inside_the_results_root(tmp_path, monkeypatch):
    """tools/background.sh clones the repository into RESULTS/tree: a shipped teacher there is named by its place in
    the repository (the nearer base), as in the work tree, so both compute the same keys; a step's output in the
    default root (results/, inside the repository) is still named by its place in the root."""
    import tinyfusion.profiles as profiles
    work, root = tmp_path / "work", tmp_path / "tf_results"
    for repo in (work, root / "tree"):
        (repo / "data").mkdir(parents=True)
        (repo / "data" / "teacher.pt").write_bytes(b"teacher")
    ids = []
    for repo in (work, root / "tree"):
        monkeypatch.setattr(profiles, "ROOT", repo)
        monkeypatch.setenv("TINYFUSION_RESULTS", str(root))
        ids.append(cache.file_id(repo / "data" / "teacher.pt"))
    assert ids[0] == ids[1] and ids[0].startswith("data/teacher.pt@")
    monkeypatch.setattr(profiles, "ROOT", work)
    monkeypatch.delenv("TINYFUSION_RESULTS")
    (work / "results" / "cpu" / "finetune" / "x").mkdir(parents=True)
    (work / "results" / "cpu" / "finetune" / "x" / "model.pt").write_bytes(b"m")
    assert cache.file_id(work / "results" / "cpu" / "finetune" / "x" / "model.pt").startswith("$RESULTS/cpu/finetune/x/model.pt@")
    assert cache.file_id(tmp_path / "elsewhere.pt") == str(tmp_path / "elsewhere.pt")
