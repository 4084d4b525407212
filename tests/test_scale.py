"""The scale ladder (issue 26, notebook 12): its rungs, the smoke rungs' self-trained teachers, its trend rule."""
import json
import math

import pandas as pd
import pytest

from tinyfusion import scale, verdicts as V
from tinyfusion.profiles import PROFILES, ROOT, SCALE_LADDER, TRAIN_HERE, get_profile


def test_each_rung_changes_one_thing_of_the_cpu_teacher():
    cpu = get_profile("cpu")
    for rung in SCALE_LADDER["cpu"][1:]:
        p = get_profile(rung)
        assert p.teacher.startswith("data/teacher_cpu_") and p.model != cpu.model
        assert (p.pretrain_steps, p.pretrain_batch, p.pretrain_lr) == (cpu.pretrain_steps, cpu.pretrain_batch,
                                                                       cpu.pretrain_lr)
        assert (p.finetune_steps, p.finetune_long, p.prune_steps) == (cpu.finetune_steps, cpu.finetune_long,
                                                                      cpu.prune_steps)
    assert get_profile("cpu-t49").image_size == 28 and get_profile("cpu-w128").image_size == cpu.image_size
    assert SCALE_LADDER["smoke"][0] == "smoke" and all(PROFILES[r].teacher == TRAIN_HERE
                                                        for r in SCALE_LADDER["smoke"][1:])
    # the optional third rung: today's model and recipe pre-trained 4x longer, the sample-derived budgets 4x
    x4 = get_profile("cpu-x4")
    assert (x4.model, x4.pretrain_batch, x4.pretrain_lr, x4.prune_steps) == (cpu.model, cpu.pretrain_batch,
                                                                            cpu.pretrain_lr, cpu.prune_steps)
    assert (x4.pretrain_steps, x4.finetune_steps, x4.finetune_long, x4.curve_points[-1]) == (
        48000, 4 * 336, 4 * 1680, 4 * cpu.curve_points[-1])
    assert x4.teacher == "data/teacher_cpu_x4.pt" and "cpu-x4" not in SCALE_LADDER["cpu"]   # until it ships


def test_the_ladder_of_an_unknown_profile_is_refused():
    from tinyfusion.scale import ladder
    assert ladder("cpu") == ("cpu", "cpu-w128", "cpu-t49")
    with pytest.raises(ValueError, match="no scale ladder for profile 'gpu'; choose one of cpu, smoke"):
        ladder("gpu")


def test_rungs_come_as_a_list_json_or_comma_separated_names():
    from tinyfusion.scale import rungs
    assert rungs("smoke") == ["smoke", "smoke-t49"]
    for given in (["cpu", "cpu-w128"], '["cpu", "cpu-w128"]', "cpu,cpu-w128", " cpu , cpu-w128 "):
        assert rungs("cpu", given) == ["cpu", "cpu-w128"]
    with pytest.raises(ValueError, match="unknown profile.*'s'.*known: smoke"):
        rungs("cpu", ["cpu", "s"])
    with pytest.raises(ValueError, match="empty"):
        rungs("cpu", " , ")


def test_pruning_seeds_come_as_papermill_passes_them():
    from tinyfusion.scale import seed_list
    for given, want in ((0, [0]), ("0,1", [0, 1]), ("[0, 1]", [0, 1]), ([2], [2])):
        assert seed_list("pruning_seeds", given) == want
    with pytest.raises(ValueError, match=r"pruning_seeds\[1\] must be a whole number >= 0, got 'x'"):
        seed_list("pruning_seeds", "0,x")


