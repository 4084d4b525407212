"""The flow objective (SiT) and the SiT models: the objective's maths, its samplers, and that everything
downstream picks a checkpoint's own objective (no caller names it)."""
import math

import pytest
import torch

from tinyfusion.diffusion import create_objective, objective_for
from tinyfusion.diffusion.flow import FlowMatching
from tinyfusion.io import save_checkpoint
from tinyfusion.models import DiT, build_model, load_dit


@pytest.fixture
def tiny_sit():
    torch.manual_seed(0)
    return DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=6, num_heads=2, num_classes=10,
               learn_sigma=False, objective="flow")


class ExactVelocity(torch.nn.Module):
    """The true velocity field of a one-point data distribution ``x0``: v(x, t) = (x0 - x) / (1 - t)."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        return (self.x0 - x) / (1 - t.view(-1, 1, 1, 1))


def test_interpolant_ends_and_velocity():
    flow = create_objective("flow")
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    assert torch.equal(flow.noised(x0, torch.zeros(4), eps), eps)       # t = 0: noise (SiT's direction)
    assert torch.equal(flow.noised(x0, torch.ones(4), eps), x0)         # t = 1: data
    t = torch.full((4,), 0.3)
    h = 1e-3
    numeric = (flow.noised(x0, t + h, eps) - flow.noised(x0, t - h, eps)) / (2 * h)
    assert torch.allclose(numeric, x0 - eps, atol=1e-3)
    g = torch.Generator().manual_seed(0)
    ts = flow.sample_t(10000, generator=g)
    assert ts.dtype == torch.float32 and 0 <= float(ts.min()) and float(ts.max()) < 1
    assert abs(float(ts.mean()) - 0.5) < 0.02
    assert flow.config == {"name": "flow", "path": "linear", "prediction": "velocity"}


def test_loss_is_zero_for_the_exact_velocity():
    flow = create_objective("flow")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 1, 8, 8, generator=g).expand(16, -1, -1, -1)
    t = torch.rand(16, generator=g) * 0.95
    terms = flow.training_losses(ExactVelocity(x0), x0, t, noise=torch.randn(16, 1, 8, 8, generator=g))
    assert terms["loss"].shape == (16,) and float(terms["loss"].max()) < 1e-8
    assert torch.equal(terms["loss"], terms["mse"]) and float(terms["vb"].abs().max()) == 0
    wrong = flow.training_losses(ExactVelocity(x0 + 0.5), x0, t, noise=torch.randn(16, 1, 8, 8, generator=g))
    assert float(wrong["loss"].min()) > 0.2


@pytest.mark.parametrize("sampler,steps,tol", [("euler", 200, 5e-3), ("heun", 20, 1e-3)])
def test_ode_samplers_integrate_a_linear_field(sampler, steps, tol):
    x = torch.linspace(-2, 2, 11)
    out = FlowMatching.integrate(lambda x, t: -x, x.clone(), sampler, steps)   # dx/dt = -x: x(1) = x(0) / e
    assert torch.allclose(out, x / math.e, atol=tol)
    # time-dependent field dx/dt = 2t: x(1) = x(0) + 1; Heun is exact for it
    out = FlowMatching.integrate(lambda x, t: torch.full_like(x, 2 * t), x.clone(), sampler, steps)
    assert torch.allclose(out, x + 1, atol=tol)


def test_heun_converges_at_second_order():
    x = torch.ones(3)
    err = [float((FlowMatching.integrate(lambda x, t: -x, x.clone(), "heun", n) - 1 / math.e).abs().max())
           for n in (10, 20)]
    assert 3.5 < err[0] / err[1] < 4.5


def test_sde_sampler_reaches_a_one_point_distribution():
    """With the exact field of one data point, the SDE's noise is pulled back onto it (the drift contracts)."""
    flow = create_objective("flow")
    x0 = torch.full((1, 1, 8, 8), 0.25)
    model = ExactVelocity(x0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 8, 8, generator=g)
    field = lambda x, t: model(x, torch.full((len(x),), min(t, 1 - 1e-6)))  # noqa: E731
    out = flow.integrate(field, z, "sde", 200, generator=g)   # SiT's last step from t = 0.96 is approximate
    assert float((out - x0).abs().mean()) < 0.05 and float((out - x0).abs().max()) < 0.25
    out = flow.integrate(field, z, "euler", 10)
    assert float((out - x0).abs().max()) < 1e-5


