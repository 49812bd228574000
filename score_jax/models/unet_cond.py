"""The cross-attention U-Net of Stable Diffusion (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", Sec. 3.3 and App. E), as diffusers'
``UNet2DConditionModel`` builds it (``models/unets/unet_2d_condition.py``, ``unet_2d_blocks.py``,
``resnet.py``, ``transformers/transformer_2d.py``, ``attention.py``), with diffusers' module and
parameter names (``down_blocks_1/attentions_0/transformer_blocks_0/attn2/to_k/kernel`` for
``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``) so a diffusers
folder converts one to one (`score_jax.convert.load_diffusers_unet`). NHWC throughout.

  temb = linear_2(SiLU(linear_1(sinusoid(t))))        ``time_embedding``; the sinusoid of width
         C0 = block_out_channels[0]: f_k = exp(-ln(10^4) k / (C0/2 - freq_shift)),
         [sin(t f), cos(t f)], swapped to [cos, sin] when flip_sin_to_cos (SD: True, shift 0)
  h    = conv_in(x)
  down: per level ``layers_per_block`` ResnetBlock2D, each followed by a Transformer2DModel in
        a CrossAttnDownBlock2D; then (except the last level) Downsample2D (3x3 conv, stride 2,
        padding ``downsample_padding``)
  mid : ResnetBlock2D, Transformer2DModel, ResnetBlock2D (UNetMidBlock2DCrossAttn)
  up  : per level ``layers_per_block + 1`` ResnetBlock2D on [h, skip] (channel concat), each
        followed by a Transformer2DModel in a CrossAttnUpBlock2D; then (except the last level)
        Upsample2D (nearest x2, 3x3 conv)
  out = conv_out(SiLU(GroupNorm(h)))

ResnetBlock2D:  h = conv1(SiLU(GN1(x))) + time_emb_proj(SiLU(temb));
                h = conv2(dropout(SiLU(GN2(h))));  out = (shortcut(x) + h) / output_scale_factor
                (GroupNorm eps ``norm_eps``; 1x1 ``conv_shortcut`` when the widths differ).
Transformer2DModel: GroupNorm (eps 1e-6) -> proj_in (1x1 conv, SD 1.x; a linear layer after
  flattening when ``use_linear_projection``, SD 2.x) -> BasicTransformerBlock x n ->
  proj_out -> + residual.
BasicTransformerBlock (LayerNorm eps 1e-5):  h += attn1(LN1(h)) (self-attention);
  h += attn2(LN2(h), context) (cross-attention to the text tokens);  h += ff(LN3(h)) with the
  GEGLU feed-forward ff = net_2(a * GELU(g)), [a, g] = net_0.proj(h) (width 4 d each, erf GELU).
  Attention: softmax(q k^T / sqrt(d_head)) v per head, q, k, v without bias, ``to_out_0`` with.

``attention_head_dim`` is, as in diffusers' configs, the *number of heads* per level (diffusers
issue 2011 kept the misnomer): SD 1.x has 8 heads everywhere, SD 2.x (5, 10, 20, 20), i.e. 64
channels per head; the up path uses the list reversed.

`SD_UNET_PRESETS` holds the ``unet/config.json`` of SD 1.5 and SD 2.1; `unet_config(preset)`
makes a ``config.model`` from either, `unet_kwargs_from_diffusers` any diffusers config (the
keys this port does not implement raise ValueError naming them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .base import Network
from .utils import (
    check_image,
    check_image_size,
    dot_product_attention,
    float_dtype,
    remat_class,
)

Array = jnp.ndarray

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)
ACT_FNS = ("silu", "swish")

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

# ``unet/config.json`` of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1
# (diffusers keys; the "_class_name" / "_diffusers_version" entries left out).
SD_UNET_PRESETS: dict[str, dict[str, Any]] = {
    "sd15": {
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False, "cross_attention_dim": 768,
        "down_block_types": list(_SD_DOWN), "downsample_padding": 1, "flip_sin_to_cos": True,
        "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": list(_SD_UP),
    },
    "sd21": {
        "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
        "cross_attention_dim": 1024, "down_block_types": list(_SD_DOWN), "downsample_padding": 1,
        "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False,
        "out_channels": 4, "sample_size": 96, "up_block_types": list(_SD_UP),
        "upcast_attention": True, "use_linear_projection": True,
    },
}

# diffusers config keys taken as fields of `UNet2DConditionModel` under another name
_RENAMED = {"in_channels": "num_channels"}
# diffusers config keys taken with the same name
_SAME = ("sample_size", "out_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
         "up_block_types", "block_out_channels", "layers_per_block", "downsample_padding",
         "mid_block_scale_factor", "dropout", "act_fn", "norm_num_groups", "norm_eps",
         "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
         "use_linear_projection", "upcast_attention", "time_embedding_dim", "conv_in_kernel",
         "conv_out_kernel")
# diffusers config keys of features this port does not implement: accepted only at the value(s)
# that switch the feature off (diffusers' defaults)
_OFF = {
    "only_cross_attention": (False,), "dual_cross_attention": (False,),
    "class_embed_type": (None,), "num_class_embeds": (None,), "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,), "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,), "num_attention_heads": (None,),
    "reverse_transformer_layers_per_block": (None,), "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1, 1.0),
    "time_embedding_type": ("positional",), "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,), "time_cond_proj_dim": (None,),
    "projection_class_embeddings_input_dim": (None,), "attention_type": ("default",),
    "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,), "addition_embed_type_num_heads": (64,),
}


def unet_kwargs_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
    """A ``config.model`` dict (``name='unet2d_condition'``) from a diffusers
    ``UNet2DConditionModel`` ``config.json`` dict.

    ``in_channels`` -> ``num_channels``, ``center_input_sample`` -> ``centered = not
    center_input_sample`` (diffusers maps x to 2x - 1 when it is set, as ``centered=False``
    does here); ``sample_size`` is kept as the default size; keys starting with ``_`` are
    metadata.

    Raises:
      ValueError: naming every key this port does not implement (with its value), or a known
        feature key set to a value that switches the feature on.
    """
    out: dict[str, Any] = {"name": "unet2d_condition"}
    bad = []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in _RENAMED:
            out[_RENAMED[key]] = value
        elif key == "center_input_sample":
            out["centered"] = not value
        elif key in _SAME:
            out[key] = tuple(value) if isinstance(value, list) else value
        elif key in _OFF:
            if value not in _OFF[key] or isinstance(value, list):
                bad.append(f"{key}={value!r} (supported: {list(_OFF[key])})")
        else:
            bad.append(f"{key}={value!r} (unknown key)")
    if bad:
        raise ValueError("unet2d_condition: unsupported UNet2DConditionModel config entries: "
                         + "; ".join(bad))
    return out


def unet_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """``config.model`` of a preset of `SD_UNET_PRESETS` ('sd15', 'sd21'), then ``overrides``.

    Example: ``get_model(unet_config("sd15"))`` is SD 1.5's U-Net (64 x 64 x 4 latents, 768-wide
    CLIP ViT-L/14 context), 859,520,964 parameters.

    Raises:
      ValueError: unknown preset (the valid names listed).
    """
    if preset not in SD_UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; valid: {list(SD_UNET_PRESETS)}")
    return {**unet_kwargs_from_diffusers(SD_UNET_PRESETS[preset]), **overrides}


def sd_timestep_embedding(t: Array, dim: int, *, flip_sin_to_cos: bool = True,
                          freq_shift: float = 0.0, max_period: float = 10000.0) -> Array:
    """diffusers ``get_timestep_embedding`` (scale 1):

        f_k = exp(-ln(max_period) k / (dim/2 - freq_shift)),  k = 0 .. dim/2 - 1,
        emb = [sin(t f), cos(t f)]  ([cos, sin] when flip_sin_to_cos), zero column if dim is odd.

    Args:
      t: (B,) time labels (diffusers timesteps, fractional allowed), computed in t's dtype
        promoted to at least float32 (diffusers: float32).
    Returns:
      (B, dim).
    """
    dtype = jnp.promote_types(jnp.asarray(t).dtype, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=dtype) / (half - freq_shift))
    args = jnp.asarray(t, dtype)[:, None] * freqs[None]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _conv(features: int, kernel: int, name: str, dtype: Any, stride: int = 1,
          padding: int | None = None) -> nn.Conv:
    p = (kernel - 1) // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((p, p), (p, p)), dtype=dtype, name=name)


def _group_norm(groups: int, eps: float, name: str, dtype: Any) -> nn.GroupNorm:
    # two-pass variance as torch's GroupNorm (float32 agreement); stats in >= float32
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                        name=name)


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` (time_embedding_norm 'default', pre-norm, SiLU); x (B, H, W,
    C_in), temb (B, D) -> (B, H, W, out_channels)."""

    out_channels: int
    groups: int
    eps: float
    dropout: float = 0.0
    output_scale_factor: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool) -> Array:
        c = self.out_channels
        h = nn.silu(_group_norm(self.groups, self.eps, "norm1", self.dtype)(x))
        h = _conv(c, 3, "conv1", self.dtype)(h)
        h = h + nn.Dense(c, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))[:, None, None]
        h = nn.silu(_group_norm(self.groups, self.eps, "norm2", self.dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = _conv(c, 3, "conv2", self.dtype)(h)
        if x.shape[-1] != c:
            x = _conv(c, 1, "conv_shortcut", self.dtype)(x)
        out = x + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Attention(nn.Module):
    """diffusers ``Attention`` (bias False, out bias True): x (B, T, d), context (B, S, d_c) or
    None (self-attention) -> (B, T, d); ``heads`` heads of width d / heads, scale d_head^-1/2."""

    heads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        b, n, d = x.shape
        context = x if context is None else context
        hd = d // self.heads
        q = nn.Dense(d, use_bias=False, dtype=self.dtype, name="to_q")(x)
        k = nn.Dense(d, use_bias=False, dtype=self.dtype, name="to_k")(context)
        v = nn.Dense(d, use_bias=False, dtype=self.dtype, name="to_v")(context)
        s = context.shape[1]
        # one dtype for q, k, v (bf16 weights on a float32 context / time-embedded stream would
        # otherwise mix dtypes, which jax.nn.dot_product_attention refuses)
        k, v = k.astype(q.dtype), v.astype(q.dtype)
        out = dot_product_attention(q.reshape(b, n, self.heads, hd),
                                    k.reshape(b, s, self.heads, hd),
                                    v.reshape(b, s, self.heads, hd), hd ** -0.5)
        return nn.Dense(d, dtype=self.dtype, name="to_out_0")(out.reshape(b, n, d))


class GEGLU(nn.Module):
    """diffusers ``GEGLU`` (Shazeer 2020, "GLU Variants Improve Transformer"): [a, g] = proj(x),
    a * GELU(g) with the exact (erf) GELU; x (..., d) -> (..., inner)."""

    inner: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, gate = jnp.split(nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x), 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """diffusers ``FeedForward`` with ``activation_fn='geglu'``, mult 4: net_2(GEGLU net_0(x))."""

    mult: int = 4
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        h = GEGLU(self.mult * d, dtype=self.dtype, name="net_0")(x)
        return nn.Dense(d, dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
    """diffusers ``BasicTransformerBlock`` (norm_type 'layer_norm', eps 1e-5): self-attention,
    cross-attention to ``context``, GEGLU feed-forward, each pre-LayerNorm with a residual."""

    heads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        def ln(name):
            return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype, name=name)

        x = x + Attention(self.heads, dtype=self.dtype, name="attn1")(ln("norm1")(x))
        x = x + Attention(self.heads, dtype=self.dtype, name="attn2")(ln("norm2")(x), context)
        return x + FeedForward(dtype=self.dtype, name="ff")(ln("norm3")(x))


class Transformer2DModel(nn.Module):
    """diffusers ``Transformer2DModel`` on continuous inputs: x (B, H, W, C), context (B, S, D)
    -> (B, H, W, C)."""

    heads: int
    groups: int
    num_layers: int = 1
    use_linear_projection: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        b, hh, ww, c = x.shape
        h = _group_norm(self.groups, 1e-6, "norm", self.dtype)(x)
        if self.use_linear_projection:
            h = nn.Dense(c, dtype=self.dtype, name="proj_in")(h.reshape(b, hh * ww, c))
        else:
            h = _conv(c, 1, "proj_in", self.dtype)(h).reshape(b, hh * ww, c)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(self.heads, dtype=self.dtype,
                                      name=f"transformer_blocks_{i}")(h, context)
        if self.use_linear_projection:
            h = nn.Dense(c, dtype=self.dtype, name="proj_out")(h).reshape(b, hh, ww, c)
        else:
            h = _conv(c, 1, "proj_out", self.dtype)(h.reshape(b, hh, ww, c))
        return h + x


class Downsample2D(nn.Module):
    """diffusers ``Downsample2D`` with a conv: 3x3, stride 2, ``padding`` on every side (1, SD);
    padding 0 pads the bottom / right by one first (diffusers' asymmetric case)."""

    padding: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, "conv", self.dtype, stride=2, padding=self.padding)(x)


class Upsample2D(nn.Module):
    """diffusers ``Upsample2D`` with a conv: nearest-neighbour x2, then a 3x3 conv."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, "conv", self.dtype)(x)


class _BlockSettings(nn.Module):
    """Fields shared by the down / mid / up blocks."""

    out_channels: int
    num_layers: int
    groups: int
    eps: float
    heads: int = 1
    transformer_layers: int = 1
    use_linear_projection: bool = False
    dropout: float = 0.0
    output_scale_factor: float = 1.0
    dtype: Any = None
    remat: bool = False

    def resnet(self, name: str) -> nn.Module:
        cls = remat_class(ResnetBlock2D) if self.remat else ResnetBlock2D
        return cls(self.out_channels, self.groups, self.eps, self.dropout,
                   self.output_scale_factor, dtype=self.dtype, name=name)

    def transformer(self, name: str) -> nn.Module:
        cls = nn.remat(Transformer2DModel) if self.remat else Transformer2DModel
        return cls(self.heads, self.groups, self.transformer_layers, self.use_linear_projection,
                   dtype=self.dtype, name=name)


class DownBlock2D(_BlockSettings):
    """``CrossAttnDownBlock2D`` (``cross_attention=True``) or ``DownBlock2D``: returns the
    output and the skip activations (one per layer, plus the down-sampled output)."""

    cross_attention: bool = True
    add_downsample: bool = True
    downsample_padding: int = 1

    @nn.compact
    def __call__(self, x: Array, temb: Array, context: Array, train: bool
                 ) -> tuple[Array, list[Array]]:
        skips = []
        for j in range(self.num_layers):
            x = self.resnet(f"resnets_{j}")(x, temb, train)
            if self.cross_attention:
                x = self.transformer(f"attentions_{j}")(x, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.downsample_padding, dtype=self.dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class MidBlock2DCrossAttn(_BlockSettings):
    """``UNetMidBlock2DCrossAttn`` (one layer): ResnetBlock2D, Transformer2DModel,
    ResnetBlock2D."""

    @nn.compact
    def __call__(self, x: Array, temb: Array, context: Array, train: bool) -> Array:
        x = self.resnet("resnets_0")(x, temb, train)
        for j in range(self.num_layers):
            x = self.transformer(f"attentions_{j}")(x, context)
            x = self.resnet(f"resnets_{j + 1}")(x, temb, train)
        return x


class UpBlock2D(_BlockSettings):
    """``CrossAttnUpBlock2D`` (``cross_attention=True``) or ``UpBlock2D``: each layer takes the
    last remaining skip, concatenated after h on the channel axis."""

    cross_attention: bool = True
    add_upsample: bool = True

    @nn.compact
    def __call__(self, x: Array, skips: Sequence[Array], temb: Array, context: Array,
                 train: bool) -> Array:
        skips = list(skips)
        for j in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = self.resnet(f"resnets_{j}")(x, temb, train)
            if self.cross_attention:
                x = self.transformer(f"attentions_{j}")(x, context)
        if self.add_upsample:
            x = Upsample2D(dtype=self.dtype, name="upsamplers_0")(x)
        return x


def _per_block(value: Any, n: int, field: str) -> tuple[Any, ...]:
    """An int (or None) repeated for n blocks, or a sequence of length n (ValueError otherwise)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"unet2d_condition: {field}={tuple(value)!r} has {len(value)} "
                             f"entries; down_block_types has {n}")
        return tuple(value)
    return (value,) * n