def test_a_smoke_rung_pretrains_its_teacher_once_into_the_cache(tmp_path, monkeypatch):
    """A profile whose teacher is TRAIN_HERE gets it from a cached pre-training step: run once, then reused by a new
    Study; a missing shipped teacher still names the file and the command."""
    from tinyfusion.cli import pretrain
    from tinyfusion.io import save_checkpoint
    from tinyfusion.study import Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path))
    calls = []

    def fake_run(lock=True, **cfg):
        calls.append((lock, cfg))
        save_checkpoint({"ema": {}}, f"{cfg['out']}/teacher.pt")
        return {"teacher": f"{cfg['out']}/teacher.pt"}
    monkeypatch.setattr(pretrain, "run", fake_run)
    path = Study("smoke-t49").teacher_path
    assert path.name == "teacher.pt" and path.exists() and tmp_path in path.parents
    assert Study("smoke-t49").teacher_path == path and len(calls) == 1   # the second study reuses the cached step
    lock, cfg = calls[0]
    assert lock is False and cfg["profile"] == "smoke-t49" and cfg["out"] == str(path.parent)  # cache.cached locks
    assert (cfg["model"], cfg["steps"]) == ("DiT-T28/4-t49", 10)
    longer = Study("smoke-t49", pretrain_steps=12).teacher_path   # another budget: another teacher, trained with it
    assert longer != path and calls[-1][1]["steps"] == 12 and len(calls) == 2
    with pytest.raises(ValueError, match="profile 'smoke-t49' has no teacher file: a Study pre-trains it"):
        get_profile("smoke-t49").path(TRAIN_HERE)   # what an entry point without --teacher would resolve
    with pytest.raises(FileNotFoundError, match=r"nothing_w128.pt is missing for profile 'cpu-w128'; train it "
                                                r"with `python -m tinyfusion.cli.pretrain --profile cpu-w128`"):
        Study("cpu-w128", teacher="data/nothing_w128.pt").teacher()


def test_relative_fid_takes_the_best_baseline_and_weighs_learnable_by_its_own_spread():
    ratio, se, df, best = V.relative_fid([2.0, 2.2, 2.4, 2.6], {"shortgpt": [1.9, 2.1], "oracle": [1.0, 1.0]},
                                         sd=0.05, df=3)
    assert best == "oracle" and ratio == pytest.approx(2.3) and df == 3
    own = math.sqrt(((2.0 - 2.3) ** 2 + 0.1 ** 2 * 2 + 0.3 ** 2) / 3)       # larger than the pooled 0.05
    assert se == pytest.approx(2.3 * math.sqrt((own / 2 / 2.3) ** 2 + (0.05 / math.sqrt(2)) ** 2))
    assert math.isnan(V.relative_fid([2.0], {"oracle": [math.nan, 1.0]}, 0.1, 2)[0])  # no finite baseline
    assert V.relative_fid([2.0, math.nan], {"oracle": [1.0, 1.0]}, 0.1, 2)[0] == math.inf  # a diverged learnable run
    # learnable's own spread (df 3) against the pooled sd's df 11: Welch-Satterthwaite, near learnable's own 3
    assert 3 <= V.relative_fid([2.0, 2.6, 3.2, 3.8], {"oracle": [1.0, 1.0]}, 0.05, 11)[2] < 4


def test_scale_change_calls_only_beyond_the_t_critical_value():
    t = V.t_critical(4)
    se = 0.05
    limit = t * math.sqrt(2) * se
    assert V.scale_change((1.5, se, 4), (1.5 - 1.01 * limit, se, 8)) == "lower"
    assert V.scale_change((1.5, se, 4), (1.5 + 1.01 * limit, se, 8)) == "higher"
    assert V.scale_change((1.5, se, 4), (1.5 - 0.99 * limit, se, 8)) == "within noise"
    # one fine-tune seed (no spread) or a diverged rung: nothing to weigh the difference against, and the sentence
    # must not read "within the noise"
    assert V.scale_change((1.5, math.nan, 0), (0.5, se, 8)) == "not comparable"
    assert V.scale_change((1.5, se, 4), (math.inf, math.nan, 0)) == "not comparable"


