"""Convert official DiT checkpoints (facebookresearch/DiT, e.g. ``DiT-XL-2-256x256.pt``) into
variables of `score_jax.models.DiT`.

The official state dict has, per module of DiT ``models.py``::

    x_embedder.proj.{weight (D, C, p, p), bias}      -> x_embedder/proj/{kernel (p, p, C, D), bias}
    t_embedder.mlp.{0,2}.{weight (out, in), bias}    -> t_embedder/mlp_{0,2}/{kernel (in, out), bias}
    y_embedder.embedding_table.weight                -> y_embedder/embedding_table/embedding
    blocks.N.attn.{qkv,proj}.*, blocks.N.mlp.{fc1,fc2}.*, blocks.N.adaLN_modulation.1.*
                                                     -> blocks_N/attn/..., blocks_N/mlp/...,
                                                        blocks_N/adaLN_modulation
    final_layer.{linear, adaLN_modulation.1}.*       -> final_layer/{linear, adaLN_modulation}
    pos_embed (1, T, D)                              -> checked against the fixed sin-cos table
                                                        and dropped (it is not a parameter here)

Linear weights are transposed, conv weights go OIHW -> HWIO. ``.pt`` / ``.pth`` files are read
with ``torch.load(weights_only=True)`` (no code from the file is executed); ``.safetensors`` with
safetensors' numpy loader; ``.npz`` with ``allow_pickle=False``.

Command line (output: flax msgpack of ``{'params': ...}``)::

    python -m score_jax.convert dit DiT-XL-2-256x256.pt dit_xl2_256.msgpack --preset DiT-XL/2
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from score_jax.cli_args import ArgumentParser, existing_path
from score_jax.convert.reader import read_state_dict
from score_jax.convert.reader import to_numpy as _to_numpy
from score_jax.files import atomic_write
from score_jax.models import DiT, dit_config, get_model
from score_jax.models.dit import sincos_pos_embed_2d

_LINEAR_RENAMES = (
    (re.compile(r"^t_embedder\.mlp\.(\d+)\.(weight|bias)$"), r"t_embedder/mlp_\1/\2"),
    (re.compile(r"^blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)$"),
     r"blocks_\1/adaLN_modulation/\2"),
    (re.compile(r"^blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$"), None),
    (re.compile(r"^final_layer\.adaLN_modulation\.1\.(weight|bias)$"),
     r"final_layer/adaLN_modulation/\1"),
    (re.compile(r"^final_layer\.linear\.(weight|bias)$"), r"final_layer/linear/\1"),
)


def _flax_path(key: str) -> tuple[tuple[str, ...], str] | None:
    """(flax path, kind) for an official key; kind in {'linear', 'conv', 'embed', 'bias'}."""
    if key in ("x_embedder.proj.weight", "x_embedder.proj.bias"):
        leaf = key.rsplit(".", 1)[1]
        return ("x_embedder", "proj", "kernel" if leaf == "weight" else "bias"), (
            "conv" if leaf == "weight" else "bias")
    if key == "y_embedder.embedding_table.weight":
        return ("y_embedder", "embedding_table", "embedding"), "embed"
    m = _LINEAR_RENAMES[2][0].match(key)
    if m:
        block, module, leaf = m.groups()
        path = (f"blocks_{block}", *module.split("."), leaf)
    else:
        for pattern, repl in _LINEAR_RENAMES:
            if repl is not None and pattern.match(key):
                path = tuple(pattern.sub(repl, key).split("/"))
                break
        else:
            return None
    leaf = path[-1]
    return (*path[:-1], "kernel" if leaf == "weight" else "bias"), (
        "linear" if leaf == "weight" else "bias")


def _relayout(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear" and value.ndim == 2:
        return value.T
    if kind == "conv" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value


def _build(model_config: Any, state: Mapping[str, np.ndarray], image_size: int | None,
           num_channels: int | None) -> DiT:
    if isinstance(model_config, DiT):
        return model_config
    if isinstance(model_config, str):
        model_config = dit_config(model_config, num_classes=1000)
    w = state.get("x_embedder.proj.weight")
    if num_channels is None and w is not None and w.ndim == 4:
        num_channels = int(w.shape[1])
    pos = state.get("pos_embed")
    if image_size is None and pos is not None and pos.ndim == 3 and w is not None:
        side = int(round(pos.shape[1] ** 0.5))
        if side * side == pos.shape[1]:
            image_size = side * int(w.shape[-1])
    model = get_model(model_config, image_size=image_size, num_channels=num_channels)
    if not isinstance(model, DiT):
        raise ValueError(f"convert_dit needs a DiT config (name='dit'), got {type(model).__name__}")
    return model


def convert_dit(state_dict: Mapping[str, Any], model_config: Any, *,
                image_size: int | None = None, num_channels: int | None = None,
                dtype: Any = np.float32) -> dict[str, Any]:
    """Official DiT state dict -> ``{'params': ...}`` for `score_jax.models.DiT`.

    Args:
      state_dict: key -> array (torch tensors or numpy arrays), the official names.
      model_config: a ``config.model`` with ``name='dit'`` (e.g.
        ``dit_config('DiT-XL/2', num_classes=1000)``), a preset name such as ``'DiT-XL/2'``
        (official settings: 1000 classes, class_dropout_prob 0.1, learn_sigma), or a `DiT`.
      image_size, num_channels: the data (latent) size; inferred from ``pos_embed`` and
        ``x_embedder.proj.weight`` when None.
      dtype: numpy dtype of the output arrays (float32; float64 for exact comparisons).

    Returns:
      ``{'params': nested dict of numpy arrays}`` matching ``model.init``'s tree.

    Raises:
      ValueError: an unknown key, a missing parameter, the first key whose converted shape does
        not match the model (both shapes named), or a ``pos_embed`` that is not the fixed
        sin-cos table of this size.
    """
    state = {k.removeprefix("module."): _to_numpy(v) for k, v in state_dict.items()}
    model = _build(model_config, state, image_size, num_channels)
    size = model.image_size if model.image_size is not None else model.patch_size * 2
    x = jax.ShapeDtypeStruct((1, size, size, model.num_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    y = None if model.num_classes is None else jax.ShapeDtypeStruct((1,), jnp.int32)
    abstract = jax.eval_shape(lambda x, t, y: model.init(jax.random.key(0), x, t, y=y), x, t, y)
    expected = traverse_util.flatten_dict(nn.unbox(abstract)["params"])

    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state.items():
        if key == "pos_embed":
            _check_pos_embed(value, model)
            continue
        found = _flax_path(key)
        if found is None or found[0] not in expected:
            raise ValueError(f"convert_dit: unexpected key {key!r} in the checkpoint (no such "
                             f"parameter in {model.__class__.__name__} depth={model.depth}, "
                             f"num_classes={model.num_classes})")
        path, kind = found
        arr = _relayout(value, kind)
        if arr.shape != tuple(expected[path].shape):
            raise ValueError(f"convert_dit: {key!r} has shape {value.shape} (converted "
                             f"{arr.shape}), the model's {'/'.join(path)} needs "
                             f"{tuple(expected[path].shape)}")
        out[path] = np.asarray(arr, dtype)
    missing = [("/".join(p)) for p in expected if p not in out]
    if missing:
        raise ValueError(f"convert_dit: the checkpoint lacks {len(missing)} parameters, first "
                         f"{missing[0]!r}")
    return {"params": traverse_util.unflatten_dict(out)}


def _check_pos_embed(value: np.ndarray, model: DiT) -> None:
    p = model.patch_size
    if model.image_size is None:
        return
    g = model.image_size // p
    table = sincos_pos_embed_2d(model.hidden_size, g, g)
    if value.reshape(-1, value.shape[-1]).shape != table.shape:
        raise ValueError(f"convert_dit: 'pos_embed' has shape {value.shape}, the model "
                         f"(image_size={model.image_size}, patch_size={p}) needs "
                         f"(1, {table.shape[0]}, {table.shape[1]})")
    err = float(np.max(np.abs(value.reshape(table.shape) - table)))
    if err > 1e-5:
        raise ValueError(f"convert_dit: 'pos_embed' differs from the fixed 2-D sin-cos table by "
                         f"{err:.3g}; this converter supports only the fixed table")


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a DiT checkpoint without executing code from it (`reader.read_state_dict`): ``.pt`` /
    ``.pth`` via ``torch.load(weights_only=True)`` (a training checkpoint's ``ema`` entry is used
    when present), ``.safetensors`` (bf16 widened to float32), or ``.npz``.

    Raises:
      ValueError: an unknown suffix (naming the valid ones).
    """
    return read_state_dict(path, entries=("ema",), suffixes=(".pt", ".pth", ".safetensors", ".npz"))


