"""Sample quality as the paper reports it: the ADM evaluator's FID, sFID, IS, precision and recall, from local files.

TinyFusion's Table 1 scores 50K samples with the evaluator of ADM (openai/guided-diffusion, ``evaluations/``) against
its ImageNet-256 reference batch. That evaluator runs TensorFlow's 2015 Inception graph; here the network is
torch-fidelity's TF-compatible port of it (``FeatureExtractorInceptionV3``: the same weights, TF's bilinear resize to
299 and ``(x - 128) / 128``), and the statistics are computed as ``evaluator.py`` computes them:

* **FID**: Fréchet distance of the 2048-d ``pool_3`` features (mean and covariance over the samples);
* **sFID**: the same on the first 7 channels of ``mixed_6/conv`` (Mixed_6d's 1x1 branch, after its ReLU: 7 x 17 x 17
  = 2023 numbers per image), flattened;
* **IS**: ``exp(E KL(p(y|x) || p(y)))`` of ``softmax(pool_3 @ W)`` (the logits without bias, as ADM's softmax graph),
  averaged over splits of 5000 samples;
* **precision / recall**: ADM's ``ManifoldEstimator`` with k = 3 on ``pool_3``: precision is the share of samples
  inside some reference image's 3rd-nearest-neighbour ball, recall the share of reference images inside some
  sample's.

Files (brought by the user, never downloaded):

* the reference batch ``VIRTUAL_imagenet256_labeled.npz`` (``arr_0``: uint8 (10000, 256, 256, 3); ``mu``/``sigma``
  and ``mu_s``/``sigma_s``: ADM's own statistics), linked from the README of ``evaluations/`` in
  openai/guided-diffusion; when it holds those statistics FID and sFID use them, as ``evaluator.py`` does (the
  result says ``reference_stats: stored``), otherwise they are computed from ``arr_0`` (``computed``); precision and
  recall always use ``arr_0``'s features;
* the Inception weights ``weights-inception-2015-12-05-6726825d.pth``, torch-fidelity's release file (the URL is
  ``torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3``); it is checked to hold tensors only before
  torch-fidelity reads it.

Samples are an ``.npz`` in the ADM layout (``arr_0`` uint8 (N, H, W, 3)), as ``tinyfusion.cli.sample`` writes for
latent models. The reference's features are cached under ``results/cache/adm/`` keyed by both files' SHA-256.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
REFERENCE_FILE = "VIRTUAL_imagenet256_labeled.npz"
FEATURES = ("2048", "logits_unbiased")   # torch-fidelity's names of pool_3 and the unbiased logits
SPATIAL_CHANNELS = 7
IS_SPLIT = 5000
K_NEIGHBOURS = 3


class MissingFileError(FileNotFoundError):
    """A file of the paper's setting is missing; the message says where it looked and where to get it."""


def _require(path, what, how):
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found at {path}; {how}")
    return path


def inception_path(path):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return _require(path, "the Inception weights", f"download {INCEPTION_FILE} from {URL_INCEPTION_V3} (torch-fidelity's "
                    f"release) on a machine with internet and pass its path (--evaluator, or the profile's evaluator "
                    f"data/local/{INCEPTION_FILE})")


def reference_path(path):
    return _require(path, "the ADM reference batch", f"download {REFERENCE_FILE} (ImageNet 256x256 reference batch, "
                    f"linked from the README of evaluations/ in openai/guided-diffusion) and pass its path "
                    f"(--reference, or the profile's reference data/local/{REFERENCE_FILE})")


# ------------------------------------------------------------------------------------------- the network
_NETS: dict = {}


class Inception(torch.nn.Module):
    """torch-fidelity's TF-compatible InceptionV3 returning ``pool`` (2048), ``logits_unbiased`` (1008) and
    ``spatial`` (first 7 channels of mixed_6/conv, flattened) for uint8 images (B, 3, H, W)."""

    def __init__(self, weights):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        from tinyfusion.io import load_checkpoint
        weights = inception_path(weights)
        load_checkpoint(weights)  # refuses a file holding anything but tensors, before torch-fidelity unpickles it
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURES),
                                               feature_extractor_weights_path=str(weights))
        self._spatial = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float().clone()  # NHWC as TF

    @torch.no_grad()
    def forward(self, x):
        pool, logits = self.net(x)
        return {"pool": pool.float(), "logits_unbiased": logits.float(), "spatial": self._spatial}


