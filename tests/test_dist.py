"""tinyfusion.dist: the single-process fallbacks, and the real thing under torchrun with 2 gloo processes."""
import torch

from tinyfusion import dist
from tinyfusion.launch import launch


def test_helpers_without_process_group(monkeypatch, capsys):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert dist.init() == (0, 1) and not dist.is_dist()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert dist.device() == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    obj = {"a": [1, 2]}
    assert dist.all_gather_object(obj) == [obj]
    assert dist.broadcast_object(obj) is obj
    assert dist.reduce_dict({"loss": torch.tensor(2.5), "n": 3}) == {"loss": 2.5, "n": 3.0}
    assert dist.reduce_dict({}) == {}
    calls = []
    dist.save0(calls.append, "saved")
    assert calls == ["saved"]
    dist.barrier()
    dist.print0("only once")
    assert capsys.readouterr().out == "only once\n"


def test_two_gloo_processes_under_torchrun(tmp_path, capsys):
    res = launch("tinyfusion.cli.selftest", nproc=2, out=str(tmp_path), message="dist-selftest",
                 env={"OMP_NUM_THREADS": "1"})
    out = capsys.readouterr().out
    assert res["world_size"] == 2
    gathered = res["gathered"]
    assert [g["rank"] for g in gathered] == [0, 1]  # in rank order
    assert gathered[0]["pid"] != gathered[1]["pid"]
    assert res["reduced"] == {"rank": 0.5, "one": 1.0}  # (0 + 1) / 2 and (1 + 1) / 2
    assert res["saved"] == ["saved_by_rank0.json"]  # save0: rank 0 wrote, rank 1 did not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_by_rank0.json", "saved_by_rank0.json.sha256"]
    assert out.count("dist-selftest: world size 2") == 1  # print0 on rank 0 only
