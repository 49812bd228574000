"""The ``--config`` command-line flag of the CLIs (train.py, sample.py, evaluate.py).

``define_config_flag`` is ``ml_collections.config_flags.DEFINE_config_file`` with two fixes:

- an absent value is spelled ``None`` on the command line for float and int fields
  (``--config.sampling.guidance_scale=None``, ``--config.sampling.class_label=None``), as the
  Python API sets ``config.sampling.guidance_scale = None``; ml_collections' own parsers raise
  "could not convert string to float: 'None'";
- an unknown key (``--config.sampling.bogus=1``) exits with one line naming the key and the valid
  keys of its section, instead of ml_collections' multi-screen traceback.

``define_guidance_scale_flag`` is the ``--guidance_scale`` of sample.py and txt2img.py: a finite
number >= 0 (and, where the CLI allows it, ``None``), refused at flag parsing otherwise.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

NONE_SPELLINGS = ("None", "none")

# The flags this module defines belong to the CLI that calls define_config_flag, so that its
# ``--help`` lists ``--config`` with its own flags (absl attributes a flag to the first calling
# module that does not disclaim key flags).
flags.disclaim_key_flags()


class _NoneOr(flags.ArgumentParser):
    """``base`` parser that also reads "None" as None."""

    def __init__(self, base: flags.ArgumentParser):
        self.base = base
        self.syntactic_help = base.syntactic_help

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip() in NONE_SPELLINGS:
            return None
        return self.base.parse(argument)

    def flag_type(self):
        return self.base.flag_type()


class GuidanceScaleParser(flags.FloatParser):
    """A classifier-free guidance scale: a finite float w >= 0, or (``allow_none``) "None".

    Both CFG conventions of the project combine ``pred(null) + w (pred(cond) - pred(null))``
    (`score_jax.guidance.cfg`, `score_jax.guidance.text`, diffusers' ``guidance_scale``): w = 0 is
    the unconditional model, 1 the conditional one, > 1 guided. A negative w extrapolates past the
    unconditional model (away from the condition), which no reference CLI means by a negative
    scale (diffusers switches guidance off for ``guidance_scale <= 1``), so it is refused.

    Raises:
      ValueError: (absl reports it as a flag error) a negative, non-finite or non-number value,
        naming it and the valid range.
    """

    def __init__(self, allow_none: bool = False, what: str = "0: unconditional, 1: conditional, "
                 "> 1: guided"):
        super().__init__()
        self.allow_none = allow_none
        self.what = what
        self.syntactic_help = "a float >= 0" + (" or None" if allow_none else "")

    def valid(self) -> str:
        return (f"valid: a finite number >= 0 ({self.what})"
                + (" or None (plain conditional sampling, no guidance)" if self.allow_none else ""))

    def parse(self, argument):
        if self.allow_none and (argument is None or (isinstance(argument, str)
                                                     and argument.strip() in NONE_SPELLINGS)):
            return None
        try:
            w = super().parse(argument)
        except (ValueError, TypeError):
            raise ValueError(f"guidance_scale={argument!r} is not a number; {self.valid()}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance_scale={w!r} is {'negative' if w < 0 else 'not finite'}; "
                             f"{self.valid()}")
        return w


def define_guidance_scale_flag(default: float | None, help_string: str, *,
                               allow_none: bool = False, what: str | None = None,
                               name: str = "guidance_scale", flag_values=flags.FLAGS):
    """``--guidance_scale`` parsed by `GuidanceScaleParser` (a negative value fails at flag
    parsing, naming it and the valid range)."""
    parser = GuidanceScaleParser(allow_none, *(() if what is None else (what,)))
    return flags.DEFINE(parser, name, default, help_string, flag_values=flag_values)


def install_none_parsers() -> None:
    """Let ``--config.<float or int field>=None`` set the field to None (idempotent; process-wide
    in ml_collections' parser table, which only the CLIs use)."""
    for typ, base in ((float, flags.FloatParser()), (int, flags.IntegerParser())):
        config_flags.register_flag_parser_for_type(typ, _NoneOr(base))


def load_config_file(spec: str):
    """``get_config(arg)`` of ``path[:arg]`` (the syntax of ``--config``)."""
    path, _, arg = spec.partition(":")
    spec_ = importlib.util.spec_from_file_location("_config_flag_" + os.path.basename(path)[:-3],
                                                   path)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def unknown_override(config, path: str) -> str | None:
    """The one-line error of an override ``path`` (e.g. "sampling.bogus") that names no key of
    ``config``, or None when every part exists."""
    node, seen = config, ["config"]
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            return None  # inside a value (a tuple index, a dataclass): ml_collections' business
        if part not in node:
            where = ".".join(seen)
            return (f"--{path if path.startswith('config') else 'config.' + path}: {where} has no "
                    f"key {part!r}; valid keys of {where}: {sorted(node.keys())}")
        node = node[part]
        seen.append(part)
    return None


def overrides(argv, name: str = "config") -> list[str]:
    """The field paths of ``--<name>.<path>[=value]`` / ``--no<name>.<path>`` in ``argv``."""
    out = []
    for a in argv:
        for prefix in (f"--{name}.", f"--no{name}."):
            if a.startswith(prefix):
                out.append(a[len(prefix):].split("=", 1)[0])
    return out


def config_spec(argv, default: str | None, name: str = "config") -> str | None:
    """The ``--<name>`` value in ``argv`` (``--config=x`` or ``--config x``), else ``default``."""
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return default


def check_config_file(spec: str | None, name: str = "config") -> None:
    """Exit with one line if an explicit ``--<name>=path[:variant]`` names a missing file or its
    ``get_config`` refuses the variant (a ValueError), instead of the traceback ml_collections
    would print at flag parsing."""
    if spec is None:
        return
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        raise SystemExit(f"error: --{name}={spec}: no such config file {path!r} (the config files "
                         f"are the .py files under configs/, e.g. configs/default_digits.py)")
    try:
        load_config_file(spec)
    except ValueError as e:
        raise SystemExit(f"error: --{name}={spec}: {e}") from None


def check_overrides(argv, default: str | None, name: str = "config") -> None:
    """Exit with one line if an override in ``argv`` names a key the config does not have."""
    paths = overrides(argv, name)
    spec = config_spec(argv, default, name)
    if not paths or spec is None:
        return
    config = load_config_file(spec)
    for path in paths:
        msg = unknown_override(config, path)
        if msg is not None:
            raise SystemExit(f"error: {msg}")


def define_config_flag(name: str = "config", default: str | None = None,
                       help_string: str = "path to config file[:variant]", *,
                       flag_values=flags.FLAGS, argv=None):
    """``config_flags.DEFINE_config_file`` with "None" for float / int fields and a one-line
    error for an unknown key (module docstring). ``argv`` defaults to ``sys.argv``.

    Raises:
      SystemExit: an override names an unknown key (the message names it and the valid keys).
    """
    from score_jax.cli_args import respell

    install_none_parsers()
    # --config.training.n-iters is --config.training.n_iters (as _cli.respell_argv gives app.run)
    argv = respell(sys.argv if argv is None else argv, ())
    check_config_file(config_spec(argv[1:], None, name), name)
    # an explicit --config is only parsed at app.run, where ml_collections would raise a
    # traceback for an unknown key: check the overrides against the named file first
    if overrides(argv[1:], name) and config_spec(argv[1:], None, name) is not None:
        check_overrides(argv[1:], default, name)
    try:
        return config_flags.DEFINE_config_file(name, default, help_string,
                                               flag_values=flag_values, sys_argv=argv)
    except (KeyError, AttributeError):
        check_overrides(argv[1:], default, name)  # exits with one line when a key is unknown
        raise


__all__ = ["define_config_flag", "define_guidance_scale_flag", "GuidanceScaleParser",
           "install_none_parsers", "unknown_override", "check_overrides", "check_config_file",
           "load_config_file"]