def test_scale_sentences_are_written_from_the_rows():
    row = lambda rung, params, tokens, r100, s2, ratio: {  # noqa: E731
        "rung": rung, "params": params, "tokens": tokens, "claim 1": "not held", "claim 2": s2, "claim 5": "not testable here",
        "max|h|/std": ratio, "learnable/best 100K": r100, "se 100K": 0.02, "df 100K": 8,
        "learnable/best 500K": 1.2, "se 500K": 0.02, "df 500K": 8, "claim 1 models": 6}
    s = V.scale_sentences([row("cpu", 2.1e6, 16, 2.2, "not held", 10.1), row("cpu-w128", 8.4e6, 16, 0.9, "held", 25.0)])
    assert set(s) == set(V.SCALE_CLAIMS)
    assert "the same at every rung" in s[1]
    assert "'held' at cpu-w128 (8.4M, 16 tokens)" in s[2] and "it differs from cpu at cpu-w128" in s[2]
    assert "2.20 ± 0.02 SE, 0.90 ± 0.02 SE (cpu-w128: lower than cpu beyond the noise)" in s[2]
    assert "1.20 ± 0.02 SE, 1.20 ± 0.02 SE (cpu-w128: within the noise of cpu)" in s[2]
    assert "10.1 (cpu); 25.0 (cpu-w128)" in s[5]
    assert "(Spearman over 6 at cpu, 6 at cpu-w128 distinct models)" in s[1]
    diverged = row("cpu-t49", 2.2e6, 49, math.inf, "not held", 9.0)
    diverged["se 100K"], diverged["df 100K"] = math.nan, 0
    s = V.scale_sentences([row("cpu", 2.1e6, 16, 2.2, "not held", 10.1), diverged])
    assert "inf (no seed spread) (cpu-t49: not comparable with cpu" in s[2] and "within the noise" not in s[2].split(
        "at the 500K")[0]


def test_a_rung_whose_teacher_saw_other_samples_is_refused(tmp_path):
    from types import SimpleNamespace

    from tinyfusion import scale

    def rung(name, steps, batch, record=True, longer=1):
        teacher = tmp_path / f"teacher_{name}.pt"
        if record:
            teacher.with_suffix(".json").write_text(json.dumps({"steps": steps, "batch_size": batch}))
        return SimpleNamespace(prof=SimpleNamespace(name=name, teacher=TRAIN_HERE, finetune_steps=336 * longer),
                               teacher_path=teacher)
    same = {"cpu": rung("cpu", 12000, 128), "cpu-w128": rung("cpu-w128", 6000, 256),
            "smoke-t49": rung("t", 0, 0, False)}
    table = scale.teacher_budgets(same)   # 6,000 x 256 = 12,000 x 128; no record: nothing to check
    assert list(table.samples[:2]) == [1_536_000, 1_536_000] and table.samples.isna().iloc[2]
    assert table.teacher[0] == str(tmp_path / "teacher_cpu.pt")   # outside the repository: as given
    inside = SimpleNamespace(prof=SimpleNamespace(name="cpu", teacher=TRAIN_HERE),
                             teacher_path=ROOT / "data" / "teacher_cpu.pt")
    assert scale.teacher_budget(inside)["teacher"] == "data/teacher_cpu.pt"   # not the runner's tree
    with pytest.raises(ValueError, match=r"rung cpu-t49: its teacher .*teacher_cpu-t49.pt was pre-trained on 768,000 "
                                         r"samples.*today's .* on 1,536,000.*--profile cpu-t49"):
        scale.teacher_budgets({"cpu": same["cpu"], "cpu-t49": rung("cpu-t49", 6000, 128)})
    # a rung trained 4x longer on budgets 4x today's is accepted; the same budgets on today's samples are refused
    assert scale.teacher_budgets({"cpu": same["cpu"], "cpu-x4": rung("cpu-x4", 48000, 128, longer=4)}).samples[1] == (
        4 * 1_536_000)
    with pytest.raises(ValueError, match=r"rung cpu-x4: .* on 1,536,000 samples .*budgets assume 6,144,000 \(4x"):
        scale.teacher_budgets({"cpu": same["cpu"], "cpu-x4": rung("cpu-x4", 12000, 128, longer=4)})
    study = SimpleNamespace(prof=SimpleNamespace(seeds=(0, 1)))
    assert scale.pruning_seeds_of(study) == (0, 1) and scale.pruning_seeds_of(study, "0,2") == (0, 2)
    assert scale.pruning_seeds_of(study, 3) == (3,)


