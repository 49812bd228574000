"""Normalisation layers of NCSN / NCSNv2 (Song & Ermon 2019, Sec. A; 2020) and GroupNorm.

Statistics are over the spatial axes (H, W) of NHWC input, eps = 1e-5. Parameters have shape
(1, 1, 1, C) and the score_sde names (``scale``, ``bias``, ``alpha``, ``gamma``, ``beta``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = jnp.ndarray


def _near_one(key, shape, dtype=jnp.float32):
    """N(1, 0.02^2), the reference's scale initialisation."""
    return nn.initializers.normal(0.02)(key, shape, dtype) + 1.0


def _stats_dtype(x: Array):
    return jnp.promote_types(x.dtype, jnp.float32)


class VarianceNorm2d(nn.Module):
    """h = x / sqrt(Var_hw(x) + eps) * scale (+ bias)."""

    bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        xf = x.astype(_stats_dtype(x))
        h = xf / jnp.sqrt(jnp.var(xf, axis=(1, 2), keepdims=True) + 1e-5)
        h = h * self.param("scale", _near_one, (1, 1, 1, x.shape[-1]))
        if self.bias:
            h = h + self.param("bias", nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
        return h.astype(x.dtype)


class InstanceNorm2d(nn.Module):
    """h = (x - mean_hw(x)) / sqrt(Var_hw(x) + eps) * scale + bias."""

    bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        xf = x.astype(_stats_dtype(x))
        mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
        h = (xf - mean) / jnp.sqrt(jnp.var(xf, axis=(1, 2), keepdims=True) + 1e-5)
        h = h * self.param("scale", nn.initializers.ones, (1, 1, 1, x.shape[-1]))
        if self.bias:
            h = h + self.param("bias", nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
        return h.astype(x.dtype)


def _instance_norm_plus(x: Array):
    """Shared part of InstanceNorm++: with mu_c = mean_hw(x_c) and m, v the mean and variance of
    mu over channels, returns ((x - mu)/sqrt(Var_hw(x)+eps), (mu - m)/sqrt(v + eps))."""
    xf = x.astype(_stats_dtype(x))
    means = jnp.mean(xf, axis=(1, 2))
    m = jnp.mean(means, axis=-1, keepdims=True)
    v = jnp.var(means, axis=-1, keepdims=True)
    means_plus = (means - m) / jnp.sqrt(v + 1e-5)
    h = (xf - means[:, None, None, :]) / jnp.sqrt(jnp.var(xf, axis=(1, 2), keepdims=True) + 1e-5)
    return h, means_plus[:, None, None, :]


class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ (NCSN paper, eq. 9): gamma * (h + alpha * mu_plus) + beta."""

    bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, means_plus = _instance_norm_plus(x)
        c = x.shape[-1]
        h = h + means_plus * self.param("alpha", _near_one, (1, 1, 1, c))
        h = h * self.param("gamma", _near_one, (1, 1, 1, c))
        if self.bias:
            h = h + self.param("beta", nn.initializers.zeros, (1, 1, 1, c))
        return h.astype(x.dtype)


class ConditionalInstanceNorm2dPlus(nn.Module):
    """Conditional InstanceNorm++ (NCSN v1): gamma[y], alpha[y], beta[y] from an embedding table
    ``Embed_0`` of shape (num_classes, 3C) (2C without bias), y = noise-level index."""

    num_classes: int = 10
    bias: bool = True

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h, means_plus = _instance_norm_plus(x)
        c = x.shape[-1]
        n_chunks = 3 if self.bias else 2

        def init_embed(key, shape, dtype=jnp.float32):
            ones = _near_one(key, (shape[0], 2 * c), dtype)
            return jnp.concatenate([ones, jnp.zeros((shape[0], shape[1] - 2 * c), dtype)], -1)

        emb = nn.Embed(self.num_classes, n_chunks * c, embedding_init=init_embed)(y)
        parts = jnp.split(emb.astype(h.dtype), n_chunks, axis=-1)
        gamma, alpha = parts[0], parts[1]
        h = h + means_plus * alpha[:, None, None, :]
        out = gamma[:, None, None, :] * h
        if self.bias:
            out = out + parts[2][:, None, None, :]
        return out.astype(x.dtype)


NORMALIZATIONS: dict[str, type[nn.Module]] = {
    "InstanceNorm": InstanceNorm2d,
    "InstanceNorm++": InstanceNorm2dPlus,
    "VarianceNorm": VarianceNorm2d,
    "GroupNorm": nn.GroupNorm,
}


def get_normalization(name: str, conditional: bool = False, num_classes: int | None = None,
                      dtype: Any = None) -> Callable[..., nn.Module]:
    """Normaliser factory by the reference's config name.

    Args:
      name: 'InstanceNorm', 'InstanceNorm++', 'VarianceNorm' or 'GroupNorm' (32 groups, eps 1e-6).
      conditional: noise-conditional variant (only 'InstanceNorm++', NCSN v1).
      num_classes: number of noise levels for the conditional variant.
    """
    if conditional:
        if name != "InstanceNorm++":
            raise ValueError(f"conditional normalization {name!r} not available; valid: "
                             "['InstanceNorm++']")
        return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=num_classes)
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; valid: {sorted(NORMALIZATIONS)}")
    if name == "GroupNorm":
        return functools.partial(nn.GroupNorm, num_groups=32, epsilon=1e-6, dtype=dtype)
    return NORMALIZATIONS[name]
