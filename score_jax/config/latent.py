"""The config boundary of latent diffusion: every read of ``config.latent`` (and of the
autoencoder objective's keys) lives here; `score_jax.latent` below takes explicit arguments.

- `is_latent`, `validate_latent` (called by `validate_config`), `check_no_bpd`, `check_samplable`;
- `autoencoder_fields_from_config`, `load_autoencoder_from_config`, `latent_space_from_config`
  (what `build` bundles into ``Built.latent``);
- `resolve_config` (sample.py, evaluate.py: the scale factor and the autoencoder recorded in
  ``<workdir>/latent.json``) and `resolve_scale_factor` (train.py: read, given, or computed on
  the first batch, then recorded).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from score_jax import latent as latent_lib
from score_jax.config.objectives import objective_from_config
from score_jax.models import autoencoder as ae_lib

log = logging.getLogger("score_jax.latent")


def is_latent(config) -> bool:
    """True for a stage-2 config (``config.latent.autoencoder_checkpoint`` set)."""
    lat = config.get("latent")
    return lat is not None and lat.get("autoencoder_checkpoint") is not None


def validate_latent(config) -> None:
    """Latent / autoencoder checks of ``validate_config``; ValueError naming the value."""
    t, m = config.training, config.model
    objective = t.get("objective", "score")
    ae, model_name = latent_lib.OBJECTIVE, latent_lib.MODEL_NAME
    if objective == ae or m.get("name") == model_name:
        if objective != ae or m.get("name") != model_name:
            raise ValueError(f"config.training.objective={objective!r} with config.model.name="
                             f"{m.get('name')!r}: the autoencoder objective trains model "
                             f"{model_name!r} and only it; valid: both or neither")
        if not config.data.centered:
            raise ValueError("config.data.centered=False with objective 'autoencoder': the "
                             "autoencoder works in [-1, 1] (as SD's VAE); valid: True")
        if t.get("reconstruction", "l1") not in ae_lib.RECONSTRUCTIONS:
            raise ValueError(f"config.training.reconstruction={t.reconstruction!r} unknown; "
                             f"valid choices: {list(ae_lib.RECONSTRUCTIONS)}")
        if not float(t.get("kl_weight", 0.0)) >= 0:
            raise ValueError(f"config.training.kl_weight={t.kl_weight!r} must be >= 0")
    lat = config.get("latent")
    if lat is None:
        return
    for k in lat.keys():
        if k not in latent_lib.LATENT_KEYS:
            raise ValueError(f"config.latent.{k} is not a known key; valid keys: "
                             f"{list(latent_lib.LATENT_KEYS)}")
    for k in (lat.get("autoencoder") or {}).keys():
        if k not in latent_lib.AE_FIELDS:
            raise ValueError(f"config.latent.autoencoder.{k} is not a known key; valid keys: "
                             f"{list(latent_lib.AE_FIELDS)}")
    if not is_latent(config):
        return
    if objective == ae:
        raise ValueError("config.latent.autoencoder_checkpoint is set with objective "
                         "'autoencoder': stage 1 trains the autoencoder itself; unset one")
    sf = lat.get("scale_factor")
    if sf is not None and not float(sf) > 0:
        raise ValueError(f"config.latent.scale_factor={sf!r} must be > 0 (or None: 1 / std of "
                         f"the first batch's latents)")


def check_no_bpd(config) -> None:
    """Raise ValueError(`latent.BPD_MESSAGE`) for a latent diffusion config (and for a stage-1
    autoencoder, which has no likelihood)."""
    if is_latent(config):
        raise ValueError(latent_lib.BPD_MESSAGE)
    if objective_from_config(config) == latent_lib.OBJECTIVE:
        raise ValueError("bits/dim do not apply to an autoencoder (stage 1 of latent diffusion)")


def check_samplable(config) -> None:
    """A stage-1 autoencoder has no sampler: raise ValueError pointing at its reconstructions."""
    if objective_from_config(config) == latent_lib.OBJECTIVE:
        raise ValueError("an autoencoder (objective 'autoencoder', stage 1 of latent diffusion) "
                         "has no sampler: its reconstructions are in <workdir>/samples/iter_*/; "
                         "sample a stage-2 model (config.latent.autoencoder_checkpoint)")


def autoencoder_fields_from_config(config) -> dict:
    """The AutoencoderKL fields of stage 2 (`latent.autoencoder_fields`):
    ``config.latent.autoencoder`` where set, else the ``model`` section of ``<stage-1
    workdir>/config.json``, else the SD VAE defaults."""
    return latent_lib.autoencoder_fields(config.latent.autoencoder_checkpoint,
                                         config.latent.get("autoencoder"))


def load_autoencoder_from_config(config) -> tuple[nn.Module, dict, str]:
    """``(AutoencoderKL, {'params': ...}, file)`` of ``config.latent.autoencoder_checkpoint``
    (`latent.load_autoencoder`), checked against the configured architecture.

    Raises:
      ValueError: the path does not exist (checked here, not in `validate_latent`: configs name
        a default path), or a workdir without ``autoencoder_ema.msgpack``.
    """
    d = config.data
    return latent_lib.load_autoencoder(config.latent.autoencoder_checkpoint,
                                       autoencoder_fields_from_config(config),
                                       int(d.image_size), int(d.num_channels))


def latent_space_from_config(config, mesh=None) -> latent_lib.LatentSpace:
    """The frozen autoencoder of a stage-2 config (weights on the host, or replicated on
    ``mesh``; ``config.build`` passes them to the steps as ``frozen["autoencoder"]`` and rebinds
    the space to the placed arrays, `latent.bind_weights`); ``config.latent.scale_factor`` must be
    resolved (`resolve_scale_factor` / `resolve_config`)."""
    model, variables, file = load_autoencoder_from_config(config)
    sf = config.latent.get("scale_factor")
    if sf is None:
        raise ValueError("config.latent.scale_factor is None: train once (it is computed on the "
                         f"first batch and stored in <workdir>/{latent_lib.LATENT_FILE}), pass "
                         "--workdir, or set it (SD's VAE: 0.18215)")
    return latent_lib.latent_space(model, variables, float(sf), config.data.image_size,
                                   source=file, mesh=mesh)


def _with_latent(config, scale_factor: float, checkpoint: str | None = None):
    config = config.copy_and_resolve_references()
    config.latent.scale_factor = float(scale_factor)
    if checkpoint is not None:
        config.latent.autoencoder_checkpoint = checkpoint
    return config


def resolve_config(config, workdir: str | None):
    """A copy of a stage-2 config with ``latent.scale_factor`` read from
    ``<workdir>/latent.json`` (sample.py, evaluate.py, a resumed training run) and
    ``latent.autoencoder_checkpoint`` the autoencoder recorded there
    (`latent.recorded_autoencoder`); other configs are returned unchanged.

    Raises:
      ValueError: the recorded autoencoder is gone or changed and the config names another.
    """
    if not is_latent(config):
        return config
    stored = latent_lib.read_latent_record(workdir)
    if stored is None:
        return config
    sf = config.latent.get("scale_factor")
    if sf is not None and not np.isclose(float(sf), stored["scale_factor"]):
        log.warning("config.latent.scale_factor=%s differs from %s in %s/%s: using the stored "
                    "one (the model was trained with it)", sf, stored["scale_factor"], workdir,
                    latent_lib.LATENT_FILE)
    checkpoint = latent_lib.recorded_autoencoder(config.latent.autoencoder_checkpoint, workdir,
                                                  stored)
    return _with_latent(config, stored["scale_factor"], checkpoint)


def resolve_scale_factor(config, workdir: str, first_batch: Callable[[], Any]):
    """Stage 2, before training: the scale factor is read from ``<workdir>/latent.json`` (a
    resumed run), else taken from ``config.latent.scale_factor``, else computed as 1 / std of
    the latents of ``first_batch()`` (images in [0, 1], the first training batch, LDM's
    ``scale_by_std``); then stored in ``latent.json`` with its origin and logged
    (`latent.write_latent_record`). Returns the config copy with ``latent.scale_factor`` set."""
    path = os.path.join(workdir, latent_lib.LATENT_FILE)
    if latent_lib.read_latent_record(workdir) is not None:
        config = resolve_config(config, workdir)
        log.info("latent scale factor %.6g (from %s)", config.latent.scale_factor, path)
        return config
    sf = config.latent.get("scale_factor")
    model, variables, file = load_autoencoder_from_config(config)
    if sf is None:
        batch = first_batch()
        images = batch["image"] if isinstance(batch, Mapping) else batch
        sf = latent_lib.compute_scale_factor(model, variables, np.asarray(images))
        origin = f"1 / std of the latents of the first training batch ({len(images)} images)"
    else:
        origin = "config.latent.scale_factor"
    latent_lib.write_latent_record(workdir, scale_factor=float(sf), origin=origin,
                                   checkpoint=config.latent.autoencoder_checkpoint, file=file,
                                   model=model, image_size=int(config.data.image_size))
    log.warning("latent scale factor %.6g (%s), stored in %s", sf, origin, path)
    return _with_latent(config, sf)


__all__ = ["is_latent", "validate_latent", "check_no_bpd", "check_samplable",
           "autoencoder_fields_from_config", "load_autoencoder_from_config",
           "latent_space_from_config", "resolve_config", "resolve_scale_factor"]
