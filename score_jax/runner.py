"""The one jitted sampler runner, used by ``sampling.sample``, ``flow.flow_sample`` and guidance.

A sampler is any function with the contract

    fn(key, sde, score_fn, x_init, **options) -> (x, nfe)

``run_sampler`` draws ``x_init`` from ``sde.prior_sampling`` (unless given), lays the batch out
over a device mesh (optional), and runs ``fn`` inside one ``jax.jit``:
- ``key``, ``sde``, ``score_fn``, ``x_init`` and ``inputs`` are traced: a pytree ``score_fn``
  (``score.ModelScoreFn``, ``jax.tree_util.Partial``, an equinox module) with new weights of the same
  shapes reuses the compiled sampler without tracing the network again; a plain function becomes a
  static ``Partial`` (compiled once per function object);
- ``options`` are static (hashable) and part of the cache key;
- the check that ``score_fn(x, t)`` returns x's shape and dtype runs while tracing, so a cache hit
  does no work in Python beyond jax's own dispatch.

The compiled runners live in a bounded LRU cache (``CACHE_SIZE`` entries); this module keeps no
other state. Layer: imports jax only (below ``sampling``, ``flow`` and ``guidance``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array

CACHE_SIZE = 64


def as_pytree_fn(fn: Callable) -> Any:
    """Plain functions become ``jax.tree_util.Partial`` (a pytree without leaves, hashed by the
    function object: static under jit); pytree callables pass through (their leaves are traced)."""
    leaves, _ = jax.tree_util.tree_flatten(fn)
    if len(leaves) == 1 and leaves[0] is fn:  # not a pytree node: a plain callable
        return jax.tree_util.Partial(fn)
    return fn


def auto_sharding(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding | None:
    """The same layout on a mesh with Auto axes.

    ``jax.make_mesh`` defaults to Explicit axes, under which every op must be sharding-annotated
    (diffrax's norms are not); samplers only need the batch laid out over devices and let the
    compiler propagate the rest, so Explicit meshes are converted to Auto ones.
    """
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return sharding
    mesh = sharding.mesh
    if all(a == jax.sharding.AxisType.Auto for a in mesh.axis_types):
        return sharding
    auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    return jax.sharding.NamedSharding(auto, sharding.spec)


def freeze(v: Any) -> Any:
    """A hashable copy of an options value (dicts and lists become sorted tuples)."""
    if isinstance(v, dict):
        return tuple(sorted((k, freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    return v


def check_score_shape(score_fn: Callable, x: Array) -> None:
    """ValueError unless ``score_fn(x, t)`` (t of shape (B,), float32 or x's wider dtype) has x's
    shape and dtype.

    Called while tracing (abstract evaluation only, no FLOPs)."""
    shape, dtype = tuple(x.shape), x.dtype
    # Samplers hand t in float32 (or x's wider dtype) whatever x's dtype (sampling/common.py).
    t = jax.ShapeDtypeStruct(shape[:1], jnp.promote_types(dtype, jnp.float32))
    out = jax.eval_shape(score_fn, jax.ShapeDtypeStruct(shape, dtype), t)
    if not hasattr(out, "shape") or tuple(out.shape) != shape:
        raise ValueError(
            f"score_fn(x, t) must return an array of x's shape {shape}; got "
            f"{getattr(out, 'shape', type(out))} for x {shape} and t {shape[:1]}"
        )
    if out.dtype != dtype:
        raise ValueError(f"score_fn returned dtype {out.dtype} for x of dtype {jnp.dtype(dtype)}")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compiled(fn: Callable, shape: tuple[int, ...], dtype, sharding, options: tuple,
              has_x_init: bool, has_inputs: bool) -> Callable:
    opts = dict(options)

    def run(key, sde, score_fn, x_init, inputs):
        k_prior, k_run = jax.random.split(key)
        if not has_x_init:
            x_init = sde.prior_sampling(k_prior, shape, dtype)
        if sharding is not None:
            x_init = jax.lax.with_sharding_constraint(x_init, sharding)
        check_score_shape(score_fn, x_init)
        kw = {"inputs": inputs} if has_inputs else {}
        x, nfe = fn(k_run, sde, score_fn, x_init, **kw, **opts)
        return x, jnp.asarray(nfe, jnp.int32)

    return jax.jit(run, out_shardings=None if sharding is None else (sharding, None))


def run_sampler(
    fn: Callable,
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    shape: tuple[int, ...],
    *,
    x_init: Array | None = None,
    dtype=jnp.float32,
    sharding: jax.sharding.Sharding | None = None,
    inputs: Any = None,
    options: dict | None = None,
) -> tuple[Array, int]:
    """Run the sampler ``fn(key, sde, score_fn, x_init, **options)`` in one cached ``jax.jit``.

    Args:
      fn: the sampler (see the module docstring); hashed by identity.
      key: PRNG key; split into the prior draw and the sampler's key.
      sde: a pytree with ``prior_sampling(key, shape, dtype)`` (an SDE, or a flow path).
      score_fn: ``score_fn(x, t)`` with x (B, ...) and t (B,), returning x's shape and dtype.
      shape: (B, ...) of the samples, at least 2 dims.
      x_init: replaces the prior draw (e.g. to decode given latents); shape ``shape``.
      dtype: float dtype of the samples.
      sharding: lays the batch out over a mesh (``NamedSharding(mesh, P("data"))``); the result
        does not depend on the layout.
      inputs: a pytree of arrays passed traced as ``fn(..., inputs=inputs)`` (None: not passed).
      options: static keyword options of ``fn`` (hashable values; dicts / lists are frozen).

    Returns:
      ``(x, nfe)``: the samples and the true number of score evaluations per batch, a Python int
      (one host synchronisation after the whole sampler).

    Raises:
      ValueError: ``shape`` with fewer than 2 dims, or a ``score_fn`` whose output shape / dtype
        differs from x's (raised while compiling).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (batch, ...) with at least 2 dims; got {shape}")
    if x_init is not None and tuple(x_init.shape) != shape:
        raise ValueError(f"x_init must have the sample shape {shape}; got {tuple(x_init.shape)}")
    dtype = jnp.dtype(dtype)
    opts = tuple(sorted((k, freeze(v)) for k, v in (options or {}).items()))
    run = _compiled(fn, shape, dtype, auto_sharding(sharding), opts, x_init is not None,
                    inputs is not None)
    x, nfe = run(key, sde, as_pytree_fn(score_fn), x_init, inputs)
    return x, int(nfe)


def cache_info():
    """``functools`` cache statistics of the compiled runners (hits, misses, maxsize, currsize)."""
    return _compiled.cache_info()


def clear_cache() -> None:
    """Drop every compiled runner."""
    _compiled.cache_clear()


__all__ = ["run_sampler", "as_pytree_fn", "auto_sharding", "check_score_shape", "freeze",
           "cache_info", "clear_cache", "CACHE_SIZE"]
