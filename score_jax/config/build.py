"""``build(config)``: validate, then build every object of a run into a typed `Built`."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import optax

from score_jax import latent as latent_lib
from score_jax import parallel
from score_jax import train_step as ts
from score_jax.config import latent as latent_cfg
from score_jax.config.objectives import Objective


class Built(NamedTuple):
    """Everything a run needs, built once from a config (`build`); no config below this."""

    mesh: jax.sharding.Mesh
    sde: Any
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: Callable
    image_shape: tuple[int, int, int]  # (H, W, C)
    init: Callable  # jitted key -> TrainState (replicated or FSDP-sharded: parallel.fsdp)
    abstract_state: Any  # shape-only TrainState with its shardings: what orbax restores into
    train_loss: Callable  # (variables, batch, key) -> (loss, aux), batches in [0, 1]
    eval_loss: Callable
    train_step: Callable  # jitted (state, global batch, key) -> (state, metrics)
    eval_step: Callable  # jitted (state, global batch, key) -> loss
    ema_rate: float
    objective: str  # "score", "flow_matching" or "edm"
    method: str  # sampling method ("flow" for flow models)
    options: dict  # sampler options
    flow_path: Any  # the flow's probability path, None for score models
    continuous: bool
    centered: bool
    num_classes: int | None
    class_label: int | None
    make_score_fn: Callable | None  # (params, model_kwargs=None) -> score_fn; None for flows
    guidance_scale: float | None = None  # classifier-free guidance w (None: conditional)
    # latent_lib.LatentSpace of a latent diffusion model (stage 2), or None; its weights are
    # train_step.frozen["autoencoder"] (FSDP-sharded under parallel.fsdp)
    latent: Any = None
    objective_spec: Objective | None = None  # the registry record of ``objective``
    ema_warmup: bool = True  # train_step.ema_decay's warmup (config.model.ema_warmup)


def build(config, *, mesh=None, model: nn.Module | None = None,
          teacher: Callable | None = None, frozen: Any = None) -> Built:
    """Validate ``config`` (before any compilation), then build every object of a run.

    Args:
      mesh: the device mesh (default `mesh_from_config`: ``data x fsdp``); with
        ``parallel.fsdp`` > 1 it must have an ``"fsdp"`` axis of that size.
      model: replaces the config's network (tests, notebooks).
      teacher: objective "distill": the teacher's denoiser, or a ``distill.FrozenTeacher``
        reading its weights from ``frozen`` (``train_lib.load_teacher``).
      frozen: a dict of arrays the loss reads and does not train (``variables["frozen"]``,
        e.g. ``{"teacher": params}``): an argument of the jitted train / eval steps, laid out
        like the parameters (FSDP-sharded under ``parallel.fsdp``), bound to them
        (``train_step.bind_frozen``), so callers call ``train_step(state, batch, key)``. The
        objective's own frozen weights (its record's ``frozen``, e.g. the pretrained text
        encoder of ``model.text_encoder.path``: ``{"text_encoder": variables}``) and, in stage 2
        of latent diffusion, the frozen autoencoder's (``{"autoencoder": variables}``) are added
        to it; the score wiring and ``Built.latent`` (encode / decode) read the same placed
        arrays (``train_step.frozen``).

    Raises:
      ValueError: invalid config, naming the value and the valid choices; ``frozen`` with a key
        the objective's own frozen weights (or the latent autoencoder's) use.
    """
    # The builders are looked up on the package, so that replacing one there (a notebook, a
    # test: ``monkeypatch.setattr(config, "model_from_config", ...)``) is what build uses.
    from score_jax import config as api

    if mesh is None:
        api.validate_config(config)  # a bad parallel.fsdp is refused before the mesh is made
        mesh = api.mesh_from_config(config)
    else:
        api.validate_config(config, num_devices=mesh.devices.size)
    fsdp = int(api.fsdp_from_config(config))
    if fsdp != parallel.fsdp_size(mesh):
        raise ValueError(f"config.parallel.fsdp={fsdp} but the mesh passed to build has an fsdp "
                         f"axis of size {parallel.fsdp_size(mesh)} ({dict(mesh.shape)}); valid: "
                         f"parallel.fsdp={parallel.fsdp_size(mesh)}, or build the mesh with "
                         f"parallel.make_mesh(n, fsdp={fsdp})")
    min_size = int(api.min_shard_size_from_config(config))
    parallel.check_batch_size(config.training.batch_size, mesh)
    parallel.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
    sde = api.sde_from_config(config)
    # stage 2: the frozen autoencoder's weights join the steps' frozen argument (below)
    space = latent_cfg.latent_space_from_config(config) if latent_cfg.is_latent(config) else None
    if model is None:
        model = api.model_from_config(config) if space is None else _latent_model(config, space)
    if api.objective_spec(config).model_name is None:  # a score / denoiser / velocity network
        from score_jax import models

        models.check_call_signature(model)  # (x, labels, *, train): before any compilation
    tx, schedule = api.optimizer_from_config(config)
    d, t = config.data, config.training
    shape = (int(d.image_size), int(d.image_size), int(d.num_channels))
    num_classes = config.model.get("num_classes")
    shape = space.latent_shape if space is not None else shape
    state_init = api.objective_spec(config).init or ts.jit_init  # the record's initialiser
    init, abstract = state_init(model, tx, shape, mesh, num_classes=num_classes,
                                min_shard_size=min_size)
    state_sharding = ts.state_sharding_of(abstract)
    if space is not None:  # latents: encoded on the fly, no [0, 1] -> [-1, 1] scaling
        unscaled = config.copy_and_resolve_references()
        unscaled.data.centered = False
        train_loss = latent_lib.encoded_loss_fn(
            api.loss_fn_from_config(unscaled, sde, model, train=True), space)
        eval_loss = latent_lib.encoded_loss_fn(
            api.loss_fn_from_config(unscaled, sde, model, train=False), space)
    else:
        train_loss = api.loss_fn_from_config(config, sde, model, train=True, teacher=teacher)
        eval_loss = api.loss_fn_from_config(config, sde, model, train=False, teacher=teacher)
    ema_rate = float(config.model.ema_rate)
    ema_warmup = bool(config.model.get("ema_warmup", True))
    spec = api.OBJECTIVE_SPECS[api.objective_from_config(config)]
    own = api.frozen_from_config(config)
    if space is not None:
        own = {**(own or {}), latent_lib.FROZEN_KEY: space.variables}
    frozen = _merge_frozen(frozen, own)
    frozen_sharding = None if frozen is None else ts.frozen_shardings(frozen, mesh, min_size)
    train_step = ts.jit_train_step(
        train_loss, tx, schedule, ema_rate, mesh, ema_warmup=ema_warmup,
        state_sharding=state_sharding, state_inputs=spec.state_inputs,
        grad_accum_steps=int(t.get("grad_accum_steps", 1)),
        per_example_noise=bool(t.get("per_example_noise", False)), frozen_sharding=frozen_sharding)
    eval_step = ts.jit_eval_step(eval_loss, mesh, state_sharding=state_sharding,
                                 state_inputs=spec.state_inputs, frozen_sharding=frozen_sharding)
    if frozen is not None:
        train_step = ts.bind_frozen(train_step, frozen, frozen_sharding)
        eval_step = ts.bind_frozen(eval_step, train_step.frozen, copy=False)  # not donated
    if space is not None:  # sampling decodes with the same placed weights (an argument)
        space = latent_lib.bind_weights(space, train_step.frozen[latent_lib.FROZEN_KEY])
    method, options = api.sampling_options_from_config(config.sampling)
    objective = api.objective_from_config(config)
    path = api.flow_path_from_config(config, sde) if spec.sampler == api.FLOW_METHOD else None
    return Built(mesh=mesh, sde=sde, model=model, tx=tx, schedule=schedule, image_shape=shape,
                 init=init, abstract_state=abstract, train_loss=train_loss, eval_loss=eval_loss,
                 train_step=train_step, eval_step=eval_step,
                 ema_rate=ema_rate,
                 objective=objective, method=method, options=options, flow_path=path,
                 continuous=bool(t.continuous),
                 centered=bool(d.centered) or space is not None,  # decoded latents: [-1, 1]
                 num_classes=num_classes, class_label=config.sampling.get("class_label"),
                 make_score_fn=api.score_fn_factory(
                     config, sde, model, frozen=None if frozen is None else train_step.frozen),
                 guidance_scale=api.guidance_scale_from_config(config), latent=space,
                 objective_spec=spec, ema_warmup=ema_warmup)


def _merge_frozen(given: Any, own: dict | None) -> Any:
    """The caller's ``frozen`` dict and the objective's own (None when both are None)."""
    if own is None:
        return given
    if given is None:
        return dict(own)
    if not isinstance(given, dict):
        raise ValueError(f"frozen must be a dict (name -> weights) to join the objective's own "
                         f"frozen weights {sorted(own)}; got {type(given).__name__}")
    clash = sorted(set(given) & set(own))
    if clash:
        raise ValueError(f"frozen keys {clash} are the objective's (or the latent autoencoder's) "
                         f"own frozen weights; valid: "
                         f"keys other than {sorted(own)}")
    return {**given, **own}


def _latent_model(config, space) -> nn.Module:
    """The diffusion network of a latent model: input (h, w, latent_channels) = the latent
    shape, no [0, 1] -> [-1, 1] shift inside (latents are centred)."""
    from score_jax import models

    h, _, c = space.latent_shape
    return models.get_model(config.model, image_size=h, num_channels=c, centered=True)


