"""The project's evaluator network (its Inception stand-in): the model, its training, checksummed loading, and
its torch-fidelity feature-extractor plug-in.

The paper scores ImageNet samples with the ADM evaluator (Inception-V3). Here the Inception network's role is
played by a small Fashion-MNIST classifier, ``FMNISTEvaluator``, trained by ``train_evaluator`` (command line:
``python -m tinyfusion.cli.train_evaluator``) and committed as ``data/evaluator.pt`` with its SHA-256. It
provides the same four feature kinds:

- ``spatial``: the first 7 channels of the 7x7 map of its third conv block (343 numbers), the stand-in for the
  first 7 channels of Inception's ``mixed_6/conv`` that sFID uses;
- ``pool``: the 128-d globally pooled penultimate feature (Inception's ``pool3``), for FID, KID, precision/recall;
- ``logits_unbiased`` (``pool @ W.T``, no bias, as torch-fidelity does for Inception) for IS, and ``logits``.

Importing this module registers it with torch-fidelity as the feature extractor ``"tinyfusion-fmnist"``, so
``torch_fidelity.calculate_metrics(..., feature_extractor="tinyfusion-fmnist",
feature_extractor_weights_path="data/evaluator.pt")`` works. The metrics built on it (FID, IS, sFID, ...) are
in ``tinyfusion.metrics``.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from tinyfusion.data import load_fashion_mnist
from tinyfusion.images import at_resolution
from tinyfusion.io import CorruptArtefactError, load_checkpoint, save_checkpoint, save_json, sha256, verify_sha256
from tinyfusion.profiles import ROOT
from tinyfusion.progress import tqdm

EXTRACTOR_NAME = "tinyfusion-fmnist"
DEFAULT_EVALUATOR = ROOT / "data" / "evaluator.pt"
FEATURES = ("spatial", "pool", "logits_unbiased", "logits")
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530   # pixel statistics of the Fashion-MNIST training set (in [0, 1])
SPATIAL_CHANNELS = 7                         # like sFID's first 7 channels of mixed_6/conv


# ----------------------------------------------------------------------------------------------- the network
def _conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class FMNISTEvaluator(nn.Module):
    """A small CNN classifier for 28x28 grayscale images that also returns the features the metrics use.

    Four 3x3 conv + BatchNorm + ReLU blocks: 28x28 -> 14x14 -> 7x7 -> 7x7, then global average pooling and a
    linear layer. Input: uint8 images (B, 1, 28, 28) (or (B, 3, ...) of a repeated grey channel, of which the
    first is read); they are scaled to [0, 1] and normalised with Fashion-MNIST's mean and std.
    """

    def __init__(self, widths=(16, 32, 64, 128), num_classes=10, spatial_channels=SPATIAL_CHANNELS):
        super().__init__()
        self.config = dict(widths=list(widths), num_classes=num_classes, spatial_channels=spatial_channels)
        w = widths
        self.block1 = _conv_bn(1, w[0])            # 28x28
        self.block2 = _conv_bn(w[0], w[1], 2)      # 14x14
        self.block3 = _conv_bn(w[1], w[2], 2)      # 7x7: its first channels are the sFID features
        self.block4 = _conv_bn(w[2], w[3])         # 7x7
        self.fc = nn.Linear(w[3], num_classes)
        self.spatial_channels = spatial_channels

    @staticmethod
    def normalise(x):
        """uint8 (B, C, H, W) -> float input of the network (first channel, resized to 28x28 if needed)."""
        if x.dtype != torch.uint8:
            raise TypeError(f"the evaluator expects uint8 images, got {x.dtype}; convert with metrics.to_uint8")
        x = x[:, :1].float().div(255.0)
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return (x - FMNIST_MEAN) / FMNIST_STD

    def features(self, x):
        """Dict of every feature for uint8 images ``x`` (B, 1|3, H, W)."""
        h = F.relu(self.block1(self.normalise(x)))
        h = F.relu(self.block2(h))
        s = self.block3(h)                         # pre-activation 7x7 map, like Inception's mixed_6/conv
        h = F.relu(self.block4(F.relu(s)))
        pool = h.mean((2, 3))
        return {"spatial": s[:, :self.spatial_channels].flatten(1), "pool": pool,
                "logits_unbiased": pool @ self.fc.weight.T, "logits": self.fc(pool)}

    def forward(self, x):
        """Class logits of uint8 images."""
        return self.features(x)["logits"]


# ------------------------------------------------------------------------------------- loading, with checksum
_EVALUATORS: dict = {}


def _resolve(path):
    return Path(path) if path is not None else DEFAULT_EVALUATOR


def load_evaluator(path=None, verify=True):
    """The trained evaluator (eval mode, no grad) from ``path`` (default ``data/evaluator.pt``).

    The file's SHA-256 is checked against ``<path>.sha256`` (when that file exists): a damaged or replaced
    evaluator would silently change every FID in the project.
    """
    path = _resolve(path)
    if not path.exists():
        raise FileNotFoundError(f"evaluator checkpoint {path} does not exist; train it with "
                                f"`python -m tinyfusion.cli.train_evaluator --out {path}` (a few minutes on one CPU core)")
    sha_file = Path(str(path) + ".sha256")
    digest = verify_sha256(path, sha_file) if verify and sha_file.exists() else None
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        dit = isinstance(ckpt, dict) and ("ema" in ckpt or any(str(k).startswith("blocks.") for k in ckpt))
        raise CorruptArtefactError(
            f"{path} is not an evaluator checkpoint (expected keys 'model' and 'config' of the Fashion-MNIST "
            f"classifier{'; it is a DiT checkpoint' if dit else ''}); pass --evaluator data/evaluator.pt, or train one "
            f"with `python -m tinyfusion.cli.train_evaluator --out <a new file>`")
    try:
        model = FMNISTEvaluator(**ckpt["config"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError, ValueError) as e:
        raise CorruptArtefactError(f"{path} is not an evaluator checkpoint: its config or weights do not fit "
                                   f"FMNISTEvaluator ({type(e).__name__}: {str(e)[:200]}); pass the evaluator "
                                   f"(data/evaluator.pt), not a DiT, or retrain it with "
                                   f"`python -m tinyfusion.cli.train_evaluator --out {path}`") from None
    model.eval().requires_grad_(False)
    model.sha256 = digest or sha256(path)
    model.path = str(path)
    return model


def _cached_evaluator(path=None):
    """``load_evaluator`` once per (path, mtime, size); the checksum is verified on each fresh load."""
    path = _resolve(path)
    if not path.exists():
        return load_evaluator(path)  # raises the helpful error
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = load_evaluator(path)
    return _EVALUATORS[key]


# ------------------------------------------------------------------------------------ torch-fidelity plug-in
class FeatureExtractorTinyFusion(FeatureExtractorBase):
    """torch-fidelity feature extractor wrapping ``FMNISTEvaluator`` (uint8 Bx3xHxW in, features out)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.model = _cached_evaluator(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] in (1, 3)):
            raise ValueError(f"expected uint8 images of shape Bx3xHxW, got "
                             f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        feats = self.model.features(x)
        return tuple(feats[name].float() for name in self.features_list)


def register():
    """Register ``"tinyfusion-fmnist"`` with torch-fidelity (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, FeatureExtractorTinyFusion)


register()


# ------------------------------------------------------------------------------------------------ training
def augment(x, shift, g, lowres=(), lowres_prob=0.0):
    """Random horizontal flips and integer shifts of up to ``shift`` pixels (zero padding) of uint8 images.

    With probability ``lowres_prob`` an image is also taken down to one of the ``lowres`` sizes and back up
    (``images.at_resolution``), so the evaluator judges samples of the 16x16 cpu-profile models as well as
    full-resolution ones.
    """
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if lowres and lowres_prob:
        pick = torch.rand(len(x), generator=g) < lowres_prob
        size = lowres[int(torch.randint(len(lowres), (1,), generator=g))]
        if pick.any():
            x = x.clone()
            x[pick] = at_resolution(x[pick], size)
    if shift:
        pad = F.pad(x, (shift,) * 4)
        dy, dx = torch.randint(0, 2 * shift + 1, (2, len(x)), generator=g).tolist()
        h, w = x.shape[-2:]
        x = torch.stack([pad[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])
    return x


def weights_sha256(state_dict):
    """SHA-256 of a state dict's names and tensor bytes: equal for equal weights (a file's hash is not, because
    ``torch.save`` stamps every file with a fresh serialization id)."""
    h = hashlib.sha256()
    for k, v in state_dict.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def accuracy(model, images, labels, batch_size=1000):
    """Top-1 accuracy of ``model`` on uint8 images (N, 1, 28, 28)."""
    model.eval()
    hits = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
               for i in range(0, len(images), batch_size))
    return hits / len(images)


def train_evaluator(*, out="data/evaluator.pt", summary="", epochs=6, batch_size=128, lr=1e-2, weight_decay=5e-4,
                    warmup=200, shift=0, widths=(16, 32, 64, 128), seed=0, threads=1, train_limit=0, test_limit=0,
                    min_accuracy=0.9, lowres=(16,), lowres_prob=0.5):
    """Train ``FMNISTEvaluator`` on Fashion-MNIST and write it; returns the training summary (without its log).

    AdamW (``lr``, ``weight_decay``) for ``epochs`` epochs of ``batch_size`` images, with a linear warm-up of
    ``warmup`` steps then a cosine learning rate to zero, and ``augment``: random horizontal flips, images taken
    down to a ``lowres`` size and back up with probability ``lowres_prob`` (default: half of them to 16x16),
    random shifts of up to ``shift`` pixels. From ``seed`` on ``threads`` threads: the same arguments and
    thread count give bit-identical weights (``weights_sha256`` in the summary). ``train_limit`` /
    ``test_limit``: use only the first images (0: all). Default: about 6-9 minutes on one core shared with other
    jobs (about 4.5 alone). Refuses to write a checkpoint whose test accuracy is below ``min_accuracy``.

    Writes ``out`` (weights + config + summary, via ``io.save_checkpoint``; a relative path is taken from the
    repository root), ``<out>.sha256`` (which ``load_evaluator`` verifies) and the training summary JSON
    (``summary``, default ``out`` with the suffix ``.json``).
    """

    cfg = dict(out=out, summary=summary, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               warmup=warmup, shift=shift, widths=widths, seed=seed, threads=threads, train_limit=train_limit,
               test_limit=test_limit, min_accuracy=min_accuracy, lowres=lowres, lowres_prob=lowres_prob)
    torch.set_num_threads(int(threads))
    out = Path(out)
    out = out if out.is_absolute() else ROOT / out
    summary_path = Path(summary) if summary else out.with_suffix(".json")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    xtr, ytr = load_fashion_mnist("train", limit=train_limit or None)
    xte, yte = load_fashion_mnist("test", limit=test_limit or None)
    xtr, ytr = torch.from_numpy(xtr.copy()).unsqueeze(1), torch.from_numpy(ytr)
    xte, yte = torch.from_numpy(xte.copy()).unsqueeze(1), torch.from_numpy(yte)

    model = FMNISTEvaluator(widths=widths)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(xtr) // batch_size)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to zero
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    t0, log = time.time(), []
    bar = tqdm(total=total, desc="train evaluator", dynamic_ncols=True)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        run_loss, run_hits, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x, y = augment(xtr[idx], shift, g, lowres, lowres_prob), ytr[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += loss.item() * len(y)
            run_hits += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update()
            if i % 50 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{run_loss / seen:.3f}", acc=f"{run_hits / seen:.3f}")
        test_acc = accuracy(model, xte, yte)
        log.append(dict(epoch=epoch + 1, train_loss=round(run_loss / seen, 4), train_acc=round(run_hits / seen, 4),
                        test_acc=round(test_acc, 4), wall_s=round(time.time() - t0, 1)))
        bar.write(str(log[-1]))
    bar.close()
    wall = time.time() - t0
    model.eval()
    lowres_acc = {str(r): round(accuracy(model, at_resolution(xte, r), yte), 4) for r in lowres}
    result = dict(test_accuracy=round(test_acc, 4), test_accuracy_at_resolution=lowres_acc, epochs=epochs,
                  params=n_params,
                  train_wall_s=round(wall, 1), threads=threads, seed=seed,
                  train_images=len(xtr), test_images=len(xte), config=model.config, run_config=cfg, log=log,
                  torch_version=str(torch.__version__))
    if test_acc < min_accuracy:
        raise RuntimeError(f"evaluator reached test accuracy {test_acc:.4f} < {min_accuracy}; "
                           f"not writing {out}. Train longer (--epochs) or check the data.")
    # only deterministic facts go into the checkpoint, so the same run gives the same bytes (and SHA-256)
    keep = ("test_accuracy", "test_accuracy_at_resolution", "epochs", "params", "seed", "threads", "train_images",
            "test_images", "torch_version")
    save_checkpoint({"model": model.state_dict(), "config": model.config,
                     "summary": {k: result[k] for k in keep}}, out)
    digest = sha256(out)  # save_checkpoint wrote <out>.sha256, which load_evaluator verifies
    result.update(sha256=digest, weights_sha256=weights_sha256(model.state_dict()),
                  checkpoint=str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
                  size_bytes=out.stat().st_size)
    save_json(result, summary_path)
    return {k: v for k, v in result.items() if k not in ("log", "run_config")}
