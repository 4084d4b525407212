"""The verdict rules of tinyfusion.verdicts on constructed numbers: wins, losses, ties, NaN, one seed per side."""
import json
import math

import numpy as np
import pytest

from tinyfusion import paper
from tinyfusion import verdicts as V

NAN = math.nan
BASELINES = ("shortgpt", "flux-lite", "sensitivity", "oracle")


def table4(lora, full, frozen, schemes=("1:2", "2:4", "7:14")):
    """Table 4 cells {(scheme, update): FID}; each argument is a FID or a {scheme: FID} dict."""
    pick = lambda v, g: v[g] if isinstance(v, dict) else v  # noqa: E731
    return {(g, u): pick(v, g) for g in schemes for u, v in (("lora", lora), ("full", full), ("frozen", frozen))}


# ---------------------------------------------------------------------- statuses and the record
def test_statuses_and_record():
    assert V.STATUSES == ("held", "not held", "mixed", "within noise", "not testable here")
    v = V.Verdict(V.HELD, "because")
    assert (v.status, v.evidence, v.details) == ("held", "because", {})
    with pytest.raises(ValueError, match="unknown verdict status 'maybe'"):
        V.Verdict("maybe", "")


# ---------------------------------------------------------------------- compare
def test_compare_win_loss_and_direction():
    good, bad = [1.0, 1.1, 0.9], [2.0, 2.1, 1.9]
    assert V.compare(good, bad) == "a" and V.compare(bad, good) == "b"
    assert V.compare(good, bad, lower_is_better=False) == "b"  # e.g. IS: higher is better


def test_compare_gap_must_exceed_the_summed_seed_spreads():
    # stds 0.141 each: a gap of 0.1 is inside their sum, a gap of 0.5 is not
    assert V.compare([1.0, 1.2], [1.1, 1.3]) == "within noise"
    assert V.compare([1.0, 1.2], [1.5, 1.7]) == "a"


def test_compare_one_seed_per_side_uses_a_one_percent_floor():
    assert V.compare([1.0], [1.01]) == "within noise"   # 0.01 <= 0.01 + 0.0101
    assert V.compare([1.0], [1.05]) == "a"
    assert V.compare([100.0], [98.5]) == "within noise"  # the floor scales with the mean (1.0 + 0.985)
    assert V.compare([100.0], [97.0]) == "b"


def test_compare_nan_side_loses_and_two_nan_sides_tie():
    assert V.compare([NAN], [5.0]) == "b" and V.compare([5.0], [NAN]) == "a"
    assert V.compare([1.0, NAN], [9.0, 9.1]) == "b"  # one diverged seed makes the whole side non-finite
    assert V.compare([NAN], [NAN]) == "within noise"
    assert V.compare([math.inf], [5.0]) == "b"


# ---------------------------------------------------------------------- beyond_noise
def test_beyond_noise_needs_twice_the_seed_spread():
    assert V.beyond_noise(1.0, 1.5, 0.1) == "a" and V.beyond_noise(1.5, 1.0, 0.1) == "b"
    assert V.beyond_noise(1.0, 1.15, 0.1) == "within noise"
    assert V.beyond_noise(1.0, 1.5, 0.25) == "within noise"  # exactly 2 x noise is still a tie
    assert V.beyond_noise(1.0, 1.01, NAN) == "a"  # no yardstick: the raw order
    assert V.beyond_noise(1.0, 1.0, NAN) == "b"   # ... and an exact tie goes to b
    assert V.beyond_noise(1.0, 1.0, 0.0) == "within noise"


def test_beyond_noise_nan_fid_is_b_on_either_side():
    # kept oddity: a diverged (NaN) run on side a loses, but on side b it wins too
    assert V.beyond_noise(NAN, 1.0, 0.1) == "b"
    assert V.beyond_noise(1.0, NAN, 0.1) == "b"


def test_fmt():
    assert V.fmt(1.23456) == "1.235" and V.fmt(1.0, 0.5, 2) == "1.00 ± 0.50"
    assert V.fmt(NAN) == "NaN" and V.fmt(None) == "NaN" and V.fmt(2.0, NAN) == "2.000"


