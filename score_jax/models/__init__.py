"""Score networks: NCSN++ / DDPM++ (`NCSNpp`), the DDPM U-Net (`DDPM`), NCSN and NCSNv2, DiT,
Stable Diffusion's cross-attention U-Net (`UNet2DConditionModel`); the
latent-diffusion autoencoder (`AutoencoderKL`).

`get_model(config.model, image_size=..., num_channels=..., centered=...)` is the one place where
a reference-style ``config.model`` becomes a module; everything below it takes typed fields.
The interface a network provides is declared in `base` (`ScoreNetwork`; base class `Network`):
adding one is a module with that interface and its entry in `MODELS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from .autoencoder import AutoencoderKL
from .base import Network, ScoreNetwork, check_call_signature, smoke_config, validate_network
from .ddpm import DDPM
from .dit import DIT_PRESETS, DiT, dit_config
from .ncsnpp import NCSNpp
from .ncsnv2 import NCSN, NCSNv2, NCSNv2_128, NCSNv2_256
from .text_conditioned import TextConditioned, TextEncoder
from .unet_cond import SD_UNET_PRESETS, UNet2DConditionModel, unet_config
from .utils import get_sigmas, resolve_dtype

MODELS: dict[str, type[nn.Module]] = {
    "ncsnpp": NCSNpp,
    "ddpm": DDPM,
    "dit": DiT,
    "ncsn": NCSN,
    "ncsnv2_64": NCSNv2,
    "ncsnv2_128": NCSNv2_128,
    "ncsnv2_256": NCSNv2_256,
    "autoencoder_kl": AutoencoderKL,
    "unet2d_condition": UNet2DConditionModel,
    "text_conditioned": TextConditioned,
}

# config.model fields that exist in the reference configs but do not change the network, or
# whose only supported value is checked here.
_IGNORED = frozenset({"name", "ema_rate", "ema_warmup", "beta_min", "beta_max", "normalization_type"})
_FIXED = {"attention_type": ("ddpm",), "conv_size": (3,)}
_DATA_FIELDS = ("image_size", "num_channels", "centered")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    try:
        return cfg[key] if key in cfg else default
    except TypeError:
        return getattr(cfg, key, default)


def _items(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return dict(vars(cfg))


def model_kwargs(model_config: Any, *, image_size: int | None = None,
                 num_channels: int | None = None, centered: bool | None = None) -> dict[str, Any]:
    """The typed keyword arguments `get_model` passes to the model class (for inspection)."""
    cfg = _items(model_config)
    name = cfg.get("name")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid: {sorted(MODELS)}")
    cls = MODELS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    data = {"image_size": image_size, "num_channels": num_channels, "centered": centered}
    kw: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in _IGNORED or (key in ("dtype", "remat") and value is None):
            continue  # None: the network's own default (the schema's placeholders)
        if key in _FIXED:
            if value not in _FIXED[key]:
                raise ValueError(f"{name}: {key}={value!r} is not supported; valid: "
                                 f"{list(_FIXED[key])}")
            continue
        if key in fields:
            kw[key] = value
    for key in _DATA_FIELDS:
        if data[key] is not None and key in fields:  # AutoencoderKL has no `centered`
            kw[key] = data[key]
    for key, value in kw.items():
        if isinstance(value, list):
            kw[key] = tuple(value)
    if "dtype" in kw:
        kw["dtype"] = resolve_dtype(kw["dtype"])
    for key in ("nf", "num_res_blocks", "num_scales", "num_channels", "layers_per_block",
                "latent_channels", "norm_num_groups"):
        if key in kw and not isinstance(kw[key], tuple):
            kw[key] = int(kw[key])
    for key in ("sigma_min", "sigma_max", "dropout", "init_scale", "fourier_scale"):
        if key in kw:
            kw[key] = float(kw[key])
    if kw.get("num_classes") is not None:
        kw["num_classes"] = int(kw["num_classes"])
    if kw.get("image_size") is not None:
        kw["image_size"] = int(kw["image_size"])
    return kw


def get_model(model_config: Any, *, image_size: int | None = None,
              num_channels: int | None = None, centered: bool | None = None) -> nn.Module:
    """Build the network named ``model_config.name`` from a reference-style ``config.model``.

    The reference networks also read ``config.data``; pass those values as keywords, e.g.
    ``get_model(config.model, image_size=config.data.image_size,
    num_channels=config.data.num_channels, centered=config.data.centered)``. Fields of the same
    names inside ``model_config`` are used when the keywords are None. Extra model fields:
    ``num_classes`` (class conditioning; label num_classes is the null label), ``dtype``
    (compute dtype name, e.g. 'bfloat16'; params stay float32) and ``remat``.

    Returns:
      The flax module; call ``model.apply(variables, x, labels, train=False)`` (x NHWC).

    Raises:
      ValueError: unknown name (the valid names are listed), an unknown option value, or an
        image size the architecture cannot take.
    """
    name = _get(model_config, "name")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid: {sorted(MODELS)}")
    model = MODELS[name](**model_kwargs(model_config, image_size=image_size,
                                        num_channels=num_channels, centered=centered))
    validate_network(model)  # Network.validate; a plain nn.Module without one is accepted
    return model


def smoke_model_config(model_config: Any) -> None:
    """Shrink ``model_config`` in place for a config's ``:smoke`` variant: the network's own
    ``smoke_config`` (`Network.smoke_config`); no name, or a network without one: unchanged."""
    name = _get(model_config, "name")
    if name is not None and name in MODELS:
        smoke_config(MODELS[name], model_config)


__all__ = ["AutoencoderKL", "DDPM", "DIT_PRESETS", "MODELS", "NCSN", "DiT", "NCSNpp", "NCSNv2",
           "NCSNv2_128", "NCSNv2_256", "SD_UNET_PRESETS", "TextConditioned", "TextEncoder",
           "UNet2DConditionModel", "dit_config", "get_model", "get_sigmas", "model_kwargs",
           "unet_config",
           "Network", "ScoreNetwork", "check_call_signature", "smoke_model_config",
           "validate_network"]
