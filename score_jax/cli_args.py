"""Command-line spelling shared by every score_jax CLI.

One canonical spelling: flags are written with underscores (``--ref_stats``, ``--num_samples``),
the spelling of the absl CLIs (train.py, sample.py, evaluate.py, txt2img.py) and of the config
keys (``--config.sampling.guidance_scale``). Every CLI also accepts the other spelling
(``--ref-stats``) as an alias, so a command copied from one CLI works in another:

- `respell` rewrites an argv to the spelling a parser defines (used by the absl CLIs through
  ``_cli.respell_argv`` and by `ArgumentParser`); a config override is written with underscores
  (``--config.training.n-iters`` is ``--config.training.n_iters``);
- `repeated_flag` is the one-line error for a flag given twice with different values
  (``--workdir=a --workdir=b``), which absl would resolve silently to the last;
- `ArgumentParser` is ``argparse.ArgumentParser`` that accepts both spellings of every long
  option (its ``--help`` shows the defined one);
- `existing_path` is an argparse ``type`` that refuses a path that does not exist in one line
  (``argument input: 'x.pth' does not exist``) before any work is done.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Sequence


def _swap(name: str) -> str:
    return name.replace("-", "_") if "-" in name else name.replace("_", "-")


def respell(argv: Sequence[str], known: Collection[str], *,
            negatable: Collection[str] = ()) -> list[str]:
    """``argv`` with every ``--name[=value]`` whose ``name`` is not in ``known`` but whose other
    spelling (``-`` <-> ``_``) is, rewritten to the known spelling. ``negatable`` names absl
    booleans: ``--no-name`` / ``--no_name`` become absl's ``--noname``. A dotted name (a config
    override, ``--config.training.n-iters``) has its hyphens after the first dot written as
    underscores (config keys are Python identifiers). Values, positionals and everything after a
    bare ``--`` are left alone.

    Args:
      argv: the arguments (without or with the program name: a first item not starting with
        ``--`` is kept).
      known: the long option names the parser defines, without the leading ``--``.
      negatable: boolean flag names (absl) whose negation is ``--no<name>``.
    """
    known = set(known)
    negatable = set(negatable)
    out: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        if not arg.startswith("--") or len(arg) == 2:
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        if "." in name:
            head, _, path = name.partition(".")
            name = f"{head}.{path.replace('-', '_')}"
        elif name not in known:
            other = _swap(name)
            if other in known and ("-" in name or "_" in name):
                name = other
            elif name[:3] in ("no-", "no_"):
                rest = name[3:]
                for cand in (rest, _swap(rest)):
                    if cand in negatable:
                        name = "no" + cand
                        break
        out.append(f"--{name}{eq}{value}")
    return out


_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")


def repeated_flag(argv: Sequence[str], known: Collection[str], *,
                  booleans: Collection[str] = (), repeatable: Collection[str] = ()) -> str | None:
    """The one-line error for the first flag of ``argv`` given twice with different values, or
    None. absl (like argparse) silently keeps the last value of a repeated flag, so
    ``--config.training.n_iters=5 ... --config.training.n_iters=7`` would train 7 steps while the
    command line also says 5; the CLIs refuse it instead. A flag repeated with the same value
    (``--noema --noema``) is harmless and passes.

    ``argv`` is in the spelling of the parser (after `respell`: ``--config.training.n-iters`` and
    ``--config.training.n_iters`` are one flag). The forms absl reads are recognised:
    ``--name=value`` and ``-name=value``, ``--name value`` for a flag that takes a value, and for a
    boolean ``--name``, ``--noname`` and ``--name=true|false|t|f|1|0`` (``--ema`` then
    ``--noema`` is a conflict). Names not in ``known`` (absl reports them), the flags of
    ``repeatable`` (absl's multi flags, e.g. txt2img.py's ``--prompt``), positionals and
    everything after a bare ``--`` are skipped.

    Args:
      argv: the arguments (a first item not starting with ``-`` is the program name).
      known: the flag names the parser defines (without dashes).
      booleans: the names of ``known`` that take no value (absl's ``Flag.boolean``).
      repeatable: the names of ``known`` that may be given several times.

    Returns:
      ``"--NAME is given twice with different values (A and B); give it once"`` (A and B the two
      arguments as typed, e.g. ``--workdir=a and --workdir=b``), or None.
    """
    known, booleans, repeatable = set(known), set(booleans), set(repeatable)
    seen: dict[str, tuple[str, str]] = {}  # name -> (normalised value, value as typed)
    args = list(argv)
    i = 1 if args and not args[0].startswith("-") else 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        typed = arg
        if name not in known:
            if name[:2] == "no" and name[2:] in booleans and not eq:
                name, value = name[2:], "false"
            else:
                continue
        elif name in booleans:
            value = value.lower() if eq else "true"
            value = "true" if value in _TRUE else "false" if value in _FALSE else value
        elif not eq and i < len(args):  # --name value
            value = args[i]
            typed = f"{arg} {value}"
            i += 1
        if name in repeatable:
            continue
        if name in seen and seen[name][0] != value:
            return (f"--{name} is given twice with different values ({seen[name][1]} and "
                    f"{typed}); give it once")
        seen.setdefault(name, (value, typed))
    return None


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` accepting ``--a_b`` and ``--a-b`` for every long option
    ``--a_b`` / ``--a-b`` it (or a subparser made by ``add_subparsers``) defines, and refusing a
    single-valued long option given twice with different values (`repeated_flag`; argparse's
    usage line and ``error: ...``, exit status 2) instead of keeping the last silently.
    ``append`` / ``count`` options may repeat."""

    def parse_known_args(self, args=None, namespace=None):
        import sys

        args = sys.argv[1:] if args is None else list(args)
        actions = {s[2:]: a for s, a in self._option_string_actions.items() if s.startswith("--")}
        args = respell(args, actions)
        single = [n for n, a in actions.items()  # store / store_true / store_const: one value
                  if isinstance(a, argparse._StoreAction | argparse._StoreConstAction)]
        msg = repeated_flag(args, single, booleans=[n for n in single if actions[n].nargs == 0])
        if msg is not None:
            self.error(msg)
        return super().parse_known_args(args, namespace)


def existing_path(value: str) -> str:
    """argparse ``type``: ``value`` if a file or folder exists there, else a one-line error
    (``argparse.ArgumentTypeError``: argparse prints the usage and ``argument NAME: 'VALUE'
    does not exist`` and exits with status 2)."""
    if not os.path.exists(value):
        raise argparse.ArgumentTypeError(f"{value!r} does not exist")
    return value


__all__ = ["respell", "repeated_flag", "ArgumentParser", "existing_path"]
