"""The ADM evaluator's statistics (tinyfusion.adm) on constructed inputs, and the pieces of the latent path."""
import numpy as np
import pytest
import torch

from tinyfusion import adm


def test_frechet_distance_low_rank_path_equals_sqrtm():
    rng = np.random.RandomState(0)
    a = torch.from_numpy(rng.randn(20, 48))
    b = torch.from_numpy(rng.randn(200, 48) * 1.5 + 0.3)
    s1, s2 = adm.statistics(a), adm.statistics(b)
    full = adm.frechet_distance(s1, s2)                # scipy sqrtm, as ADM
    low = adm.frechet_distance(s1, s2, features1=a)    # N <= d: the exact N x N route
    assert low == pytest.approx(full, rel=1e-6)
    assert adm.frechet_distance(s2, s2) == pytest.approx(0, abs=1e-6)


def test_inception_score_of_constructed_predictions():
    uniform = torch.zeros(10, 5)
    assert adm.inception_score(uniform) == pytest.approx(1.0)
    sure = torch.full((6, 3), -40.0)
    sure[torch.arange(6), torch.arange(6) % 3] = 0  # each sample certain, the classes balanced: IS = 3
    assert adm.inception_score(sure) == pytest.approx(3.0, rel=1e-6)


def test_precision_recall_of_constructed_manifolds():
    rng = np.random.RandomState(1)
    ref = torch.from_numpy(rng.randn(50, 4))
    assert adm.precision_recall(ref.clone(), ref) == {"precision": 1.0, "recall": 1.0}
    far = ref + 100  # samples nowhere near the reference: neither inside the other's manifold
    assert adm.precision_recall(far, ref) == {"precision": 0.0, "recall": 0.0}
    collapsed = ref[:5].repeat(10, 1)  # mode collapse: precise, no recall of most of the reference
    pr = adm.precision_recall(collapsed, ref)
    assert pr["precision"] == 1.0 and pr["recall"] < 0.5


def test_center_crop_is_adm_center_crop():
    from PIL import Image

    from tinyfusion.cli.extract_features import center_crop
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (600, 1000, 3), dtype=np.uint8))
    out = center_crop(img, 256)
    assert out.size == (256, 256)
    small = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    assert np.array_equal(np.array(center_crop(small, 40)), np.array(small)[:, 10:50])  # short side already right


def test_vae_from_a_single_diffusers_file_with_its_config_beside(tmp_path):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from tinyfusion.vae import decode, encode, load_vae
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    vae.save_pretrained(str(tmp_path / "folder"))
    save_file(vae.state_dict(), str(tmp_path / "folder" / "weights.safetensors"))
    a, b = load_vae(tmp_path / "folder"), load_vae(tmp_path / "folder" / "weights.safetensors")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    za = encode(a, x, torch.Generator().manual_seed(0))
    zb = encode(b, x, torch.Generator().manual_seed(0))
    assert za.shape == (1, 4, 16, 16) and torch.allclose(za, zb)
    img = decode(a, za)
    assert img.shape == (1, 3, 16, 16) and img.min() >= -1 and img.max() <= 1
