"""Training: train state, optimiser, jitted train / eval steps and ``train_and_evaluate``.

The config boundary: ``train_and_evaluate(config, workdir)`` and the ``*_from_config`` builders
read an ml_collections config; everything else takes explicit arguments.

One code path for 1 device, N devices and N hosts: the step is ``jax.jit`` over a 1-D ``Mesh``
with the batch sharded ``P("data")`` and the state replicated ``P()`` (XLA inserts the gradient
all-reduce). Per-step randomness is ``fold_in(key, step)`` and the data of step ``s`` is a pure
function of ``(seed, s)``, so a run resumed from a checkpoint continues bit for bit as if it had
never stopped.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from score_jax import checkpoint as ckpt_lib
from score_jax import data as data_lib
from score_jax import flow, losses, parallel, sampling
from score_jax import sde as sde_lib
from score_jax.score import get_score_fn

Array = jax.Array
log = logging.getLogger("score_jax.train")


# ----------------------------------------------------------------------------------------------
# Train state and optimiser
# ----------------------------------------------------------------------------------------------
@struct.dataclass
class TrainState:
    """Arrays only, so orbax saves it and it shards: step, parameters, EMA parameters and the
    optimiser state (an optax NamedTuple tree)."""

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any


OPTIMIZERS = ("Adam", "AdamW")


def make_optimizer(*, lr: float, beta1: float = 0.9, eps: float = 1e-8, warmup: int = 0,
                   grad_clip: float = -1.0, weight_decay: float = 0.0,
                   optimizer: str = "Adam") -> tuple[optax.GradientTransformation, Callable]:
    """The reference optimiser (``losses.optimization_manager``) as an optax chain.

    lr(step) = lr * min(step / warmup, 1) (linear warmup from 0; constant if warmup = 0);
    gradients clipped to global norm ``grad_clip`` (no clipping if < 0); Adam(beta1, 0.999, eps);
    ``weight_decay`` > 0 is decoupled and scaled by the learning rate (flax.optim.Adam / AdamW).

    Returns:
      ``(tx, schedule)``: the optax transformation and the learning-rate schedule.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optim.optimizer={optimizer!r} unknown; valid choices: "
                         f"{list(OPTIMIZERS)}")
    if warmup > 0:
        schedule = optax.linear_schedule(0.0, lr, int(warmup))
    else:
        schedule = optax.constant_schedule(lr)
    parts = []
    if grad_clip is not None and grad_clip >= 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if weight_decay or optimizer == "AdamW":
        parts.append(optax.adamw(schedule, b1=beta1, b2=0.999, eps=eps, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(schedule, b1=beta1, b2=0.999, eps=eps))
    return optax.chain(*parts), schedule


def init_state(key: Array, model: nn.Module, tx: optax.GradientTransformation,
               image_shape: tuple[int, int, int], *, num_classes: int | None = None) -> TrainState:
    """Initialise parameters (on a batch of one), EMA = parameters, and the optimiser state."""
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.float32)
    kwargs = {} if num_classes is None else {"y": jnp.zeros((1,), jnp.int32)}
    k_params, k_drop = jax.random.split(key)
    variables = model.init({"params": k_params, "dropout": k_drop}, x, labels, train=False,
                           **kwargs)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=tx.init(params))


def train_step(state: TrainState, batch: Any, key: Array, *, loss_fn: Callable,
               tx: optax.GradientTransformation, schedule: Callable,
               ema_rate: float) -> tuple[TrainState, dict]:
    """One optimisation step on the (global) batch, randomness ``fold_in(key, state.step)``.

    ema <- ema * rate + params * (1 - rate) after the update (reference). A step whose loss or
    gradient norm is not finite leaves the state unchanged (``metrics["finite"]`` is False), so
    the state stays at the last good update.
    """
    step_key = jax.random.fold_in(key, state.step)

    def objective(params):
        return loss_fn({"params": params}, batch, step_key)

    (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: e * ema_rate + p * (1.0 - ema_rate),
                                 state.ema_params, params)
    new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "finite": finite}
    return new, metrics


def eval_step(state: TrainState, batch: Any, key: Array, *, loss_fn: Callable) -> Array:
    """The loss of the EMA parameters on an evaluation batch (reference ``eval_step``)."""
    loss, _ = loss_fn({"params": state.ema_params}, batch, key)
    return loss


_JIT_CACHE: dict[Any, Callable] = {}


def jit_train_step(loss_fn: Callable, tx, schedule, ema_rate: float, mesh, *,
                   cache_key: Any = None) -> Callable:
    """``train_step`` jitted over ``mesh``: state replicated and donated, batch on ``"data"``.

    ``cache_key`` (hashable, describing everything the step depends on) reuses the compiled step
    of an earlier call, e.g. when a run is resumed in the same process.
    """
    key = None if cache_key is None else ("train", cache_key, mesh)
    if key is not None and key in _JIT_CACHE:
        return _JIT_CACHE[key]
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    fn = functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=schedule,
                           ema_rate=float(ema_rate))
    out = jax.jit(fn, in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=0)
    if key is not None:
        _JIT_CACHE[key] = out
    return out