def main(argv: list[str] | None = None) -> None:
    """``python -m score_jax.convert dit INPUT OUTPUT --preset DiT-XL/2 [--num_classes N]``."""
    ap = ArgumentParser(prog="python -m score_jax.convert dit",
                                 description="Convert an official DiT checkpoint.")
    ap.add_argument("input", type=existing_path,
                    help="DiT .pt / .pth / .safetensors / .npz state dict")
    ap.add_argument("output", help="output file (flax msgpack of {'params': ...})")
    ap.add_argument("--preset", required=True, help="DiT-S/2 ... DiT-XL/8")
    ap.add_argument("--model", default="{}", help="JSON of model fields overriding the preset, "
                    "e.g. '{\"hidden_size\": 32, \"depth\": 2}'")
    ap.add_argument("--num_classes", type=int, default=1000)
    ap.add_argument("--class_dropout_prob", type=float, default=0.1)
    ap.add_argument("--no_learn_sigma", action="store_true")
    ap.add_argument("--image_size", type=int, default=None, help="latent size (default: from "
                    "pos_embed)")
    ap.add_argument("--num_channels", type=int, default=None)
    args = ap.parse_args(argv)
    cfg = dit_config(args.preset, num_classes=args.num_classes,
                     class_dropout_prob=args.class_dropout_prob,
                     learn_sigma=not args.no_learn_sigma, **json.loads(args.model))
    variables = convert_dit(load_state_dict(args.input), cfg, image_size=args.image_size,
                            num_channels=args.num_channels)
    atomic_write(args.output, serialization.msgpack_serialize(variables))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
