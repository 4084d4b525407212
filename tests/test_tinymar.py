"""TinyMAR (paper Table 2's MAR row, claim 10; notebook 13): ``Study`` runs every step notebook 13 calls on a MAR
teacher through the seam (models/prunable.py), the notebook's helpers (tinyfusion/tinymar.py) lay out what it shows,
and ``make mar`` runs notebook 13 apart from ``make reproduce``."""
import pandas as pd
import pytest

from tinyfusion import paper, tinymar


def test_make_mar_runs_notebook_13_apart_from_make_reproduce():
    from tinyfusion.cli.reproduce import STUDIES, clock_name, notebooks, parser
    main = [p.name[:2] for p in notebooks()]
    assert [p.name[:2] for p in notebooks(study="mar")] == list(STUDIES["mar"]) == ["13"] and "13" not in main
    assert clock_name("mar") == "mar_clock.json" and parser().parse_args(["--study", "mar"]).study == "mar"
    assert 10 in paper.CLAIMS and paper.TABLE2_MAR["TinyMAR-D16"][2:] == (2.28, 283.4)


def test_encoder_and_decoder_layers_kept():
    assert tinymar.encoder_decoder([0, 2, 15, 16, 31], 16) == (3, 2)
    cands = [("learnable", 0, [1, 3]), ("oracle", None, [0, 2])]
    assert tinymar.kept_by_label(cands) == {"learnable (pruning seed 0)": [1, 3], "oracle": [0, 2]}


class _Prof:
    model, name = "MAR-T32/4", "smoke-mar"


class _Study:
    depth, prof = 32, _Prof()


def test_table2_sets_the_paper_beside_ours_at_each_point():
    curves = pd.DataFrame([{"method": m, "kept": k, "seed": s, "steps": st, "fid": f, "is": 2.0,
                            "checkpoint": f"{m}{s}{st}"}
                           for m, k in (("learnable", "1 3"), ("shortgpt", "0 1")) for s in (0, 1)
                           for st, f in ((4, 10.0 + s), (6, 8.0 + s))])
    t = tinymar.table2(_Study(), curves, {"fid": 5.0, "is": 3.0}, (4, 6))
    assert list(t.model) == ["teacher (MAR-T32/4)", "learnable", "shortgpt", "learnable", "shortgpt", "—"]
    learn4 = t.iloc[1]
    assert learn4["FID (ours)"] == "10.500 ± 0.707" and learn4.runs == 2 and learn4["FID (paper)"] == 2.28
    assert t.iloc[0]["FID (paper)"] == 1.78 and t.iloc[-1]["paper"].startswith("MAR-Base")
    assert pd.isna(t.iloc[2]["FID (paper)"])  # only learnable stands beside TinyMAR-D16
    assert tinymar.checkpoint(curves, "learnable", 6, seed=1) == "learnable16"
    with pytest.raises(ValueError, match="no oracle run"):
        tinymar.checkpoint(curves, "oracle", 6)


@pytest.fixture(scope="module")
def mar_study(mar_teacher_3steps, tmp_path_factory):
    """A Study on the shared 3-step MAR teacher (tests/conftest.py), at a budget smaller than the smoke profile's."""
    _, pre = mar_teacher_3steps
    from tinyfusion.study import Study
    tmp = tmp_path_factory.mktemp("tinymar")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYFUSION_RESULTS", str(tmp / "results"))
        mp.setenv("TINYFUSION_QUIET", "1")
        study = Study("smoke-mar", teacher=pre["teacher"], random_candidates=8, prune_steps=2, eval_samples=20,
                      curve_points=(2, 3), finetune_steps=2, finetune_long=3, seeds=(0,))
        yield study


def test_study_runs_every_step_of_notebook_13_on_a_mar(mar_study):
    study = mar_study
    assert study.depth == 32 and study.objective.name == "mar" and type(study.teacher()).__name__ == "MAR"
    cands = study.candidates(tinymar.METHODS)
    assert [m for m, _, _ in cands] == list(tinymar.METHODS)
    assert all(len(k) == 16 and k == sorted(k) for _, _, k in cands)
    kept = dict(tinymar.kept_by_label(cands))
    assert kept["oracle"] == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31] and kept["shortgpt"][-1] == 31
    assert sum(tinymar.encoder_decoder(kept["learnable (pruning seed 0)"], 16)) == 16  # 1:2 in each half: 8 + 8
    table = tinymar.kept_table(study, cands)
    assert list(table["encoder layers kept"] + table["decoder layers kept"]) == [16] * len(cands)
    curves = study.recovery_curves(cands, name="13_recovery_curves", stop=3, points=(2, 3))
    assert sorted(set(curves.steps)) == [2, 3] and len(curves) == 2 * len(cands)
    assert curves.fid.notna().all() and curves.calib_loss.notna().all()
    from tinyfusion.models.registry import load_model
    small = load_model(tinymar.checkpoint(curves, "learnable", 3))
    assert small.depth == 16 and small.encoder_depth + small.decoder_depth == 16
    v1, v2, _ = study.curve_verdicts(curves, float("nan"), save=False)
    assert set(v2.details["outcomes"]) == {"shortgpt", "oracle", "sensitivity"}  # the baselines among the candidates
    assert v1.rule == "claim1_recovery"
