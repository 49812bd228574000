"""Validation: fails before any compilation, naming the value and the valid choices."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from score_jax import data as data_lib
from score_jax import flow, parallel, sampling
from score_jax import sde as sde_lib
from score_jax import train_step as ts
from score_jax.config import latent as latent_cfg
from score_jax.config.builders import label_dropout_from_config, sde_from_config
from score_jax.config.objectives import OBJECTIVE_SPECS
from score_jax.config.sampler_options import FLOW_METHOD, config_methods, sampling_options_from_config
from score_jax.config.schema import DATASET_NUM_CLASSES, NO_DATASET, SECTIONS, known_keys


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _pos_int(path: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    _need(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0,
          f"config.{path}={v!r} must be a positive integer")


def _has_discrete_objective(config) -> bool:
    try:
        sde_from_config(config).discrete_objective()
    except ValueError:
        return False
    return True


def _discrete_sdes() -> list[str]:
    out = []
    for name, cls in sorted(sde_lib.SDES.items()):
        try:
            cls().discrete_objective()
        except (ValueError, TypeError):
            continue
        out.append(name)
    return out


def _validate_keys(config) -> None:
    top = set(SECTIONS) | {"seed", "latent", "parallel", "distill"}
    for k in config.keys():
        _need(k in top, f"config.{k} is not a known config section; valid: {sorted(top)}")
    from score_jax.config.schema import base_config, distill_base_config

    valid_distill = set(distill_base_config().keys())
    for k in (config.get("distill") or {}).keys():
        _need(k in valid_distill, f"config.distill.{k} is not a known key; valid keys of "
                                  f"config.distill: {sorted(valid_distill)}")
    valid_par = set(base_config().parallel.keys())
    for k in (config.get("parallel") or {}).keys():
        _need(k in valid_par, f"config.parallel.{k} is not a known key; valid keys of "
                              f"config.parallel: {sorted(valid_par)}")
    for sec, valid in known_keys().items():
        for k in config[sec].keys():
            _need(k in valid, f"config.{sec}.{k} is not a known key; valid keys of "
                              f"config.{sec}: {sorted(valid)}")


def _validate_flow_sampler(options: dict) -> None:
    """Option values of the flow sampler (the score samplers are checked by
    ``sampling.validate_options``)."""
    solver = options.get("solver", "heun")
    valid = list(flow.FLOW_SOLVERS) + list(flow.FLOW_SDE_SOLVERS)
    _need(solver in valid, f"config.sampling.solver={solver!r} unknown for method 'flow'; valid "
                           f"choices: {valid}")
    _need(options.get("sigma") is None or solver in flow.FLOW_SDE_SOLVERS,
          f"config.sampling.sigma={options.get('sigma')!r} needs an SDE solver for method 'flow' "
          f"(the ODE has no noise); valid choices: {list(flow.FLOW_SDE_SOLVERS)}")
    _need(solver != "euler" or options.get("num_steps") is not None,
          "config.sampling.solver='euler' with method 'flow' needs sampling.num_steps (it "
          "has no error estimate for adaptive steps)")


def _validate_labels(config) -> None:
    nc = config.model.get("num_classes")
    s = config.sampling
    if nc is None:
        _need(s.get("class_label") is None,
              f"config.sampling.class_label={s.class_label!r} needs a class-conditional model "
              f"(config.model.num_classes)")
        _need(s.get("guidance_scale") is None,
              f"config.sampling.guidance_scale={s.guidance_scale!r} needs a class-conditional "
              f"model (config.model.num_classes)")
        return
    _pos_int("model.num_classes", nc)
    dataset = config.data.dataset.upper()
    have = DATASET_NUM_CLASSES.get(dataset, data_lib.dataset_num_classes(dataset))
    _need(have is None or nc >= have,
          f"config.model.num_classes={nc} is smaller than the {have} classes of "
          f"data.dataset={config.data.dataset!r} (labels 0..{have - 1 if have else 0}); label "
          f"{nc} would be the null (unconditional) row. Valid: num_classes >= {have}")
    drop = label_dropout_from_config(config)
    _need(0.0 <= drop < 1.0, f"config.training.label_dropout={drop!r} must be in [0, 1)")
    m = config.model
    null_needed = drop > 0 or s.get("guidance_scale") is not None or s.get("class_label") == nc
    from score_jax import models  # lazy, as in validate_config

    dit_prob = m.get("class_dropout_prob", models.DiT.class_dropout_prob)
    _need(m.get("name") != "dit" or not null_needed or float(dit_prob) > 0,
          f"config.model.class_dropout_prob={m.get('class_dropout_prob')!r} gives the DiT no "
          f"null-label row, which training.label_dropout={drop!r} / guidance / class_label={nc} "
          f"use; set it > 0 (it only creates the row; labels are dropped by "
          f"training.label_dropout)")
    _validate_guidance(config)
    label = s.get("class_label")
    _need(label is None or 0 <= label <= nc,
          f"config.sampling.class_label={label!r} invalid; valid: 0..{nc - 1}, or {nc} (the "
          f"null label, unconditional), or None (uniform over the classes)")


def _validate_guidance(config) -> None:
    w = config.sampling.get("guidance_scale")
    if w is None:
        return
    _need(isinstance(w, int | float) and not isinstance(w, bool) and np.isfinite(w) and w >= 0,
          f"config.sampling.guidance_scale={w!r} must be a finite number >= 0 (0: unconditional, "
          f"1: conditional, > 1: guided) or None (plain conditional)")
    label = config.sampling.get("class_label")
    _need(label is None or label != config.model.num_classes,
          f"config.sampling.class_label={label} is the null label: guidance_scale={w} has "
          f"nothing to guide; valid: a class 0..{config.model.num_classes - 1}, or "
          f"guidance_scale=None (command line: --config.sampling.guidance_scale=None)")


def fsdp_from_config(config) -> Any:
    """``config.parallel.fsdp`` (1 when the config has no ``parallel`` section)."""
    return (config.get("parallel") or {}).get("fsdp", 1)


def min_shard_size_from_config(config) -> Any:
    """``config.parallel.fsdp_min_size`` (default ``parallel.MIN_SHARD_SIZE``)."""
    return (config.get("parallel") or {}).get("fsdp_min_size", parallel.MIN_SHARD_SIZE)


def mesh_from_config(config) -> jax.sharding.Mesh:
    """The ``data x fsdp`` mesh of ``training.num_devices`` devices and ``parallel.fsdp``.

    Raises:
      ValueError: ``parallel.fsdp`` does not divide the device count (names the valid choices),
        before anything compiles.
    """
    n = config.training.get("num_devices") or jax.device_count()
    return parallel.make_mesh(config.training.get("num_devices"),
                              fsdp=parallel.check_fsdp(fsdp_from_config(config), n))


def _validate_profile_steps(window: Any) -> None:
    """``training.profile_steps``: None, or ``(start, stop)`` integers with 0 <= start < stop."""
    if window is None:
        return
    ok = (isinstance(window, tuple | list) and len(window) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in window)
          and 0 <= window[0] < window[1])
    _need(ok, f"config.training.profile_steps={window!r} is invalid; valid choices: None (no "
              f"trace) or a pair (start, stop) of integers with 0 <= start < stop (the train "
              f"steps start..stop-1 are traced)")


def validate_config(config, *, num_devices: int | None = None) -> None:
    """Check keys and values of a training / sampling config; raise ValueError naming the bad
    key or value and the valid choices. Runs before anything is built or compiled, and needs no
    ``configs/`` folder (the schema is `base_config`)."""
    from score_jax import models

    _validate_keys(config)
    t, s, d, m, o = config.training, config.sampling, config.data, config.model, config.optim
    for k in ("batch_size", "n_iters", "snapshot_freq", "log_freq", "eval_freq",
              "snapshot_freq_for_preemption"):
        _pos_int(f"training.{k}", t[k])
    _need(t.sde.lower() in sde_lib.SDES,
          f"config.training.sde={t.sde!r} unknown; valid choices: {sorted(sde_lib.SDES)}")
    _need(t.continuous or _has_discrete_objective(config),
          f"config.training.continuous=False is invalid with sde={t.sde!r} (it has no "
          f"discrete objective); valid: continuous=True, or sde in {_discrete_sdes()}")
    ndev = jax.device_count() if num_devices is None else num_devices
    if t.get("num_devices") is not None:
        _need(1 <= t.num_devices <= jax.device_count(),
              f"config.training.num_devices={t.num_devices} is invalid; valid: "
              f"1..{jax.device_count()}")
        ndev = t.num_devices
    _need(t.batch_size % ndev == 0,
          f"config.training.batch_size={t.batch_size} is not divisible by the number of devices "
          f"{ndev}; valid choices are multiples of {ndev}")
    parallel.check_fsdp(fsdp_from_config(config), ndev)
    _pos_int("parallel.fsdp_min_size", min_shard_size_from_config(config))
    pen = t.get("per_example_noise", False)
    _need(isinstance(pen, bool), f"config.training.per_example_noise={pen!r} must be True or False")
    k = t.get("grad_accum_steps", 1)
    _pos_int("training.grad_accum_steps", k)
    _need(t.batch_size % (k * ndev) == 0,
          f"config.training.grad_accum_steps={k}: the micro-batch batch_size / grad_accum_steps "
          f"= {t.batch_size} / {k} must be a multiple of the number of devices {ndev}; valid "
          f"choices: {[d for d in range(1, t.batch_size + 1) if t.batch_size % (d * ndev) == 0]}")
    _validate_profile_steps(t.get("profile_steps"))
    _need(isinstance(t.get("async_checkpoints", True), bool),
          f"config.training.async_checkpoints={t.get('async_checkpoints')!r} is invalid; valid "
          f"choices: True, False")
    _pos_int("eval.batch_size", config.eval.batch_size)
    _need(config.eval.batch_size % ndev == 0,
          f"config.eval.batch_size={config.eval.batch_size} is not divisible by the number of "
          f"devices {ndev}; valid choices are multiples of {ndev}")
    fid_resize = config.eval.get("fid_resize", "pytorch")
    _need(fid_resize in ("pytorch", "tf1"),
          f"config.eval.fid_resize={fid_resize!r} unknown; valid choices: ['pytorch', 'tf1'] "
          "(score_jax.evaluation.metrics.RESIZE_CONVENTIONS)")
    _pos_int("sampling.num_samples", s.num_samples)
    _pos_int("sampling.batch_size", s.get("batch_size"), allow_none=True)
    _pos_int("sampling.num_steps", s.get("num_steps"), allow_none=True)
    objective = t.get("objective", "score")
    _need(objective in OBJECTIVE_SPECS, f"config.training.objective={objective!r} unknown; valid "
                                        f"choices: {list(OBJECTIVE_SPECS)}")
    spec = OBJECTIVE_SPECS[objective]
    flow_model = spec.sampler == FLOW_METHOD
    if objective == "distill":
        from score_jax.distill import objective as distill_objective

        distill_objective.check_method(config.distill.method)
        _need(config.distill.method != "pd" or config.distill.get("pd_num_steps"),
              "config.distill.method='pd' needs distill.pd_num_steps (the student's steps)")
        _pos_int("distill.teacher_steps", config.distill.get("teacher_steps", 1))
        from score_jax.distill import consistency as consistency_lib

        _need(config.distill.get("weighting", "uniform") in consistency_lib.WEIGHTINGS,
              f"config.distill.weighting={config.distill.get('weighting')!r} unknown; valid "
              f"choices: {list(consistency_lib.WEIGHTINGS)}")
    if objective == "flow_matching":
        _need(t.get("flow_path", "condot") in flow.PATHS,
              f"config.training.flow_path={t.get('flow_path')!r} unknown; valid choices: "
              f"{sorted(flow.PATHS)}")
        t_max = t.get("flow_t_max", 1.0)
        _need(isinstance(t_max, int | float) and 0.0 < t_max <= 1.0,
              f"config.training.flow_t_max={t_max!r} must be in (0, 1]")
    method = s.method.lower()
    _need(method in config_methods(),
          f"config.sampling.method={s.method!r} unknown; valid choices: {config_methods()}"
          + (f" (inpaint / colorize need data and a mask: call {sampling.MOVED[method]} from "
             "Python)" if method in sampling.MOVED else ""))
    if flow_model:
        _need(method == FLOW_METHOD,
              f"config.sampling.method={s.method!r} cannot sample a flow-matching model (the "
              f"network predicts a velocity, not a score); valid choices: ['flow']")
    else:
        _need(method != FLOW_METHOD,
              "config.sampling.method='flow' needs training.objective="
              f"{' or '.join(repr(k) for k, v in OBJECTIVE_SPECS.items() if v.sampler == FLOW_METHOD)}"
              f" (the network of objective {objective!r} predicts a score); valid choices: "
              f"{config_methods()[:-1]}")
    _, options = sampling_options_from_config(s)
    if method == FLOW_METHOD:
        _validate_flow_sampler(options)
    else:
        sampling.validate_options(method, sde_from_config(config), options)
    _need(d.dataset.upper() in data_lib.dataset_names() or d.dataset.upper() == NO_DATASET,
          f"config.data.dataset={d.dataset!r} unknown; valid choices: "
          f"{data_lib.dataset_names() + [NO_DATASET]}")
    recipe = data_lib.DATASET_RECIPES.get(d.dataset.upper())
    _need(recipe is None or not recipe.needs_path or bool(d.get("path")),
          f"config.data.dataset={d.dataset!r} needs config.data.path (a folder of images for "
          f"'folder', an .npz file for 'npz'); got {d.get('path')!r}")
    _pos_int("data.image_size", d.image_size)
    _need(d.num_channels in (1, 3), f"config.data.num_channels={d.num_channels!r} invalid; "
                                    "valid choices: [1, 3]")
    for k in ("num_workers", "prefetch"):
        v = d.get(k, 0)
        _need(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              f"config.data.{k}={v!r} must be an integer >= 0")
    _need(m.get("name") in models.MODELS,
          f"config.model.name={m.get('name')!r} unknown; valid choices: {sorted(models.MODELS)}")
    _need(0.0 <= float(m.ema_rate) < 1.0 if m.get("ema_rate") is not None else False,
          f"config.model.ema_rate={m.get('ema_rate')!r} must be in [0, 1)")
    _pos_int("model.num_scales", m.num_scales)
    _validate_labels(config)
    _need(o.optimizer in ts.OPTIMIZERS,
          f"config.optim.optimizer={o.optimizer!r} unknown; valid choices: {list(ts.OPTIMIZERS)}")
    _need(not o.get("amsgrad", False), "config.optim.amsgrad=True is not supported; valid: False")
    _need(float(o.lr) > 0, f"config.optim.lr={o.lr!r} must be > 0")
    _need(int(o.warmup) >= 0, f"config.optim.warmup={o.warmup!r} must be >= 0")
    _need(o.get("lr_decay", "constant") in ts.LR_DECAYS,
          f"config.optim.lr_decay={o.get('lr_decay')!r} unknown; valid choices: "
          f"{list(ts.LR_DECAYS)}")
    _need(o.get("lr_decay", "constant") == "constant"
          or int(config.training.n_iters) > int(o.warmup),
          f"config.optim.lr_decay={o.get('lr_decay')!r} decays to 0 at training.n_iters="
          f"{config.training.n_iters}, which must exceed optim.warmup={o.warmup}")
    latent_cfg.validate_latent(config)


