"""Atomic file writes: the one helper every writer of results and checkpoints uses.

A file is written to ``<path>.tmp-<pid>`` in the same folder and renamed over ``path`` with
``os.replace`` (atomic on POSIX and Windows), so a reader or a restarted job never sees a
half-written file, and two processes writing the same path never interleave.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import IO, Any

import numpy as np


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[IO], Any], *,
                 binary: bool | None = None) -> str:
    """Write ``content`` to ``path`` atomically; returns ``path`` as a string.

    Args:
      path: the destination (its folder must exist).
      content: bytes, a str, or a function ``fn(file)`` that writes into the open temporary file.
      binary: open mode for a function (default binary); bytes / str choose by themselves.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    if isinstance(content, bytes | bytearray):
        mode = "wb"
    elif isinstance(content, str):
        mode = "w"
    else:
        mode = "w" if binary is False else "wb"
    try:
        with open(tmp, mode) as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> str:
    """``np.savez(path, **arrays)`` (uncompressed), atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 1,
                      sort_keys: bool = True) -> str:
    """``json.dump(obj)`` to ``path`` atomically (``indent`` / ``sort_keys`` as json.dump)."""
    return atomic_write(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (weights fingerprints: the Inception
    FID weights, a latent model's autoencoder in ``latent.json``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["atomic_write", "atomic_savez", "atomic_write_json", "file_sha256"]
