"""Classifier-free guidance on text (Ho & Salimans 2022; Stable Diffusion's pipelines).

A network trained with captions dropped to the empty prompt (objective "text_score",
``captions.drop_captions``) is sampled with

    pred_w(x, t) = pred(x, t, null) + w (pred(x, t, text) - pred(x, t, null)),

the null condition being the empty prompt's (or a negative prompt's) tokens / embeddings: the
``guidance_scale`` of diffusers (``noise_pred_uncond + guidance_scale * (noise_pred_text -
noise_pred_uncond)``). Both evaluations are ONE network call on the batch [x; x] with the
conditions [text; null]. The same combination holds for every head (score, eps, x0, v).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from score_jax import pytree
from score_jax.guidance.cfg import check_guidance_scale

Array = jax.Array


def _pair(cond: Array, null: Array) -> Array:
    null = jnp.broadcast_to(jnp.asarray(null, cond.dtype), cond.shape)
    return jnp.concatenate([cond, null])


@pytree.dataclass
class PromptGuidance:
    """``fn(x, t) = c(x, t, null) + w (c(x, t, cond) - c(x, t, null))`` with
    ``c = make(params, kwargs)``: ``kwargs`` is the tree ``cond_kwargs`` (batch B) stacked on
    ``null_kwargs`` (batch B or 1, broadcast), e.g. ``{"tokens": (B, L)}``. ``params``, the
    conditions and ``w`` are traced leaves; ``make`` is static (hashed by identity: keep one
    factory per model, e.g. ``config.Built.make_score_fn``)."""

    params: Any
    cond_kwargs: Any
    null_kwargs: Any
    w: Array
    make: Callable = struct.field(pytree_node=False)

    def __call__(self, x: Array, t: Array) -> Array:
        B = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), (B,))
        kwargs = jax.tree_util.tree_map(_pair, self.cond_kwargs, self.null_kwargs)
        out = self.make(self.params, kwargs)(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
        cond, uncond = out[:B], out[B:]
        return uncond + jnp.asarray(self.w, x.dtype) * (cond - uncond)


def prompt_guidance(make: Callable, params: Any, cond_kwargs: Any, null_kwargs: Any,
                    w: float) -> PromptGuidance:
    """Guided ``score_fn(x, t)`` of a text-conditional network (see `PromptGuidance`).

    Args:
      make: ``make(params, model_kwargs) -> score_fn(x, t)`` (``Built.make_score_fn``).
      cond_kwargs: the prompts' conditioning, e.g. ``{"tokens": int32 (B, L)}``.
      null_kwargs: the null condition, same tree, batch 1 or B (the empty prompt's tokens, or a
        negative prompt's).
      w: the guidance scale (0: unconditional, 1: conditional, > 1: guided).

    A factory with a ``conditioning(model_kwargs)`` method (``config.text.TextScoreFactory`` of
    a frozen pretrained text encoder) turns both conditions into what the network reads (tokens
    -> the encoder's hidden states) here, once, outside the sampler: its weights are then no
    constants of the sampling program.

    Raises ValueError for a non-finite ``w`` or trees of different structure."""
    check_guidance_scale(w)
    prepare = getattr(make, "conditioning", None)
    if prepare is not None:
        cond_kwargs, null_kwargs = prepare(cond_kwargs), prepare(null_kwargs)
    if jax.tree_util.tree_structure(cond_kwargs) != jax.tree_util.tree_structure(null_kwargs):
        raise ValueError(f"cond_kwargs and null_kwargs must have the same keys; got "
                         f"{jax.tree_util.tree_structure(cond_kwargs)} and "
                         f"{jax.tree_util.tree_structure(null_kwargs)}")
    return PromptGuidance(params, jax.tree_util.tree_map(jnp.asarray, cond_kwargs),
                          jax.tree_util.tree_map(jnp.asarray, null_kwargs), jnp.asarray(w), make)


__all__ = ["PromptGuidance", "prompt_guidance"]