def load_inception(weights):
    key = str(Path(weights).resolve()) if Path(weights).exists() else str(weights)
    if key not in _NETS:
        _NETS[key] = Inception(weights)
    return _NETS[key]


def nhwc_uint8(images):
    """uint8 (N, H, W, 3) numpy/tensor -> uint8 tensor (N, 3, H, W); grey (N, H, W) is repeated to 3 channels."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise TypeError(f"ADM-layout images must be uint8, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(-1).expand(-1, -1, -1, 3)
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"ADM-layout images are (N, H, W, 3), got {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def features(images, weights, batch_size=100, device=None):
    """Dict ``pool``, ``logits_unbiased``, ``spatial`` -> float tensors (N, d) of uint8 NHWC ``images``."""
    net = load_inception(weights)
    device = device or torch.device("cpu")
    net.to(device)
    x = nhwc_uint8(images)
    out = {"pool": [], "logits_unbiased": [], "spatial": []}
    for i in range(0, len(x), batch_size):
        f = net(x[i:i + batch_size].to(device))
        for k in out:
            out[k].append(f[k].cpu())
    return {k: torch.cat(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------- the statistics
def statistics(feats):
    """(mu, sigma) of features (N, d), as ADM's ``compute_statistics`` (``np.cov(rowvar=False)``)."""
    a = feats.double().numpy()
    return a.mean(0), np.cov(a, rowvar=False)


def frechet_distance(stats1, stats2, eps=1e-6, features1=None):
    """ADM's ``frechet_distance``: ``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrt(s1 s2))``, the square root by
    ``scipy.linalg.sqrtm`` (an offset on the diagonals when the product is singular, the real part of a complex root).

    ``features1`` (the N x d features ``stats1`` came from): when N <= d (fewer samples than dimensions, as in quick
    checks; never at 50K samples) ``tr(sqrt(s1 s2))`` is taken exactly from the N x N matrix ``X s2 X^T / (N - 1)``
    (``X`` the centred features), whose eigenvalues are the non-zero ones of ``s1 s2``, instead of a d x d ``sqrtm``
    of a singular product (slow, and only approximate there)."""
    from scipy import linalg
    mu1, sigma1 = np.atleast_1d(stats1[0]), np.atleast_2d(stats1[1])
    mu2, sigma2 = np.atleast_1d(stats2[0]), np.atleast_2d(stats2[1])
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    if features1 is not None and len(features1) <= len(mu1):
        x = features1.double().numpy()
        x = x - x.mean(0)
        small = x @ sigma2 @ x.T / (len(x) - 1)
        tr_covmean = float(np.sqrt(np.clip(linalg.eigvalsh((small + small.T) / 2), 0, None)).sum())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm(sigma1.dot(sigma2))
            if not np.isfinite(covmean).all():
                offset = np.eye(sigma1.shape[0]) * eps
                covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(logits_unbiased, split_size=IS_SPLIT):
    """ADM's ``compute_inception_score``: softmax of the unbiased logits, ``exp(mean KL)`` per split, averaged."""
    preds = torch.softmax(logits_unbiased.double(), dim=1).numpy()
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def _radii(feats, k=K_NEIGHBOURS, batch=10000):
    """Distance of each feature to its k-th nearest other feature (the self-distance 0 is the 0-th)."""
    if len(feats) <= k:
        raise ValueError(f"precision and recall use each set's {k}-th nearest neighbours: need more than {k} images "
                         f"per set, got {len(feats)}")
    return torch.cat([torch.cdist(b.double(), feats.double()).kthvalue(k + 1, dim=1).values
                      for b in feats.split(batch)])


