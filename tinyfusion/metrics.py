"""Sample quality with the project's own evaluator: FID, IS, sFID, precision/recall, KID, class accuracy.

This module holds ``UInt8Images`` (the image conversion itself, ``to_uint8``, ``resample``, ``at_resolution``, is in
``tinyfusion.images`` and re-exported here), feature extraction, the real reference's features and their cache, and the metrics. The evaluator network itself (the
Fashion-MNIST classifier that plays Inception's role, ``data/evaluator.pt``), its loading and its torch-fidelity
plug-in ``"tinyfusion-fmnist"`` are in ``tinyfusion.evaluator``; importing this module registers the plug-in, so
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
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import calc_cdist_part

from tinyfusion.evaluator import _EVALUATORS, EXTRACTOR_NAME, FEATURES, _cached_evaluator, _resolve
from tinyfusion.images import EVAL_SIZE, at_resolution, resample, to_uint8  # noqa: F401  (the metrics' names)
from tinyfusion.io import CorruptArtefactError, load_checkpoint, save_checkpoint
from tinyfusion.profiles import ROOT


# ----------------------------------------------------------------------------------------------- image input
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
            try:  # tensors only (the FID statistics are numpy and recomputed from them); a cache is optional
                save_checkpoint({k: v for k, v in feats.items() if torch.is_tensor(v)}, path)
            except OSError as e:
                warnings.warn(f"could not write the evaluator feature cache {path} ({e.strerror or e}); scoring "
                              f"goes on without it (set TINYFUSION_RESULTS to a writable folder to keep it)")
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


def sample_arrays(path, flag="npz"):
    """The arrays of a samples file (``cli.sample``'s ``.npz``: ``images`` uint8, ``labels``), or a one-line error
    naming ``flag`` and the file: a torch checkpoint given instead, the ADM layout (``arr_0``) outside the imagenet
    profile, or any other keys."""
    from tinyfusion.io import load_npz
    z = load_npz(path)
    if "images" in z:
        return z
    keys = sorted(z)
    if str(path).endswith(".pt") or any(k.startswith("archive/") for k in keys):
        why = "is a torch checkpoint (.pt), not samples"
    elif "arr_0" in keys:
        why = "is in the ADM layout (arr_0), which --reference (the imagenet profile) scores"
    else:
        why = f"holds {keys[:6]}{' ...' if len(keys) > 6 else ''}, not 'images'"
    raise KeyError(f"--{flag} {path} {why}; pass the .npz that cli.sample writes (keys images (uint8) and labels)")


def evaluate_npz(path, **kw):
    """``evaluate_samples`` on an ``.npz`` holding ``images`` (uint8 (N, 28, 28)) and optionally ``labels``."""
    z = sample_arrays(path)
    return evaluate_samples(z["images"], z.get("labels"), **kw)


def fid_floor(n=5000, seed=0, evaluator_path=None, size=EVAL_SIZE, n_reference=None, **kw):
    """Metrics of real against real: ``n`` test images (with their labels) against ``n_reference`` (default ``n``)
    disjoint others.

    The FID / sFID / KID of two halves of the real test set is the floor any generator's score sits above at
    this sample size; its IS, precision, recall and class accuracy are the values of real data.
    """
    images, labels = real_test_images()
    images = at_resolution(images, size)  # ``size``: the resolution of the models being judged
    n_reference = n if n_reference is None else n_reference
    if n + n_reference > len(images):
        raise ValueError(f"n={n}, n_reference={n_reference}: the test set holds {len(images)} images, so the two "
                         f"must sum to at most that")
    perm = np.random.RandomState(seed).permutation(len(images))
    a, b = perm[:n], perm[n:n + n_reference]
    return evaluate_samples(images[a], labels[a], reference=images[b], evaluator_path=evaluator_path, seed=seed,
                            **kw)
