from tinyfusion.diffusion.gaussian import GaussianDiffusion, create_diffusion, sample  # noqa: F401
