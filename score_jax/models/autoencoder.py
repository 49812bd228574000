"""AutoencoderKL: the first-stage autoencoder of latent diffusion (LDM / Stable Diffusion).

Architecture of Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3.1 and App. G (reference: CompVis ``ldm/modules/diffusionmodules/model.py``
``Encoder`` / ``Decoder`` and ``ldm/models/autoencoder.py::AutoencoderKL``; diffusers
``models/autoencoders/autoencoder_kl.py`` and ``vae.py``). Modules and parameters are named as in
diffusers (``encoder/down_blocks_0/resnets_1/conv2/kernel`` for
``encoder.down_blocks.0.resnets.1.conv2.weight``), so `score_jax.convert_autoencoder` maps either
released layout one to one.

Encoder: conv_in (3x3) -> per level ``layers_per_block`` ResNet blocks (GroupNorm + SiLU + 3x3
conv, twice; 1x1 shortcut when the width changes) and, except at the last level, a stride-2 3x3
conv after padding the bottom / right by one (the reference's asymmetric padding) -> mid block
(ResNet, single-head self-attention with a residual, ResNet) -> GroupNorm, SiLU, conv_out to
2 x latent channels -> ``quant_conv`` (1x1). The moments split into the mean and log-variance of
a diagonal Gaussian posterior q(z | x); the log-variance is clamped to [-30, 20] as in
``DiagonalGaussianDistribution``. Decoder: ``post_quant_conv`` (1x1) -> conv_in -> mid block ->
per level (widths reversed) ``layers_per_block + 1`` ResNet blocks and, except at the last
level, a nearest-neighbour 2x up-sampling followed by a 3x3 conv -> GroupNorm, SiLU, conv_out.
All GroupNorms use eps = 1e-6. Images and latents are NHWC.

Also here, pure and config-free, for stage 1 (training the autoencoder) and stage 2 (diffusion in
its latent space): `gaussian_kl` (KL(q || N(0, I))), `autoencoder_loss`, `encode_to_latents`,
`decode_latents` and `latent_scale_factor`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .base import Network
from .utils import check_choice, check_image, check_image_size, dot_product_attention, float_dtype

Array = jnp.ndarray

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # ldm DiagonalGaussianDistribution's clamp
_EPS = 1e-6


def _group_norm(groups: int, name: str, dtype: Any = None) -> nn.GroupNorm:
    # Two-pass variance (torch's GroupNorm) for float32 agreement with the reference; flax
    # computes the statistics in float32 at least whatever the compute dtype.
    return nn.GroupNorm(num_groups=groups, epsilon=_EPS, use_fast_variance=False, name=name,
                        dtype=dtype)


def _conv(features: int, kernel: int, name: str, stride: int = 1, dtype: Any = None) -> nn.Conv:
    pad = "VALID" if stride != 1 or kernel == 1 else ((1, 1), (1, 1))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, name=name,
                   dtype=dtype)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice plus a (1x1-projected if widths differ) shortcut
    (diffusers ``ResnetBlock2D`` without time embedding; ldm ``ResnetBlock``, dropout 0)."""

    out_channels: int
    groups: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.silu(_group_norm(self.groups, "norm1", self.dtype)(x))
        h = _conv(self.out_channels, 3, "conv1", dtype=self.dtype)(h)
        h = nn.silu(_group_norm(self.groups, "norm2", self.dtype)(h))
        h = _conv(self.out_channels, 3, "conv2", dtype=self.dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "conv_shortcut", dtype=self.dtype)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention with a residual: x + W_o softmax(q k^T / sqrt(C)) v,
    q, k, v = W_{q,k,v} GroupNorm(x) over the H*W positions (diffusers ``Attention`` with
    ``heads = 1``; ldm ``AttnBlock``, which stores the projections as 1x1 convs)."""

    groups: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        y = _group_norm(self.groups, "group_norm", self.dtype)(x).reshape(b, h * w, c)
        q, k, v = (nn.Dense(c, name=f"to_{n}", dtype=self.dtype)(y)[:, :, None, :]
                   for n in "qkv")
        out = dot_product_attention(q, k, v, 1.0 / math.sqrt(c))[:, :, 0, :]
        out = nn.Dense(c, name="to_out_0", dtype=self.dtype)(out)
        return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
    """ResNet -> attention -> ResNet at the lowest resolution (diffusers ``UNetMidBlock2D``)."""

    groups: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x = ResnetBlock(c, self.groups, dtype=self.dtype, name="resnets_0")(x)
        x = AttentionBlock(self.groups, dtype=self.dtype, name="attentions_0")(x)
        return ResnetBlock(c, self.groups, dtype=self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    """Pad bottom / right by one, then a 3x3 stride-2 conv (ldm ``Downsample``; diffusers
    ``Downsample2D`` with ``padding=0``): H x W -> H/2 x W/2."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, "conv", stride=2, dtype=self.dtype)(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x up-sampling, then a 3x3 conv (ldm / diffusers ``Upsample``)."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, "conv", dtype=self.dtype)(x)


