"""Issue 16: a hostile or clumsy user. One section per class of fault; each test failed on the code before the fix
(commit 436a29f) and passes now. Nothing executed, nothing lost, nothing silent."""
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from tinyfusion import cache, io as tio
from tinyfusion.diffusion import create_objective
from tinyfusion.io import CorruptArtefactError, load_checkpoint, save_checkpoint
from tinyfusion.models import DiT, load_dit
from tinyfusion.training import LoopConfig, train

ROOT = Path(__file__).resolve().parent.parent


def tiny(seed=0, depth=2):
    torch.manual_seed(seed)
    return DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=16, depth=depth, num_heads=2, num_classes=10)


def save_tiny(path, seed=0, **extra):
    m = tiny(seed)
    save_checkpoint({"ema": m.state_dict(), "config": m.config, **extra}, path)
    return path


class Payload:
    """Unpickling this creates ``marker``: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path, marker):
    torch.save({"step": 1, "evil": Payload(marker)}, path)  # plain torch.save: no integrity record
    return path


def linear_setup(seed=0, n=64):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 4)
    return model, torch.optim.SGD(model.parameters(), lr=0.01), torch.randn(n, 4), torch.zeros(n, dtype=torch.long)


def linear_loss(net, batch, step):
    x = batch[0]
    err = (net(x) - x).pow(2).mean()
    return {"loss": err}


# =========================================================================== 1. loading never runs code
def test_planted_state_pt_is_refused_unread(tmp_path):
    marker = tmp_path / "pwned"
    plant_pickle(tmp_path / "state.pt", marker)
    model, opt, x, y = linear_setup()
    with pytest.raises(CorruptArtefactError, match="refused unread"):
        train(model, linear_loss, opt, x, y, create_objective(), LoopConfig(steps=2, batch_size=4),
              state={"model": model}, state_path=tmp_path / "state.pt", progress=False)
    with pytest.raises(ValueError, match="loading never executes code"):
        load_checkpoint(tmp_path / "state.pt", weights_only=False)
    assert not marker.exists()


def test_state_pt_holds_only_plain_data_and_resumes(tmp_path):
    model, opt, x, y = linear_setup()
    cfg = LoopConfig(steps=4, batch_size=4, stop_after=2)
    train(model, linear_loss, opt, x, y, create_objective(), cfg, state={"model": model, "opt": opt},
          state_path=tmp_path / "state.pt", progress=False)
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # raised on numpy's RNG state before
    assert state["step"] == 2 and set(state["rng"]) <= {"torch", "cuda"}


def test_planted_evaluator_feature_cache_is_not_executed(tmp_path, monkeypatch):
    from tinyfusion import metrics
    from tinyfusion.evaluator import _cached_evaluator
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    metrics.clear_cache()
    sha = _cached_evaluator(None).sha256
    path = tmp_path / "cache" / "evaluator" / f"{sha[:16]}-fmnist-test-n40.pt"
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    plant_pickle(path, marker)
    feats = metrics.reference_features(reference_limit=40)
    assert not marker.exists() and feats["pool"].shape[0] == 40
    assert torch.equal(torch.load(path, weights_only=True)["pool"], feats["pool"])  # rewritten as plain tensors
    metrics.clear_cache()


# =========================================================================== 2. run identity includes the inputs
def test_resume_refuses_a_state_of_another_student_or_other_data(tmp_path):
    objective = create_objective()
    images, labels = torch.randn(32, 1, 8, 8), torch.arange(32) % 10

    def run(seed, imgs, stop_after=0):
        m = tiny(seed)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)

        def loss_fn(net, batch, step):
            x0, yy, noise, t = batch
            return {"loss": objective.training_losses(net, x0, t, dict(y=yy), noise=noise)["loss"].mean()}
        return train(m, loss_fn, opt, imgs, labels, objective, LoopConfig(steps=3, batch_size=4, stop_after=stop_after),
                     state={"model": m, "opt": opt}, state_path=tmp_path / "state.pt", identity={"lr": 1e-3},
                     progress=False)
    assert run(0, images, stop_after=1)["stopped_at"] == 1
    with pytest.raises(ValueError, match=r"another run .*inputs\.model"):
        run(1, images)  # a different student of the same shape
    with pytest.raises(ValueError, match=r"another run .*inputs\.data"):
        run(0, images.flip(0))  # other data of the same shape
    assert run(0, images)["steps_run"] == 2  # the same inputs resume


# =========================================================================== 3. damaged files never load silently
def test_flipped_bytes_in_a_checkpoint_are_refused_naming_it(tmp_path):
    path = save_tiny(tmp_path / "model.pt")
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))
    for load in (load_checkpoint, load_dit):
        with pytest.raises(CorruptArtefactError, match=f"{path}.*integrity record"):
            load(path)


def test_shipped_teacher_checksum_is_checked_by_every_loader(tmp_path):
    copy = tmp_path / "teacher_cpu.pt"
    data = bytearray((ROOT / "data" / "teacher_cpu.pt").read_bytes())
    data[-5000] ^= 0x01  # one bit, inside the weights
    copy.write_bytes(bytes(data))
    (tmp_path / "teacher_cpu.pt.sha256").write_text((ROOT / "data" / "teacher_cpu.pt.sha256").read_text())
    with pytest.raises(CorruptArtefactError, match=str(copy)):
        load_dit(copy)


def test_every_artefact_carries_an_integrity_record_and_normal_permissions(tmp_path):
    for save, name in ((lambda p: tio.save_json({"a": 1}, p), "r.json"), (lambda p: save_checkpoint({"a": 1}, p), "m.pt"),
                       (lambda p: tio.save_npz(p, a=np.zeros(3)), "s.npz")):
        p = tmp_path / name
        save(p)
        assert tio.record_path(p).read_text().split()[0] == tio.sha256(p)
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~tio._umask()  # was 0600 (mkstemp's)


# =========================================================================== 4. numbers that make garbage
STUDENT = "no-such-student.pt"  # validation comes before any file is read


@pytest.mark.parametrize("flags, match", [
    (["--steps", "0"], r"^steps must be > 0, got 0"),
    (["--batch-size", "0"], r"^batch_size must be > 0, got 0"),
    (["--a-kd", "-1"], r"^a_kd must be >= 0, got -1"),
    (["--ema-decay", "2"], r"^ema_decay must be in \[0, 1\), got 2"),
    (["--ema-decay", "nan"], r"^ema_decay must be a finite number"),
    (["--k-sigma", "-2"], r"^k_sigma must be >= 0, got -2"),
    (["--kept", "[1, 1, 2]"], r"^kept \[1, 1, 2\] must be strictly increasing; \[1\] repeat"),
    (["--groups", "[1,2"], r"^groups is not valid JSON"),
])
def test_finetune_refuses_garbage_arguments(results_env, flags, match):
    from tinyfusion.cli import finetune
    with pytest.raises(ValueError, match=match):
        finetune.main(["--profile", "smoke", "--student", STUDENT, *flags])


@pytest.mark.parametrize("flags, match", [
    (["--tau-start", "0", "--tau-end", "0"], r"^tau\[0\] must be > 0, got 0"),
    (["--groups", "[1,2"], r"^groups is not valid JSON"),
    (["--steps", "0"], r"^steps must be > 0, got 0"),
    (["--ema-decay", "5"], r"^ema_decay must be in \[0, 1\)"),
])
def test_prune_learn_refuses_garbage_arguments(results_env, flags, match):
    from tinyfusion.cli import prune_learn
    with pytest.raises(ValueError, match=match):
        prune_learn.main(["--profile", "smoke", "--teacher", STUDENT, *flags])


@pytest.mark.parametrize("flags, match", [
    (["--cfg-scale", "nan"], r"^cfg_scale must be a finite number"),
    (["--cfg-scale", "-1"], r"^cfg_scale must be >= 0, got -1"),
    (["--steps", "1"], r"^steps must be >= 2 for the ddim sampler, got 1"),
    (["--steps", "0"], r"^steps must be > 0, got 0"),
    (["--n", "0"], r"^n must be > 0, got 0"),
])
def test_sample_refuses_garbage_arguments(tmp_path, flags, match):
    from tinyfusion.cli import sample
    ckpt = save_tiny(tmp_path / "m.pt")
    with pytest.raises(ValueError, match=match):
        sample.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "s.npz"), "--no-progress", *flags])
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("flags, match", [(["--kid-subset-size", "-1"], r"^kid_subset_size must be > 0, got -1"),
                                          (["--n", "0"], r"^n must be > 0, got 0")])
def test_evaluate_refuses_garbage_arguments(tmp_path, flags, match):
    from tinyfusion.cli import evaluate
    ckpt = save_tiny(tmp_path / "m.pt")
    with pytest.raises(ValueError, match=match):
        evaluate.main(["--profile", "smoke", "--checkpoint", str(ckpt), *flags])


def test_labels_out_of_range_are_refused_before_the_first_step():
    m, calls = tiny(), []

    def loss_fn(net, batch, step):
        calls.append(step)
        return {"loss": net(batch[0], batch[3].float(), batch[1]).mean()}
    with pytest.raises(ValueError, match=r"labels span 0\.\.12 but the model has 10 classes"):
        train(m, loss_fn, torch.optim.SGD(m.parameters(), lr=0.1), torch.randn(16, 1, 8, 8), torch.arange(16) % 13,
              create_objective(), LoopConfig(steps=2, batch_size=4), progress=False)
    assert calls == []


def test_the_non_finite_guard_never_lets_a_short_run_skip_every_step():
    model, opt, x, y = linear_setup()
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(model, linear_loss, opt, x, y, create_objective(),
              LoopConfig(steps=5, batch_size=4, inject_nan_at=tuple(range(5))), progress=False)


# =========================================================================== 5. work is never lost late
def test_an_unwritable_output_folder_fails_before_the_first_step(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be")
    model, opt, x, y = linear_setup()
    calls = []

    def loss_fn(net, batch, step):
        calls.append(step)
        return linear_loss(net, batch, step)
    with pytest.raises(PermissionError, match=f"{blocker / 'run'} cannot be written"):
        train(model, loss_fn, opt, x, y, create_objective(), LoopConfig(steps=3, batch_size=4),
              state={"model": model}, state_path=blocker / "run" / "state.pt", progress=False)
    assert calls == []


def test_a_run_without_ckpt_every_still_checkpoints_and_a_kill_keeps_the_work(tmp_path, monkeypatch):
    from tinyfusion import training
    monkeypatch.setattr(training, "CHECKPOINT_EVERY_S", 0.0)  # "long enough since the last checkpoint", each step
    model, opt, x, y = linear_setup()

    def dies_at_step_5(net, batch, step):
        if step == 5:
            raise KeyboardInterrupt("killed")
        return linear_loss(net, batch, step)
    with pytest.raises(KeyboardInterrupt):
        train(model, dies_at_step_5, opt, x, y, create_objective(), LoopConfig(steps=10, batch_size=4),
              state={"model": model, "opt": opt}, state_path=tmp_path / "state.pt", progress=False)
    assert load_checkpoint(tmp_path / "state.pt")["step"] == 5


# =========================================================================== 6. no process outlives its launcher
def _marked_pids(marker):
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_torchrun_and_its_workers_die_with_the_launching_process(tmp_path):
    marker = f"TINYFUSION_TEST_MARK=orphan{os.getpid()}x{time.time_ns()}"
    key, value = marker.split("=")
    code = (f"from tinyfusion.launch import launch\n"
            f"launch('tinyfusion.cli.selftest', nproc=2, env={{'{key}': '{value}'}}, fail_rank=1, fail_mode='hang')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(_marked_pids(marker)) < 3 and time.time() < deadline:  # torchrun + 2 workers
            time.sleep(0.5)
        assert len(_marked_pids(marker)) >= 3, "the launched run did not start"
        time.sleep(8)  # past start-up: the ranks are in the barrier and print nothing more (no EPIPE to stop them)
        parent.kill()  # the notebook kernel dies
        parent.wait()
        deadline = time.time() + 10  # before the fix they ran on for minutes (a hung rank: until the gloo timeout)
        while _marked_pids(marker) and time.time() < deadline:
            time.sleep(0.5)
        left = _marked_pids(marker)
        assert not left, f"processes left running after their launcher died: {left}"
    finally:
        for pid in _marked_pids(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# =========================================================================== 7. concurrent runs and the cache
def test_a_second_run_on_a_busy_folder_stops_and_leaves_the_first_ones_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    child = (f"import time\nfrom pathlib import Path\nfrom tinyfusion import cache\n"
             f"def compute(folder):\n"
             f"    tmp = Path(folder) / '.state.pt.live.tmp'\n    tmp.write_text('being written')\n"
             f"    time.sleep(6)\n    assert tmp.exists(), 'my temp file was deleted'\n    return {{'ok': 1}}\n"
             f"print(cache.cached(Path({str(out)!r}), {{'run': 'first'}}, compute))\n")
    first = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (out / ".state.pt.live.tmp").exists() and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(tio.FolderBusyError, match=f"{out} is in use by another run"):
        cache.cached(out, {"run": "second"}, lambda folder: tio.remove_stale_temps(folder) and {})
    log = first.communicate(timeout=60)[0]
    assert first.returncode == 0 and "{'ok': 1}" in log, log


def test_a_cached_step_whose_artefact_is_gone_is_recomputed(tmp_path, capsys):
    calls = []

    def compute(folder):
        calls.append(1)
        tio.save_json({"x": 1}, Path(folder) / "artefact.json")
        return {"artefact": str(Path(folder) / "artefact.json"), "relative": "artefact.json"}
    first = cache.cached(tmp_path / "step", {"a": 1}, compute)
    (tmp_path / "step" / "artefact.json").unlink()
    again = cache.cached(tmp_path / "step", {"a": 1}, compute)
    assert len(calls) == 2 and again == first and Path(again["artefact"]).exists()
    assert "names artefacts that are gone" in capsys.readouterr().out


@pytest.mark.parametrize("record", [[1, 2], {"result": 1}, "text"])
def test_a_malformed_record_names_the_file(tmp_path, record):
    (tmp_path / "step").mkdir()
    tio.save_json(record, tmp_path / "step" / "run.json")
    with pytest.raises(CorruptArtefactError, match=f"{tmp_path / 'step' / 'run.json'} is not a step record"):
        cache.cached(tmp_path / "step", {"a": 1}, lambda folder: {})


# =========================================================================== 8. an interrupted reproduce
def test_an_interrupted_notebook_leaves_the_committed_results_in_place(tmp_path, monkeypatch):
    import papermill

    import tinyfusion.cli.reproduce as rep
    nbdir, root = tmp_path / "nbs", tmp_path / "res" / "smoke"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, nbdir / "00_study.ipynb")
    for sub, name, text in (("notebooks", "00_study.ipynb", "COMMITTED EXECUTED COPY"),
                            ("figures", "00_fig.png", "old figure"), ("tables", "00_table.csv", "old,table")):
        (root / sub).mkdir(parents=True)
        (root / sub / name).write_text(text)
    tio.save_json({"latest": {"00_study.ipynb": 123.0}, "runs": []}, root / "timings.json")

    def killed_half_way(input_path, output_path, **kw):
        Path(output_path).write_text("HALF EXECUTED: 4 of 8 cells")
        (root / "figures" / "00_fig.png").write_text("half-drawn figure")
        (root / "tables" / "00_new.csv").write_text("partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(rep, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(papermill, "execute_notebook", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        rep.reproduce("smoke", results_root=tmp_path / "res", progress=False)
    assert (root / "notebooks" / "00_study.ipynb").read_text() == "COMMITTED EXECUTED COPY"
    assert (root / "figures" / "00_fig.png").read_text() == "old figure"
    assert sorted(p.name for p in (root / "tables").iterdir()) == ["00_table.csv"]
    assert json.loads((root / "timings.json").read_text())["latest"] == {"00_study.ipynb": 123.0}


# =========================================================================== 9. smaller
def test_a_pt_holding_a_list_names_the_file(tmp_path):
    path = tmp_path / "list.pt"
    save_checkpoint([1, 2, 3], path)
    with pytest.raises(ValueError, match=f"{path} holds a list, not DiT weights"):
        load_dit(path)


def test_a_dit_given_as_the_evaluator_names_the_file(tmp_path):
    from tinyfusion.evaluator import load_evaluator
    m = tiny()
    path = tmp_path / "dit.pt"
    save_checkpoint({"model": m.state_dict(), "config": m.config}, path)  # the layout of a training state
    with pytest.raises(CorruptArtefactError, match=f"{path} is not an evaluator checkpoint"):
        load_evaluator(path)


def test_tinyfusion_data_pointing_at_an_empty_folder_is_an_error(tmp_path, monkeypatch):
    from tinyfusion.data import DatasetNotFoundError, load_fashion_mnist
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("TINYFUSION_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'empty'} lacks train-images"):
        load_fashion_mnist("train", limit=10)


def test_an_unwritable_evaluator_cache_warns_and_scores(tmp_path, monkeypatch):
    from tinyfusion import metrics
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TINYFUSION_RESULTS", str(blocker))
    metrics.clear_cache()
    with pytest.warns(UserWarning, match="could not write the evaluator feature cache"):
        feats = metrics.reference_features(reference_limit=30)
    assert feats["pool"].shape[0] == 30
    metrics.clear_cache()


@pytest.fixture
def results_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    return tmp_path


def test_sigterm_mid_notebook_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    """SIGTERM while a notebook runs: one line saying where it stopped, that finished steps are cached and the
    committed results untouched, and the command that resumes; exit status 130, no traceback."""
    import os
    import signal

    import papermill

    import tinyfusion.cli.reproduce as rep
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), nbdir / "00_study.ipynb")

    def terminated(input_path, output_path, **kw):
        os.kill(os.getpid(), signal.SIGTERM)   # delivered to this process while the "notebook" runs
        raise AssertionError("SIGTERM did not interrupt the run")
    monkeypatch.setattr(rep, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(papermill, "execute_notebook", terminated)
    old = signal.getsignal(signal.SIGTERM)
    try:
        status = rep.main(["--profile", "smoke", "--out", str(tmp_path / "res"), "--no-progress"])
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 130 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("[reproduce] stopped in 00_study.ipynb (signal SIGTERM): every step it finished is cached")
    assert "`make reproduce PROFILE=smoke` resumes" in err[0]
