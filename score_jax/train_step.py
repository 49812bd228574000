"""Train state, optimiser and the train / eval steps: pure and config-free.

Everything here takes explicit arguments (a loss function, an optax transformation, a mesh); the
config is read in ``score_jax.config``. One code path for 1 device, N devices and N hosts: the
step is ``jax.jit`` over a 1-D ``Mesh`` with the batch sharded ``P("data")`` and the state
replicated ``P()`` (XLA inserts the gradient all-reduce). Per-step randomness is
``fold_in(key, step)`` (big_vision ``update_fn``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from score_jax import parallel, pytree

Array = jax.Array


@pytree.dataclass
class TrainState:
    """Arrays only, so orbax saves it and it shards: step, parameters, EMA parameters and the
    optimiser state (an optax NamedTuple tree)."""

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any


OPTIMIZERS = ("Adam", "AdamW")
LR_DECAYS = ("constant", "cosine", "linear")


def make_optimizer(*, lr: float, beta1: float = 0.9, eps: float = 1e-8, warmup: int = 0,
                   grad_clip: float = -1.0, weight_decay: float = 0.0,
                   optimizer: str = "Adam", lr_decay: str = "constant",
                   decay_steps: int | None = None) -> tuple[optax.GradientTransformation, Callable]:
    """The reference optimiser (score_sde ``losses.optimization_manager``) as an optax chain.

    lr(step) = lr * min(step / warmup, 1) (linear warmup from 0; constant if warmup = 0), the
    reference's schedule (``lr_decay="constant"``). ``lr_decay="cosine"``: after the warmup,
    lr * (1 + cos(pi u)) / 2 with u = (step - warmup) / (decay_steps - warmup) (Loshchilov & Hutter
    2017, SGDR without restarts; optax ``warmup_cosine_decay_schedule``), reaching 0 at
    ``decay_steps`` (the run's ``n_iters``) and staying there; ``"linear"``: lr * (1 - u). A
    decaying rate suits runs whose length is known in advance (the CPU digits default);
    gradients clipped to global norm ``grad_clip`` (no clipping if < 0); Adam(beta1, 0.999, eps);
    ``weight_decay`` > 0 is decoupled and scaled by the learning rate (flax.optim.Adam / AdamW).

    Returns:
      ``(tx, schedule)``: the optax transformation and the learning-rate schedule.

    Raises:
      ValueError: ``optimizer`` not in ``OPTIMIZERS``, ``lr_decay`` not in ``LR_DECAYS``, or a
        decay without ``decay_steps > warmup``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optim.optimizer={optimizer!r} unknown; valid choices: "
                         f"{list(OPTIMIZERS)}")
    if lr_decay not in LR_DECAYS:
        raise ValueError(f"optim.lr_decay={lr_decay!r} unknown; valid choices: {list(LR_DECAYS)}")
    if lr_decay != "constant" and not (decay_steps is not None and decay_steps > warmup):
        raise ValueError(f"optim.lr_decay={lr_decay!r} needs decay_steps (training.n_iters) > "
                         f"warmup; got decay_steps={decay_steps}, warmup={warmup}")
    if lr_decay == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, int(warmup), int(decay_steps),
                                                      end_value=0.0)
    elif lr_decay == "linear":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, int(warmup)),
             optax.linear_schedule(lr, 0.0, int(decay_steps) - int(warmup))], [int(warmup)])
    elif warmup > 0:
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
    """Initialise parameters (on a batch of one image of ``image_shape`` (H, W, C)), EMA =
    parameters, and the optimiser state; ``num_classes`` set: the network takes labels ``y``."""
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
               ema_rate: float, state_inputs: bool = False) -> tuple[TrainState, dict]:
    """One optimisation step on the (global) batch, randomness ``fold_in(key, state.step)``.

    ``loss_fn(variables, batch, key)`` gets ``variables = {"params": params}``; with
    ``state_inputs`` also ``"ema_params"`` (constants: the target network of consistency
    distillation) and ``"step"`` (curricula), as ``score_jax.distill``'s losses read them.

    ema <- ema * rate + params * (1 - rate) after the update (reference). A step whose loss or
    gradient norm is not finite leaves the state unchanged (``metrics["finite"]`` is False), so
    the state stays at the last good update.

    Returns:
      ``(new_state, metrics)`` with scalar metrics loss, grad_norm, lr, finite.
    """
    step_key = jax.random.fold_in(key, state.step)

    extra = {"ema_params": state.ema_params, "step": state.step} if state_inputs else {}

    def objective(params):
        return loss_fn({"params": params, **extra}, batch, step_key)

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


def eval_step(state: TrainState, batch: Any, key: Array, *, loss_fn: Callable,
              state_inputs: bool = False) -> Array:
    """The loss of the EMA parameters on an evaluation batch (reference ``eval_step``);
    ``state_inputs`` as in `train_step`."""
    extra = {"ema_params": state.ema_params, "step": state.step} if state_inputs else {}
    loss, _ = loss_fn({"params": state.ema_params, **extra}, batch, key)
    return loss


def jit_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable,
                   ema_rate: float, mesh, *, state_inputs: bool = False) -> Callable:
    """``train_step`` jitted over ``mesh``: state replicated and donated, batch on ``"data"``.

    The returned function holds its own compilation cache: build it once (``config.build``)
    and pass it around to reuse the compiled step.
    """
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    fn = functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=schedule,
                           ema_rate=float(ema_rate), state_inputs=state_inputs)
    return jax.jit(fn, in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=0)


def jit_eval_step(loss_fn: Callable, mesh, *, state_inputs: bool = False) -> Callable:
    """``eval_step`` jitted over ``mesh`` (state replicated, batch on ``"data"``)."""
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(functools.partial(eval_step, loss_fn=loss_fn, state_inputs=state_inputs),
                   in_shardings=(rep, dat, rep),
                   out_shardings=rep)


def jit_init(model: nn.Module, tx: optax.GradientTransformation,
             image_shape: tuple[int, int, int], mesh, *,
             num_classes: int | None = None) -> tuple[Callable, Any]:
    """``init_state`` jitted with replicated output, and the abstract (shape-only, sharded)
    state that orbax restores into. Returns ``(init_fn(key) -> TrainState, abstract_state)``."""
    init = functools.partial(init_state, model=model, tx=tx, image_shape=tuple(image_shape),
                             num_classes=num_classes)
    rep = parallel.replicated(mesh)
    abstract = jax.eval_shape(init, jax.random.key(0))
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)
    return jax.jit(init, out_shardings=rep), abstract


__all__ = ["TrainState", "OPTIMIZERS", "make_optimizer", "init_state", "train_step", "eval_step",
           "jit_train_step", "jit_eval_step", "jit_init"]
