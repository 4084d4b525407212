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
    late = _run(tmp_path, "late", [(0, [1, 2]), (100, [1, 3]), (800, [0, 3]), (1000, [0, 3])], [0, 3],
                [False, True], [800, 100])
    never = _run(tmp_path, "never", [(0, [1, 2]), (10, [1, 2]), (1000, [1, 2])], [1, 2], [True, True], [0, 0])
    back = _run(tmp_path, "back", [(0, [0, 2]), (500, [1, 2]), (1000, [1, 2])], [1, 2], [True, True], [500, 0])
    table = robustness.decisions({("1:2", 0): late, ("1:2", 1): never, ("1:2", 2): back}, "1000 steps", 4)
    assert len(table) == 6 and list(table.layers[:2]) == ["0 1", "2 3"]
    b0 = robustness.block0_summary(table).set_index("seed")
    assert b0.loc[0, "kept"] == "0" and b0.loc[0, "layer0_end"] and b0.loc[0, "layer0_from"] == 800
    assert b0.loc[0, "last_change"] == 800 and b0.loc[0, "last_change_share"] == pytest.approx(0.8)
    assert not b0.loc[1, "layer0_ever"] and b0.loc[1, "kept"] == "1"
    assert b0.loc[2, "layer0_ever"] and not b0.loc[2, "layer0_end"]   # kept early, dropped by the end


def test_distinct_masks_and_learnable_candidates():
    runs = {("1:2", 0): {"kept": [1, 3]}, ("1:2", 1): {"kept": [1, 3]}, ("1:2", 2): {"kept": [0, 3]},
            ("2:4", 0): {"kept": [0, 1]}}
    masks, same = robustness.distinct_masks(runs, "1:2")
    assert masks == [(0, [1, 3]), (2, [0, 3])] and same == {1: 0}
    assert robustness.learnable_candidates(runs) == [("learnable", 0, [1, 3]), ("learnable", 1, [1, 3]),
                                                     ("learnable", 2, [0, 3])]
    cands = [("shortgpt", None, [0, 1]), ("learnable", 0, [2, 3])]
    assert robustness.with_learnable(cands, {("1:2", 5): {"kept": [0, 2]}}) == [
        ("shortgpt", None, [0, 1]), ("learnable", 5, [0, 2])]


def test_swap_learnable_replaces_only_the_learnable_rows():
    import pandas as pd
    ref = pd.DataFrame({"method": ["learnable", "shortgpt"], "fid": [3.0, 2.0]})
    new = pd.DataFrame({"method": ["learnable", "learnable"], "fid": [1.0, 1.1]})
    out = robustness.swap_learnable(ref, new)
    assert sorted(out.fid) == [1.0, 1.1, 2.0] and (out.method == "learnable").sum() == 2


def test_robustness_table_and_its_sentences():
    held, nh = V.Verdict(V.HELD, "e"), V.Verdict(V.NOT_HELD, "e")
    cells = {"ref": {1: "not held", 2: "not held", 3: "not held", 4: "held", 9: "mixed"},
             "long": {1: nh, 2: held}, "sit": {1: nh, 2: nh, 9: held}}
    table, sentences = robustness.robustness_table(cells, "ref")
    assert list(table.claim) == list(V.ROBUST_CLAIMS) and list(table.columns[1:4]) == ["ref", "long", "sit"]
    row = table.set_index("claim")
    assert row.loc[2, "long"] == "held" and row.loc[3, "long"] == "—"
    assert "the verdict survives" in sentences[1] and "does not survive" in sentences[2]
    assert "'held' in long" in sentences[2] and "(not run: long, sit)" in sentences[3]


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
    assert clock_name() == "reproduce_clock.json" and clock_name("robustness") == "robustness_clock.json"
    with pytest.raises(SystemExit, match="unknown study 'x'"):
        notebooks(study="x")
