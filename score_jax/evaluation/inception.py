"""The FID Inception-v3 network in Flax, its weight converter and a sharded feature function.

FID, KID and IS are defined by one particular network: the Inception-v3 graph
``inception-2015-12-05`` that TF-GAN (``tfgan.eval``, used by score_sde's ``evaluation.py``) and
the original TTUR FID code run. pytorch-fid ported that graph's weights to PyTorch as
``pt_inception-2015-12-05-6726825d.pth``; this module reads that file (or an ``.npz`` with the same
key names) and reproduces the graph in ``flax.linen``:

* torchvision's Inception-v3 layout (``Conv2d_1a_3x3`` ... ``Mixed_7c``, ``fc``), every convolution
  a ``BasicConv2d`` = conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU;
* the 2015-12-05 graph's pooling quirks (pytorch-fid ``FIDInceptionA/C/E_1/E_2``): the 3x3
  stride-1 average pools inside Mixed_5b-d, 6b-e and 7b exclude the zero padding from the average
  (TensorFlow's ``avg_pool`` with SAME padding), and Mixed_7c pools its last branch with a *max*
  pool instead of an average pool;
* ``pool_3`` = spatial mean of Mixed_7c (2048 features, used by FID / KID) and ``logits`` =
  ``fc(pool_3)`` over 1008 classes (the graph's ``softmax/logits``, used by IS: TF-GAN's
  ``classifier_score_from_logits`` takes the softmax over all 1008 outputs).

Inputs follow the standard protocol (``preprocess_for_inception``): images quantised to 8 bits,
bilinearly resized to 299x299 (half-pixel centres, no antialiasing: pytorch-fid's
``F.interpolate(..., mode="bilinear", align_corners=False)`` and TF2's ``tf.image.resize``) and
mapped to [-1, 1] by ``u / 127.5 - 1`` for ``u`` in [0, 255] (score_sde's
``(x - 127.5) / 127.5``; pytorch-fid's ``2 * (u / 255) - 1``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from score_jax.evaluation.metrics import check_image_range

INCEPTION_IMAGE_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
BN_EPSILON = 1e-3

QUANTIZE_MODES = ("floor", "round", "none")


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def preprocess_for_inception(images: jax.Array | np.ndarray, *, quantize: str = "floor",
                             size: int = INCEPTION_IMAGE_SIZE) -> jax.Array:
    """Standard FID input pipeline: 8-bit quantisation, bilinear resize to 299, scale to [-1, 1].

    * uint8 images (values 0..255) are used as they are. Float images must lie in [0, 1]
      (``metrics.check_image_range``: values up to 1e-3 outside are clipped, as samplers
      overshoot slightly; floats in [0, 255] or centred [-1, 1] images raise ``ValueError`` naming
      the range found -- they used to be saturated / half clipped without a word) and are
      quantised like the reference: ``quantize="floor"`` is score_sde's
      ``np.clip(x * 255, 0, 255).astype(np.uint8)`` (truncation), ``"round"`` rounds to the
      nearest level (torchvision ``save_image`` / PNG files), ``"none"`` keeps ``255 x``.
    * Bilinear resize with half-pixel centres and no antialiasing (pytorch-fid
      ``F.interpolate(mode="bilinear", align_corners=False)``, TF2 ``tf.image.resize``), as two
      matrix products with host-built weights, skipped at the target size already.
    * ``x = u / 127.5 - 1``. One-channel images are repeated to RGB.

    Args:
      images: ``(N, H, W, C)`` with C in {1, 3}, uint8 or float in [0, 1]. The range is checked
        when the values are concrete (a numpy or committed jax array); under ``jit`` the caller
        checks (``InceptionFeatures`` does, on the host).
      quantize: one of ``"floor"``, ``"round"``, ``"none"`` (float inputs only).
      size: output height and width.

    Returns:
      ``(N, size, size, 3)`` float32 array in [-1, 1].

    Raises:
      ValueError: bad shape, unknown ``quantize``, or values outside the convention.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be NHWC with 1 or 3 channels, got shape {images.shape}")
    if not isinstance(images, jax.core.Tracer):
        check_image_range(images, name="preprocess_for_inception")
    x = jnp.asarray(images)
    if jnp.issubdtype(x.dtype, jnp.integer):
        u = x.astype(jnp.float32)
    else:
        u = jnp.clip(x.astype(jnp.float32) * 255.0, 0.0, 255.0)
        if quantize == "floor":
            u = jnp.floor(u)
        elif quantize == "round":
            u = jnp.round(u)
    if u.shape[-1] == 1:
        u = jnp.repeat(u, 3, axis=-1)
    _, h, w, _ = u.shape
    if (h, w) != (size, size):
        hi = jax.lax.Precision.HIGHEST
        u = jnp.einsum("ph,nhwc->npwc", jnp.asarray(_bilinear_matrix(h, size)), u, precision=hi)
        u = jnp.einsum("qw,npwc->npqc", jnp.asarray(_bilinear_matrix(w, size)), u, precision=hi)
    return u / 127.5 - 1.0


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D bilinear resampling, PyTorch ``align_corners=False``.

    Output pixel i samples the input at ``src = (i + 0.5) n_in / n_out - 0.5`` (clamped at 0),
    interpolating linearly between ``floor(src)`` and the next pixel (clamped at the border); no
    antialiasing when shrinking, as in pytorch-fid and ``tf.image.resize(antialias=False)``.
    Built in float64 on the host, so the weights are exact to float32 rounding.
    """
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Weight layout and conversion
# --------------------------------------------------------------------------------------------

# (name, in_channels, out_channels, kernel_h, kernel_w) of every BasicConv2d, in the order
# torchvision registers them (so the order of the pt_inception state dict).
_STEM = [
    ("Conv2d_1a_3x3", 3, 32, 3, 3),
    ("Conv2d_2a_3x3", 32, 32, 3, 3),
    ("Conv2d_2b_3x3", 32, 64, 3, 3),
    ("Conv2d_3b_1x1", 64, 80, 1, 1),
    ("Conv2d_4a_3x3", 80, 192, 3, 3),
]


def _block_a(cin: int, pool_features: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1),
            ("branch5x5_2", 48, 64, 5, 5), ("branch3x3dbl_1", cin, 64, 1, 1),
            ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", cin, pool_features, 1, 1)]


def _block_b(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch3x3", cin, 384, 3, 3), ("branch3x3dbl_1", cin, 64, 1, 1),
            ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)]


def _block_c(cin: int, c7: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 192, 1, 1), ("branch7x7_1", cin, c7, 1, 1),
            ("branch7x7_2", c7, c7, 1, 7), ("branch7x7_3", c7, 192, 7, 1),
            ("branch7x7dbl_1", cin, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1),
            ("branch7x7dbl_5", c7, 192, 1, 7), ("branch_pool", cin, 192, 1, 1)]


def _block_d(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch3x3_1", cin, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
            ("branch7x7x3_1", cin, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
            ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]


def _block_e(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
            ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
            ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
            ("branch_pool", cin, 192, 1, 1)]


def _conv_layout() -> list[tuple[str, int, int, int, int]]:
    """Every BasicConv2d of the FID Inception as (dotted name, cin, cout, kh, kw)."""
    blocks = [
        ("Mixed_5b", _block_a(192, 32)), ("Mixed_5c", _block_a(256, 64)),
        ("Mixed_5d", _block_a(288, 64)), ("Mixed_6a", _block_b(288)),
        ("Mixed_6b", _block_c(768, 128)), ("Mixed_6c", _block_c(768, 160)),
        ("Mixed_6d", _block_c(768, 160)), ("Mixed_6e", _block_c(768, 192)),
        ("Mixed_7a", _block_d(768)), ("Mixed_7b", _block_e(1280)), ("Mixed_7c", _block_e(2048)),
    ]
    layout = list(_STEM)
    for block, convs in blocks:
        layout += [(f"{block}.{name}", cin, cout, kh, kw) for name, cin, cout, kh, kw in convs]
    return layout


def pt_inception_state_dict_shapes(*, num_batches_tracked: bool = False
                                   ) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of ``pt_inception-2015-12-05-6726825d.pth``, in state-dict order.

    The layout of pytorch-fid's ``fid_inception_v3()`` (torchvision ``Inception3`` with
    ``num_classes=1008, aux_logits=False``): per BasicConv2d ``<name>.conv.weight``
    ``(cout, cin, kh, kw)`` and ``<name>.bn.{weight,bias,running_mean,running_var}`` ``(cout,)``
    (plus the scalar ``bn.num_batches_tracked`` that newer PyTorch versions save), then
    ``fc.weight`` ``(1008, 2048)`` and ``fc.bias`` ``(1008,)``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout, kh, kw in _conv_layout():
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (cout,)
        if num_batches_tracked:
            shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"] = (NUM_LOGITS, NUM_FEATURES)
    shapes["fc.bias"] = (NUM_LOGITS,)
    return shapes


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _set(tree: dict, path: Sequence[str], value: np.ndarray) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def convert_inception_pytorch(state_dict: Mapping[str, Any]) -> dict[str, dict]:
    """Converts the pt_inception-2015-12-05 state dict to ``InceptionV3`` variables.

    Mapping (PyTorch NCHW / OI -> Flax NHWC / IO):
    ``X.conv.weight (O, I, kh, kw) -> params[X][conv][kernel] (kh, kw, I, O)``,
    ``X.bn.weight / bias -> params[X][bn][scale / bias]``,
    ``X.bn.running_mean / running_var -> batch_stats[X][bn][mean / var]``,
    ``fc.weight (1008, 2048) -> params[fc][kernel] (2048, 1008)``, ``fc.bias -> params[fc][bias]``.
    ``*.num_batches_tracked`` entries are accepted and ignored.

    Args:
      state_dict: mapping from the dotted PyTorch key names to arrays (numpy arrays or torch
        tensors).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays for ``InceptionV3().apply``.

    Raises:
      ValueError: naming the first missing key, the first unexpected key, or the first key whose
        shape differs from the real file's (with both shapes).
    """
    expected = pt_inception_state_dict_shapes()
    for key, shape in expected.items():
        if key not in state_dict:
            raise ValueError(f"state dict is missing key {key!r} (expected shape {shape}); "
                             "is this the pt_inception-2015-12-05 FID Inception?")
    for key in state_dict:
        if key not in expected and not key.endswith(".bn.num_batches_tracked"):
            shape = tuple(np.shape(_to_numpy(state_dict[key])))
            raise ValueError(f"state dict has unexpected key {key!r} with shape {shape}; "
                             "is this the pt_inception-2015-12-05 FID Inception?")
    arrays = {}
    for key, shape in expected.items():
        value = _to_numpy(state_dict[key]).astype(np.float32)
        if value.shape != shape:
            raise ValueError(f"state dict key {key!r} has shape {value.shape}, expected {shape}")
        arrays[key] = value

    params: dict = {}
    batch_stats: dict = {}
    for name, *_ in _conv_layout():
        path = name.split(".")
        w = arrays[f"{name}.conv.weight"]
        _set(params, [*path, "conv", "kernel"], np.ascontiguousarray(w.transpose(2, 3, 1, 0)))
        _set(params, [*path, "bn", "scale"], arrays[f"{name}.bn.weight"])
        _set(params, [*path, "bn", "bias"], arrays[f"{name}.bn.bias"])
        _set(batch_stats, [*path, "bn", "mean"], arrays[f"{name}.bn.running_mean"])
        _set(batch_stats, [*path, "bn", "var"], arrays[f"{name}.bn.running_var"])
    params["fc"] = {"kernel": np.ascontiguousarray(arrays["fc.weight"].T),
                    "bias": arrays["fc.bias"]}
    return {"params": params, "batch_stats": batch_stats}


def _read_state_dict(path: str) -> Mapping[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Inception weights not found at {path!r}. Download pt_inception-2015-12-05-"
            "6726825d.pth from the pytorch-fid releases once and pass its local path.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path!r} needs PyTorch (pip install 'score_jax[torch]'); or convert it "
            "once, where torch is installed, with `python -m score_jax.evaluation.inception "
            "--to-npz IN.pth OUT.npz` and pass the .npz") from e
    # weights_only=True: the unpickler only rebuilds tensors and containers, never runs code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(state).__name__})")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def load_inception(path: str, *, dtype: Any = jnp.float32) -> tuple[InceptionV3, dict]:
    """Loads the FID Inception from a local ``.pth`` (pytorch-fid) or ``.npz`` (same keys).

    Nothing is downloaded. ``.pth`` files are read with ``torch.load(weights_only=True)``, which
    never executes code from the file; ``.npz`` files with ``allow_pickle=False``.

    Returns:
      ``(module, variables)`` for ``module.apply(variables, x)``.
    """
    variables = convert_inception_pytorch(_read_state_dict(path))
    return InceptionV3(dtype=dtype), jax.tree.map(jnp.asarray, variables)


# --------------------------------------------------------------------------------------------
# Sharded feature function
# --------------------------------------------------------------------------------------------


class InceptionFeatures:
    """A jitted ``images -> (pool_3, logits)`` that shards the batch over all devices.

    One code path for 1 and N devices (and N hosts): a 1-D ``Mesh`` over ``jax.devices()`` with
    axis ``"data"``, the images laid out with ``NamedSharding(mesh, P("data"))`` and the
    variables replicated (``P()``). Each process passes its own host-local batch (the same size
    on every process) and gets back the rows of that batch. Batches are padded to
    ``batch_size`` (or to a multiple of the local device count) so one compilation serves every
    call, then the padding is cut off.

    Args:
      variables: ``InceptionV3`` variables (``load_inception`` / ``convert_inception_pytorch``).
      module: the network; defaults to ``InceptionV3()``.
      batch_size: per-call chunk size on this process (a multiple of the local device count);
        larger inputs are processed in chunks. ``None``: the whole input in one call.
      quantize: see ``preprocess_for_inception``.
      mesh: a 1-D mesh with axis ``"data"``; defaults to all devices.
      image_size: the resize target; FID / IS / KID are defined at 299 only, smaller sizes
        (>= 75) serve tests and debugging.
    """

    def __init__(self, variables: Mapping[str, Any], *, module: nn.Module | None = None,
                 batch_size: int | None = 200, quantize: str = "floor",
                 mesh: Mesh | None = None, image_size: int = INCEPTION_IMAGE_SIZE):
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
        self.module = module if module is not None else InceptionV3()
        self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), ("data",))
        if self.mesh.axis_names != ("data",):
            raise ValueError(f"mesh must have the single axis 'data', got {self.mesh.axis_names}")
        self.num_local_devices = sum(
            d.process_index == jax.process_index() for d in self.mesh.devices.flat)
        if batch_size is not None and (batch_size <= 0 or batch_size % self.num_local_devices):
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of the "
                             f"{self.num_local_devices} local devices")
        self.batch_size = batch_size
        self._data = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self.variables = jax.device_put(variables, replicated)
        module_ = self.module

        def forward(variables, images):
            x = preprocess_for_inception(images, quantize=quantize, size=image_size)
            return module_.apply(variables, x)

        self._forward = jax.jit(forward, in_shardings=(replicated, self._data),
                                out_shardings=(self._data, self._data))

    def _local_rows(self, x: jax.Array) -> np.ndarray:
        shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
        return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)], axis=0)

    def _run(self, images: np.ndarray, padded_size: int) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
        if padded_size > n:
            pad = np.zeros((padded_size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad], axis=0)
        global_images = jax.make_array_from_process_local_data(self._data, images)
        pool, logits = self._forward(self.variables, global_images)
        return self._local_rows(pool)[:n], self._local_rows(logits)[:n]

    def __call__(self, images: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(pool_3 (N, 2048), logits (N, 1008))`` as float32 numpy arrays.

        Args:
          images: host-local ``(N, H, W, C)`` batch, uint8 or float in [0, 1] (see
            ``preprocess_for_inception``; other ranges raise ``ValueError``).
        """
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
        check_image_range(images, name="InceptionFeatures")
        if self.batch_size is None:
            d = self.num_local_devices
            return self._run(images, -(-images.shape[0] // d) * d)
        pools, logits = [], []
        for chunk in iter_chunks(images, self.batch_size):
            p, l = self._run(chunk, self.batch_size)
            pools.append(p)
            logits.append(l)
        if not pools:
            return np.zeros((0, NUM_FEATURES), np.float32), np.zeros((0, NUM_LOGITS), np.float32)
        return np.concatenate(pools), np.concatenate(logits)


def iter_chunks(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of at most ``size`` rows."""
    for start in range(0, x.shape[0], size):
        yield x[start:start + size]


def get_inception_fn(weights: str | Mapping[str, Any], **kwargs: Any) -> InceptionFeatures:
    """``InceptionFeatures`` from a weights path (``.pth`` / ``.npz``) or converted variables.

    Keyword arguments go to ``InceptionFeatures`` (``batch_size``, ``quantize``, ``mesh``,
    ``image_size``).
    """
    if isinstance(weights, str | os.PathLike):
        module, variables = load_inception(os.fspath(weights))
        return InceptionFeatures(variables, module=module, **kwargs)
    return InceptionFeatures(weights, **kwargs)


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Convert the pytorch-fid Inception weights (.pth) to a torch-free .npz.")
    parser.add_argument("--to-npz", nargs=2, metavar=("IN_PTH", "OUT_NPZ"), required=True)
    args = parser.parse_args(argv)
    src, dst = args.to_npz
    state = _read_state_dict(src)
    convert_inception_pytorch(state)  # validates the layout before writing anything
    np.savez(dst, **{k: np.asarray(v) for k, v in state.items()})
    print(f"wrote {len(state)} arrays to {dst}")


if __name__ == "__main__":
    _main()
