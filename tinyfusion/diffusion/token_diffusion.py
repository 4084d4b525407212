"""The Gaussian diffusion of MAR's per-token head ("Diffusion Loss", Li et al. 2024).

MAR's head denoises one token vector (a (N, C) batch, not images) conditioned on the transformer's output z.
Its diffusion is DiT's in every respect but two, and only those two live here; the rest is the project's
``GaussianDiffusion`` (``tinyfusion.diffusion.gaussian``): q(x_t | x_0), the posterior, ``p_mean_variance``
with a learned-range variance, the hybrid loss ``MSE(eps) + L_vb`` (``training_losses``) and
``space_timesteps`` for respacing.

1. The cosine noise schedule (Nichol & Dhariwal 2021, s = 0.008, betas capped at 0.999), 1000 training steps,
   respaced to ``num_sampling_steps`` (100) for generation. The project's ``create_diffusion`` builds the linear
   schedule only, so the respacing of an arbitrary schedule is repeated here (five lines).
2. Ancestral sampling whose per-step noise is scaled by a ``temperature`` (``x_{t-1} = mean + T * sigma * n``; the
   starting noise is not scaled), with classifier-free guidance through the head's ``forward_with_cfg(x, t, c,
   cfg_scale)``. The project's ``p_sample_loop`` has no temperature and calls the network as
   ``model(x, t, y=...)`` through ``diffusion.common.network``, the DiT signature.

Official reference: LTH14/mar ``diffusion/__init__.py`` (``create_diffusion(timestep_respacing, noise_schedule=
"cosine")`` with the defaults learn_sigma=True, MSE loss type) and ``diffusion/gaussian_diffusion.py``
(``p_sample``: ``mean + nonzero_mask * exp(0.5 * log_variance) * noise * temperature``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from tinyfusion.diffusion.gaussian import GaussianDiffusion, space_timesteps


def cosine_betas(num_timesteps=1000, max_beta=0.999, s=0.008):
    """Betas of the cosine schedule: alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2) ** 2 on u in [0, 1]."""
    def alpha_bar(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    n = int(num_timesteps)
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                    dtype=np.float64)


class TokenDiffusion(GaussianDiffusion):
    """``GaussianDiffusion`` on a cosine schedule, with a temperature-scaled ancestral sampler for (N, C) tokens."""

    name = "ddpm-cosine"

    @property
    def config(self):
        return {**super().config, "noise_schedule": "cosine"}

    @torch.no_grad()
    def sample_loop(self, net, noise, cond, temperature=1.0, cfg_scale=1.0, generator=None, clip_denoised=False):
        """Denoise ``noise`` (N, C) over every (respaced) step, conditioned on ``cond`` (N, D).

        ``net(x, t, c)`` returns (N, 2C): noise prediction and variance values. With ``cfg_scale != 1`` the batch
        holds the conditional rows first and the unconditional rows second (same noise in both halves) and
        ``net.forward_with_cfg(x, t, c, cfg_scale)`` guides it. ``temperature`` scales the noise added at each
        step (not the starting noise), as the official ``p_sample``. ``clip_denoised``: clamp each step's predicted
        x0 to [-1, 1], for tokens of pixels (the official MAR's latent tokens are not clamped). On the cosine schedule
        the first respaced step (999 after 989) carries x0 into the mean with weight sqrt(alpha_bar_989) = 0.016, and
        x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar_999) multiplies the noise prediction's error by 2e4: an
        error of 0.02 becomes x0 of scale 400 and the chain never returns to [-1, 1] (the cpu MAR teacher's samples
        before the clamp).
        """
        x = noise
        for i in range(self.num_timesteps - 1, -1, -1):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            t_model = self._scale_t(t)
            out = net.forward_with_cfg(x, t_model, cond, cfg_scale) if cfg_scale != 1.0 else net(x, t_model, cond)
            mean, log_var, _, _ = self.p_mean_variance(out, x, t, clip_denoised=clip_denoised)
            # noise is drawn at every step, the last one included (where it is not used), as the official p_sample:
            # with the global RNG the draws are the official ones
            gen_device = generator.device if generator is not None else x.device
            z = torch.randn(x.shape, generator=generator, device=gen_device).to(x.device, x.dtype)
            x = mean + torch.exp(0.5 * log_var) * z * temperature if i > 0 else mean
        return x


def create_token_diffusion(timestep_respacing="", diffusion_steps=1000, learn_sigma=True):
    """The head's diffusion: the training one (``timestep_respacing=""``) or one respaced to "100", 50, ... steps."""
    betas = cosine_betas(diffusion_steps)
    if timestep_respacing in ("", None):
        return TokenDiffusion(betas, learn_sigma=learn_sigma)
    use = sorted(space_timesteps(diffusion_steps, timestep_respacing))
    alphas_cumprod = np.cumprod(1.0 - betas)
    previous = np.append(1.0, alphas_cumprod[use][:-1])
    new_betas = 1.0 - alphas_cumprod[use] / previous
    return TokenDiffusion(new_betas, learn_sigma=learn_sigma, timestep_map=use, original_num_steps=diffusion_steps)