def jit_eval_step(loss_fn: Callable, mesh, *, cache_key: Any = None) -> Callable:
    """``eval_step`` jitted over ``mesh`` (see `jit_train_step` for ``cache_key``)."""
    key = None if cache_key is None else ("eval", cache_key, mesh)
    if key is not None and key in _JIT_CACHE:
        return _JIT_CACHE[key]
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    out = jax.jit(functools.partial(eval_step, loss_fn=loss_fn), in_shardings=(rep, dat, rep),
                  out_shardings=rep)
    if key is not None:
        _JIT_CACHE[key] = out
    return out


def _step_cache_key(config, sde, model) -> Any:
    """Everything the compiled train / eval step depends on, hashable."""
    t = config.training
    return (model, sde, config.data.centered, t.continuous, t.reduce_mean,
            t.likelihood_weighting, config.model.get("num_classes"),
            config.model.ema_rate, config.optim.to_json(), config.seed,
            t.get("objective", "score"), t.get("flow_path", "condot"),
            float(t.get("flow_t_max", 1.0)))


# ----------------------------------------------------------------------------------------------
# Config -> objects (the config boundary)
# ----------------------------------------------------------------------------------------------
def sde_from_config(config):
    """The forward SDE of ``config.training.sde`` with the model's noise parameters."""
    m = config.model
    name = config.training.sde.lower()
    if name in ("vpsde", "subvpsde"):
        return sde_lib.get_sde(name, beta_min=float(m.beta_min), beta_max=float(m.beta_max),
                               N=int(m.num_scales))
    if name == "vesde":
        return sde_lib.get_sde(name, sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max),
                               N=int(m.num_scales))
    raise ValueError(f"training.sde={config.training.sde!r} unknown; valid: {sorted(sde_lib.SDES)}")


def model_from_config(config) -> nn.Module:
    """``models.get_model(config.model, image_size, num_channels, centered)``."""
    from score_jax import models

    return models.get_model(config.model, image_size=config.data.image_size,
                            num_channels=config.data.num_channels,
                            centered=config.data.centered)


def optimizer_from_config(config):
    o = config.optim
    return make_optimizer(lr=float(o.lr), beta1=float(o.beta1), eps=float(o.eps),
                          warmup=int(o.warmup), grad_clip=float(o.grad_clip),
                          weight_decay=float(o.weight_decay), optimizer=o.optimizer)


def scaled_loss_fn(loss_fn: Callable, centered: bool) -> Callable:
    """``loss_fn`` on batches in [0, 1], scaled to the model's range first (2x - 1 if
    ``centered``; reference ``scaler`` in ``train_step``)."""
    scaler = data_lib.get_data_scaler(centered)

    def fn(variables, batch, key):
        if isinstance(batch, dict):
            batch = dict(batch, image=scaler(batch["image"]))
        else:
            batch = scaler(batch)
        return loss_fn(variables, batch, key)

    return fn


OBJECTIVES = ("score", "flow_matching")


def objective_from_config(config) -> str:
    """``config.training.objective`` ("score" if absent); unknown names raise ValueError."""
    objective = config.training.get("objective", "score")
    if objective not in OBJECTIVES:
        raise ValueError(f"config.training.objective={objective!r} unknown; valid choices: "
                         f"{list(OBJECTIVES)}")
    return objective


def flow_path_from_config(config, sde):
    """The probability path of a flow-matching config: ``flow.CondOTPath()`` for
    ``training.flow_path="condot"``, ``flow.SDEPath(sde)`` (the SDE's Gaussian path in flow
    time) for "sde"; unknown names raise ValueError listing ``flow.PATHS``."""
    name = config.training.get("flow_path", "condot")
    if name not in flow.PATHS:
        raise ValueError(f"config.training.flow_path={name!r} unknown; valid choices: "
                         f"{sorted(flow.PATHS)}")
    return flow.get_path(name, sde=sde) if name == "sde" else flow.get_path(name)


def loss_fn_from_config(config, sde, model, *, train: bool) -> Callable:
    """The training objective of ``config`` on data batches in [0, 1] (scaled inside).

    ``training.objective="score"``: denoising score matching (``losses.get_loss_fn``);
    "flow_matching": conditional flow matching (``flow.get_flow_loss_fn``, Lipman et al. 2023
    eq. 9) on ``flow_path_from_config`` with t ~ U(0, ``training.flow_t_max``).
    """
    t = config.training
    objective = objective_from_config(config)
    if objective == "flow_matching":
        fn = flow.get_flow_loss_fn(model, flow_path_from_config(config, sde), train=train,
                                   reduce_mean=bool(t.reduce_mean),
                                   t_max=float(t.get("flow_t_max", 1.0)),
                                   num_classes=config.model.get("num_classes"))
    else:
        fn = losses.get_loss_fn(sde, model, train=train, continuous=bool(t.continuous),
                                reduce_mean=bool(t.reduce_mean),
                                likelihood_weighting=bool(t.likelihood_weighting),
                                num_classes=config.model.get("num_classes"))
    return scaled_loss_fn(fn, bool(config.data.centered))


FLOW_METHOD = "flow"
# The options of the fast samplers (score_jax.sampling.fast) beyond num_steps / eps / denoise:
# sampler option name -> config.sampling key (the same name).
_FAST_OPTIONS = {
    "ddim": ("eta", "schedule"),
    "dpm_solver": ("order", "schedule", "lower_order_final", "solver_type"),
    "heun": ("schedule", "rho", "s_churn", "s_tmin", "s_tmax", "s_noise"),
}


