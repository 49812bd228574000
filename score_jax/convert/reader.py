"""The one checkpoint reader of every converter: torch, safetensors, npz and flax msgpack files,
read without running code from them, and the one tensor -> numpy conversion (bf16-safe).

* ``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin``: ``torch.load(map_location="cpu", weights_only=True)``
  (the unpickler only rebuilds tensors and containers; torch is an optional extra).
* ``.safetensors``: ``safetensors.numpy.load_file``; a file holding bfloat16 tensors (no numpy
  dtype) is read from its header and raw bytes here, without torch, each bf16 value widened to
  float32 exactly (a bf16 number is the top 16 bits of a float32).
* ``.npz``: ``np.load(allow_pickle=False)``.
* ``.msgpack``: ``flax.serialization.msgpack_restore`` (plain dicts and arrays).

``to_numpy`` turns a torch tensor (never importing torch: it is recognised by ``detach``), a jax
or numpy array into a numpy array; bfloat16 becomes float32 (exact), whatever its origin.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

KINDS = {".pth": "torch", ".pt": "torch", ".ckpt": "torch", ".bin": "torch",
         ".safetensors": "safetensors", ".npz": "npz", ".msgpack": "msgpack"}
"""File suffix -> reader."""


def to_numpy(a: Any) -> np.ndarray:
    """A torch tensor, jax or numpy array (or anything ``np.asarray`` takes) as a numpy array.

    torch tensors are detached and moved to the CPU; bfloat16 (torch's, or ml_dtypes' in jax and
    newer safetensors) is widened to float32, which is exact. torch itself is never imported.
    """
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        a = a.numpy()
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 (jax, newer safetensors): float32
        a = a.astype(np.float32)
    return a


def kind_of(path: str | Path, suffixes: Sequence[str] | None = None) -> str:
    """The reader of ``path`` by its suffix (``KINDS``, or the subset ``suffixes`` a converter
    accepts); ValueError naming the valid suffixes."""
    suffix = Path(path).suffix.lower()
    valid = list(KINDS) if suffixes is None else list(suffixes)
    if suffix not in valid or suffix not in KINDS:
        raise ValueError(f"unknown checkpoint suffix {suffix!r} of {path}; valid: "
                         f"{', '.join(valid)}")
    return KINDS[suffix]


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file read from its format (8-byte little-endian header length, JSON header
    of ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian bytes), with BF16
    widened to float32 by shifting the 16 stored bits into the top of a float32."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype, shape = info["dtype"], tuple(info["shape"])
        raw = body[start:end]
        if dtype == "BF16":
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            out[name] = bits.view(np.float32).reshape(shape)
        elif dtype in _SAFETENSORS_DTYPES:
            out[name] = np.frombuffer(raw, np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<")
                                      ).reshape(shape).copy()
        else:
            raise ValueError(f"{path}: tensor {name!r} has safetensors dtype {dtype!r}; valid: "
                             f"BF16, {', '.join(_SAFETENSORS_DTYPES)}")
    return out


def read_checkpoint(path: str | Path, *, kind: str | None = None,
                    suffixes: Sequence[str] | None = None) -> Any:
    """The contents of a checkpoint file, read without executing code from it.

    Args:
      path: the file.
      kind: ``"torch"``, ``"safetensors"``, ``"npz"`` or ``"msgpack"``; default from the suffix
        (``KINDS``).
      suffixes: the suffixes the caller accepts (default all of ``KINDS``), when ``kind`` is None.

    Returns:
      torch: what ``torch.load(weights_only=True)`` returns (nested containers of tensors);
      safetensors / npz: a dict name -> numpy array (bf16 safetensors widened to float32);
      msgpack: the restored nested dict.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unknown suffix or kind (naming the valid ones).
      ImportError: torch is needed for the file and not installed.
    """
    p = Path(path)
    if not p.exists():  # before the suffix: a typo in the path is not an "unknown suffix"
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    kind = kind_of(p, suffixes) if kind is None else kind
    if kind not in set(KINDS.values()):
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid: "
                         f"{sorted(set(KINDS.values()))}")
    if kind == "torch":
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading {str(p)!r} needs torch: pip install 'score_jax[torch]'"
                              ) from e
        return torch.load(str(p), map_location="cpu", weights_only=True)
    if kind == "safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:  # pragma: no cover - depends on the environment
            return _read_safetensors_raw(p)
        try:
            return dict(load_file(str(p)))
        except TypeError:  # bfloat16 has no numpy dtype
            return _read_safetensors_raw(p)
    if kind == "npz":
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    from flax import serialization

    return serialization.msgpack_restore(p.read_bytes())


def read_state_dict(path: str | Path, *, entries: Sequence[str] = ("state_dict",),
                    kind: str | None = None,
                    suffixes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """A flat ``name -> numpy array`` state dict from a checkpoint file (`read_checkpoint`).

    A torch training checkpoint often wraps the weights: the first of ``entries`` present in the
    file as a mapping is used (e.g. ``("ema",)`` for DiT, ``("state_dict",)`` for Lightning /
    CompVis files); otherwise the file itself. Every value goes through `to_numpy`.

    Raises:
      ValueError: the file does not hold a mapping of tensors.
    """
    obj = read_checkpoint(path, kind=kind, suffixes=suffixes)
    if isinstance(obj, Mapping):
        for e in entries:
            if isinstance(obj.get(e), Mapping):
                obj = obj[e]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(obj).__name__})")
    return {k: to_numpy(v) for k, v in obj.items()}


def place_param(out: dict, want: Mapping, key: str, full: tuple, stored_shape: Sequence[int],
                value: Any, dtype: Any, model: str) -> None:
    """Put the converted ``value`` of state-dict ``key`` at flat path ``full`` of ``out``, checking it
    against the abstract parameters ``want`` (flat path -> shape holder) of ``model`` (how the
    errors name the model, e.g. "the config builds"). Raises ValueError naming the key for a path
    the model does not have, a shape it does not expect, or a path set twice."""
    if full not in want:
        raise ValueError(f"key {key!r} -> {'/'.join(full)} is not a parameter of the model {model}")
    if tuple(value.shape) != tuple(want[full].shape):
        raise ValueError(f"key {key!r} (stored shape {tuple(stored_shape)}) -> "
                         f"{'/'.join(full)} has shape {tuple(value.shape)}, the model "
                         f"expects {tuple(want[full].shape)}")
    if full in out:
        raise ValueError(f"key {key!r} maps to {'/'.join(full)}, already set by another key")
    out[full] = np.asarray(value, dtype=dtype) if dtype is not None else np.array(value)


def complete_params(out: dict, want: Mapping, source: str = "the state dict") -> dict:
    """``{"params": nested}`` of the flat ``out``, after checking that every path of ``want`` was
    set (ValueError: how many are missing from ``source``, the first one and its shape)."""
    from flax import traverse_util

    missing = sorted("/".join(k) for k in set(want) - set(out))
    if missing:
        raise ValueError(f"{len(missing)} parameters missing from {source}, first: {missing[0]!r} "
                         f"(shape {tuple(want[tuple(missing[0].split('/'))].shape)})")
    return {"params": traverse_util.unflatten_dict(out)}


__all__ = ["KINDS", "to_numpy", "kind_of", "read_checkpoint", "read_state_dict", "place_param",
           "complete_params"]