def test_a_shipped_rung_teacher_is_checked_before_the_ladder_runs(tmp_path):
    """The teacher file, its .sha256 and its record must exist and agree, each refusal naming the file and
    tools/install_teacher.py; the training time sums every call, the rate is the fastest long call's."""
    from types import SimpleNamespace

    from tinyfusion import scale
    from tinyfusion.io import CorruptArtefactError, sha256
    teacher = tmp_path / "teacher_cpu_w128.pt"
    prof = SimpleNamespace(name="cpu-w128", model="DiT-T28/4-w128", teacher="data/teacher_cpu_w128.pt")
    study = SimpleNamespace(prof=prof, teacher_path=teacher)
    with pytest.raises(FileNotFoundError, match=r"rung cpu-w128: .*teacher_cpu_w128.pt is missing.*install_teacher.py"):
        scale.teacher_budget(study)
    teacher.write_bytes(b"weights")
    with pytest.raises(FileNotFoundError, match=r"teacher_cpu_w128.pt.sha256 is missing"):
        scale.teacher_budget(study)
    (tmp_path / "teacher_cpu_w128.pt.sha256").write_text(sha256(teacher) + "  teacher_cpu_w128.pt\n")
    with pytest.raises(FileNotFoundError, match=r"teacher_cpu_w128.json is missing"):
        scale.teacher_budget(study)
    record = {"model": "DiT-T28/4-w128", "profile": "cpu-w128", "steps": 12000, "batch_size": 128, "wall_s": 36000.0,
              "segments": [{"from_step": 0, "threads": 1}, {"from_step": 1800, "to_step": 2000, "wall_s": 900.0,
                                                          "threads": 1},
                           {"from_step": 2000, "to_step": 12000, "wall_s": 17000.0, "threads": 1},
                           {"from_step": 12000, "to_step": 12000, "wall_s": 0.5, "threads": 1}]}
    teacher.with_suffix(".json").write_text(json.dumps({**record, "model": "DiT-T28/4"}))
    with pytest.raises(ValueError, match=r"names \(its, the rung's\) \{'model': \('DiT-T28/4', 'DiT-T28/4-w128'\)\}"):
        scale.teacher_budget(study)
    teacher.with_suffix(".json").write_text(json.dumps(record))
    row = scale.teacher_budget(study)
    assert row["samples"] == 1_536_000 and row["training h"] == 10 and row["calls"] == 4 and row["threads"] == "1"
    assert row["s/step (fastest call)"] == pytest.approx(1.7)   # 17,000 s / 10,000 steps; 200 steps at 4.5 s/step
    late = {**record, "segments": [{**seg, "from_step": seg["from_step"] or 600} for seg in record["segments"]]}
    teacher.with_suffix(".json").write_text(json.dumps(late))
    assert scale.teacher_budget(study)["calls"] == 5         # a first call from before calls were recorded counts
    old = {k: v for k, v in record.items() if k != "segments"}
    teacher.with_suffix(".json").write_text(json.dumps({**old, "command": "OMP_NUM_THREADS=2 python -m ..."}))
    row = scale.teacher_budget(study)                        # today's teacher's record: one call, threads in its command
    assert row["calls"] == 1 and row["threads"] == "2" and row["s/step (fastest call)"] == pytest.approx(3.0)
    teacher.with_suffix(".json").write_text(json.dumps(record))
    teacher.write_bytes(b"other weights")
    with pytest.raises(CorruptArtefactError, match="teacher_cpu_w128.pt has SHA-256"):
        scale.teacher_budget(study)


