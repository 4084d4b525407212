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


@pytest.fixture(scope="session")
def mar_teacher_3steps(tmp_path_factory):
    """A MAR-T32/4 teacher pre-trained for 3 steps of batch 4 on the smoke profile (shared by the MAR tests):
    (the ``cli.pretrain`` arguments without ``--out``, so a test can train the same teacher again; its result)."""
    from tinyfusion.cli import pretrain
    args = ["--profile", "smoke", "--model", "MAR-T32/4", "--steps", "3", "--batch-size", "4", "--log-every", "1"]
    tmp = tmp_path_factory.mktemp("mar_teacher")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYFUSION_RESULTS", str(tmp / "results"))
        mp.setenv("TINYFUSION_QUIET", "1")
        pre = pretrain.main(args + ["--out", str(tmp / "pretrain")])
    return args, pre