def test_spearman_finite_drops_pairs_with_a_nan():
    rho, p, n = V.spearman_finite([1, 2, NAN, 4, 5], [10, 20, 30, NAN, 50])
    assert n == 3 and rho == pytest.approx(1.0)
    rho, p, n = V.spearman_finite([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert rho == pytest.approx(-1.0) and p < 0.01 and n == 6


def test_spearman_p_is_exact_for_few_models():
    """4 models ranked perfectly: 2 of the 24 orderings reach |rho| = 1, so p = 1/12 (the t approximation says 0)."""
    rho, p, n = V.spearman_finite([0.1, 0.2, 0.3, 0.4], [1.0, 1.1, 1.3, 1.4])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24) and n == 4
    assert V.spearman_finite([0.1, 0.2, 0.3, 0.4], [1.0, 1.1, 1.3, 1.4], exact=False)[1] < 1e-6
    # 5 models, one swap: rho = 0.9; |rho| >= 0.9 in 10 of the 120 orderings (5 with rho >= 0.9, 5 with <= -0.9)
    rho, p, _ = V.spearman_finite([1, 2, 3, 4, 5], [1, 2, 3, 5, 4])
    assert rho == pytest.approx(0.9) and p == pytest.approx(10 / 120)


# ---------------------------------------------------------------------- claim 1
def fid1(min_loss, **others):
    """FIDs over seeds by method; keyword names spell the methods with "_" (median_loss_random, flux_lite)."""
    return {"min-loss random": min_loss, **{k.replace("_loss_", "-loss ").replace("_", "-"): v for k, v in others.items()}}


def test_claim1_held_when_min_loss_ends_clearly_worse():
    v = V.claim1_calibration_loss(fid1([20.0, 21.0], median_loss_random=[6.0, 6.5], learnable=[5.0, 5.2]), 0.5, 0.01)
    assert v.status == "held" and v.details["best_other"] == "learnable"
    assert v.evidence == ("min-loss random FID 20.500 ± 0.707 vs best (learnable) 5.100 ± 0.141; "
                          "Spearman(calib loss, FID) = 0.50 (p=0.01): lower calibration loss went with lower FID")


def test_claim1_not_held_when_min_loss_is_best():
    v = V.claim1_calibration_loss(fid1([2.0, 2.1], learnable=[5.0, 5.2], shortgpt=[6.0, 6.1]), -0.2, 0.5)
    assert v.status == "not held" and v.details["compare"] == "a"
    assert v.evidence.endswith("no positive relation")


def test_claim1_tie_is_not_held_only_with_a_significant_positive_correlation():
    fid = fid1([5.0, 5.3], learnable=[5.1, 5.2], oracle=[9.0, 9.1])
    assert V.claim1_calibration_loss(fid, 0.8, 0.01).status == "not held"
    assert V.claim1_calibration_loss(fid, 0.8, 0.05).status == "within noise"  # p must be below 0.05
    assert V.claim1_calibration_loss(fid, -0.8, 0.001).status == "within noise"
    assert V.claim1_calibration_loss(fid, NAN, NAN).status == "within noise"


def test_claim1_one_seed_per_side_prints_no_spread():
    v = V.claim1_calibration_loss(fid1([9.0], learnable=[5.0]), 0.1, 0.7)
    assert v.status == "held"
    assert v.evidence.startswith("min-loss random FID 9.000 vs best (learnable) 5.000;")


def test_claim1_nan():
    # a diverged min-loss candidate ends worse than any finite one
    assert V.claim1_calibration_loss(fid1([NAN], learnable=[5.0]), 0.1, 0.7).status == "held"
    # the best other ignores a diverged seed of a candidate (nan-mean) ...
    v = V.claim1_calibration_loss(fid1([9.0], oracle=[8.0], learnable=[NAN, 1.0]), 0.1, 0.7)
    assert v.details["best_other"] == "learnable"
    # ... but a candidate whose FIDs are all NaN, met first, stays "best" (kept oddity of min() with NaN keys)
    v = V.claim1_calibration_loss(fid1([9.0], median_loss_random=[NAN], learnable=[1.0]), 0.1, 0.7)
    assert v.details["best_other"] == "median-loss random" and v.status == "not held"


# ---------------------------------------------------------------------- claim 2
def fid2(learnable, **baselines):
    return {"learnable": learnable, **{k.replace("_", "-"): v for k, v in baselines.items()}}


def test_claim2_held_when_learnable_beats_every_baseline():
    fid = fid2([1.0, 1.1], shortgpt=[5.0, 5.1], flux_lite=[6.0, 6.1], sensitivity=[5.5, 5.4], oracle=[3.0, 3.1])
    v = V.claim2_learnable_vs_baselines(fid, BASELINES)
    assert v.status == "held"
    assert v.evidence == ("learnable FID 1.05; vs shortgpt: better; vs flux-lite: better; vs sensitivity: better; "
                          "vs oracle: better")


def test_claim2_loss_tie_and_mixed():
    worse = fid2([9.0, 9.1], shortgpt=[5.0, 5.1], flux_lite=[6.0, 6.1], sensitivity=[5.5, 5.4], oracle=[3.0, 3.1])
    assert V.claim2_learnable_vs_baselines(worse, BASELINES).status == "not held"
    tie = {m: [5.0, 5.2] for m in ("learnable", *BASELINES)}
    v = V.claim2_learnable_vs_baselines(tie, BASELINES)
    assert v.status == "within noise" and v.evidence.count("within noise") == 4
    mixed = fid2([4.0, 4.1], shortgpt=[5.0, 5.1], flux_lite=[6.0, 6.1], sensitivity=[4.0, 4.2], oracle=[3.0, 3.1])
    v = V.claim2_learnable_vs_baselines(mixed, BASELINES)
    assert v.status == "mixed"
    assert v.details["outcomes"] == {"shortgpt": "a", "flux-lite": "a", "sensitivity": "within noise", "oracle": "b"}
    # kept oddity: one loss among ties is "not held"
    one_loss = {**tie, "oracle": [1.0, 1.1]}
    assert V.claim2_learnable_vs_baselines(one_loss, BASELINES).status == "not held"


def test_claim2_nan_and_one_seed():
    fid = fid2([5.0], shortgpt=[NAN], flux_lite=[5.01], sensitivity=[7.0], oracle=[4.0])
    v = V.claim2_learnable_vs_baselines(fid, BASELINES)
    assert v.details["outcomes"] == {"shortgpt": "a", "flux-lite": "within noise", "sensitivity": "a", "oracle": "b"}
    assert v.status == "mixed"
    assert V.claim2_learnable_vs_baselines(fid2([NAN], shortgpt=[5.0]), ["shortgpt"]).status == "not held"


# ---------------------------------------------------------------------- claim 3
def test_claim3_held_when_small_blocks_win_every_pair():
    cells = table4({"1:2": 1.0, "2:4": 1.0, "7:14": 5.0}, {"1:2": 1.0, "2:4": 1.0, "7:14": 5.0},
                   {"1:2": 1.0, "2:4": 1.0, "7:14": 5.0})
    v = V.claim3_block_size(cells, 0.1)
    assert v.status == "held"
    assert v.evidence == ("small block beats 7:14 in 6 of 6 (scheme, update) pairs, loses in 0, ties (within 2x seed "
                          "spread 0.10) in 0; mean FID 1:2 1.00, 2:4 1.00, 7:14 5.00")


def test_claim3_loss_tie_mixed():
    worse = {"1:2": 6.0, "2:4": 6.0, "7:14": 5.0}
    assert V.claim3_block_size(table4(worse, worse, worse), 0.1).status == "not held"
    same = {"1:2": 5.0, "2:4": 5.1, "7:14": 5.0}
    assert V.claim3_block_size(table4(same, same, same), 0.1).status == "within noise"
    # kept oddity: one win among losses and ties is "mixed", as is one tie among wins
    v = V.claim3_block_size(table4({"1:2": 1.0, "2:4": 6.0, "7:14": 5.0}, worse, same), 0.1)
    assert v.status == "mixed" and (v.details["wins"], v.details["losses"]) == (1, 3)
    better = {"1:2": 1.0, "2:4": 1.0, "7:14": 5.0}
    assert V.claim3_block_size(table4(better, better, {**better, "2:4": 5.1}), 0.1).status == "mixed"


def test_claim3_nan_noise_and_nan_fid():
    close = {"1:2": 4.99, "2:4": 4.98, "7:14": 5.0}
    assert V.claim3_block_size(table4(close, close, close), NAN).status == "held"  # no yardstick: raw order
    assert V.claim3_block_size(table4(close, close, close), 0.1).status == "within noise"
    # a diverged 7:14 cell counts as a loss for the small blocks (beyond_noise's NaN oddity); means skip NaN
    nan714 = {"1:2": 1.0, "2:4": 1.0, "7:14": NAN}
    v = V.claim3_block_size(table4(nan714, {**nan714, "7:14": 5.0}, {**nan714, "7:14": 5.0}), 0.1)
    assert (v.status, v.details["wins"], v.details["losses"]) == ("mixed", 4, 2)
    assert v.evidence.endswith("7:14 5.00")


# ---------------------------------------------------------------------- claim 4
def test_claim4_held_when_every_check_passes():
    v = V.claim4_recoverability(table4(lora=1.0, full=2.0, frozen=5.0), 0.1)
    assert v.status == "held" and v.details == {"passed": 9, "checks": 9}
    assert v.evidence.startswith("lora beats frozen (1:2): yes; full beats frozen (1:2): yes; "
                                 "lora at least as good as full (1:2): yes; lora beats frozen (2:4): yes")
    assert v.evidence.endswith("lora at least as good as full (7:14): yes (noise yardstick: 2 x 0.10 FID)")


def test_claim4_loss_tie_and_mixed():
    v = V.claim4_recoverability(table4(lora=5.0, full=5.0, frozen=1.0), 0.1)
    assert (v.status, v.details["passed"]) == ("not held", 3)  # only "lora at least as good as full" passes
    # kept oddity: all tied fails every "beats" check: not held, never within noise
    assert V.claim4_recoverability(table4(lora=5.0, full=5.0, frozen=5.0), 0.1).status == "not held"
    v = V.claim4_recoverability(table4(lora=3.0, full=1.0, frozen=5.0), 0.1)
    assert (v.status, v.details["passed"]) == ("mixed", 6)  # full beats lora in every scheme
    v = V.claim4_recoverability(table4(lora=1.0, full=1.0, frozen={"1:2": 5.0, "2:4": 1.0, "7:14": 1.0}), 0.1)
    assert (v.status, v.details["passed"]) == ("mixed", 5)


def test_claim4_nan_and_no_yardstick():
    v = V.claim4_recoverability(table4(lora=1.0, full=2.0, frozen=NAN), 0.1)
    assert v.details["passed"] == 3 and v.status == "not held"  # a NaN frozen cell is never beaten
    assert V.claim4_recoverability(table4(lora=4.9, full=4.95, frozen=5.0), NAN).status == "held"


# ---------------------------------------------------------------------- claim 5
def test_claim5_thresholds():
    assert V.claim5_massive_activations([3.0, 25.0], [0.0, 3e-6]).status == "held"
    assert V.claim5_massive_activations([20.0], [0.0]).status == "held"
    assert V.claim5_massive_activations([15.0, 2.0], [0.0, 0.0]).status == "mixed"  # kept oddity: 10-20 is mixed
    assert V.claim5_massive_activations([10.0], [0.0]).status == "mixed"
    assert V.claim5_massive_activations([9.99], [0.0]).status == "not held"


def test_claim5_evidence_and_nan():
    v = V.claim5_massive_activations([NAN, 25.0, 4.0], [1e-6, NAN, 2e-6])
    assert v.status == "held"
    assert v.evidence == ("teacher max |h| / std = 25.0 (paper ~34; 'massive' fixed beforehand as >= 20); "
                          "share of positions beyond 10 sigma: 1.50e-06")
    assert f"paper ~{paper.FIGURE8_MAX_OVER_STD['teacher']:.0f}" in v.evidence
    assert V.claim5_massive_activations([NAN, NAN], [NAN]).status == "not held"


# ---------------------------------------------------------------------- claim 6
def fid6(masked, kd, ft):
    return {"finetune": ft, "kd": kd, "masked_kd_2": masked, "repkd": [9.0]}


def test_claim6_held_when_all_three_parts_hold():
    v = V.claim6_masked_kd(fid6([3.0, 3.1], [5.0, 5.1], [8.0, 8.1]), NAN, 0, 2840.5)
    assert v.status == "held"
    assert v.evidence == ("Masked KD 2σ vs logits KD: better (3.05 vs 5.05); logits KD vs fine-tune: better (5.05 vs "
                          "8.05); RepKD diverged (FID nan, 0 skipped steps, initial rep loss 2840.5)")


def test_claim6_loss_tie_mixed():
    worse = fid6([8.0, 8.1], [6.0, 6.1], [3.0, 3.1])
    v = V.claim6_masked_kd(worse, 5.0, 0, None)
    assert v.status == "not held" and "RepKD did not diverge (FID 5.00, 0 skipped steps, initial rep loss n/a)" in v.evidence
    tie = fid6([5.0, 5.2], [5.1, 5.2], [5.0, 5.3])
    assert V.claim6_masked_kd(tie, 5.0, 0).status == "within noise"
    assert V.claim6_masked_kd(worse | {"masked_kd_2": [6.0, 6.2]}, 5.0, 0).status == "within noise"
    assert V.claim6_masked_kd(worse, 5.0, 3).status == "mixed"  # one skipped step counts as diverged
    assert V.claim6_masked_kd(worse, 12.3, 0).status == "mixed"  # FID above twice KD's counts as diverged
    assert V.claim6_masked_kd(worse, 12.1, 0).status == "not held"


def test_claim6_nan_and_one_seed():
    # a diverged Masked KD seed makes it lose to KD; a diverged KD makes KD lose to fine-tuning
    v = V.claim6_masked_kd(fid6([3.0, NAN], [5.0, 5.1], [8.0, 8.1]), NAN, 0)
    assert v.details["masked_kd_vs_kd"] == "b" and v.status == "mixed"
    v = V.claim6_masked_kd(fid6([3.0], [NAN], [8.0]), 4.0, 0)
    assert (v.details["masked_kd_vs_kd"], v.details["kd_vs_finetune"]) == ("a", "b")
    assert not v.details["repkd_diverged"]  # twice a NaN KD mean is no bar
    v = V.claim6_masked_kd(fid6([3.0], [3.02], [8.0]), 4.0, 0)  # one seed per side: within the 1% floors
    assert v.details["masked_kd_vs_kd"] == "within noise" and v.status == "mixed"


# ---------------------------------------------------------------------- claim 7
def sweep(depth, width_params, width_channels=1.5, ratio=0.5):
    return [dict(method="base", ratio=0.0, speedup=1.0, ideal=1.0),
            dict(method="depth", ratio=0.25, speedup=1.3, ideal=1.3333),
            dict(method="depth", ratio=ratio, speedup=depth, ideal=1 / (1 - ratio)),
            dict(method="width-params", ratio=0.25, speedup=9.0, ideal=1.3333),
            dict(method="width-params", ratio=ratio, speedup=width_params, ideal=1 / (1 - ratio)),
            dict(method="width-channels", ratio=ratio, speedup=width_channels, ideal=1 / (1 - ratio))]


def test_claim7_held_when_depth_is_near_linear_and_width_lags():
    v = V.claim7_speedup(sweep(1.95, 1.5, 1.4), "DiT-T28/4")
    assert v.status == "held"
    assert v.evidence == ("at ratio 0.50 on CPU (DiT-T28/4): depth 1.95x, width at equal parameters 1.50x, width at "
                          f"equal channel ratio 1.40x (linear 2.00x; paper D14: {paper.SPEEDUP_D14:.2f}x on GPU). "
                          "benchmarks/speed.py has DiT-XL/2 shapes.")
    assert "paper D14: 1.96x" in v.evidence


def test_claim7_loss_mixed_and_ties():
    assert V.claim7_speedup(sweep(1.7, 2.1), "m").status == "not held"
    assert V.claim7_speedup(sweep(1.95, 1.9), "m").status == "mixed"   # width within 0.1x of depth
    assert V.claim7_speedup(sweep(2.0, 1.91), "m").status == "mixed"
    assert V.claim7_speedup(sweep(1.7, 1.5), "m").status == "mixed"    # depth below the 1.9x bar
    assert V.claim7_speedup(sweep(1.9, 1.7), "m").status == "held"     # the bar itself counts


def test_claim7_nearest_ratio_nan_and_missing_rows():
    v = V.claim7_speedup(sweep(1.95, 1.5, ratio=0.45), "m")
    assert v.details["depth"]["ratio"] == 0.45 and v.evidence.startswith("at ratio 0.45 on CPU (m)")
    assert V.claim7_speedup(sweep(NAN, 1.5), "m").status == "not held"
    with pytest.raises(ValueError, match="no 'width-channels' rows"):
        V.claim7_speedup([r for r in sweep(2.0, 1.0) if r["method"] != "width-channels"], "m")


# ---------------------------------------------------------------------- claim 7 with timing repeats
def rounds(depth, width, ratio=0.5, depth_cpu=None, width_cpu=None, width_params=None):
    """Speed-sweep rows with per-round speed-ups (one per timing round) at ``ratio``, plus rows at ratio 0.25 whose
    numbers would flip the verdict if they were picked."""
    n = len(depth)
    row = lambda m, r, sp, cpu=None: dict(method=m, ratio=r, ideal=1 / (1 - r), speedups=list(sp),  # noqa: E731
                                          speedups_cpu=list(sp if cpu is None else cpu))
    rows = [row("base", 0.0, [1.0] * n), row("depth", 0.25, [0.5] * n), row("width-channels", 0.25, [9.0] * n),
            row("depth", ratio, depth, depth_cpu), row("width-channels", ratio, width, width_cpu)]
    if width_params is not None:
        rows.append(row("width-params", ratio, width_params))
    return rows


DEPTH5, WIDTH5 = [1.95, 1.90, 2.00, 1.93, 1.97], [1.45, 1.50, 1.40, 1.52, 1.48]


def test_claim7_repeats_held_when_depth_beats_width_at_the_same_channel_ratio_beyond_2_se():
    import numpy as np
    v = V.claim7_speedup_repeats(rounds(DEPTH5, WIDTH5, width_params=[1.9] * 5), "DiT-T28/4")
    assert v.status == V.HELD and v.rule == "claim7_speedup_repeats" and v.details["called"] == "a"
    diff = np.subtract(DEPTH5, WIDTH5)
    y = v.yardstick
    assert y["repeats"] == 5 and y["k"] == 2.0 and y["measure"] == "speedup"
    assert y["difference_sd"] == pytest.approx(diff.std(ddof=1))
    assert y["se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(5))
    assert y["depth_speedup_sd"] == pytest.approx(np.std(DEPTH5, ddof=1))
    assert y["width_channels_speedup_sd"] == pytest.approx(np.std(WIDTH5, ddof=1))
    assert "timing rounds" in y["measured_from"]
    assert v.evidence.startswith("at ratio 0.50 on CPU (DiT-T28/4), wall clock, 5 interleaved timing rounds: depth "
                                 "1.95 ± 0.04x vs width at equal channel ratio 1.47 ± 0.05x")
    assert "paired difference +0.480x: depth faster beyond 2 SE" in v.evidence
    assert "reaching the paper's 1.9x D14 bar; width at equal parameters 1.90 ± 0.00x" in v.evidence
    assert f"D14 {paper.SPEEDUP_D14:.2f}x, Diff-Pruning 50% (width) 1.51x" in v.evidence


def test_claim7_repeats_not_held_and_within_noise():
    v = V.claim7_speedup_repeats(rounds([1.40, 1.42, 1.38], [1.60, 1.62, 1.61]), "m")
    assert v.status == V.NOT_HELD and "width faster beyond 2 SE" in v.evidence
    v = V.claim7_speedup_repeats(rounds([1.9, 1.5, 2.1, 1.6], [1.7, 1.8, 1.6, 1.9]), "m")
    assert v.status == V.WITHIN_NOISE and "within 2 SE" in v.evidence


def test_claim7_repeats_calls_beyond_k_standard_errors_of_the_mean_not_k_sds():
    # differences 0.1 and 0.3: mean 0.2, sd 0.141, SE 0.1, so the mean is 2.0 SE (but only 1.41 sd) from zero
    rows = rounds([1.6, 1.8], [1.5, 1.5])
    assert V.claim7_speedup_repeats(rows, "m", k=1.9).status == V.HELD
    assert V.claim7_speedup_repeats(rows, "m", k=2.1).status == V.WITHIN_NOISE


def test_claim7_repeats_pairs_the_rounds():
    # shared load moves both models together round by round; the paired difference stays near 0.2
    v = V.claim7_speedup_repeats(rounds([2.0, 1.5, 2.5, 1.8], [1.8, 1.32, 2.27, 1.61]), "m")
    assert v.status == V.HELD
    assert v.yardstick["difference_sd"] < 0.03 < v.yardstick["depth_speedup_sd"]


def test_claim7_repeats_one_round_calls_nothing_and_the_bar_is_context_only():
    v = V.claim7_speedup_repeats(rounds([1.95], [1.20]), "m")
    assert v.status == V.WITHIN_NOISE and "1 timing round: no spread, nothing called" in v.evidence
    assert v.yardstick["repeats"] == 1 and math.isnan(v.yardstick["se"])
    v = V.claim7_speedup_repeats(rounds([1.50, 1.52, 1.49], [1.20, 1.21, 1.19]), "m")
    assert v.status == V.HELD and "short of the paper's 1.9x D14 bar" in v.evidence  # the bar does not decide


def test_claim7_repeats_measure_ratio_and_malformed_rows():
    rows = rounds(DEPTH5, WIDTH5, depth_cpu=[1.4] * 4 + [1.41], width_cpu=[1.6, 1.61, 1.6, 1.62, 1.6])
    v = V.claim7_speedup_repeats(rows, "m", measure="speedup_cpu")
    assert v.status == V.NOT_HELD and "process CPU time" in v.evidence and v.yardstick["measure"] == "speedup_cpu"
    v = V.claim7_speedup_repeats(rounds(DEPTH5, WIDTH5, ratio=0.45), "m")  # nearest ratio, and width at the same one
    assert v.details["depth"]["ratio"] == 0.45 and v.details["width-channels"]["ratio"] == 0.45 and v.status == V.HELD
    with pytest.raises(ValueError, match="no 'width-channels' row at ratio 0.5"):
        V.claim7_speedup_repeats([r for r in rounds(DEPTH5, WIDTH5) if not (r["method"] == "width-channels"
                                                                              and r["ratio"] == 0.5)], "m")
    old = sweep(1.95, 1.5, 1.4)  # rows cached before the sweep recorded its rounds
    with pytest.raises(ValueError, match="per-round speed-ups"):
        V.claim7_speedup_repeats(old, "m")
    with pytest.raises(ValueError, match="measure 'it_s'"):
        V.claim7_speedup_repeats(rounds(DEPTH5, WIDTH5), "m", measure="it_s")
    bad = rounds(DEPTH5, WIDTH5)
    bad[-1]["speedups"] = bad[-1]["speedups"][:3]
    with pytest.raises(ValueError, match="not one interleaved sweep"):
        V.claim7_speedup_repeats(bad, "m")


def test_claim7_repeats_verdict_json_records_rule_and_timing_yardstick(tmp_path, monkeypatch):
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    Study("smoke").verdict(7, V.claim7_speedup_repeats(rounds(DEPTH5, WIDTH5), "m"), "07_speedup.ipynb")
    saved = json.loads((tmp_path / "smoke" / "verdicts" / "claim7.json").read_text())
    assert saved["rule"] == "claim7_speedup_repeats" and saved["status"] == "held"
    assert saved["yardstick"]["repeats"] == 5 and saved["yardstick"]["difference_sd"] > 0


# ---------------------------------------------------------------------- claim 8
def table7(xl_from_d14, xl_from_xl, d14_from_d14, d14_from_xl):
    return {("XL", "D14"): xl_from_d14, ("XL", "XL"): xl_from_xl, ("D14", "D14"): d14_from_d14,
            ("D14", "XL"): d14_from_xl}


def test_claim8_held_when_pruning_d14_wins_with_both_teachers():
    v = V.claim8_iterative_pruning(table7(6.44, 9.71, 7.21, 10.08), 0.1)
    assert v.status == "held" and v.details["wins"] == ["yes", "yes"]
    assert v.evidence == ("D7 from D14 vs from XL: teacher XL 6.44 vs 9.71, teacher D14 7.21 vs 10.08 "
                          "(one seed; noise yardstick 2 x 0.10)")


def test_claim8_loss_tie_mixed():
    assert V.claim8_iterative_pruning(table7(9.0, 6.0, 9.0, 6.0), 0.1).status == "not held"
    assert V.claim8_iterative_pruning(table7(6.0, 6.1, 7.1, 7.0), 0.1).status == "within noise"
    assert V.claim8_iterative_pruning(table7(5.0, 9.0, 7.0, 7.1), 0.1).status == "mixed"  # a win and a tie
    assert V.claim8_iterative_pruning(table7(5.0, 9.0, 9.0, 5.0), 0.1).status == "mixed"


def test_claim8_nan():
    assert V.claim8_iterative_pruning(table7(6.0, 6.1, 7.0, 7.1), NAN).status == "held"  # no yardstick: raw order
    v = V.claim8_iterative_pruning(table7(NAN, 9.0, 5.0, 9.0), 0.1)
    assert v.details["wins"] == ["no", "yes"] and v.status == "mixed"
    assert "teacher XL nan vs 9.00" in v.evidence


# ---------------------------------------------------------------------- notebook 00's teacher check
def test_teacher_check():
    v = V.teacher_check(0.85, 1.234, 0.031)
    assert v.status == "held"
    assert v.evidence == ("class accuracy of its CFG samples = 0.850 (meets the bar of 0.8); FID 1.23 against a "
                          "floor of 0.03.")
    assert V.teacher_check(0.80, 1.0, 0.0).status == "held"
    v = V.teacher_check(0.1, 30.0, 0.03, smoke=True)
    assert v.status == "not held" and "does NOT meet" in v.evidence
    assert v.evidence.endswith("(smoke profile: numbers are not meaningful)")
    assert V.teacher_check(NAN, NAN, 0.03).status == "not held"


# ---------------------------------------------------------------------- claim 9 (SiT)
def _sit_fid(learnable, base=(5.0, 5.1)):
    return {"learnable": list(learnable), **{m: list(base) for m in ("shortgpt", "oracle")}}


def test_claim9_follows_the_claim2_rule_on_sit_numbers():
    ok = V.teacher_check(0.9, 3.0, 1.0)
    win = V.claim9_sit(_sit_fid([3.0, 3.1]), ("shortgpt", "oracle"), ok, [2.5, 2.6], 2.0)
    assert win.status == V.HELD and win.evidence.startswith("SiT: learnable FID 3.05")
    assert "KD better" in win.evidence and "Masked KD D14 / teacher FID = 1.27 (paper 1.47)" in win.evidence
    loss = V.claim9_sit(_sit_fid([7.0, 7.1]), ("shortgpt", "oracle"), ok, [7.0, 7.1], 2.0)
    assert loss.status == V.NOT_HELD and "within noise" in loss.evidence
    tie = V.claim9_sit(_sit_fid([5.0, 5.1]), ("shortgpt", "oracle"), ok, [9.0, 9.1], 2.0)
    assert tie.status == V.WITHIN_NOISE and "fine-tuning better" in tie.evidence


def test_claim9_is_not_testable_without_a_working_sit_teacher():
    bad = V.teacher_check(0.42, 60.0, 1.0)
    r = V.claim9_sit(_sit_fid([3.0, 3.1]), ("shortgpt", "oracle"), bad, [2.5, 2.6], 2.0)
    assert r.status == V.NOT_TESTABLE and "0.420" in r.evidence and "does NOT meet" in r.evidence


# ---------------------------------------------------------------------- the recovery-curve rules (issue 15)
def test_pooled_sd_and_called_weigh_the_mean_difference_by_its_standard_error():
    sd, df = V.pooled_sd({"a": [1.0, 1.2], "b": [2.0, 2.2], "one": [5.0]})
    assert df == 2 and sd == pytest.approx(math.sqrt(0.04 / 2), rel=1e-9)
    assert V.called([1.0, 1.1], [1.5, 1.6], 0.05, k=2) == "a"
    assert V.called([1.5, 1.6], [1.0, 1.1], 0.05, k=2) == "b"
    assert V.called([1.0, 1.1], [1.2, 1.3], 0.2, k=2) == "within noise"      # 0.2 < 2 * 0.2
    assert V.called([1.0, 4.0], [4.0, 4.1], 0.05, k=2) == "within noise"      # a side's own spread counts when larger
    assert V.called([1.0], [float("nan")], 0.1, k=2) == "a" and V.called([1.0], [2.0], float("nan"), 4) == "within noise"


def test_called_uses_the_t_critical_value_at_the_pooled_df():
    assert V.t_critical(4) == pytest.approx(2.776, abs=1e-3) and V.t_critical(10) == pytest.approx(2.228, abs=1e-3)
    assert V.t_critical(0) == math.inf
    # a gap of 2.5 SE (sd 0.1, two runs a side: SE 0.1): called at 2 SE and at df 30 (2.04), not at df 4 (2.78)
    a, b = [1.0, 1.0], [1.25, 1.25]
    assert V.called(a, b, 0.1, k=2) == "a" and V.called(a, b, 0.1, 30) == "a"
    assert V.called(a, b, 0.1, 4) == "within noise"
    assert V.called(a, b, 0.1, 0) == "within noise"   # no degrees of freedom: nothing is called
    with pytest.raises(ValueError, match="df="):
        V.called(a, b, 0.1)                            # neither df nor k: refused, not a silent default
    # a stricter level calls less: Bonferroni over many comparisons
    assert V.called(a, b, 0.1, 30, level=1 - 0.05 / 20) == "within noise"


def test_multiplicity_states_the_comparisons_and_what_bonferroni_would_drop():
    a, b, c = [1.0, 1.0], [1.22, 1.22], [3.0, 3.0]   # 2.2 SE: called at t(30) = 2.04, not at Bonferroni's 2.36
    calls = {"vs x": (a, b, V.called(a, b, 0.1, 30)), "vs y": (a, c, V.called(a, c, 0.1, 30))}
    text = V.multiplicity(calls, 0.1, 30)
    assert "2 at 95% each" in text and "1 of the 2 calls would fall back to within noise (vs x)" in text
    assert V.multiplicity({"vs y": calls["vs y"]}, 0.1, 30) == ""   # one comparison: nothing to state
    assert V.multiplicity(calls, 0.1, 30, k=2) == ""                 # a fixed-k rule has no level to adjust


def test_spearman_p_is_exact_for_ten_models_and_monte_carlo_beyond():
    x = np.arange(10.0)
    y = np.array([1, 0, 3, 2, 4, 6, 5, 8, 7, 9], dtype=float)
    rho, p, n = V.spearman_finite(x, y)
    # the exact p by brute force over all 10! orderings would take minutes; check against the t approximation's
    # neighbourhood and against a Monte-Carlo estimate with many draws
    assert n == 10 and rho == pytest.approx(0.9515, abs=1e-4)
    assert 0 < p < 0.001 and p != V.spearman_finite(x, y, exact=False)[1]
    assert p * math.factorial(10) == pytest.approx(round(p * math.factorial(10)))   # a count over 10! orderings
    x12, y12 = np.arange(12.0), np.r_[np.arange(11.0)[::-1], 11.0]
    rho, p, n = V.spearman_finite(x12, y12)
    assert n == 12 and 0.05 < p < 0.10 and p == V.spearman_finite(x12, y12)[1]   # seeded: the same p each time
    # the exact p agrees with a plain enumeration (scipy's rho for every ordering), ties included
    import itertools
    from scipy.stats import spearmanr
    x7, y7 = [0.3, 0.1, 0.4, 0.1, 0.5, 0.9, 0.2], [2.0, 1.0, 3.5, 1.2, 3.0, 4.0, 2.5]
    rho, p, _ = V.spearman_finite(x7, y7)
    every = [spearmanr(np.array(x7)[list(o)], y7)[0] for o in itertools.permutations(range(7))]
    assert p == pytest.approx(np.mean(np.abs(every) >= abs(rho) - 1e-12))


def test_mask_groups_link_masks_sharing_all_but_two_layers():
    base = list(range(14))
    one_off, two_off = base[:13] + [20], base[:12] + [20, 21]
    far = list(range(14, 28))
    assert V.mask_groups([base, one_off, two_off, far]) == [0, 0, 0, 1]
    assert V.mask_groups([base, two_off], min_shared=13) == [0, 1]
    chain = [base, base[:12] + [20, 21], base[:10] + [20, 21, 22, 23]]   # linked through the middle mask
    assert V.mask_groups(chain) == [0, 0, 0]


def test_claim1_recovery_reads_the_lowest_calibration_loss_method():
    fid = {"min-loss random": [2.0, 2.1], "shortgpt": [1.5, 1.55], "learnable": [1.2, 1.25]}
    loss = {"min-loss random": 0.13, "shortgpt": 0.2, "learnable": 0.5}
    v = V.claim1_recovery(fid, loss, 0.05, 3, 0.02, -0.5, 0.4, 3, 336)
    assert v.status == V.HELD and v.rule == "claim1_recovery" and v.details["best_other"] == "learnable"
    assert v.yardstick["pooled_finetune_seed_sd"] == 0.05 and "336" in v.evidence
    loss["learnable"] = 0.1  # now the lowest-loss model is also the best
    assert V.claim1_recovery(fid, loss, 0.05, 3, 0.02, 0.9, 0.01, 3, 336).status == V.NOT_HELD
    close = {"min-loss random": [1.2, 1.21], "shortgpt": [1.22, 1.23]}
    tie = {"min-loss random": 0.1, "shortgpt": 0.2}
    assert V.claim1_recovery(close, tie, 0.05, 2, 0.02, 0.1, 0.5, 2, 336).status == V.WITHIN_NOISE
    assert V.claim1_recovery(close, tie, 0.05, 2, 0.02, 0.9, 0.01, 2, 336).status == V.NOT_HELD


def test_claim2_recovery_statuses_and_references_do_not_decide():
    base = ("shortgpt", "oracle")
    win = {"learnable": [1.0, 1.05], "shortgpt": [1.5, 1.5], "oracle": [1.6, 1.7], "random 1:2": [0.5, 0.5]}
    v = V.claim2_recovery(win, base, 0.05, 4, 0.02, 336, references=("random 1:2",))
    assert v.status == V.HELD and v.details["references"] == {"random 1:2": "b"} and "inside the 1:2 rule" in v.evidence
    mixed = {**win, "oracle": [1.0, 1.02]}
    assert V.claim2_recovery(mixed, base, 0.05, 4, 0.02, 336).status == V.MIXED
    lost = {"learnable": [2.0, 2.05], "shortgpt": [1.5, 1.5], "oracle": [2.0, 2.02]}
    assert V.claim2_recovery(lost, base, 0.05, 4, 0.02, 336).status == V.NOT_HELD
    tie = {"learnable": [1.5, 1.52], "shortgpt": [1.5, 1.5], "oracle": [1.51, 1.52]}
    assert V.claim2_recovery(tie, base, 0.05, 4, 0.02, 336).status == V.WITHIN_NOISE


def test_claim5_massive_is_not_testable_below_the_declared_threshold():
    assert V.claim5_massive([3.0, 25.0], [1e-4]).status == V.HELD
    v = V.claim5_massive([3.0, 10.1], [1e-4])
    assert v.status == V.NOT_TESTABLE and "below it" in v.evidence and v.yardstick["threshold"] == 20.0
    assert V.claim5_massive([float("nan")], [0.0]).status == V.NOT_TESTABLE


def test_distinct_models_count_identical_models_once():
    g = V.distinct_models([(1, 3), (1, 3), (0, 2)], [5.0, 5.0, 6.0])
    assert list(g) == [(1, 3), (0, 2)] and g[(1, 3)] == [5.0, 5.0]


def test_curve_verdicts_record_the_declared_point_and_name_the_points_that_differ():
    fid = {84: {"learnable": [1.0, 1.1], "shortgpt": [2.0, 2.1]}, 336: {"learnable": [1.0, 1.1], "shortgpt": [1.0, 1.1]}}
    rec, rows = V.curve_verdicts(V.claim2_recovery, [84, 336], 336, fid=fid, baselines=["shortgpt"],
                                        sd=0.05, df=2, sampling_sd=0.01)
    assert rec.status == V.WITHIN_NOISE and rec.rule == "claim2_recovery"
    assert "84 steps: held" in rec.evidence and rec.details["by_point"] == {84: "held", 336: "within noise"}
    assert [r["steps"] for r in rows] == [84, 336]


def test_every_rule_names_itself_and_the_one_seed_rules_their_yardstick():
    r = V.claim3_block_size({("1:2", "lora"): 1.0, ("2:4", "lora"): 1.2, ("7:14", "lora"): 3.0}, 0.3)
    assert r.rule == "claim3_block_size" and r.yardstick["seed_sd"] == 0.3
    assert V.teacher_check(0.9, 1.0, 0.1).rule == "teacher_check"


def test_study_verdict_refuses_a_bare_status(tmp_path, monkeypatch):
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    st = Study("smoke")
    with pytest.raises(TypeError, match="Verdict"):
        st.verdict(1, "held", "01.ipynb")
    v = st.verdict(7, V.teacher_check(0.9, 1.0, 0.1), "00.ipynb", extra_field=1)
    saved = json.loads((tmp_path / "smoke" / "verdicts" / "claim7.json").read_text())
    assert saved["rule"] == "teacher_check" and saved["extra_field"] == 1 and v["status"] == "held"


def test_curve_points_count_identical_models_once_and_pool_the_seed_spread(tmp_path, monkeypatch):
    import pandas as pd
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    rows = []
    for ps in (0, 1):  # two pruning seeds that chose the same mask: the same two runs, listed twice
        rows += [{"method": "learnable", "prune_seed": ps, "seed": s, "steps": 10, "fid": f, "calib_loss": 0.3,
                  "kept": "1 2"} for s, f in ((0, 1.0), (1, 1.2))]
    rows += [{"method": "shortgpt", "prune_seed": None, "seed": s, "steps": 10, "fid": f, "calib_loss": 0.1,
              "kept": "0 1"} for s, f in ((0, 2.0), (1, 2.4))]
    rows += [{"method": "oracle", "prune_seed": None, "seed": s, "steps": 10, "fid": f, "calib_loss": 0.5,
              "kept": "0 2"} for s, f in ((0, 3.0), (1, 3.1))]
    p = Study("smoke").curve_points(pd.DataFrame(rows))[10]
    assert p["fid"]["learnable"] == [1.0, 1.2] and p["n_models"] == 3 and p["df"] == 3
    want = math.sqrt(((0.1 ** 2) * 2 + (0.2 ** 2) * 2 + (0.05 ** 2) * 2) / 3)
    assert p["sd"] == pytest.approx(want)


def test_recovery_curves_carry_every_metric_of_each_scoring_into_table3_runs(tmp_path, monkeypatch):
    """The curve rows keep sFID, precision and recall from each scoring, so Table 3 and the summary's Table 1
    analogue read them at the paper-100K point instead of showing NaN."""
    import pandas as pd
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    study = Study("smoke")
    (study.root / "tables").mkdir(parents=True, exist_ok=True)
    jobs = [("shortgpt", None, [0, 1], s) for s in (0, 1)]
    fts = [{"snapshots": {10: f"ck{s}_10", 20: f"ck{s}_20"}} for s in (0, 1)]
    monkeypatch.setattr(Study, "curve_runs", lambda self, c=None, stop=None: (jobs, fts))
    monkeypatch.setattr(Study, "calibration_loss", lambda self, kept: 0.25)
    metric = {"fid": 2.0, "is": 5.0, "class_accuracy": 0.8, "sfid": 20.0, "precision": 0.6, "recall": 0.4}
    monkeypatch.setattr(Study, "parallel", lambda self, calls, desc="": [
        {**{k: v + i for k, v in metric.items()}, "samples": f"s{i}.npz"} for i, _ in enumerate(calls)])
    curves = study.recovery_curves()
    assert len(curves) == 4 and curves.sfid.notna().all() and set(curves.precision) == {0.6, 1.6, 2.6, 3.6}
    saved = pd.read_csv(study.root / "tables" / "01_recovery_curves.csv")
    assert {"sfid", "precision", "recall"} <= set(saved.columns) and "checkpoint" not in saved
    study.table3_at(curves, 10)
    runs = pd.read_csv(study.root / "tables" / "01_table3_runs.csv")
    assert list(runs.seed) == [0, 1] and runs.sfid.tolist() == [20.0, 22.0] and runs.recall.notna().all()

# ---------------------------------------------------------------------- Table 4 on fine-tune seeds (issue 15)
REFS = ("best-calibration 1:2", "random 1:2")


def seeds(cells, spread=0.02):
    """Two fine-tune seeds per cell: each FID f becomes [f - spread, f + spread]."""
    return {k: [v - spread, v + spread] for k, v in cells.items()}


def test_claim3_seeds_held_not_held_within_noise_and_mixed():
    better = {"1:2": 1.0, "2:4": 1.0, "7:14": 2.0}
    v = V.claim3_block_size_seeds(seeds(table4(better, better, better)), 0.05, 9)
    assert v.status == V.HELD and v.rule == "claim3_block_size_seeds" and v.details["comparisons"] == 6
    assert v.evidence.startswith("small block beats 7:14 in 6 of 6 distinct comparisons, loses in 0, ties in 0")
    assert v.yardstick["pooled_finetune_seed_sd"] == 0.05 and v.yardstick["df"] == 9 \
        and v.yardstick["k"] == pytest.approx(V.t_critical(9))
    worse = {"1:2": 3.0, "2:4": 3.0, "7:14": 2.0}
    assert V.claim3_block_size_seeds(seeds(table4(worse, worse, worse)), 0.05, 9).status == V.NOT_HELD
    close = {"1:2": 2.0, "2:4": 2.04, "7:14": 2.02}  # 0.04 apart: within 2 SE = 2 * sqrt(2 * 0.05**2 / 2)
    assert V.claim3_block_size_seeds(seeds(table4(close, close, close)), 0.05, 9).status == V.WITHIN_NOISE
    v = V.claim3_block_size_seeds(seeds(table4(better, worse, close)), 0.05, 9)
    assert v.status == V.MIXED and (v.details["wins"], v.details["losses"]) == (2, 2)
    # the same gap is called with a small pooled spread and not with a large one
    assert V.claim3_block_size_seeds(seeds(table4(better, better, better)), 1.0, 9).status == V.WITHIN_NOISE


def test_claim3_seeds_counts_identical_models_once_and_a_model_against_itself_as_a_tie():
    fid = seeds(table4({"1:2": 1.0, "2:4": 1.0, "7:14": 2.0}, {"1:2": 1.0, "2:4": 1.0, "7:14": 2.0},
                       {"1:2": 1.5, "2:4": 1.5, "7:14": 2.0}))
    model = {k: " ".join(k) for k in fid}
    model[("2:4", "frozen")] = model[("1:2", "frozen")]  # 2:4 frozen keeps the layers 1:2 frozen keeps
    v = V.claim3_block_size_seeds(fid, 0.05, 9, model)
    assert v.status == V.HELD and v.details["comparisons"] == 5 and v.details["repeats"] == 1
    assert "counted once: 2:4 frozen vs 7:14 frozen = 1:2 frozen vs 7:14 frozen" in v.evidence
    assert v.yardstick["n_models"] == 8
    model[("7:14", "lora")] = model[("1:2", "lora")]  # 7:14 lora chose 1:2 lora's layers: no better decision
    v = V.claim3_block_size_seeds(fid, 0.05, 9, model)
    assert v.status == V.MIXED and "1:2 lora" in v.evidence and "same model" in v.evidence
    assert v.details["outcomes"][0] == (("1:2", "lora"), ("7:14", "lora"), V.SAME_MODEL)


def test_claim3_seeds_references_are_reported_not_deciding_and_no_yardstick_calls_nothing():
    fid = seeds(table4({"1:2": 1.0, "2:4": 1.0, "7:14": 2.0}, {"1:2": 1.0, "2:4": 1.0, "7:14": 2.0},
                       {"1:2": 1.0, "2:4": 1.0, "7:14": 2.0}))
    fid.update({"best-calibration 1:2": [0.5, 0.52], "random 1:2": [1.0, 1.02], "1:2 LoRA rank 8": [9.0, 9.0]})
    v = V.claim3_block_size_seeds(fid, 0.05, 9, references=REFS)
    assert v.status == V.HELD and "inside the 1:2 rule (reported, not deciding)" in v.evidence
    assert v.details["references"][0] == (("1:2", "lora"), "best-calibration 1:2", "b")  # the reference is better
    assert [o for _, _, o in v.details["references"]] == ["b", "b", "b", V.WITHIN_NOISE, V.WITHIN_NOISE, V.WITHIN_NOISE]
    assert "rank 8" not in v.evidence  # a named row that is no reference plays no part
    one = {k: [f[0]] for k, f in fid.items()}  # one fine-tune seed: no pooled spread
    v = V.claim3_block_size_seeds(one, NAN, 0, references=REFS)
    assert v.status == V.WITHIN_NOISE and "no yardstick" in v.evidence


def test_claim4_seeds_held_not_held_within_noise_and_mixed():
    v = V.claim4_recoverability_seeds(seeds(table4(lora=1.0, full=1.5, frozen=3.0)), 0.05, 9)
    assert v.status == V.HELD and v.rule == "claim4_recoverability_seeds"
    assert (v.details["wins"], v.details["losses"], v.details["full_beats_lora"]) == (6, 0, 0)
    assert V.claim4_recoverability_seeds(seeds(table4(lora=3.0, full=3.0, frozen=1.0)), 0.05, 9).status == V.NOT_HELD
    # no update beats frozen, nothing lost, but full beats LoRA: not held
    assert V.claim4_recoverability_seeds(seeds(table4(lora=2.0, full=1.0, frozen=1.0)), 0.05, 9).status == V.NOT_HELD
    assert V.claim4_recoverability_seeds(seeds(table4(lora=2.0, full=2.02, frozen=2.01)), 0.05, 9).status \
        == V.WITHIN_NOISE
    v = V.claim4_recoverability_seeds(seeds(table4(lora=2.0, full=1.0, frozen=3.0)), 0.05, 9)
    assert v.status == V.MIXED and v.details["full_beats_lora"] == 3  # every update beats frozen, full beats LoRA
    v = V.claim4_recoverability_seeds(seeds(table4(lora=1.0, full=1.0, frozen={"1:2": 3.0, "2:4": 1.0, "7:14": 1.0})),
                                      0.05, 9)
    assert v.status == V.MIXED and v.details["wins"] == 2


def test_claim4_seeds_identical_models_tie_and_count_once():
    fid = seeds(table4(lora=1.0, full=1.0, frozen=3.0))
    model = {k: " ".join(k) for k in fid}
    for g in ("1:2", "2:4", "7:14"):  # every update chose the same layers in every scheme: the update changed nothing
        model[(g, "lora")] = model[(g, "full")] = model[(g, "frozen")] = g
    v = V.claim4_recoverability_seeds(fid, 0.05, 9, model)
    assert v.status == V.WITHIN_NOISE and v.details["wins"] == 0 and "same model" in v.evidence
    model = {k: " ".join(k) for k in fid}
    model[("2:4", "lora")], model[("2:4", "frozen")] = model[("1:2", "lora")], model[("1:2", "frozen")]
    v = V.claim4_recoverability_seeds(fid, 0.05, 9, model)
    assert v.status == V.HELD and v.details["repeats"] == 1 and "counted once: 2:4 lora vs 2:4 frozen" in v.evidence
    fid["1:2 LoRA rank 8"] = [0.5, 0.52]
    v = V.claim4_recoverability_seeds(fid, 0.05, 9, named=["1:2 LoRA rank 8"])
    assert v.status == V.HELD and [o for _, _, o in v.details["named"]] == ["a", "a"]
    assert "reported, not deciding: 1:2 LoRA rank 8" in v.evidence


def test_table4_evidence_pools_each_distinct_model_once(tmp_path, monkeypatch):
    import pandas as pd

    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    rows = []
    for method, kind, g, u, kept, same, fids in [
            ("1:2 lora", "learnable", "1:2", "lora", "0 2", "", (1.0, 1.2)),
            ("1:2 frozen", "learnable", "1:2", "frozen", "0 2", "1:2 lora", (1.0, 1.2)),
            ("2:4 lora", "learnable", "2:4", "lora", "0 3", "", (2.0, 2.4)),
            ("random 1:2", "reference", "1:2", "", "1 3", "", (3.0, 3.0))]:
        rows += [{"method": method, "kind": kind, "scheme": g, "update": u, "kept": kept, "same_as": same, "seed": s,
                  "fid": f} for s, f in enumerate(fids)]
    ev = Study("smoke").table4_evidence(pd.DataFrame(rows))
    assert ev["df"] == 3 and ev["sd"] == pytest.approx(math.sqrt((0.02 + 0.08) / 3))  # 1:2 frozen not counted again
    assert ev["fid"][("1:2", "frozen")] == [1.0, 1.2] and ev["fid"]["random 1:2"] == [3.0, 3.0]
    assert ev["model"][("1:2", "frozen")] == ev["model"][("1:2", "lora")] != ev["model"][("2:4", "lora")]


def test_the_imagenet_profile_has_a_nan_floor_with_the_reason(tmp_path, monkeypatch):
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    floor = Study("imagenet").fid_floor(n=100)
    assert math.isnan(floor["fid"]) and "imagenet-latents" in floor["note"]


# ---------------------------------------------------------------------- one calling function (issue 25)
def test_claim4_seeds_counts_one_model_pair_once_whatever_check_asks():
    """The 7:14 LoRA and full cells keep the same layers: their comparisons with 7:14 frozen are one, not two."""
    fid = seeds(table4(lora=1.0, full=1.0, frozen=3.0))
    model = {k: " ".join(k) for k in fid}
    model[("7:14", "full")] = model[("7:14", "lora")]
    v = V.claim4_recoverability_seeds(fid, 0.05, 9, model)
    assert v.status == V.HELD and v.details["wins"] == 5 and v.details["repeats"] == 1
    assert v.evidence.startswith("updates beat frozen in 5 of 5 distinct comparisons")
    assert "counted once: 7:14 full vs 7:14 frozen = 7:14 lora vs 7:14 frozen" in v.evidence


def test_claim6_called_weighs_both_steps_against_the_pooled_spread():
    fid = {"finetune": [4.0, 4.2], "kd": [3.0, 3.1], "masked_kd_2": [2.0, 2.1]}
    v = V.claim6_masked_kd_called(fid, NAN, 0)
    assert v.status == V.HELD and v.rule == "claim6_masked_kd_called" and v.yardstick["df"] == 3
    close = {"finetune": [3.6, 4.0], "kd": [3.4, 3.7], "masked_kd_2": [3.3, 3.55]}
    v = V.claim6_masked_kd_called(close, 3.4, 0)   # compare would call nothing either; RepKD did not diverge
    assert v.status == V.WITHIN_NOISE and "t(0.975, pooled df 3)" in v.evidence
    assert V.claim6_masked_kd_called(close, NAN, 0).status == V.MIXED   # RepKD diverged, no step called


def test_claim8_called_weighs_one_seed_fids_by_the_pooled_sd():
    fid = {("XL", "D14"): [4.8], ("XL", "XL"): [6.5], ("D14", "D14"): [5.3], ("D14", "XL"): [6.8]}
    v = V.claim8_iterative_called(fid, 0.1, 10)
    assert v.status == V.HELD and v.details["wins"] == ["yes", "yes"]
    assert V.claim8_iterative_called(fid, 0.6, 10).status == V.WITHIN_NOISE   # 1.5 < 2.23 x sqrt(2) x 0.6
    assert V.claim8_iterative_called(fid, NAN, 0).status == V.WITHIN_NOISE    # no yardstick: nothing called


def test_claim9_sit_recovery_takes_claim2s_status_on_sit():
    fid = _sit_fid([3.0, 3.1])
    v2 = V.claim2_recovery(fid, ("shortgpt", "oracle"), 0.05, 4, NAN, 336)
    ok, bad = V.teacher_check(0.9, 3.0, 1.0), V.teacher_check(0.4, 30.0, 1.0)
    v = V.claim9_sit_recovery(v2, ok)
    assert v.status == v2.status == V.HELD and v.evidence.startswith("SiT, claim 2's rule: at 336 steps")
    assert V.claim9_sit_recovery(v2, bad).status == V.NOT_TESTABLE


def test_status_change_and_robustness_sentences():
    a, b = V.Verdict(V.MIXED, "", rule="old_rule"), V.Verdict(V.WITHIN_NOISE, "", rule="new_rule")
    assert V.status_change(a, b, "why") == "old_rule: **mixed** → new_rule: **within noise** (moved; why)"
    assert "(unchanged; why)" in V.status_change(a, a, "why")
    table = {1: {"ref": V.NOT_HELD, "long gates": V.NOT_HELD, "teacher 1": ""},
             2: {"ref": V.NOT_HELD, "long gates": V.HELD, "teacher 1": V.NOT_HELD}}
    s = V.robustness_sentences(table, "ref")
    assert s[1] == "Claim 1: 'not held' in all 2 settings with a status — the verdict survives (not run: teacher 1)."
    assert s[2].startswith("Claim 2: 'not held' in ref and 1 other setting, but 'held' in long gates — the verdict "
                           "does not survive")
    # teachers: the agreeing settings are counted by teacher; caveats: named in brackets, changing no status
    s = V.robustness_sentences(table, "ref", teachers={"ref": "t0", "long gates": "t0", "teacher 1": "t1"},
                               caveats={"long gates": "a caveat"})
    assert s[1] == ("Claim 1: 'not held' in all 2 settings with a status, on 1 teacher — the verdict survives "
                    "(not run: teacher 1).")
    assert s[2].startswith("Claim 2: 'not held' in ref and 1 other setting, on 2 teachers, but 'held' in long gates "
                           "(a caveat) — ")
    # a reference per claim: claim 9's is another setting than the others'
    s = V.robustness_sentences({1: {"ref": V.NOT_HELD, "sit": V.HELD}, 9: {"ref": "", "nb10": V.HELD, "sit": V.HELD}},
                               {1: "ref", 9: "nb10"})
    assert "does not survive" in s[1]
    assert s[9] == "Claim 9: 'held' in all 2 settings with a status — the verdict survives (not run: ref)."


def test_called_gives_a_side_weighed_by_its_own_spread_its_own_df():
    """Learnable's runs also differ in pruning seed (``several``): when its own spread exceeds the pooled sd, its
    variance and its own n - 1 degrees of freedom enter the call (Welch-Satterthwaite), not the pooled df."""
    assert V.welch_df([(0.01, 11), (0.01, 11)]) == 11
    assert V.welch_df([(0.04, 3), (0.0001, 11)]) == pytest.approx(3.0, abs=0.1)   # the wide side dominates
    assert V.welch_df([(0.01, 0), (0.01, 11)]) == 0
    wide = [1.0, 1.3, 1.6, 1.9]          # sd 0.39 over 4 runs: SE 0.19, own df 3 (t 3.18)
    tight = [2.0, 2.0]                   # the pooled sd 0.05 on 2 runs
    gap_se = (2.0 - 1.45) / math.sqrt(np.var(wide, ddof=1) / 4 + 0.05 ** 2 / 2)
    assert 2.3 < gap_se < 3.0            # called with the pooled df 11 (2.20), not with about 3 (3.18)
    assert V.called(wide, tight, 0.05, 11, several=(True, False)) == "within noise"
    assert V.called(wide, tight, 0.05, 11, k=2) == "a"
    # a side that is one model is weighed by the pooled sd (and df), its own two runs notwithstanding
    one = [1.0, 1.3]                     # own sd 0.21 > pooled 0.05, but one model
    assert V.called(one, [1.3, 1.3], 0.05, 11) == "a"                          # 0.15 / 0.05 = 3 SE > 2.20
    assert V.called(one, [1.3, 1.3], 0.05, 11, several=(True, False)) == "within noise"


def test_claim4_dedup_is_per_kind_of_check_and_unordered():
    fid = seeds(table4(lora=1.0, full=2.0, frozen=1.0))
    model = {k: " ".join(k) for k in fid}
    for g in ("1:2", "2:4", "7:14"):
        model[(g, "lora")] = model[(g, "frozen")]     # LoRA chose frozen's layers in every scheme
    v = V.claim4_recoverability_seeds(fid, 0.05, 9, model)
    # lora vs frozen: same model; full vs frozen (a loss) and lora vs full (full worse) are two kinds of check
    assert v.details["full_beats_lora"] == 0 and v.details["losses"] == 3 and v.details["repeats"] == 0


def test_claim8_evidence_says_how_many_layers_the_two_d7s_share():
    fid = {("XL", "D14"): [4.8], ("XL", "XL"): [6.5], ("D14", "D14"): [5.3], ("D14", "XL"): [6.8]}
    layers = {"D14": [1, 5, 8, 12, 16, 20, 24], "XL": [1, 5, 8, 12, 16, 20, 27]}
    v = V.claim8_iterative_called(fid, 0.1, 10, layers)
    assert "keep 6 of 7 teacher layers in common" in v.evidence and v.status == V.HELD


def test_claim10_mar_is_claim_9s_rule_on_mar():
    """Claim 10 (MAR, issue 29) is written before any MAR run as claim 9's rule: claim 2's status on MAR's curves,
    not testable when the MAR teacher fails its check."""
    from tinyfusion.verdicts import HELD, NOT_HELD, NOT_TESTABLE, Verdict, claim9_sit_recovery, claim10_mar_recovery
    c2 = Verdict(NOT_HELD, "learnable 3.1 vs shortgpt 2.0", {"x": 1}, yardstick=0.1)
    good, bad = Verdict(HELD, "teacher ok", {}), Verdict(NOT_HELD, "FID 40", {})
    v = claim10_mar_recovery(c2, good)
    assert v.status == NOT_HELD and v.evidence.startswith("MAR, claim 2's rule") and v.yardstick == 0.1
    assert claim10_mar_recovery(c2, bad).status == NOT_TESTABLE and "MAR teacher" in claim10_mar_recovery(c2, bad).evidence
    assert claim9_sit_recovery(c2, good).evidence.startswith("SiT, claim 2's rule")