def _covered(points, centres, radii, batch=10000):
    """Share of ``points`` within ``radii[j]`` of some ``centres[j]``."""
    hits = [(torch.cdist(b.double(), centres.double()) <= radii[None]).any(1) for b in points.split(batch)]
    return float(torch.cat(hits).double().mean())


def precision_recall(sample_pool, ref_pool, k=K_NEIGHBOURS, ref_radii=None):
    """ADM's improved precision and recall (``ManifoldEstimator``, k nearest neighbours) on ``pool_3`` features."""
    ref_radii = _radii(ref_pool, k) if ref_radii is None else ref_radii
    sample_radii = _radii(sample_pool, k)
    return {"precision": _covered(sample_pool, ref_pool, ref_radii),
            "recall": _covered(ref_pool, sample_pool, sample_radii)}


# ------------------------------------------------------------------------------------------- the reference
def _cache_dir():
    from tinyfusion.profiles import ROOT
    return Path(os.environ.get("TINYFUSION_RESULTS", ROOT / "results")) / "cache" / "adm"


def reference_features(reference, weights, batch_size=100, device=None, disk_cache=True):
    """Features, statistics and k-NN radii of the reference batch's ``arr_0`` (cached by both files' SHA-256), and
    its stored ADM statistics when it has them."""
    from tinyfusion.io import load_checkpoint, save_checkpoint, sha256
    reference, weights = reference_path(reference), inception_path(weights)
    path = _cache_dir() / f"{sha256(reference)[:16]}-{sha256(weights)[:16]}.pt"
    feats = None
    if disk_cache and path.exists():
        try:
            feats = load_checkpoint(path)
        except Exception:
            feats = None
    if feats is None:
        with np.load(reference, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise KeyError(f"{reference} holds {z.files}, not arr_0 (the ADM reference batch's images)")
            feats = features(z["arr_0"], weights, batch_size, device)
        feats["radii"] = _radii(feats["pool"])
        if disk_cache:
            try:
                save_checkpoint(feats, path)
            except OSError as e:
                warnings.warn(f"could not cache the reference features at {path} ({e}); going on without")
    with np.load(reference, allow_pickle=False) as z:
        stored = {k: z[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in z.files}
    return feats, stored


# ------------------------------------------------------------------------------------------- scoring
def evaluate(images, reference, weights, batch_size=100, device=None, disk_cache=True):
    """FID, sFID, IS, precision and recall of uint8 NHWC ``images`` against the ADM ``reference`` batch, through the
    Inception weights file ``weights``. Returns floats plus ``n``, ``n_ref`` and ``reference_stats``."""
    x = nhwc_uint8(images)
    if len(x) < 2:
        raise ValueError(f"need at least 2 images to score, got {len(x)}")
    ref, stored = reference_features(reference, weights, batch_size, device, disk_cache)
    f = features(x.permute(0, 2, 3, 1), weights, batch_size, device)
    use_stored = all(k in stored for k in ("mu", "sigma", "mu_s", "sigma_s"))
    ref_pool = (stored["mu"], stored["sigma"]) if use_stored else statistics(ref["pool"])
    ref_spatial = (stored["mu_s"], stored["sigma_s"]) if use_stored else statistics(ref["spatial"])
    pr = precision_recall(f["pool"], ref["pool"], ref_radii=ref["radii"])
    return {"fid": frechet_distance(statistics(f["pool"]), ref_pool, features1=f["pool"]),
            "sfid": frechet_distance(statistics(f["spatial"]), ref_spatial, features1=f["spatial"]),
            "is": inception_score(f["logits_unbiased"]), **pr, "n": len(x), "n_ref": len(ref["pool"]),
            "reference_stats": "stored" if use_stored else "computed"}


def evaluate_npz(path, reference, weights, **kw):
    """:func:`evaluate` on the samples of an ADM-layout ``.npz`` (``arr_0``)."""
    from tinyfusion.io import load_npz
    z = load_npz(path)
    images = z.get("arr_0", z.get("images"))
    if images is None:
        raise KeyError(f"{path} holds {sorted(z)}, not arr_0 (the ADM layout: uint8 (N, H, W, 3))")
    return evaluate(images, reference, weights, **kw)