class UNet2DConditionModel(Network):
    """Stable Diffusion's cross-attention U-Net (diffusers ``UNet2DConditionModel``; see the
    module docstring for the architecture).

    Call as ``model.apply(variables, x, t, context=tokens, train=False)``:
      x: (B, H, W, num_channels) NHWC (latents), H and W multiples of 2^(levels - 1);
      t: (B,) or scalar diffusers timesteps (float; 0..999 for SD), broadcast to the batch;
      context: (B, S, cross_attention_dim) text-encoder hidden states (CLIP last_hidden_state
        for SD 1.x, the penultimate layer for SD 2.x: the caller's choice);
      y: (B,) int class labels when ``num_classes`` is set (a project extension, not a diffusers
        key): without ``context`` the cross-attention then sees one learned token per class,
        ``label_embed[y]`` ((num_classes + 1, cross_attention_dim) table; label num_classes
        is the null label of classifier-free guidance, and y=None means it). With neither
        context nor num_classes (unconditional training from a config) the token is zero and
        the cross-attentions return their output bias, a constant;
      train: turns on the ResNet dropout (rng 'dropout').
    Returns the raw network output (epsilon or v, as the weights were trained), (B, H, W,
    out_channels), in x's dtype.

    Fields are the diffusers ``config.json`` keys (`unet_kwargs_from_diffusers`), except
    ``num_channels`` (``in_channels``), ``centered`` (``not center_input_sample``; False maps
    x in [0, 1] to 2x - 1), and the
    project's ``image_size`` (None: any size; else H = W = image_size is checked),
    ``num_classes``, ``dtype`` (compute dtype; params stay float32) and ``remat``.
    ``sample_size`` is the pipelines' default latent size, recorded and not enforced (SD runs at
    other sizes too).
    ``out_channels`` None means num_channels. ``attention_head_dim`` is the number of heads per
    level (int or one per level), as in diffusers' configs. ``upcast_attention`` is accepted and
    has no effect: the softmax always runs in at least float32.

    Raises:
      ValueError (`validate`, called by ``get_model`` and at trace time): unknown block types
        (valid ones listed), per-level lists of the wrong length, widths not divisible by
        ``norm_num_groups`` or by the head count, a wrong input shape or context width.
    """

    image_size: int | None = None
    sample_size: int | None = None
    num_channels: int = 4
    out_channels: int | None = None
    centered: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = _SD_DOWN
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = _SD_UP
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8
    use_linear_projection: bool = False
    upcast_attention: bool = False
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    num_classes: int | None = None
    dtype: Any = None
    remat: bool = False

    @property
    def num_levels(self) -> int:
        return len(self.down_block_types)

    @property
    def time_embed_dim(self) -> int:
        return int(self.time_embedding_dim or 4 * self.block_out_channels[0])

    @classmethod
    def smoke_config(cls, model_config) -> None:
        """``:smoke``: two levels of widths (32, 64), one ResNet per level, 2 heads, 8 groups,
        a 32-wide context."""
        model_config.block_out_channels = (32, 64)
        model_config.down_block_types = ("CrossAttnDownBlock2D", "DownBlock2D")
        model_config.up_block_types = ("UpBlock2D", "CrossAttnUpBlock2D")
        model_config.layers_per_block = 1
        model_config.attention_head_dim = 2
        model_config.norm_num_groups = 8
        model_config.cross_attention_dim = 32
        model_config.transformer_layers_per_block = 1

    def validate(self) -> None:
        """Config-time checks; see the class docstring."""
        name, n = "unet2d_condition", self.num_levels
        for t in self.down_block_types:
            if t not in DOWN_BLOCK_TYPES:
                raise ValueError(f"{name}: down block type {t!r} unknown; valid: "
                                 f"{list(DOWN_BLOCK_TYPES)}")
        for t in self.up_block_types:
            if t not in UP_BLOCK_TYPES:
                raise ValueError(f"{name}: up block type {t!r} unknown; valid: "
                                 f"{list(UP_BLOCK_TYPES)}")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            raise ValueError(f"{name}: mid_block_type={self.mid_block_type!r} unknown; valid: "
                             f"{list(MID_BLOCK_TYPES)}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"{name}: act_fn={self.act_fn!r} unknown; valid: {list(ACT_FNS)}")
        if n == 0 or len(self.up_block_types) != n or len(self.block_out_channels) != n:
            raise ValueError(f"{name}: down_block_types ({n}), up_block_types "
                             f"({len(self.up_block_types)}) and block_out_channels "
                             f"({len(self.block_out_channels)}) must have the same non-zero length")
        heads = _per_block(self.attention_head_dim, n, "attention_head_dim")
        layers = _per_block(self.layers_per_block, n, "layers_per_block")
        tlayers = _per_block(self.transformer_layers_per_block, n, "transformer_layers_per_block")
        for i, c in enumerate(self.block_out_channels):
            if int(c) <= 0 or c % self.norm_num_groups:
                raise ValueError(f"{name}: block_out_channels[{i}]={c} must be a positive "
                                 f"multiple of norm_num_groups={self.norm_num_groups}")
            if int(heads[i]) <= 0 or c % heads[i]:
                raise ValueError(f"{name}: block_out_channels[{i}]={c} is not divisible by "
                                 f"attention_head_dim[{i}]={heads[i]} (the number of heads)")
            if int(layers[i]) <= 0 or int(tlayers[i]) <= 0:
                raise ValueError(f"{name}: layers_per_block and transformer_layers_per_block "
                                 f"must be >= 1, got {layers[i]} and {tlayers[i]} at level {i}")
        if not isinstance(self.cross_attention_dim, int) or self.cross_attention_dim < 1:
            raise ValueError(f"{name}: cross_attention_dim={self.cross_attention_dim!r} must be "
                             "one positive int (per-level context widths are not supported)")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"{name}: downsample_padding={self.downsample_padding!r}; valid: "
                             "[0, 1]")
        for field in ("conv_in_kernel", "conv_out_kernel"):
            k = getattr(self, field)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name}: {field}={k} must be a positive odd kernel size")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"{name}: num_classes={self.num_classes} must be >= 1 or None")
        check_image_size(name, self.image_size, 2 ** (n - 1))

    def _context(self, context: Array | None, y: Array | None, batch: int, dtype: Any) -> Array:
        """The cross-attention tokens: ``context`` (checked), or one token per sample: the
        learned class token ``label_embed[y]`` when ``num_classes`` is set (y None: the null
        label), else a zero token."""
        d, name = self.cross_attention_dim, "unet2d_condition"
        if context is not None:
            if y is not None:
                raise ValueError(f"{name}: give either context (text tokens) or y (class "
                                 "labels), not both")
            context = jnp.asarray(context)
            if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != d:
                raise ValueError(f"{name}: context must be ({batch}, S, {d}) (batch, tokens, "
                                 f"cross_attention_dim), got shape {context.shape}")
            return context.astype(dtype)
        if self.num_classes is None:
            if y is not None:
                raise ValueError(f"{name}: class labels y were given but the model has "
                                 "num_classes=None")
            return jnp.zeros((batch, 1, d), dtype)
        y = jnp.full((batch,), self.num_classes, jnp.int32) if y is None else jnp.asarray(y)
        if y.shape != (batch,):
            raise ValueError(f"{name}: y must have shape ({batch},), got {y.shape}")
        table = nn.Embed(self.num_classes + 1, d, name="label_embed")
        return table(y.astype(jnp.int32))[:, None, :].astype(dtype)

    @nn.compact
    def __call__(self, x: Array, t: Array, *, train: bool = False, y: Array | None = None,
                 context: Array | None = None) -> Array:
        self.validate()
        n = self.num_levels
        check_image(x, model="unet2d_condition", image_size=self.image_size,
                    num_channels=self.num_channels, divisor=2 ** (n - 1))
        b = x.shape[0]
        t = jnp.asarray(t)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
            raise ValueError(f"unet2d_condition: t must be a scalar or have shape ({b},), got "
                             f"{t.shape}")
        out_dtype, emb_dtype = x.dtype, float_dtype(x)
        dtype = self.dtype
        t = jnp.broadcast_to(t.astype(emb_dtype).reshape(-1), (b,))
        chans = tuple(int(c) for c in self.block_out_channels)
        heads = _per_block(self.attention_head_dim, n, "attention_head_dim")
        layers = _per_block(self.layers_per_block, n, "layers_per_block")
        tlayers = _per_block(self.transformer_layers_per_block, n, "transformer_layers_per_block")

        temb = sd_timestep_embedding(t, chans[0], flip_sin_to_cos=self.flip_sin_to_cos,
                                     freq_shift=self.freq_shift)
        temb = _TimestepEmbedding(self.time_embed_dim, dtype=dtype, name="time_embedding")(temb)
        h = x if self.centered else 2 * x - 1.0
        if dtype is not None:
            h = h.astype(dtype)
        context = self._context(context, y, b, h.dtype)

        common = dict(groups=self.norm_num_groups, eps=self.norm_eps, dropout=self.dropout,
                      use_linear_projection=self.use_linear_projection, dtype=dtype,
                      remat=self.remat)
        h = _conv(chans[0], self.conv_in_kernel, "conv_in", dtype)(h)
        skips = [h]
        for i, kind in enumerate(self.down_block_types):
            h, s = DownBlock2D(chans[i], int(layers[i]), heads=int(heads[i]),
                               transformer_layers=int(tlayers[i]),
                               cross_attention=kind == "CrossAttnDownBlock2D",
                               add_downsample=i < n - 1,
                               downsample_padding=self.downsample_padding,
                               name=f"down_blocks_{i}", **common)(h, temb, context, train)
            skips.extend(s)
        h = MidBlock2DCrossAttn(chans[-1], 1, heads=int(heads[-1]),
                                transformer_layers=int(tlayers[-1]),
                                output_scale_factor=float(self.mid_block_scale_factor),
                                name="mid_block", **common)(h, temb, context, train)
        for i, kind in enumerate(self.up_block_types):
            r = n - 1 - i  # the level this up block mirrors
            num = int(layers[r]) + 1
            skips, s = skips[:-num], skips[-num:]
            h = UpBlock2D(chans[r], num, heads=int(heads[r]), transformer_layers=int(tlayers[r]),
                          cross_attention=kind == "CrossAttnUpBlock2D", add_upsample=i < n - 1,
                          name=f"up_blocks_{i}", **common)(h, s, temb, context, train)
        h = nn.silu(_group_norm(self.norm_num_groups, self.norm_eps, "conv_norm_out", dtype)(h))
        h = _conv(self.out_channels or self.num_channels, self.conv_out_kernel, "conv_out",
                  dtype)(h)
        return h.astype(out_dtype)


class _TimestepEmbedding(nn.Module):
    """diffusers ``TimestepEmbedding``: linear_2(SiLU(linear_1(e)))."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, e: Array) -> Array:
        h = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(e)
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(h))


__all__ = ["SD_UNET_PRESETS", "UNet2DConditionModel", "sd_timestep_embedding", "unet_config",
           "unet_kwargs_from_diffusers", "Transformer2DModel", "BasicTransformerBlock",
           "ResnetBlock2D"]