class DownBlock(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    downsample: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, dtype=self.dtype,
                            name=f"resnets_{j}")(x)
        if self.downsample:
            x = Downsample(dtype=self.dtype, name="downsamplers_0")(x)
        return x


class UpBlock(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    upsample: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, dtype=self.dtype,
                            name=f"resnets_{j}")(x)
        if self.upsample:
            x = Upsample(dtype=self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """x (B, H, W, C) -> moments (B, H/f, W/f, 2 * latent_channels), f = 2^(levels - 1)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    groups: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        chans = self.block_out_channels
        h = _conv(chans[0], 3, "conv_in", dtype=self.dtype)(x)
        for i, c in enumerate(chans):
            h = DownBlock(c, self.layers_per_block, self.groups, i < len(chans) - 1,
                          name=f"down_blocks_{i}")(h)
        h = MidBlock(self.groups, dtype=self.dtype, name="mid_block")(h)
        h = nn.silu(_group_norm(self.groups, "conv_norm_out", self.dtype)(h))
        return _conv(2 * self.latent_channels, 3, "conv_out", dtype=self.dtype)(h)


class Decoder(nn.Module):
    """z (B, h, w, latent_channels) -> x (B, h f, w f, out_channels)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    out_channels: int
    groups: int
    dtype: Any = None

    @nn.compact
    def __call__(self, z: Array) -> Array:
        chans = tuple(reversed(self.block_out_channels))
        h = _conv(chans[0], 3, "conv_in", dtype=self.dtype)(z)
        h = MidBlock(self.groups, dtype=self.dtype, name="mid_block")(h)
        for i, c in enumerate(chans):
            h = UpBlock(c, self.layers_per_block + 1, self.groups, i < len(chans) - 1,
                        name=f"up_blocks_{i}")(h)
        h = nn.silu(_group_norm(self.groups, "conv_norm_out", self.dtype)(h))
        return _conv(self.out_channels, 3, "conv_out", dtype=self.dtype)(h)


class AutoencoderKL(Network):
    """The KL-regularised autoencoder of LDM / Stable Diffusion (see the module docstring).

    Fields:
      block_out_channels: widths per level; ``len - 1`` down-samplings by 2 (SD: (128, 256, 512,
        512), f = 8).
      layers_per_block: ResNet blocks per encoder level (the decoder has one more).
      latent_channels: channels of z (SD: 4).
      norm_num_groups: GroupNorm groups; must divide every width.
      num_channels: image channels (from ``config.data``).
      image_size: optional expected H = W (from ``config.data``); checked when given.
      dtype: compute dtype (e.g. bfloat16; parameters stay float32, the posterior moments and
        the decoder output are returned in float32 at least); None: that of inputs / params.

    Methods (all NHWC, dtype follows inputs / params, so float64 under x64):
      ``model.init(key, x)`` builds encoder and decoder (``__call__``);
      ``model.apply(v, x, method="encode") -> (mean, logvar)``, each (B, H/f, W/f, latent);
      ``model.apply(v, z, method="decode") -> x``;
      ``model.apply(v, x[, key]) -> (x_rec, mean, logvar)`` decodes the posterior mean, or a
      sample ``mean + exp(logvar / 2) eps`` when a PRNG key is given.

    Raises:
      ValueError (from `validate` / the methods): empty or non-positive widths, a group count
      that does not divide a width, a wrong channel count or an image size not divisible by f.
    """

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    num_channels: int = 3
    image_size: int | None = None
    dtype: Any = None

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        """Config-time checks (called by `get_model`); see the class docstring for errors."""
        chans = tuple(self.block_out_channels)
        if not chans or any(int(c) <= 0 for c in chans):
            raise ValueError(f"autoencoder_kl: block_out_channels={chans!r} must be a non-empty "
                             "tuple of positive widths")
        for field in ("layers_per_block", "latent_channels", "norm_num_groups", "num_channels"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"autoencoder_kl: {field}={getattr(self, field)!r} must be a "
                                 "positive integer")
        bad = [c for c in chans if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"autoencoder_kl: norm_num_groups={self.norm_num_groups} does not "
                             f"divide the widths {bad} of block_out_channels={chans}")
        check_image_size("autoencoder_kl", self.image_size, self.downsampling_factor)

    def setup(self) -> None:
        chans = tuple(int(c) for c in self.block_out_channels)
        self.encoder = Encoder(chans, self.layers_per_block, self.latent_channels,
                               self.norm_num_groups, dtype=self.dtype)
        self.decoder = Decoder(chans, self.layers_per_block, self.num_channels,
                               self.norm_num_groups, dtype=self.dtype)
        self.quant_conv = nn.Conv(2 * self.latent_channels, (1, 1), dtype=self.dtype)
        self.post_quant_conv = nn.Conv(self.latent_channels, (1, 1), dtype=self.dtype)

    def encode(self, x: Array) -> tuple[Array, Array]:
        """Posterior q(z | x) = N(mean, exp(logvar)): returns (mean, logvar), logvar clamped to
        [-30, 20] (ldm ``DiagonalGaussianDistribution``)."""
        check_image(x, model="autoencoder_kl", image_size=self.image_size,
                    num_channels=self.num_channels, divisor=self.downsampling_factor)
        if self.dtype is None:
            moments = self.quant_conv(self.encoder(x))
        else:  # bf16 compute, moments (and so KL, sampling) in float32 at least
            moments = self.quant_conv(self.encoder(x.astype(self.dtype))).astype(float_dtype(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Array) -> Array:
        """Decoder output x (B, h f, w f, num_channels) for latents z (B, h, w, latent)."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"autoencoder_kl: z must be (B, h, w, {self.latent_channels}), "
                             f"got shape {z.shape}")
        if self.dtype is None:
            return self.decoder(self.post_quant_conv(z))
        return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(float_dtype(z))

    def __call__(self, x: Array, key: jax.Array | None = None) -> tuple[Array, Array, Array]:
        mean, logvar = self.encode(x)
        z = mean if key is None else posterior_sample(key, mean, logvar)
        return self.decode(z), mean, logvar


# ----------------------------------------------------------------------------------------------
# Stage-1 / stage-2 pieces (pure, config-free)
# ----------------------------------------------------------------------------------------------


def posterior_sample(key: jax.Array, mean: Array, logvar: Array) -> Array:
    """Reparameterised sample z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (same shape and
    dtype as ``mean``; Kingma & Welling 2014, Sec. 2.4)."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def gaussian_kl(mean: Array, logvar: Array) -> Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over all but the batch axis:

        0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)

    (ldm ``DiagonalGaussianDistribution.kl``). Returns shape (B,)."""
    axes = tuple(range(1, mean.ndim))
    return 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=axes)


RECONSTRUCTIONS = ("l1", "l2")


def autoencoder_loss(variables: Mapping[str, Any], batch: Array | Mapping[str, Array],
                     key: jax.Array, *, model: AutoencoderKL, kl_weight: float,
                     reconstruction: str = "l1") -> tuple[Array, dict[str, Array]]:
    """Stage-1 loss of a KL autoencoder without the perceptual and adversarial terms:

        loss = rec + kl_weight * kl,
        rec  = mean_b sum_{h,w,c} d(x, D(z)),  z = mean + exp(logvar / 2) eps ~ q(z | x),
        kl   = mean_b KL(q(z | x) || N(0, I)),

    with d = |.| ("l1") or (.)^2 ("l2"): per-example sums averaged over the batch, as ldm's
    ``LPIPSWithDiscriminator`` (``ldm/modules/losses/contperceptual.py``, learned logvar = 0,
    perceptual_weight = 0, no discriminator); LDM trains the KL-f8 model with kl_weight = 1e-6.

    Args:
      variables: ``{'params': ...}`` of ``model``.
      batch: images (B, H, W, C), or a mapping with key ``'image'``.
      key: PRNG key of the posterior sample.
      model: the `AutoencoderKL`.
      kl_weight: weight of the KL term (float, >= 0).
      reconstruction: "l1" or "l2".

    Returns:
      (loss, {'rec': rec, 'kl': kl}), scalars.

    Raises:
      ValueError: unknown ``reconstruction``, negative ``kl_weight`` or a batch without 'image'.
    """
    reconstruction = check_choice("autoencoder_loss", "reconstruction", reconstruction,
                                  RECONSTRUCTIONS)
    if not kl_weight >= 0:
        raise ValueError(f"autoencoder_loss: kl_weight={kl_weight!r} must be >= 0")
    x = _images(batch)
    x_rec, mean, logvar = model.apply(variables, x, key)
    diff = x_rec - x
    d = jnp.abs(diff) if reconstruction == "l1" else diff ** 2
    rec = jnp.mean(jnp.sum(d, axis=tuple(range(1, d.ndim))))
    kl = jnp.mean(gaussian_kl(mean, logvar))
    return rec + kl_weight * kl, {"rec": rec, "kl": kl}


def _images(batch: Array | Mapping[str, Array]) -> Array:
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise ValueError(f"batch has keys {sorted(batch)}; expected an 'image' entry")
        return batch["image"]
    return batch


def encode_to_latents(model: AutoencoderKL, variables: Mapping[str, Any], x: Array,
                      key: jax.Array | None = None, *, sample: bool = False,
                      scale_factor: float = 1.0) -> Array:
    """Latents for diffusion in latent space: ``scale_factor * z`` with z the posterior mean, or
    a posterior sample when ``sample=True`` (needs ``key``; LDM's ``encode_first_stage`` samples).

    x: (B, H, W, C) -> (B, H/f, W/f, latent_channels). Stable Diffusion's VAE uses
    scale_factor = 0.18215; for a new autoencoder take `latent_scale_factor` of a first batch.

    Raises:
      ValueError: ``sample=True`` without a key.
    """
    if sample and key is None:
        raise ValueError("encode_to_latents: sample=True needs a PRNG key")
    mean, logvar = model.apply(variables, x, method="encode")
    z = posterior_sample(key, mean, logvar) if sample else mean
    return scale_factor * z


def decode_latents(model: AutoencoderKL, variables: Mapping[str, Any], z: Array, *,
                   scale_factor: float = 1.0) -> Array:
    """Images from scaled latents: ``D(z / scale_factor)`` (inverse of `encode_to_latents`;
    ldm ``decode_first_stage``). z: (B, h, w, latent) -> (B, h f, w f, C)."""
    return model.apply(variables, z / scale_factor, method="decode")


def latent_scale_factor(latents: Array) -> Array:
    """1 / std of all latent entries (unbiased, ddof = 1, as ``torch.std``): LDM's
    ``scale_by_std`` computes it on the first training batch so the scaled latents have unit
    variance (Rombach et al. 2022, Sec. 4.3.2 / App. G). Returns a scalar."""
    return 1.0 / jnp.std(jnp.ravel(latents), ddof=1)


__all__ = ["AutoencoderKL", "Decoder", "Encoder", "autoencoder_loss", "decode_latents",
           "encode_to_latents", "gaussian_kl", "latent_scale_factor", "posterior_sample"]
