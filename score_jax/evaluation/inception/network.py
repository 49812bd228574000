"""The FID Inception-v3 network in ``flax.linen`` (the 2015-12-05 graph, torchvision layout and
pytorch-fid's pooling quirks; see the package docstring).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.convert.inception import NUM_FEATURES, NUM_LOGITS  # noqa: F401 (re-exported)

BN_EPSILON = 1e-3


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm with running statistics (eps 1e-3) -> ReLU.

    ``padding`` is PyTorch's symmetric ``(pad_h, pad_w)``, so the layout matches the
    ``nn.Conv2d(..., padding=...)`` of torchvision's ``BasicConv2d`` one to one.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype,
                         name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    # TF avg_pool (SAME) divides by the number of *valid* pixels: count_include_pad=False.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (pytorch-fid ``FIDInceptionA``): 1x1 | 5x5 | double 3x3 | avg-pool."""

    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, p, name: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
        b1 = conv(64, (1, 1), (0, 0), "branch1x1")(x)
        b5 = conv(48, (1, 1), (0, 0), "branch5x5_1")(x)
        b5 = conv(64, (5, 5), (2, 2), "branch5x5_2")(b5)
        b3 = conv(64, (1, 1), (0, 0), "branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), (1, 1), "branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), (1, 1), "branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), (0, 0), "branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (torchvision ``InceptionB``): strided 3x3 | double 3x3 | max-pool, 35 -> 17."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, s, p, name: BasicConv2d(f, k, strides=s, padding=p, dtype=self.dtype,
                                                    name=name)
        b3 = conv(384, (3, 3), (2, 2), (0, 0), "branch3x3")(x)
        bd = conv(64, (1, 1), (1, 1), (0, 0), "branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), (1, 1), (1, 1), "branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), (2, 2), (0, 0), "branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-6e (pytorch-fid ``FIDInceptionC``): factorised 7x7 branches, avg-pool."""

    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        conv = lambda f, k, p, name: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
        b1 = conv(192, (1, 1), (0, 0), "branch1x1")(x)
        b7 = conv(c7, (1, 1), (0, 0), "branch7x7_1")(x)
        b7 = conv(c7, (1, 7), (0, 3), "branch7x7_2")(b7)
        b7 = conv(192, (7, 1), (3, 0), "branch7x7_3")(b7)
        bd = conv(c7, (1, 1), (0, 0), "branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), (3, 0), "branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), (0, 3), "branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), (3, 0), "branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), (0, 3), "branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), (0, 0), "branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (torchvision ``InceptionD``): strided 3x3 | 7x7 then strided 3x3 | max-pool."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, s, p, name: BasicConv2d(f, k, strides=s, padding=p, dtype=self.dtype,
                                                    name=name)
        b3 = conv(192, (1, 1), (1, 1), (0, 0), "branch3x3_1")(x)
        b3 = conv(320, (3, 3), (2, 2), (0, 0), "branch3x3_2")(b3)
        b7 = conv(192, (1, 1), (1, 1), (0, 0), "branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), (1, 1), (0, 3), "branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), (1, 1), (3, 0), "branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), (2, 2), (0, 0), "branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b / 7c (pytorch-fid ``FIDInceptionE_1`` / ``FIDInceptionE_2``).

    ``pool="avg"`` (Mixed_7b): average pool without the padding; ``pool="max"`` (Mixed_7c): the
    2015-12-05 graph uses a 3x3 stride-1 *max* pool here.
    """

    pool: str = "avg"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, p, name: BasicConv2d(f, k, padding=p, dtype=self.dtype, name=name)
        b1 = conv(320, (1, 1), (0, 0), "branch1x1")(x)
        b3 = conv(384, (1, 1), (0, 0), "branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), (0, 1), "branch3x3_2a")(b3),
                              conv(384, (3, 1), (1, 0), "branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, (1, 1), (0, 0), "branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), (1, 1), "branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, (1, 3), (0, 1), "branch3x3dbl_3a")(bd),
                              conv(384, (3, 1), (1, 0), "branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3_same(x)
        elif self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"InceptionE.pool must be 'avg' or 'max', got {self.pool!r}")
        bp = conv(192, (1, 1), (0, 0), "branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """The FID Inception-v3 (graph ``inception-2015-12-05``), NHWC.

    ``__call__(x)`` takes images already preprocessed to [-1, 1] (``preprocess_for_inception``),
    nominally 299x299 (any size >= 75 runs; FID is only defined at 299), and returns
    ``(pool_3, logits)`` of shapes ``(N, 2048)`` and ``(N, 1008)``. Parameters live in the
    ``params`` collection, BatchNorm running statistics in ``batch_stats``; module names follow
    torchvision / pytorch-fid so ``convert_inception_pytorch`` maps keys one to one.
    """

    num_classes: int = NUM_LOGITS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3 expects NHWC images with 3 channels, got {x.shape}")
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV3 needs images of at least 75x75, got {x.shape[1:3]}")
        dt = self.dtype
        conv = lambda f, k, s, p, name: BasicConv2d(f, k, strides=s, padding=p, dtype=dt,
                                                    name=name)
        x = x.astype(dt)
        x = conv(32, (3, 3), (2, 2), (0, 0), "Conv2d_1a_3x3")(x)   # 299 -> 149
        x = conv(32, (3, 3), (1, 1), (0, 0), "Conv2d_2a_3x3")(x)   # -> 147
        x = conv(64, (3, 3), (1, 1), (1, 1), "Conv2d_2b_3x3")(x)   # -> 147
        x = _max_pool_3x3_s2(x)                                     # -> 73
        x = conv(80, (1, 1), (1, 1), (0, 0), "Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), (1, 1), (0, 0), "Conv2d_4a_3x3")(x)  # -> 71
        x = _max_pool_3x3_s2(x)                                     # -> 35
        x = InceptionA(32, dtype=dt, name="Mixed_5b")(x)            # 256 channels
        x = InceptionA(64, dtype=dt, name="Mixed_5c")(x)            # 288
        x = InceptionA(64, dtype=dt, name="Mixed_5d")(x)            # 288
        x = InceptionB(dtype=dt, name="Mixed_6a")(x)                # 768, 17x17
        x = InceptionC(128, dtype=dt, name="Mixed_6b")(x)
        x = InceptionC(160, dtype=dt, name="Mixed_6c")(x)
        x = InceptionC(160, dtype=dt, name="Mixed_6d")(x)
        x = InceptionC(192, dtype=dt, name="Mixed_6e")(x)
        x = InceptionD(dtype=dt, name="Mixed_7a")(x)                # 1280, 8x8
        x = InceptionE("avg", dtype=dt, name="Mixed_7b")(x)         # 2048
        x = InceptionE("max", dtype=dt, name="Mixed_7c")(x)         # 2048
        pool_3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(pool_3)
        return pool_3, logits


__all__ = ["BN_EPSILON", "NUM_FEATURES", "NUM_LOGITS", "BasicConv2d", "InceptionA", "InceptionB",
           "InceptionC", "InceptionD", "InceptionE", "InceptionV3"]