def sampling_methods() -> list[str]:
    """The valid ``config.sampling.method`` names: ``sampling.METHODS`` and "flow"."""
    return list(sampling.METHODS) + [FLOW_METHOD]


def sampling_options_from_config(sampling_config) -> tuple[str, dict]:
    """Map ``config.sampling`` to ``sampling.sample(method=..., **options)`` (or, for "flow", to
    ``flow.flow_sample(**options)``): the ONE place.

    pc: predictor, corrector, snr, n_steps (= n_steps_each), num_steps, eps, denoise
    (= noise_removal), probability_flow. ode: solver, rtol, atol, num_steps, eps, denoise.
    sde: solver, num_steps, eps, denoise. ddim: num_steps, eps, denoise, eta, schedule.
    dpm_solver: num_steps, eps, denoise, order, schedule, lower_order_final, solver_type.
    heun: num_steps, eps, denoise, schedule, rho, s_churn, s_tmin, s_tmax, s_noise.
    flow: solver, num_steps (None: adaptive), rtol, atol. None values are left to the sampler's
    defaults.
    """
    s = sampling_config
    method = s.method.lower()
    if method not in sampling_methods():
        raise ValueError(f"sampling.method={s.method!r} unknown; valid choices: "
                         f"{sampling_methods()}")
    if method == FLOW_METHOD:
        opts = {"solver": s.get("solver"), "num_steps": s.get("num_steps"),
                "rtol": float(s.rtol), "atol": float(s.atol)}
        return method, {k: v for k, v in opts.items() if v is not None}
    common = {"num_steps": s.get("num_steps"), "eps": s.get("eps"),
              "denoise": bool(s.get("noise_removal", True))}
    if method == "pc":
        opts = dict(common, predictor=s.predictor.lower(), corrector=s.corrector.lower(),
                    snr=float(s.snr), n_steps=int(s.n_steps_each),
                    probability_flow=bool(s.probability_flow))
    elif method == "ode":
        opts = dict(common, solver=s.get("solver"), rtol=float(s.rtol), atol=float(s.atol))
    elif method in _FAST_OPTIONS:
        opts = dict(common, **{k: s.get(k) for k in _FAST_OPTIONS[method]})
    else:
        opts = dict(common, solver=s.get("solver"))
    return method, {k: v for k, v in opts.items() if v is not None}


# ----------------------------------------------------------------------------------------------
# Config validation: fails before any compilation, naming the value and the valid choices
# ----------------------------------------------------------------------------------------------
_MODEL_EXTRA_KEYS = {"name", "ema_rate", "normalization", "interpolation", "attention_type",
                     "conv_size", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales",
                     "fourier_scale", "embedding_type", "dropout", "num_classes", "dtype", "remat",
                     "normalization_type"}
_OPTIM_EXTRA_KEYS = {"amsgrad"}
# Keys that other parts of the library read (e.g. a new objective): section -> set of key names.
# A module adding config keys registers them here, so that validation accepts them.
EXTRA_CONFIG_KEYS: dict[str, set[str]] = {}


