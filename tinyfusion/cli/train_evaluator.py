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

import inspect
import json

from tinyfusion.cli.common import cli_main
from tinyfusion.evaluator import train_evaluator

DEFAULTS = {k: p.default for k, p in inspect.signature(train_evaluator).parameters.items()}


def run(**cfg):
    """``train_evaluator`` with these keyword arguments (the rest at their defaults); its summary."""
    return train_evaluator(**cfg)


def main(argv=None):
    result = cli_main(run, __doc__.splitlines()[0], DEFAULTS, argv=argv)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
