"""Layers of NCSN++ / DDPM++ (Song et al. 2021, Sec. H and App. H.1).

GroupNorm everywhere uses ``min(C // 4, 32)`` groups and eps 1e-6. Names of parameters and
submodules are those of score_sde, so its checkpoints and the PyTorch port's map one to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import up_or_down_sampling as uds
from .layers import NIN, attention, ddpm_conv1x1, ddpm_conv3x3, default_init

Array = jnp.ndarray
_SQRT2 = math.sqrt(2.0)  # a Python float keeps the compute dtype (weak typing)


def group_norm(channels: int, dtype: Any = None) -> nn.GroupNorm:
    """GroupNorm of NCSN++: min(C // 4, 32) groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), epsilon=1e-6, dtype=dtype)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar (Tancik et al. 2020):

        emb(s) = [sin(2 pi s W), cos(2 pi s W)],  W ~ N(0, scale^2) frozen (stop_gradient).
    NCSN++ feeds s = log(sigma).
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        w = jax.lax.stop_gradient(w).astype(x.dtype)
        x_proj = x[:, None] * w[None, :] * (2 * np.pi)
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
    """Combine the input pyramid with the main path: Conv_0 (1x1) on x, then cat or sum with y."""

    method: str = "cat"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = ddpm_conv1x1(x, y.shape[-1], dtype=self.dtype)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"progressive_combine {self.method!r} unknown; valid: ['cat', 'sum']")


class AttnBlockpp(nn.Module):
    """Self-attention block of NCSN++: out = x + NIN_3(attn(GN(x))), divided by sqrt(2) when
    ``skip_rescale``."""

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        h = group_norm(c, self.dtype)(x)
        q, k, v = (NIN(c, dtype=self.dtype) for _ in range(3))
        h = attention(h, q, k, v)
        h = NIN(c, init_scale=self.init_scale, dtype=self.dtype)(h)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class Upsample(nn.Module):
    """x2 up-sampling: FIR (optionally fused with a 3x3 conv, ``Conv2d_0``) or nearest neighbour
    (optionally followed by a 3x3 conv, ``Conv_0``)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch if self.out_ch else x.shape[-1]
        if not self.fir:
            h = uds.naive_upsample_2d(x, 2)
            if self.with_conv:
                h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
        elif not self.with_conv:
            h = uds.upsample_2d(x, self.fir_kernel, factor=2)
        else:
            h = uds.Conv2d(out_ch, kernel=3, up=True, resample_kernel=tuple(self.fir_kernel),
                           use_bias=True, kernel_init=default_init(), dtype=self.dtype)(x)
        return h


class Downsample(nn.Module):
    """x2 down-sampling: FIR (optionally fused with a 3x3 conv, ``Conv2d_0``), or a stride-2 3x3
    conv (``Conv_0``, pad (0, 1)) / 2x2 average pooling."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch if self.out_ch else x.shape[-1]
        if not self.fir:
            if self.with_conv:
                return ddpm_conv3x3(x, out_ch, stride=2, dtype=self.dtype)
            return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        if not self.with_conv:
            return uds.downsample_2d(x, self.fir_kernel, factor=2)
        return uds.Conv2d(out_ch, kernel=3, down=True, resample_kernel=tuple(self.fir_kernel),
                          use_bias=True, kernel_init=default_init(), dtype=self.dtype)(x)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM++ residual block:

        h = Conv_0(act(GN_0(x))) + Dense_0(act(temb))
        h = Conv_1(dropout(act(GN_1(h))))          (Conv_1 initialised with init_scale)
        out = (shortcut(x) + h) [/ sqrt(2) if skip_rescale]
    shortcut = NIN_0 (or Conv_2 3x3 with conv_shortcut) when the channel count changes.
    """

    act: Callable[[Array], Array]
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else c
        h = self.act(group_norm(c, self.dtype)(x))
        h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype)(
                self.act(temb))[:, None, None, :]
        h = self.act(group_norm(out_ch, self.dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype)
        if c != out_ch:
            if self.conv_shortcut:
                x = ddpm_conv3x3(x, out_ch, dtype=self.dtype)
            else:
                x = NIN(out_ch, dtype=self.dtype)(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block of NCSN++, optionally re-sampling both paths by 2:

        h = act(GN_0(x)); [h, x = up/down(h), up/down(x)]    (FIR or naive)
        h = Conv_0(h) + Dense_0(act(temb)); h = Conv_1(dropout(act(GN_1(h))))
        out = (Conv_2(x) + h) / sqrt(2)      (Conv_2 1x1 when channels change or re-sampling)
    """

    act: Callable[[Array], Array]
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else c
        h = self.act(group_norm(c, self.dtype)(x))
        if self.up:
            if self.fir:
                h = uds.upsample_2d(h, self.fir_kernel, factor=2)
                x = uds.upsample_2d(x, self.fir_kernel, factor=2)
            else:
                h = uds.naive_upsample_2d(h, factor=2)
                x = uds.naive_upsample_2d(x, factor=2)
        elif self.down:
            if self.fir:
                h = uds.downsample_2d(h, self.fir_kernel, factor=2)
                x = uds.downsample_2d(x, self.fir_kernel, factor=2)
            else:
                h = uds.naive_downsample_2d(h, factor=2)
                x = uds.naive_downsample_2d(x, factor=2)
        h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype)(
                self.act(temb))[:, None, None, :]
        h = self.act(group_norm(out_ch, self.dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype)
        if c != out_ch or self.up or self.down:
            x = ddpm_conv1x1(x, out_ch, dtype=self.dtype)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h
