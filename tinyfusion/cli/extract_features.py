"""Encode an ImageNet-style image folder into SD-VAE latents in the official per-image .npy layout (DiT's training data).

    python -m tinyfusion.cli.extract_features --data-path /data/imagenet/train --out data/local/imagenet256
    torchrun --standalone --nproc_per_node=8 -m tinyfusion.cli.extract_features -- \\
        --data-path /data/imagenet/train --out data/local/imagenet256 --vae data/local/sd-vae-ft-ema

``--data-path``: one sub-folder per class (``n01440764/...``), read as torchvision's ``ImageFolder`` (class index =
position of the folder in sorted order, ImageNet's usual 0..999). Each image is center-cropped as ADM / DiT do
(halved with a box filter while its short side is at least twice ``--image-size``, resized bicubically so the short
side is ``--image-size``, then the central square), flipped horizontally with probability 1/2 when ``--flip`` (as
the official ``RandomHorizontalFlip``; the coin of image i is seeded by ``(seed, i)``), scaled to [-1, 1] and encoded:
``latent_dist.sample() * 0.18215`` (the posterior noise of image i seeded by ``(seed, i)`` too, so the files do not
depend on the number of processes or the batch size).

Writes, as the official ``extract_features.py`` (fast-DiT / TinyFusion) does, ``<out>/imagenet256_features/<i>.npy``
(float32 (1, 4, S/8, S/8)) and ``<out>/imagenet256_labels/<i>.npy`` (int64 (1,)), ``i`` the image's index in the
folder; each rank encodes the images ``rank, rank + world, ...``. Files already there are kept (a killed run goes on
where it stopped; ``--recompute`` redoes them). The imagenet profile trains on ``<out>`` (``$TINYFUSION_LATENTS``).
The VAE: ``--vae``, ``$TINYFUSION_VAE`` or ``data/local/sd-vae-ft-ema`` (``tinyfusion.vae``; nothing downloads).
"""
from __future__ import annotations

import sys

from tinyfusion.cli.common import VAE, cli_main

DEFAULTS = dict(data_path="", out="", vae="", image_size=256, flip=True, batch=32, seed=0, workers=4, limit=0,
                recompute=False, progress=True)
HELP = dict(data_path="ImageNet-style folder: one sub-folder of images per class (required)",
            out="output folder; features and labels go to <out>/imagenet256_features and <out>/imagenet256_labels "
                "(default: $TINYFUSION_LATENTS, else data/local/imagenet256)",
            vae="SD-VAE folder or file (default: $TINYFUSION_VAE, else data/local/sd-vae-ft-ema)",
            image_size="center-crop size in pixels (256: 32x32x4 latents)",
            flip="flip each image horizontally with probability 1/2 (the official RandomHorizontalFlip)",
            batch="images encoded at once per process", seed="seed of the flips and of the posterior samples",
            workers="data-loading worker processes per rank", limit="encode only the first N images (0: all)",
            recompute="encode again images whose files exist", progress="show a progress bar (rank 0)")
VAE_DEFAULT = "data/local/sd-vae-ft-ema"
INPUTS = dict(vae=("vae", VAE))
OUTPUTS = dict(out="folder")


def center_crop(image, size):
    """ADM's ``center_crop_arr`` (which DiT uses): a PIL image -> a size x size PIL image."""
    import numpy as np
    from PIL import Image
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top:top + size, left:left + size])


class _Cropped:
    """(index, image tensor in [-1, 1], label) of the folder's images at the given indices."""

    def __init__(self, folder, indices, size, flip, seed):
        self.folder, self.indices, self.size, self.flip, self.seed = folder, indices, size, flip, seed

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        import numpy as np
        import torch

        from tinyfusion.training import step_generator
        i = self.indices[j]
        path, label = self.folder.samples[i]
        image = center_crop(self.folder.loader(path).convert("RGB"), self.size)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(127.5).sub(1)
        if self.flip and torch.rand((), generator=step_generator(self.seed, i, salt=5)) < 0.5:
            x = x.flip(-1)
        return i, x, label


