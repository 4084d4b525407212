"""Sample quality with the project's own evaluator: FID, IS, sFID, precision/recall, KID, class accuracy.

The paper scores ImageNet samples with the ADM evaluator (Inception-V3). Here the Inception network's role is
played by a small Fashion-MNIST classifier, ``FMNISTEvaluator``, trained by ``tinyfusion.cli.train_evaluator``
and committed as ``data/evaluator.pt`` with its SHA-256. It provides the same four feature kinds:

- ``spatial``: the first 7 channels of the 7x7 map of its third conv block (343 numbers), the stand-in for the
  first 7 channels of Inception's ``mixed_6/conv`` that sFID uses;
- ``pool``: the 128-d globally pooled penultimate feature (Inception's ``pool3``), for FID, KID, precision/recall;
- ``logits_unbiased`` (``pool @ W.T``, no bias, as torch-fidelity does for Inception) for IS, and ``logits``.

It is registered with torch-fidelity as the feature extractor ``"tinyfusion-fmnist"``, so
``torch_fidelity.calculate_metrics(..., feature_extractor="tinyfusion-fmnist",
feature_extractor_weights_path="data/evaluator.pt")`` works. ``evaluate_samples`` computes the same numbers with
torch-fidelity's own metric functions on features it extracts once, keeping the real test set's features in
memory (and on disk under ``results/cache/evaluator/``), so that scoring many models does not re-read the 10k
reference images each time; precision/recall repeat torch-fidelity's ``calculate_precision_recall_part`` with
the reference's k-NN radii computed once. ``backend="fidelity"`` calls ``calculate_metrics`` verbatim instead
(slower; the tests check that both give the same numbers).

The numbers are in this evaluator's units, not Inception's: its pooled features are small, so FID between two
disjoint halves of the real test set is about 0.03 (5000 vs 5000) and pure noise scores about 30-45. Compare
FIDs only with each other, at the same sample size and reference.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import calc_cdist_part

from tinyfusion.io import CorruptArtefactError, load_checkpoint, save_checkpoint, sha256, verify_sha256
from tinyfusion.profiles import ROOT

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
        raise CorruptArtefactError(f"{path} is not an evaluator checkpoint (expected keys 'model' and 'config'); "
                                   f"retrain it with `python -m tinyfusion.cli.train_evaluator --out {path}`")
    model = FMNISTEvaluator(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
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


# ----------------------------------------------------------------------------------------------- image input
def to_uint8(images):
    """Images as a uint8 tensor (N, 1, H, W).

    Accepts uint8 (N, H, W), (N, 1, H, W) or (N, H, W, 1) arrays/tensors, or floats in [-1, 1] (the diffusion
    models' range), which are mapped by ``round((x + 1) * 127.5)`` after clamping.
    """
    x = images.detach().cpu() if torch.is_tensor(images) else torch.from_numpy(np.array(images))
    if x.dim() == 4 and x.shape[-1] == 1 and x.shape[1] != 1:
        x = x.permute(0, 3, 1, 2)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x[:, :1].contiguous()
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floats in [-1, 1], got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.5 or hi > 1.5:
        raise ValueError(f"float images must lie in [-1, 1] (got [{lo:.3g}, {hi:.3g}]); pass uint8 for 0..255 data")
    return ((x[:, :1].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class UInt8Images(Dataset):
    """A torch Dataset of uint8 3xHxW tensors (grey repeated), the input torch-fidelity expects."""

    def __init__(self, images):
        self.images = to_uint8(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].expand(3, -1, -1).contiguous()


@torch.no_grad()
def extract_features(images, evaluator_path=None, batch_size=1000):
    """Dict name -> float tensor (N, d) of every feature of ``images`` (any form ``to_uint8`` accepts)."""
    model = _cached_evaluator(evaluator_path)
    x = to_uint8(images)
    out = {k: [] for k in FEATURES}
    for i in range(0, len(x), batch_size):
        feats = model.features(x[i:i + batch_size])
        for k in FEATURES:
            out[k].append(feats[k].float())
    return {k: torch.cat(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------- reference (real) features
_REFERENCE: dict = {}


def _cache_dir():
    return Path(os.environ.get("TINYFUSION_RESULTS", ROOT / "results")) / "cache" / "evaluator"


EVAL_SIZE = 28  # the evaluator's input resolution


def resample(images, size):
    """uint8 (N, 1, H, W) images resized to ``size`` x ``size`` (bilinear, antialiased when shrinking)."""
    x = to_uint8(images)
    if x.shape[-1] == size:
        return x
    y = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=size < x.shape[-1])
    return y.round().clamp(0, 255).to(torch.uint8)


def at_resolution(images, size):
    """Real images as a model of resolution ``size`` would see them: down to ``size``, back up to the evaluator's.

    Samples of a lower-resolution model are upsampled to the evaluator's 28x28 the same way, so FID compares
    like with like (the two pass through the same resampling).
    """
    return resample(resample(images, size), EVAL_SIZE) if size != EVAL_SIZE else to_uint8(images)


def real_test_images(limit=None):
    """The Fashion-MNIST test images as uint8 (N, 28, 28) and labels (first ``limit``; all 10k by default)."""
    from tinyfusion.data import load_fashion_mnist
    return load_fashion_mnist("test", limit=limit)


def reference_features(reference=None, evaluator_path=None, reference_limit=None, disk_cache=True, size=EVAL_SIZE):
    """Features of the real images (default: the Fashion-MNIST test set), cached in memory and on disk.

    The dict maps each feature name to a tensor (N, d) and also holds the FID statistics of ``pool`` and
    ``spatial`` and the k-NN radii of ``pool`` (keys starting with ``_``), computed once per reference.

    The cache key is the evaluator's SHA-256 plus the reference's identity (test set + limit, or a hash of the
    given images), so a retrained evaluator never reuses stale features.
    """
    model = _cached_evaluator(evaluator_path)
    if reference is None:
        images, _ = real_test_images(reference_limit)
        name = f"fmnist-test-n{len(images)}"
        if size != EVAL_SIZE:
            images, name = at_resolution(images, size), name + f"-res{size}"
    else:
        images = resample(reference, EVAL_SIZE)
        if reference_limit:
            images = images[:reference_limit]
        name = "ref-" + hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16] + f"-n{len(images)}"
    key = (model.sha256, name)
    if key in _REFERENCE:
        return _REFERENCE[key]
    path = _cache_dir() / f"{model.sha256[:16]}-{name}.pt"
    feats = None
    if disk_cache and reference is None and path.exists():
        try:
            feats = load_checkpoint(path)
        except (CorruptArtefactError, FileNotFoundError):
            feats = None
    if feats is None:
        feats = extract_features(images, evaluator_path)
        for layer in ("pool", "spatial"):
            _reference_stats(feats, layer)
        _reference_radii(feats, "pool")
        if disk_cache and reference is None:
            save_checkpoint(feats, path)
    _REFERENCE[key] = feats
    return feats


def clear_cache():
    """Forget the in-memory evaluators and reference features (the disk cache stays)."""
    _EVALUATORS.clear()
    _REFERENCE.clear()


# -------------------------------------------------------------------------------------------------- metrics
def _fidelity_kwargs(n1, n2, kid_subset_size, seed, evaluator_path, batch_size):
    return dict(cuda=False, isc=True, fid=True, kid=True, prc=True, feature_extractor=EXTRACTOR_NAME,
                feature_extractor_weights_path=str(_resolve(evaluator_path)), cache=False, verbose=False,
                samples_shuffle=False, kid_subset_size=int(kid_subset_size or min(1000, n1, n2)),
                rng_seed=int(seed), batch_size=batch_size, save_cpu_ram=True)


def frechet_distance(features_1, features_2):
    """Fréchet distance between Gaussians fitted to two feature sets (torch-fidelity's FID formula)."""
    return fid_statistics_to_metric(fid_features_to_statistics(features_1.double()),
                                    fid_features_to_statistics(features_2.double()), False)[
        "frechet_inception_distance"]


def evaluate_samples(images, labels=None, reference=None, evaluator_path=None, kid_subset_size=None, seed=0,
                     reference_limit=None, backend="features", batch_size=1000, disk_cache=True):
    """Score generated ``images`` against real ones. Returns a dict of floats:

    ``fid``, ``is``, ``is_std``, ``precision``, ``recall``, ``kid``, ``kid_std`` (torch-fidelity's formulas on the
    evaluator's ``pool`` / ``logits_unbiased`` features), ``sfid`` (Fréchet distance on the ``spatial``
    features), ``class_accuracy`` (fraction of images the evaluator assigns to their conditioning ``labels``;
    None without labels) and ``n``.

    ``images``: uint8 (N, H, W) / (N, 1, H, W), or floats in [-1, 1]. Images smaller than the evaluator's 28x28
    are upsampled to it, and the default reference is then the real test set taken down to their resolution and
    back up (``at_resolution``). ``reference``: real images in the same forms (default: the Fashion-MNIST test
    set, all 10k, or its first ``reference_limit``). Precision is the
    fraction of samples inside the real manifold, recall the fraction of real images inside the samples'.
    ``backend="fidelity"`` runs ``torch_fidelity.calculate_metrics`` itself (same numbers, slower).
    """
    x = to_uint8(images)
    size = x.shape[-1]
    x = resample(x, EVAL_SIZE)
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 images to score, got {n}")
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{n} images but {len(labels)} labels")
    ref = reference_features(reference, evaluator_path, reference_limit, disk_cache, size=size)
    n_ref = len(ref["pool"])
    kw = _fidelity_kwargs(n, n_ref, kid_subset_size, seed, evaluator_path, min(batch_size, 500))
    if kw["kid_subset_size"] > min(n, n_ref):
        raise ValueError(f"kid_subset_size {kw['kid_subset_size']} exceeds the sample ({n}) or reference ({n_ref}) size")
    feats = extract_features(x, evaluator_path, batch_size)

    if backend == "fidelity":
        import torch_fidelity
        if reference is None:
            ref_images = at_resolution(real_test_images(reference_limit)[0], size)
        else:
            ref_images = resample(reference, EVAL_SIZE)[:reference_limit or None]
        m = torch_fidelity.calculate_metrics(input1=UInt8Images(x), input2=UInt8Images(ref_images), **kw)
    elif backend == "features":
        m = {}
        m.update(isc_featuresdict_to_metric(feats, "logits_unbiased", **kw))
        m.update(fid_statistics_to_metric(fid_features_to_statistics(feats["pool"]),
                                          _reference_stats(ref, "pool"), False))
        m.update(kid_featuresdict_to_metric(feats, ref, "pool", **kw))
        m.update(_precision_recall(feats["pool"], ref, "pool"))
    else:
        raise ValueError(f"backend must be 'features' or 'fidelity', got {backend!r}")

    sfid = fid_statistics_to_metric(fid_features_to_statistics(feats["spatial"]),
                                    _reference_stats(ref, "spatial"), False)["frechet_inception_distance"]
    acc = None
    if labels is not None:
        acc = float((feats["logits"].argmax(1) == labels).double().mean())
    return {
        "fid": float(m["frechet_inception_distance"]), "is": float(m["inception_score_mean"]),
        "is_std": float(m["inception_score_std"]),
        "precision": float(m["precision"]), "recall": float(m["recall"]),
        "kid": float(m["kernel_inception_distance_mean"]), "kid_std": float(m["kernel_inception_distance_std"]),
        "sfid": float(sfid), "class_accuracy": acc, "n": n, "n_ref": n_ref}


def _precision_recall(features, ref, layer, neighborhood=3, batch_size=10000):
    """torch-fidelity's precision/recall (``calculate_precision_recall_part``, same calls, same numbers), with the
    reference's k-NN radii computed once per reference instead of once per call (the 10k x 10k distances
    dominate the cost)."""
    real, radii_real = ref[layer], _reference_radii(ref, layer, neighborhood, batch_size)
    radii_fake = torch.cat([calc_cdist_part(b, features, batch_size).kthvalue(neighborhood + 1).values
                            for b in features.split(batch_size)])
    recall = torch.cat([(calc_cdist_part(b, features, batch_size) <= radii_fake).any(dim=1).float()
                        for b in real.split(batch_size)]).mean().item()
    precision = torch.cat([(calc_cdist_part(b, real, batch_size) <= radii_real).any(dim=1).float()
                           for b in features.split(batch_size)]).mean().item()
    return {"precision": precision, "recall": recall}


def _reference_radii(ref, layer, neighborhood=3, batch_size=10000):
    """Distance of each reference feature to its k-th nearest neighbour, memoised inside the reference dict."""
    key = f"_knn_{layer}_{neighborhood}"
    if key not in ref:
        real = ref[layer]
        ref[key] = torch.cat([calc_cdist_part(b, real, batch_size).kthvalue(neighborhood + 1).values
                              for b in real.split(batch_size)])
    return ref[key]


def _reference_stats(ref, layer):
    """FID statistics (mu, sigma) of a reference feature dict, memoised inside it (like its k-NN radii)."""
    key = f"_stats_{layer}"
    if key not in ref:
        ref[key] = fid_features_to_statistics(ref[layer])
    return ref[key]


def evaluate_npz(path, **kw):
    """``evaluate_samples`` on an ``.npz`` holding ``images`` (uint8 (N, 28, 28)) and optionally ``labels``."""
    from tinyfusion.io import load_npz
    z = load_npz(path)
    if "images" not in z:
        raise KeyError(f"{path} holds {sorted(z)}, not 'images'; write samples with keys images (uint8) and labels")
    return evaluate_samples(z["images"], z.get("labels"), **kw)


def fid_floor(n=5000, seed=0, evaluator_path=None, size=EVAL_SIZE, **kw):
    """Metrics of real against real: ``n`` test images (with their labels) against ``n`` disjoint others.

    The FID / sFID / KID of two halves of the real test set is the floor any generator's score sits above at
    this sample size; its IS, precision, recall and class accuracy are the values of real data.
    """
    images, labels = real_test_images()
    images = at_resolution(images, size)  # ``size``: the resolution of the models being judged
    if 2 * n > len(images):
        raise ValueError(f"n={n}: the test set holds {len(images)} images, so n must be at most {len(images) // 2}")
    perm = np.random.RandomState(seed).permutation(len(images))
    a, b = perm[:n], perm[n:2 * n]
    return evaluate_samples(images[a], labels[a], reference=images[b], evaluator_path=evaluator_path, seed=seed,
                            **kw)
