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


@pytest.mark.parametrize("ckpt_every", [0, 1000])  # by time only; by steps that are far apart (a starved run)
def test_a_run_checkpoints_by_time_and_a_kill_keeps_the_work(tmp_path, monkeypatch, ckpt_every):
    from tinyfusion import training
    monkeypatch.setattr(training, "CHECKPOINT_EVERY_S", 0.0)  # "long enough since the last checkpoint", each step
    model, opt, x, y = linear_setup()

    def dies_at_step_5(net, batch, step):
        if step == 5:
            raise KeyboardInterrupt("killed")
        return linear_loss(net, batch, step)
    with pytest.raises(KeyboardInterrupt):
        train(model, dies_at_step_5, opt, x, y, create_objective(),
              LoopConfig(steps=10, batch_size=4, ckpt_every=ckpt_every),
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


def test_ctrl_c_in_a_real_kernel_prints_one_line_and_no_kernel_traceback(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while a real kernel runs a cell: one line, exit 130; the
    kernel's log of the cell it stopped goes to partial/kernel.log, not to the terminal."""
    nbdir, started = tmp_path / "nbs", tmp_path / "started"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("profile = 'cpu'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
                                          "time.sleep(120)")]
    nbformat.write(nb, nbdir / "00_study.ipynb")
    code = (f"import sys, pathlib, tinyfusion.cli.reproduce as rep; rep.NOTEBOOKS = pathlib.Path({str(nbdir)!r}); "
            f"sys.exit(rep.main(['--profile', 'smoke', '--out', {str(tmp_path / 'res')!r}, '--no-progress']))")
    # a terminal's foreground job takes Ctrl-C; a test suite started in the background (`make test &` from a script)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: give the run the terminal's default
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert started.exists(), proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C in a terminal does
    try:  # about 10 s on an idle machine
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"make reproduce did not stop within 240 s of Ctrl-C; its output:\n{proc.communicate()[0]}")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert proc.returncode == 130 and "Traceback" not in out, out
    assert lines[-1].startswith("[reproduce] stopped in 00_study.ipynb (Ctrl-C): every step it finished is cached")
    assert (tmp_path / "res" / "smoke" / "partial" / "kernel.log").exists()


# ======================================================================= 10. every wrong file named (issue 28, item 4)
def tiny_dit(path, size=8, objective=None):
    torch.manual_seed(0)
    kw = dict(objective=objective, learn_sigma=False) if objective else {}
    m = DiT(input_size=size, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10, **kw)
    save_checkpoint({"ema": m.state_dict(), "config": m.config}, path)
    return path


