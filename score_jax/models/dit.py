"""DiT: the Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"; facebookresearch/DiT ``models.py``), as a flax module with the official names.

  h   = PatchEmbed(x) + pos              conv p x p, stride p -> T = (H/p)(W/p) tokens of width D;
                                         pos the fixed 2-D sin-cos table (not a parameter)
  c   = TimestepEmbedder(t) + LabelEmbedder(y)
        TimestepEmbedder: Linear-SiLU-Linear of [cos(t f_k), sin(t f_k)],
                          f_k = exp(-ln(10000) k / 128), k = 0..127 (256 frequencies)
        LabelEmbedder:    table of num_classes (+ 1 null row when class_dropout_prob > 0)
  per block (adaLN-Zero; six vectors from Linear(SiLU(c))):
        h += g1 * Attn(LN(h) (1 + s1) + b1);  h += g2 * MLP(LN(h) (1 + s2) + b2)
        LN without affine, eps 1e-6; multi-head attention with qkv bias; MLP with tanh-GELU
  out = Unpatchify(Linear(LN(h) (1 + s) + b))   (shift b, scale s from Linear(SiLU(c)))

``learn_sigma`` doubles the output channels (the official model predicts eps and the variance
interpolation of Improved DDPM). The module returns the first ``num_channels`` channels -- the
prediction the score wiring, losses and samplers use -- unless called with ``full_output=True``.

Class-label dropout for classifier-free guidance is *not* done inside the module (the official
``LabelEmbedder.token_drop``): the project drops labels in the loss
(``losses.get_loss_fn(..., num_classes=..., label_dropout=...)``), writing the null label
``num_classes``; that is the official ``force_drop_ids`` path and works here unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .base import Network
from .utils import check_image, check_image_size, dot_product_attention, float_dtype

Array = jnp.ndarray

# The official configurations (DiT ``models.py``: DiT_XL_2 ... DiT_S_8).
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DIT_PRESETS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{p}": {"depth": d, "hidden_size": w, "num_heads": h, "patch_size": p}
    for size, (d, w, h) in _SIZES.items() for p in (2, 4, 8)
}

FREQUENCY_EMBEDDING_SIZE = 256


def dit_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """A ``config.model`` dict for ``models.get_model``: ``name='dit'`` plus the preset's
    depth / hidden_size / num_heads / patch_size, then ``overrides`` (e.g. ``num_classes=10``,
    ``learn_sigma=False``).

    Example: ``get_model(dit_config("DiT-XL/2", num_classes=1000), image_size=32,
    num_channels=4)`` is the model of ``DiT-XL-2-256x256.pt`` (256 px images, 32 x 32 x 4
    latents, 1000 classes).

    Raises:
      ValueError: unknown preset (the valid names are listed).
    """
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; valid: {list(DIT_PRESETS)}")
    return {"name": "dit", **DIT_PRESETS[preset], **overrides}


def timestep_embedding(t: Array, dim: int = FREQUENCY_EMBEDDING_SIZE,
                       max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding of (fractional) time steps, cos first (GLIDE ``nn.py``, used by DiT):

        emb = [cos(t f_0), ..., cos(t f_{h-1}), sin(t f_0), ..., sin(t f_{h-1})] (+ a zero column
        when dim is odd),  f_k = exp(-ln(max_period) k / h),  h = dim // 2.

    Args:
      t: (B,) time labels, any real dtype; computed in at least float32 (float64 for float64 t).
    Returns:
      (B, dim).
    """
    dtype = jnp.promote_types(jnp.asarray(t).dtype, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=dtype) / half)
    args = jnp.asarray(t, dtype)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """The fixed 2-D sin-cos position table of DiT / MAE (``get_2d_sincos_pos_embed``), float64.

    Token m = i * grid_w + j (row i, column j) gets
        [sin(j w), cos(j w), sin(i w), cos(i w)],  w_k = 10000^(-k / (dim/4)), k < dim/4
    (the column coordinate comes first, as in the reference's ``meshgrid(grid_w, grid_h)``).

    Returns:
      (grid_h * grid_w, dim) numpy float64.
    Raises:
      ValueError: dim not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"dit: the 2-D sin-cos table needs hidden_size % 4 == 0, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                             np.arange(grid_w, dtype=np.float64), indexing="ij")

    def one_d(pos):
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(cols), one_d(rows)], axis=1)


def _layer_norm(x: Array, eps: float = 1e-6) -> Array:
    """LayerNorm over the last axis without affine parameters (two-pass variance, at least
    float32)."""
    dtype = x.dtype
    x = x.astype(jnp.promote_types(dtype, jnp.float32))
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return ((x - mean) * jax.lax.rsqrt(var + eps)).astype(dtype)


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
    return x * (1 + scale[:, None]) + shift[:, None]


def _dense(features: int, name: str, dtype: Any, zero: bool = False) -> nn.Dense:
    init = nn.initializers.zeros if zero else nn.initializers.xavier_uniform()
    return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.zeros, dtype=dtype,
                    name=name)


class Attention(nn.Module):
    """timm ``Attention`` as used by DiT: qkv Linear (with bias), softmax(q k^T / sqrt(d_h)) v per
    head, output Linear ``proj``. x (B, T, D) -> (B, T, D)."""

    num_heads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, n, d = x.shape
        hd = d // self.num_heads
        qkv = _dense(3 * d, "qkv", self.dtype)(x).reshape(b, n, 3, self.num_heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = dot_product_attention(q, k, v, hd ** -0.5).reshape(b, n, d)
        return _dense(d, "proj", self.dtype)(out)


class Mlp(nn.Module):
    """timm ``Mlp``: fc1 -> tanh-GELU -> fc2."""

    hidden: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.gelu(_dense(self.hidden, "fc1", self.dtype)(x), approximate=True)
        return _dense(x.shape[-1], "fc2", self.dtype)(h)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning (DiT ``models.py`` ``DiTBlock``). x (B, T, D),
    c (B, D)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, c: Array) -> Array:
        d = x.shape[-1]
        mod = _dense(6 * d, "adaLN_modulation", self.dtype, zero=True)(nn.silu(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        attn = Attention(self.num_heads, dtype=self.dtype, name="attn")
        x = x + gate1[:, None] * attn(_modulate(_layer_norm(x), shift1, scale1))
        mlp = Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")
        return x + gate2[:, None] * mlp(_modulate(_layer_norm(x), shift2, scale2))


class DiT(Network):
    """Diffusion Transformer (adaLN-Zero), official module and field names.

    Call as ``model.apply(variables, x, t, y=labels, train=False)``: x (B, H, W, C) NHWC with
    C = num_channels and H, W multiples of patch_size; t (B,) time labels (DiT's own are integer
    steps 0..999; the score wiring passes e.g. 999 t, fractional values are fine); y (B,) int
    class labels in [0, num_classes], num_classes being the null label (needs
    class_dropout_prob > 0); y=None means the null label for every sample. Labels out of range
    cannot be checked under jit (the embedding lookup then returns NaN).

    Returns (B, H, W, C) in x's dtype: the first C of the 2C learn_sigma channels, or all
    ``out_channels`` with ``full_output=True`` (the official output, NHWC).

    Fields: ``patch_size``, ``hidden_size``, ``depth``, ``num_heads``, ``mlp_ratio``,
    ``class_dropout_prob`` (only decides whether the null row exists: the project drops labels
    in the loss), ``num_classes`` (None, the default here as for the U-Nets: unconditional, no
    label table; the official default is 1000), ``learn_sigma`` as in the official constructor
    (other defaults: DiT-XL/2); ``image_size`` / ``num_channels`` from the data
    (``input_size`` / ``in_channels`` there); ``centered`` as for the U-Nets (False: x in [0, 1]
    is mapped to 2x - 1 first; True, the default, uses x as given like the official model);
    ``dtype`` the compute dtype (params stay float32); ``remat`` checkpoints each block.
    Initialisation follows ``DiT.initialize_weights`` (xavier-uniform linears, N(0, 0.02) label
    table and timestep MLP, zero adaLN and final layer).
    """

    image_size: int | None = None
    num_channels: int = 4
    centered: bool = True
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int | None = None
    learn_sigma: bool = True
    dtype: Any = None
    remat: bool = False

    @property
    def out_channels(self) -> int:
        return self.num_channels * 2 if self.learn_sigma else self.num_channels

    @property
    def num_label_rows(self) -> int:
        """Rows of the label table: num_classes, + 1 (the null label) when class_dropout_prob > 0."""
        if self.num_classes is None:
            return 0
        return self.num_classes + int(self.class_dropout_prob > 0)

    def validate(self) -> None:
        """Raise ValueError for settings DiT cannot take."""
        for field in ("patch_size", "hidden_size", "num_heads", "num_channels"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"dit: {field}={getattr(self, field)} must be >= 1")
        if self.depth < 0:
            raise ValueError(f"dit: depth={self.depth} must be >= 0")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"dit: hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"dit: hidden_size={self.hidden_size} must be a multiple of 4 "
                             "(2-D sin-cos position table)")
        if not self.mlp_ratio > 0:
            raise ValueError(f"dit: mlp_ratio={self.mlp_ratio} must be > 0")
        if not 0 <= self.class_dropout_prob < 1:
            raise ValueError(f"dit: class_dropout_prob={self.class_dropout_prob} must be in [0, 1)")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"dit: num_classes={self.num_classes} must be >= 1 or None")
        check_image_size("dit", self.image_size, self.patch_size)

    def _labels(self, y: Array | None, batch: int) -> Array | None:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("dit: class labels y were given but the model has "
                                 "num_classes=None")
            return None
        if y is None:
            if self.class_dropout_prob <= 0:
                raise ValueError("dit: y=None asks for the null label, which exists only when "
                                 f"class_dropout_prob > 0 (got {self.class_dropout_prob})")
            return jnp.full((batch,), self.num_classes, jnp.int32)
        y = jnp.asarray(y)
        if y.shape != (batch,):
            raise ValueError(f"dit: y must have shape ({batch},), got {y.shape}")
        return y.astype(jnp.int32)

    @nn.compact
    def __call__(self, x: Array, t: Array, *, train: bool = False, y: Array | None = None,
                 full_output: bool = False) -> Array:
        del train  # DiT has no dropout; label dropout lives in the loss.
        self.validate()
        p, d, dtype = self.patch_size, self.hidden_size, self.dtype
        check_image(x, model="dit", image_size=self.image_size, num_channels=self.num_channels,
                    divisor=p)
        b, height, width, _ = x.shape
        t = jnp.asarray(t)
        if t.shape != (b,):
            raise ValueError(f"dit: t must have shape ({b},), got {t.shape}")
        out_dtype, emb_dtype = x.dtype, float_dtype(x)
        labels = self._labels(y, b)

        h = x if self.centered else 2 * x - 1.0
        h = _PatchEmbedder(d, p, dtype=dtype, name="x_embedder")(h)
        gh, gw = height // p, width // p
        h = h.reshape(b, gh * gw, d)
        h = h + jnp.asarray(sincos_pos_embed_2d(d, gh, gw), h.dtype)[None]

        c = _TimestepEmbedder(d, dtype=dtype, name="t_embedder")(
            timestep_embedding(t.astype(emb_dtype)))
        if labels is not None:
            c = c + _LabelEmbedder(self.num_label_rows, d, name="y_embedder")(labels).astype(
                c.dtype)

        block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            h = block_cls(self.num_heads, self.mlp_ratio, dtype=dtype, name=f"blocks_{i}")(h, c)

        h = _FinalLayer(p * p * self.out_channels, dtype=dtype, name="final_layer")(h, c)
        # Unpatchify: token (i, j), vector (p, q, c) -> pixel (i p + p', j p + q', c).
        h = h.reshape(b, gh, gw, p, p, self.out_channels)
        h = h.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, self.out_channels)
        if not full_output:
            h = h[..., : self.num_channels]
        return h.astype(out_dtype)


class _PatchEmbedder(nn.Module):
    """``x_embedder.proj``: conv p x p, stride p, D filters (with bias). The official init treats
    it as a linear map of p * p * C inputs (xavier-uniform on the flattened kernel)."""

    hidden_size: int
    patch_size: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        p = self.patch_size
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                                out_axis=-1)
        return nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                       kernel_init=init, bias_init=nn.initializers.zeros, dtype=self.dtype,
                       name="proj")(x)


class _TimestepEmbedder(nn.Module):
    """``t_embedder.mlp``: Linear(256 -> D), SiLU, Linear(D -> D); N(0, 0.02) kernels."""

    hidden_size: int
    dtype: Any = None

    @nn.compact
    def __call__(self, t_freq: Array) -> Array:
        init = nn.initializers.normal(0.02)
        h = nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype, name="mlp_0")(t_freq)
        return nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype,
                        name="mlp_2")(nn.silu(h))


class _LabelEmbedder(nn.Module):
    """``y_embedder.embedding_table``: (rows, D) table, N(0, 0.02)."""

    rows: int
    hidden_size: int

    @nn.compact
    def __call__(self, labels: Array) -> Array:
        return nn.Embed(self.rows, self.hidden_size, embedding_init=nn.initializers.normal(0.02),
                        name="embedding_table")(labels)


class _FinalLayer(nn.Module):
    """``final_layer``: adaLN (shift, scale) on the non-affine LayerNorm, then ``linear``; both
    zero-initialised."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, c: Array) -> Array:
        shift, scale = jnp.split(
            _dense(2 * x.shape[-1], "adaLN_modulation", self.dtype, zero=True)(nn.silu(c)), 2,
            axis=-1)
        return _dense(self.features, "linear", self.dtype, zero=True)(
            _modulate(_layer_norm(x), shift, scale))