def _known_keys() -> dict[str, set[str]]:
    import dataclasses

    from configs.common import base_config  # configs/ lives beside the package
    from score_jax import models  # noqa: I001

    base = base_config()
    keys = {sec: set(base[sec].keys()) for sec in ("training", "sampling", "eval", "data",
                                                    "model", "optim")}
    for cls in models.MODELS.values():
        keys["model"] |= {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    keys["model"] |= _MODEL_EXTRA_KEYS
    keys["optim"] |= _OPTIM_EXTRA_KEYS
    for sec, extra in EXTRA_CONFIG_KEYS.items():
        keys.setdefault(sec, set()).update(extra)
    return keys


def validate_config(config, *, num_devices: int | None = None) -> None:
    """Check keys and values of a training / sampling config; raise ValueError naming the bad
    key or value and the valid choices. Runs before anything is built or compiled."""
    from score_jax import models

    try:
        known = _known_keys()
    except ImportError:  # configs/ not importable (installed package): check values only
        known = None
    top = {"training", "sampling", "eval", "data", "model", "optim", "seed"}
    for k in config.keys():
        if k not in top:
            raise ValueError(f"config.{k} is not a known config section; valid: {sorted(top)}")
    if known is not None:
        for sec, valid in known.items():
            for k in config[sec].keys():
                if k not in valid:
                    raise ValueError(f"config.{sec}.{k} is not a known key; valid keys of "
                                     f"config.{sec}: {sorted(valid)}")

    def need(cond, msg):
        if not cond:
            raise ValueError(msg)

    def pos_int(path, v, allow_none=False):
        if v is None and allow_none:
            return
        need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0,
             f"config.{path}={v!r} must be a positive integer")

    t, s, d, m, o = config.training, config.sampling, config.data, config.model, config.optim
    for k in ("batch_size", "n_iters", "snapshot_freq", "log_freq", "eval_freq",
              "snapshot_freq_for_preemption"):
        pos_int(f"training.{k}", t[k])
    need(t.sde.lower() in sde_lib.SDES,
         f"config.training.sde={t.sde!r} unknown; valid choices: {sorted(sde_lib.SDES)}")
    need(t.continuous or t.sde.lower() != "subvpsde",
         "config.training.continuous=False is invalid with sde='subvpsde' (sub-VP has no discrete "
         "objective); valid: continuous=True, or sde in ['vesde', 'vpsde']")
    ndev = jax.device_count() if num_devices is None else num_devices
    if t.get("num_devices") is not None:
        need(1 <= t.num_devices <= jax.device_count(),
             f"config.training.num_devices={t.num_devices} is invalid; valid: "
             f"1..{jax.device_count()}")
        ndev = t.num_devices
    need(t.batch_size % ndev == 0,
         f"config.training.batch_size={t.batch_size} is not divisible by the number of devices "
         f"{ndev}; valid choices are multiples of {ndev}")
    pos_int("eval.batch_size", config.eval.batch_size)
    pos_int("sampling.num_samples", s.num_samples)
    pos_int("sampling.batch_size", s.get("batch_size"), allow_none=True)
    pos_int("sampling.num_steps", s.get("num_steps"), allow_none=True)
    need(t.get("objective", "score") in OBJECTIVES,
         f"config.training.objective={t.get('objective')!r} unknown; valid choices: "
         f"{list(OBJECTIVES)}")
    flow_model = t.get("objective", "score") == "flow_matching"
    if flow_model:
        need(t.get("flow_path", "condot") in flow.PATHS,
             f"config.training.flow_path={t.get('flow_path')!r} unknown; valid choices: "
             f"{sorted(flow.PATHS)}")
        t_max = t.get("flow_t_max", 1.0)
        need(isinstance(t_max, (int, float)) and 0.0 < t_max <= 1.0,
             f"config.training.flow_t_max={t_max!r} must be in (0, 1]")
    need(s.method.lower() in sampling_methods(),
         f"config.sampling.method={s.method!r} unknown; valid choices: {sampling_methods()}")
    if flow_model:
        need(s.method.lower() == FLOW_METHOD,
             f"config.sampling.method={s.method!r} cannot sample a flow-matching model (the "
             f"network predicts a velocity, not a score); valid choices: ['flow']")
    else:
        need(s.method.lower() != FLOW_METHOD,
             "config.sampling.method='flow' needs training.objective='flow_matching' (the "
             f"network of objective {t.get('objective', 'score')!r} predicts a score); valid "
             f"choices: {list(sampling.METHODS)}")
    if s.method.lower() == FLOW_METHOD:
        solver = s.get("solver") or "heun"
        need(solver in flow.FLOW_SOLVERS, f"config.sampling.solver={s.solver!r} unknown for "
                                          f"method 'flow'; valid choices: {list(flow.FLOW_SOLVERS)}")
        need(solver != "euler" or s.get("num_steps") is not None,
             "config.sampling.solver='euler' with method 'flow' needs sampling.num_steps (it "
             "has no error estimate for adaptive steps)")
    if s.method.lower() in _FAST_OPTIONS:
        from score_jax.sampling import fast

        need(s.get("num_steps") is not None,
             f"config.sampling.num_steps must be set for method {s.method!r} (no default)")
        need(s.get("schedule") is None or s.schedule in fast.SCHEDULES,
             f"config.sampling.schedule={s.schedule!r} unknown; valid choices: "
             f"{list(fast.SCHEDULES)}")
        if s.method.lower() == "dpm_solver":
            need(s.get("order") in (None, 1, 2, 3),
                 f"config.sampling.order={s.get('order')!r} invalid; valid choices: [1, 2, 3]")
            need(s.get("solver_type") in (None, *fast.DPM_SOLVER_TYPES),
                 f"config.sampling.solver_type={s.get('solver_type')!r} unknown; valid "
                 f"choices: {list(fast.DPM_SOLVER_TYPES)}")
    if s.method.lower() == "pc":
        need(s.predictor.lower() in sampling.PREDICTORS,
             f"config.sampling.predictor={s.predictor!r} unknown; valid choices: "
             f"{list(sampling.PREDICTORS)}")
        need(s.corrector.lower() in sampling.CORRECTORS,
             f"config.sampling.corrector={s.corrector!r} unknown; valid choices: "
             f"{list(sampling.CORRECTORS)}")
    solvers = {"ode": sampling.ODE_SOLVERS, "sde": sampling.SDE_SOLVERS}.get(s.method.lower())
    if solvers is not None and s.get("solver") is not None:
        need(s.solver in solvers, f"config.sampling.solver={s.solver!r} unknown for method "
                                  f"{s.method!r}; valid choices: {list(solvers)}")
    need(d.dataset.upper() in data_lib.DATASETS,
         f"config.data.dataset={d.dataset!r} unknown; valid choices: {list(data_lib.DATASETS)}")
    pos_int("data.image_size", d.image_size)
    need(d.num_channels in (1, 3), f"config.data.num_channels={d.num_channels!r} invalid; "
                                   "valid choices: [1, 3]")
    need(m.get("name") in models.MODELS,
         f"config.model.name={m.get('name')!r} unknown; valid choices: {sorted(models.MODELS)}")
    need(0.0 <= float(m.ema_rate) < 1.0 if m.get("ema_rate") is not None else False,
         f"config.model.ema_rate={m.get('ema_rate')!r} must be in [0, 1)")
    pos_int("model.num_scales", m.num_scales)
    need(o.optimizer in OPTIMIZERS,
         f"config.optim.optimizer={o.optimizer!r} unknown; valid choices: {list(OPTIMIZERS)}")
    need(not o.get("amsgrad", False), "config.optim.amsgrad=True is not supported; valid: False")
    need(float(o.lr) > 0, f"config.optim.lr={o.lr!r} must be > 0")
    need(int(o.warmup) >= 0, f"config.optim.warmup={o.warmup!r} must be >= 0")


