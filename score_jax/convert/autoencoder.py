"""Convert PyTorch AutoencoderKL (Stable Diffusion / LDM VAE) weights into score_jax variables.

Two key layouts are read, detected from the keys (or forced with ``layout=``):

* diffusers (``AutoencoderKL.state_dict()``, e.g. ``diffusion_pytorch_model.safetensors``):
  ``encoder.down_blocks.0.resnets.0.norm1.weight``, ``encoder.mid_block.attentions.0.to_q.weight``
  (``nn.Linear``), ``decoder.up_blocks.0.upsamplers.0.conv.weight``, ... Checkpoints saved by
  old diffusers versions name the attention ``query / key / value / proj_attn``: read too.
* original LDM / CompVis (``vae-ft-mse-840000-ema-pruned.safetensors``, or the
  ``first_stage_model.`` part of a full Stable Diffusion checkpoint):
  ``encoder.down.0.block.0.norm1.weight``, ``encoder.mid.attn_1.q.weight`` (1x1 conv,
  [C, C, 1, 1]), ``decoder.up.3.upsample.conv.weight`` (decoder levels numbered by resolution:
  ldm ``up.(L - 1 - i)`` is diffusers ``up_blocks.i``), ``nin_shortcut``, ``norm_out``.
  Keys of the training loss (``loss.*``: LPIPS and discriminator) are skipped.

Re-layout: conv OIHW -> HWIO, ``nn.Linear`` (out, in) and 1x1-conv attention projections
(out, in, 1, 1) -> Dense (in, out), GroupNorm ``weight`` -> ``scale``. Files are read with the
``safetensors`` package (``.safetensors``), ``numpy.load(allow_pickle=False)`` (``.npz``) or, for
``.ckpt`` / ``.pth`` / ``.bin``, ``torch.load(weights_only=True)``: no code from a file is run.

A diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
``save_pretrained`` writes it and the Hub serves ``stabilityai/sd-vae-ft-ema``) is read by
`load_diffusers_folder`, the architecture taken from its config.json.

Command line (output: flax msgpack of ``{'params': ...}``, read back with
``score_jax.checkpoint.load_variables``; defaults: a folder's config.json, else the SD VAE
configuration)::

    python -m score_jax.convert autoencoder_kl vae-ft-mse-840000-ema-pruned.safetensors sd_vae.msgpack
    python -m score_jax.convert autoencoder_kl sd-vae-ft-ema/ sd_vae.msgpack   # diffusers folder
    python -m score_jax.convert autoencoder_kl diffusion_pytorch_model.safetensors sd_vae.msgpack \\
        --block_out_channels 128,256,512,512 --layers_per_block 2 --latent_channels 4
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from score_jax.cli_args import ArgumentParser, existing_path
from score_jax.convert.reader import complete_params, place_param, read_state_dict
from score_jax.convert.reader import to_numpy as _to_numpy
from score_jax.files import atomic_write
from score_jax.models import get_model
from score_jax.models.autoencoder import AutoencoderKL

Params = dict[str, Any]
LAYOUTS = ("auto", "diffusers", "ldm")

_ATTN_DIFFUSERS = {"group_norm": "group_norm", "to_q": "to_q", "to_k": "to_k", "to_v": "to_v",
                   "to_out.0": "to_out_0", "query": "to_q", "key": "to_k", "value": "to_v",
                   "proj_attn": "to_out_0"}
_ATTN_LDM = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out_0"}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "conv_shortcut", "nin_shortcut": "conv_shortcut"}
_LEAF = re.compile(r"^(.*)\.(weight|bias)$")


def detect_layout(keys: Any) -> str:
    """'diffusers' or 'ldm' from the key names; ValueError if neither fits."""
    keys = list(keys)
    if any(".down_blocks." in k or ".mid_block." in k or ".up_blocks." in k for k in keys):
        return "diffusers"
    if any(".down." in k or ".mid." in k or ".up." in k for k in keys):
        return "ldm"
    raise ValueError("cannot tell the AutoencoderKL layout: no 'encoder.down_blocks.' / "
                     "'mid_block' (diffusers) nor 'encoder.down.' / 'mid.' (ldm) keys; first "
                     f"keys: {sorted(keys)[:5]}")


def _module_path_diffusers(module: str) -> tuple[str, ...] | None:
    """Flax module path of a diffusers module name (without the leaf), or None if unknown."""
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)", module)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"(quant_conv|post_quant_conv)", module)
    if m:
        return (m.group(1),)
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)", module)
    if m and m.group(3) in _RESNET:
        return m.group(1), "mid_block", f"resnets_{m.group(2)}", _RESNET[m.group(3)]
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module)
    if m and m.group(2) in _ATTN_DIFFUSERS:
        return m.group(1), "mid_block", "attentions_0", _ATTN_DIFFUSERS[m.group(2)]
    m = re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module)
    if m and m.group(4) in _RESNET:
        part, kind = m.group(1).split(".")
        return (part, f"{kind}_blocks_{m.group(2)}", f"resnets_{m.group(3)}",
                _RESNET[m.group(4)])
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", module)
    if m:
        return "encoder", f"down_blocks_{m.group(1)}", "downsamplers_0", "conv"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv", module)
    if m:
        return "decoder", f"up_blocks_{m.group(1)}", "upsamplers_0", "conv"
    return None


def _module_path_ldm(module: str, num_levels: int) -> tuple[str, ...] | None:
    """Flax module path of an ldm module name (without the leaf), or None if unknown."""
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)", module)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"(encoder|decoder)\.norm_out", module)
    if m:
        return m.group(1), "conv_norm_out"
    m = re.fullmatch(r"(quant_conv|post_quant_conv)", module)
    if m:
        return (m.group(1),)
    m = re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)", module)
    if m and m.group(3) in _RESNET:
        return (m.group(1), "mid_block", f"resnets_{int(m.group(2)) - 1}",
                _RESNET[m.group(3)])
    m = re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(\w+)", module)
    if m and m.group(2) in _ATTN_LDM:
        return m.group(1), "mid_block", "attentions_0", _ATTN_LDM[m.group(2)]
    m = re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)", module)
    if m and m.group(3) in _RESNET:
        return ("encoder", f"down_blocks_{m.group(1)}", f"resnets_{m.group(2)}",
                _RESNET[m.group(3)])
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv", module)
    if m:
        return "encoder", f"down_blocks_{m.group(1)}", "downsamplers_0", "conv"
    # ldm builds the decoder levels in reverse: up[L - 1] runs first (diffusers up_blocks.0).
    m = re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)", module)
    if m and m.group(3) in _RESNET:
        i = num_levels - 1 - int(m.group(1))
        return "decoder", f"up_blocks_{i}", f"resnets_{m.group(2)}", _RESNET[m.group(3)]
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv", module)
    if m:
        return "decoder", f"up_blocks_{num_levels - 1 - int(m.group(1))}", "upsamplers_0", "conv"
    return None


def _leaf(path: tuple[str, ...], leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Flax leaf name and re-laid-out array."""
    if leaf == "bias":
        return "bias", value
    if path[-1] in ("to_q", "to_k", "to_v", "to_out_0"):  # Linear or 1x1 conv -> Dense
        if value.ndim == 4:
            if value.shape[2:] != (1, 1):
                raise ValueError(f"attention projection {'/'.join(path)} has conv shape "
                                 f"{value.shape}; expected a 1x1 kernel")
            value = value[:, :, 0, 0]
        return "kernel", value.T
    if value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if value.ndim == 1:
        return "scale", value
    raise ValueError(f"unexpected {value.ndim}-D weight for {'/'.join(path)}")


