"""Train the Fashion-MNIST evaluator (the project's stand-in for the Inception network of FID/IS/sFID).

    python -m tinyfusion.cli.train_evaluator --out data/evaluator.pt

A small CNN (``tinyfusion.metrics.FMNISTEvaluator``, ~99K parameters) trained for 6 epochs with AdamW (half
the images taken down to 16x16 and back up), a warmed-up cosine learning rate and random horizontal flips
(``--shift N`` adds random shifts of up to N pixels), from a fixed seed: the same flags and thread count give bit-identical weights (``weights_sha256`` in the
summary). About 6-9 minutes on one core shared with other jobs (about 4.5 alone). Refuses to write a
checkpoint whose test accuracy is below ``--min-accuracy`` (0.9).

Writes ``<out>`` (weights + config + summary, via ``io.save_checkpoint``), ``<out>.sha256`` (which
``metrics.load_evaluator`` verifies) and a training summary JSON (``data/evaluator.json`` by default).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinyfusion.cli.common import cli_main
from tinyfusion.data import load_fashion_mnist
from tinyfusion.io import save_checkpoint, save_json, sha256
from tinyfusion.metrics import FMNISTEvaluator, at_resolution
from tinyfusion.profiles import ROOT

DEFAULTS = dict(out="data/evaluator.pt", summary="", epochs=6, batch_size=128, lr=1e-2, weight_decay=5e-4,
                warmup=200, shift=0, widths=[16, 32, 64, 128], seed=0, threads=1, train_limit=0, test_limit=0,
                min_accuracy=0.9, lowres=[16], lowres_prob=0.5)


def augment(x, shift, g, lowres=(), lowres_prob=0.0):
    """Random horizontal flips and integer shifts of up to ``shift`` pixels (zero padding) of uint8 images.

    With probability ``lowres_prob`` an image is also taken down to one of the ``lowres`` sizes and back up
    (``metrics.at_resolution``), so the evaluator judges samples of the 16x16 cpu-profile models as well as
    full-resolution ones.
    """
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if lowres and lowres_prob:
        pick = torch.rand(len(x), generator=g) < lowres_prob
        size = lowres[int(torch.randint(len(lowres), (1,), generator=g))]
        if pick.any():
            x = x.clone()
            x[pick] = at_resolution(x[pick], size)
    if shift:
        pad = F.pad(x, (shift,) * 4)
        dy, dx = torch.randint(0, 2 * shift + 1, (2, len(x)), generator=g).tolist()
        h, w = x.shape[-2:]
        x = torch.stack([pad[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])
    return x


def weights_sha256(state_dict):
    """SHA-256 of a state dict's names and tensor bytes: equal for equal weights (a file's hash is not, because
    ``torch.save`` stamps every file with a fresh serialization id)."""
    h = hashlib.sha256()
    for k, v in state_dict.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def accuracy(model, images, labels, batch_size=1000):
    """Top-1 accuracy of ``model`` on uint8 images (N, 1, 28, 28)."""
    model.eval()
    hits = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
               for i in range(0, len(images), batch_size))
    return hits / len(images)


def run(**cfg):
    cfg = {**DEFAULTS, **cfg}
    torch.set_num_threads(int(cfg["threads"]))
    out = Path(cfg["out"])
    out = out if out.is_absolute() else ROOT / out
    summary_path = Path(cfg["summary"]) if cfg["summary"] else out.with_suffix(".json")
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])

    xtr, ytr = load_fashion_mnist("train", limit=cfg["train_limit"] or None)
    xte, yte = load_fashion_mnist("test", limit=cfg["test_limit"] or None)
    xtr, ytr = torch.from_numpy(xtr.copy()).unsqueeze(1), torch.from_numpy(ytr)
    xte, yte = torch.from_numpy(xte.copy()).unsqueeze(1), torch.from_numpy(yte)

    model = FMNISTEvaluator(widths=cfg["widths"])
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = max(1, len(xtr) // cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to zero
        opt, lambda s: min(1.0, (s + 1) / cfg["warmup"]) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    t0, log = time.time(), []
    bar = tqdm(total=total, desc="train evaluator", dynamic_ncols=True)
    for epoch in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        run_loss, run_hits, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
            x, y = augment(xtr[idx], cfg["shift"], g, cfg["lowres"], cfg["lowres_prob"]), ytr[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += loss.item() * len(y)
            run_hits += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update()
            if i % 50 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{run_loss / seen:.3f}", acc=f"{run_hits / seen:.3f}")
        test_acc = accuracy(model, xte, yte)
        log.append(dict(epoch=epoch + 1, train_loss=round(run_loss / seen, 4), train_acc=round(run_hits / seen, 4),
                        test_acc=round(test_acc, 4), wall_s=round(time.time() - t0, 1)))
        bar.write(str(log[-1]))
    bar.close()
    wall = time.time() - t0
    model.eval()
    lowres_acc = {str(r): round(accuracy(model, at_resolution(xte, r), yte), 4) for r in cfg["lowres"]}
    summary = dict(test_accuracy=round(test_acc, 4), test_accuracy_at_resolution=lowres_acc, epochs=cfg["epochs"],
                   params=n_params,
                   train_wall_s=round(wall, 1), threads=cfg["threads"], seed=cfg["seed"],
                   train_images=len(xtr), test_images=len(xte), config=model.config, run_config=cfg, log=log,
                   torch_version=torch.__version__)
    if test_acc < cfg["min_accuracy"]:
        raise RuntimeError(f"evaluator reached test accuracy {test_acc:.4f} < {cfg['min_accuracy']}; "
                           f"not writing {out}. Train longer (--epochs) or check the data.")
    # only deterministic facts go into the checkpoint, so the same run gives the same bytes (and SHA-256)
    keep = ("test_accuracy", "test_accuracy_at_resolution", "epochs", "params", "seed", "threads", "train_images",
            "test_images", "torch_version")
    save_checkpoint({"model": model.state_dict(), "config": model.config,
                     "summary": {k: summary[k] for k in keep}}, out)
    digest = sha256(out)
    Path(str(out) + ".sha256").write_text(f"{digest}  {out.name}\n")
    summary.update(sha256=digest, weights_sha256=weights_sha256(model.state_dict()), checkpoint=str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
                   size_bytes=out.stat().st_size)
    save_json(summary, summary_path)
    return {k: v for k, v in summary.items() if k not in ("log", "run_config")}


def main(argv=None):
    result = cli_main(run, __doc__.splitlines()[0], DEFAULTS, argv=argv)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
