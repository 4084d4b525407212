import gzip

import numpy as np
import pytest

from tinyfusion.data import DatasetNotFoundError, FashionMNIST, LatentFolder, load_fashion_mnist


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fmnist(folder, n=20, truncate=False):
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        imgs = np.random.randint(0, 255, (n, 28, 28))
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    if truncate:
        p = folder / "train-images-idx3-ubyte.gz"
        raw = gzip.decompress(p.read_bytes())[:-100]
        p.write_bytes(gzip.compress(raw))


def test_explicit_path_then_env(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path / "a", n=20)
    x, y = load_fashion_mnist("train", root=tmp_path / "a")
    assert x.shape == (20, 28, 28) and y.dtype == np.int64 and list(y[:3]) == [0, 1, 2]
    _fake_fmnist(tmp_path / "b", n=30)
    monkeypatch.setenv("TINYFUSION_DATA", str(tmp_path / "b"))
    assert load_fashion_mnist("test")[0].shape[0] == 30


def test_missing_everywhere_names_every_place(tmp_path, monkeypatch):
    import tinyfusion.data as data
    monkeypatch.setenv("TINYFUSION_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nodebian")
    with pytest.raises(DatasetNotFoundError) as e:
        load_fashion_mnist("train", root=tmp_path / "empty", allow_download=False)
    msg = str(e.value)
    for part in ("explicit path", "TINYFUSION_DATA", "Debian", "torchvision", "make setup"):
        assert part in msg


def test_missing_file_and_truncated_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYFUSION_DATA", raising=False)
    _fake_fmnist(tmp_path / "c")
    (tmp_path / "c" / "train-labels-idx1-ubyte.gz").unlink()
    import tinyfusion.data as data
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nodebian")
    with pytest.raises(DatasetNotFoundError, match="lacks train-labels"):
        load_fashion_mnist("train", root=tmp_path / "c", allow_download=False)
    _fake_fmnist(tmp_path / "d", truncate=True)
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("train", root=tmp_path / "d")


def test_real_fashion_mnist_range():
    ds = FashionMNIST("test", limit=100)
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and -1 <= x.min() and x.max() <= 1
    assert len(ds) == 100 and 0 <= int(y) < 10


def test_latent_folder(tmp_path):
    f, l = tmp_path / "imagenet256_features", tmp_path / "imagenet256_labels"
    f.mkdir(), l.mkdir()
    for i in range(3):
        np.save(f / f"{i}.npy", np.random.randn(1, 4, 32, 32).astype(np.float32))
        np.save(l / f"{i}.npy", np.array([i * 7]))
    ds = LatentFolder(f, l)
    x, y = ds[2]
    assert x.shape == (4, 32, 32) and int(y) == 14
    (l / "2.npy").unlink()
    with pytest.raises(ValueError, match="3 feature files but .* 2 label files"):
        LatentFolder(f, l)


def test_repeated_reads_come_from_memory_and_a_replaced_file_is_read_again(tmp_path):
    _fake_fmnist(tmp_path / "e", n=20)
    first, _ = load_fashion_mnist("train", root=tmp_path / "e")
    again, _ = load_fashion_mnist("train", root=tmp_path / "e", limit=5)
    assert np.shares_memory(first, again) and not first.flags.writeable  # one decompression, nobody can edit it
    _write_idx(tmp_path / "e" / "train-images-idx3-ubyte.gz", np.full((20, 28, 28), 7))
    fresh, _ = load_fashion_mnist("train", root=tmp_path / "e")
    assert (fresh == 7).all() and not np.array_equal(fresh, first)
