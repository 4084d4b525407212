"""Export to diffusers: a pruned DiT written as a DiTTransformer2DModel folder gives the same outputs."""
import torch

from tinyfusion.io import save_checkpoint
from tinyfusion.models import DiT
from tinyfusion.pruning.indices import prune


def _model():
    torch.manual_seed(0)
    m = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    for p in m.parameters():  # a trained model's adaLN and output layers are not zero
        if p.requires_grad and torch.count_nonzero(p) == 0:
            p.data.normal_(0, 0.05)
    return prune(m, [0, 3]).eval()  # a pruned model, as the export's users have


def test_export_gives_equal_outputs_to_float_tolerance(tmp_path):
    from diffusers import DiTTransformer2DModel

    from tinyfusion.export import export, load_transformer
    m = _model()
    ckpt = tmp_path / "pruned.pt"
    save_checkpoint({"ema": m.state_dict(), "config": m.config, "kept": [0, 3]}, ckpt)
    res = export(ckpt, tmp_path / "transformer")
    assert res["depth"] == 2 and (tmp_path / "transformer" / "config.json").is_file()
    x = torch.randn(3, 4, 8, 8)
    t, y = torch.tensor([0, 421, 999]), torch.tensor([1, 7, 10])  # 10: the null label of guidance
    with torch.no_grad():
        ours = m(x, t, y)
        theirs = load_transformer(tmp_path / "transformer")(x, timestep=t, class_labels=y).sample
        plain = DiTTransformer2DModel.from_pretrained(str(tmp_path / "transformer"))(x, timestep=t, class_labels=y).sample
    assert theirs.shape == ours.shape == (3, 8, 8, 8)
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=1e-5), (theirs - ours).abs().max()
    # diffusers' own timestep spacing (10000^(-i/127), DiT: 10000^(-i/128)) is what separates a plain load
    assert not torch.allclose(plain, ours, atol=1e-5)
