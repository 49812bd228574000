"""Colorization by replacement in a decoupled colour basis (Song et al. 2021, App. I.2; reference
``controllable_generation.py::get_pc_colorizer``).

The RGB channels are rotated by the orthonormal matrix M whose first column is the grey axis
(1, 1, 1) / sqrt 3; the grey-scale image fixes that coordinate, sqrt 3 * grey, and the two chroma
coordinates are generated. With x -> x @ M this is inpainting (``inpainting.py``) with the mask
(1, 0, 0) in the decoupled basis: same samplers, same exact known part, denoised chroma.

    x, nfe = guidance.colorize(key, sde, score_fn, gray, sampler="pc")

``gray`` is (B, H, W, 1), or (B, H, W, 3) with equal channels. The output's channel mean equals
``gray`` exactly.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from score_jax.guidance.inpainting import check_sampler, run_with_replacement
from score_jax.runner import run_sampler

Array = jax.Array


def decoupling_matrix(dtype=jnp.float32) -> Array:
    """The reference's orthonormal colour basis (columns: grey axis, two chroma axes), in closed
    form: [[1/sqrt3, -2/sqrt6, 0], [1/sqrt3, 1/sqrt6, 1/sqrt2], [1/sqrt3, 1/sqrt6, -1/sqrt2]]."""
    a, b, c = 1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)
    return jnp.asarray([[a, -2 * b, 0.0], [a, b, c], [a, b, -c]], dtype)


def decouple(x: Array) -> Array:
    """RGB -> (grey, chroma1, chroma2): x @ M."""
    return jnp.einsum("...i,ij->...j", x, decoupling_matrix(x.dtype))


def couple(x: Array) -> Array:
    """(grey, chroma1, chroma2) -> RGB: x @ M^T (M is orthonormal)."""
    return jnp.einsum("...j,ij->...i", x, decoupling_matrix(x.dtype))


def _gray3(gray: Array, shape: tuple[int, ...]) -> Array:
    if gray.shape[-1] == 1:
        gray = jnp.broadcast_to(gray, gray.shape[:-1] + (3,))
    if gray.shape != tuple(shape):
        raise ValueError(f"gray must have shape {tuple(shape[:-1]) + (1,)} or {tuple(shape)}; "
                         f"got {gray.shape}")
    return gray


def colorize_method(key: Array, sde, score_fn: Callable, x_init: Array, *, inputs: dict,
                    sampler: str = "pc", **options) -> tuple[Array, Any]:
    """The colorization sampler (contract of ``runner.run_sampler``): ``inputs = {"gray":
    (B, H, W, 1 or 3)}``; the sampler and its options as in ``inpainting.run_with_replacement``."""
    gray = _gray3(jnp.asarray(inputs["gray"], x_init.dtype), x_init.shape)
    mask = jnp.asarray([1.0, 0.0, 0.0], x_init.dtype)
    known = decouple(gray)  # (sqrt3 grey, 0, 0)
    return run_with_replacement(key, sde, score_fn, x_init, known, mask,
                                basis=decoupling_matrix(x_init.dtype), sampler=sampler, **options)


def colorize(key: Array, sde, score_fn: Callable, gray: Array, *, sampler: str = "pc",
             sharding=None, **options) -> tuple[Array, int]:
    """Colorize ``gray`` (B, H, W, 1 or 3); returns ``(rgb, nfe)``, rgb (B, H, W, 3) whose channel
    mean equals gray exactly, nfe a Python int. ``sampler`` and options as in
    ``inpainting.inpaint``; raises ValueError for a bad sampler / option or gray shape."""
    gray = jnp.asarray(gray)
    if gray.ndim < 2 or gray.shape[-1] not in (1, 3):
        raise ValueError(f"gray must have shape (B, H, W, 1) or (B, H, W, 3); got {gray.shape}")
    shape = tuple(gray.shape[:-1]) + (3,)
    _gray3(gray, shape)
    check_sampler(sde, sampler, options)
    return run_sampler(colorize_method, key, sde, score_fn, shape, dtype=gray.dtype,
                       sharding=sharding, inputs={"gray": gray},
                       options=dict(options, sampler=sampler))