def test_relative_fid_above_a_floor_subtracts_it_from_both_sides():
    plain = V.relative_fid([2.0, 2.2], {"oracle": [1.5, 1.5]}, sd=0.1, df=2)
    above = V.relative_fid([2.0, 2.2], {"oracle": [1.5, 1.5]}, sd=0.1, df=2, floor=0.5)
    assert plain[0] == pytest.approx(2.1 / 1.5) and above[0] == pytest.approx(1.6 / 1.0) and above[1] > plain[1]
    assert math.isnan(V.relative_fid([2.0, 2.2], {"oracle": [1.5, 1.5]}, 0.1, 2, floor=1.6)[0])  # a side not above it


def test_the_gate_table_names_block_zero_and_the_least_confident_block_per_rung_and_seed():
    """``scale.gate_table`` reads each learned mask's per-block decisions: block 0's choice, its last change and
    confidence, how many blocks settled, and the block nearest a tie."""
    def block(seed, b, kept, conf, last, settled=True):
        return {"seed": seed, "block": b, "kept": kept, "confidence": conf, "last_change": last, "settled": settled,
                "steps": 100}
    d = pd.DataFrame([block(0, 0, "1", 0.9, 18), block(0, 1, "2", 0.51, 90, settled=False), block(0, 2, "5", 0.7, 40),
                      block(1, 0, "0", 0.6, 72), block(1, 1, "3", 0.8, 10), block(1, 2, "4", 0.55, 99, settled=False)])
    t = scale.gate_table({"rung-a": {"decisions": d}})
    assert list(t["pruning seed"]) == [0, 1] and list(t["block 0 keeps"]) == ["1", "0"]
    assert list(t["block 0 last change"]) == [18, 72] and list(t["blocks settled"]) == ["2 of 3", "2 of 3"]
    assert list(t["least confident block"]) == ["block 1 keeps 2", "block 2 keeps 4"]
    assert list(t["its confidence"]) == [0.51, 0.55] and list(t["its last change"]) == [90, 99]


def test_the_scale_table_names_a_rung_whose_teacher_falls_under_notebook_00s_bar():
    """A rung whose teacher check is not held gets one more sentence with its class accuracy and FID beside today's
    teacher's; when every teacher meets the bar there is none."""
    def row(rung, check, acc, fid):
        return {"rung": rung, "params": 2.1e6, "tokens": 16, "claim 1": "held", "claim 2": "not held",
                "claim 5": "not testable here", "max|h|/std": 10.0, "teacher meets notebook 00's bar": check,
                "teacher class accuracy": acc, "teacher FID": fid,
                **{f"{k} {p}": v for p in ("100K", "500K") for k, v in (("learnable/best", 1.5), ("se", 0.1), ("df", 8))}}
    rows = [row("cpu", V.HELD, 0.862, 0.888), row("cpu-t49", V.NOT_HELD, 0.7695, 1.345)]
    table, sentences = scale.scale_table(rows)
    assert list(table.rung) == ["cpu", "cpu-t49", "paper DiT-XL/2"]
    assert sentences["teachers"].startswith("Teachers: cpu-t49's teacher does not meet notebook 00's bar (class "
                                            "accuracy 0.769, FID 1.34), against cpu's 0.862 and 0.89")
    assert "teachers" not in scale.scale_table([rows[0], row("cpu-w128", V.HELD, 0.92, 0.40)])[1]
    both = scale.scale_table([row("cpu", V.NOT_HELD, 0.7, 2.0), rows[1]])[1]["teachers"]
    assert both.endswith(": today's teacher among them, so the ladder compares teachers under the bar.")
