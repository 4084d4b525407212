"""MAR through pre-training and learnable pruning, end to end at smoke size (issue 29, item 2, second part): the
pre-training loss and the gated loss reach the model through the seam (models/prunable.py), checkpoints load back by
architecture (models/registry.load_model), and the DiT-only entry points refuse a MAR in one line."""
import pytest
import torch

from tinyfusion.cli import export, pretrain, prune_learn, sample
from tinyfusion.models import prunable, registry
from tinyfusion.models.dit import DiT
from tinyfusion.models.mar import MAR, build_mar
from tinyfusion.pruning.indices import prune
from tinyfusion.models.registry import load_model
from tinyfusion.pruning.learnable import add_lora, linear_module_names

DIT_TEACHER = "data/teacher_cpu.pt"


@pytest.fixture(scope="module")
def runs(mar_teacher_3steps, tmp_path_factory):
    """The shared 3-step MAR teacher (tests/conftest.py), then learnable pruning (1:2, LoRA, 3 steps) of it."""
    _, pre = mar_teacher_3steps
    tmp = tmp_path_factory.mktemp("mar_pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYFUSION_RESULTS", str(tmp / "results"))
        mp.setenv("TINYFUSION_QUIET", "1")
        pl = prune_learn.main(["--profile", "smoke", "--teacher", pre["teacher"], "--groups", "1:2", "--update",
                               "lora", "--steps", "3", "--batch-size", "4", "--out", str(tmp / "prune")])
    return tmp, pre, pl


def one_line_error(fn, *match):
    with pytest.raises(ValueError) as e:
        fn()
    text = str(e.value)
    assert "\n" not in text and all(m in text for m in match), text
    return text


def test_pretrain_trains_a_mar_with_its_own_loss(runs):
    tmp, pre, _ = runs
    assert pre["model"] == "MAR-T32/4" and pre["objective"] is None and pre["steps"] == 3
    assert pre["config"]["arch"] == "mar" and pre["skipped_steps"] == 0 and pre["final_loss"] > 0
    teacher = load_model(pre["teacher"])
    assert type(teacher) is MAR and prunable.depth(teacher) == 32 and prunable.computes_loss(teacher)
    fresh = build_mar("MAR-T32/4")
    assert teacher.config == fresh.config  # arch enters the config; the rest is the registered one
    assert teacher.state_dict().keys() == fresh.state_dict().keys()


def test_pretrain_resumed_equals_uninterrupted(mar_teacher_3steps, tmp_path, monkeypatch):
    args, pre = mar_teacher_3steps
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TINYFUSION_QUIET", "1")
    out = str(tmp_path / "parts")
    assert pretrain.main(args + ["--out", out, "--stop-after", "1"])["stopped_at"] == 1
    resumed = pretrain.main(args + ["--out", out])
    whole, parts = torch.load(pre["teacher"]), torch.load(resumed["teacher"])
    assert whole["ema"].keys() == parts["ema"].keys()
    assert all(torch.equal(v, parts["ema"][k]) for k, v in whole["ema"].items())


def test_learnable_pruning_of_a_mar_writes_a_16_layer_mar(runs):
    tmp, pre, pl = runs
    kept = pl["kept"]
    assert pl["depth"] == 16 and len(kept) == 16 and pl["update"] == "lora" and pl["steps"] == 3
    assert [k // 2 for k in kept] == list(range(16))  # one layer of every 1:2 pair
    small = load_model(pl["pruned"])
    assert type(small) is MAR and prunable.depth(small) == 16
    assert small.encoder_depth == sum(k < 16 for k in kept) and small.config["arch"] == "mar"
    ckpt = torch.load(pl["pruned"])
    assert ckpt["kept"] == kept
    # the ORIGINAL teacher weights of the kept layers (the LoRA update and the gates are dropped)
    ref = prune(load_model(pre["teacher"]), kept).state_dict()
    assert ref.keys() == small.state_dict().keys()
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in ref.items())


def test_lora_targets_come_from_the_model():
    mar = build_mar("MAR-T32/4", encoder_depth=1, decoder_depth=1)
    assert prunable.lora_targets(mar) is None  # none of its own: every linear layer
    targets = linear_module_names(mar)
    assert {"encoder_blocks.0.attn.qkv", "encoder_blocks.0.mlp.fc2", "decoder_blocks.0.attn.proj"} <= set(targets)
    mar.lora_targets = ["encoder_blocks.0.attn.qkv"]  # a model that names its own
    add_lora(mar, rank=2, alpha=4)
    adapted = {n.rsplit(".lora_", 1)[0] for n, p in mar.named_parameters() if p.requires_grad}
    assert adapted == {"encoder_blocks.0.attn.qkv"}


def test_load_model_by_architecture(runs):
    _, pre, _ = runs
    assert type(load_model(DIT_TEACHER)) is DiT  # a config without "arch" is a DiT's
    assert registry.arch_of_name("SiT-T28/4") == "dit" and registry.arch_of_name("MAR-T32/4") == "mar"
    assert type(registry.build("MAR-T32/4", encoder_depth=1, decoder_depth=1)) is MAR
    state = torch.load(pre["teacher"])["ema"]  # a raw MAR state dict: built from its registered name
    assert type(load_model(state, name="MAR-T32/4")) is MAR
    one_line_error(lambda: load_model(DIT_TEACHER, name="MAR-T32/4"), DIT_TEACHER, "DiT/SiT checkpoint", "MAR")
    one_line_error(lambda: load_model(pre["teacher"], name="DiT-T28/4"), pre["teacher"], "is a MAR checkpoint")
    one_line_error(lambda: load_model(pre["teacher"], objective="flow"), "is a MAR checkpoint", "--objective")