@pytest.mark.parametrize("sampler,steps", [("euler", 100), ("heun", 30), ("sde", 200)])
def test_samplers_reach_a_gaussian_data_distribution(sampler, steps):
    """Data N(0, s^2): the exact velocity is linear in x, v = (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) x; every
    sampler, started from N(0, 1), must end with standard deviation s."""
    s = 0.5
    field = lambda x, t: (t * s * s - (1 - t)) / (t * t * s * s + (1 - t) ** 2) * x  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, dtype=torch.float64, generator=g)
    out = FlowMatching.integrate(field, x, sampler, steps, generator=g)
    assert abs(float(out.std()) - s) < 0.02 and abs(float(out.mean())) < 0.02


def test_sde_step_is_sits_euler_maruyama():
    """One step of SiT's SDE (w = 1 - t, drift v + w s, noise sqrt(2 w dt)) and its deterministic last step."""
    from tinyfusion.diffusion.flow import SDE_LAST_STEP
    x, v = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25])
    out = FlowMatching.integrate(lambda x_, t: v, x.clone(), "sde", 2, generator=torch.Generator().manual_seed(7))
    dt = 1 - SDE_LAST_STEP                                     # grid: 0, 0.96, then the last step to 1
    z = torch.randn(2, generator=torch.Generator().manual_seed(7))
    x1 = x + dt * (v - x) + (2 * dt) ** 0.5 * z                # at t = 0: w = 1, w s = -(x - 0 v)
    x2 = x1 + SDE_LAST_STEP * (v - (x1 - dt * v))              # the mean step, no noise
    assert torch.allclose(out, x2, atol=1e-6)


def test_sampling_a_sit_is_seeded_guided_and_bounded(tiny_sit):
    flow = objective_for(tiny_sit)
    assert isinstance(flow, FlowMatching)
    labels = torch.arange(6) % 10
    a = flow.sample(tiny_sit, labels, "heun", 3, 1.5, generator=torch.Generator().manual_seed(3))
    b = flow.sample(tiny_sit, labels, "heun", 3, 1.5, generator=torch.Generator().manual_seed(3))
    c = flow.sample(tiny_sit, labels, "sde", 3, 1.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == c.shape == (6, 1, 8, 8) and torch.equal(a, b)
    assert float(a.abs().max()) <= 1.0
    assert tiny_sit.training  # restored
    with pytest.raises(ValueError, match="sampler must be one of euler, heun, sde"):
        flow.sample(tiny_sit, labels, "ddim", 3)


def test_a_sit_learns(tiny_sit):
    flow = objective_for(tiny_sit)
    x0 = torch.zeros(64, 1, 8, 8)
    x0[:, :, 2:6, 2:6] = 1
    y = torch.zeros(64, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    fixed = dict(t=flow.sample_t(64, generator=g), noise=torch.randn(x0.shape, generator=g))
    first = flow.training_losses(tiny_sit, x0, fixed["t"], dict(y=y), noise=fixed["noise"])["loss"].mean().item()
    opt = torch.optim.AdamW(tiny_sit.parameters(), lr=3e-3)
    for _ in range(60):
        loss = flow.training_losses(tiny_sit, x0, flow.sample_t(64), dict(y=y))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = flow.training_losses(tiny_sit, x0, fixed["t"], dict(y=y), noise=fixed["noise"])["loss"].mean().item()
    assert last < 0.5 * first


def test_sit_registry_and_checkpoints_carry_the_objective(tmp_path, tiny_sit):
    dit, sit = build_model("DiT-S/8", depth=2), build_model("SiT-S/8", depth=2)
    assert "objective" not in dit.config and dit.objective == "ddpm"          # the official DiT config is untouched
    assert sit.config["objective"] == "flow" and sit.learn_sigma               # SiT's official layout: 2C outputs
    assert {k: v for k, v in sit.config.items() if k != "objective"} == dit.config
    assert build_model("SiT-T28/4", depth=2).learn_sigma is False
    assert objective_for(sit).name == "flow" and objective_for(dit).name == "ddpm"
    assert objective_for(dit, "flow").name == "flow"
    # a saved SiT loads as a SiT; a raw state dict loads by name; an override replaces the stored objective
    save_checkpoint({"ema": tiny_sit.state_dict(), "config": tiny_sit.config}, tmp_path / "sit.pt")
    assert load_dit(tmp_path / "sit.pt").objective == "flow"
    assert load_dit(tmp_path / "sit.pt", objective="ddpm").objective == "ddpm"
    save_checkpoint(sit.state_dict(), tmp_path / "raw.pt")
    assert load_dit(tmp_path / "raw.pt", name="SiT-S/8").objective == "flow"
    # pruning keeps it
    from tinyfusion.pruning.indices import prune
    assert prune(tiny_sit, [0, 2, 4]).objective == "flow"


def test_unknown_objective_is_refused_by_name(tmp_path, tiny_sit):
    from tinyfusion.diffusion import check_objective
    with pytest.raises(ValueError, match="unknown objective 'flw'; registered: ddpm, flow"):
        check_objective("flw")
    with pytest.raises(ValueError, match="unknown objective"):
        objective_for(DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                          num_classes=10, objective="flw"))


def test_distilling_across_objectives_is_refused(tiny_sit):
    from tinyfusion.recovery import _check_teacher
    dit = DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=6, num_heads=2, num_classes=10,
              learn_sigma=False)
    with pytest.raises(ValueError, match="objective"):
        _check_teacher(tiny_sit, dit)
    _check_teacher(tiny_sit, tiny_sit)


