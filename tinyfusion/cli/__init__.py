"""Entry points. Each module has ``run(**config) -> dict`` and works as
``python -m tinyfusion.cli.NAME --flags`` or ``torchrun ... -m tinyfusion.cli.NAME``; ``tinyfusion.launch``
calls them from notebook cells."""
