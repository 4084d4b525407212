"""What every entry point shares: its parser (one ``--flag`` per config key), ``--config-json``, process-group
set-up, the result JSON, and errors shown as one line.

An entry point module defines ``DEFAULTS`` (the config keys and their defaults), ``HELP`` (a help text for every
key), and where the default value does not tell, ``TYPES`` (e.g. ``int`` for a ``None`` default meaning "the
profile's value") and ``CHOICES``. This module and those dictionaries import without torch, so a mistyped flag
fails at once, before the slow imports of ``run``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

TRACEBACK_ENV = "TINYFUSION_TRACEBACK"  # set to 1: an error shows its traceback, not one line
BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def json_value(text):
    """A flag's value parsed as JSON (lists such as ``[1, 3, 4]``)."""
    return json.loads(text)


json_value.__name__ = "JSON"  # argparse names the type in its error: "invalid JSON value: '[1,2'"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each flag's default, unless its help already says what the default is (``None`` and ``""``
    defaults stand for "the profile's value" or "not given", which the help text spells out); the module docstring
    after the flags keeps its layout."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, "") or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line plus a hint (not the whole usage), and which refuses
    the old ``--flag true``/``--flag false`` spelling of a switch with a message that shows the new one."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n({self.prog} --help lists the flags and their defaults)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        switches = {s: a for a in self._actions if isinstance(a, argparse.BooleanOptionalAction)
                    for s in a.option_strings}
        for flag, value in zip(args, args[1:]):
            if flag in switches and value.lower() in BOOL_WORDS:
                on, off = switches[flag].option_strings[:2]
                self.error(f"{flag} takes no value: write {on} or {off} (not {flag} {value})")
        return super().parse_known_args(args, namespace)


def make_parser(prog, doc, **kw):
    """A :class:`Parser` for ``python -m <prog>``: the first docstring line as description, the rest after the flags."""
    head, _, rest = (doc or "").strip().partition("\n")
    return Parser(prog=f"python -m {prog}", description=head, epilog=rest.strip("\n").replace("``", "") or None,
                  formatter_class=HelpFormatter, **kw)


def add_switch(parser, flag, default, help):
    """``--flag`` / ``--no-flag`` (argparse's ``BooleanOptionalAction``)."""
    parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)


def parser_for(module):
    """The parser of an entry point module (see the module docstring): one flag per key of ``module.DEFAULTS``,
    typed by its default (``TYPES`` where the default is ``None``; JSON for lists and dicts), switches for booleans,
    ``CHOICES`` where given, then ``--config-json`` and ``--result-json``."""
    defaults, helps = module.DEFAULTS, getattr(module, "HELP", {})
    types, choices = getattr(module, "TYPES", {}), getattr(module, "CHOICES", {})
    p = make_parser(module.__spec__.name, module.__doc__)
    for k, v in defaults.items():
        flag, text = "--" + k.replace("_", "-"), helps.get(k, "").replace("%", "%%")
        if isinstance(v, bool):
            add_switch(p, flag, v, text)
            continue
        kind = types.get(k) or (json_value if v is None or isinstance(v, (list, tuple, dict)) else type(v))
        p.add_argument(flag, type=kind, default=v, choices=choices.get(k), help=text,
                       metavar="JSON" if kind is json_value else None)
    p.add_argument("--config-json", default=None, metavar="FILE",
                   help="take the config from this JSON file (keys as the flags, with _ for -); flags given beside "
                        "it override its values (default: flags and defaults only)")
    p.add_argument("--result-json", default=None, metavar="FILE",
                   help="rank 0 writes the returned result here (default: not written)")
    return p


class _Unset:
    def __repr__(self):
        return "<not given>"


UNSET = _Unset()


def parse_config(parser, defaults, choices=None, argv=None):
    """``(args, config)``: the config is ``defaults``, then the ``--config-json`` file's values, then the flags
    given on the command line. Unknown keys in the file, and values outside ``choices``, are refused."""
    args = parser.parse_args(argv, namespace=argparse.Namespace(**{k: UNSET for k in defaults}))
    given = {k: getattr(args, k) for k in defaults if getattr(args, k) is not UNSET}
    from_file = {}
    if args.config_json:
        try:
            with open(args.config_json) as f:
                from_file = json.load(f)
        except (OSError, ValueError) as e:
            parser.error(f"--config-json {args.config_json}: {e}")
        if not isinstance(from_file, dict):
            parser.error(f"--config-json {args.config_json}: holds a {type(from_file).__name__}, not an object")
        unknown = sorted(set(from_file) - set(defaults))
        if unknown:
            parser.error(f"--config-json {args.config_json}: unknown key(s) {unknown}; known: {', '.join(defaults)}")
        for k, allowed in (choices or {}).items():
            v = from_file.get(k, defaults[k])
            if v != defaults[k] and v not in allowed:
                parser.error(f"--config-json {args.config_json}: {k}={v!r} is not one of {', '.join(allowed)}")
    return args, {**defaults, **from_file, **given}


def _is_user_error(e):
    """An error that says what was wrong and what to do (bad values, missing or corrupt files, the library's own
    error classes): shown as one line. Anything else is a bug, shown with its traceback."""
    return isinstance(e, (ValueError, KeyError, OSError, FloatingPointError)) or \
        any(c.__module__.startswith("tinyfusion") for c in type(e).__mro__)


def report_error(prog, e):
    """Print ``e`` once on stderr (one line and a hint, or the traceback of a bug, or with ``$TINYFUSION_TRACEBACK``
    set); under torchrun each line starts with ``[rankN]: `` as torch's own exception hook writes it. Returns the
    exit status."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    prefix = f"[rank{os.environ.get('RANK', '0')}]: " if world > 1 else ""
    if isinstance(e, KeyboardInterrupt):
        lines, status = [f"{prog}: interrupted"], 130
    elif _is_user_error(e) and os.environ.get(TRACEBACK_ENV, "") in ("", "0"):
        message = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e  # KeyError's str() adds quotes
        lines = [f"{prog}: error: {message}", f"({TRACEBACK_ENV}=1 shows the traceback; {prog} --help lists the flags)"]
        status = 1
    else:
        lines, status = "".join(traceback.format_exception(e)).rstrip("\n").split("\n"), 1
    sys.stdout.flush()
    sys.stderr.write("".join(f"{prefix}{line}\n" for line in lines))
    sys.stderr.flush()
    return status


def cli_main(run, module, argv=None, console=False):
    """Parse ``module``'s flags (and ``--config-json``), join torchrun's process group, call ``run``, write the
    result; return it.

    ``console=True`` (the ``python -m`` / torchrun path): an error is printed once, before the process group is
    torn down (a peer that died could hold that up), and the process exits with status 1 (130 when interrupted).
    Otherwise the exception propagates (in-process callers and tests)."""
    parser = parser_for(module)
    args, config = parse_config(parser, module.DEFAULTS, getattr(module, "CHOICES", {}), argv)
    from tinyfusion import dist  # imported after the flags are checked: it imports torch
    status = None
    try:
        dist.init()
        result = run(**config)
        if args.result_json and dist.is_main():
            from tinyfusion.io import save_json
            save_json(result, args.result_json)
    except (Exception, KeyboardInterrupt) as e:
        if not console:
            raise
        status = report_error(parser.prog, e)
    finally:
        dist.cleanup()
    if status is not None:
        sys.exit(status)
    return result
