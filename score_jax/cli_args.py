"""Command-line spelling shared by every score_jax CLI.

One canonical spelling: flags are written with underscores (``--ref_stats``, ``--num_samples``),
the spelling of the absl CLIs (train.py, sample.py, evaluate.py, txt2img.py) and of the config
keys (``--config.sampling.guidance_scale``). Every CLI also accepts the other spelling
(``--ref-stats``) as an alias, so a command copied from one CLI works in another:

- `respell` rewrites an argv to the spelling a parser defines (used by the absl CLIs through
  ``_cli.respell_argv`` and by `ArgumentParser`);
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
    booleans: ``--no-name`` / ``--no_name`` become absl's ``--noname``. Values, positionals,
    dotted names (``--config.a.b``) and everything after a bare ``--`` are left alone.

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
        if name not in known and "." not in name:
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


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` accepting ``--a_b`` and ``--a-b`` for every long option
    ``--a_b`` / ``--a-b`` it (or a subparser made by ``add_subparsers``) defines."""

    def parse_known_args(self, args=None, namespace=None):
        import sys

        args = sys.argv[1:] if args is None else list(args)
        known = [s[2:] for s in self._option_string_actions if s.startswith("--")]
        return super().parse_known_args(respell(args, known), namespace)


def existing_path(value: str) -> str:
    """argparse ``type``: ``value`` if a file or folder exists there, else a one-line error
    (``argparse.ArgumentTypeError``: argparse prints the usage and ``argument NAME: 'VALUE'
    does not exist`` and exits with status 2)."""
    if not os.path.exists(value):
        raise argparse.ArgumentTypeError(f"{value!r} does not exist")
    return value


__all__ = ["respell", "ArgumentParser", "existing_path"]