@pytest.fixture
def wrong_files(tmp_path, monkeypatch):
    """One file of each wrong kind, by name: $npz, $pt (a tiny DiT), $text, $empty, $dir, $missing."""
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    tio.save_npz(tmp_path / "s.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.arange(4))
    tiny_dit(tmp_path / "m.pt")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    return {"$npz": tmp_path / "s.npz", "$pt": tmp_path / "m.pt", "$text": tmp_path / "notes.txt",
            "$empty": tmp_path / "empty.pt", "$dir": tmp_path / "folder", "$missing": tmp_path / "nowhere.pt",
            "$out": tmp_path / "out"}


def run_cli(name, argv, files):
    import importlib
    module = importlib.import_module(f"tinyfusion.cli.{name}")
    args = []
    for a in map(str, argv):  # "$text/sub": a path under the file $text
        key = a.split("/")[0]
        args.append(str(files[key]) + a[len(key):] if key in files else a)
    return module.main(args)


DIT_PASS = r"; pass a DiT checkpoint \(\.pt: cli\.pretrain's teacher\.pt"


@pytest.mark.parametrize("name, argv, error, match", [
    ("sample", ["--checkpoint", "$npz"], ValueError, r"^--checkpoint \S+s\.npz is a NumPy \.npz archive, not a torch "
                                                     r"checkpoint \(\.pt\)" + DIT_PASS),
    ("sample", ["--checkpoint", "$text"], ValueError, r"^--checkpoint \S+notes\.txt is a text file \(it starts with "
                                                      r"'hello'\), not a torch checkpoint \(\.pt\)" + DIT_PASS),
    ("sample", ["--checkpoint", "$empty"], ValueError, r"^--checkpoint \S+empty\.pt is an empty file \(0 bytes\)"),
    ("sample", ["--checkpoint", "$dir"], IsADirectoryError, r"^--checkpoint \S+folder is a folder, not a torch"),
    ("sample", ["--checkpoint", "$missing"], FileNotFoundError,
     r"^--checkpoint \S+nowhere\.pt does not exist" + DIT_PASS),
    ("sample", ["--checkpoint", "$pt", "--vae", "$text"], ValueError, r"^--vae \S+notes\.txt is a text file .*not an "
                                                                      r"SD-VAE; pass an SD-VAE: a diffusers folder"),
    ("evaluate", ["--npz", "$pt"], ValueError, r"^--npz \S+m\.pt is a torch checkpoint \(\.pt\), not a NumPy \.npz "
                                               r"archive; pass the \.npz that cli\.sample writes"),
    ("evaluate", ["--npz", "$text"], ValueError, r"^--npz \S+notes\.txt is a text file"),
    ("evaluate", ["--npz", "$empty"], ValueError, r"^--npz \S+empty\.pt is an empty file"),
    ("evaluate", ["--npz", "$dir"], IsADirectoryError, r"^--npz \S+folder is a folder"),
    ("evaluate", ["--npz", "$missing"], FileNotFoundError, r"^--npz \S+nowhere\.pt does not exist; pass the \.npz"),
    ("evaluate", ["--checkpoint", "$npz"], ValueError,
     r"^--checkpoint \S+s\.npz is a NumPy \.npz archive, not a torch checkpoint \(\.pt\)" + DIT_PASS),
    ("evaluate", ["--checkpoint", "$missing"], FileNotFoundError, r"^--checkpoint \S+nowhere\.pt does not exist"),
    ("evaluate", ["--npz", "$npz", "--evaluator", "$npz"], ValueError,
     r"^--evaluator \S+s\.npz is a NumPy \.npz archive, not a torch checkpoint \(\.pt\); pass the evaluator "
     r"checkpoint"),
    ("evaluate", ["--npz", "$npz", "--evaluator", "$dir"], IsADirectoryError, r"^--evaluator \S+folder is a folder"),
    ("evaluate", ["--npz", "$npz", "--reference", "$text"], ValueError,
     r"^--reference \S+notes\.txt is a text file .*; pass the ADM reference batch \.npz"),
    ("export", ["--checkpoint", "$text", "--out", "$out"], ValueError, r"^--checkpoint \S+notes\.txt is a text file"),
    ("export", ["--checkpoint", "$pt", "--out", "$out", "--vae", "$empty"], ValueError,
     r"^--vae \S+empty\.pt is an empty"),
    ("finetune", ["--profile", "smoke", "--student", "$npz"], ValueError, r"^--student \S+s\.npz is a NumPy \.npz"),
    ("finetune", ["--profile", "smoke", "--student", "$dir"], IsADirectoryError, r"^--student \S+folder is a folder"),
    ("finetune", ["--profile", "smoke", "--student", "$pt", "--mode", "kd", "--teacher", "$text"], ValueError,
     r"^--teacher \S+notes\.txt is a text file" + "(?s:.*)" + DIT_PASS),
    ("prune_learn", ["--profile", "smoke", "--teacher", "$empty"], ValueError, r"^--teacher \S+empty\.pt is an empty"),
    ("prune_learn", ["--profile", "smoke", "--teacher", "$npz"], ValueError, r"^--teacher \S+s\.npz is a NumPy"),
    ("extract_features", ["--data-path", "$dir", "--vae", "$npz"], ValueError, r"^--vae \S+s\.npz is a NumPy \.npz"),
])
def test_a_file_of_the_wrong_kind_is_named_with_its_flag(wrong_files, name, argv, error, match):
    """Each entry point's file flags: an .npz for a .pt and the reverse, a text, empty or missing file, a folder;
    before: 'is truncated or corrupted ... delete it and recompute it' (about the user's own file), or a bare
    '[Errno 2]' / '[Errno 21]' without the flag."""
    with pytest.raises(error, match=match):
        run_cli(name, argv, wrong_files)


@pytest.mark.parametrize("name, argv, error, match", [
    ("sample", ["--checkpoint", "$pt", "--out", "$dir"], IsADirectoryError,
     r"^--out \S+folder is a folder; pass a file name \(such as \S+folder/out\.npz\)"),
    ("sample", ["--checkpoint", "$pt", "--out", "$text/s.npz"], NotADirectoryError,
     r"^--out \S+notes\.txt/s\.npz lies under \S+notes\.txt, which is a file, not a folder"),
    ("sample", ["--checkpoint", "$pt", "--result-json", "$dir"], IsADirectoryError,
     r"^--result-json \S+folder is a folder"),
    ("evaluate", ["--checkpoint", "$pt", "--save-npz", "$missing"], ValueError, r"^--save-npz must end in \.npz, got "),
    ("export", ["--checkpoint", "$pt", "--out", "$text"], NotADirectoryError,
     r"^--out \S+notes\.txt is a file; pass a folder"),   # before: nothing written, and success returned
    ("selftest", ["--out", "$text"], NotADirectoryError, r"^--out \S+notes\.txt is a file; pass a folder"),
    ("pretrain", ["--profile", "smoke", "--out", "$text/sub"], NotADirectoryError,
     r"^--out \S+sub lies under \S+notes"),
    ("train_evaluator", ["--out", "$dir"], IsADirectoryError, r"^--out \S+folder is a folder; pass a file name"),
    ("train_evaluator", ["--out", "$npz"], ValueError, r"^--out must end in \.pt or \.pth, got \S+s\.npz"),
    ("train_evaluator", ["--out", "$missing", "--summary", "$dir"], IsADirectoryError, r"^--summary \S+folder is a"),
])
def test_an_output_path_that_cannot_be_written_is_named_before_any_work(wrong_files, name, argv, error, match):
    """Before: the error came after the work ('[Errno 21] Is a directory: .dir.x.tmp -> dir' once the samples were
    drawn), or never (cli.export --out <a file> returned success and wrote nothing)."""
    with pytest.raises(error, match=match):
        run_cli(name, argv, wrong_files)
    assert wrong_files["$text"].read_text() == "hello\n"


@pytest.mark.parametrize("name, argv, match", [
    ("sample", ["--checkpoint", "$pt", "--seed", "-1"], r"^seed must be >= 0, got -1$"),  # before: ran
    ("evaluate", ["--npz", "$npz", "--seed", "-1"], r"^seed must be >= 0, got -1$"),   # numpy's 'Seed must be ...'
    ("finetune", ["--profile", "smoke", "--student", STUDENT, "--log-every", "-1"], r"^log_every must be >= 0"),
    ("finetune", ["--profile", "smoke", "--student", STUDENT, "--max-skipped", "-5"],
     r"^max_skipped must be >= -1 \(-1: 10% of the steps\), got -5"),
    ("finetune", ["--profile", "smoke", "--student", STUDENT, "--snapshots", "3"],
     r"^snapshots must be a JSON list of whole numbers >= 1 \(such as \[2, 4\]\), got 3"),   # TypeError before
    ("finetune", ["--profile", "smoke", "--student", STUDENT, "--inject-nan-at", "3"],
     r"^inject_nan_at must be a JSON"),
    ("prune_learn", ["--profile", "smoke", "--ckpt-every", "-1"], r"^ckpt_every must be >= 0 \(0: write state\.pt by "),
    ("prune_learn", ["--profile", "smoke", "--stop-after", "-2"], r"^stop_after must be >= 0 \(0: run to the end\)"),
    ("selftest", ["--bar-steps", "-1"], r"^bar_steps must be >= 0, got -1"),
    ("extract_features", ["--data-path", "$dir", "--workers", "-1"], r"^workers must be >= 0"),
    ("extract_features", ["--data-path", "$dir", "--limit", "-1"], r"^limit must be >= 0 \(0: all\)"),
    ("train_evaluator", ["--epochs", "0"], r"^epochs must be > 0, got 0"),            # ZeroDivisionError before
    ("train_evaluator", ["--batch-size", "0"], r"^batch_size must be > 0, got 0"),
    ("train_evaluator", ["--warmup", "0"], r"^warmup must be > 0, got 0"),
    ("train_evaluator", ["--threads", "0"], r"^threads must be > 0, got 0"),          # torch's RuntimeError before
    ("train_evaluator", ["--shift", "-1"], r"^shift must be >= 0, got -1"),
    ("train_evaluator", ["--train-limit", "-5"], r"^train_limit must be >= 0, got -5"),
    ("train_evaluator", ["--lr", "-1"], r"^lr must be > 0, got -1"),
    ("train_evaluator", ["--min-accuracy", "2"], r"^min_accuracy must be in \[0, 1\], got 2"),
    ("train_evaluator", ["--widths", "[16, 32]"], r"^widths must list 4 channel counts"),   # IndexError before
    ("train_evaluator", ["--widths", "[0, 8, 8, 8]"], r"^widths\[0\] must be a whole number >= 1, got 0"),
    ("train_evaluator", ["--lowres", "16"], r"^lowres must be a JSON list of whole numbers >= 1"),
    ("train_evaluator", ["--lowres-prob", "2"], r"^lowres_prob must be in \[0, 1\], got 2"),
])
def test_a_number_out_of_range_is_refused_naming_it(wrong_files, name, argv, match):
    with pytest.raises(ValueError, match=match):
        run_cli(name, [*argv, *(["--out", "$missing"] if name == "train_evaluator" else [])], wrong_files)


@pytest.mark.parametrize("name, argv, match", [
    ("finetune", ["--student", "$pt"], r"^--student \S+m\.pt is a model for 1x8x8 inputs, but profile 'smoke' trains "
                                       r"on 1x16x16 Fashion-MNIST images; pass one made for them"),
    ("prune_learn", ["--teacher", "$pt"], r"^--teacher \S+m\.pt is a model for 1x8x8 inputs"),
    ("pretrain", ["--model", "DiT-Mini/2", "--out", "$out"], r"^--model DiT-Mini/2 is a model for 4x32x32 inputs"),
])
def test_a_model_for_other_images_than_the_profiles_is_refused_before_training(wrong_files, name, argv, match):
    """Before: AssertionError 'Input height (16) doesn't match model (8)' from the first step, as a traceback."""
    with pytest.raises(ValueError, match=match):
        run_cli(name, ["--profile", "smoke", *argv], wrong_files)


def test_a_sit_exported_as_a_ddim_pipeline_is_refused(wrong_files, tmp_path):
    sit = tiny_dit(tmp_path / "sit.pt", objective="flow")
    with pytest.raises(ValueError, match=r"^--checkpoint \S+sit\.pt is a SiT \(flow objective\), but --vae writes a "
                                         r"DiTPipeline, whose DDIM scheduler samples DDPM models only; export the "
                                         r"transformer alone \(leave out --vae\)"):
        run_cli("export", ["--checkpoint", sit, "--out", "$out", "--vae", "$dir"], wrong_files)


def test_an_image_folder_without_classes_names_the_flag(wrong_files):
    with pytest.raises(FileNotFoundError, match=r"^--data-path \S+folder: Couldn't find any class folder .*; pass an "
                                                r"ImageNet-style folder \(one sub-folder of images per class\)"):
        run_cli("extract_features", ["--data-path", "$dir", "--out", "$out", "--workers", "0"], wrong_files)


def test_a_wrong_file_is_one_line_on_the_console(wrong_files, capsys):
    from tinyfusion.cli import evaluate
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--npz", str(wrong_files["$text"])], console=True)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 1 and len(err) == 2 and "Traceback" not in "".join(err)
    assert err[0].startswith("python -m tinyfusion.cli.evaluate: error: --npz ") and "is a text file" in err[0]
