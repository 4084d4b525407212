import numpy as np
import torch

from tinyfusion.diffusion import create_diffusion, sample
from tinyfusion.diffusion.gaussian import space_timesteps


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
    a = sample(tiny_dit, labels, "ddim", 5, 1.5, generator=torch.Generator().manual_seed(3))
    b = sample(tiny_dit, labels, "ddim", 5, 1.5, generator=torch.Generator().manual_seed(3))
    c = sample(tiny_dit, labels, "ddpm", 5, 1.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b)
    assert a.abs().max() <= 1.0 + 1e-5 and c.shape == a.shape
