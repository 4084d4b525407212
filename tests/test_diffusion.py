import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyfusion.diffusion import OBJECTIVES, create_objective, objective_for
from tinyfusion.diffusion.gaussian import create_diffusion, space_timesteps

INTERFACE = ("sample_t", "clean_t", "noised", "model_time", "training_losses", "loss_from_output", "distillation_loss", "sample", "name",
             "config", "SAMPLERS", "default_sampler", "default_steps")


def test_schedule_and_respacing():
    d = create_diffusion()
    assert d.num_timesteps == 1000
    assert np.isclose(d.betas[0], 1e-4) and np.isclose(d.betas[-1], 0.02)
    r = create_diffusion("25")
    assert r.num_timesteps == 25 and r.timestep_map[0] == 0 and r.timestep_map[-1] == 999
    # respaced alphas_cumprod equal the original's at the kept steps
    assert np.allclose(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map])
    assert len(space_timesteps(1000, "ddim50")) == 50


def test_q_sample_statistics():
    d = create_diffusion()
    x0 = torch.ones(20000, 1)
    t = torch.full((20000,), 999)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    assert abs(xt.mean().item()) < 0.05 and abs(xt.std().item() - 1) < 0.05


def test_loss_falls_when_training(tiny_dit):
    torch.manual_seed(0)
    d = create_diffusion()
    x0 = torch.zeros(64, 1, 8, 8)
    x0[:, :, 2:6, 2:6] = 1  # a square: learnable structure
    y = torch.zeros(64, dtype=torch.long)
    opt = torch.optim.AdamW(tiny_dit.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (64,), generator=g)
    first = d.training_losses(tiny_dit, x0, t, dict(y=y), noise=noise)["mse"].mean().item()
    for _ in range(60):
        loss = d.training_losses(tiny_dit, x0, torch.randint(0, 1000, (64,)), dict(y=y))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = d.training_losses(tiny_dit, x0, t, dict(y=y), noise=noise)["mse"].mean().item()
    assert last < 0.7 * first


def test_sampling_is_seeded_and_bounded(tiny_dit):
    labels = torch.arange(6) % 10
    sample = objective_for(tiny_dit).sample
    a = sample(tiny_dit, labels, "ddim", 5, 1.5, generator=torch.Generator().manual_seed(3))
    b = sample(tiny_dit, labels, "ddim", 5, 1.5, generator=torch.Generator().manual_seed(3))
    c = sample(tiny_dit, labels, "ddpm", 5, 1.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b)
    assert a.abs().max() <= 1.0 + 1e-5 and c.shape == a.shape
    with pytest.raises(ValueError, match="sampler must be"):
        sample(tiny_dit, labels, "euler", 5)


def test_every_registered_objective_has_the_interface(tiny_dit):
    for name in OBJECTIVES:
        obj = create_objective(name)
        missing = [m for m in INTERFACE if not hasattr(obj, m)]
        assert not missing, (name, missing)
        assert obj.name == name and obj.config["name"] == name
    with pytest.raises(ValueError, match="unknown objective 'flowz'.*ddpm"):
        create_objective("flowz")
    assert objective_for(tiny_dit).config["learn_sigma"] is True


def test_loss_from_output_matches_training_losses(tiny_dit):
    obj = create_objective()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 1, 8, 8, generator=g)
    t, noise, y = obj.sample_t(8, generator=g), torch.randn(8, 1, 8, 8, generator=g), torch.arange(8)
    tiny_dit.eval()
    terms = obj.training_losses(tiny_dit, x0, t, dict(y=y), noise=noise)
    x_t = obj.noised(x0, t, noise)
    again = obj.loss_from_output(tiny_dit(x_t, obj.model_time(t), y), x0, x_t, t, noise)
    for k in ("loss", "mse", "vb"):
        assert torch.allclose(terms[k], again[k]), k
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) < 1000


def test_nothing_outside_the_objective_calls_its_internals():
    """The objective is one door: adding one (flow for SiT) must not touch the callers."""
    repo = Path(__file__).resolve().parent.parent
    internals = re.compile(r"\b(q_sample|_scale_t|losses_from_output|p_mean_variance|create_diffusion|"
                           r"ddim_sample_loop|p_sample_loop|GaussianDiffusion)\b")
    files = [*(repo / "tinyfusion").rglob("*.py"), *(repo / "benchmarks").glob("*.py"), *(repo / "notebooks").glob("*.ipynb")]
    offenders = [f"{p.relative_to(repo)}:{i}" for p in files if "diffusion" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if internals.search(line)]
    assert not offenders, offenders
