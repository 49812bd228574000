"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"): stage 1 (train the KL autoencoder, ``training.objective="autoencoder"``) and stage 2
(any diffusion objective of the project on the latents of a frozen autoencoder,
``latent.autoencoder_checkpoint``).

This module takes explicit arguments only (paths, the scale factor, shapes, the autoencoder's
fields); what reads the config's ``latent`` section lives at the config boundary,
`score_jax.config.latent` (validation, `latent_space_from_config`, `resolve_config`,
`resolve_scale_factor`).

Stage 1. The objective is ``models.autoencoder.autoencoder_loss`` (L1 or L2 reconstruction of a
posterior sample + ``training.kl_weight`` x KL; no perceptual / adversarial term) through the
project's train step (same optimiser, EMA, checkpoints). The evaluation loss is the validation
reconstruction error of the posterior mean (per-example sum of |x - D(mean)| or its square in
the model's [-1, 1] range). Snapshots write a grid of input / reconstruction pairs, and every
checkpoint exports the EMA autoencoder to ``<workdir>/autoencoder_ema.msgpack`` (the file stage 2
loads; a converted Stable Diffusion VAE ``.msgpack`` is loaded the same way).

Stage 2. Images in [0, 1] -> 2x - 1 (the autoencoder's range, as SD's VAE) -> posterior MEAN of
q(z | x) -> ``scale_factor`` z, the latent the diffusion model is trained on. The mean, not a
sample (LDM samples): with the small KL weights of stage 1 (LDM: 1e-6) the posterior std is a
negligible fraction of the latents' spread, the target becomes deterministic, and what is
decoded at sampling time is exactly what the reconstruction error measured. Encoding is done ON
THE FLY inside the jitted train step (frozen parameters, ``lax.stop_gradient``; the weights are
the step's ``frozen`` argument ``{"autoencoder": ...}``, laid out like the parameters, FSDP-sharded
under ``parallel.fsdp``, not constants of the step and not in its checkpoint: `encoded_loss_fn`,
`bind_weights`), not cached:
it costs one encoder forward per step (not measured separately), but the data
pipeline stays the project's (per-step determinism, resume, multi-host shards, random flips
applied to images, not latents) and there is no cache to invalidate when the autoencoder
changes. ``scale_factor`` = 1 / std of the latents of the first training batch (LDM's
``scale_by_std``) unless ``latent.scale_factor`` is set (SD's VAE: 0.18215); it is
computed once, written to ``<workdir>/latent.json`` (with the absolute path and SHA-256 of the
autoencoder) and read from there on resume, by sample.py and by evaluate.py, which use the
recorded autoencoder (`recorded_autoencoder`), not whatever the config's path names now
(`read_latent_record` / `write_latent_record`).
Sampling draws latents with any sampler and decodes them
(``decode_latents``) by one jitted `Decoder` taking the same placed weights as an argument.
Bits/dim do not apply (the model's density is over latents, not pixels):
`score_jax.config.latent.check_no_bpd` refuses with `BPD_MESSAGE`.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax import parallel
from score_jax.files import atomic_write_json, file_sha256
from score_jax.models import autoencoder as ae_lib
from score_jax.train_step import TrainState

log = logging.getLogger("score_jax.latent")

OBJECTIVE = "autoencoder"
MODEL_NAME = "autoencoder_kl"
AUTOENCODER_FILE = "autoencoder_ema.msgpack"
LATENT_FILE = "latent.json"
BPD_MESSAGE = ("bits/dim do not apply to a latent diffusion model: its likelihood is a density "
               "over the autoencoder's latents, not over pixels (no number is reported)")
# keys of the config's ``latent`` section; its ``autoencoder`` holds AutoencoderKL fields
LATENT_KEYS = ("autoencoder_checkpoint", "scale_factor", "autoencoder")
AE_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups")


# ----------------------------------------------------------------------------------------------
# Stage 1: the autoencoder objective (pure, config-free)
# ----------------------------------------------------------------------------------------------
def autoencoder_init_state(key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                           image_shape: tuple[int, int, int]) -> TrainState:
    """`train_step.init_state` for an `AutoencoderKL` (``model.init(key, x)``: no noise label,
    no ``train`` flag)."""
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    params = model.init(key, x)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=tx.init(params))


def jit_autoencoder_init(model: nn.Module, tx: optax.GradientTransformation,
                         image_shape: tuple[int, int, int], mesh, *,
                         min_shard_size: int = parallel.MIN_SHARD_SIZE) -> tuple[Callable, Any]:
    """`train_step.jit_init` for an autoencoder: ``(init_fn(key) -> TrainState (replicated, or
    FSDP-sharded on a mesh with an "fsdp" axis: ``parallel.state_shardings``), abstract_state)``."""
    init = functools.partial(autoencoder_init_state, model=model, tx=tx,
                             image_shape=tuple(image_shape))
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = parallel.state_shardings(abstract, mesh, min_shard_size)
    return (jax.jit(init, out_shardings=shardings),
            parallel.with_shardings(abstract, shardings))


def reconstruction_error(x: jax.Array, x_rec: jax.Array, reconstruction: str = "l1") -> jax.Array:
    """mean_b sum_{h,w,c} d(x, x_rec), d = |.| ("l1") or (.)^2 ("l2") (the ``rec`` term of
    ``autoencoder_loss``). Returns a scalar."""
    diff = x_rec - x
    d = jnp.abs(diff) if reconstruction == "l1" else diff ** 2
    return jnp.mean(jnp.sum(d, axis=tuple(range(1, d.ndim))))


def autoencoder_objective(model: nn.Module, *, kl_weight: float, reconstruction: str,
                          train: bool) -> Callable:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` on batches in the model's range.

    train: ``autoencoder_loss`` (rec of a posterior sample + kl_weight x KL, LDM
    ``contperceptual.py`` without LPIPS / discriminator). Evaluation: the validation
    reconstruction error of the posterior mean (deterministic), aux {"rec", "kl"}.

    Raises:
      ValueError: ``reconstruction`` not in ("l1", "l2") or ``kl_weight`` < 0.
    """
    if reconstruction not in ae_lib.RECONSTRUCTIONS:
        raise ValueError(f"reconstruction={reconstruction!r} unknown; valid "
                         f"choices: {list(ae_lib.RECONSTRUCTIONS)}")
    if not kl_weight >= 0:
        raise ValueError(f"kl_weight={kl_weight!r} must be >= 0")
    if train:
        return functools.partial(ae_lib.autoencoder_loss, model=model, kl_weight=kl_weight,
                                 reconstruction=reconstruction)

    def eval_fn(variables, batch, key):
        del key
        x = ae_lib._images(batch)
        x_rec, mean, logvar = model.apply(variables, x)
        rec = reconstruction_error(x, x_rec, reconstruction)
        return rec, {"rec": rec, "kl": jnp.mean(ae_lib.gaussian_kl(mean, logvar))}

    return eval_fn


def reconstruct(model: nn.Module, params: Any, images: np.ndarray) -> np.ndarray:
    """Decode(posterior mean) of ``images`` (N, H, W, C) in [0, 1] (the autoencoder sees 2x - 1);
    returns numpy images in [0, 1] (clipped)."""
    x = 2.0 * jnp.asarray(images, jnp.float32) - 1.0
    x_rec, _, _ = jax.jit(model.apply)({"params": params}, x)
    return np.clip((np.asarray(x_rec) + 1.0) / 2.0, 0.0, 1.0)


def export_autoencoder(workdir: str, params: Any) -> str:
    """Write ``{'params': params}`` to ``<workdir>/autoencoder_ema.msgpack`` (what stage 2 loads
    from a stage-1 workdir); returns the path."""
    from score_jax.checkpoint import save_variables  # atomic (files.atomic_write)

    path = os.path.join(workdir, AUTOENCODER_FILE)
    save_variables({"params": jax.device_get(params)}, path)
    return path


# ----------------------------------------------------------------------------------------------
# Stage 2: diffusion on latents (pure, config-free)
# ----------------------------------------------------------------------------------------------
FROZEN_KEY = "autoencoder"  # variables["frozen"][FROZEN_KEY]: the frozen autoencoder's weights


class LatentSpace(NamedTuple):
    """The frozen autoencoder of a latent diffusion model.

    ``latent_shape`` (h, w, latent_channels) = (H / f, W / f, latent_channels) is the diffusion
    model's image shape; ``encode`` maps images in [0, 1] to scaled latents, ``decode`` scaled
    latents to images in [-1, 1]. ``decode`` is ONE jitted decoder taking ``variables`` as an
    argument (not constants of it); ``variables`` are the weights it reads: ``config.build``
    rebinds them (`bind_weights`) to the arrays the train step holds (its ``frozen`` argument,
    FSDP-sharded under ``parallel.fsdp``). ``encode`` closes over ``variables`` (for use outside a
    jitted step: inside one they would become constants of it); the stage-2 loss encodes with
    `encode_with`, reading the weights from ``variables["frozen"]["autoencoder"]``
    (`encoded_loss_fn`)."""

    model: nn.Module  # AutoencoderKL
    variables: Any  # {'params': ...}: host arrays, or the train step's placed frozen weights
    scale_factor: float
    latent_shape: tuple[int, int, int]
    source: str
    encode: Callable
    decode: Callable

    def encode_with(self, variables: Any, x: jax.Array) -> jax.Array:
        """Scaled latents ``scale_factor * mean(q(z | 2x - 1))`` (B, h, w, latent_channels) of
        images ``x`` (B, H, W, C) in [0, 1] under the autoencoder weights ``variables`` (an input,
        e.g. traced inside the train step), ``lax.stop_gradient``-ed."""
        z = ae_lib.encode_to_latents(self.model, variables, 2.0 * x - 1.0,
                                     scale_factor=self.scale_factor)
        return jax.lax.stop_gradient(z)


class Decoder:
    """``decode(z) -> x``: images D(z / scale_factor) (B, H, W, C) in [-1, 1] (unclipped) of
    scaled latents ``z`` (B, h, w, latent_channels), by ONE jitted function taking the weights
    ``variables`` as its second argument (``jitted(z, variables)``: not constants of the
    program; sharded weights stay sharded). ``lower(z)`` lowers it (tests check its constants)."""

    def __init__(self, model: nn.Module, scale_factor: float, variables: Any):
        self.variables = variables
        self.jitted = jax.jit(lambda z, v: ae_lib.decode_latents(model, v, z,
                                                                 scale_factor=scale_factor))

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.jitted(z, self.variables)

    def lower(self, z: jax.Array):
        return self.jitted.lower(z, self.variables)


def bind_weights(space: LatentSpace, variables: Any) -> LatentSpace:
    """``space`` reading the autoencoder weights ``variables`` (``{'params': ...}``, e.g. the
    train step's placed, FSDP-sharded ``frozen["autoencoder"]``): ``encode`` / ``decode`` (a
    `Decoder`) pass them to the same computations; nothing is copied."""
    return space._replace(variables=variables,
                          encode=functools.partial(space.encode_with, variables),
                          decode=Decoder(space.model, space.scale_factor, variables))


def latent_space(model: nn.Module, variables: Any, scale_factor: float, image_size: int, *,
                 source: str = "", mesh=None) -> LatentSpace:
    """Bundle a frozen autoencoder: images (B, S, S, C) in [0, 1] -> latents
    ``scale_factor * mean(q(z | 2x - 1))`` (B, S/f, S/f, latent_channels), and back with
    ``D(z / scale_factor)`` in [-1, 1] (ldm ``encode_first_stage`` / ``decode_first_stage``).
    ``mesh``: the weights are replicated on it (``config.build`` instead places them as the
    train step's frozen argument, `bind_weights`)."""
    if mesh is not None:
        variables = parallel.replicate(variables, mesh)
    f = model.downsampling_factor
    shape = (int(image_size) // f, int(image_size) // f, int(model.latent_channels))
    space = LatentSpace(model, variables, float(scale_factor), shape, source, None, None)
    return bind_weights(space, variables)


def frozen_autoencoder(variables: Mapping, key: str = FROZEN_KEY) -> Any:
    """``variables["frozen"][key]``: the autoencoder weights a stage-2 step passes to its loss;
    ValueError naming what to pass when they are missing."""
    frozen = variables.get("frozen") or {}
    if key not in frozen:
        raise ValueError(f"the frozen autoencoder's weights are read from variables['frozen']"
                         f"[{key!r}]; pass frozen={{{key!r}: {{'params': ...}}}} to the train / "
                         f"eval step (config.build does: train_step.frozen); got frozen keys "
                         f"{sorted(frozen)}")
    return frozen[key]


def _without_autoencoder(variables: Mapping, key: str) -> dict:
    """``variables`` less ``frozen[key]`` (and less ``frozen`` when nothing else is in it): what
    the diffusion objective's loss sees."""
    out = dict(variables)
    rest = {k: v for k, v in (out.pop("frozen", None) or {}).items() if k != key}
    if rest:
        out["frozen"] = rest
    return out


def encoded_loss_fn(loss_fn: Callable, space: LatentSpace, key: str = FROZEN_KEY) -> Callable:
    """``loss_fn`` (on batches in the diffusion model's space, no scaling) applied to the latents
    of batches of images in [0, 1], encoded on the fly by ``space.encode_with`` under the weights
    ``variables["frozen"][key]`` (the step's frozen argument, not constants of it); ``loss_fn``
    sees ``variables`` without them.

    Raises:
      ValueError: (when called) ``variables["frozen"]`` has no ``key``.
    """

    def fn(variables, batch, rng):
        weights = frozen_autoencoder(variables, key)
        if isinstance(batch, Mapping):
            batch = dict(batch, image=space.encode_with(weights, batch["image"]))
        else:
            batch = space.encode_with(weights, batch)
        return loss_fn(_without_autoencoder(variables, key), batch, rng)

    return fn


def compute_scale_factor(model: nn.Module, variables: Any, images: np.ndarray) -> float:
    """LDM's ``scale_by_std``: 1 / std (ddof = 1) of the posterior means of ``images`` in [0, 1]
    (``autoencoder.latent_scale_factor``)."""
    z = jax.jit(lambda v, x: ae_lib.encode_to_latents(model, v, 2.0 * x - 1.0))(
        variables, jnp.asarray(images, jnp.float32))
    return float(ae_lib.latent_scale_factor(z))


def autoencoder_file(checkpoint: str) -> str:
    """The weights file of an autoencoder checkpoint (a stage-1 workdir or a ``.msgpack`` file)."""
    return os.path.join(checkpoint, AUTOENCODER_FILE) if os.path.isdir(checkpoint) else checkpoint


def autoencoder_fields(checkpoint: str, overrides: Mapping | None = None) -> dict:
    """The AutoencoderKL fields (a ``get_model`` dict) of the autoencoder at ``checkpoint``:
    ``overrides`` where set (not None), else the ``model`` section of ``<stage-1
    workdir>/config.json``, else the SD VAE defaults."""
    out = {"name": MODEL_NAME}
    cfg_json = os.path.join(checkpoint, "config.json")
    if os.path.isdir(checkpoint) and os.path.isfile(cfg_json):
        with open(cfg_json) as f:
            stage1 = json.load(f).get("model", {})
        out.update({k: stage1[k] for k in AE_FIELDS if stage1.get(k) is not None})
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return out


def load_autoencoder(checkpoint: str, fields: Mapping, image_size: int,
                     num_channels: int) -> tuple[nn.Module, dict, str]:
    """``(AutoencoderKL, {'params': ...}, file)`` of the autoencoder at ``checkpoint`` (a
    stage-1 workdir or a converted ``.msgpack``), built from ``fields`` (`autoencoder_fields`)
    for images (image_size, image_size, num_channels), its parameter tree checked against that
    architecture.

    Raises:
      ValueError: the path does not exist, or a workdir without ``autoencoder_ema.msgpack``.
    """
    from score_jax import checkpoint as ckpt_lib
    from score_jax import models

    if not os.path.exists(checkpoint):
        raise ValueError(f"latent.autoencoder_checkpoint={checkpoint!r} does not exist; give "
                         f"a stage-1 workdir (with {AUTOENCODER_FILE}) or a converted .msgpack")
    if os.path.isdir(checkpoint) and not os.path.isfile(os.path.join(checkpoint,
                                                                      AUTOENCODER_FILE)):
        raise ValueError(f"latent.autoencoder_checkpoint={checkpoint!r} has no "
                         f"{AUTOENCODER_FILE}: train stage 1 there first")
    file = autoencoder_file(checkpoint)
    model = models.get_model(dict(fields), image_size=int(image_size),
                             num_channels=int(num_channels))
    variables = ckpt_lib.load_variables(file)
    params = variables.get("params", variables)
    x = jnp.zeros((1, int(image_size), int(image_size), int(num_channels)))
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    ckpt_lib.check_tree(params, expected, f"autoencoder {file}")
    return model, {"params": params}, file


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def read_latent_record(workdir: str | None) -> dict | None:
    """``<workdir>/latent.json`` (the scale factor and autoencoder a stage-2 model was trained
    with), or None when there is none."""
    if workdir is None:
        return None
    path = os.path.join(workdir, LATENT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_latent_record(workdir: str, *, scale_factor: float, origin: str, checkpoint: str,
                        file: str, model: nn.Module, image_size: int) -> dict:
    """Write ``<workdir>/latent.json`` atomically (process 0 only): the scale factor and its
    origin, the absolute autoencoder checkpoint and weights file, the file's SHA-256 and the
    latent shape. Returns the record."""
    f = model.downsampling_factor
    info = {"scale_factor": float(scale_factor), "origin": origin,
            "autoencoder_checkpoint": os.path.abspath(checkpoint),
            "autoencoder": os.path.abspath(file), "autoencoder_sha256": file_sha256(file),
            "latent_shape": [int(image_size) // f, int(image_size) // f,
                             int(model.latent_channels)]}
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        atomic_write_json(os.path.join(workdir, LATENT_FILE), info, indent=2, sort_keys=False)
    return info


def recorded_autoencoder(checkpoint: str, workdir: str, stored: Mapping) -> str:
    """The autoencoder checkpoint a stage-2 workdir must use, given the one the config names
    (``checkpoint``): the autoencoder ``latent.json`` (``stored``) recorded at training time,
    not whatever the config's (often relative, default ``workdirs/digits_ae``) path names in the
    current folder (issue 26 item 0b: from another folder it decoded with another autoencoder,
    exit 0 and noise).

    ``latent.json`` records the absolute ``autoencoder_checkpoint`` and the SHA-256 of its weights
    file. Rule: ``checkpoint`` is kept if its file has the recorded fingerprint; else the
    recorded checkpoint is used if its file still has it (logged as a warning); else ValueError
    naming both paths. Records written before the fingerprint (``autoencoder`` path only):
    ``checkpoint``'s file must be the recorded file, else ValueError naming both.

    Raises:
      ValueError: neither ``checkpoint`` nor the recorded autoencoder is the one trained with.
    """
    path = os.path.join(workdir, LATENT_FILE)
    mine = checkpoint
    mine_file = autoencoder_file(mine)
    rec_ckpt, rec_file = stored.get("autoencoder_checkpoint"), stored.get("autoencoder")
    sha = stored.get("autoencoder_sha256")
    if sha is None:  # an older record: compare the paths only
        if rec_file is None or _same_file(mine_file, rec_file):
            return mine
        raise ValueError(f"latent.autoencoder_checkpoint={mine!r} ({os.path.abspath(mine_file)})"
                         f" is not the autoencoder {rec_file!r} recorded in {path} at training "
                         f"time; pass --config.latent.autoencoder_checkpoint=<the recorded one>")
    if os.path.isfile(mine_file) and file_sha256(mine_file) == sha:
        return mine
    if rec_ckpt is not None and os.path.isfile(autoencoder_file(rec_ckpt)) and \
            file_sha256(autoencoder_file(rec_ckpt)) == sha:
        log.warning("latent.autoencoder_checkpoint=%r is not the autoencoder this model "
                    "was trained with; using %s, recorded in %s", mine, rec_ckpt, path)
        return rec_ckpt
    have = "does not exist" if not os.path.isfile(mine_file) else "holds other weights"
    raise ValueError(f"the autoencoder this model was trained with ({rec_ckpt!r}, sha256 "
                     f"{sha[:12]}..., recorded in {path}) is gone or has changed, and "
                     f"latent.autoencoder_checkpoint={mine!r} ({os.path.abspath(mine_file)}) "
                     f"{have}: decoding with another autoencoder gives noise. Restore the "
                     f"recorded autoencoder or retrain stage 2")


__all__ = ["OBJECTIVE", "MODEL_NAME", "AUTOENCODER_FILE", "LATENT_FILE", "BPD_MESSAGE",
           "LATENT_KEYS", "AE_FIELDS",
           "autoencoder_init_state", "jit_autoencoder_init", "reconstruction_error",
           "autoencoder_objective", "reconstruct", "export_autoencoder",
           "FROZEN_KEY", "LatentSpace", "Decoder", "latent_space", "bind_weights", "frozen_autoencoder",
           "encoded_loss_fn", "compute_scale_factor",
           "autoencoder_file", "autoencoder_fields", "load_autoencoder", "file_sha256",
           "read_latent_record", "write_latent_record", "recorded_autoencoder"]