def test_dit_only_entry_points_refuse_a_mar_in_one_line(runs, mar_teacher_3steps, tmp_path, monkeypatch):
    _, pre, pl = runs
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    teacher, pruned = pre["teacher"], pl["pruned"]
    one_line_error(lambda: export.main(["--checkpoint", pruned, "--out", str(tmp_path / "exp")]), pruned,
                   "is a MAR checkpoint")
    one_line_error(lambda: prune_learn.main(["--profile", "smoke", "--teacher", DIT_TEACHER, "--model", "MAR-T32/4",
                                             "--steps", "2", "--out", str(tmp_path / "p1")]),
                   DIT_TEACHER, "is a DiT/SiT checkpoint", "--model MAR-T32/4")
    one_line_error(lambda: prune_learn.main(["--profile", "smoke", "--teacher", teacher, "--model", "DiT-T28/4",
                                             "--steps", "2", "--out", str(tmp_path / "p2")]),
                   teacher, "is a MAR checkpoint", "--model DiT-T28/4")
    one_line_error(lambda: pretrain.main(mar_teacher_3steps[0] + ["--objective", "flow", "--out", str(tmp_path / "p3")]),
                   "MAR-T32/4", "computes its own training loss")


def test_a_mar_samples_through_its_objective(runs, tmp_path, monkeypatch):
    """cli.sample on a MAR: its objective is "mar" (the model's masked-autoregressive loop), images in the .npz layout
    of every model, the same file from the same seed; a DiT sampler or more iterations than tokens are refused."""
    from tinyfusion.diffusion import objective_for
    from tinyfusion.io import load_npz
    _, pre, pl = runs
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    assert objective_for(load_model(pl["pruned"])).name == "mar"
    args = ["--profile", "smoke", "--checkpoint", pre["teacher"], "--n", "4", "--batch", "2", "--steps", "4"]
    a = sample.main(args + ["--out", str(tmp_path / "a.npz")])
    b = sample.main(args + ["--out", str(tmp_path / "b.npz")])
    assert a["sampler"] == "mar" and a["steps"] == 4
    za, zb = load_npz(tmp_path / "a.npz"), load_npz(tmp_path / "b.npz")
    assert za["images"].shape == (4, 16, 16) and za["images"].dtype.name == "uint8"
    assert list(za["labels"]) == [0, 1, 2, 3] and (za["images"] == zb["images"]).all()
    one_line_error(lambda: sample.main(args[:-2] + ["--sampler", "ddim", "--out", str(tmp_path / "c.npz")]),
                   "ddim", "mar")
    one_line_error(lambda: sample.main(args[:-2] + ["--steps", "17", "--out", str(tmp_path / "d.npz")]),
                   "1..16", "17")


FINETUNE = ["--profile", "smoke", "--steps", "3", "--batch-size", "4", "--log-every", "1"]


def test_plain_finetune_of_a_pruned_mar_through_the_seam(runs, tmp_path, monkeypatch):
    """Plain fine-tuning (issue 29, item 2, third part): the pruned MAR loads through registry.load_model, trains on
    its own loss (prunable.loss_terms) with its own label dropout, and writes a MAR of the student's depth."""
    from tinyfusion.cli import finetune
    _, _, pl = runs
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TINYFUSION_QUIET", "1")
    out = tmp_path / "ft"
    res = finetune.main(FINETUNE + ["--student", pl["pruned"], "--mode", "finetune", "--snapshots", "[2]",
                                    "--out", str(out)])
    assert res["mode"] == "finetune" and res["steps"] == 3 and res["skipped_steps"] == 0 and res["kept"] == pl["kept"]
    assert res["final_loss"] > 0 and set(res["first_step"]) >= {"loss", "diff"}
    tuned, student = load_model(res["model"]), load_model(pl["pruned"])
    assert type(tuned) is MAR and prunable.depth(tuned) == 16 and tuned.config == student.config
    assert not all(torch.equal(v, tuned.state_dict()[k]) for k, v in student.state_dict().items())  # it trained
    assert torch.load(res["model"])["kept"] == pl["kept"]
    snap = load_model(res["snapshots"]["2"])
    assert type(snap) is MAR and prunable.depth(snap) == 16 and torch.load(res["snapshots"]["2"])["step"] == 2
    # the loop drops no labels for a model that drops them itself
    assert prunable.loop_label_dropout(student) == 0.0 and prunable.loop_label_dropout(load_model(DIT_TEACHER)) > 0


def test_kd_modes_refuse_a_mar_in_one_line(runs, tmp_path, monkeypatch):
    from tinyfusion.cli import finetune
    from tinyfusion.recovery import finetune as recover
    _, pre, pl = runs
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    for mode in ("kd", "masked_kd"):
        extra = ["--k-sigma", "2"] if mode == "masked_kd" else []
        one_line_error(lambda: finetune.main(FINETUNE + ["--student", pl["pruned"], "--teacher", pre["teacher"],
                                                         "--mode", mode, *extra, "--out", str(tmp_path / mode)]),
                       f"--mode {mode} needs a model whose output", pl["pruned"], "computes its own loss",
                       "use --mode finetune")
    student = load_model(pl["pruned"])  # in-process too, before any step
    one_line_error(lambda: recover(student, torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long), "kd",
                                   load_model(pre["teacher"]), steps=1, batch_size=2, progress=False),
                   "--mode kd", "computes its own loss")
