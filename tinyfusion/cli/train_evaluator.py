"""Train the Fashion-MNIST evaluator (the project's stand-in for the Inception network of FID/IS/sFID).

    python -m tinyfusion.cli.train_evaluator --out data/evaluator.pt

A small CNN (``tinyfusion.evaluator.FMNISTEvaluator``, ~99K parameters) trained for 6 epochs with AdamW (half
the images taken down to 16x16 and back up), a warmed-up cosine learning rate and random horizontal flips
(``--shift N`` adds random shifts of up to N pixels), from a fixed seed: the same flags and thread count give bit-identical weights (``weights_sha256`` in the
summary). About 6-9 minutes on one core shared with other jobs (about 4.5 alone). Refuses to write a
checkpoint whose test accuracy is below ``--min-accuracy`` (0.9).

Writes ``<out>`` (weights + config + summary, via ``io.save_checkpoint``), ``<out>.sha256`` (which
``evaluator.load_evaluator`` verifies) and a training summary JSON (``data/evaluator.json`` by default).
In-process: ``tinyfusion.evaluator.train_evaluator``.
"""
from __future__ import annotations

import json
import sys

from tinyfusion.cli.common import cli_main, count_list

# train_evaluator's keyword defaults (a test checks), written out so that the parser imports without torch
DEFAULTS = dict(out="data/evaluator.pt", summary="", epochs=6, batch_size=128, lr=1e-2, weight_decay=5e-4, warmup=200,
                shift=0, widths=(16, 32, 64, 128), seed=0, threads=1, train_limit=0, test_limit=0, min_accuracy=0.9,
                lowres=(16,), lowres_prob=0.5)
OUTPUTS = dict(out=(".pt", ".pth"), summary=(".json",))
HELP = dict(out="evaluator checkpoint to write (with <out>.sha256)",
            summary="training summary JSON (default: --out with the suffix .json)",
            epochs="training epochs", batch_size="batch size", lr="peak learning rate (AdamW)",
            weight_decay="AdamW weight decay", warmup="linear warm-up steps before the cosine",
            shift="random shifts of up to this many pixels (0: none)",
            widths="JSON list: channels of the four convolution stages", seed="seed of everything",
            threads="torch threads (the weights are bit-identical for the same flags and thread count)",
            train_limit="use only the first N training images (0: all)",
            test_limit="use only the first N test images (0: all)",
            min_accuracy="refuse to write a checkpoint below this test accuracy",
            lowres="JSON list: sizes images are taken down to and back up", lowres_prob="share of images taken down")


def check(cfg):
    """Refuse, naming it, a setting that would crash mid-run or train garbage (before minutes of training)."""
    from tinyfusion import validate
    for key in ("epochs", "batch_size", "warmup", "threads"):
        validate.check_budget(key, cfg[key])
    for key in ("shift", "train_limit", "test_limit"):
        validate.check_budget(key, cfg[key], allow_zero=True)
    validate.number("lr", cfg["lr"], 0.0, lo_open=True)
    validate.number("weight_decay", cfg["weight_decay"], 0.0)
    validate.number("min_accuracy", cfg["min_accuracy"], 0.0, 1.0, why="a share of the test images")
    validate.number("lowres_prob", cfg["lowres_prob"], 0.0, 1.0)
    widths = count_list("widths", cfg["widths"], 1)
    if len(widths) != 4:
        raise ValueError(f"widths must list 4 channel counts (one per convolution stage, such as [16, 32, 64, 128]), "
                         f"got {widths}")
    count_list("lowres", cfg["lowres"], 1)


def run(**cfg):
    """``train_evaluator`` with these keyword arguments (the rest at their defaults); its summary."""
    from tinyfusion.evaluator import train_evaluator
    check({**DEFAULTS, **cfg})
    return train_evaluator(**cfg)


def main(argv=None, console=False):
    result = cli_main(run, sys.modules[__name__], argv, console)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(console=True)
