"""Common layers of the score networks (DDPM U-Net and NCSN / NCSNv2 RefineNet).

Parameter and module names follow score_sde (JAX) so that its checkpoints load unchanged, and the
PyTorch port's ``state_dict`` keys map one to one (see `score_jax.convert`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .up_or_down_sampling import naive_downsample_2d, naive_upsample_2d
from .utils import dot_product_attention

Array = jnp.ndarray

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "swish": nn.swish,
}


def get_act(name: str) -> Callable[[Array], Array]:
    """Activation by name: elu, relu, lrelu (slope 0.2), swish (x * sigmoid(x))."""
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown nonlinearity {name!r}; valid: {sorted(ACTIVATIONS)}") from None


def default_init(scale: float = 1.0) -> Callable:
    """DDPM initialiser: variance scaling, fan_avg, uniform; ``scale = 0`` becomes 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def _ncsn_init(init_scale: float, shape: tuple[int, ...]):
    """PyTorch's default conv init (uniform, variance 1/(3 fan_in)), as NCSN/NCSNv2 use."""
    init_scale = 1e-10 if init_scale == 0 else init_scale
    kernel_init = nn.initializers.variance_scaling(init_scale / 3, "fan_in", "uniform")

    def bias_init(key, b_shape, dtype=jnp.float32):
        return kernel_init(key, shape, dtype)[0, 0, 0, :]

    return kernel_init, bias_init


def ddpm_conv(out_planes: int, kernel: int = 3, stride: int = 1, bias: bool = True,
              dilation: int = 1, init_scale: float = 1.0, dtype: Any = None) -> nn.Conv:
    """The (kernel x kernel) 'SAME' ``nn.Conv`` module with the DDPM initialisation (named
    ``Conv_i`` in the calling compact method)."""
    return nn.Conv(out_planes, (kernel, kernel), strides=(stride, stride), padding="SAME",
                   use_bias=bias, kernel_dilation=(dilation, dilation),
                   kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                   dtype=dtype)


def ddpm_conv1x1(x: Array, out_planes: int, stride: int = 1, bias: bool = True,
                 dilation: int = 1, init_scale: float = 1.0, dtype: Any = None) -> Array:
    """1x1 convolution with the DDPM initialisation (creates ``Conv_i`` in the caller)."""
    return ddpm_conv(out_planes, 1, stride, bias, dilation, init_scale, dtype)(x)


def ddpm_conv3x3(x: Array, out_planes: int, stride: int = 1, bias: bool = True,
                 dilation: int = 1, init_scale: float = 1.0, dtype: Any = None) -> Array:
    """3x3 'SAME' convolution with the DDPM initialisation (creates ``Conv_i`` in the caller).

    With stride 2 on an even size, XLA's SAME padding is (0, 1): the same as the PyTorch
    reference's ``F.pad(x, (0, 1, 0, 1))`` followed by an unpadded stride-2 conv.
    """
    return ddpm_conv(out_planes, 3, stride, bias, dilation, init_scale, dtype)(x)


def ncsn_conv1x1(x: Array, out_planes: int, stride: int = 1, bias: bool = True,
                 dilation: int = 1, init_scale: float = 1.0, dtype: Any = None) -> Array:
    """1x1 convolution with PyTorch's default initialisation (NCSN / NCSNv2)."""
    kinit, binit = _ncsn_init(init_scale, (1, 1, x.shape[-1], out_planes))
    return nn.Conv(out_planes, (1, 1), strides=(stride, stride), padding="SAME", use_bias=bias,
                   kernel_dilation=(dilation, dilation), kernel_init=kinit, bias_init=binit,
                   dtype=dtype)(x)


def ncsn_conv3x3(x: Array, out_planes: int, stride: int = 1, bias: bool = True,
                 dilation: int = 1, init_scale: float = 1.0, dtype: Any = None) -> Array:
    """3x3 'SAME' (dilated) convolution with PyTorch's default initialisation (NCSN / NCSNv2).

    'SAME' padding keeps the size for every dilation, which the residual additions of the
    dilated NCSNv2 stages need (the PyTorch port pads by 1 and breaks there).
    """
    kinit, binit = _ncsn_init(init_scale, (3, 3, x.shape[-1], out_planes))
    return nn.Conv(out_planes, (3, 3), strides=(stride, stride), padding="SAME", use_bias=bias,
                   kernel_dilation=(dilation, dilation), kernel_init=kinit, bias_init=binit,
                   dtype=dtype)(x)