def _save(path, array):
    """np.save through a temporary file and a rename: a killed run never leaves a half file that looks done."""
    import os

    import numpy as np
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def run(**cfg):
    import os
    from pathlib import Path

    import numpy as np
    import torch
    from torchvision.datasets import ImageFolder
    from tinyfusion.progress import tqdm

    from tinyfusion import dist, validate
    from tinyfusion.io import check_writable
    from tinyfusion.training import step_generator
    from tinyfusion.vae import LATENT_SCALE, load_vae

    cfg = {**DEFAULTS, **cfg}
    if not cfg["data_path"]:
        raise ValueError("--data-path is required: an ImageNet-style folder (one sub-folder of images per class)")
    if not Path(cfg["data_path"]).is_dir():
        raise FileNotFoundError(f"--data-path {cfg['data_path']} is not a folder")
    size = validate.check_budget("image_size", cfg["image_size"])
    batch = validate.check_budget("batch", cfg["batch"])
    out = Path(cfg["out"] or os.environ.get("TINYFUSION_LATENTS", "data/local/imagenet256"))
    feat_dir, label_dir = out / "imagenet256_features", out / "imagenet256_labels"
    for d in (feat_dir, label_dir):
        check_writable(d)
    try:
        folder = ImageFolder(cfg["data_path"])
    except FileNotFoundError as e:  # torchvision: no class folder, or no image in one
        raise FileNotFoundError(f"--data-path {cfg['data_path']}: {str(e).rstrip('.')}; pass an ImageNet-style folder "
                                f"(one sub-folder of images per class)") from None
    n = min(len(folder), cfg["limit"]) if cfg["limit"] else len(folder)
    mine = [i for i in range(dist.rank(), n, dist.world_size())
            if cfg["recompute"] or not (feat_dir / f"{i}.npy").exists() or not (label_dir / f"{i}.npy").exists()]
    dev = dist.device()
    vae = load_vae(cfg["vae"] or None, VAE_DEFAULT, device=dev)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # the SD-VAE: 8
    if size % factor:
        raise ValueError(f"--image-size {size} must be a multiple of {factor} (the VAE downsamples by {factor})")
    loader = torch.utils.data.DataLoader(_Cropped(folder, mine, size, cfg["flip"], cfg["seed"]), batch_size=batch,
                                         num_workers=int(cfg["workers"]), shuffle=False)
    dist.print0(f"extract_features: {n} images of {len(folder.classes)} classes from {cfg['data_path']} -> {out} "
                f"({size}x{size}, flip {cfg['flip']}) on {dist.world_size()} process(es); VAE {vae.source}")
    done = 0
    with torch.no_grad():
        for idx, x, y in tqdm(loader, desc="encode", disable=not (cfg["progress"] and dist.is_main())):
            posterior = vae.encode(x.to(dev, next(vae.parameters()).dtype)).latent_dist
            eps = torch.stack([torch.randn(posterior.mean.shape[1:], generator=step_generator(cfg["seed"], int(i),
                                                                                              salt=6))
                               for i in idx]).to(posterior.mean)
            z = ((posterior.mean + posterior.std * eps) * LATENT_SCALE).float().cpu().numpy()
            for i, zi, yi in zip(idx.tolist(), z, y.tolist()):  # the label last: a pair exists only when complete
                _save(feat_dir / f"{i}.npy", zi[None])                      # (1, 4, S/8, S/8) as the official files
                _save(label_dir / f"{i}.npy", np.array([yi], dtype=np.int64))
            done += len(idx)
    counts = dist.all_gather_object(done)
    dist.barrier()
    return {"out": str(out), "images": n, "encoded": int(sum(counts)), "kept": n - int(sum(counts)),
            "classes": len(folder.classes), "image_size": size,
            "latent_shape": [1, vae.config.latent_channels, size // factor, size // factor],
            "flip": cfg["flip"], "vae": vae.source, "world_size": dist.world_size()}


def main(argv=None, console=False):
    return cli_main(run, sys.modules[__name__], argv, console)


if __name__ == "__main__":
    main(console=True)
