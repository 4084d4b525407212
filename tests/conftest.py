import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TINYFUSION_PROFILE", "smoke")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_dit():
    """A 6-layer width-32 DiT on 8x8 single-channel images: fast enough for any unit test."""
    from tinyfusion.models import DiT
    torch.manual_seed(0)
    return DiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=6, num_heads=2, num_classes=10)
