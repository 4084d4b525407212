"""The evaluator (our Inception stand-in), its training and torch-fidelity registration, and the metrics built
on it."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from tinyfusion import evaluator, metrics
from tinyfusion.data import load_fashion_mnist
from tinyfusion.io import CorruptArtefactError, save_checkpoint, save_npz

KEYS = {"fid", "is", "is_std", "precision", "recall", "kid", "kid_std", "sfid", "class_accuracy", "n"}


@pytest.fixture(scope="module")
def evaluator_path():
    path = evaluator.DEFAULT_EVALUATOR
    assert path.exists(), f"{path} missing: run python -m tinyfusion.cli.train_evaluator --out {path}"
    return path


@pytest.fixture(scope="module")
def test_set():
    return load_fashion_mnist("test", limit=2000)


@pytest.fixture(autouse=True)
def no_disk_cache(tmp_path, monkeypatch):
    """Keep the reference-feature disk cache out of the repository's results/."""
    monkeypatch.setenv("TINYFUSION_RESULTS", str(tmp_path / "results"))


def test_extractor_registers_and_returns_feature_shapes(evaluator_path):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor
    evaluator.register()  # a second registration is a no-op, not an error
    assert FEATURE_EXTRACTORS_REGISTRY["tinyfusion-fmnist"] is evaluator.FeatureExtractorTinyFusion
    fe = create_feature_extractor("tinyfusion-fmnist", list(evaluator.FEATURES), cuda=False, verbose=False,
                                  feature_extractor_weights_path=str(evaluator_path))
    x = torch.randint(0, 256, (5, 3, 28, 28), dtype=torch.uint8)
    feats = fe.convert_features_tuple_to_dict(fe(x))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "spatial": (5, 343), "pool": (5, 128), "logits_unbiased": (5, 10), "logits": (5, 10)}
    assert all(v.dtype == torch.float32 for v in feats.values())
    # logits differ from logits_unbiased by exactly the bias of the last layer
    torch.testing.assert_close(feats["logits"] - feats["logits_unbiased"],
                               fe.model.fc.bias.expand(5, -1), rtol=1e-5, atol=1e-5)
    assert fe.get_default_feature_layer_for_metric("isc") == "logits_unbiased"
    assert fe.get_default_feature_layer_for_metric("fid") == "pool"
    with pytest.raises(ValueError, match="uint8"):
        fe(x.float())


def test_importing_metrics_registers_the_extractor():
    import subprocess
    import sys
    code = ("import tinyfusion.metrics; from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY as R; "
            "assert 'tinyfusion-fmnist' in R")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluator_accuracy_on_test_images(evaluator_path, test_set):
    images, labels = test_set
    model = evaluator.load_evaluator(evaluator_path)
    with torch.no_grad():
        pred = model(metrics.to_uint8(images[:1000])).argmax(1).numpy()
    assert (pred == labels[:1000]).mean() >= 0.88


def test_to_uint8_inverts_the_training_scaling(test_set):
    from tinyfusion.data import FashionMNIST
    x = FashionMNIST("test", limit=64).images            # float in [-1, 1], (N, 1, 28, 28)
    assert torch.equal(metrics.to_uint8(x), torch.from_numpy(test_set[0][:64].copy()).unsqueeze(1))
    assert metrics.to_uint8(test_set[0][:3]).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.to_uint8(torch.full((2, 28, 28), 200.0))


def test_metrics_separate_real_from_noise_and_check_labels(evaluator_path, test_set):
    images, labels = test_set
    a, b = slice(0, 500), slice(500, 1000)
    ref = images[b]
    real = metrics.evaluate_samples(images[a], labels[a], reference=ref, evaluator_path=evaluator_path)
    assert KEYS <= set(real) and real["n"] == 500 and real["n_ref"] == 500
    noise = np.random.RandomState(0).randint(0, 256, (500, 28, 28)).astype(np.uint8)
    const = np.full((500, 28, 28), 128, np.uint8)
    fake = metrics.evaluate_samples(noise, labels[a], reference=ref, evaluator_path=evaluator_path)
    flat = metrics.evaluate_samples(const, reference=ref, evaluator_path=evaluator_path)
    for bad in (fake, flat):
        assert bad["fid"] > 10 * real["fid"] and bad["sfid"] > 5 * real["sfid"] and bad["kid"] > 10 * real["kid"]
        assert bad["precision"] < 0.2 < 0.5 < real["precision"]
        assert bad["recall"] < 0.2 < 0.5 < real["recall"]
    assert real["is"] > 2 * flat["is"] and flat["is"] == pytest.approx(1.0, abs=1e-3)
    assert real["class_accuracy"] >= 0.88 and flat["class_accuracy"] is None
    shuffled = np.random.RandomState(1).permutation(labels[a])
    wrong = metrics.evaluate_samples(images[a], shuffled, reference=ref, evaluator_path=evaluator_path)
    assert wrong["class_accuracy"] < 0.3
    assert wrong["fid"] == real["fid"]  # the labels only enter class accuracy


def test_feature_path_matches_torch_fidelity_calculate_metrics(evaluator_path, test_set):
    images, labels = test_set
    kw = dict(reference=images[1000:1300], evaluator_path=evaluator_path, seed=3)
    ours = metrics.evaluate_samples(images[:200], labels[:200], **kw)
    theirs = metrics.evaluate_samples(images[:200], labels[:200], backend="fidelity", **kw)
    for k in ("fid", "is", "is_std", "precision", "recall", "kid", "kid_std", "sfid", "class_accuracy"):
        assert ours[k] == pytest.approx(theirs[k], rel=1e-4, abs=1e-6), k


