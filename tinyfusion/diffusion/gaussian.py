"""The DDPM objective: Gaussian diffusion as DiT trains and samples it (after improved-diffusion / the DiT repo).

1000-step linear beta schedule, epsilon prediction with a learned-range variance (the model's second half of
output channels interpolates log beta_t and log beta~_t), the hybrid loss ``MSE(eps) + L_vb`` (the VB term
trains only the variance: the mean is detached inside it), DDPM ancestral and DDIM sampling with timestep
respacing, and classifier-free guidance through ``DiT.forward_with_cfg``.

The rest of the library reaches it only through the objective interface (``tinyfusion.diffusion``):
``sample_t``, ``noised``, ``model_time``, ``training_losses``, ``loss_from_output`` and ``sample``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from tinyfusion.diffusion.common import conditional_half, eval_mode, guided, initial_batch, network, training_terms
from tinyfusion.progress import tqdm


def linear_betas(num_timesteps=1000):
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps, section_counts):
    """Evenly spaced subset of timesteps: ``section_counts`` is an int, a string like "25" or "ddim25"."""
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        n = int(section_counts[4:])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == n:
                return set(range(0, num_timesteps, stride))
        raise ValueError(f"cannot take exactly {n} steps of {num_timesteps} with an integer stride")
    n = int(section_counts)
    if not 1 <= n <= num_timesteps:
        raise ValueError(f"sampling steps must be in 1..{num_timesteps}, got {n}")
    frac = (num_timesteps - 1) / max(n - 1, 1)
    return {int(round(i * frac)) for i in range(n)}


def _extract(arr, t, shape):
    out = torch.from_numpy(arr).to(t.device)[t].float()
    return out.view(-1, *([1] * (len(shape) - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] discretised to 256 bins (the L_0 term)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def mean_flat(x):
    return x.mean(dim=list(range(1, x.dim())))


class GaussianDiffusion:
    """Diffusion over ``betas``; ``timestep_map`` maps respaced indices to the model's original timesteps."""

    name = "ddpm"
    SAMPLERS = ("ddim", "ddpm")
    default_sampler, default_steps = "ddim", 25
    MIN_STEPS = 2  # a respaced schedule of one step has no previous timestep (validate.sampling)

    def __init__(self, betas, learn_sigma=True, timestep_map=None, original_num_steps=None):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        self.learn_sigma = learn_sigma
        self.timestep_map = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
        self.original_num_steps = original_num_steps or self.num_timesteps
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ---------------------------------------------------------------- the objective interface
    @property
    def config(self):
        """What defines this objective (stored with checkpoints and cache keys)."""
        return {"name": self.name, "learn_sigma": self.learn_sigma, "diffusion_steps": self.original_num_steps}

    def sample_t(self, n, generator=None):
        """Training timesteps for ``n`` samples: uniform integers in [0, num_timesteps)."""
        return torch.randint(self.num_timesteps, (n,), generator=generator)

    def clean_t(self, n, generator=None, fraction=0.25):
        """Timesteps near the data end for ``n`` samples: uniform integers in [0, fraction * num_timesteps) (the
        official ShortGPT scoring feeds clean latents with t < 250)."""
        return torch.randint(max(1, int(fraction * self.num_timesteps)), (n,), generator=generator)

    def noised(self, x_start, t, noise):
        """The model's input x_t for clean data ``x_start`` at timesteps ``t`` with ``noise``."""
        return self.q_sample(x_start, t, noise)

    def model_time(self, t):
        """The timestep the network is conditioned on (the original schedule's index for a respaced one)."""
        return self._scale_t(t)

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x_start, t, noise):
        return (_extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior(self, x_start, x_t, t):
        mean = (_extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + _extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return mean, _extract(self.posterior_log_variance_clipped, t, x_t.shape)

    def _scale_t(self, t):
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    # ---------------------------------------------------------------- reverse process
    def p_mean_variance(self, model_output, x, t, clip_denoised=False):
        """Mean, log-variance and predicted x0 of p(x_{t-1} | x_t) from the raw model output."""
        C = x.shape[1]
        if self.learn_sigma:
            eps, var_values = model_output[:, :C], model_output[:, C:2 * C]
            min_log = _extract(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract(np.log(self.betas), t, x.shape)
            frac = (var_values + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:
            eps = model_output[:, :C]
            log_var = _extract(self.posterior_log_variance_clipped, t, x.shape)
        pred_x0 = (_extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x
                   - _extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _ = self.q_posterior(pred_x0, x, t)
        return mean, log_var, pred_x0, eps

    # ---------------------------------------------------------------- training
    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None, return_output=False):
        """The hybrid DiT loss per sample: ``mse`` of the noise plus ``vb`` (variance only).

        Returns a dict with ``loss``, ``mse`` and ``vb`` (each shape (B,)); with ``return_output`` also the
        raw model ``output`` (and whatever the model returned besides it, under ``extra``).
        """
        return training_terms(self, model, x_start, t, model_kwargs, noise, return_output)

    def distillation_loss(self, out, teacher_out, x_t, t):
        """Per-sample output distillation (the official TinyFusion KD): MSE between the student's and the teacher's
        predicted noise (the first C channels) plus, for a learned variance, the KL from the teacher's predicted
        Gaussian p(x_{t-1} | x_t) to the student's, in bits, with the student's mean detached as in DiT's hybrid
        loss (the mean learns through the MSE, the variance through the KL)."""
        C = x_t.shape[1]
        mse = mean_flat((out[:, :C] - teacher_out[:, :C].detach()) ** 2)
        if not self.learn_sigma:
            return mse
        t_mean, t_log_var, _, _ = self.p_mean_variance(teacher_out.detach(), x_t, t)
        frozen = torch.cat([out[:, :C].detach(), out[:, C:2 * C]], dim=1)
        s_mean, s_log_var, _, _ = self.p_mean_variance(frozen, x_t, t)
        return mse + mean_flat(normal_kl(t_mean, t_log_var, s_mean, s_log_var)) / math.log(2.0)

    def loss_from_output(self, out, x_start, x_t, t, noise):
        """Per-sample loss terms (``loss``, ``mse``, ``vb``) of a model output ``out`` for the input x_t."""
        C = x_start.shape[1]
        terms = {"mse": mean_flat((noise - out[:, :C]) ** 2)}
        if self.learn_sigma:
            frozen = torch.cat([out[:, :C].detach(), out[:, C:2 * C]], dim=1)
            terms["vb"] = self._vb_terms(frozen, x_start, x_t, t) * (self.num_timesteps / 1000.0)
        else:
            terms["vb"] = torch.zeros_like(terms["mse"])
        terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def _vb_terms(self, model_output, x_start, x_t, t):
        true_mean, true_log_var = self.q_posterior(x_start, x_t, t)
        mean, log_var, _, _ = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # ---------------------------------------------------------------- sampling
    def _model_out(self, model, x, t, model_kwargs, cfg_scale):
        kw = dict(model_kwargs)
        return network(model, x, self._scale_t(t), kw.pop("y"), cfg_scale, **kw)

    @torch.no_grad()
    def p_sample_loop(self, model, shape, model_kwargs, noise=None, cfg_scale=None, progress=False,
                      generator=None, clip_denoised=True):
        """DDPM ancestral sampling over all (respaced) steps."""
        device = next(model.parameters()).device
        x = torch.randn(shape, device=device, generator=generator) if noise is None else noise
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="ddpm", leave=False):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            out = self._model_out(model, x, t, model_kwargs, cfg_scale)
            mean, log_var, _, _ = self.p_mean_variance(out, x, t, clip_denoised=clip_denoised)
            z = torch.randn(x.shape, device=device, generator=generator)
            x = mean + (i > 0) * torch.exp(0.5 * log_var) * z
        return x

    @torch.no_grad()
    def sample(self, model, labels, sampler="ddim", steps=25, cfg_scale=1.5, generator=None, progress=False,
               clip=True, **model_kwargs):
        """Class-conditional samples in [-1, 1] for ``labels`` (a LongTensor), ``steps`` respaced steps.

        With ``cfg_scale > 1`` the batch is doubled with the null label and guided as in the official code.
        ``clip``: clamp the predicted x0 to [-1, 1] at each step (pixel-space models); latent-space models (the
        official DiT-XL/2 on SD-VAE latents) sample with ``clip=False``, as the official sample.py
        (``clip_denoised=False``).
        """
        if sampler not in self.SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(self.SAMPLERS)} for the ddpm objective, got {sampler!r}")
        diffusion = create_diffusion(str(steps), learn_sigma=self.learn_sigma,
                                     diffusion_steps=self.original_num_steps)
        z, labels = initial_batch(model, labels, cfg_scale, generator)
        loop = diffusion.ddim_sample_loop if sampler == "ddim" else diffusion.p_sample_loop
        with eval_mode(model):
            x = loop(model, z.shape, dict(model_kwargs, y=labels), noise=z,
                     cfg_scale=cfg_scale if guided(cfg_scale) else None, progress=progress, generator=generator,
                     clip_denoised=clip)
        return conditional_half(x, cfg_scale)

    @torch.no_grad()
    def ddim_sample_loop(self, model, shape, model_kwargs, noise=None, cfg_scale=None, progress=False,
                         generator=None, eta=0.0, clip_denoised=True):
        """DDIM sampling (eta=0: deterministic) over all (respaced) steps."""
        device = next(model.parameters()).device
        x = torch.randn(shape, device=device, generator=generator) if noise is None else noise
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="ddim", leave=False):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            out = self._model_out(model, x, t, model_kwargs, cfg_scale)
            _, _, pred_x0, _ = self.p_mean_variance(out, x, t, clip_denoised=clip_denoised)
            eps = ((_extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - pred_x0)
                   / _extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape))
            a_bar = _extract(self.alphas_cumprod, t, x.shape)
            a_prev = _extract(self.alphas_cumprod_prev, t, x.shape)
            sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_bar)) * torch.sqrt(1 - a_bar / a_prev)
            x = pred_x0 * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma ** 2) * eps
            if eta > 0 and i > 0:
                x = x + sigma * torch.randn(x.shape, device=device, generator=generator)
        return x


def create_diffusion(timestep_respacing="", learn_sigma=True, diffusion_steps=1000):
    """Training diffusion (``timestep_respacing=""``) or a respaced one for sampling ("250", "ddim25", 50, ...)."""
    betas = linear_betas(diffusion_steps)
    if timestep_respacing in ("", None):
        return GaussianDiffusion(betas, learn_sigma=learn_sigma)
    use = sorted(space_timesteps(diffusion_steps, timestep_respacing))
    alphas_cumprod = np.cumprod(1.0 - betas)
    last, new_betas = 1.0, []
    for i in use:
        new_betas.append(1 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    return GaussianDiffusion(np.array(new_betas), learn_sigma=learn_sigma, timestep_map=use,
                             original_num_steps=diffusion_steps)
