"""Load a diffusers ``UNet2DConditionModel`` folder (Stable Diffusion's ``unet/``) into
`score_jax.models.unet_cond.UNet2DConditionModel`.

The folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or the torch
``diffusion_pytorch_model.bin``; ``variant="fp16"`` reads ``diffusion_pytorch_model.fp16.*``), as
``UNet2DConditionModel.save_pretrained`` writes it. The module is built from the config keys
(`unet_kwargs_from_diffusers`: keys of features not implemented raise ValueError naming them);
the tensors are read by the project's one reader (`reader.read_state_dict`; no code from the
file runs) and re-laid out one to one:

  ``a.0.b.weight`` -> ``a_0/b/kernel`` (a number joins the name before it: ``down_blocks.1`` ->
  ``down_blocks_1``, ``to_out.0`` -> ``to_out_0``, ``ff.net.0.proj`` -> ``ff/net_0/proj``);
  conv weights OIHW -> HWIO, linear (out, in) -> (in, out), norm ``weight`` -> ``scale``.

Example::

    module, variables = load_diffusers_unet("stable-diffusion-v1-5/unet")
    eps = module.apply(variables, latents, t, context=text_embeddings, train=False)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_jax.convert.reader import complete_params, place_param, read_state_dict, to_numpy
from score_jax.models import get_model
from score_jax.models.unet_cond import UNet2DConditionModel, unet_kwargs_from_diffusers

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def flax_path(key: str) -> tuple[tuple[str, ...], str]:
    """The flax module path and leaf kind of a diffusers state-dict key:
    ``down_blocks.0.attentions.1.proj_in.weight`` -> (('down_blocks_0', 'attentions_1',
    'proj_in'), 'weight')."""
    parts = key.split(".")
    leaf, parts = parts[-1], parts[:-1]
    path: list[str] = []
    for p in parts:
        if p.isdigit() and path:
            path[-1] = f"{path[-1]}_{p}"
        else:
            path.append(p)
    return tuple(path), leaf


def _relayout(value: np.ndarray, leaf: str) -> tuple[str, np.ndarray]:
    if leaf == "bias":
        return "bias", value
    if leaf != "weight":
        raise ValueError(f"unknown leaf {leaf!r}; valid: weight, bias")
    if value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return "kernel", value.T
    if value.ndim == 1:
        return "scale", value
    raise ValueError(f"unexpected {value.ndim}-D weight")


def abstract_params(model: UNet2DConditionModel) -> dict[tuple[str, ...], Any]:
    """Flat ``path -> ShapeDtypeStruct`` of the model's parameters (`jax.eval_shape` of init on
    the smallest input the architecture takes; parameter shapes do not depend on H, W)."""
    s = 2 ** (len(model.down_block_types) - 1)
    size = model.image_size or s
    x = jnp.zeros((1, size, size, model.num_channels), jnp.float32)
    ctx = jnp.zeros((1, 1, model.cross_attention_dim), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1,)),
                                               context=ctx))
    return traverse_util.flatten_dict(dict(shapes["params"]))


def convert_diffusers_unet(state_dict: Mapping[str, Any], model: UNet2DConditionModel, *,
                           dtype: Any = np.float32) -> dict[str, Any]:
    """``{'params': ...}`` for ``model`` from a diffusers ``UNet2DConditionModel`` state dict.

    Args:
      state_dict: name -> array (numpy, or anything `reader.to_numpy` takes).
      model: the module the config builds (`unet_kwargs_from_diffusers`).
      dtype: numpy dtype of the output arrays (None: as stored).

    Raises:
      ValueError: a key that maps to no parameter of the model, a shape mismatch (naming the
        key and both shapes), a key set twice, or parameters missing from the state dict.
    """
    want = abstract_params(model)
    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, raw in state_dict.items():
        path, leaf = flax_path(key)
        stored = to_numpy(raw)
        try:
            name, value = _relayout(stored, leaf)
        except ValueError as e:
            raise ValueError(f"UNet2DConditionModel key {key!r}: {e}") from None
        place_param(out, want, key, (*path, name), stored.shape, value, dtype,
                    "its config.json builds")
    return complete_params(out, want)


def _weights_file(folder: Path, variant: str | None) -> Path:
    names = WEIGHT_NAMES if variant is None else tuple(
        n.replace(".safetensors", f".{variant}.safetensors").replace(".bin", f".{variant}.bin")
        for n in WEIGHT_NAMES)
    for n in names:
        if (folder / n).exists():
            return folder / n
    raise FileNotFoundError(f"{str(folder)!r} holds none of {list(names)}")


def load_diffusers_unet(folder: str | Path, dtype: Any = jnp.float32, *,
                        variant: str | None = None) -> tuple[UNet2DConditionModel, dict]:
    """The module and variables of a diffusers ``UNet2DConditionModel`` folder.

    Args:
      folder: a directory with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or
        ``.bin``: needs torch) -- e.g. ``<stable-diffusion-v1-5>/unet``.
      dtype: dtype of the returned parameters (float32; float64 needs ``jax_enable_x64``;
        bfloat16 halves the memory). The module's compute dtype follows inputs and params.
      variant: read ``diffusion_pytorch_model.<variant>.safetensors`` (e.g. "fp16").

    Returns:
      (module, {'params': ...}); call ``module.apply(variables, x, t, context=tokens,
      train=False)`` with x (B, H, W, in_channels) NHWC.

    Raises:
      FileNotFoundError: no config.json or weights file.
      ValueError: config keys this port does not implement (all named), or weights that do not
        fit the config (`convert_diffusers_unet`).
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{str(cfg_path)!r} does not exist (a diffusers "
                                "UNet2DConditionModel folder has config.json and "
                                "diffusion_pytorch_model.safetensors)")
    config = json.loads(cfg_path.read_text())
    model = get_model(unet_kwargs_from_diffusers(config))
    state = read_state_dict(_weights_file(folder, variant), entries=())
    variables = convert_diffusers_unet(state, model, dtype=None)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), variables)
    return model, variables


__all__ = ["WEIGHT_NAMES", "abstract_params", "convert_diffusers_unet", "flax_path",
           "load_diffusers_unet"]
