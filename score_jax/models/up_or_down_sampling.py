"""FIR up- and down-sampling in pure `lax` (StyleGAN2's upfirdn2d, as used by NCSN++).

All functions take NHWC arrays. A FIR kernel `k` (1-D, separable, or 2-D) is normalised to sum to
one and then scaled by a gain, so a constant image stays constant:

    K = outer(k, k) / sum(outer(k, k)) * gain            (up-sampling: gain = factor**2)

`upfirdn2d(x, K, up, down, pad0, pad1)` computes, per channel,

    y = downsample_down( conv2d( pad( upsample_up(x) ) , K ) )

where `upsample_up` inserts `up - 1` zeros after every pixel, `pad` adds `pad0` / `pad1` zeros on
the low / high side (negative values crop), `conv2d` is a true convolution (the kernel is flipped),
and `downsample_down` keeps every `down`-th pixel. The fused `upsample_conv_2d` (transposed
3x3 conv, then FIR) and `conv_downsample_2d` (FIR, then strided conv) follow the reference's
padding arithmetic exactly, so checkpoints of score_sde's `Conv2d` modules convert unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalised 2-D FIR kernel: ``outer(k, k) / sum`` for 1-D ``k``, ``k / sum(k)`` for 2-D."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    return k / np.sum(k)


def upfirdn2d(x: jnp.ndarray, k: np.ndarray, *, up: int = 1, down: int = 1, pad0: int = 0,
              pad1: int = 0) -> jnp.ndarray:
    """Pad, up-sample (zero insertion), FIR-filter (true convolution) and down-sample NHWC ``x``.

    Args:
      x: (N, H, W, C) images.
      k: (kh, kw) filter, already normalised / scaled (see `setup_kernel`).
      up, down: integer factors.
      pad0, pad1: zeros added before / after each spatial axis of the up-sampled image (negative
        values crop).

    Returns:
      (N, (H*up + pad0 + pad1 - kh) // down + 1, ..., C) array of ``x.dtype``.
    """
    c = x.shape[-1]
    kh, kw = k.shape
    # Zero insertion (interior padding) followed by the outer padding, both in one lax.pad: the
    # reference's reshape-based insertion leaves up-1 trailing zeros, hence the extra high pad.
    zero = jnp.zeros((), x.dtype)
    cfg = [(0, 0, 0), (pad0, pad1 + up - 1, up - 1), (pad0, pad1 + up - 1, up - 1), (0, 0, 0)]
    x = lax.pad(x, zero, cfg)
    # True convolution = correlation with the flipped kernel; depthwise via feature groups.
    w = np.ascontiguousarray(k[::-1, ::-1])
    w = jnp.asarray(np.broadcast_to(w[:, :, None, None], (kh, kw, 1, c)), dtype=x.dtype)
    return lax.conv_general_dilated(x, w, window_strides=(down, down), padding="VALID",
                                    dimension_numbers=_DN, feature_group_count=c)


def upsample_2d(x: jnp.ndarray, k: Sequence[float] | None = None, factor: int = 2,
                gain: float = 1.0) -> jnp.ndarray:
    """FIR up-sampling by ``factor``: (N, H, W, C) -> (N, H*factor, W*factor, C)."""
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: jnp.ndarray, k: Sequence[float] | None = None, factor: int = 2,
                  gain: float = 1.0) -> jnp.ndarray:
    """FIR down-sampling by ``factor``: (N, H, W, C) -> (N, H//factor, W//factor, C)."""
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x: jnp.ndarray, w: jnp.ndarray, k: Sequence[float] | None = None,
                     factor: int = 2, gain: float = 1.0) -> jnp.ndarray:
    """Fused transposed convolution (stride ``factor``) and FIR up-sampling.

    The reference computes ``conv2d_transpose(x, flip(w))`` (VALID, stride ``factor``), i.e.
    ``y[f*i + a] += x[i] w[kc-1-a]``; that equals a plain correlation of the zero-inserted input
    (``lhs_dilation = factor``) padded by ``kc - 1`` with the unflipped HWIO kernel ``w``. The
    FIR filter is then applied with pads ``((p+1)//2 + factor - 1, p//2 + 1)``,
    ``p = (len(k) - factor) - (kc - 1)``.

    Args:
      x: (N, H, W, Cin). w: (kc, kc, Cin, Cout) HWIO kernel.

    Returns:
      (N, H*factor, W*factor, Cout).
    """
    kc = w.shape[0]
    if w.shape[1] != kc:
        raise ValueError(f"square conv kernel required, got {w.shape}")
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
    p = (k.shape[0] - factor) - (kc - 1)
    x = lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=[(kc - 1, kc - 1)] * 2,
                                 lhs_dilation=(factor, factor), dimension_numbers=_DN)
    return upfirdn2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: jnp.ndarray, w: jnp.ndarray, k: Sequence[float] | None = None,
                       factor: int = 2, gain: float = 1.0) -> jnp.ndarray:
    """Fused FIR filter and strided convolution: pads ``((p+1)//2, p//2)``,
    ``p = (len(k) - factor) + (kc - 1)``, then a VALID conv with stride ``factor``."""
    kc = w.shape[0]
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = (k.shape[0] - factor) + (kc - 1)
    x = upfirdn2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
    return lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding="VALID",
                                    dimension_numbers=_DN)


def naive_upsample_2d(x: jnp.ndarray, factor: int = 2) -> jnp.ndarray:
    """Nearest-neighbour up-sampling (each pixel repeated ``factor`` x ``factor`` times)."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
    return x.reshape(n, h * factor, w * factor, c)


def naive_downsample_2d(x: jnp.ndarray, factor: int = 2) -> jnp.ndarray:
    """Mean pooling over non-overlapping ``factor`` x ``factor`` windows."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class Conv2d(nn.Module):
    """Conv layer with optional fused FIR up- or down-sampling (StyleGAN2 / score_sde ``Conv2d``).

    Parameters ``weight`` (k, k, Cin, fmaps) HWIO and ``bias`` (fmaps,), named as in score_sde.
    """

    fmaps: int
    kernel: int = 3
    up: bool = False
    down: bool = False
    resample_kernel: tuple[int, ...] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.up and self.down:
            raise ValueError("Conv2d: up and down are exclusive")
        if self.kernel < 1 or self.kernel % 2 != 1:
            raise ValueError(f"Conv2d: kernel must be odd and >= 1, got {self.kernel}")
        w = self.param("weight", self.kernel_init,
                       (self.kernel, self.kernel, x.shape[-1], self.fmaps), self.param_dtype)
        b = (self.param("bias", nn.initializers.zeros, (self.fmaps,), self.param_dtype)
             if self.use_bias else None)
        x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=self.dtype)
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)
        if b is not None:
            x = x + b
        return x