def get_timestep_embedding(timesteps: Array, embedding_dim: int, max_positions: int = 10000,
                           dtype: Any = jnp.float32) -> Array:
    """Sinusoidal embedding of (B,) timesteps (DDPM / Transformer):

        e_j = exp(-j ln(max_positions) / (d/2 - 1)),  j = 0..d/2-1
        emb = [sin(t e), cos(t e)]  (zero-padded to d if d is odd).
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D (B,), got shape {timesteps.shape}")
    half_dim = embedding_dim // 2
    scale = math.log(max_positions) / (half_dim - 1)
    freqs = jnp.exp(jnp.arange(half_dim, dtype=dtype) * -scale)
    emb = timesteps.astype(dtype)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    return emb


class NIN(nn.Module):
    """Network-in-network (a 1x1 conv on the last axis): y = x W + b, W (C_in, num_units)."""

    num_units: int
    init_scale: float = 0.1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units),
                       self.param_dtype)
        b = self.param("b", nn.initializers.zeros, (self.num_units,), self.param_dtype)
        x, w, b = nn.dtypes.promote_dtype(x, w, b, dtype=self.dtype)
        return jnp.tensordot(x, w, axes=1) + b


def attention(h: Array, q_nin: NIN, k_nin: NIN, v_nin: NIN) -> Array:
    """Spatial self-attention over all H*W positions (one head, width C):

        w = softmax_{(H',W')}(q . k / sqrt(C)),   out = sum_{H',W'} w v
    (softmax in float32 at least; `utils.dot_product_attention`: the fused cuDNN kernel on GPU
    for bf16).
    """
    b, hh, ww, c = h.shape
    q, k, v = (f(h).reshape(b, hh * ww, 1, c) for f in (q_nin, k_nin, v_nin))
    return dot_product_attention(q, k, v, int(c) ** -0.5).reshape(b, hh, ww, c)


class AttnBlock(nn.Module):
    """DDPM self-attention block: x + NIN_3(attention(GroupNorm(x))), GroupNorm with 32 groups."""

    num_groups: int = 32
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        h = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-6, dtype=self.dtype)(x)
        q, k, v = NIN(c, dtype=self.dtype), NIN(c, dtype=self.dtype), NIN(c, dtype=self.dtype)
        h = attention(h, q, k, v)
        return x + NIN(c, init_scale=0.0, dtype=self.dtype)(h)


class Upsample(nn.Module):
    """DDPM up-sampling: nearest-neighbour x2, then an optional 3x3 conv."""

    with_conv: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = naive_upsample_2d(x, 2)
        if self.with_conv:
            h = ddpm_conv3x3(h, x.shape[-1], dtype=self.dtype)
        return h


class Downsample(nn.Module):
    """DDPM down-sampling: 3x3 conv with stride 2 (pad (0, 1)), or 2x2 average pooling."""

    with_conv: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.with_conv:
            return ddpm_conv3x3(x, x.shape[-1], stride=2, dtype=self.dtype)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block:

        h = Conv_0(act(GN_0(x))) + Dense_0(act(temb));  h = Conv_1(dropout(act(GN_1(h))))
        return shortcut(x) + h      (shortcut = NIN_0 / Conv_2 when channels change)
    """

    act: Callable[[Array], Array]
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.5
    num_groups: int = 32
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else c
        gn = functools.partial(nn.GroupNorm, num_groups=self.num_groups, epsilon=1e-6,
                               dtype=self.dtype)
        h = self.act(gn()(x))
        h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype)(
                self.act(temb))[:, None, None, :]
        h = self.act(gn()(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(h, out_ch, init_scale=0.0, dtype=self.dtype)
        if c != out_ch:
            if self.conv_shortcut:
                x = ddpm_conv3x3(x, out_ch, dtype=self.dtype)
            else:
                x = NIN(out_ch, dtype=self.dtype)(x)
        return x + h


# --------------------------------------------------------------------------------------------
# NCSN / NCSNv2 RefineNet blocks (Song & Ermon 2019, 2020; ermongroup/ncsn, ermongroup/ncsnv2)
# --------------------------------------------------------------------------------------------


class CRPBlock(nn.Module):
    """Chained residual pooling: x = act(x); repeat n: path = conv(maxpool5(path)); x += path."""

    features: int
    n_stages: int
    act: Callable = nn.relu
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            path = nn.max_pool(path, (5, 5), strides=(1, 1), padding="SAME")
            path = ncsn_conv3x3(path, self.features, bias=False, dtype=self.dtype)
            x = path + x
        return x


class CondCRPBlock(nn.Module):
    """Noise-conditional CRP block (NCSN v1): norm(path, y) then 5x5 average pooling."""

    features: int
    n_stages: int
    normalizer: Callable[..., nn.Module]
    act: Callable = nn.relu
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            path = self.normalizer()(path, y)
            path = nn.avg_pool(path, (5, 5), strides=(1, 1), padding="SAME")
            path = ncsn_conv3x3(path, self.features, bias=False, dtype=self.dtype)
            x = path + x
        return x


class RCUBlock(nn.Module):
    """Residual conv unit: n_blocks x (n_stages x (act, conv3x3 no bias)) with identity skips."""

    features: int
    n_blocks: int
    n_stages: int
    act: Callable = nn.relu
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                x = ncsn_conv3x3(self.act(x), self.features, bias=False, dtype=self.dtype)
            x = x + residual
        return x


class CondRCUBlock(nn.Module):
    """Noise-conditional RCU block (NCSN v1): norm(x, y) before every activation."""

    features: int
    n_blocks: int
    n_stages: int
    normalizer: Callable[..., nn.Module]
    act: Callable = nn.relu
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                x = self.act(self.normalizer()(x, y))
                x = ncsn_conv3x3(x, self.features, bias=False, dtype=self.dtype)
            x = x + residual
        return x


def _resize(h: Array, shape: Sequence[int], interpolation: str) -> Array:
    method = {"bilinear": "bilinear", "nearest_neighbor": "nearest"}.get(interpolation)
    if method is None:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: "
                         "['bilinear', 'nearest_neighbor']")
    return jax.image.resize(h, (h.shape[0], *shape, h.shape[-1]), method)


class MSFBlock(nn.Module):
    """Multi-resolution fusion: sum_i resize(conv3x3(x_i), shape)."""

    shape: tuple[int, int]
    features: int
    interpolation: str = "bilinear"
    dtype: Any = None

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        sums = 0.0
        for x in xs:
            h = ncsn_conv3x3(x, self.features, bias=True, dtype=self.dtype)
            sums = sums + _resize(h, self.shape, self.interpolation)
        return sums


class CondMSFBlock(nn.Module):
    """Noise-conditional multi-resolution fusion (NCSN v1)."""

    shape: tuple[int, int]
    features: int
    normalizer: Callable[..., nn.Module]
    interpolation: str = "bilinear"
    dtype: Any = None

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        sums = 0.0
        for x in xs:
            h = self.normalizer()(x, y)
            h = ncsn_conv3x3(h, self.features, bias=True, dtype=self.dtype)
            sums = sums + _resize(h, self.shape, self.interpolation)
        return sums


class RefineBlock(nn.Module):
    """RefineNet block: RCU(2x2) per input -> MSF fusion (unless start) -> CRP(2) -> RCU output
    (3 blocks at the end, else 1)."""

    output_shape: tuple[int, int]
    features: int
    act: Callable = nn.relu
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        hs = [RCUBlock(x.shape[-1], 2, 2, self.act, dtype=self.dtype)(x) for x in xs]
        if not self.start:
            h = MSFBlock(tuple(self.output_shape), self.features, self.interpolation,
                         dtype=self.dtype)(hs)
        else:
            h = hs[0]
        h = CRPBlock(self.features, 2, self.act, dtype=self.dtype)(h)
        return RCUBlock(self.features, 3 if self.end else 1, 2, self.act, dtype=self.dtype)(h)


class CondRefineBlock(nn.Module):
    """Noise-conditional RefineNet block (NCSN v1)."""

    output_shape: tuple[int, int]
    features: int
    normalizer: Callable[..., nn.Module]
    act: Callable = nn.relu
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        hs = [CondRCUBlock(x.shape[-1], 2, 2, self.normalizer, self.act, dtype=self.dtype)(x, y)
              for x in xs]
        if not self.start:
            h = CondMSFBlock(tuple(self.output_shape), self.features, self.normalizer,
                             self.interpolation, dtype=self.dtype)(hs, y)
        else:
            h = hs[0]
        h = CondCRPBlock(self.features, 2, self.normalizer, self.act, dtype=self.dtype)(h, y)
        return CondRCUBlock(self.features, 3 if self.end else 1, 2, self.normalizer, self.act,
                            dtype=self.dtype)(h, y)


class ConvMeanPool(nn.Module):
    """kxk conv followed by 2x2 mean pooling."""

    output_dim: int
    kernel_size: int = 3
    biases: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.Conv(self.output_dim, (self.kernel_size, self.kernel_size), padding="SAME",
                    use_bias=self.biases, dtype=self.dtype)(x)
        return naive_downsample_2d(h, 2)


class ResidualBlock(nn.Module):
    """NCSNv2 residual block (pre-activation, norm -> act -> conv twice, ELU by default).

    ``resample='down'``: without dilation the second conv is a `ConvMeanPool` (halves H, W) and
    the shortcut a 1x1 `ConvMeanPool`; with dilation > 1 both are dilated 3x3 convs at full size.
    """

    output_dim: int
    normalization: Callable[..., nn.Module]
    resample: str | None = None
    act: Callable = nn.elu
    dilation: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(ncsn_conv3x3, dtype=self.dtype)
        h = self.act(self.normalization()(x))
        if self.resample == "down":
            h = conv(h, h.shape[-1], dilation=self.dilation)
            h = self.act(self.normalization()(h))
            if self.dilation > 1:
                h = conv(h, self.output_dim, dilation=self.dilation)
                shortcut = conv(x, self.output_dim, dilation=self.dilation)
            else:
                h = ConvMeanPool(self.output_dim, dtype=self.dtype)(h)
                shortcut = ConvMeanPool(self.output_dim, kernel_size=1, dtype=self.dtype)(x)
        elif self.resample is None:
            if self.dilation > 1:
                shortcut = (x if self.output_dim == x.shape[-1]
                            else conv(x, self.output_dim, dilation=self.dilation))
                h = conv(h, self.output_dim, dilation=self.dilation)
                h = self.act(self.normalization()(h))
                h = conv(h, self.output_dim, dilation=self.dilation)
            else:
                shortcut = (x if self.output_dim == x.shape[-1]
                            else ncsn_conv1x1(x, self.output_dim, dtype=self.dtype))
                h = conv(h, self.output_dim)
                h = self.act(self.normalization()(h))
                h = conv(h, self.output_dim)
        else:
            raise ValueError(f"resample must be None or 'down', got {self.resample!r}")
        return h + shortcut


class ConditionalResidualBlock(nn.Module):
    """NCSN v1 residual block: as `ResidualBlock` with noise-conditional norms ``norm(h, y)``."""

    output_dim: int
    normalization: Callable[..., nn.Module]
    resample: str | None = None
    act: Callable = nn.elu
    dilation: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        conv = functools.partial(ncsn_conv3x3, dtype=self.dtype)
        h = self.act(self.normalization()(x, y))
        if self.resample == "down":
            h = conv(h, h.shape[-1], dilation=self.dilation)
            h = self.act(self.normalization()(h, y))
            if self.dilation > 1:
                h = conv(h, self.output_dim, dilation=self.dilation)
                shortcut = conv(x, self.output_dim, dilation=self.dilation)
            else:
                h = ConvMeanPool(self.output_dim, dtype=self.dtype)(h)
                shortcut = ConvMeanPool(self.output_dim, kernel_size=1, dtype=self.dtype)(x)
        elif self.resample is None:
            if self.dilation > 1:
                shortcut = (x if self.output_dim == x.shape[-1]
                            else conv(x, self.output_dim, dilation=self.dilation))
                h = conv(h, self.output_dim, dilation=self.dilation)
                h = self.act(self.normalization()(h, y))
                h = conv(h, self.output_dim, dilation=self.dilation)
            else:
                shortcut = (x if self.output_dim == x.shape[-1]
                            else ncsn_conv1x1(x, self.output_dim, dtype=self.dtype))
                h = conv(h, self.output_dim)
                h = self.act(self.normalization()(h, y))
                h = conv(h, self.output_dim)
        else:
            raise ValueError(f"resample must be None or 'down', got {self.resample!r}")
        return h + shortcut
