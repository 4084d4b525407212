"""What every entry point shares: its parser (one ``--flag`` per config key), ``--config-json``, process-group
set-up, the result JSON, and errors shown as one line.

An entry point module defines ``DEFAULTS`` (the config keys and their defaults), ``HELP`` (a help text for every
key), and where the default value does not tell, ``TYPES`` (e.g. ``int`` for a ``None`` default meaning "the
profile's value") and ``CHOICES``; ``INPUTS`` (key -> (kind, what to pass)) names the files it reads and
``OUTPUTS`` (key -> "folder" or the file suffixes allowed) those it writes, so that a wrong file or a path in a
file is refused before any work, naming the flag, the file, what it is and what to pass (:func:`check_paths`).
This module and those dictionaries import without torch, so a mistyped flag fails at once, before the slow
imports of ``run``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import zipfile
from pathlib import Path

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


# what to pass, for the INPUTS of the entry points
DIT = ("a DiT checkpoint (.pt: cli.pretrain's teacher.pt, cli.prune_learn's pruned.pt, cli.finetune's model.pt, or "
       "an official DiT/SiT .pt)")
SAMPLES = "the .npz that cli.sample writes (keys images (uint8) and labels)"
EVALUATOR = ("the evaluator checkpoint (data/evaluator.pt, or one written by cli.train_evaluator; imagenet: "
             "torch-fidelity's Inception weights .pth)")
REFERENCE = "the ADM reference batch .npz (data/local/VIRTUAL_imagenet256_labeled.npz)"
VAE = "an SD-VAE: a diffusers folder (with config.json) or a single .safetensors or .pt file"

KINDS = {"folder": "a folder", "empty": "an empty file (0 bytes)",
         "torch": "a torch checkpoint (.pt)", "npz": "a NumPy .npz archive", "npy": "a single NumPy .npy array",
         "zip": "a zip archive of other files", "safetensors": "a safetensors file", "vae": "an SD-VAE"}

# whole-number settings: their least value and what it means, refused below it by every entry point that has them
# (the others are checked by tinyfusion.validate where the entry point resolves them)
COUNTS = {"seed": (0, ""), "log_every": (0, ""), "ckpt_every": (0, "0: write state.pt by time"),
          "stop_after": (0, "0: run to the end"), "workers": (0, "0: load in the main process"),
          "limit": (0, "0: all"), "bar_steps": (0, ""), "max_skipped": (-1, "-1: 10% of the steps")}


def file_kind(path):
    """What ``path`` is, from its first bytes and (for a zip) its member names: one of :data:`KINDS`, "damaged"
    (a zip whose directory cannot be read: left to the loader, which names the damage), "text" or "other"."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        return "folder"
    with open(p, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "damaged"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch"
        return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"
    if head.startswith(b"\x80"):
        return "torch"  # the legacy torch.save format (a pickle stream)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < p.stat().st_size:
        return "safetensors"  # an 8-byte header length, then the JSON header
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "other"


def check_input(flag, path, kind, what):
    """Refuse a ``path`` given as ``flag`` that cannot be a ``kind`` file ("torch", "npz"; "vae": a folder, a
    torch or a safetensors file), with one line naming both, what it is and ``what`` to pass instead. The
    contents (a DiT or the evaluator, its keys and shapes) are left to the loaders, which name the file too."""
    got = file_kind(path)
    if got == "missing":
        raise FileNotFoundError(f"{flag} {path} does not exist; pass {what}")
    if got == kind or got == "damaged" or (kind == "vae" and got in ("folder", "torch", "safetensors")):
        return
    if got in ("text", "other"):
        with open(path, "rb") as f:
            head = f.read(40)
        first = head.decode("utf-8", "replace").splitlines()[0] if head.strip() else ""
        got_text = (f"a text file (it starts with {first!r})" if got == "text" and first else "a text file of blanks"
                    if got == "text" else f"a file of another format (it starts with {head[:8]!r})")
    else:
        got_text = KINDS[got]
    raise (IsADirectoryError if got == "folder" else ValueError)(
        f"{flag} {path} is {got_text}, not {KINDS[kind]}; pass {what}")


def check_output(flag, path, kind):
    """Refuse an output ``path`` given as ``flag`` that cannot be written as ``kind`` ("folder", or a tuple of the
    file suffixes allowed, () for any): a file where a folder goes or the reverse, a path under a file, another
    suffix; nothing is created."""
    p = Path(path)
    if kind == "folder" and p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{flag} {p} is a file; pass a folder (a new one is created)")
    if kind != "folder":
        if p.is_dir():
            example = p / ("out" + (kind[0] if kind else ".json"))
            raise IsADirectoryError(f"{flag} {p} is a folder; pass a file name (such as {example})")
        if kind and p.suffix not in kind:
            raise ValueError(f"{flag} must end in {' or '.join(kind)}, got {p}")
    above = p.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if above.exists() and not above.is_dir():
        raise NotADirectoryError(f"{flag} {p} lies under {above}, which is a file, not a folder; pass a path in a "
                                 f"folder")


def check_paths(module, config, result_json=None):
    """The file checks of an entry point (``INPUTS``, ``OUTPUTS``, ``--result-json``) and the whole-number settings
    of :data:`COUNTS` it has, for the values given (empty and None values are "not given"), before ``run``. A
    missing input is left to ``run``, which checks the values it resolves before it reads any file."""
    for key, (least, means) in COUNTS.items():
        v = config.get(key)
        if key in module.DEFAULTS and v is not None:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{key} must be a whole number, got {v!r}")
            if v < least:
                raise ValueError(f"{key} must be >= {least}{f' ({means})' if means else ''}, got {v}")
    for key, (kind, what) in getattr(module, "INPUTS", {}).items():
        if config.get(key) and Path(config[key]).exists():  # a missing file: its loader says so, after the values
            check_input("--" + key.replace("_", "-"), config[key], kind, what)
    for key, kind in getattr(module, "OUTPUTS", {}).items():
        if config.get(key):
            check_output("--" + key.replace("_", "-"), config[key], kind)
    if result_json:
        check_output("--result-json", result_json, ())


def count_list(name, value, least=0):
    """A list of whole numbers >= ``least`` given as ``name`` (a JSON list flag; None: not given, ``[]``)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a JSON list of whole numbers >= {least} (such as [{least + 1}, "
                         f"{least + 3}]), got {value!r}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"{name}[{i}] must be a whole number >= {least}, got {v!r} (in {name} = {list(value)})")
    return list(value)


def check_fits_profile(flag, value, profile, shape=None):
    """Refuse a model given as ``flag`` (a DiT or MAR checkpoint ``value``; else ``shape``, its ``(in_channels,
    input_size)``) whose input is not the shape of the profile's training images (Fashion-MNIST profiles: 1 x
    image_size x image_size; the latent profiles are not checked), naming both and what fits."""
    from tinyfusion.profiles import get_profile
    prof = get_profile(profile)
    if prof.dataset != "fashion-mnist":
        return
    if shape is None:
        from tinyfusion.models.registry import input_shape
        shape = input_shape(value, f"{flag} {value}")
    (channels, size), want = shape, (1, prof.image_size)
    if size is not None and (channels, size) != want:
        raise ValueError(f"{flag} {value} is a model for {channels}x{size}x{size} inputs, but profile {prof.name!r} "
                         f"trains on {want[0]}x{want[1]}x{want[1]} Fashion-MNIST images; pass one made for them (the "
                         f"profile's model is {prof.model}, its teacher {prof.teacher}), or the --profile it was "
                         f"made for")


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
        check_paths(module, config, args.result_json)
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