def _strip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the loss terms; keep only ``first_stage_model.`` (or ``vae.``) keys if present."""
    keys = list(state_dict)
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in keys):
            return {k[len(prefix):]: state_dict[k] for k in keys if k.startswith(prefix)}
    return {k: state_dict[k] for k in keys if not k.startswith("loss.")}


def build_autoencoder(model_config: Any, num_channels: int | None = None) -> AutoencoderKL:
    """`get_model` for an ``autoencoder_kl`` config (``name`` may be omitted)."""
    cfg = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
    cfg.setdefault("name", "autoencoder_kl")
    if cfg["name"] != "autoencoder_kl":
        raise ValueError(f"model name {cfg['name']!r} is not 'autoencoder_kl'")
    return get_model(cfg, num_channels=num_channels)


def expected_params(model: AutoencoderKL) -> Params:
    """Shape-only parameter tree of ``model`` (``jax.eval_shape``, nothing is compiled)."""
    f = model.downsampling_factor
    x = jax.ShapeDtypeStruct((1, f, f, model.num_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def convert_autoencoder_kl(state_dict: Mapping[str, Any], model_config: Any, *,
                           num_channels: int | None = None, layout: str = "auto",
                           dtype: Any = None) -> dict[str, Params]:
    """Convert a PyTorch AutoencoderKL state dict (diffusers or LDM layout) to score_jax.

    Args:
      state_dict: mapping of key -> array (numpy or torch tensors); see the module docstring
        for both layouts. A ``first_stage_model.`` / ``vae.`` prefix selects the VAE part of a
        full pipeline checkpoint; ``loss.*`` keys are ignored.
      model_config: ``config.model`` of an ``autoencoder_kl`` (mapping or ConfigDict with
        ``block_out_channels``, ``layers_per_block``, ``latent_channels``, ``norm_num_groups``).
      num_channels: image channels (``config.data.num_channels``; default: the config's, or 3).
      layout: 'auto', 'diffusers' or 'ldm'.
      dtype: numpy dtype of the output arrays (default: as stored, e.g. float32 / float64).

    Returns:
      ``{'params': params}`` for ``AutoencoderKL.apply``.

    Raises:
      ValueError: unknown layout, an unrecognised key, a missing parameter or a shape that does
        not match the model the config builds (the message names the key and both shapes).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} unknown; valid: {list(LAYOUTS)}")
    model = build_autoencoder(model_config, num_channels)
    num_levels = len(model.block_out_channels)
    state = _strip(state_dict)
    if layout == "auto":
        layout = detect_layout(state)
    want = traverse_util.flatten_dict(dict(expected_params(model)))
    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, raw in state.items():
        m = _LEAF.match(key)
        module = m.group(1) if m else key
        path = (_module_path_diffusers(module) if layout == "diffusers"
                else _module_path_ldm(module, num_levels))
        if m is None or path is None:
            raise ValueError(f"unrecognised {layout} AutoencoderKL key {key!r}")
        stored = _to_numpy(raw)
        leaf, value = _leaf(path, m.group(2), stored)
        place_param(out, want, key, (*path, leaf), stored.shape, value, dtype, "the config builds")
    return complete_params(out, want, f"the {layout} state dict")


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a ``.safetensors``, ``.npz`` or torch (``.ckpt`` / ``.pth`` / ``.bin``) file, or
    of a diffusers folder's weights file (`load_diffusers_folder`), without running code from it
    (`reader.read_state_dict`; bf16 widened to float32). A torch
    file's ``state_dict`` entry is used if present.

    Raises:
      ValueError: an unknown suffix (naming the valid ones).
      ImportError: torch is needed for that file and not installed.
    """
    if Path(path).is_dir():  # a diffusers folder: its weights file (architecture: config.json)
        return load_diffusers_folder(path)[0]
    return read_state_dict(path, entries=("state_dict",),
                           suffixes=(".safetensors", ".npz", ".ckpt", ".pth", ".pt", ".bin"))


DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# diffusers AutoencoderKL config.json fields -> config.model fields of score_jax's AutoencoderKL
_DIFFUSERS_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups")


def load_diffusers_folder(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, config)`` of a diffusers ``AutoencoderKL`` folder (``save_pretrained`` /
    the Hub layout of ``stabilityai/sd-vae-ft-ema``: ``config.json`` +
    ``diffusion_pytorch_model.safetensors`` (or ``.bin``); a pipeline folder's ``vae/``
    subfolder is used when the folder itself has no config.json).

    ``config``: ``{"name": "autoencoder_kl", block_out_channels, layers_per_block,
    latent_channels, norm_num_groups}`` from config.json, plus ``in_channels`` and
    ``scaling_factor`` (None when absent).

    Raises:
      ValueError: no config.json / weights file (naming what is there), not an AutoencoderKL,
        or a feature score_jax's AutoencoderKL lacks (other block types, act_fn, no quant convs,
        no mid-block attention, latents_mean / shift_factor).
    """
    import json

    root = Path(path)
    if not (root / "config.json").is_file() and (root / "vae" / "config.json").is_file():
        root = root / "vae"
    if not (root / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is a folder without config.json (has "
                         f"{sorted(p.name for p in Path(path).iterdir())}); valid: a diffusers "
                         f"AutoencoderKL folder (config.json + {DIFFUSERS_WEIGHTS[0]})")
    cfg = json.loads((root / "config.json").read_text())
    weights = next((root / w for w in DIFFUSERS_WEIGHTS if (root / w).is_file()), None)
    if weights is None:
        raise ValueError(f"{str(root)!r} has no weights file; valid: one of {list(DIFFUSERS_WEIGHTS)} "
                         f"(has {sorted(p.name for p in root.iterdir())})")
    cls = cfg.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ValueError(f"{str(root)!r} holds a {cls!r}; valid: 'AutoencoderKL'")
    levels = len(cfg.get("block_out_channels", ()))
    unsupported = {
        "down_block_types": (cfg.get("down_block_types"), ["DownEncoderBlock2D"] * levels),
        "up_block_types": (cfg.get("up_block_types"), ["UpDecoderBlock2D"] * levels),
        "act_fn": (cfg.get("act_fn", "silu"), "silu"),
        "use_quant_conv": (cfg.get("use_quant_conv", True), True),
        "use_post_quant_conv": (cfg.get("use_post_quant_conv", True), True),
        "mid_block_add_attention": (cfg.get("mid_block_add_attention", True), True),
        "latents_mean": (cfg.get("latents_mean"), None),
        "shift_factor": (cfg.get("shift_factor"), None),
        "out_channels": (cfg.get("out_channels", cfg.get("in_channels", 3)), cfg.get("in_channels", 3)),
    }
    for key, (got, want) in unsupported.items():
        if got is not None and key.endswith("_types"):
            got = list(got)
        if got != want:
            raise ValueError(f"{str(root / 'config.json')!r}: {key}={got!r} is not supported by "
                             f"score_jax's AutoencoderKL; valid: {want!r}")
    config = {"name": "autoencoder_kl",
              **{k: (tuple(cfg[k]) if k == "block_out_channels" else int(cfg[k]))
                 for k in _DIFFUSERS_FIELDS},
              "in_channels": int(cfg.get("in_channels", 3)),
              "scaling_factor": cfg.get("scaling_factor")}
    return load_state_dict(weights), config


def _int_tuple(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.replace(" ", "").split(",") if v)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m score_jax.convert autoencoder_kl",
                            description="Convert a PyTorch AutoencoderKL (SD VAE) checkpoint to a "
                            "score_jax msgpack of {'params': ...}.")
    parser.add_argument("checkpoint", type=existing_path, help="a diffusers AutoencoderKL folder (config.json + "
                        "diffusion_pytorch_model.safetensors), or a .safetensors / .npz / .ckpt "
                        "/ .pth / .bin file")
    parser.add_argument("output", help="output .msgpack")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto")
    parser.add_argument("--block_out_channels", type=_int_tuple, default=None,
                        help="default: the folder's config.json, else 128,256,512,512 (SD)")
    parser.add_argument("--layers_per_block", type=int, default=None, help="default: config.json "
                        "or 2")
    parser.add_argument("--latent_channels", type=int, default=None, help="default: config.json "
                        "or 4")
    parser.add_argument("--norm_num_groups", type=int, default=None, help="default: config.json "
                        "or 32")
    parser.add_argument("--num_channels", type=int, default=None, help="default: config.json "
                        "or 3")
    args = parser.parse_args(argv)
    sd = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
          "latent_channels": 4, "norm_num_groups": 32, "in_channels": 3}
    scaling = None
    if Path(args.checkpoint).is_dir():
        state, found = load_diffusers_folder(args.checkpoint)
        scaling = found.pop("scaling_factor")
        sd.update({k: v for k, v in found.items() if k != "name"})
    else:
        state = load_state_dict(args.checkpoint)
    given = {k: getattr(args, k) for k in _DIFFUSERS_FIELDS}
    fields = {k: sd[k] if v is None else v for k, v in given.items()}
    num_channels = sd["in_channels"] if args.num_channels is None else args.num_channels
    config = {"name": "autoencoder_kl", **fields}
    variables = convert_autoencoder_kl(state, config, num_channels=num_channels,
                                       layout=args.layout, dtype=np.float32)
    atomic_write(args.output, serialization.msgpack_serialize(variables))
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(variables))
    print(f"wrote {args.output}: {n:,} parameters; architecture "
          f"{ {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()} }"
          + (f"; the folder's scaling_factor {scaling} (config.latent.scale_factor)"
             if scaling is not None else ""))


if __name__ == "__main__":
    main()
