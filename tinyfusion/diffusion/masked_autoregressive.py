"""MAR's objective behind the one door: masked autoregression with a per-token diffusion head (Li et al. 2024).

A MAR computes its own training loss (random order, a masked share of the tokens, the head's diffusion loss on
the masked ones: ``models.mar.MAR.forward``), so this objective's ``training_losses`` asks the model for it, and
the loops reach it through ``models.prunable.loss_terms`` as they reach DiT's and SiT's. What the DDPM and flow
objectives do per image and time (``noised``, ``model_time``, output distillation) has no meaning here: those
raise a one-line error saying so; ``sample_t`` draws placeholder times the model does not read, as DDPM draws its. Sampling is MAR's own loop (``MAR.sample``): ``steps`` is the number of masked
autoregressive iterations (at most the number of tokens; the released evaluation uses 256 for 256 tokens, one
token per iteration, and our cpu model has 16 tokens, so 16), each token drawn by the head's own diffusion
(``num_sampling_steps`` of the model's config, 100 as released) at ``temperature``, guidance ramped linearly from 1
with the share of tokens already known (``cfg_schedule="linear"``, MAR-L's).

Official reference: LTH14/mar ``models/mar.py`` (``sample_tokens``) and ``main_mar.py`` (``--num_iter``,
``--cfg_schedule linear``, ``--temperature``).
"""
from __future__ import annotations

import torch

SAMPLERS = ("mar",)


class MaskedAutoregressive:
    """The "mar" objective: the model's own loss, the model's own masked-autoregressive sampler."""

    name = "mar"
    SAMPLERS = SAMPLERS
    default_sampler, default_steps = "mar", 16
    MIN_STEPS = 1

    def __init__(self, learn_sigma=True, temperature=1.0, cfg_schedule="linear"):
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
        self.temperature = float(temperature)
        self.cfg_schedule = cfg_schedule

    @property
    def config(self):
        return {"name": self.name, "temperature": self.temperature, "cfg_schedule": self.cfg_schedule}

    def training_losses(self, model, x0, t=None, model_kwargs=None, noise=None):
        """{"loss": (B,)}: the model's own per-sample loss (``t`` and ``noise`` are not used: the model draws its
        order, mask ratio and head timesteps; ``model_kwargs``: ``y`` and an optional layer ``mask``)."""
        kw = dict(model_kwargs or {})
        return {"loss": model(x0, kw.pop("y"), layer_mask=kw.pop("mask", None), **kw)}

    def _not_here(self, what):
        raise TypeError(f"the mar objective has no {what}: a MAR draws its own masks and head timesteps; reach its "
                        f"loss through models.prunable.loss_terms")

    def sample_t(self, n, generator=None):
        """Placeholder times for the loops' batches, which a MAR does not read (it draws its own head timesteps):
        drawn exactly as the DDPM objective draws its, so every loop's random stream is the one it always was."""
        return torch.randint(1000, (n,), generator=generator)

    def clean_t(self, n, generator=None, fraction=0.25):
        """As :meth:`sample_t`, the DDPM objective's draw near the data end (not read by a MAR)."""
        return torch.randint(max(1, int(fraction * 1000)), (n,), generator=generator)

    def noised(self, x0, t, noise):
        self._not_here("noised input")

    def model_time(self, t):
        self._not_here("network time")

    def loss_from_output(self, out, x0, x_t, t, noise):
        self._not_here("loss from a prediction")

    def distillation_loss(self, out, teacher_out, x_t, t):
        self._not_here("output distillation")

    @torch.no_grad()
    def sample(self, model, labels, sampler="mar", steps=16, cfg_scale=1.5, generator=None, progress=False,
               clip=True, **model_kwargs):
        """Class-conditional images in [-1, 1] for ``labels``: ``steps`` masked-autoregressive iterations of
        ``model`` (a MAR, possibly wrapped), guidance ``cfg_scale`` on this objective's schedule (``clip=False``:
        not clamped, for latent-space models; with ``clip`` the head also clamps each step's predicted x0, as ADM
        samples pixels: see ``TokenDiffusion.sample_loop``)."""
        from tinyfusion.training import unwrap

        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} for the mar objective, got {sampler!r}")
        net = unwrap(model)
        steps = int(steps)
        if not 1 <= steps <= net.seq_len:
            raise ValueError(f"steps (masked-autoregressive iterations) must be in 1..{net.seq_len}, the model's "
                             f"number of tokens; got {steps}")
        x = net.sample(labels, num_iter=steps, cfg=float(cfg_scale), temperature=self.temperature,
                       generator=generator, cfg_schedule=self.cfg_schedule, progress=progress, clip_denoised=clip,
                       **model_kwargs)
        return x.clamp(-1, 1) if clip else x
