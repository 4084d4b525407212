"""Datasets: Fashion-MNIST from its IDX files, and the official DiT latent-feature layout (imagenet profile).

Fashion-MNIST is looked for, in order: an explicit ``root``, ``$TINYFUSION_DATA``, Debian's
``dataset-fashion-mnist`` folder, then torchvision's download (needs internet). If all four fail, the error
names every place it looked.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinyfusion" / "torchvision"
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DatasetNotFoundError(FileNotFoundError):
    pass


_IDX_MEMO: dict = {}  # (path, size, mtime) -> read-only array: a notebook reads the same four files dozens of times


def _read_idx(path: Path) -> np.ndarray:
    """The array in an IDX file (gzipped or not), read-only; a file changed on disk is read again."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key in _IDX_MEMO:
            return _IDX_MEMO[key]
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} cannot be read as an IDX file ({e}); replace it with a good copy") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims} but holds {body.size} values")
    if len(_IDX_MEMO) >= 8:
        _IDX_MEMO.pop(next(iter(_IDX_MEMO)))
    _IDX_MEMO[key] = body.reshape(dims)
    return _IDX_MEMO[key]


def _find_file(folder: Path, stem: str):
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _idx_pair(folder: Path, split: str):
    """Paths of (images, labels) for ``split`` in ``folder``, or a list of what is missing."""
    found = [_find_file(folder, stem) for stem in _FILES[split]]
    missing = [stem for stem, f in zip(_FILES[split], found) if f is None]
    return found, missing


def locate_fashion_mnist(root=None, split="train", allow_download=True):
    """Folder holding Fashion-MNIST's IDX files for ``split``, following the documented look-up order."""
    tried, named = [], None  # named: a place the user set (explicit path, $TINYFUSION_DATA) that lacks the data
    for label, folder in (("explicit path", root), ("$TINYFUSION_DATA", os.environ.get("TINYFUSION_DATA")),
                          ("Debian dataset-fashion-mnist", DEBIAN_DIR)):
        if folder is None:
            tried.append(f"{label}: not set")
            continue
        folder = Path(folder)
        if not folder.is_dir():
            tried.append(f"{label}: {folder} does not exist")
        else:
            _, missing = _idx_pair(folder, split)
            if not missing and named is None:
                return folder
            tried.append(f"{label}: {folder} " + (f"lacks {', '.join(m + '[.gz]' for m in missing)}" if missing
                                                   else f"has the data, but {named} was set and is not replaced"))
        if label != "Debian dataset-fashion-mnist" and named is None:
            named = label  # never silently fall back from a folder the user named to another copy
    if named is not None:
        allow_download = False
        tried.append(f"torchvision download: not tried, because {named} was set")
    if allow_download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(TORCHVISION_CACHE), train=split == "train", download=True)
            folder = TORCHVISION_CACHE / "FashionMNIST" / "raw"
            if not _idx_pair(folder, split)[1]:
                return folder
            tried.append(f"torchvision download: finished but {folder} lacks the files")
        except Exception as e:  # no internet, mirror down, ...
            tried.append(f"torchvision download into {TORCHVISION_CACHE}: failed ({type(e).__name__}: {e})")
    elif named is None:
        tried.append("torchvision download: not allowed")
    raise DatasetNotFoundError(
        "Fashion-MNIST not found. Looked in:\n  - " + "\n  - ".join(tried)
        + "\nFix: `make setup` (installs Debian's dataset-fashion-mnist), or set TINYFUSION_DATA to a folder "
          "with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
          "t10k-labels-idx1-ubyte.gz.")


def load_fashion_mnist(split="train", root=None, limit=None, allow_download=True):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``split`` ("train": 60k, "test": 10k)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = locate_fashion_mnist(root, split, allow_download)
    (img_path, lbl_path), _ = _idx_pair(folder, split)
    images, labels = _read_idx(img_path), _read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not pair up")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64)


class FashionMNIST(Dataset):
    """Fashion-MNIST as float tensors in [-1, 1] of shape (1, 28, 28), with int labels.

    ``limit`` keeps the first N images (the smoke profile uses a few hundred); ``hflip`` adds random flips;
    ``size`` resizes to size x size (antialiased bilinear; the cpu profile trains at 16x16).
    """

    def __init__(self, split="train", root=None, limit=None, hflip=False, size=28):
        images, labels = load_fashion_mnist(split, root, limit)
        self.images = torch.from_numpy(images.copy()).float().div(127.5).sub(1.0).unsqueeze(1)
        if size != self.images.shape[-1]:
            self.images = torch.nn.functional.interpolate(self.images, size=(size, size), mode="bilinear",
                                                          align_corners=False, antialias=True).clamp(-1, 1)
        self.labels = torch.from_numpy(labels)
        self.hflip = hflip

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]

    def tensors(self):
        """All images and labels as two tensors (fast path for small data held in memory)."""
        return self.images, self.labels


