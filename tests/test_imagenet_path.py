"""The paper's own setting end to end, at toy size on CPU, with synthetic files in the official layouts.

An ImageNet-style image folder -> ``cli.extract_features`` (a small random AutoencoderKL built from a config) -> the
official per-image latent ``.npy`` files -> ``cli.prune_learn`` (2 steps) on a raw state dict (``--model``) -> the
surgery's ``pruned.pt`` -> ``cli.finetune`` masked KD (2 steps, 2 gloo processes) -> ``cli.sample`` (2 processes,
VAE decode, ADM ``arr_0`` layout, the official 3-channel guidance) -> ``cli.evaluate`` with the ADM statistics through
torch-fidelity's Inception (random weights saved to a local file) against a synthetic reference ``.npz`` ->
``cli.export`` to a diffusers ``DiTPipeline`` folder. Formats, keys and shapes are asserted at every step.
"""
import json
import time
from unittest import mock

import numpy as np
import pytest
import torch

from tinyfusion.io import load_checkpoint, load_npz

MODEL = "DiT-Mini/2"  # DiT-XL/2's 32x32x4 input and official layout at toy width


def tiny_vae(folder):
    """A randomly initialised AutoencoderKL with 2x downsampling (64x64x3 <-> 32x32x4), saved as a diffusers folder."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        layers_per_block=1, norm_num_groups=4, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(str(folder))
    return folder


def random_inception(path):
    """torch-fidelity's InceptionV3 with its random initial weights, saved as the local weights file (no download)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe
    torch.manual_seed(0)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def image_folder(root, classes=3, per_class=3):
    from PIL import Image
    rng = np.random.RandomState(0)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for j in range(per_class):
            h, w = 64 + 16 * j, 96  # not square, not 64: the center crop does work
            Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"img{j}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tinyfusion.models import build_model
    root = tmp_path_factory.mktemp("imagenet_path")
    torch.manual_seed(0)
    teacher = build_model(MODEL)
    for p in teacher.parameters():  # a trained model's adaLN layers are not zero
        if p.requires_grad and torch.count_nonzero(p) == 0:
            p.data.normal_(0, 0.02)
    torch.save(teacher.state_dict(), root / "DiT-Mini-2.pt")  # a raw state dict, as DiT-XL-2-256x256.pt
    rng = np.random.RandomState(1)
    np.savez(root / "reference.npz", arr_0=rng.randint(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    return dict(root=root, teacher=root / "DiT-Mini-2.pt", vae=tiny_vae(root / "vae"),
                inception=random_inception(root / "inception.pth"), images=image_folder(root / "train"),
                reference=root / "reference.npz", latents=root / "latents")


def test_paper_setting_end_to_end(files, monkeypatch):
    from tinyfusion.cli import evaluate, extract_features, finetune, prune_learn
    from tinyfusion.cli import export as export_cli
    from tinyfusion.launch import launch

    t0 = time.time()
    f, env = files, {"TINYFUSION_LATENTS": str(files["latents"]), "TINYFUSION_VAE": str(files["vae"])}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    # 1. latents in the official per-image layout
    res = extract_features.main(["--data-path", str(f["images"]), "--workers", "0", "--batch", "4",
                                 "--image-size", "64", "--no-progress"])
    assert res["images"] == res["encoded"] == 9 and res["latent_shape"] == [1, 4, 32, 32]
    feats = sorted((f["latents"] / "imagenet256_features").glob("*.npy"))
    assert [p.name for p in feats] == sorted(f"{i}.npy" for i in range(9))
    z, y = np.load(feats[0]), np.load(f["latents"] / "imagenet256_labels" / "0.npy")
    assert z.shape == (1, 4, 32, 32) and z.dtype == np.float32 and y.shape == (1,) and y.dtype == np.int64
    assert sorted(int(np.load(p)[0]) for p in (f["latents"] / "imagenet256_labels").glob("*.npy")) == [0] * 3 + [1] * 3 + [2] * 3
    again = extract_features.main(["--data-path", str(f["images"]), "--workers", "0", "--image-size", "64",
                                   "--no-progress"])
    assert again["encoded"] == 0 and again["kept"] == 9  # a rerun keeps what is there

    # 2. learnable pruning (2 steps) of the raw state dict, read with --model; the surgery writes pruned.pt
    out = f["root"] / "prune"
    pr = prune_learn.main(["--profile", "imagenet", "--teacher", str(f["teacher"]), "--model", MODEL, "--steps", "2",
                           "--batch-size", "4", "--lora-rank", "2", "--out", str(out)])
    pruned = load_checkpoint(out / "pruned.pt")
    assert pr["depth"] == 2 and len(pruned["kept"]) == 2 and pruned["config"]["depth"] == 2
    teacher_sd = torch.load(f["teacher"], weights_only=True)
    for k, v in pruned["ema"].items():  # the official layout, the teacher's own weights for the kept layers
        src = k if not k.startswith("blocks.") else f"blocks.{pruned['kept'][int(k.split('.')[1])]}." + k.split(".", 2)[2]
        assert torch.equal(v, teacher_sd[src]), k
    assert {k for k in pruned["ema"] if not k.startswith("blocks.")} == \
        {k for k in teacher_sd if not k.startswith("blocks.")}

    # 3. masked KD (2 steps) on 2 gloo processes, the teacher a raw state dict
    ft = launch("tinyfusion.cli.finetune", nproc=2, env=env, stream=False, profile="imagenet",
                student=str(out / "pruned.pt"), teacher=str(f["teacher"]), model=MODEL, mode="masked_kd",
                k_sigma=2.0, steps=2, batch_size=4, out=str(f["root"] / "kd"), progress=False)
    assert ft["world_size"] == 2 and ft["layer_map"] == [1, 3] and np.isfinite(ft["final_loss"])
    model_pt = load_checkpoint(ft["model"])
    assert set(model_pt["ema"]) == set(pruned["ema"]) and model_pt["config"]["depth"] == 2

    # 4. DDP sampling: latents without clipping, decoded by the VAE, in the ADM layout
    samples = f["root"] / "samples.npz"
    sm = launch("tinyfusion.cli.sample", nproc=2, env=env, stream=False, profile="imagenet", checkpoint=ft["model"],
                n=6, batch=2, sampler="ddpm", steps=3, out=str(samples), progress=False)
    assert sm["world_size"] == 2 and sm["cfg_channels"] == 3 and sm["vae"] == str(f["vae"])
    z = load_npz(samples)
    assert set(z) == {"arr_0", "arr_1"} and z["arr_0"].shape == (6, 64, 64, 3) and z["arr_0"].dtype == np.uint8
    assert z["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]

    # 5. ADM-style metrics through the local Inception weights against the local reference batch
    m = evaluate.main(["--profile", "imagenet", "--npz", str(samples), "--evaluator", str(f["inception"]),
                       "--reference", str(f["reference"])])
    for k in ("fid", "sfid", "is", "precision", "recall"):
        assert isinstance(m[k], float) and np.isfinite(m[k]), (k, m[k])
    assert m["n"] == 6 and m["n_ref"] == 8 and m["reference_stats"] == "computed"
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    from tinyfusion import adm
    feats = adm.features(z["arr_0"][:1], f["inception"])  # pool_3, the bias-free logits, 7 x 17 x 17 of mixed_6/conv
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"pool": (1, 2048), "logits_unbiased": (1, 1008),
                                                              "spatial": (1, 2023)}
    # ... and straight from a raw official-layout checkpoint (--model), sampled in-process first
    m2 = evaluate.main(["--profile", "imagenet", "--checkpoint", str(f["teacher"]), "--model", MODEL, "--n", "4",
                        "--batch", "2", "--sampler", "ddim", "--steps", "2", "--evaluator", str(f["inception"]),
                        "--reference", str(f["reference"]), "--save-npz", str(f["root"] / "teacher.npz"),
                        "--no-progress"])
    assert m2["depth"] == 4 and m2["model"] == MODEL and m2["cfg_channels"] == 3 and np.isfinite(m2["fid"])
    assert load_npz(f["root"] / "teacher.npz")["arr_0"].shape == (4, 64, 64, 3)
    # ... and as the notebooks' Study scores a checkpoint (sampling.score_config / score_samples)
    from tinyfusion import sampling
    sc = sampling.score_config("imagenet", checkpoint=f["teacher"], evaluator=f["inception"], reference=f["reference"])
    assert sc["model"] == "DiT-XL/2" and sc["cfg_channels"] == 3 and sc["vae"] == f["vae"]  # the profile's model
    assert (sc["sampler"], sc["steps"], sc["cfg_scale"], sc["n"]) == ("ddpm", 250, 1.5, 50000)
    scores = sampling.score_samples(sc, f["root"] / "teacher.npz")
    assert scores["fid"] == m2["fid"] and scores["class_accuracy"] is None

    # 6. export to a diffusers DiTPipeline folder that loads offline
    ex = export_cli.main(["--checkpoint", ft["model"], "--out", str(f["root"] / "pipeline"), "--vae", str(f["vae"])])
    index = json.loads((f["root"] / "pipeline" / "model_index.json").read_text())
    assert {"transformer", "vae", "scheduler"} <= set(index) and ex["depth"] == 2
    from diffusers import DiTPipeline
    pipe = DiTPipeline.from_pretrained(str(f["root"] / "pipeline"), local_files_only=True)
    assert pipe.transformer.config.num_layers == 2 and pipe.transformer.config.sample_size == 32
    assert time.time() - t0 < 120  # measured about 45 s on 2 shared cores


def test_missing_files_say_where_they_looked_and_where_to_get_them(tmp_path, monkeypatch):
    from tinyfusion import adm
    from tinyfusion.vae import VAENotFoundError, load_vae
    monkeypatch.delenv("TINYFUSION_VAE", raising=False)
    with pytest.raises(VAENotFoundError, match="(?s)--vae: .*nope.*does not exist.*stabilityai/sd-vae-ft-ema"):
        load_vae(tmp_path / "nope", "data/local/sd-vae-ft-ema")
    monkeypatch.setenv("TINYFUSION_VAE", str(tmp_path / "env-vae"))
    with pytest.raises(VAENotFoundError, match="(?s)TINYFUSION_VAE: .*env-vae does not exist"):
        load_vae(None, "data/local/sd-vae-ft-ema")
    with pytest.raises(adm.MissingFileError, match="(?s)ref.npz.*VIRTUAL_imagenet256_labeled.npz.*guided-diffusion"):
        adm.reference_path(tmp_path / "ref.npz")
    with pytest.raises(adm.MissingFileError, match="(?s)inc.pth.*weights-inception-2015-12-05-6726825d.pth.*https://"):
        adm.inception_path(tmp_path / "inc.pth")
