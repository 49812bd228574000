"""Sampling and bits/dim from a checkpoint (used by sample.py, evaluate.py and the training loop).

Load parameters (a training workdir or a converted checkpoint file), draw any number of samples
on any number of devices (padded to the device multiple and cut), save a PNG grid and the uint8
``samples.npz``, and compute bits/dim through the probability-flow ODE (score models) or the
flow's ODE (flow-matching models) from ``config.LIKELIHOOD_EPS``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import optax

from score_jax import checkpoint as ckpt_lib
from score_jax import config as config_lib
from score_jax import data as data_lib
from score_jax import flow, likelihood, parallel, sampling
from score_jax import latent as latent_lib
from score_jax import train_step as ts
from score_jax.evaluation import evaluators
from score_jax.evaluation.evaluators import Images, local_rows
from score_jax.files import atomic_write_json
from score_jax.labels import (  # noqa: F401 (re-exported: the labels live in score_jax.labels)
    _LABEL_STREAM,
    _batch_labels,
    check_labels,
    class_labels,
    grid_labels,
    parse_labels,
    snapshot_labels,
)
from score_jax.sample_io import (  # noqa: F401 (re-exported: image files live in sample_io)
    count_nonfinite,
    image_grid,
    save_samples,
)
from score_jax.score import get_score_fn

Array = jax.Array




# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
_USE_SPEC = object()


def padded_batch_size(num_samples: int, batch_size: int | None, num_devices: int) -> int:
    """The per-call batch: ``min(batch_size or num_samples, num_samples)`` rounded up to a
    multiple of ``num_devices`` (the extra samples are drawn and cut)."""
    if num_samples <= 0:
        raise ValueError(f"num_samples={num_samples} must be positive")
    bs = min(int(batch_size or num_samples), int(num_samples))
    return int(math.ceil(bs / num_devices) * num_devices)


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """What drawing samples needs of a model, and nothing else (`draw_samples`); a
    `config.Built` has the same attributes and is passed as it is.

    sde, model, continuous: the score wiring (``score.get_score_fn``) unless ``make_score_fn``;
    image_shape: (H, W, C); method / options: ``sampling.sample`` (or ``"flow"``:
    ``flow.flow_sample`` on ``flow_path``); centered: data in [-1, 1]; mesh: devices to shard
    over (None: one); num_classes / class_label / guidance_scale: class-conditional sampling;
    latent: an object with ``decode`` (latent diffusion) or None.
    """

    sde: Any
    model: nn.Module
    image_shape: tuple[int, ...]
    method: str
    options: dict
    centered: bool
    continuous: bool = True
    mesh: Any = None
    flow_path: Any = None
    num_classes: int | None = None
    class_label: int | None = None
    make_score_fn: Callable | None = None
    guidance_scale: float | None = None
    latent: Any = None


@dataclasses.dataclass(frozen=True)
class _Decoder:
    decode: Callable


def sample_images(key: Array, sde, model: nn.Module, params: Any, *, continuous: bool,
                  shape: tuple[int, ...], method: str, options: dict, centered: bool,
                  mesh=None, batch_size: int | None = None, path=None,
                  num_classes: int | None = None,
                  class_label: int | None = None,
                  make_score_fn: Callable | None = None,
                  labels: Any = None,
                  guidance_scale: float | None = None,
                  decode: Callable | None = None) -> tuple[np.ndarray, int]:
    """`draw_samples` from explicit pieces (a `SamplingSpec` of them; ``shape[0]`` samples).

    Kept for callers without a `config.Built`; the library itself calls `draw_samples` /
    `sample_built` with the Built.
    """
    spec = SamplingSpec(sde=sde, model=model, image_shape=tuple(shape[1:]), method=method,
                        options=options, centered=centered, continuous=continuous, mesh=mesh,
                        flow_path=path, num_classes=num_classes, class_label=class_label,
                        make_score_fn=make_score_fn,
                        latent=None if decode is None else _Decoder(decode))
    return draw_samples(key, spec, params, int(shape[0]), batch_size=batch_size, labels=labels,
                        guidance_scale=guidance_scale)


def draw_samples(key: Array, spec: SamplingSpec, params: Any, num_samples: int, *,
                 batch_size: int | None = None, mesh=None, labels: Any = None,
                 guidance_scale: Any = _USE_SPEC) -> tuple[np.ndarray, int]:
    """All the batches of `iter_sample_batches` in one array: ``(images (N, H, W, C), nfe)``.

    Draw ``num_samples`` samples (any number) of ``spec`` (a `SamplingSpec` or a
    `config.Built`) in batches of ``batch_size`` rounded up to the device multiple, sharded over
    ``mesh`` (default ``spec.mesh``), and cut to ``num_samples``. ``guidance_scale`` defaults to
    ``spec.guidance_scale`` (pass None for plain conditional sampling).

    ``method="flow"`` (a flow-matching model: the network predicts a velocity) integrates the
    flow with ``flow.flow_sample(**options)`` on ``spec.flow_path`` (default ``flow.CondOTPath()``); any
    other method runs ``sampling.sample`` on the network's score (``make_score_fn(params,
    model_kwargs)``, e.g. ``Built.make_score_fn``; default: the reference wiring
    ``score.get_score_fn`` with ``continuous``). A class-conditional model
    (``num_classes``) gets ``labels`` ((N,) ints in [0, num_classes), `check_labels`) or, when
    None, labels from `class_labels`. With ``guidance_scale`` w (not None) it samples with
    classifier-free guidance, pred = (1 - w) pred(x | null) + w pred(x | y) on the score or the
    velocity (`guided_fns`: one network call on 2B per evaluation); None is plain conditional
    sampling (w = 1 with B per call). ``spec.latent.decode`` (latent diffusion) maps
    each batch of draws to images in the model's range first.

    Returns:
      ``(images, nfe)``: numpy (N, H, W, C) in [0, 1] (non-finite values are kept as NaN so
      that `count_nonfinite` sees them), nfe per batch.
    """
    out, nfe = [], 0
    for x, batch_nfe in iter_sample_batches(key, spec, params, num_samples,
                                            batch_size=batch_size, mesh=mesh, labels=labels,
                                            guidance_scale=guidance_scale):
        out.append(x)
        nfe = batch_nfe
    return np.concatenate(out), int(nfe)


def iter_sample_batches(key: Array, spec: SamplingSpec, params: Any, num_samples: int, *,
                        batch_size: int | None = None, mesh=None, labels: Any = None,
                        guidance_scale: Any = _USE_SPEC) -> Iterator[tuple[np.ndarray, int]]:
    """`draw_samples` one batch at a time (host memory O(batch)): yields ``(images, nfe)`` per
    batch, numpy (b, H, W, C) in [0, 1] (NaN where not finite), b = the padded batch size
    (`padded_batch_size`) except in the last batch, cut so that the batches hold
    ``num_samples`` rows in all; batch i uses the key ``fold_in(key, i)``. Concatenated, the
    batches are `draw_samples`' array bit for bit. Arguments as `draw_samples`; ValueErrors
    are raised at the first ``next``.
    """
    sde, model, continuous, method = spec.sde, spec.model, spec.continuous, spec.method
    options, path, num_classes = spec.options, spec.flow_path, spec.num_classes
    class_label, make_score_fn = spec.class_label, spec.make_score_fn
    if guidance_scale is _USE_SPEC:  # the spec's own scale applies to conditional models only
        guidance_scale = spec.guidance_scale if num_classes is not None else None
    decode = None if spec.latent is None else spec.latent.decode
    mesh = spec.mesh if mesh is None else mesh
    shape = (int(num_samples),) + tuple(spec.image_shape)
    centered = spec.centered
    n = int(shape[0])
    nd = 1 if mesh is None else mesh.devices.size
    bs = padded_batch_size(n, batch_size, nd)
    sharding = None if mesh is None else parallel.data_sharding(mesh)
    k_draw, k_label = key, jax.random.fold_in(key, _LABEL_STREAM)
    if labels is not None:
        labels = check_labels(labels, num_classes, n)
    if guidance_scale is not None and num_classes is None:
        raise ValueError(f"guidance_scale={guidance_scale!r} needs a class-conditional model "
                         f"(num_classes)")

    def kwargs(i):
        if labels is not None:
            y = _batch_labels(labels, i, bs)
        else:
            y = class_labels(jax.random.fold_in(k_label, i), bs, num_classes, class_label)
        if y is not None and sharding is not None:
            y = jax.device_put(y, sharding)
        return None if y is None else {"y": y}

    if method == config_lib.FLOW_METHOD:
        sharding = sampling.auto_sharding(sharding)

        def draw(k, i):
            if guidance_scale is not None:
                velocity_fn = guided_fns(kwargs(i)["y"], guidance_scale, num_classes,
                                         params=params, model=model)
            else:
                velocity_fn = flow.get_velocity_fn(model, {"params": params},
                                                   model_kwargs=kwargs(i))
            return flow.flow_sample(k, velocity_fn, (bs,) + tuple(shape[1:]), path=path,
                                    sharding=sharding, **options)
    elif method in sampling.MODEL_OUTPUT_METHODS:  # DiT's sampler: the raw (eps, v) output
        check_learned_variance(model, method)
        sharding = sampling.auto_sharding(sharding)

        def draw(k, i):
            score_fn = learned_variance_score_fn(sde, model, params, kwargs(i),
                                                 guidance_scale=guidance_scale,
                                                 num_classes=num_classes)
            return sampling.sample(k, sde, score_fn, (bs,) + tuple(shape[1:]), method=method,
                                   sharding=sharding, **options)
    else:
        default_wiring = make_score_fn is None
        if default_wiring:
            def make_score_fn(params, model_kwargs=None):
                return get_score_fn(sde, model, {"params": params}, continuous=continuous,
                                    model_kwargs=model_kwargs)

        def draw(k, i):
            if guidance_scale is not None:
                score_fn = guided_fns(kwargs(i)["y"], guidance_scale, num_classes,
                                      params=params, sde=sde, model=model,
                                      continuous=continuous,
                                      make_score_fn=None if default_wiring else make_score_fn)
            else:
                score_fn = make_score_fn(params, kwargs(i))
            return sampling.sample(k, sde, score_fn, (bs,) + tuple(shape[1:]), method=method,
                                   sharding=sharding, **options)
    inverse_scaler = data_lib.get_data_inverse_scaler(centered)
    for i in range(math.ceil(n / bs)):
        x, nfe = draw(jax.random.fold_in(k_draw, i), i)
        if decode is not None:
            x = decode(x)
        x = np.asarray(inverse_scaler(parallel.to_host(x)[:n - i * bs]))  # elementwise
        yield np.where(np.isfinite(x), np.clip(x, 0.0, 1.0), np.nan), int(nfe)


def check_learned_variance(model: nn.Module, method: str) -> None:
    """ValueError unless ``model`` outputs the learned variance (DiT with ``learn_sigma``)."""
    if not getattr(model, "learn_sigma", False):
        raise ValueError(f"sampling method {method!r} needs a network with a learned variance "
                         f"(DiT with model.learn_sigma=True); {type(model).__name__} "
                         f"{'has learn_sigma=False' if hasattr(model, 'learn_sigma') else 'has none'}"
                         f"; valid: another sampling.method (ddim, dpm_solver, pc, ...)")


def learned_variance_score_fn(sde, model: nn.Module, params: Any, model_kwargs: dict | None, *,
                              guidance_scale: float | None = None,
                              num_classes: int | None = None):
    """``score.LearnedVarianceScoreFn`` of a learned-variance network (DiT ``learn_sigma``) for
    ``sampling.ddpm.learned_variance_sample``: with ``guidance_scale`` w, DiT's
    ``forward_with_cfg`` (one call on [x; x] with labels [y; null = num_classes], guidance on the
    first 3 eps channels: the official convention)."""
    from score_jax.score import LearnedVarianceScoreFn

    if guidance_scale is not None:
        from score_jax.guidance import cfg

        cfg.check_guidance_scale(guidance_scale)
        if not model_kwargs or model_kwargs.get("y") is None:
            raise ValueError(f"guidance_scale={guidance_scale!r} needs class labels (a "
                             f"class-conditional model, config.model.num_classes)")
    return LearnedVarianceScoreFn(sde, {"params": params}, model, model_kwargs=model_kwargs,
                                  guidance_scale=guidance_scale, num_classes=num_classes)


def guided_fns(labels: Array, w: float, num_classes: int, *, params: Any,
               model: nn.Module | None = None, sde=None, continuous: bool = True,
               make_score_fn: Callable | None = None):
    """The classifier-free guided prediction for a sampler, from ``guidance.cfg``:
    ``cfg_factory_score_fn(make_score_fn, ...)`` when a score factory is given (score and EDM
    models, ``Built.make_score_fn``), ``cfg_score_fn(sde, model, ...)`` (the reference score
    wiring) when only ``sde`` is, else the flow velocity ``cfg_velocity_fn(model, ...)``. Each
    evaluates the network once on the batch of 2B ([x; x], labels [y; null = num_classes])."""
    from score_jax.guidance import cfg

    if make_score_fn is not None:
        return cfg.cfg_factory_score_fn(make_score_fn, params, labels, w=w,
                                        num_classes=num_classes)
    if sde is not None:
        return cfg.cfg_score_fn(sde, model, {"params": params}, labels, w=w,
                                num_classes=num_classes, continuous=continuous)
    return cfg.cfg_velocity_fn(model, {"params": params}, labels, w=w, num_classes=num_classes)


def save_reconstructions(model: nn.Module, params: Any, images: np.ndarray, directory: str, *,
                         scale: int = 1) -> dict:
    """Stage-1 snapshot: ``reconstructions.png`` (rows alternate inputs / reconstructions, 8
    per row) and ``reconstructions.npz`` (uint8 ``inputs``, ``reconstructions``) in
    ``directory``; returns {"png", "mse"} (per-pixel MSE in [0, 1])."""
    from PIL import Image

    images = np.asarray(images, np.float32)[:32]
    rec = latent_lib.reconstruct(model, params, images)
    n = len(images) - len(images) % 8 or len(images)
    pairs = []
    for i in range(0, n, 8):
        pairs += [images[i:i + 8], rec[i:i + 8]]
    grid = image_grid(np.concatenate(pairs), nrow=min(8, n))
    pil = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "reconstructions.png")
    pil.save(path)
    np.savez_compressed(os.path.join(directory, "reconstructions.npz"),
                        inputs=np.round(images * 255).astype(np.uint8),
                        reconstructions=np.round(rec * 255).astype(np.uint8))
    return {"png": path, "mse": float(np.mean((rec - images) ** 2))}


def sample_built(key: Array, built: config_lib.Built, params: Any, num_samples: int, *,
                 batch_size: int | None = None, mesh=None, labels: Any = None,
                 guidance_scale: Any = _USE_SPEC) -> tuple[np.ndarray, int]:
    """`draw_samples` of a `config.Built` (``guidance_scale`` defaults to
    ``built.guidance_scale``; pass None for plain conditional sampling)."""
    if guidance_scale is not _USE_SPEC and built.num_classes is None:
        guidance_scale = None  # as before: an unconditional Built ignores a scale
    return draw_samples(key, built, params, num_samples, batch_size=batch_size, mesh=mesh,
                        labels=labels, guidance_scale=guidance_scale)


def conditional_metrics(dataset: str, images: np.ndarray, labels: Any) -> dict | None:
    """``evaluation.digits.digits_conditional_accuracy`` (accuracy, confidence) of samples of a
    class-conditional DIGITS model with their requested ``labels``; None for other datasets or
    without labels."""
    if labels is None or str(dataset).upper() != "DIGITS":
        return None
    from score_jax.evaluation import digits

    return digits.digits_conditional_accuracy(np.nan_to_num(images), np.asarray(labels))


# ----------------------------------------------------------------------------------------------
# Loading parameters
# ----------------------------------------------------------------------------------------------
def load_params(config, *, workdir: str | None = None, checkpoint: str | None = None,
                step: int | None = None, use_ema: bool = True, mesh=None,
                model: nn.Module | None = None) -> tuple[Any, dict]:
    """Parameters from a training workdir (orbax; EMA by default) or a converted checkpoint file.

    Everything is checked before any compilation: the config (`config.build` validates), that
    exactly one source is given, and that the checkpoint exists.

    Returns:
      ``(params replicated over the mesh, info)`` with info = {"source", "step", "mesh",
      "model", "built"}.

    Raises:
      ValueError: invalid config, or not exactly one of ``workdir`` / ``checkpoint``.
      FileNotFoundError: ``checkpoint`` does not exist.
      CheckpointError: the workdir has no checkpoint, or not ``step``.
    """
    built = config_lib.build(config, mesh=mesh, model=model)
    mesh = built.mesh
    if (workdir is None) == (checkpoint is None):
        raise ValueError(f"give exactly one of --workdir (got {workdir!r}) and --checkpoint "
                         f"(got {checkpoint!r})")
    info = {"mesh": mesh, "model": built.model, "built": built}
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"--checkpoint={checkpoint!r} does not exist")
        variables = ckpt_lib.load_variables(checkpoint)
        expected = jax.eval_shape(
            lambda k: ts.init_state(k, built.model, optax.identity(), built.image_shape,
                                    num_classes=built.num_classes).params, jax.random.key(0))
        params = variables.get("params", variables)
        ckpt_lib.check_tree(params, expected, f"checkpoint {checkpoint}")
        return parallel.replicate(params, mesh), dict(info, source=checkpoint, step=None)
    checkpointer = ckpt_lib.TrainCheckpointer(workdir, read_only=True)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise ckpt_lib.CheckpointError(
                f"--workdir={workdir!r} has no checkpoint (looked in {checkpointer.directory}); "
                f"train first with python train.py --workdir={workdir}")
        if step is not None and step not in steps:
            raise ckpt_lib.CheckpointError(f"--step={step} is not in {checkpointer.directory}; "
                                           f"valid choices: {steps}")
        state, _ = checkpointer.restore(built.abstract_state, step)
    finally:
        checkpointer.close()
    params = state.ema_params if use_ema else state.params
    return params, dict(info, source=workdir, step=int(state.step))


def _output_dir(output_dir, workdir, name):
    if output_dir:
        return output_dir
    if workdir:
        return os.path.join(workdir, "samples", name)
    raise ValueError("--output_dir is required with --checkpoint")


def sample_settings(config, *, step, seed, num_samples, labels=None, use_ema=True) -> dict:
    """What determines a sample folder's content (JSON-serialisable): the sampler and the
    options it takes (``config.sampling_options_from_config``: keys another method would use do
    not count), classifier-free guidance scale and class label, the checkpoint step, EMA or raw
    weights, seed, sample count and labels."""
    method, options = config_lib.sampling_options_from_config(config.sampling)
    sampling_settings = {"method": method, "options": options,
                         "guidance_scale": config.sampling.get("guidance_scale"),
                         "class_label": config.sampling.get("class_label")}
    return {"sampling": json.loads(json.dumps(sampling_settings, default=str)),
            "step": step, "use_ema": bool(use_ema), "seed": int(seed),
            "num_samples": int(num_samples),
            "labels": None if labels is None else [int(v) for v in np.asarray(labels)]}


def sample_folder_name(method: str, settings: dict) -> str:
    """``<method>_step<N>_seed<S>_n<num>_<digest>``: a folder per sampling setting, so that runs
    with other options of the same method (steps, eta, order, guidance, labels...) never
    overwrite each other; ``digest`` is the first 8 hex digits of the SHA-1 of ``settings``
    (`sample_settings`, written beside the samples as ``settings.json``)."""
    step = "" if settings.get("step") is None else f"_step{settings['step']}"
    return (f"{method}{step}_seed{settings['seed']}_n{settings['num_samples']}_"
            f"{_digest(settings)}")


def _digest(settings: dict) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def resolve_labels(config, *, labels: Any = None, per_class: int | None = None,
                   num_samples: int | None = None) -> tuple[np.ndarray | None, int | None, int]:
    """The labels sample.py draws: ``(labels, nrow, n)``. Explicit ``labels`` (their count is n),
    or a grid with one row per class (``per_class`` images each: n = num_classes * per_class,
    nrow = per_class), or None (the config's ``class_label`` / uniform draws) with
    n = ``num_samples`` or ``sampling.num_samples``. Raises ValueError (before compiling) for
    labels on an unconditional model, both options at once, or labels out of range."""
    nc = config.model.get("num_classes")
    if labels is not None and per_class is not None:
        raise ValueError("give either --labels or --per_class, not both")
    if labels is not None:
        arr = parse_labels(labels, nc) if isinstance(labels, str) else check_labels(labels, nc)
        if num_samples is not None and int(num_samples) != len(arr):
            raise ValueError(f"--num_samples={num_samples} differs from the {len(arr)} "
                             f"--labels; the labels set the number of samples")
        return arr, None, len(arr)
    if per_class is not None:
        if nc is None:
            raise ValueError("--per_class needs a class-conditional model (config.model."
                             "num_classes)")
        arr = grid_labels(nc, per_class)
        return arr, int(per_class), len(arr)
    n = int(config.sampling.num_samples if num_samples is None else num_samples)
    if n <= 0:
        raise ValueError(f"num_samples={n} must be positive")
    return None, None, n


@dataclasses.dataclass(frozen=True)
class FidSpec:
    """FID / IS / KID of the samples of `sample_from_checkpoint` (``evaluation.score``).

    inception: local ``pt_inception-2015-12-05-6726825d.pth`` or its ``.npz``, checked against
    ``inception_sha256`` (default: pytorch-fid's file; None skips the check); reference: exactly
    one of ``ref_stats`` (a statistics ``.npz``; a file without a recorded convention needs
    ``ref_stats_resize``) and ``ref_images`` (uint8 images: ``.npz`` or folder, run through the
    same Inception); ``resize``: the convention ("pytorch" | "tf1"; None: the config's
    ``eval.fid_resize``); ``quantize``: float samples -> uint8 ("floor", score_sde's default, or
    "round"); ``batch_size``: Inception batch.
    """

    inception: str
    ref_stats: str | None = None
    ref_images: str | None = None
    resize: str | None = None
    ref_stats_resize: str | None = None
    quantize: str = "floor"
    inception_sha256: str | None = "pinned"
    batch_size: int = 200


def _prepare_fid(config, fid: FidSpec | None):
    """``(resize, reference stats, reference images, sha256)`` of ``fid``, checked before
    anything compiles: the convention, the quantisation, the Inception file's sha256 and the
    reference's convention."""
    if fid is None:
        return None
    from score_jax.evaluation import score as score_cli
    from score_jax.evaluation.metrics import RESIZE_CONVENTIONS

    resize = fid.resize or config.eval.get("fid_resize", "pytorch")
    if resize not in RESIZE_CONVENTIONS:
        raise ValueError(f"FID resize {resize!r} unknown; valid choices: {list(RESIZE_CONVENTIONS)}")
    if fid.quantize not in score_cli.QUANTIZE_CHOICES:
        raise ValueError(f"quantize={fid.quantize!r} unknown; valid choices: "
                         f"{list(score_cli.QUANTIZE_CHOICES)}")
    from score_jax.evaluation import inception as inception_lib

    sha = inception_lib.PT_INCEPTION_SHA256 if fid.inception_sha256 == "pinned" \
        else fid.inception_sha256
    inception_lib.check_inception_sha256(fid.inception, sha)  # missing / wrong file: now
    reference, ref_images = score_cli.load_reference(
        resize=resize, ref_stats=fid.ref_stats, ref_images=fid.ref_images,
        ref_stats_resize=fid.ref_stats_resize)
    return resize, reference, ref_images, sha


def _inception_fn(fid: FidSpec, prepared):
    """The Inception of ``fid`` (its batch rounded to the local device count)."""
    from score_jax.evaluation import inception as inception_lib

    resize, _, _, sha = prepared
    n_dev = jax.local_device_count()
    batch_size = max(n_dev, int(fid.batch_size) // n_dev * n_dev)
    return inception_lib.get_inception_fn(fid.inception, batch_size=batch_size, resize=resize,
                                          sha256=sha), batch_size


def _fid_values(values: dict, fid: FidSpec, prepared) -> dict:
    values.update(resize=prepared[0], quantize=fid.quantize,
                  reference=fid.ref_stats or fid.ref_images)
    return values


def _score_samples(images: np.ndarray, fid: FidSpec, prepared) -> dict:
    """FID / IS / KID of float ``images`` in [0, 1] (non-finite values as 0), with the
    convention, quantisation and reference recorded."""
    from score_jax.evaluation import score as score_cli

    resize, reference, ref_images, _ = prepared
    inception_fn, _ = _inception_fn(fid, prepared)
    u8 = score_cli.quantize_images(np.nan_to_num(images), fid.quantize)
    values = score_cli.score_images(u8, inception_fn, reference=reference, ref_images=ref_images,
                                    resize=resize)
    return _fid_values(values, fid, prepared)


# Samples kept in host memory (and returned as "images") by default when their float32 array is
# at most this size; larger runs stream to disk batch by batch (`keeps_images`).
KEEP_IMAGES_MAX_BYTES = 1 << 30
# The PNG grid of a streamed run shows the first samples only (64 float32 images at 512 px: 200 MB).
GRID_MAX_SAMPLES = 64


def keeps_images(keep_images: bool | None, num_samples: int, image_shape) -> bool:
    """Whether `sample_from_checkpoint` keeps all samples in host memory: ``keep_images`` when
    given, else (None) when the float32 array of ``num_samples`` images of ``image_shape`` is
    at most `KEEP_IMAGES_MAX_BYTES` (1 GiB: 50,000 CIFAR-10 samples, 614 MB, are kept; 50,000
    DiT samples at 256 px, 39 GB, stream)."""
    if keep_images is not None:
        return bool(keep_images)
    return int(num_samples) * math.prod(image_shape) * 4 <= KEEP_IMAGES_MAX_BYTES


def _stream_samples(batches, *, out_dir: str, n: int, nrow, scale: int,
                    fid: FidSpec | None, prepared_fid) -> dict:
    """Consume `iter_sample_batches`: stream ``samples.npz`` to disk (`sample_io.SampleWriter`,
    process 0), keep the first `GRID_MAX_SAMPLES` for the grid, count the non-finite samples
    and feed the FID Inception batch by batch (`score.InceptionStream`). Host memory: a batch,
    the grid and the Inception features."""
    from score_jax.evaluation import score as score_cli
    from score_jax.sample_io import SampleWriter

    writer = None
    if jax.process_index() == 0:
        writer = SampleWriter(out_dir, n, grid_samples=GRID_MAX_SAMPLES)
    stream = None
    if fid is not None:
        inception_fn, batch_size = _inception_fn(fid, prepared_fid)
        stream = score_cli.InceptionStream(inception_fn, batch_size)
    nfe, seconds, num_nonfinite = 0, 0.0, 0
    try:
        while True:
            t0 = time.perf_counter()
            try:
                x, nfe = next(batches)
            except StopIteration:
                break
            seconds += time.perf_counter() - t0
            num_nonfinite += count_nonfinite(x)
            if writer is not None:
                writer.add(x)
            if stream is not None:
                stream.add(score_cli.quantize_images(np.nan_to_num(x), fid.quantize))
        png = None if writer is None else writer.close(scale=scale, nrow=nrow)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    fid_report = None
    if stream is not None:
        resize, reference, ref_images, _ = prepared_fid
        pool, logits = stream.features()
        fid_report = _fid_values(score_cli.score_features(
            pool, logits, inception_fn, reference=reference, ref_images=ref_images,
            resize=resize), fid, prepared_fid)
    return {"png": png, "nfe": int(nfe), "seconds": seconds, "num_nonfinite": num_nonfinite,
            "fid_metrics": fid_report}


def sample_from_checkpoint(config, *, workdir=None, checkpoint=None, step=None, use_ema=True,
                           num_samples=None, seed=0, output_dir=None, model=None,
                           labels: Any = None, per_class: int | None = None,
                           fid: FidSpec | None = None, keep_images: bool | None = None) -> dict:
    """Draw samples with ``config.sampling`` from a checkpoint; write samples.png / .npz and
    settings.json (`sample_settings`) to ``output_dir``, by default
    ``<workdir>/samples/<sample_folder_name>`` (one folder per setting: nothing is overwritten
    by a run with other options).

    ``num_samples`` (default ``sampling.num_samples``) may be any positive number on any number
    of devices. A class-conditional model samples ``labels`` (a list or "3,3,7"), or a grid
    with one row per class (``per_class``), or labels from ``sampling.class_label`` / uniform
    draws, with classifier-free guidance scale ``sampling.guidance_scale`` (`resolve_labels`);
    the metrics of samples the dataset defines (``evaluators.sample_metrics``: DIGITS -> the
    digits quality metric, with ``nfe`` and ``sample_seconds``) and, for class-conditional
    DIGITS, the conditional accuracy are written to ``metrics.json`` by this function alone.
    With ``fid`` (a `FidSpec`) the samples are also scored (FID / IS / KID against reference
    statistics or images, in the convention ``fid.resize``, quantised by ``fid.quantize``) and
    the numbers go to the same ``metrics.json``; the reference and its convention are checked
    before anything is compiled.

    ``keep_images`` (`keeps_images`; None: when the float32 samples take at most 1 GiB): keep
    all samples in host memory and return them as ``"images"``. Otherwise the samples stream:
    each batch is written to ``samples.npz`` (the same uint8 file, `sample_io.SampleWriter`)
    and fed to the FID Inception (`evaluation.score.InceptionStream`) as it is drawn, so host
    memory is O(batch) (plus N x 3056 float32 Inception features with ``fid``); ``"images"``
    is None, ``samples.png`` shows the first `GRID_MAX_SAMPLES` samples, and the in-memory
    metrics (the digits metric, the conditional accuracy) are skipped. Both ways write the
    same ``samples.npz``, count the same non-finite samples and give the same FID / IS / KID
    bit for bit (``tests/test_sample_stream.py``).

    Returns {"png", "npz", "nfe", "seconds", "num_samples", "num_nonfinite", "images",
    "labels", "guidance_scale", "conditional", "sample_metrics", "fid_metrics",
    "metrics_path", "images_kept"}; the caller decides what non-finite samples mean (sample.py
    exits non-zero).
    """
    config_lib.check_samplable(config)
    prepared_fid = _prepare_fid(config, fid)
    # stage 2: the stored scale factor and the autoencoder recorded at training time
    config = config_lib.resolve_latent_config(config, workdir)
    labels, nrow, n = resolve_labels(config, labels=labels, per_class=per_class,
                                     num_samples=num_samples)
    params, info = load_params(config, workdir=workdir, checkpoint=checkpoint, step=step,
                               use_ema=use_ema, model=model)
    built = info["built"]
    key = jax.random.key(seed)
    if labels is None and built.num_classes is not None:  # drawn here, so they can be scored
        labels = np.asarray(class_labels(jax.random.fold_in(key, _LABEL_STREAM), n,
                                         built.num_classes, built.class_label))
        if built.class_label == built.num_classes:  # the null label: nothing to score
            labels = None
    settings = sample_settings(config, step=info["step"], seed=seed, num_samples=n,
                               labels=labels, use_ema=use_ema)
    out_dir = _output_dir(output_dir, workdir, sample_folder_name(built.method, settings))
    scale = max(1, 64 // config.data.image_size)
    batch_size = config.sampling.get("batch_size")
    d = config.data  # the images written: a latent model's decoded ones, not its latents
    kept = keeps_images(keep_images, n, (int(d.image_size), int(d.image_size),
                                         int(d.num_channels)))
    png, metrics_path, images, cond, sample_report = None, None, None, None, {}
    metrics = {}
    if kept:
        t0 = time.perf_counter()
        images, nfe = sample_built(key, built, params, n, batch_size=batch_size, labels=labels)
        seconds = time.perf_counter() - t0
        num_nonfinite = count_nonfinite(images)
        cond = conditional_metrics(config.data.dataset, images, labels)
        if cond is not None:
            metrics.update(conditional=cond, guidance_scale=built.guidance_scale)
        for metric in evaluators.sample_metrics(config.data.dataset):  # e.g. the digits metric
            if n >= metric.min_samples:
                sample_report.update(metric(images))
        if sample_report:
            metrics.update(sample_report, nfe=nfe, sample_seconds=seconds)
        fid_report = None if fid is None else _score_samples(images, fid, prepared_fid)
        if jax.process_index() == 0:
            png = save_samples(images, out_dir, scale=scale, nrow=nrow)
    else:
        batches = iter_sample_batches(key, built, params, n, batch_size=batch_size,
                                      labels=labels)
        streamed = _stream_samples(batches, out_dir=out_dir, n=n, nrow=nrow, scale=scale,
                                   fid=fid, prepared_fid=prepared_fid)
        png, nfe, seconds = streamed["png"], streamed["nfe"], streamed["seconds"]
        num_nonfinite, fid_report = streamed["num_nonfinite"], streamed["fid_metrics"]
        if evaluators.sample_metrics(config.data.dataset):
            logging.warning("the %s sample metrics are skipped: the %d samples were streamed "
                            "to %s, not kept in memory (keep_images=True keeps them)",
                            config.data.dataset, n, out_dir)
    if fid_report is not None:
        metrics.update(fid_report, nfe=nfe, sample_seconds=seconds, num_nonfinite=num_nonfinite)
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(out_dir, "settings.json"), settings)
        if metrics:  # the one writer of metrics.json
            metrics_path = atomic_write_json(os.path.join(out_dir, "metrics.json"), metrics,
                                             indent=2, sort_keys=False)
    return {"png": png, "npz": os.path.join(out_dir, "samples.npz"), "nfe": nfe,
            "seconds": seconds, "num_samples": n, "num_nonfinite": num_nonfinite,
            "images": images, "labels": labels, "guidance_scale": built.guidance_scale,
            "conditional": cond, "sample_metrics": sample_report or None,
            "fid_metrics": fid_report, "metrics_path": metrics_path, "images_kept": kept}


# ----------------------------------------------------------------------------------------------
# bits/dim
# ----------------------------------------------------------------------------------------------
def make_logp_fn(built: config_lib.Built, *, rtol: float, atol: float,
                 eps: float = config_lib.LIKELIHOOD_EPS) -> Callable:
    """A jitted ``logp_fn(key, params, y) -> (logp (B,), nfe)``: log-density in nats of
    dequantised data ``y`` in the model's range (2x - 1 if centred), Hutchinson trace.

    Score models: the probability-flow ODE of the SDE from t = ``eps`` (score_sde
    ``likelihood.get_likelihood_fn``); flow-matching models: the flow's ODE from data (t = 1)
    to the prior (``flow.flow_log_likelihood``). Parameters are traced: one compilation serves
    every checkpoint.
    """
    sde, model = built.sde, built.model
    if built.latent is not None:
        raise ValueError(latent_lib.BPD_MESSAGE)

    if built.objective_spec.sampler == config_lib.FLOW_METHOD:  # a flow: its ODE, from data
        path = built.flow_path

        @jax.jit
        def logp_fn(key, params, y):
            velocity_fn = flow.get_velocity_fn(model, {"params": params})
            logp, _, nfe = flow.flow_log_likelihood(key, velocity_fn, y, path=path, rtol=rtol,
                                                    atol=atol)
            return logp, nfe
    else:
        @jax.jit
        def logp_fn(key, params, y):
            score_fn = built.make_score_fn(params)
            logp, _, nfe = likelihood.log_likelihood(key, sde, score_fn, y, rtol=rtol,
                                                     atol=atol, eps=eps)
            return logp, nfe
    return logp_fn


def make_bpd_fn(built: config_lib.Built, *, rtol: float, atol: float,
                eps: float = config_lib.LIKELIHOOD_EPS) -> Callable:
    """A jitted ``bpd_fn(key, params, x) -> (bpd (B,), nfe)`` of 8-bit images ``x`` in [0, 1]:
    ``likelihood.dequantize``, scale to the model's range, then
    bpd = -log p(y) / (D ln 2) + ``likelihood.bpd_offset(centered)`` (score_sde
    ``likelihood.get_likelihood_fn``), for score and flow-matching models alike."""
    logp_fn = make_logp_fn(built, rtol=rtol, atol=atol, eps=eps)
    centered = built.centered

    @jax.jit
    def bpd_fn(key, params, x):
        kd, kl = jax.random.split(key)
        y = likelihood.uniform_dequantize(kd, x, centered=centered)
        logp, nfe = logp_fn(kl, params, y)
        return likelihood.bpd_from_logp(logp, math.prod(x.shape[1:]), centered), nfe

    return bpd_fn


def bpd_from_checkpoint(config, *, workdir=None, checkpoint=None, step=None, use_ema=True,
                        seed=0, output_dir=None, model=None) -> dict:
    """bits/dim of ``config.eval.bpd_dataset`` (reference ``run_lib.evaluate``: uniform
    dequantisation, ``eval.bpd_num_repeats`` passes, probability-flow ODE with Hutchinson from
    t = ``config.LIKELIHOOD_EPS``, the same definition as evaluate.py). Writes ``bpd.json`` and
    ``settings.json`` to ``output_dir``, by default ``<workdir>/samples/bpd_step<N>_seed<S>_<digest
    of the settings>`` (returned as ``output_dir``: another tolerance, seed, split or repeat count
    never overwrites an earlier result). Latent diffusion models and autoencoders raise
    ValueError(``latent.BPD_MESSAGE``)."""
    config_lib.check_no_bpd(config)
    params, info = load_params(config, workdir=workdir, checkpoint=checkpoint, step=step,
                               use_ema=use_ema, model=model)
    built, mesh = info["built"], info["mesh"]
    d, e, s = config.data, config.eval, config.sampling
    # config.dataset_from_config: every key of config.data (data.path of a folder / npz too)
    ds = config_lib.dataset_from_config(config, e.bpd_dataset, batch_size=e.batch_size,
                                        training=False, uniform_dequantization=False)
    logp_fn = make_logp_fn(built, rtol=float(s.rtol), atol=float(s.atol))
    nfes = []

    def round_logp(key, y):  # the rounds of likelihood.bpd_rounds, as evaluate.py runs them
        logp, nfe = logp_fn(key, params, parallel.to_global(np.asarray(y), mesh))
        nfes.append(int(nfe))
        return local_rows(logp)

    images = Images(ds, e.get("bpd_max_batches"))
    values = [v for _, v in likelihood.bpd_rounds(round_logp, images, jax.random.key(seed),
                                                    num_repeats=int(e.bpd_num_repeats),
                                                    centered=built.centered)]
    v = np.concatenate(values)
    if jax.process_count() > 1:  # every process's examples
        from jax.experimental import multihost_utils
        v = np.asarray(multihost_utils.process_allgather(v, tiled=True))
    out = {"bpd": float(v.mean()), "bpd_std_error": float(v.std() / math.sqrt(len(v))),
           "num_examples": int(len(v)), "mean_nfe": float(np.mean(nfes)),
           "eps": config_lib.LIKELIHOOD_EPS, "dataset": d.dataset, "split": e.bpd_dataset,
           "step": info["step"]}
    if jax.process_index() == 0:
        # One folder per setting (like sample_folder_name): another tolerance, seed, split or
        # repeat count never overwrites an earlier bpd.json.
        settings = {"eval": {k: e.get(k) for k in ("bpd_dataset", "bpd_num_repeats",
                                                    "bpd_max_batches", "batch_size")},
                    "rtol": float(s.rtol), "atol": float(s.atol), "seed": int(seed),
                    "step": info["step"], "use_ema": bool(use_ema)}
        step_part = "" if info["step"] is None else f"_step{info['step']}"
        out_dir = _output_dir(output_dir, workdir,
                              f"bpd{step_part}_seed{int(seed)}_{_digest(settings)}")
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_json(os.path.join(out_dir, "bpd.json"), out, indent=2, sort_keys=False)
        atomic_write_json(os.path.join(out_dir, "settings.json"), settings)
        out["output_dir"] = out_dir
    return out


__all__ = ["padded_batch_size", "class_labels", "check_labels", "parse_labels", "grid_labels",
           "guided_fns", "learned_variance_score_fn", "check_learned_variance",
           "snapshot_labels", "conditional_metrics", "resolve_labels",
           "sample_images",
           "count_nonfinite", "image_grid", "save_samples", "sample_built", "load_params",
           "sample_from_checkpoint", "FidSpec", "iter_sample_batches", "keeps_images",
           "KEEP_IMAGES_MAX_BYTES", "GRID_MAX_SAMPLES", "sample_settings", "sample_folder_name",
           "make_logp_fn", "make_bpd_fn", "bpd_from_checkpoint"]