def test_reference_features_are_cached(evaluator_path):
    metrics.clear_cache()
    f1 = metrics.reference_features(evaluator_path=evaluator_path, reference_limit=300)
    f2 = metrics.reference_features(evaluator_path=evaluator_path, reference_limit=300)
    assert f1 is f2 and len(f1["pool"]) == 300
    metrics.clear_cache()  # a fresh process reads the disk cache instead of the images
    f3 = metrics.reference_features(evaluator_path=evaluator_path, reference_limit=300)
    assert f3 is not f1 and torch.equal(f3["pool"], f1["pool"])


def test_evaluate_npz_reads_samples_file(evaluator_path, test_set, tmp_path):
    images, labels = test_set
    path = tmp_path / "samples.npz"
    save_npz(path, images=images[:300], labels=labels[:300])
    kw = dict(reference=images[1000:1500], evaluator_path=evaluator_path)
    got = metrics.evaluate_npz(path, **kw)
    assert got == metrics.evaluate_samples(images[:300], labels[:300], **kw)
    save_npz(tmp_path / "bad.npz", x=images[:3])
    with pytest.raises(KeyError, match="images"):
        metrics.evaluate_npz(tmp_path / "bad.npz", **kw)


def test_fid_floor_is_low_for_real_data(evaluator_path):
    floor = metrics.fid_floor(n=300, evaluator_path=evaluator_path)
    assert floor["n"] == floor["n_ref"] == 300
    assert floor["class_accuracy"] >= 0.88 and floor["precision"] > 0.5 and floor["recall"] > 0.5
    assert floor["fid"] < 5.0


def test_corrupted_or_missing_evaluator_raises_naming_the_file(evaluator_path, tmp_path):
    bad = tmp_path / "evaluator.pt"
    shutil.copy(evaluator_path, bad)
    shutil.copy(str(evaluator_path) + ".sha256", str(bad) + ".sha256")
    evaluator.load_evaluator(bad)  # an intact copy loads
    data = bytearray(bad.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptArtefactError, match=re.escape(str(bad))):
        evaluator.load_evaluator(bad)
    with pytest.raises(CorruptArtefactError, match=re.escape(str(bad))):
        metrics.evaluate_samples(np.zeros((4, 28, 28), np.uint8), evaluator_path=bad,
                                 reference=np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="train_evaluator"):
        evaluator.load_evaluator(tmp_path / "nowhere.pt")


def test_evaluate_cli_prints_one_json_for_an_npz(evaluator_path, test_set, tmp_path, capsys):
    from tinyfusion.cli import evaluate
    images, labels = test_set
    save_npz(tmp_path / "real.npz", images=images[:200], labels=labels[:200])
    evaluate.main(["--npz", str(tmp_path / "real.npz"), "--reference-limit", "1000"])
    out = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object
    assert KEYS <= set(out) and out["n"] == 200 and out["n_ref"] == 1000
    assert out["class_accuracy"] >= 0.85 and out["fid"] < 10


def test_evaluate_cli_samples_a_checkpoint(evaluator_path, tmp_path, capsys):
    from tinyfusion.cli import evaluate
    from tinyfusion.models import DiT
    torch.manual_seed(0)
    dit = DiT(input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    save_checkpoint({"ema": dit.state_dict(), "config": dit.config}, tmp_path / "dit.pt")
    evaluate.main(["--checkpoint", str(tmp_path / "dit.pt"), "--n", "20", "--steps", "2", "--batch", "10",
                   "--reference-limit", "200", "--no-progress", "--save-npz", str(tmp_path / "s.npz")])
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= set(out) and out["n"] == 20 and out["steps"] == 2 and out["sampler"] == "ddim"
    assert out["fid"] > 10  # an untrained DiT draws noise, far from Fashion-MNIST
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (20, 28, 28) and z["images"].dtype == np.uint8
    assert (z["labels"] == np.arange(20) % 10).all()


def test_train_evaluator_is_deterministic_and_checks_accuracy(tmp_path):
    from tinyfusion.cli import train_evaluator
    kw = dict(epochs=1, batch_size=64, train_limit=256, test_limit=200, warmup=2, min_accuracy=0.0)
    a = train_evaluator.run(out=str(tmp_path / "a.pt"), **kw)
    b = train_evaluator.run(out=str(tmp_path / "b.pt"), **kw)
    assert a["weights_sha256"] == b["weights_sha256"] and a["params"] == 98682
    wa, wb = (torch.load(tmp_path / f, weights_only=False)["model"] for f in ("a.pt", "b.pt"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a.pt.sha256").read_text().split()[0] == a["sha256"]
    assert json.loads((tmp_path / "a.json").read_text())["test_images"] == 200
    assert evaluator.load_evaluator(tmp_path / "a.pt").sha256 == a["sha256"]
    with pytest.raises(RuntimeError, match="accuracy"):
        train_evaluator.run(out=str(tmp_path / "c.pt"), **{**kw, "min_accuracy": 0.99})
    assert not (tmp_path / "c.pt").exists()
