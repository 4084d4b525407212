"""The entry points behave as command-line tools do: typed and checked flags that fail at once (before torch is
imported), switches, ``--help`` with every default, ``--config-json`` merged with flags, errors as one line."""
import inspect
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tinyfusion.cli import common

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = ("evaluate", "export", "extract_features", "finetune", "pretrain", "prune_learn", "sample", "selftest",
                "train_evaluator")


@pytest.fixture
def results_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    return tmp_path


def module(name):
    import importlib
    return importlib.import_module(f"tinyfusion.cli.{name}")


def run_python(code_or_args, **env):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_a_mistyped_flag_fails_at_once_without_importing_torch():
    code = """
import sys, time
from tinyfusion.cli import evaluate, finetune, prune_learn, reproduce, sample, selftest
t0 = time.time()
for main, argv in ((finetune.main, ["--mode", "kdd"]), (finetune.main, ["--profile", "cpuu"]),
                   (prune_learn.main, ["--update", "lorra"]), (sample.main, ["--sampler", "dddim"]),
                   (evaluate.main, ["--objective", "flw"]), (selftest.main, ["--fail-mode", "boom"]),
                   (reproduce.main, ["--profile", "cpuu"]), (finetune.main, ["--steps", "ten"])):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 2, e.code
    else:
        raise AssertionError(argv)
print("torch imported:", "torch" in sys.modules, "seconds:", round(time.time() - t0, 2))
"""
    p = run_python(code)
    assert p.returncode == 0, p.stderr
    assert "torch imported: False" in p.stdout
    errors = [line for line in p.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 8 and not any(line.startswith("usage:") for line in p.stderr.splitlines())
    assert errors[0] == ("python -m tinyfusion.cli.finetune: error: argument --mode: invalid choice: 'kdd' "
                         "(choose from 'finetune', 'kd', 'repkd', 'masked_kd')")
    assert "argument --steps: invalid int value: 'ten'" in errors[-1]
    assert "python -m tinyfusion.cli.finetune --help lists the flags" in p.stderr  # the hint


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_names_the_module_call_and_shows_every_flag_with_help_and_defaults(name, capsys):
    m = module(name)
    parser = common.parser_for(m)
    with pytest.raises(SystemExit) as e:
        m.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m tinyfusion.cli.{name} ")
    assert "(JSON)" not in text
    for action in parser._actions:
        assert action.help, f"{name}: {action.option_strings} has no help"
        if action.default not in (None, "", "==SUPPRESS=="):  # a default the help does not spell out is shown
            assert "default" in parser.formatter_class(parser.prog)._get_help_string(action).lower(), action.dest


def test_help_shows_defaults_types_and_switches(capsys):
    from tinyfusion.cli import finetune
    with pytest.raises(SystemExit):
        finetune.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for part in ("--ema-decay EMA_DECAY EMA decay of the weights (the model written is the EMA) (default: 0.999)",
                 "--recompute, --no-recompute", "--progress, --no-progress", "(default: True)",
                 "--mode {finetune,kd,repkd,masked_kd}", "--kept JSON", "--steps STEPS training steps (default: the "
                 "profile's finetune_steps)", "10% of the steps"):
        assert part in text, part


def test_switches_take_no_value_and_the_old_spelling_is_refused_clearly(capsys):
    from tinyfusion.cli import finetune
    parser = common.parser_for(finetune)
    parse = lambda *argv: common.parse_config(parser, finetune.DEFAULTS, finetune.CHOICES, list(argv))[1]  # noqa
    assert parse()["recompute"] is False and parse()["progress"] is True
    assert parse("--recompute")["recompute"] is True and parse("--no-progress")["progress"] is False
    for old in (["--recompute", "on"], ["--progress", "false"], ["--recompute", "true"]):
        with pytest.raises(SystemExit) as e:
            parse(*old)
        assert e.value.code == 2
        assert f"{old[0]} takes no value: write" in capsys.readouterr().err


def test_config_json_merges_with_the_flags_and_refuses_what_it_does_not_know(tmp_path, capsys):
    from tinyfusion.cli import finetune
    parser = common.parser_for(finetune)
    path = tmp_path / "c.json"

    def parse(cfg, *argv):
        path.write_text(json.dumps(cfg))
        return common.parse_config(parser, finetune.DEFAULTS, finetune.CHOICES, ["--config-json", str(path), *argv])[1]

    config = parse({"mode": "kd", "steps": 5, "progress": False}, "--steps", "7", "--seed", "3")
    assert (config["mode"], config["steps"], config["seed"], config["progress"]) == ("kd", 7, 3, False)
    assert parse({"seed": 4}, "--seed", "0")["seed"] == 0  # a flag given at its default still overrides the file
    for cfg, match in (({"stesp": 5}, "unknown key(s) ['stesp']"), ({"mode": "kdd"}, "mode='kdd' is not one of"),
                       ([1, 2], "holds a list")):
        with pytest.raises(SystemExit):
            parse(cfg)
        assert match in capsys.readouterr().err


def test_launch_cmd_flags_parse_back_to_the_config():
    from tinyfusion.cli import finetune
    from tinyfusion.launch import launch_cmd
    config = dict(profile="smoke", student="a b.pt", mode="masked_kd", kept=[0, 3], steps=5, recompute=True,
                  progress=False, k_sigma=2.0, snapshots=None)
    argv = shlex.split(launch_cmd("tinyfusion.cli.finetune", 1, **config))[3:]
    parsed = common.parse_config(common.parser_for(finetune), finetune.DEFAULTS, finetune.CHOICES, argv)[1]
    assert {k: parsed[k] for k in config} == config


def test_an_error_is_one_line_and_a_bug_one_traceback(results_env, capsys, monkeypatch):
    """As ``python -m`` runs them (``console=True``): a bad value is one line and the hint, exit status 1; a bug
    (here selftest's deliberate RuntimeError) shows its traceback once; TINYFUSION_TRACEBACK=1 shows it for both."""
    from tinyfusion.cli import finetune, selftest
    monkeypatch.delenv(common.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        finetune.main(["--profile", "smoke", "--student", "no-such.pt", "--steps", "0"], console=True)
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "python -m tinyfusion.cli.finetune: error: steps must be > 0, got 0",
        "(TINYFUSION_TRACEBACK=1 shows the traceback; python -m tinyfusion.cli.finetune --help lists the flags)"]
    with pytest.raises(SystemExit) as e:
        selftest.main(["--fail-rank", "0", "--bar-steps", "0"], console=True)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("Traceback (most recent call last)") == 1
    assert err.rstrip().endswith("RuntimeError: selftest: deliberate failure on rank 0")
    monkeypatch.setenv(common.TRACEBACK_ENV, "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them: each line names the rank, as launch reads it
    monkeypatch.setenv("RANK", "1")
    try:
        raise ValueError("steps must be > 0, got 0")
    except ValueError as bad:
        assert common.report_error("prog", bad) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[rank1]: Traceback (most recent call last):" and err[-1] == "[rank1]: ValueError: steps must be > 0, got 0"
    assert all(line.startswith("[rank1]: ") for line in err)


def test_the_parsers_lists_agree_with_the_library():
    from tinyfusion.cli import evaluate, finetune, prune_learn, sample, train_evaluator
    from tinyfusion.diffusion import OBJECTIVES, create_objective
    from tinyfusion.evaluator import train_evaluator as train
    from tinyfusion.pruning.learnable import UPDATES
    from tinyfusion.recovery import MODES

    assert finetune.MODES == MODES and prune_learn.UPDATES == UPDATES
    samplers = {s for name in OBJECTIVES for s in create_objective(name).SAMPLERS}
    assert set(sample.SAMPLERS) == set(evaluate.SAMPLERS) == samplers
    for m in (evaluate, finetune, prune_learn, sample):  # --objective overrides a DiT/SiT's; a MAR's is its own
        assert set(m.CHOICES["objective"]) == set(OBJECTIVES) - {"mar"}
    assert train_evaluator.DEFAULTS == {k: p.default for k, p in inspect.signature(train).parameters.items()}


def test_reproduce_flags():
    from tinyfusion.cli import reproduce
    a = reproduce.parser().parse_args(["--only", "7,0", "--no-progress", "--profile", "smoke"])
    assert (a.only, a.progress, a.profile) == (["07", "00"], False, "smoke")
    assert reproduce.parser().parse_args([]).progress is True
