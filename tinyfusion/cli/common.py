"""What every entry point shares: flags from a config dict, process-group set-up, the result JSON."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from tinyfusion import dist
from tinyfusion.io import save_json


def _json_flag(text):
    return json.loads(text)


_json_flag.__name__ = "JSON"  # argparse names the type in its error: "invalid JSON value: '[1,2'"


def parser_from_defaults(description, defaults: dict, help: dict | None = None):
    """An argparse parser with one ``--flag`` per key of ``defaults`` (types from the default values; a None
    default takes JSON, and None means "not given": the entry point fills in the profile's value, while an
    explicit value such as ``--steps 0`` is validated, never silently replaced)."""
    p = argparse.ArgumentParser(description=description)
    help = help or {}
    for k, v in defaults.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=v, help=help.get(k))
        elif isinstance(v, (list, tuple, dict)) or v is None:
            p.add_argument(flag, type=_json_flag, default=v, help=(help.get(k) or "") + " (JSON)")
        else:
            p.add_argument(flag, type=type(v), default=v, help=help.get(k))
    p.add_argument("--config-json", default=None, help="read the config from this JSON file (flags are ignored)")
    p.add_argument("--result-json", default=None, help="rank 0 writes the returned result here")
    return p


def cli_main(run, description, defaults, help=None, argv=None):
    """Parse flags (or ``--config-json``), join torchrun's process group, call ``run``, write the result."""
    args = parser_from_defaults(description, defaults, help).parse_args(argv)
    if args.config_json:
        with open(args.config_json) as f:
            config = {**defaults, **json.load(f)}
    else:
        config = {k: getattr(args, k) for k in defaults}
    dist.init()
    try:
        result = run(**config)
        if args.result_json and dist.is_main():
            save_json(result, args.result_json)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        raise
    finally:
        dist.cleanup()
    return result
