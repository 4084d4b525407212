"""The robustness study's helpers (notebook 11): decisions read from gate histories, the claim-robustness table, the
studies of `make reproduce` and `make robustness`, the second teacher's profile."""
import json

import pytest

from tinyfusion import robustness, verdicts as V
from tinyfusion.profiles import get_profile


def _run(tmp_path, name, kept_by_step, final_kept, settled, last_change):
    """A learnable run's result as ``Study.learnable`` returns it, with a history of EMA decisions at given steps."""
    hist = [{"step": s, "kept": k, "ema_layer_probs": [0.5] * 4} for s, k in kept_by_step]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"history": hist}))
    return {"kept": final_kept, "history_json": str(path), "settled": settled, "last_change": last_change,
            "confidence": [0.9, 0.8]}


def test_decisions_find_when_block0_took_layer0_and_its_last_change(tmp_path):
    # every real history opens with the step-0 snapshot: equal gates, whose tie keeps layer 0 of each block
    late = _run(tmp_path, "late", [(0, [0, 2]), (100, [1, 3]), (800, [0, 3]), (1000, [0, 3])], [0, 3],
                [False, True], [800, 100])
    never = _run(tmp_path, "never", [(0, [0, 2]), (10, [1, 2]), (1000, [1, 2])], [1, 2], [True, True], [0, 0])
    back = _run(tmp_path, "back", [(0, [0, 2]), (250, [0, 2]), (500, [1, 2]), (1000, [1, 2])], [1, 2], [True, True],
                [500, 0])
    table = robustness.decisions({("1:2", 0): late, ("1:2", 1): never, ("1:2", 2): back}, "1000 steps", 4)
    assert len(table) == 6 and list(table.layers[:2]) == ["0 1", "2 3"]
    b0 = robustness.block0_summary(table).set_index("seed")
    assert b0.loc[0, "kept"] == "0" and b0.loc[0, "layer0_end"] and b0.loc[0, "layer0_from"] == 800
    assert b0.loc[0, "last_change"] == 800 and b0.loc[0, "last_change_share"] == pytest.approx(0.8)
    assert not b0.loc[1, "layer0_ever"] and b0.loc[1, "kept"] == "1"
    assert b0.loc[2, "layer0_ever"] and not b0.loc[2, "layer0_end"]   # kept early, dropped by the end


def test_budget_labels_differ_even_where_both_budgets_have_one_step_count():
    assert robustness.budget_labels(get_profile("cpu")) == {"profile": "938 gate steps",
                                                            "official": "10010 gate steps"}
    labels = robustness.budget_labels(get_profile("imagenet"))   # 10,010 steps each: the names tell them apart
    assert len(set(labels.values())) == 2 and labels["official"] == "10010 gate steps (official)"


def test_curve_candidates_take_every_pruning_seed_given_not_the_fine_tune_seeds(monkeypatch):
    from tinyfusion.study import REFERENCES, Study
    study = Study("cpu")   # fine-tune seeds (0, 1); three pruning seeds below
    monkeypatch.setattr(Study, "table3_candidates", lambda self: ({"shortgpt": [0, 1], "learnable": [1, 2]}, {}))
    monkeypatch.setattr(Study, "mask_study", lambda self, groups: {"picks": {m: {"kept": [2, 3]} for m in REFERENCES}})
    learned = {0: {"kept": [1, 3]}, 1: {"kept": [1, 2]}, 2: {"kept": [0, 3]}}
    got = [(m, ps, k) for m, ps, k in study.curve_candidates(learned=learned) if m == "learnable"]
    assert got == [("learnable", 0, [1, 3]), ("learnable", 1, [1, 2]), ("learnable", 2, [0, 3])]


def test_learned_runs_picks_one_scheme_by_seed():
    runs = {("1:2", 0): {"kept": [1, 3]}, ("1:2", 2): {"kept": [0, 3]}, ("2:4", 0): {"kept": [0, 1]}}
    assert robustness.learned_runs(runs) == {0: {"kept": [1, 3]}, 2: {"kept": [0, 3]}}
    assert robustness.learned_runs(runs, "2:4") == {0: {"kept": [0, 1]}}


def test_caveats_name_only_teachers_under_the_bar_and_recorded_status_keeps_not_testable(tmp_path):
    ok, low = V.teacher_check(0.9, 3.0, 1.0), V.teacher_check(0.765, 2.5, 1.0)
    notes = robustness.caveats({"A": ok, "B": low}, {"a": "A", "a2": "A", "b": "B", "c": "C"})
    assert list(notes) == ["b"] and "0.765" in notes["b"] and "does NOT meet" in notes["b"]
    assert list(robustness.checks_table({"A": ok, "B": low})["meets the bar"]) == [V.HELD, V.NOT_HELD]

    class Fake:
        root = tmp_path
    (tmp_path / "verdicts").mkdir()
    write = lambda c, v: (tmp_path / "verdicts" / f"claim{c}.json").write_text(json.dumps(v))  # noqa: E731
    write(3, {"status": V.NOT_HELD, "yardstick": {"call": 2.2}})
    write(4, {"status": V.HELD, "yardstick": {"k": 2}})                 # the old 2-SE rule: not in the table
    write(9, {"status": V.NOT_TESTABLE, "yardstick": {}})               # nothing to call with: kept
    assert [robustness.recorded_status(Fake, c) for c in (3, 4, 9, 5)] == [V.NOT_HELD, None, V.NOT_TESTABLE, None]


