"""The flow objective: SiT's linear stochastic interpolant with velocity prediction (after github: willisma/SiT).

Time runs as in SiT, from noise at ``t = 0`` to data at ``t = 1``::

    x_t = t * x0 + (1 - t) * eps,        the velocity  v = dx_t/dt = x0 - eps,

which is the path ``x_s = (1 - s) x0 + s eps`` with ``s = 1 - t`` (noise at ``s = 1``) walked the other way.
Keeping SiT's direction means the official SiT-XL/2 checkpoint sees the times it was trained on: the network's
time input is ``t`` itself, a float in [0, 1], through DiT's sinusoidal embedding. The loss is
``MSE(v_theta(x_t, t), x0 - eps)`` with ``t ~ U[0, 1]`` (SiT's interval for a velocity model without an SDE).
A network with a learned-sigma output (official SiT-XL/2: 8 channels) has its second half ignored, as SiT does.

Sampling integrates the ODE ``dx/dt = v`` from ``t = 0`` to 1 on a uniform grid (``euler``: one network call a
step; ``heun``: two, second order), or SiT's SDE ``dx = (v + w s) dt + sqrt(2 w) dW`` with its default diffusion
``w(t) = 1 - t`` (``diffusion_form="sigma"``, norm 1): Euler-Maruyama on [0, 1 - 0.04], then one deterministic
step of 0.04 (SiT's ``last_step="Mean"``), one network call a step. For the linear path the score is
``s = -(x - t v) / (1 - t)``, so the drift ``v + w s = v - (x - t v)`` stays finite at both ends.
Classifier-free guidance goes through ``DiT.forward_with_cfg`` as for DDPM.

The rest of the library reaches it only through the objective interface (``tinyfusion.diffusion``).
"""
from __future__ import annotations

import torch

from tinyfusion.diffusion.common import conditional_half, eval_mode, initial_batch, network, training_terms
from tinyfusion.progress import tqdm

SAMPLERS = ("euler", "heun", "sde")
SDE_LAST_STEP = 0.04  # SiT's last_step_size: the SDE stops at 1 - 0.04 and takes one deterministic step


def _bcast(t, x):
    return t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


class FlowMatching:
    """Linear-interpolant flow matching with a velocity-predicting network (SiT's default transport)."""

    name = "flow"
    SAMPLERS = SAMPLERS
    default_sampler, default_steps = "heun", 13

    def __init__(self, learn_sigma=False):
        self.learn_sigma = learn_sigma  # only says the network has spare output channels; the loss never reads them

    @property
    def config(self):
        """What defines this objective (stored in the teacher's training summary)."""
        return {"name": self.name, "path": "linear", "prediction": "velocity"}

    # ---------------------------------------------------------------- the objective interface
    def sample_t(self, n, generator=None):
        """Training times for ``n`` samples: uniform floats in [0, 1) (0 is pure noise, 1 is data)."""
        return torch.rand(n, generator=generator)

    def clean_t(self, n, generator=None, fraction=0.25):
        """Times near the data end for ``n`` samples: uniform in (1 - fraction, 1] (DDPM's t < 250 of 1000)."""
        return 1.0 - fraction * torch.rand(n, generator=generator)

    def noised(self, x0, t, noise):
        """The interpolant x_t = t x0 + (1 - t) noise."""
        t = _bcast(t, x0)
        return t * x0 + (1 - t) * noise

    def model_time(self, t):
        """The time the network is conditioned on: ``t`` itself (SiT feeds the float to the embedder)."""
        return t

    def training_losses(self, model, x0, t, model_kwargs=None, noise=None, return_output=False):
        """Per-sample velocity loss: ``loss`` (= ``mse``; ``vb`` is zero, kept so every objective's terms match).

        With ``return_output`` also the raw model ``output`` and whatever the model returned besides it (``extra``).
        """
        return training_terms(self, model, x0, t, model_kwargs, noise, return_output)

    def distillation_loss(self, out, teacher_out, x_t, t):
        """Per-sample output distillation: MSE between the student's and the teacher's velocity (a learned-sigma
        network's spare half is ignored, as SiT's loss ignores it)."""
        C = x_t.shape[1]
        return ((out[:, :C] - teacher_out[:, :C].detach()) ** 2).mean(dim=list(range(1, x_t.dim())))

    def loss_from_output(self, out, x0, x_t, t, noise):
        """Per-sample loss terms (``loss``, ``mse``, ``vb``) of a network output ``out`` for the input ``x_t``."""
        C = x0.shape[1]
        mse = ((out[:, :C] - (x0 - noise)) ** 2).mean(dim=list(range(1, x0.dim())))
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, model, labels, sampler="heun", steps=13, cfg_scale=1.5, generator=None, progress=False,
               clip=True, **model_kwargs):
        """Class-conditional samples in [-1, 1] for ``labels``: ``steps`` steps of ``sampler`` from t=0 to 1
        (``clip=False``: not clamped, for latent-space models such as the official SiT-XL/2)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} for the flow objective, got {sampler!r}")
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {steps}")
        z, y = initial_batch(model, labels, cfg_scale, generator)
        with eval_mode(model):
            x = self.integrate(lambda x, t: self.velocity(model, x, t, y, cfg_scale, **model_kwargs), z,
                               sampler, steps, generator=generator, progress=progress)
        x = conditional_half(x, cfg_scale)
        return x.clamp(-1, 1) if clip else x

    def velocity(self, model, x, t, y, cfg_scale=None, **model_kwargs):
        """The network's (guided) velocity at ``x`` and the scalar time ``t``."""
        tt = torch.full((len(x),), float(t), device=x.device)
        return network(model, x, self.model_time(tt), y, cfg_scale, **model_kwargs)[:, : x.shape[1]]

    @staticmethod
    def integrate(field, x, sampler="heun", steps=13, generator=None, progress=False):
        """Integrate ``dx/dt = field(x, t)`` from t=0 to 1 in ``steps`` steps of a uniform grid; ``sde``: SiT's
        Euler-Maruyama on ``steps`` grid points of [0, 1 - SDE_LAST_STEP], then its deterministic last step."""
        if sampler == "sde":
            grid = torch.linspace(0.0, 1.0 - SDE_LAST_STEP, steps, dtype=torch.float64).tolist() + [1.0]
        else:
            grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        for i in tqdm(range(len(grid) - 1), disable=not progress, desc=sampler, leave=False):
            t, dt = grid[i], grid[i + 1] - grid[i]
            v = field(x, t)
            if sampler == "euler":
                x = x + dt * v
            elif sampler == "heun":
                x_next = x + dt * v
                x = x + dt * 0.5 * (v + field(x_next, grid[i + 1]))
            else:  # drift v + w s = v - (x - t v) with w = 1 - t; noise sqrt(2 w dt), none on the last step
                x = x + dt * (v - (x - t * v))
                if i < len(grid) - 2:
                    x = x + (2 * (1 - t) * dt) ** 0.5 * torch.randn(x.shape, device=x.device, generator=generator)
        return x
