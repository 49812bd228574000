"""Load a transformers ``CLIPTextModel`` folder (what ``save_pretrained`` writes, e.g. a Stable
Diffusion model's ``text_encoder/``) into `score_jax.models.clip_text.CLIPTextModel`.

The folder holds ``config.json`` and the weights: ``model.safetensors`` (or a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin`` read with ``weights_only=True``), each
read through `score_jax.convert.reader` (nothing is executed, nothing is downloaded). Names::

    [text_model.]embeddings.{token,position}_embedding.weight  -> embeddings/*/embedding
    [text_model.]encoder.layers.N.self_attn.{q,k,v,out}_proj.{weight (out, in), bias}
                                            -> encoder/layers_N/self_attn/*/{kernel (in, out), bias}
    [text_model.]encoder.layers.N.mlp.fc{1,2}.*               -> encoder/layers_N/mlp/fc{1,2}/*
    [text_model.]encoder.layers.N.layer_norm{1,2}.{weight, bias} -> .../layer_norm{1,2}/{scale, bias}
    [text_model.]final_layer_norm.*                           -> final_layer_norm/*
    [text_model.]embeddings.position_ids                      (a buffer in older files: dropped)

(transformers < 5 prefixes every key with ``text_model.``; 5.x writes them without it.)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_jax.convert.reader import read_state_dict
from score_jax.models.clip_text import ACTIVATIONS, CLIPTextModel

CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
               "eos_token_id")
"""The ``CLIPTextConfig`` keys that define the computation (the `CLIPTextModel` fields)."""

_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, eos_token_id=2)
"""``CLIPTextConfig``'s defaults, for keys a config.json leaves out."""

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def clip_text_fields(config: dict[str, Any]) -> dict[str, Any]:
    """`CLIPTextModel` fields from a ``CLIPTextConfig`` dict (a full ``CLIPConfig``'s
    ``text_config`` is used when present).

    Raises:
      ValueError: an unsupported ``model_type`` / ``hidden_act`` / architecture, naming the key
        and the valid values.
    """
    if config.get("model_type") == "clip" and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    mt = config.get("model_type", "clip_text_model")
    if mt != "clip_text_model":
        raise ValueError(f"config key 'model_type' is {mt!r}; valid: 'clip_text_model' (or 'clip' "
                         "with a text_config)")
    arch = config.get("architectures") or ["CLIPTextModel"]
    if arch[0] not in ("CLIPTextModel", "CLIPModel"):
        raise ValueError(f"config key 'architectures' is {arch!r}; valid: ['CLIPTextModel'] "
                         "(the projection head of CLIPTextModelWithProjection is not supported)")
    fields = {k: config.get(k, _DEFAULTS[k]) for k in CONFIG_KEYS}
    if fields["hidden_act"] not in ACTIVATIONS:
        raise ValueError(f"config key 'hidden_act' is {fields['hidden_act']!r}; valid: "
                         f"{sorted(ACTIVATIONS)}")
    if fields["hidden_size"] % fields["num_attention_heads"]:
        raise ValueError(f"config key 'num_attention_heads' ({fields['num_attention_heads']}) does "
                         f"not divide 'hidden_size' ({fields['hidden_size']})")
    return fields


def _read_weights(folder: Path) -> dict[str, np.ndarray]:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            out: dict[str, np.ndarray] = {}
            for shard in shards:
                out.update(read_state_dict(folder / shard, suffixes=(".safetensors",)))
            return out
        return read_state_dict(path, suffixes=(".safetensors", ".bin"))
    raise FileNotFoundError(f"{str(folder)!r} holds none of the weight files {list(WEIGHT_FILES)}")


def _flax_path(key: str) -> tuple[str, ...]:
    parts = key.removeprefix("text_model.").split(".")
    if parts[:2] == ["encoder", "layers"]:
        parts = ["encoder", f"layers_{parts[2]}", *parts[3:]]
    leaf = parts[-1]
    is_norm = any(p.startswith(("layer_norm", "final_layer_norm")) for p in parts)
    is_embed = parts[0] == "embeddings"
    if leaf == "weight":
        leaf = "embedding" if is_embed else "scale" if is_norm else "kernel"
    return (*parts[:-1], leaf)


def convert_clip_text(state_dict: dict[str, Any], model: CLIPTextModel,
                      dtype: Any = np.float32) -> dict[str, Any]:
    """A transformers CLIPTextModel state dict -> ``{'params': ...}`` for ``model``.

    Raises:
      ValueError: an unexpected key, a missing parameter, or a shape mismatch (naming the key).
    """
    ids = jax.ShapeDtypeStruct((1, model.max_position_embeddings), jnp.int32)
    abstract = jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)
    expected = traverse_util.flatten_dict(nn.unbox(abstract)["params"])
    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        if key.removeprefix("text_model.") == "embeddings.position_ids":
            continue
        path = _flax_path(key)
        if path not in expected:
            raise ValueError(f"load_clip_text: unexpected key {key!r} in the checkpoint (no such "
                             f"parameter in CLIPTextModel with num_hidden_layers="
                             f"{model.num_hidden_layers})")
        arr = np.asarray(value)
        if path[-1] == "kernel":
            arr = arr.T
        if arr.shape != tuple(expected[path].shape):
            raise ValueError(f"load_clip_text: {key!r} has shape {np.shape(value)}, the model's "
                             f"{'/'.join(path)} needs {tuple(expected[path].shape)}")
        out[path] = arr.astype(dtype)
    missing = ["/".join(p) for p in expected if p not in out]
    if missing:
        raise ValueError(f"load_clip_text: the checkpoint lacks {len(missing)} parameters, first "
                         f"{missing[0]!r}")
    return {"params": traverse_util.unflatten_dict(out)}


def load_clip_text(folder: str | Path, dtype: Any = jnp.float32) -> tuple[CLIPTextModel, dict]:
    """``(module, variables)`` from a transformers CLIPTextModel ``save_pretrained`` folder.

    Args:
      folder: holds ``config.json`` and ``model.safetensors`` (or ``model.safetensors.index.json``
        + shards, or ``pytorch_model.bin``, which needs torch); an SD model folder's
        ``text_encoder/``.
      dtype: the parameters' and the computation's dtype (float64 needs ``jax_enable_x64``).

    Returns:
      ``module`` (`CLIPTextModel`), ``variables`` = ``{'params': ...}`` as jax arrays; call
      ``module.apply(variables, input_ids) -> (last_hidden_state, pooled)``.

    Raises:
      FileNotFoundError: no folder, no config.json, or no weights file.
      ValueError: an unsupported config value (naming the key), an unexpected / missing / misshapen
        parameter.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json (a transformers CLIPTextModel "
                                "save_pretrained folder, e.g. <sd model>/text_encoder)")
    fields = clip_text_fields(json.loads((folder / "config.json").read_text()))
    module = CLIPTextModel(**fields, dtype=dtype, param_dtype=dtype)
    variables = convert_clip_text(_read_weights(folder), module, dtype=np.dtype(dtype))
    return module, jax.tree_util.tree_map(jnp.asarray, variables)


__all__ = ["CONFIG_KEYS", "WEIGHT_FILES", "clip_text_fields", "convert_clip_text", "load_clip_text"]
