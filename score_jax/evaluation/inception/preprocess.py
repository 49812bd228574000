"""The standard FID input pipeline: 8-bit quantisation, bilinear resize to 299 (half-pixel centres,
no antialiasing), scale to [-1, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.evaluation.metrics import check_image_range

INCEPTION_IMAGE_SIZE = 299
QUANTIZE_MODES = ("floor", "round", "none")


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



__all__ = ["INCEPTION_IMAGE_SIZE", "QUANTIZE_MODES", "preprocess_for_inception"]
