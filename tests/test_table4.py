"""Table 4 on the smoke profile with a 4-layer teacher: every row on every fine-tune seed, the 1:2 references and the
rank-8 ablation beside the learnable cells, and identical models fine-tuned once and marked."""
import math


def _tiny_teacher(path):
    import torch

    from tinyfusion.io import save_checkpoint
    from tinyfusion.models import DiT
    torch.manual_seed(0)
    m = DiT(input_size=16, patch_size=4, in_channels=1, hidden_size=16, depth=4, num_heads=2, num_classes=10)
    save_checkpoint({"ema": m.state_dict(), "config": m.config}, path)
    return path


def test_table4_has_the_references_the_rank8_row_and_every_seed(tmp_path, monkeypatch):
    from tinyfusion import paper
    from tinyfusion.profiles import get_profile
    from tinyfusion.study import REFERENCES, Study
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TINYFUSION_QUIET", "1")
    prof = get_profile("smoke", teacher=str(_tiny_teacher(tmp_path / "teacher.pt")), seeds=(0, 1), prune_steps=2,
                       ablation_finetune_steps=2, eval_samples=16, sample_steps=2, batch_eval=16)
    study = Study(prof)
    t4 = study.table4(("1:2", "2:4"), ("lora", "frozen"))
    methods = ["1:2 lora", "1:2 frozen", "2:4 lora", "2:4 frozen", *REFERENCES, Study.TABLE4_RANK8]
    assert list(dict.fromkeys(t4.method)) == methods
    assert (t4.groupby("method").seed.apply(sorted) == [[0, 1]] * len(methods)).all()
    assert set(t4[t4.method.isin(REFERENCES)].kind) == {"reference"}
    rank8 = t4[t4.method == Study.TABLE4_RANK8].iloc[0]
    assert rank8.lora_rank == 8 and rank8.trainable_fraction > t4[t4.method == "1:2 lora"].iloc[0].trainable_fraction
    assert math.isnan(rank8.paper_FID) and t4[t4.method == "2:4 frozen"].iloc[0].paper_FID == paper.TABLE4[
        ("2:4", "frozen")][1]
    # identical models: one fine-tune per (kept layers, seed), named by the first row that keeps those layers
    first = {}
    for r in t4.itertuples():
        first.setdefault(r.kept, r.method)
        assert r.same_as == ("" if first[r.kept] == r.method else first[r.kept])
    per_model = t4.groupby(["kept", "seed"]).fid.nunique()
    assert (per_model == 1).all()
    runs = list((prof.results / "finetune").glob("*/run.json"))
    assert len(runs) == len(first) * 2
    summary = study.table4_summary(t4)
    assert list(summary.method) == methods and (summary.seeds == 2).all()
    assert (prof.results / "tables" / "table4.csv").exists() and (prof.results / "tables" / "table4_runs.csv").exists()
    ev = study.table4_evidence(t4)
    assert ev["df"] == len(first) and ev["model"][("1:2", "lora")] == t4[t4.method == "1:2 lora"].kept.iloc[0]
    assert set(ev["fid"]) == {("1:2", "lora"), ("1:2", "frozen"), ("2:4", "lora"), ("2:4", "frozen"), *REFERENCES,
                              Study.TABLE4_RANK8}