def test_entry_points_take_the_objective_from_the_checkpoint(tmp_path, monkeypatch):
    """pretrain on a -sit profile trains a flow model; sample and finetune pick up its objective with no flag;
    finetune with --objective replaces it (and the cache key changes); an unknown name is refused by the resolver."""
    from tinyfusion import cache
    from tinyfusion.cli import finetune, pretrain, sample
    from tinyfusion.pruning.indices import prune
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))
    res = pretrain.run(profile="smoke-sit", out=str(tmp_path / "pre"), steps=3, batch_size=8, ckpt_every=0)
    assert res["objective"] == {"name": "flow", "path": "linear", "prediction": "velocity"}
    teacher = load_dit(res["teacher"])
    assert teacher.objective == "flow" and teacher.config["objective"] == "flow"
    out = sample.run(checkpoint=res["teacher"], n=4, batch=4, out=str(tmp_path / "s.npz"), progress=False)
    assert (out["sampler"], out["steps"]) == ("heun", 13)
    import numpy as np
    assert np.load(tmp_path / "s.npz")["images"].shape == (4, 16, 16)
    student = prune(teacher, list(range(0, 28, 2)))
    save_checkpoint({"ema": student.state_dict(), "config": student.config, "kept": list(range(0, 28, 2))},
                    tmp_path / "student.pt")
    common = dict(profile="smoke-sit", student=str(tmp_path / "student.pt"), teacher=res["teacher"], mode="kd",
                  steps=2, batch_size=4, progress=False, ckpt_every=0)
    ft = finetune.run(**common)
    assert load_dit(ft["model"]).objective == "flow"
    from tinyfusion.recovery import recovery_config
    assert "objective" not in recovery_config("smoke-sit", student=tmp_path / "student.pt")
    assert recovery_config("smoke-sit", student=tmp_path / "student.pt")["beta"] == [2e-4, 0.0]  # SiT's beta
    over = recovery_config("smoke-sit", student=tmp_path / "student.pt", objective="ddpm")
    assert over["objective"] == "ddpm" and cache.key(over) != cache.key(
        recovery_config("smoke-sit", student=tmp_path / "student.pt"))
    with pytest.raises(ValueError, match="unknown objective 'flw'"):
        finetune.run(**{**common, "objective": "flw"})


class _Payload:
    """An object whose unpickling would run code (here: append to a list, standing in for os.system)."""
    ran = []

    def __reduce__(self):
        return (_Payload.ran.append, ("code ran",))


def test_model_loaders_refuse_pickled_code(tmp_path):
    """load_dit and objective_of read tensors and plain containers only: a planted payload is refused unread."""
    from tinyfusion.io import CorruptArtefactError
    from tinyfusion.models.dit import objective_of
    path = tmp_path / "evil.pt"
    torch.save({"ema": {}, "config": {}, "payload": _Payload()}, path)
    for load in (lambda: load_dit(path), lambda: objective_of(path)):
        with pytest.raises(CorruptArtefactError, match="refused unread"):
            load()
    assert _Payload.ran == []
