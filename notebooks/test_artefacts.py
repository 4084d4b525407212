"""Every figure, table, verdict and the summary that the notebooks wrote in this pytest session.

Runs after nbval has executed ``00_...ipynb`` ... ``09_...ipynb`` (``pytest --nbval-lax notebooks/``; pytest collects
this folder's files in name order) and reads the folder they wrote: ``$TINYFUSION_RESULTS/<profile>`` (by default
``results/<profile>``), the smoke profile unless ``TINYFUSION_PROFILE`` says otherwise (see ``conftest.py``).
Skipped, with the reason, when the notebooks did not all run before it in this session.
"""
import json
import os

import pandas as pd
import pytest

from tinyfusion.paper import CLAIMS
from tinyfusion.profiles import get_profile
from tinyfusion.scale import ladder
from tinyfusion.verdicts import STATUSES

FIGURES = ["00_data_grid", "00_teacher_samples", "01_calibration_histogram", "01_kept_layers", "01_calib_vs_fid",
           "01_recovery_curves", "01_samples_100k",
           "02_decision_dynamics", "02_kept_vs_baselines",
           "02_confidence_history", "02_gate_costs", "02_corrected_curves", "03_scheme_ablation", "04_lora_vs_full",
           "05_massive_activations", "06_kd_loss_curves", "07_speedup",
           "08_d7_samples", "11_layer0_keep_history", "11_decision_dynamics_official", "11_gate_budget_curves",
           "11_residual_ratio", "12_residual_ratio", "12_max_over_std", "12_learned_masks", "12_scale"]
TABLES = ["00_teacher_metrics", "01_table3", "01_table3_runs", "01_recovery_curves", "01_recovery_curves_summary",
          "01_curve_noise", "01_verdicts_by_point", "02_block_confidence", "02_settled", "02_gate_costs",
          "02_corrected_curves", "02_corrected_summary", "table4_runs", "table4", "05_summary",
          "06_table5", "07_speedup", "08_table7", "11_gate_decisions", "11_block0", "11_teachers", "11_robustness",
          "11_robustness_evidence", "12_teachers", "12_teacher_budgets", "12_scale", "12_scale_evidence", "12_ratios",
          "12_scale_trend", "12_gate_decisions"]
SIT_FIGURES = ["10_sit_teacher_samples", "10_kept_layers", "10_fid_by_method", "10_tinysit_samples"]  # <profile>-sit/
SIT_TABLES = ["10_teachers", "10_table2", "10_table2_runs"]
MAR_FIGURES = ["13_mar_teacher_samples", "13_kept_layers", "13_recovery_curves", "13_tinymar_samples"]  # <profile>-mar/
MAR_TABLES = ["13_teachers", "13_kept_layers", "13_recovery_curves", "13_recovery_curves_summary", "13_table2",
              "13_sampling_speed", "11_mar_curves", "11_mar_summary"]  # notebook 11's MAR column: same runs


def test_notebooks_wrote_every_artefact(notebook_session):
    s = notebook_session
    not_run = [n for n in s["expected"] if n not in s["ran"]]
    if len(not_run) == len(s["expected"]):
        pytest.skip("checks what the numbered notebooks write, but none ran before it in this pytest session; run "
                    "them all with `pytest --nbval-lax notebooks/` (or `make test`)")
    if not_run:
        pytest.skip(f"checks what the notebooks write, but {', '.join(not_run)} did not run before it in this pytest "
                    f"session; run them all with `pytest --nbval-lax notebooks/` (or `make test`)")
    if s["failed"]:
        pytest.skip(f"{', '.join(sorted(s['failed']))} failed above, so their artefacts are not checked")
    out = get_profile(os.environ["TINYFUSION_PROFILE"]).results
    sit = get_profile(os.environ["TINYFUSION_PROFILE"] + "-sit").results
    mar = get_profile(os.environ["TINYFUSION_PROFILE"] + "-mar").results
    files = [out / "figures" / f"{f}.png" for f in FIGURES] + [out / "tables" / f"{t}.csv" for t in TABLES]
    files += [sit / "figures" / f"{f}.png" for f in SIT_FIGURES] + [sit / "tables" / f"{t}.csv" for t in SIT_TABLES]
    files += [mar / "figures" / f"{f}.png" for f in MAR_FIGURES] + [mar / "tables" / f"{t}.csv" for t in MAR_TABLES]
    files += [out / "verdicts" / f"claim{c}.json" for c in CLAIMS] + [out / "summary.md"]
    missing = [str(f.relative_to(out.parent)) for f in files if not f.exists()]
    assert not missing, f"not written by the notebooks in {out}: {missing}"
    stale = [str(f.relative_to(out.parent)) for f in files if f.stat().st_mtime < s["started"] - 2]
    assert not stale, f"left from an earlier run, not rewritten in this session: {stale}"
    for claim in CLAIMS:
        v = json.loads((out / "verdicts" / f"claim{claim}.json").read_text())
        assert v["claim"] == claim and v["status"] in STATUSES and v["evidence"], v
        assert v["rule"] and isinstance(v["yardstick"], dict), v  # every verdict names its rule and its noise
        assert v["notebook"] in s["expected"], v
    summary = (out / "summary.md").read_text()
    assert "Verdicts" in summary and summary.count("| ") > 20
    assert "![" in summary and "figures/01_recovery_curves.png" in summary  # the key figures are embedded
    assert all(f"| {claim} |" in summary for claim in CLAIMS)  # one verdict row per claim
    assert "Does the verdict survive?" in summary                # notebook 11 rewrote it with the robustness table
    assert "The scale ladder (notebook 12" in summary and "Claim 2 (learnable beats every baseline)" in summary
    robust = (out / "tables" / "11_robustness.csv").read_text()
    assert all(s in robust for s in ("notebook 01's runs", "gate steps", "DiT teacher seed 1", "SiT teacher", "MAR teacher",
                                          "survive"))
    scale = pd.read_csv(out / "tables" / "12_scale.csv")  # one row per rung of the ladder, the paper's last
    assert list(scale.rung) == [*ladder(os.environ["TINYFUSION_PROFILE"]), "paper DiT-XL/2"]
    assert scale.tokens.iloc[0] == 16 and scale.tokens.iloc[-1] == 256
    assert scale["learnable/best 100K"].notna().all() and set(scale["claim 2"].iloc[:-1]) <= set(STATUSES)
    assert scale["claim 2"].iloc[-1] == "claimed (paper)"   # the paper's assertion, not a status of our rules