def test_robustness_table_and_its_sentences():
    held, nh = V.Verdict(V.HELD, "e"), V.Verdict(V.NOT_HELD, "e")
    cells = {"ref": {1: "not held", 2: "not held", 3: "not held", 4: "held", 9: "mixed"},
             "long": {1: nh, 2: held}, "sit": {1: nh, 2: nh, 9: held}}
    table, sentences = robustness.robustness_table(cells, "ref")
    assert list(table.claim) == list(V.ROBUST_CLAIMS) and list(table.columns[1:4]) == ["ref", "long", "sit"]
    row = table.set_index("claim")
    assert row.loc[2, "long"] == "held" and row.loc[3, "long"] == "—"
    assert "the verdict survives" in sentences[1] and "does not survive" in sentences[2]
    assert "'held' in long" in sentences[2]
    assert sentences[3] == "Claim 3: 'not held' in ref; not re-judged in any other setting."   # not part of them
    _, pending = robustness.robustness_table({**cells, "t1": {1: None, 2: nh}}, "ref")   # part of t1, no status yet
    assert pending[1].endswith("(not run: t1).") and pending[3].endswith("any other setting.")
    _, alone = robustness.robustness_table({"ref": {}, "sit": {9: held}}, "ref")   # the reference never recorded 9
    assert alone[9] == ("Claim 9: no status in the reference setting (ref), nothing to compare; elsewhere: 'held' in "
                        "sit.")
    assert alone[1].endswith("nothing to compare.")


def test_budgets_and_the_second_teacher_profile():
    cpu = get_profile("cpu")
    assert robustness.budget_settings(cpu, "official") == (10010, 0.999)
    assert robustness.budget_settings(cpu, "profile") == (cpu.prune_steps, cpu.prune_ema_decay)
    with pytest.raises(ValueError, match="unknown gate budget 'long'"):
        robustness.budget_settings(cpu, "long")
    seed1 = get_profile("cpu-seed1")
    assert seed1.teacher == "data/teacher_cpu_seed1.pt" and seed1.model == cpu.model
    assert seed1.pretrain_steps == cpu.pretrain_steps and seed1.prune_steps == cpu.prune_steps
    assert seed1.path(seed1.teacher).exists(), "the second teacher ships in data/"


def test_make_reproduce_and_make_robustness_run_different_notebooks():
    from tinyfusion.cli.reproduce import STUDIES, clock_name, notebooks
    main = [p.name[:2] for p in notebooks()]
    robust = [p.name[:2] for p in notebooks(study="robustness")]
    assert robust == list(STUDIES["robustness"]) == ["11"] and "11" not in main and main[-1] == "09"
    assert [p.name[:2] for p in notebooks(["11"])] == ["11"]       # make notebook NB=11 finds it
    assert [p.name[:2] for p in notebooks(study="scale")] == ["12"] and "12" not in main
    assert clock_name() == "reproduce_clock.json" and clock_name("robustness") == "robustness_clock.json"
    with pytest.raises(SystemExit, match="unknown study 'x'"):
        notebooks(study="x")


def test_a_stopped_curve_run_reuses_the_full_length_run_when_it_is_cached(tmp_path, monkeypatch):
    """With ``stop``, a model notebook 01 already fine-tuned to its last point is read from that run (its snapshots up
    to the stop), not fine-tuned again; without that run, the short run is what runs."""
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    st = Study("smoke", curve_points=(4, 6, 12), finetune_long=6)
    monkeypatch.setattr(Study, "pruned", lambda self, kept, source=None, name="pruned": "student.pt")
    asked, ran = [], []
    full = {"model": "m.pt", "snapshots": {"4": "a.pt", "6": "b.pt", "12": "c.pt"}}
    monkeypatch.setattr(Study, "finetune_cached", lambda self, student, **kw: asked.append(kw) or full)
    monkeypatch.setattr(Study, "recovered", lambda self, *a, **kw: ran.append(kw) or {"snapshots": {}})
    r = st.curve_run("learnable", [0, 2], 0, stop=6)
    assert r["snapshots"] == {"4": "a.pt", "6": "b.pt"} and not ran
    assert asked[0]["steps"] == 12 and asked[0]["lr_steps"] == 12 and asked[0]["snapshots"] == [4, 6, 12]
    monkeypatch.setattr(Study, "finetune_cached", lambda self, student, **kw: None)
    st.curve_run("learnable", [0, 2], 0, stop=6)
    assert ran[-1]["steps"] == 6 and ran[-1]["lr_steps"] == 12 and ran[-1]["snapshots"] == [4, 6]
    st.curve_run("shortgpt", [0, 2], 0, stop=6)            # not a long curve: 6 steps is its full length anyway
    assert ran[-1]["steps"] == 6 and len(ran) == 2


def test_finetune_cached_finds_only_a_finished_run(tmp_path, monkeypatch):
    from tinyfusion import cache, recovery
    from tinyfusion.io import save_json
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    st = Study("smoke")
    student = tmp_path / "student.pt"
    student.write_bytes(b"x")
    kw = dict(seed=0, steps=6, kept=[0, 2], lr_steps=6, snapshots=[4, 6])
    assert st.finetune_cached(student, **kw) is None
    config = {"profile": "smoke", **recovery.recovery_config(st.prof, student=student, mode="finetune", k_sigma=0.0,
                                                             teacher=None, groups="1:2", parent_map=None, **kw)}
    out = cache.folder(st.root, "finetune", "x", config)
    out.mkdir(parents=True)
    save_json({"config": cache.fingerprint(config), "result": {"model": "m"}, "wall_s": 1.0}, out / cache.RECORD)
    assert st.finetune_cached(student, **kw) == {"model": "m"}
    assert st.finetune_cached(student, **{**kw, "seed": 1}) is None
