"""Reliability: every training entry point survives a SIGKILL mid-run and resumes to the same weights;
artefacts are written atomically and a damaged one is named; ``Study.cached`` keys are right; bad input fails
early with a message that names the parameter."""
import importlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyfusion import io as tio
from tinyfusion.io import CorruptArtefactError, load_checkpoint, save_checkpoint
from tinyfusion.models import build_model, load_dit
from tinyfusion.pruning.indices import prune

ROOT = Path(__file__).resolve().parent.parent
MODEL = "DiT-T28/4"  # the cpu/smoke teacher's config (data/teacher_cpu.pt)


def random_dit(depth, seed=0):
    """A DiT-T28/4 of ``depth`` layers whose blocks do something (adaLN-Zero would start them as identities)."""
    torch.manual_seed(seed)
    model = build_model(MODEL, depth=depth)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(0, 0.05)
    return model


def save_dit(model, path, **extra):
    save_checkpoint({"ema": model.state_dict(), "config": model.config, **extra}, path)
    return str(path)


def leftover_temps(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.tmp"))


# =========================================================================== 1. SIGKILL mid-run, then resume
def child_env(tmp_path):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TINYFUSION_RESULTS": str(tmp_path / "results"),
            "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def spawn(args, tmp_path, log):
    """Start ``python <args>`` (niced like this process, output to ``log``)."""
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=child_env(tmp_path), stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def kill_at_first_checkpoint(proc, state, log, timeout=300):
    """SIGKILL ``proc`` as soon as ``state`` exists; fail (with its output) if it exited first."""
    end = time.monotonic() + timeout
    while not state.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run exited (rc {proc.returncode}) before writing {state}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {state} after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, (
        f"the run had already finished when it was killed: give it more steps\n{log.read_text()[-3000:]}")


def run_to_end(args, tmp_path, log):
    proc = spawn(args, tmp_path, log)
    try:
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_close_dicts(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        if not torch.is_tensor(a[k]):  # e.g. the gates' decision history (their extra state)
            continue
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), f"{what}: {k} differs by {(a[k] - b[k]).abs().max()}"


# module, steps (enough that the run is still going well after its first checkpoint), artefact, state entries
CLIS = {
    "pretrain": ("tinyfusion.cli.pretrain", 28, "teacher.pt", ("model", "ema")),
    "prune_learn": ("tinyfusion.cli.prune_learn", 24, "pruned.pt", ("gates", "weights")),
    "finetune": ("tinyfusion.cli.finetune", 80, "model.pt", ("model", "ema")),
}


def cli_flags(which, tmp_path):
    """The flags of a tiny smoke-profile run of ``which`` (teacher/student checkpoints built on the fly)."""
    module, steps, _, _ = CLIS[which]
    flags = ["--profile", "smoke", "--steps", str(steps), "--batch-size", "8", "--ckpt-every", "4"]
    if which == "pretrain":
        flags += ["--log-every", "4"]
    elif which == "prune_learn":
        teacher = save_dit(random_dit(4), tmp_path / "teacher.pt")
        flags += ["--teacher", teacher, "--groups", "1:2", "--update", "lora", "--lora-rank", "2"]
    else:
        kept = [0, 3]
        student = save_dit(prune(random_dit(4), kept), tmp_path / "student.pt", kept=kept)
        flags += ["--student", student, "--mode", "finetune", "--no-progress"]
    return module, flags


@pytest.fixture
def results_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.mark.parametrize("which", list(CLIS))
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_weights(which, results_env):
    tmp_path = results_env
    module, steps, artefact, entries = CLIS[which]
    _, flags = cli_flags(which, tmp_path)
    ref, out = tmp_path / "uninterrupted", tmp_path / "killed"
    importlib.import_module(module).main(flags + ["--out", str(ref)])  # the reference, in this process

    args = ["-m", module, *flags, "--out", str(out)]
    kill_at_first_checkpoint(spawn(args, tmp_path, tmp_path / "killed.log"), out / "state.pt",
                             tmp_path / "killed.log")
    assert not (out / artefact).exists()
    killed = load_checkpoint(out / "state.pt")  # what the kill left loads ...
    assert 0 < killed["step"] < steps  # ... and is a mid-run state
    run_to_end(args, tmp_path, tmp_path / "resumed.log")
    assert f"resuming {out / 'state.pt'} at step {killed['step']}" in (tmp_path / "resumed.log").read_text()

    a, b = load_checkpoint(ref / artefact), load_checkpoint(out / artefact)
    assert_close_dicts(a["ema"], b["ema"], artefact)
    assert a["config"] == b["config"]
    sa, sb = load_checkpoint(ref / "state.pt"), load_checkpoint(out / "state.pt")
    assert sa["step"] == sb["step"] == steps
    for key in entries:
        assert_close_dicts(sa[key], sb[key], f"state.pt[{key!r}]")
    if which == "prune_learn":
        assert tio.load_json(ref / "kept.json")["kept"] == tio.load_json(out / "kept.json")["kept"]
        history = [s_["gates"]["_extra_state"]["history"] for s_ in (sa, sb)]  # the gates carry their history
        assert [h["step"] for h in history[0]] == [h["step"] for h in history[1]] and len(history[0]) > 2
    assert len(sa["log"]) == len(sb["log"])  # no step logged twice or lost
    assert leftover_temps(out) == []


KILL_IN_SAVE = """
import io, os, signal, sys, torch
real, calls = torch.save, [0]
def save(obj, f, *a, **k):  # the 2nd checkpoint: write half of it, then die as by SIGKILL (no clean-up runs)
    calls[0] += 1
    if calls[0] == 2:
        buf = io.BytesIO(); real(obj, buf); data = buf.getvalue()
        f.write(data[:len(data) // 2]); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *a, **k)
torch.save = save
from tinyfusion.cli import pretrain
pretrain.main(sys.argv[1:])
"""


def test_sigkill_inside_a_checkpoint_write_keeps_the_last_good_state(results_env):
    """A kill while state.pt is being rewritten: the previous state.pt stays whole, the rerun resumes from it,
    ends with the uninterrupted weights, and the half-written temporary file does not outlive the rerun."""
    tmp_path = results_env
    _, flags = cli_flags("pretrain", tmp_path)
    flags[flags.index("--steps") + 1] = "12"
    ref, out = tmp_path / "uninterrupted", tmp_path / "killed"
    importlib.import_module("tinyfusion.cli.pretrain").main(flags + ["--out", str(ref)])

    log = tmp_path / "killed.log"
    proc = spawn(["-c", KILL_IN_SAVE, *flags, "--out", str(out)], tmp_path, log)
    assert proc.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    assert len(leftover_temps(out)) == 1  # the half-written state (the kill landed inside the write)
    assert load_checkpoint(out / "state.pt")["step"] == 4  # the final name still holds the last whole state

    run_to_end(["-m", "tinyfusion.cli.pretrain", *flags, "--out", str(out)], tmp_path, tmp_path / "resumed.log")
    assert "at step 4" in (tmp_path / "resumed.log").read_text()
    assert_close_dicts(load_checkpoint(ref / "teacher.pt")["ema"], load_checkpoint(out / "teacher.pt")["ema"],
                       "teacher.pt")
    assert leftover_temps(out) == []


def test_pretrain_resume_keeps_the_count_of_skipped_steps(results_env, monkeypatch):
    """A non-finite step before a stop still counts after the resume (summary and the skip limit)."""
    from tinyfusion.cli import pretrain
    from tinyfusion.diffusion import objective_for

    calls = [0]

    def nan_on_second_call(model, *a, **kw):
        d = objective_for(model, *a, **kw)
        losses = d.training_losses

        def training_losses(*a, **k):
            calls[0] += 1
            terms = losses(*a, **k)
            if calls[0] == 2:
                terms["loss"] = terms["loss"] + float("nan")
            return terms
        d.training_losses = training_losses
        return d
    monkeypatch.setattr("tinyfusion.diffusion.objective_for", nan_on_second_call)  # what pretrain calls
    cfg = dict(profile="smoke", steps=4, batch_size=8, log_every=2)
    whole = pretrain.run(**cfg, out=str(results_env / "whole"))
    assert whole["skipped_steps"] == 1
    calls[0] = 0
    assert pretrain.run(**cfg, out=str(results_env / "parts"), stop_after=2)["stopped_at"] == 2
    calls[0] = 10  # no NaN in the second session
    assert pretrain.run(**cfg, out=str(results_env / "parts"))["skipped_steps"] == 1


# =========================================================================== 2. atomic artefacts
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_checkpoint_names_the_file(tmp_path, keep):
    path = tmp_path / "model.pt"
    save_dit(random_dit(2), path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    for load in (load_checkpoint, load_dit):
        with pytest.raises(CorruptArtefactError) as e:
            load(path)
        assert str(path) in str(e.value) and "delete it and recompute it" in str(e.value)


def test_checkpoint_skeleton_reads_each_version_of_a_file_once(tmp_path, monkeypatch):
    """Facts about a checkpoint (config, keys, shapes) come from one read per version of the file; a rewrite or a
    damaged file is read again, and damage is refused as load_checkpoint refuses it."""
    path = tmp_path / "model.pt"
    model = random_dit(2)
    save_dit(model, path, kept=[0, 3])
    reads = []
    real = tio.load_checkpoint
    monkeypatch.setattr(tio, "load_checkpoint", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    first = tio.checkpoint_skeleton(path)
    assert tio.checkpoint_skeleton(path)["kept"] == [0, 3] and len(reads) == 1
    assert {k: (v.shape, v.dtype) for k, v in first["ema"].items()} == \
        {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    assert all(v.device.type == "meta" for v in first["ema"].values() if v.numel() > 64)  # small ones keep values
    assert any(v.device.type == "meta" for v in first["ema"].values())
    first["config"]["depth"] = 99  # a copy: the next caller sees the file's config
    assert tio.checkpoint_skeleton(path)["config"]["depth"] == 2
    save_dit(random_dit(3), path)  # written atomically: a new file under the same name
    assert tio.checkpoint_skeleton(path)["config"]["depth"] == 3 and len(reads) == 2
    # rewritten in place with a config of the same size and its old mtime put back: read again, and refused while
    # its integrity record still names the old content
    other = tmp_path / "other.pt"
    m3 = random_dit(3)
    save_dit(m3, path, objective="ddpm")
    save_dit(m3, other, objective="flow")
    assert tio.checkpoint_skeleton(path)["objective"] == "ddpm" and path.stat().st_size == other.stat().st_size
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(other.read_bytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CorruptArtefactError, match="model.pt"):
        tio.checkpoint_skeleton(path)
    tio.record_path(path).write_text(tio.record_path(other).read_text().replace("other.pt", "model.pt"))
    assert tio.checkpoint_skeleton(path)["objective"] == "flow"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptArtefactError, match="model.pt"):
        tio.checkpoint_skeleton(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_json_names_the_file(tmp_path, damage):
    path = tmp_path / "result.json"
    tio.save_json({"fid": 12.5, "kept": list(range(14)), "note": "±"}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncate" else b"\xff\xfe\x00\x9c")  # not even UTF-8
    with pytest.raises(CorruptArtefactError) as e:
        tio.load_json(path)
    assert str(path) in str(e.value) and "delete it and recompute it" in str(e.value)


def test_truncated_npz_names_the_file(tmp_path):
    path = tmp_path / "samples.npz"
    tio.save_npz(path, images=np.zeros((64, 16, 16, 1), np.uint8), labels=np.arange(64))
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(CorruptArtefactError) as e:
        tio.load_npz(path)
    assert str(path) in str(e.value) and "delete it and recompute it" in str(e.value)


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
@pytest.mark.parametrize("had_old", [False, True])
def test_save_interrupted_inside_torch_save_leaves_no_file(tmp_path, monkeypatch, exc, had_old):
    path = tmp_path / "run" / "model.pt"
    if had_old:
        save_checkpoint({"version": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise exc
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(type(exc)):
        save_checkpoint({"version": 2}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == (["model.pt", "model.pt.sha256"] if had_old else [])
    if had_old:
        assert load_checkpoint(path) == {"version": 1}  # the old artefact is untouched


# =========================================================================== 3. Study.cached keys
@pytest.fixture
def counting():
    calls = []

    def fn(folder):
        calls.append(Path(folder))
        (Path(folder) / "artefact.txt").write_text("x")
        return {"value": 7, "folder": str(folder)}
    fn.calls = calls
    return fn


def test_cached_reuses_and_recomputes_on_any_change(results_env, counting):
    from tinyfusion.study import Study

    study = Study("smoke")
    cfg = {"steps": 6, "groups": "1:2", "kept": [0, 3]}
    first = study.cached("kind", "name", cfg, counting)
    assert study.cached("kind", "name", dict(cfg), counting) == first and len(counting.calls) == 1
    assert Study("smoke").cached("kind", "name", cfg, counting) == first and len(counting.calls) == 1
    for change in ({"steps": 7}, {"groups": "2:4"}, {"kept": [0, 2]}, {"extra": None}):
        study.cached("kind", "name", {**cfg, **change}, counting)
    assert len(counting.calls) == 5 and len(set(counting.calls)) == 5  # one new folder per config
    Study("cpu").cached("kind", "name", cfg, counting)  # another profile: its own results, recomputed
    assert len(counting.calls) == 6 and "/cpu/" in str(counting.calls[-1])
    Study("smoke", recompute=True).cached("kind", "name", cfg, counting)
    assert len(counting.calls) == 7 and counting.calls[-1] == counting.calls[0]


def test_cached_result_is_the_same_fresh_and_reused(results_env):
    """numpy values (np.argsort's indices, float32 metrics, arrays) in a config or a result: the first call and
    every later one return the same plain JSON values, and the config is found again."""
    from tinyfusion.study import Study

    calls = []

    def fn(folder):
        calls.append(folder)
        return {"kept": np.array([0, 3]), "fid": np.float32(1.5), "pair": (1, 2)}
    study = Study("smoke")
    cfg = {"seed": np.int64(0), "kept": [np.int64(0), np.int64(3)]}
    fresh = study.cached("kind", "np", cfg, fn)
    again = study.cached("kind", "np", cfg, fn)
    assert fresh == again == {"kept": [0, 3], "fid": 1.5, "pair": [1, 2]} and len(calls) == 1


def test_failed_step_is_not_cached(results_env, counting):
    from tinyfusion.study import Study

    def fails(folder):
        raise RuntimeError("killed half-way")
    study = Study("smoke")
    with pytest.raises(RuntimeError):
        study.cached("kind", "name", {"a": 1}, fails)
    assert study.cached("kind", "name", {"a": 1}, counting)["value"] == 7 and len(counting.calls) == 1


def test_corrupt_study_json_raises_instead_of_recomputing(results_env, counting):
    from tinyfusion.study import Study

    study = Study("smoke")
    folder = Path(study.cached("kind", "name", {"a": 1}, counting)["folder"])
    done = folder / "run.json"
    done.write_text(done.read_text()[:20])
    with pytest.raises(CorruptArtefactError, match=f"{done}.*delete it and recompute it"):
        study.cached("kind", "name", {"a": 1}, counting)
    assert len(counting.calls) == 1


def test_replacing_the_teacher_invalidates_the_steps_computed_from_it(results_env, monkeypatch):
    """A retrained teacher at the same path (data/teacher_cpu.pt: provisional, then final) must not reuse the
    pruned models, decisions and baselines computed from the old one."""
    from tinyfusion import study as study_mod
    from tinyfusion.profiles import get_profile
    from tinyfusion.pruning import learnable

    teacher = results_env / "teacher.pt"
    prof = get_profile("smoke", teacher=str(teacher))
    entries = []
    monkeypatch.setattr(learnable, "run_learnable", lambda config, out: entries.append("prune_learn") or {"ok": 1})

    def steps():
        s = study_mod.Study(prof)
        path = s.pruned([0, 3])
        s.learnable(steps=2)
        s.baseline("oracle")
        return path

    save_dit(random_dit(4, seed=0), teacher)
    first = steps()
    assert steps() == first and entries == ["prune_learn"]  # unchanged teacher: everything reused
    save_dit(random_dit(4, seed=1), teacher)
    second = steps()
    assert second != first and entries == ["prune_learn"] * 2
    assert_close_dicts(load_checkpoint(second)["ema"], prune(load_dit(teacher), [0, 3]).state_dict(), "pruned")
    baselines = list((prof.results / "baselines").iterdir())
    assert len(baselines) == 2


# =========================================================================== 4. bad input, clear messages
def test_unknown_profile_names_the_valid_ones():
    from tinyfusion.profiles import PROFILES, get_profile

    with pytest.raises(ValueError) as e:
        get_profile("tiny")
    assert "'tiny'" in str(e.value) and all(name in str(e.value) for name in PROFILES)


@pytest.mark.parametrize("field, given, want", [("seeds", "0,1,2", (0, 1, 2)), ("seeds", "[0, 1]", (0, 1)),
                                                ("seeds", 3, (3,)), ("curve_points", "336, 1680", (336, 1680)),
                                                ("kd_beta", "0.0002,0", (2e-4, 0.0))])
def test_tuple_fields_take_what_papermill_passes(field, given, want):
    """papermill's -p hands "0,1,2" or 3 where a notebook means a tuple: the profile gets the tuple, not the letters."""
    from tinyfusion.profiles import get_profile
    assert getattr(get_profile("smoke", **{field: given}), field) == want


@pytest.mark.parametrize("given, match", [("0,x", r"seeds\[1\] must be a whole number >= 0, got 'x'"),
                                          ("-1", r"seeds\[0\] must be a whole number >= 0, got '-1'"),
                                          ("[0, 1", "seeds is not valid JSON")])
def test_a_bad_tuple_field_is_refused_by_name(given, match):
    from tinyfusion.profiles import get_profile
    with pytest.raises(ValueError, match=match):
        get_profile("smoke", seeds=given)


@pytest.mark.parametrize("value, match", [("abc", "whole number, got 'abc'"), (-3, "> 0, got -3"),
                                          (2.5, "whole number, got 2.5"), (0, "> 0, got 0"),
                                          (float("inf"), "whole number, got inf"), (None, "whole number")])
def test_check_budget_rejects_and_names_the_parameter(value, match):
    from tinyfusion.profiles import check_budget

    with pytest.raises(ValueError, match=f"^eval_samples must be .*{match}"):
        check_budget("eval_samples", value)
    assert check_budget("eval_samples", "12") == 12 and check_budget("eval_samples", 0, allow_zero=True) == 0


def test_finetune_cli_negative_or_non_numeric_steps(results_env, capsys):
    from tinyfusion.cli import finetune

    with pytest.raises(ValueError, match=r"^steps must be > 0, got -5$"):
        finetune.main(["--profile", "smoke", "--student", "X", "--steps", "-5"])
    with pytest.raises(SystemExit):
        finetune.main(["--profile", "smoke", "--student", "X", "--steps", "abc"])
    assert "argument --steps: invalid int value: 'abc'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="checkpoint X does not exist"):
        finetune.main(["--profile", "smoke", "--student", "X", "--steps", "5"])


def test_prune_learn_groups_with_n_above_m(results_env):
    from tinyfusion.cli import prune_learn

    teacher = save_dit(random_dit(4), results_env / "teacher.pt")
    with pytest.raises(ValueError, match=r"block 3:2 is invalid: cannot keep N=3 layers out of M=2; need N <= M"):
        prune_learn.run(profile="smoke", teacher=teacher, groups="3:2", steps=2, batch_size=8)
    assert not (results_env / "results").exists() or not list((results_env / "results").rglob("state.pt"))


def test_resolve_nproc_with_fewer_gpus_than_asked(monkeypatch):
    from tinyfusion.launch import resolve_nproc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.warns(UserWarning, match="asked for 4 processes but only 2 GPUs are present; using 2"):
        assert resolve_nproc(4) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as many as there are: no warning
        assert resolve_nproc(2) == 2 and resolve_nproc("auto") == 2 and resolve_nproc("1") == 1
    for bad in ("abc", 2.5, [2]):
        with pytest.raises(ValueError, match=r"^nproc="):
            resolve_nproc(bad)


# ---------------------------------------------------------------------- every wrong file named (issue 28, item 4)
def test_a_checkpoint_that_is_not_a_dit_is_refused_by_name(tmp_path):
    """The evaluator given as a DiT, a list or a bare tensor, a dict without weights: one line naming the file."""
    import torch
    from tinyfusion.io import save_checkpoint
    from tinyfusion.models.dit import dit_weights, load_dit
    evaluator = Path(__file__).resolve().parent.parent / "data" / "evaluator.pt"
    with pytest.raises(ValueError, match=r"evaluator.pt holds weights without DiT blocks .*the evaluator's"):
        load_dit(evaluator)
    from tinyfusion.cli import prune_learn
    with pytest.raises(ValueError, match=r"evaluator.pt holds weights without DiT blocks"):   # the entry point too
        prune_learn.main(["--profile", "smoke", "--teacher", str(evaluator), "--out", str(tmp_path / "pl")])
    for name, obj, says in (("list.pt", [1, 2, 3], "holds a list, not DiT weights"),
                            ("tensor.pt", torch.zeros(3), "holds a Tensor, not DiT weights"),
                            ("noweights.pt", {"config": {"depth": 4}}, "holds a dict with keys ['config'], not DiT"),
                            ("classifier.pt", {"fc.weight": torch.zeros(2, 2)}, "weights without DiT blocks")):
        path = tmp_path / name
        save_checkpoint(obj, path)
        with pytest.raises(ValueError, match=f"--teacher {path}"):
            dit_weights(torch.load(path, weights_only=True), f"--teacher {path}")
        with pytest.raises(ValueError) as e:
            load_dit(path, name="DiT-T28/4")
        assert says in str(e.value) and str(path) in str(e.value), e.value


def test_negative_checkpoint_interval_is_refused():
    from tinyfusion.training import LoopConfig, check_loop_inputs
    from tinyfusion.models.dit import DiT
    model = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    import torch
    labels = torch.zeros(4, dtype=torch.long)
    check_loop_inputs(LoopConfig(steps=2, batch_size=2, ckpt_every=0), model, labels)   # 0: the time-based default
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match=r"--ckpt-every .* is not a number of steps; pass a whole number >= 1"):
            check_loop_inputs(LoopConfig(steps=2, batch_size=2, ckpt_every=bad), model, labels)
    with pytest.raises(ValueError, match="--stop-after -3"):
        check_loop_inputs(LoopConfig(steps=2, batch_size=2, stop_after=-3), model, labels)


# ---------------------------------------------------------------------- integrity that travels with the file (issue 27)
@pytest.mark.parametrize("kind", ["pt", "npz"])
def test_a_damaged_copy_without_its_record_is_refused_by_name(tmp_path, kind):
    """64 flipped bytes in a copy that travelled without its .sha256 record: the zip's CRC-32s catch it."""
    import shutil
    src = tmp_path / f"orig.{kind}"
    if kind == "pt":
        save_checkpoint({"ema": {"w": torch.randn(4096)}, "config": {"depth": 1}}, src)
    else:
        tio.save_npz(src, arr_0=np.arange(40000, dtype=np.uint8).reshape(100, 400))
    copy = tmp_path / f"copy.{kind}"
    shutil.copy(src, copy)                                   # the record stays behind
    assert not tio.record_path(copy).exists()
    (load_checkpoint if kind == "pt" else tio.load_npz)(copy)   # an intact copy loads
    data = bytearray(copy.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    copy.write_bytes(bytes(data))
    with pytest.raises(CorruptArtefactError, match=rf"{copy} is corrupted: .*CRC-32 check \(no integrity record"):
        (load_checkpoint if kind == "pt" else tio.load_npz)(copy)


def test_samples_and_evaluator_files_of_the_wrong_kind_are_named(tmp_path):
    from tinyfusion.evaluator import load_evaluator
    from tinyfusion.metrics import sample_arrays
    repo = Path(__file__).resolve().parent.parent
    with pytest.raises(KeyError, match=r"--npz .*teacher_cpu.pt is a torch checkpoint \(.pt\), not samples; pass the "
                                       r".npz that cli.sample writes"):
        sample_arrays(repo / "data" / "teacher_cpu.pt")
    tio.save_npz(tmp_path / "adm.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match=r"ADM layout \(arr_0\), which --reference \(the imagenet profile\) scores"):
        sample_arrays(tmp_path / "adm.npz")
    with pytest.raises(CorruptArtefactError, match=r"teacher_cpu.pt is not an evaluator checkpoint .*it is a DiT "
                                                   r"checkpoint\); pass --evaluator data/evaluator.pt"):
        load_evaluator(repo / "data" / "teacher_cpu.pt")


@pytest.mark.parametrize("kind", ["pt", "npz"])
def test_a_copy_altered_and_saved_again_is_refused_by_its_embedded_digest(tmp_path, kind):
    """A file of ours carries the digest of its content inside it: a copy whose tensors were changed and saved again
    by other code (valid zip CRCs, no record beside it) is refused by name; an untouched copy loads without the key."""
    import shutil
    src, copy = tmp_path / f"orig.{kind}", tmp_path / f"copy.{kind}"
    if kind == "pt":
        save_checkpoint({"ema": {"w": torch.zeros(8)}, "config": {"depth": 1}, "kept": (0, 2)}, src)
    else:
        tio.save_npz(src, images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.arange(2))
    shutil.copy(src, copy)
    if kind == "pt":
        loaded = load_checkpoint(copy)
        assert set(loaded) == {"ema", "config", "kept"} and loaded["kept"] == (0, 2)   # the digest is taken out
        raw = torch.load(copy, weights_only=True)
        assert tio.DIGEST_KEY in raw
        raw["ema"]["w"][3] = 1.0
        torch.save(raw, copy)
    else:
        assert set(tio.load_npz(copy)) == {"images", "labels"}
        with np.load(copy) as z:
            raw = {k: z[k] for k in z.files}
        raw["labels"][0] = 7
        np.savez(copy, **raw)
    with pytest.raises(CorruptArtefactError, match=rf"{copy} was altered after it was written: its content does not "
                                                   r"match the digest stored inside it"):
        (load_checkpoint if kind == "pt" else tio.load_npz)(copy)
    (load_checkpoint if kind == "pt" else tio.load_npz)(src)   # the original still loads