class LatentFolder(Dataset):
    """Pre-extracted latents in the official layout: ``features_dir/*.npy`` and ``labels_dir/*.npy``.

    One file per image (the official ``extract_features.py`` writes ``0.npy``, ``1.npy``, ...), each feature of
    shape (1, 4, 32, 32) or (4, 32, 32) and each label of shape (1,) or (). Files pair up by name.
    """

    def __init__(self, features_dir, labels_dir):
        self.features_dir, self.labels_dir = Path(features_dir), Path(labels_dir)
        for d in (self.features_dir, self.labels_dir):
            if not d.is_dir():
                raise DatasetNotFoundError(f"latent folder {d} does not exist")
        feats = sorted(p.name for p in self.features_dir.glob("*.npy"))
        labels = sorted(p.name for p in self.labels_dir.glob("*.npy"))
        if not feats:
            raise DatasetNotFoundError(f"{self.features_dir} holds no .npy feature files")
        if len(feats) != len(labels):
            raise ValueError(f"{self.features_dir} holds {len(feats)} feature files but {self.labels_dir} holds "
                             f"{len(labels)} label files; they must pair up one to one (re-run feature extraction)")
        unmatched = sorted(set(feats) ^ set(labels))
        if unmatched:
            raise ValueError(f"feature and label files do not pair by name, e.g. {unmatched[:5]}")
        self.files = sorted(feats, key=lambda n: (len(n), n))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        name = self.files[i]
        x = np.load(self.features_dir / name)
        y = np.load(self.labels_dir / name)
        x = torch.from_numpy(x).float()
        if x.dim() == 4:
            x = x.squeeze(0)
        return x, torch.as_tensor(y).long().reshape(-1)[0]

    def labels(self):
        """Every label as an int64 tensor (N,) (read once: one small file per image)."""
        if getattr(self, "_labels", None) is None:
            self._labels = torch.tensor([int(np.load(self.labels_dir / n).reshape(-1)[0]) for n in self.files],
                                        dtype=torch.long)
        return self._labels

    def tensors(self):
        """(features, labels) for the training loop: the features as a :class:`LatentArray`, read on demand per batch
        (ImageNet's 1.28M latents are 21 GB as float32), the labels as a tensor."""
        return LatentArray(self), self.labels()


class LatentArray:
    """The features of a :class:`LatentFolder` indexed like a tensor: ``len``, ``shape``, ``arr[indices]`` (a tensor or
    list of indices, an int or a slice) loads those files and stacks them. ``identity()`` (what resumable runs hash
    instead of the bytes) is a digest of the file names and sizes."""

    def __init__(self, folder):
        self.folder = folder
        first = folder[0][0]
        self.shape = (len(folder), *first.shape)
        self.dtype = first.dtype

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        elif torch.is_tensor(idx) and idx.dim() == 0 or isinstance(idx, (int, np.integer)):
            return self.folder[int(idx)][0]
        return torch.stack([self.folder[int(i)][0] for i in (idx.tolist() if torch.is_tensor(idx) else idx)])

    def identity(self):
        import hashlib
        h = hashlib.sha256(str(self.shape).encode())
        for name in self.folder.files:
            h.update(f"{name}:{(self.folder.features_dir / name).stat().st_size};".encode())
        return h.hexdigest()[:16]


def load_dataset(profile, split="train"):
    """The training set a profile names (Fashion-MNIST with the profile's limit, or ImageNet latents)."""
    return load_data(data_identity(profile, split))


def load_data(identity):
    """The dataset a :func:`data_identity` describes (what cached steps load, from their own config)."""
    if identity["dataset"] == "fashion-mnist":
        return FashionMNIST(identity["split"], limit=identity["limit"], size=identity["size"])
    if identity["dataset"] == "imagenet-latents":
        root = Path(identity["root"])
        return LatentFolder(root / "imagenet256_features", root / "imagenet256_labels")
    raise ValueError(f"unknown dataset {identity['dataset']!r}")


def data_identity(profile, split="train"):
    """What decides the images ``load_dataset(profile, split)`` returns (part of every cached step's config)."""
    if profile.dataset == "fashion-mnist":
        return {"dataset": profile.dataset, "split": split, "size": profile.image_size,
                "limit": profile.data_limit if split == "train" else profile.eval_limit}
    return {"dataset": profile.dataset, "split": split,
            "root": os.environ.get("TINYFUSION_LATENTS", "data/local/imagenet256")}
