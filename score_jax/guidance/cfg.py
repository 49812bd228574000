"""Classifier-free guidance (Ho & Salimans 2022).

A class-conditional network trained with its label dropped to a null label with probability p
(``losses.get_loss_fn(num_classes=K, label_dropout=p)``, null label K; ``flow.get_flow_loss_fn``
likewise) is sampled with the guided prediction

    pred_w(x, t) = pred(x, t, null) + w (pred(x, t, y) - pred(x, t, null)),

w = 1 the conditional model, w = 0 the unconditional one, w > 1 sharper and less diverse. The same
combination holds for eps, score, x0, v and velocity heads: they are affine in one another at fixed
(x, t) and the weights (1 - w, w) sum to one. Both evaluations go through ONE network call on the
concatenated batch [x; x] with labels [y; null] (half the calls, one compiled graph).

    score_fn = cfg_score_fn(sde, model, variables, labels, w=3.0, num_classes=10)
    x, nfe = sampling.sample(key, sde, score_fn, shape, "dpm_solver", num_steps=20)

Every sampler (and ``flow.flow_sample`` with ``cfg_velocity_fn``) works with the guided function.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from score_jax import pytree
from score_jax.runner import as_pytree_fn
from score_jax.score import ModelScoreFn

Array = jax.Array


# One home for the plain-function -> pytree wrapping: the sampler runner's.
as_pytree_callable = as_pytree_fn


def check_guidance_scale(w) -> None:
    """ValueError unless the guidance scale ``w`` is a finite number (traced values pass)."""
    if isinstance(w, jax.core.Tracer):
        return
    arr = np.asarray(w)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ValueError(f"guidance scale w must be a finite number (w = 0: unconditional, 1: "
                         f"conditional, > 1: guided); got w={w!r}")


@pytree.dataclass
class ClassifierFreeGuidance:
    """``fn(x, t) = c(x, t, null) + w (c(x, t, y) - c(x, t, null))`` for a conditional
    ``c(x, t, y)`` called ONCE on the batch of size 2B ([x; x], [t; t], [y; null]).

    ``labels`` (B,) int and ``w`` are traced leaves (no recompilation when they change).
    """

    conditional: Any
    labels: Array
    w: Array
    null_label: int = struct.field(pytree_node=False, default=0)

    def __call__(self, x: Array, t: Array) -> Array:
        B = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), (B,))
        labels = jnp.broadcast_to(jnp.asarray(self.labels), (B,))
        y = jnp.concatenate([labels, jnp.full((B,), self.null_label, labels.dtype)])
        out = self.conditional(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)
        cond, uncond = out[:B], out[B:]
        w = jnp.asarray(self.w, x.dtype)
        return uncond + w * (cond - uncond)


def classifier_free_guidance(conditional: Callable[[Array, Array, Array], Array], labels: Array,
                             w: float, null_label: int) -> ClassifierFreeGuidance:
    """Guide any conditional prediction ``conditional(x, t, y)`` (score, eps, velocity, ...).
    Raises ValueError for a non-finite ``w``."""
    check_guidance_scale(w)
    return ClassifierFreeGuidance(as_pytree_callable(conditional), jnp.asarray(labels),
                                  jnp.asarray(w), int(null_label))


def _check_labels(labels, num_classes: int) -> None:
    """ValueError unless the integer labels lie in [0, num_classes) (traced values pass)."""
    if isinstance(labels, jax.core.Tracer):
        return
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers in [0, num_classes={num_classes}); got dtype "
                         f"{arr.dtype}")
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, num_classes={num_classes}); got range [{lo}, {hi}]")


@pytree.dataclass
class ConditionalModelScore:
    """``score(x, t, y)`` of a class-conditional Flax network (``model(x, labels, train, y=y)``),
    wired like ``score.get_score_fn``."""

    sde: Any
    variables: Any
    model: nn.Module = struct.field(pytree_node=False)
    continuous: bool = struct.field(pytree_node=False, default=True)
    prediction: str = struct.field(pytree_node=False, default="auto")

    def __call__(self, x: Array, t: Array, y: Array) -> Array:
        return ModelScoreFn(self.sde, self.variables, self.model, self.continuous, self.prediction,
                            model_kwargs={"y": y})(x, t)


def cfg_score_fn(sde, model: nn.Module, variables: Any, labels: Array, *, w: float,
                 num_classes: int, continuous: bool = True,
                 prediction: str = "auto") -> ClassifierFreeGuidance:
    """Guided ``score_fn(x, t)`` of a network trained with label dropout; the null label is
    ``num_classes`` (the convention of ``losses.get_loss_fn`` and the models' label embedding).
    Raises ValueError for labels outside [0, num_classes) or a non-finite ``w``."""
    _check_labels(labels, num_classes)
    check_guidance_scale(w)
    cond = ConditionalModelScore(sde, variables, model, continuous, prediction)
    return ClassifierFreeGuidance(cond, jnp.asarray(labels), jnp.asarray(w), int(num_classes))


@pytree.dataclass
class ConditionalModelVelocity:
    """``velocity(x, t, y)`` of a class-conditional flow-matching network (flow time t)."""

    variables: Any
    model: nn.Module = struct.field(pytree_node=False)
    time_scale: float = struct.field(pytree_node=False, default=999.0)

    def __call__(self, x: Array, t: Array, y: Array) -> Array:
        return self.model.apply(self.variables, x, self.time_scale * t, train=False, y=y)


def cfg_velocity_fn(model: nn.Module, variables: Any, labels: Array, *, w: float,
                    num_classes: int, time_scale: float = 999.0) -> ClassifierFreeGuidance:
    """Guided ``velocity_fn(x, t)`` for ``flow.flow_sample`` (null label ``num_classes``).
    Raises ValueError for labels outside [0, num_classes) or a non-finite ``w``."""
    _check_labels(labels, num_classes)
    check_guidance_scale(w)
    cond = ConditionalModelVelocity(variables, model, time_scale)
    return ClassifierFreeGuidance(cond, jnp.asarray(labels), jnp.asarray(w), int(num_classes))


@pytree.dataclass
class FactoryConditional:
    """``c(x, t, y) = make(params, {"y": y})(x, t)`` for a score factory such as
    ``config.Built.make_score_fn`` (DSM on any SDE, EDM's denoiser score): ``params`` are traced
    leaves, ``make`` is static (hashed by identity: keep one factory per model)."""

    params: Any
    make: Callable = struct.field(pytree_node=False)

    def __call__(self, x: Array, t: Array, y: Array) -> Array:
        return self.make(self.params, {"y": y})(x, t)


def cfg_factory_score_fn(make_score_fn: Callable, params: Any, labels: Array, *, w: float,
                         num_classes: int) -> ClassifierFreeGuidance:
    """Guided ``score_fn(x, t)`` from a score factory ``make_score_fn(params, model_kwargs)``
    (``config.Built.make_score_fn``): s_w = (1 - w) s(x, t | null) + w s(x, t | y), null label
    ``num_classes``, ONE factory call per evaluation on the batch of 2B. Raises ValueError for
    labels outside [0, num_classes) or a non-finite ``w``."""
    _check_labels(labels, num_classes)
    check_guidance_scale(w)
    return ClassifierFreeGuidance(FactoryConditional(params, make_score_fn), jnp.asarray(labels),
                                  jnp.asarray(w), int(num_classes))
