"""The standard FID input pipeline: 8-bit quantisation, bilinear resize to 299, scale to [-1, 1].

Two resize conventions (``RESIZE_CONVENTIONS``), which give different FIDs for the same images:

* ``"pytorch"`` (default): half-pixel centres, ``src = (i + 0.5) n_in / n_out - 0.5`` -- pytorch-fid
  ``F.interpolate(mode="bilinear", align_corners=False)``, TF2 ``tf.image.resize``.
* ``"tf1"``: TF1 ``ResizeBilinear`` with ``align_corners=False, half_pixel_centers=False``,
  ``src = i n_in / n_out`` -- the resize inside the 2015 FID Inception graph used by TTUR
  (``fid.py``), TF-GAN and score_sde's ``evaluation.py``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.evaluation.metrics import (
    DEFAULT_RESIZE,
    RESIZE_CONVENTIONS,
    check_image_range,
    check_resize,
)

INCEPTION_IMAGE_SIZE = 299
QUANTIZE_MODES = ("floor", "round", "none")


def preprocess_for_inception(images: jax.Array | np.ndarray, *, quantize: str = "floor",
                             size: int = INCEPTION_IMAGE_SIZE, resize: str = DEFAULT_RESIZE
                             ) -> jax.Array:
    """Standard FID input pipeline: 8-bit quantisation, bilinear resize to 299, scale to [-1, 1].

    * uint8 images (values 0..255) are used as they are. Float images must lie in [0, 1]
      (``metrics.check_image_range``: values up to 1e-3 outside are clipped, as samplers
      overshoot slightly; floats in [0, 255] or centred [-1, 1] images raise ``ValueError`` naming
      the range found -- they used to be saturated / half clipped without a word) and are
      quantised like the reference: ``quantize="floor"`` is score_sde's
      ``np.clip(x * 255, 0, 255).astype(np.uint8)`` (truncation), ``"round"`` rounds to the
      nearest level (torchvision ``save_image`` / PNG files), ``"none"`` keeps ``255 x``.
    * Bilinear resize without antialiasing, as two matrix products with host-built weights
      (skipped at the target size already), in one of two conventions: ``resize="pytorch"``
      samples output pixel i at ``src = (i + 0.5) n_in / n_out - 0.5`` (half-pixel centres:
      pytorch-fid ``F.interpolate(mode="bilinear", align_corners=False)``, TF2
      ``tf.image.resize``); ``resize="tf1"`` at ``src = i n_in / n_out`` (TF1
      ``tf.compat.v1.image.resize_bilinear(align_corners=False, half_pixel_centers=False)``, the
      resize of the FID Inception graph in TTUR / TF-GAN / score_sde ``evaluation.py``). At 32 px
      the two feed Inception inputs several grey levels apart: FIDs of different conventions
      are not comparable.
    * ``x = u / 127.5 - 1``. One-channel images are repeated to RGB.

    Args:
      images: ``(N, H, W, C)`` with C in {1, 3}, uint8 or float in [0, 1]. The range is checked
        when the values are concrete (a numpy or committed jax array); under ``jit`` the caller
        checks (``InceptionFeatures`` does, on the host).
      quantize: one of ``"floor"``, ``"round"``, ``"none"`` (float inputs only).
      size: output height and width.
      resize: ``"pytorch"`` (default) or ``"tf1"``, see above.

    Returns:
      ``(N, size, size, 3)`` float32 array in [-1, 1].

    Raises:
      ValueError: bad shape, unknown ``quantize`` / ``resize``, or values outside the convention.
    """
    check_resize(resize)
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
        u = jnp.einsum("ph,nhwc->npwc", jnp.asarray(_bilinear_matrix(h, size, resize)), u, precision=hi)
        u = jnp.einsum("qw,npwc->npqc", jnp.asarray(_bilinear_matrix(w, size, resize)), u, precision=hi)
    return u / 127.5 - 1.0


def _bilinear_matrix(n_in: int, n_out: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D bilinear resampling.

    Output pixel i samples the input at ``src = (i + 0.5) n_in / n_out - 0.5`` (clamped at 0;
    ``resize="pytorch"``, PyTorch ``align_corners=False``) or at ``src = i n_in / n_out``
    (``resize="tf1"``, TF1 ``ResizeBilinear`` legacy mode: ``scale = in / out``,
    ``in = out_index * scale``), interpolating linearly between ``floor(src)`` and the next pixel
    (clamped at the border); no antialiasing when shrinking. Built in float64 on the host, so the
    weights are exact to float32 rounding.
    """
    i = np.arange(n_out, dtype=np.float64)
    if check_resize(resize) == "tf1":
        src = i * (n_in / n_out)
    else:
        src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m.astype(np.float32)



__all__ = ["INCEPTION_IMAGE_SIZE", "QUANTIZE_MODES", "RESIZE_CONVENTIONS", "DEFAULT_RESIZE",
           "check_resize", "preprocess_for_inception"]
