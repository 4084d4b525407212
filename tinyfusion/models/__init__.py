from tinyfusion.models.dit import DiT, DiT_models, build_model, load_dit  # noqa: F401