# ----------------------------------------------------------------------------------------------
# Sampling and images
# ----------------------------------------------------------------------------------------------
def sample_images(key: Array, sde, model: nn.Module, params: Any, *, continuous: bool,
                  shape: tuple[int, ...], method: str, options: dict, centered: bool,
                  mesh=None, batch_size: int | None = None, path=None) -> tuple[np.ndarray, int]:
    """Draw ``shape[0]`` samples in batches of ``batch_size``, sharded over ``mesh``; returns
    (images in [0, 1] as numpy (N, H, W, C), nfe per batch).

    ``method="flow"`` (a flow-matching model: the network predicts a velocity) integrates the
    flow with ``flow.flow_sample(**options)`` on ``path`` (``flow_path_from_config``; default
    ``flow.CondOTPath()``); any other method runs ``sampling.sample`` on the network's score.
    """
    n = shape[0]
    bs = n if batch_size is None else min(batch_size, n)
    sharding = None if mesh is None else parallel.data_sharding(mesh)
    if method == FLOW_METHOD:
        velocity_fn = flow.get_velocity_fn(model, {"params": params})
        sharding = sampling.auto_sharding(sharding)

        def draw(k):
            return flow.flow_sample(k, velocity_fn, (bs,) + shape[1:], path=path,
                                    sharding=sharding, **options)
    else:
        score_fn = get_score_fn(sde, model, {"params": params}, continuous=continuous)

        def draw(k):
            return sampling.sample(k, sde, score_fn, (bs,) + shape[1:], method=method,
                                   sharding=sharding, **options)
    out, nfe = [], 0
    for i in range(math.ceil(n / bs)):
        x, nfe = draw(jax.random.fold_in(key, i))
        out.append(parallel.to_host(x))
    x = np.concatenate(out)[:n]
    x = data_lib.get_data_inverse_scaler(centered)(x)
    return np.clip(x, 0.0, 1.0), int(nfe)


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N, H, W, C) images in [0, 1] into one uint8 (rows x cols) grid image."""
    n, h, w, c = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.ones((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = images[i]
    return np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)


def save_samples(images: np.ndarray, directory: str, *, scale: int = 1) -> str:
    """Write ``samples.png`` (a grid, nearest-upscaled by ``scale``) and ``samples.npz`` (uint8
    images, as the reference's sample files) into ``directory``; returns the PNG path."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    grid = image_grid(images)
    pil = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    path = os.path.join(directory, "samples.png")
    pil.save(path)
    np.savez_compressed(os.path.join(directory, "samples.npz"),
                        samples=np.round(images * 255).astype(np.uint8))
    return path


# ----------------------------------------------------------------------------------------------
# Preemption
# ----------------------------------------------------------------------------------------------
_PREEMPT = threading.Event()


def request_preemption(*_args) -> None:
    """Ask the training loop to save a checkpoint at the next step boundary and return
    (the SIGTERM handler)."""
    _PREEMPT.set()


def install_sigterm_handler() -> Any:
    """SIGTERM (cloud preemption, ``kill``) -> `request_preemption`. Main thread only; returns
    the previous handler (None if not installed)."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, request_preemption)
    return None


def _preemption_requested(sync: bool) -> bool:
    flag = _PREEMPT.is_set()
    if sync and jax.process_count() > 1:
        from jax.experimental import multihost_utils
        flag = bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
    return flag


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient."""


# ----------------------------------------------------------------------------------------------
# train_and_evaluate
# ----------------------------------------------------------------------------------------------
def build(config, *, mesh=None, model: nn.Module | None = None) -> dict:
    """Everything a run needs, built from ``config`` (validated first): mesh, sde, model,
    optimiser, jitted steps, and the abstract (shape-only) train state."""
    mesh = mesh or parallel.make_mesh(config.training.get("num_devices"))
    validate_config(config, num_devices=mesh.devices.size)
    parallel.check_batch_size(config.training.batch_size, mesh)
    parallel.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
    sde = sde_from_config(config)
    model = model or model_from_config(config)
    tx, schedule = optimizer_from_config(config)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    num_classes = config.model.get("num_classes")
    init = functools.partial(init_state, model=model, tx=tx, image_shape=shape,
                             num_classes=num_classes)
    rep = parallel.replicated(mesh)
    abstract = jax.eval_shape(init, jax.random.key(0))
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)
    init_key = ("init", model, shape, num_classes, config.optim.to_json(), mesh)
    if init_key not in _JIT_CACHE:
        _JIT_CACHE[init_key] = jax.jit(init, out_shardings=rep)
    return dict(mesh=mesh, sde=sde, model=model, tx=tx, schedule=schedule, shape=shape,
                init=_JIT_CACHE[init_key], abstract_state=abstract)


