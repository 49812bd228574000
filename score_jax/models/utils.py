"""Helpers shared by the networks: noise-level table, dtypes, input checks, rematerialisation."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
M = TypeVar("M", bound=nn.Module)

# Set only inside `record_module_order`; None otherwise, so marking costs nothing in normal use.
_MODULE_ORDER: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "score_jax_module_order", default=None)


@contextlib.contextmanager
def record_module_order() -> Iterator[list[str]]:
    """Collect the names of the modules a network marks with `listed`, in marking order.

    The score_sde_pytorch networks keep their modules in one flat ``all_modules`` list, in the
    order ``forward`` uses them; its state_dict keys are ``all_modules.<i>.<sub>.<param>``. Our
    networks mark each module that the reference keeps in that list, at the point where they
    create it, so the list recorded here (index i -> flax module name) is produced by the same
    code path that builds the network and cannot drift from it. Modules the reference keeps
    outside the list (NCSN++'s parameter-free pyramid re-samplers) are not marked.

    Usage: ``with record_module_order() as order: jax.eval_shape(model.init, ...)``.
    """
    order: list[str] = []
    token = _MODULE_ORDER.set(order)
    try:
        yield order
    finally:
        _MODULE_ORDER.reset(token)


def listed(module: M) -> M:
    """Mark ``module`` (just created in a compact method) as the next entry of the reference's
    ``all_modules`` list; returns it unchanged. A no-op outside `record_module_order`."""
    order = _MODULE_ORDER.get()
    if order is not None:
        if module.name is None:
            raise ValueError("listed() needs a module created inside a compact method")
        if module.name in order:
            raise ValueError(f"module {module.name!r} listed twice")
        order.append(module.name)
    return module


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
    """SMLD noise levels, float64, largest first (index 0 is sigma_max):

        sigma_i = exp(linspace(ln sigma_max, ln sigma_min, N))_i .
    """
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))


def resolve_dtype(dtype: Any) -> Any:
    """``None`` (infer from inputs and params), a dtype, or its name ('bfloat16', 'float32')."""
    if dtype is None or (isinstance(dtype, str) and dtype.lower() in ("", "none")):
        return None
    return jnp.dtype(dtype)


def float_dtype(x: Array) -> Any:
    """At least float32: float64 under x64 with float64 inputs, float32 for bf16 / f16 inputs.
    Used for the noise embeddings and the sigma division, which bf16 would ruin."""
    return jnp.promote_types(x.dtype, jnp.float32)


def check_image(x: Array, *, model: str, image_size: int | None, num_channels: int,
                divisor: int) -> None:
    """Raise ValueError unless x is (B, H, W, C) with C = num_channels, H and W divisible by
    ``divisor`` (2 ** number of down-samplings) and, if given, H = W = image_size."""
    if x.ndim != 4:
        raise ValueError(f"{model}: x must be NHWC (B, H, W, C), got shape {x.shape}")
    _, h, w, c = x.shape
    if c != num_channels:
        raise ValueError(f"{model}: x has {c} channels, the model was built for {num_channels}")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(f"{model}: x is {h}x{w}, the model was built for image_size="
                         f"{image_size}")
    if h % divisor or w % divisor:
        raise ValueError(f"{model}: image size {h}x{w} is not divisible by {divisor}, which "
                         "this architecture's down-sampling needs")


def check_image_size(model: str, image_size: int | None, divisor: int) -> None:
    """Config-time version of `check_image` for the image size alone."""
    if image_size is None:
        return
    if image_size <= 0 or image_size % divisor:
        raise ValueError(f"{model}: image_size={image_size} cannot be taken by this "
                         f"architecture; it must be a positive multiple of {divisor}")


def check_choice(model: str, field: str, value: str, valid: tuple[str, ...]) -> str:
    """Lower-cased ``value`` if valid, else a ValueError naming the valid choices."""
    v = value.lower()
    if v not in valid:
        raise ValueError(f"{model}: {field}={value!r} unknown; valid: {list(valid)}")
    return v


@functools.cache
def remat_class(cls: type[nn.Module], train_argnum: int = 3) -> type[nn.Module]:
    """``nn.remat`` of a block class whose ``__call__(self, x, temb, train)`` has a static
    ``train``; the class keeps its name so parameter names (``ResnetBlockBigGANpp_3``) do not
    change (flax prefixes lifted classes with 'Checkpoint')."""
    rcls = nn.remat(cls, static_argnums=(train_argnum,))
    rcls.__name__ = cls.__name__
    rcls.__qualname__ = cls.__qualname__
    return rcls


def add_label_embedding(temb: Array | None, y: Array | None, batch: int,
                        num_classes: int | None, dim: int, dtype: Any) -> Array | None:
    """temb + E[y] with E a (num_classes + 1, dim) table named ``label_embed`` (created in the
    calling module's compact scope); y = None means the null label ``num_classes`` for every sample.
    """
    if num_classes is None:
        if y is not None:
            raise ValueError("class labels y were given but the model has num_classes=None")
        return temb
    if y is None:
        y = jnp.full((batch,), num_classes, jnp.int32)
    emb = nn.Embed(num_classes + 1, dim, name="label_embed")(jnp.asarray(y).astype(jnp.int32))
    emb = emb.astype(dtype)
    return emb if temb is None else temb + emb


# dtypes the fused cuDNN attention kernel takes (jax.nn.dot_product_attention, implementation
# "cudnn"); float32 and float64 run XLA's path
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _cudnn_attention(q: Array, k: Array, v: Array, scale: float) -> Array | None:
    """The fused cuDNN kernel on a GPU for bf16 / f16 inputs, None where it does not apply (no
    GPU, another dtype, or a shape the kernel refuses at trace time)."""
    if q.dtype not in _CUDNN_DTYPES or jax.default_backend() != "gpu":
        return None
    try:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    except (ValueError, NotImplementedError, RuntimeError, TypeError):
        return None


def dot_product_attention(q: Array, k: Array, v: Array, scale: float) -> Array:
    """softmax(q k^T * scale) v per head, softmax in at least float32.

    Shapes: q (B, T, N, H), k and v (B, S, N, H) -> (B, T, N, H) (N heads of width H), q's
    dtype. Goes through ``jax.nn.dot_product_attention``: the fused cuDNN kernel on a GPU for
    bf16 / f16 (flash attention: no (T, S) logits in memory), XLA's path otherwise, which
    computes logits = einsum(q, k) in float32 (``preferred_element_type``), times ``scale``,
    softmax in float32, then einsum with v: in float32 the same operations as the attention
    written out before (Vaswani et al. 2017, eq. 1). float64 inputs (x64 tests) keep float64
    throughout (JAX's path would round the softmax to float32).
    """
    if q.dtype == jnp.float64:
        logits = jnp.einsum("btnh,bsnh->bnts", q, k) * scale
        return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v)
    out = _cudnn_attention(q, k, v, scale)
    if out is None:
        out = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla")
    return out