def _datasets(config, mesh, train_ds=None, eval_ds=None):
    d = config.data
    per_proc = config.training.batch_size // jax.process_count()
    kw = dict(image_size=d.image_size, seed=int(config.seed), category=d.get("category"),
              data_dir=d.get("data_dir"), tfrecords_path=d.get("tfrecords_path"),
              num_channels=d.num_channels)
    if train_ds is None:
        train_ds = data_lib.get_dataset(d.dataset, split="train", batch_size=per_proc,
                                        training=True, random_flip=d.random_flip,
                                        uniform_dequantization=d.uniform_dequantization, **kw)
    if eval_ds is None:
        eval_split = "validation" if d.dataset.upper() == "CELEBA" else "test"
        eval_ds = data_lib.get_dataset(d.dataset, split=eval_split,
                                       batch_size=config.eval.batch_size // jax.process_count(),
                                       training=False, random_flip=False,
                                       uniform_dequantization=d.uniform_dequantization, **kw)
    return train_ds, eval_ds


def train_and_evaluate(config, workdir: str, *, model: nn.Module | None = None,
                       train_ds=None, eval_ds=None, mesh=None,
                       callbacks: Iterable[Callable[[int, dict], None]] = ()) -> TrainState:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint.

    Writes ``<workdir>/checkpoints`` (orbax: the latest, plus every multiple of
    ``training.snapshot_freq``), ``<workdir>/samples/iter_<step>/samples.{png,npz}`` at
    snapshots, and TensorBoard events in ``<workdir>/tensorboard``. On SIGTERM (or
    `request_preemption`) it saves at the next step boundary and returns.

    Args:
      model / train_ds / eval_ds / mesh: override the config-built ones (tests, notebooks).
      callbacks: ``fn(step, host_metrics)`` called on process 0 after each logged step.

    Raises:
      ValueError: invalid config (before any compilation).
      CheckpointError: the workdir's checkpoint cannot be restored.
      NonFiniteLossError: the loss became NaN / inf; the last checkpoint is left untouched.
    """
    from tqdm.auto import tqdm

    b = build(config, mesh=mesh, model=model)
    mesh, sde, model = b["mesh"], b["sde"], b["model"]
    t = config.training
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    train_ds, eval_ds = _datasets(config, mesh, train_ds, eval_ds)

    checkpointer = ckpt_lib.TrainCheckpointer(workdir, keep_period=int(t.snapshot_freq))
    key = jax.random.key(int(config.seed))
    k_init, k_train, k_eval, k_sample = jax.random.split(key, 4)
    latest = checkpointer.latest_step()
    if latest is not None:
        state, meta = checkpointer.restore(b["abstract_state"], latest)
        if meta.get("batch_size") not in (None, t.batch_size):
            log.warning("resuming with batch_size %d, the checkpoint was written with %s: the "
                        "data order differs from an uninterrupted run", t.batch_size,
                        meta.get("batch_size"))
        log.info("resumed from %s at step %d", checkpointer.directory, int(state.step))
    else:
        state = b["init"](k_init)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    loss_train = loss_fn_from_config(config, sde, model, train=True)
    loss_eval = loss_fn_from_config(config, sde, model, train=False)
    ck = _step_cache_key(config, sde, model)
    p_train = jit_train_step(loss_train, b["tx"], b["schedule"], config.model.ema_rate, mesh,
                             cache_key=ck)
    p_eval = jit_eval_step(loss_eval, mesh, cache_key=ck)
    method, options = sampling_options_from_config(config.sampling)
    flow_path = flow_path_from_config(config, sde) if method == FLOW_METHOD else None

    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    start = int(state.step)
    n_iters = int(t.n_iters)
    meta = {"batch_size": int(t.batch_size), "seed": int(config.seed),
            "dataset": config.data.dataset}

    def save(step):
        checkpointer.save(step, state, dict(meta, step=int(step)))

    previous_handler = install_sigterm_handler()
    _PREEMPT.clear()
    data_iter = train_ds.iterate(start)
    eval_iter = eval_ds.iterate(start // int(t.eval_freq))
    pending: list[tuple[int, dict]] = []
    pbar = tqdm(total=n_iters, initial=start, disable=not is_main, unit="step", dynamic_ncols=True,
                desc="train")
    t_last, n_last = time.perf_counter(), start
    try:
        for step in range(start, n_iters):
            batch = parallel.to_global(next(data_iter), mesh)
            state, metrics = p_train(state, batch, k_train)
            done = step + 1
            pending.append((done, metrics))
            pbar.update(1)
            last = done == n_iters
            if done % int(t.log_freq) == 0 or last:
                host = jax.device_get([m for _, m in pending])
                for (s_, _), m in zip(pending, host, strict=True):
                    if not bool(m["finite"]):
                        raise NonFiniteLossError(
                            f"non-finite training loss at step {s_}: loss={float(m['loss'])}, "
                            f"grad_norm={float(m['grad_norm'])}, lr={float(m['lr']):.3g}. "
                            f"Training stopped; the state was not updated by that step and no "
                            f"checkpoint was written after it (latest checkpoint: step "
                            f"{checkpointer.latest_step()} in {checkpointer.directory}). Lower "
                            f"optim.lr, keep optim.grad_clip >= 0, or check the data.")
                now = time.perf_counter()
                rate = (done - n_last) / max(now - t_last, 1e-9)
                t_last, n_last = now, done
                if is_main:
                    m = host[-1]
                    writer.add_scalar("training_loss", float(m["loss"]), done)
                    writer.add_scalar("grad_norm", float(m["grad_norm"]), done)
                    writer.add_scalar("lr", float(m["lr"]), done)
                    writer.add_scalar("steps_per_sec", rate, done)
                    writer.add_scalar("images_per_sec", rate * t.batch_size, done)
                    pbar.set_postfix(loss=f"{float(m['loss']):.4f}",
                                     img_s=f"{rate * t.batch_size:.0f}")
                    for cb in callbacks:
                        cb(done, {k: np.asarray(v) for k, v in m.items()})
                pending.clear()
            if done % int(t.eval_freq) == 0 or last:
                eb = parallel.to_global(next(eval_iter), mesh)
                eval_loss = float(p_eval(state, eb, jax.random.fold_in(k_eval, done)))
                if is_main:
                    writer.add_scalar("eval_loss", eval_loss, done)
            multi = jax.process_count() > 1
            # one process alone must not save: several processes agree at log steps
            if (not multi or done % int(t.log_freq) == 0) and _preemption_requested(sync=multi):
                save(done)
                log.warning("preemption requested: saved step %d to %s", done,
                            checkpointer.directory)
                if is_main:
                    pbar.write(f"preempted: checkpoint saved at step {done}")
                return state
            if (done % int(t.snapshot_freq_for_preemption) == 0 or done % int(t.snapshot_freq) == 0
                    or last):
                save(done)
            if t.snapshot_sampling and (done % int(t.snapshot_freq) == 0 or last):
                s = config.sampling
                n = int(s.num_samples)
                nd = mesh.devices.size
                bs = int(s.get("batch_size") or n)
                bs = int(math.ceil(bs / nd) * nd)
                images, nfe = sample_images(
                    jax.random.fold_in(k_sample, done), sde, model, state.ema_params,
                    continuous=bool(t.continuous), shape=(n,) + b["shape"], method=method,
                    options=options, centered=bool(config.data.centered), mesh=mesh,
                    batch_size=bs, path=flow_path)
                if is_main:
                    d = os.path.join(workdir, "samples", f"iter_{done}")
                    path = save_samples(images, d, scale=max(1, 64 // config.data.image_size))
                    pbar.write(f"step {done}: samples (nfe {nfe}) -> {path}")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        pbar.close()
        if writer is not None:
            writer.flush()
            writer.close()
        checkpointer.close()
    return state


# ----------------------------------------------------------------------------------------------
# Sampling and bits/dim from a checkpoint (sample.py)
# ----------------------------------------------------------------------------------------------
def load_params(config, *, workdir: str | None = None, checkpoint: str | None = None,
                step: int | None = None, use_ema: bool = True, mesh=None) -> tuple[Any, dict]:
    """Parameters from a training workdir (orbax; EMA by default) or a converted checkpoint file.

    Everything is checked before any compilation: the config (`validate_config`), that exactly
    one source is given, and that the checkpoint exists.

    Returns:
      ``(params replicated over the mesh, info)`` with info = {"source", "step", "mesh", ...}.
    """
    mesh = mesh or parallel.make_mesh(config.training.get("num_devices"))
    validate_config(config, num_devices=mesh.devices.size)
    if (workdir is None) == (checkpoint is None):
        raise ValueError(f"give exactly one of --workdir (got {workdir!r}) and --checkpoint "
                         f"(got {checkpoint!r})")
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"--checkpoint={checkpoint!r} does not exist")
        from score_jax.checkpoint import check_tree, load_variables

        variables = load_variables(checkpoint)
        model = model_from_config(config)
        shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
        expected = jax.eval_shape(lambda k: init_state(k, model, optax.identity(), shape,
                                                       num_classes=config.model.get("num_classes")
                                                       ).params, jax.random.key(0))
        params = variables.get("params", variables)
        check_tree(params, expected, f"checkpoint {checkpoint}")
        return parallel.replicate(params, mesh), {"source": checkpoint, "step": None,
                                                  "mesh": mesh, "model": model}
    checkpointer = ckpt_lib.TrainCheckpointer(workdir, read_only=True)
    steps = checkpointer.all_steps()
    if not steps:
        raise ckpt_lib.CheckpointError(
            f"--workdir={workdir!r} has no checkpoint (looked in {checkpointer.directory}); "
            f"train first with python train.py --workdir={workdir}")
    if step is not None and step not in steps:
        raise ckpt_lib.CheckpointError(f"--step={step} is not in {checkpointer.directory}; "
                                       f"valid choices: {steps}")
    b = build(config, mesh=mesh)
    state, meta = checkpointer.restore(b["abstract_state"], step)
    checkpointer.close()
    params = state.ema_params if use_ema else state.params
    return params, {"source": workdir, "step": int(state.step), "mesh": mesh, "model": b["model"]}


def _output_dir(output_dir, workdir, name):
    if output_dir:
        return output_dir
    if workdir:
        return os.path.join(workdir, "samples", name)
    raise ValueError("--output_dir is required with --checkpoint")


def sample_from_checkpoint(config, *, workdir=None, checkpoint=None, step=None, use_ema=True,
                           num_samples=None, seed=0, output_dir=None) -> dict:
    """Draw samples with ``config.sampling`` from a checkpoint; write samples.png / .npz."""
    params, info = load_params(config, workdir=workdir, checkpoint=checkpoint, step=step,
                               use_ema=use_ema)
    mesh = info["mesh"]
    n = int(num_samples or config.sampling.num_samples)
    if n <= 0:
        raise ValueError(f"num_samples={n} must be positive")
    nd = mesh.devices.size
    bs = int(config.sampling.get("batch_size") or n)
    bs = int(math.ceil(bs / nd) * nd)
    method, options = sampling_options_from_config(config.sampling)
    shape = (n, config.data.image_size, config.data.image_size, config.data.num_channels)
    t0 = time.perf_counter()
    sde = sde_from_config(config)
    path = flow_path_from_config(config, sde) if method == FLOW_METHOD else None
    images, nfe = sample_images(jax.random.key(seed), sde, info["model"],
                                params, continuous=bool(config.training.continuous), shape=shape,
                                method=method, options=options,
                                centered=bool(config.data.centered), mesh=mesh, batch_size=bs,
                                path=path)
    seconds = time.perf_counter() - t0
    name = f"{method}_step{info['step']}" if info["step"] is not None else method
    out_dir = _output_dir(output_dir, workdir, name)
    png = None
    if jax.process_index() == 0:
        png = save_samples(images, out_dir, scale=max(1, 64 // config.data.image_size))
    return {"png": png, "npz": os.path.join(out_dir, "samples.npz"), "nfe": nfe,
            "seconds": seconds, "num_samples": n, "images": images}


def bpd_from_checkpoint(config, *, workdir=None, checkpoint=None, step=None, use_ema=True,
                        seed=0, output_dir=None) -> dict:
    """bits/dim of ``config.eval.bpd_dataset`` (reference ``run_lib.evaluate``: uniform
    dequantisation, ``eval.bpd_num_repeats`` passes, probability-flow ODE with Hutchinson)."""
    from score_jax import likelihood

    params, info = load_params(config, workdir=workdir, checkpoint=checkpoint, step=step,
                               use_ema=use_ema)
    mesh = info["mesh"]
    d, e = config.data, config.eval
    parallel.check_batch_size(e.batch_size, mesh, "eval.batch_size")
    ds = data_lib.get_dataset(d.dataset, split=e.bpd_dataset,
                              batch_size=e.batch_size // jax.process_count(),
                              image_size=d.image_size,
                              training=False, seed=int(config.seed), category=d.get("category"),
                              data_dir=d.get("data_dir"), tfrecords_path=d.get("tfrecords_path"),
                              num_channels=d.num_channels)
    sde = sde_from_config(config)
    s = config.sampling
    if objective_from_config(config) == "flow_matching":
        # The same estimator on the flow's ODE: bpd = -log p_1(x_model) / (D ln 2) + offset.
        path = flow_path_from_config(config, sde)
        score_fn = flow.get_velocity_fn(info["model"], {"params": params})

        @jax.jit
        def bpd_fn(key, velocity_fn, x):
            kd, kl = jax.random.split(key)
            x = likelihood.dequantize(kd, x)
            xm = 2.0 * x - 1.0 if d.centered else x
            logp, _, nfe = flow.flow_log_likelihood(kl, velocity_fn, xm, path=path,
                                                    rtol=float(s.rtol), atol=float(s.atol))
            D = math.prod(x.shape[1:])
            return -logp / (D * math.log(2.0)) + likelihood.bpd_offset(bool(d.centered)), nfe
    else:
        score_fn = get_score_fn(sde, info["model"], {"params": params},
                                continuous=bool(config.training.continuous))

        @jax.jit
        def bpd_fn(key, score_fn, x):
            return likelihood.bits_per_dim(key, sde, score_fn, x, centered=bool(d.centered),
                                           dequantize_data=True, rtol=float(s.rtol),
                                           atol=float(s.atol))[::2]

    values, nfes = [], []
    key = jax.random.key(seed)
    max_batches = e.get("bpd_max_batches")
    for r in range(int(e.bpd_num_repeats)):
        for i, batch in enumerate(ds.epoch()):
            if max_batches is not None and i >= max_batches:
                break
            x = parallel.to_global(batch["image"], mesh)
            bpd, nfe = bpd_fn(jax.random.fold_in(jax.random.fold_in(key, r), i), score_fn, x)
            values.append(parallel.to_host(bpd))
            nfes.append(int(nfe))
    v = np.concatenate(values)
    out = {"bpd": float(v.mean()), "bpd_std_error": float(v.std() / math.sqrt(len(v))),
           "num_examples": int(len(v)), "mean_nfe": float(np.mean(nfes)),
           "dataset": d.dataset, "split": e.bpd_dataset, "step": info["step"]}
    if jax.process_index() == 0:
        out_dir = _output_dir(output_dir, workdir, f"bpd_step{info['step']}")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bpd.json"), "w") as f:
            json.dump(out, f, indent=2)
    return out
