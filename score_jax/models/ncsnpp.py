"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H).

One class covers both, as in the reference: DDPM++ is NCSN++ with positional embeddings, no FIR,
no input pyramid and no sigma scaling. The network is a U-Net over ``len(ch_mult)`` resolutions:

  temb  = Dense_1(act(Dense_0(emb(labels))))      emb: Gaussian Fourier features of log sigma
                                                  ('fourier') or sinusoidal of the label
                                                  ('positional')
  x     <- 2x - 1 unless the data are centred
  down  : num_res_blocks res-blocks per level (+ attention at ``attn_resolutions``), then a
          down-sampling block; the input pyramid ('input_skip' / 'residual') adds a down-sampled
          copy of x at each level
  middle: res-block, attention, res-block
  up    : num_res_blocks + 1 res-blocks per level on [h, skip] (+ attention), an output pyramid
          ('output_skip' / 'residual'), then up-sampling
  out   = Conv(act(GroupNorm(h)))   [ / sigma  if scale_by_sigma ]

With ``skip_rescale`` every residual sum is divided by sqrt(2). Module names match score_sde, so
its checkpoints (and, through `score_jax.convert`, the PyTorch port's) load unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from . import layers, layerspp
from .base import Network
from .utils import (
    add_label_embedding,
    check_choice,
    check_image,
    check_image_size,
    float_dtype,
    get_sigmas,
    listed,
    remat_class,
)

Array = jnp.ndarray

PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("fourier", "positional")
RESBLOCKS = ("ddpm", "biggan")


class NCSNpp(Network):
    """NCSN++ / DDPM++ score network.

    Call as ``model.apply(variables, x, labels, train=False, y=None)`` with x (B, H, W, C) and
    labels (B,): sigma(t) for 'fourier' embeddings, a time / noise index (t * 999 or an integer
    step) for 'positional'. With ``scale_by_sigma`` the output is divided by sigma: labels
    themselves ('fourier') or ``sigmas[int(labels)]`` ('positional', sigmas from sigma_max down
    to sigma_min). ``y`` (B,) int are class labels when ``num_classes`` is set.

    Attributes are the reference's ``config.model`` fields plus the data fields ``image_size``
    (None: any size the down-sampling allows), ``num_channels`` and ``centered``, and
    ``num_classes`` (class conditioning, null label = num_classes), ``dtype`` (compute dtype,
    None = that of inputs / params) and ``remat`` (rematerialise residual blocks).
    """

    image_size: int | None = None
    num_channels: int = 3
    centered: bool = False
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    init_scale: float = 0.0
    fourier_scale: float = 16.0
    embedding_type: str = "fourier"
    scale_by_sigma: bool = True
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    nonlinearity: str = "swish"
    num_classes: int | None = None
    dtype: Any = None
    remat: bool = False

    @classmethod
    def smoke_config(cls, model_config) -> None:
        """``:smoke``: nf 16, two levels, one res block, attention at 8 x 8."""
        model_config.nf = 16
        model_config.ch_mult = (1, 2)
        model_config.num_res_blocks = 1
        model_config.attn_resolutions = (8,)

    def validate(self) -> None:
        """Raise ValueError for unknown option names or an image size the U-Net cannot take."""
        for field, valid in (("progressive", PROGRESSIVE),
                             ("progressive_input", PROGRESSIVE_INPUT),
                             ("progressive_combine", COMBINE), ("embedding_type", EMBEDDINGS),
                             ("resblock_type", RESBLOCKS)):
            check_choice("ncsnpp", field, getattr(self, field), valid)
        layers.get_act(self.nonlinearity)
        check_image_size("ncsnpp", self.image_size, 2 ** (len(self.ch_mult) - 1))

    @nn.compact
    def __call__(self, x: Array, labels: Array, *, train: bool = False,
                 y: Array | None = None) -> Array:
        self.validate()
        num_resolutions = len(self.ch_mult)
        check_image(x, model="ncsnpp", image_size=self.image_size,
                    num_channels=self.num_channels, divisor=2 ** (num_resolutions - 1))
        act = layers.get_act(self.nonlinearity)
        nf, dtype = self.nf, self.dtype
        resblock_type = self.resblock_type.lower()
        progressive = self.progressive.lower()
        progressive_input = self.progressive_input.lower()
        combine_method = self.progressive_combine.lower()
        embedding_type = self.embedding_type.lower()
        fir_kernel = tuple(self.fir_kernel)
        attn_res = tuple(self.attn_resolutions)
        out_dtype = x.dtype
        emb_dtype = float_dtype(x)
        labels = jnp.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"ncsnpp: labels must have shape ({x.shape[0]},), got "
                             f"{labels.shape}")

        # Noise-level / time embedding.
        if embedding_type == "fourier":
            used_sigmas = labels.astype(emb_dtype)
            temb = listed(layerspp.GaussianFourierProjection(
                embedding_size=nf, scale=self.fourier_scale))(jnp.log(used_sigmas))
        else:
            temb = layers.get_timestep_embedding(labels, nf, dtype=emb_dtype)
            used_sigmas = None
            if self.scale_by_sigma:
                sigmas = jnp.asarray(get_sigmas(self.sigma_min, self.sigma_max, self.num_scales),
                                     emb_dtype)
                used_sigmas = sigmas[labels.astype(jnp.int32)]
        if self.conditional:
            temb = listed(nn.Dense(nf * 4, kernel_init=layers.default_init(), dtype=dtype))(temb)
            temb = listed(nn.Dense(nf * 4, kernel_init=layers.default_init(),
                                   dtype=dtype))(act(temb))
        else:
            temb = None
        temb = add_label_embedding(temb, y, x.shape[0], self.num_classes, nf * 4,
                                   temb.dtype if temb is not None else emb_dtype)

        # Every module the reference keeps in ``all_modules`` is created through `listed`, in
        # the reference's order; see `score_jax.models.utils.record_module_order`.
        def attn_block():
            return listed(layerspp.AttnBlockpp(skip_rescale=self.skip_rescale,
                                               init_scale=self.init_scale, dtype=dtype))

        if resblock_type == "ddpm":
            block_cls = layerspp.ResnetBlockDDPMpp
            block_kw = {}
        else:
            block_cls = layerspp.ResnetBlockBigGANpp
            block_kw = {"fir": self.fir, "fir_kernel": fir_kernel}
        if self.remat:
            block_cls = remat_class(block_cls)

        def resnet_block(**kw):
            return listed(block_cls(act=act, dropout=self.dropout, init_scale=self.init_scale,
                                    skip_rescale=self.skip_rescale, dtype=dtype, **block_kw,
                                    **kw))

        def pyramid_downsample(**kw):
            # 'residual': a conv re-sampler, one of all_modules; 'input_skip': parameter-free,
            # held outside all_modules by the reference (self.pyramid_downsample).
            m = layerspp.Downsample(fir=self.fir, fir_kernel=fir_kernel,
                                    with_conv=progressive_input == "residual", dtype=dtype, **kw)
            return listed(m) if progressive_input == "residual" else m

        def pyramid_upsample(**kw):
            m = layerspp.Upsample(fir=self.fir, fir_kernel=fir_kernel,
                                  with_conv=progressive == "residual", dtype=dtype, **kw)
            return listed(m) if progressive == "residual" else m

        def norm(channels):
            return listed(layerspp.group_norm(channels, dtype))

        def conv3x3(out_ch, **kw):
            return listed(layers.ddpm_conv(out_ch, 3, dtype=dtype, **kw))

        if not self.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
        if dtype is not None:
            x = x.astype(dtype)
        input_pyramid = x if progressive_input != "none" else None

        # Down-sampling path.
        hs = [conv3x3(nf)(x)]
        for i_level in range(num_resolutions):
            for _ in range(self.num_res_blocks):
                h = resnet_block(out_ch=nf * self.ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_res:
                    h = attn_block()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                if resblock_type == "ddpm":
                    h = listed(layerspp.Downsample(with_conv=self.resamp_with_conv,
                                                   fir=self.fir, fir_kernel=fir_kernel,
                                                   dtype=dtype))(hs[-1])
                else:
                    h = resnet_block(down=True)(hs[-1], temb, train)
                if progressive_input == "input_skip":
                    input_pyramid = pyramid_downsample()(input_pyramid)
                    h = listed(layerspp.Combine(method=combine_method, dtype=dtype))(
                        input_pyramid, h)
                elif progressive_input == "residual":
                    input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = input_pyramid + h
                    if self.skip_rescale:
                        input_pyramid = input_pyramid / math.sqrt(2.0)
                    h = input_pyramid
                hs.append(h)

        h = hs[-1]
        h = resnet_block()(h, temb, train)
        h = attn_block()(h)
        h = resnet_block()(h, temb, train)

        # Up-sampling path.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = resnet_block(out_ch=nf * self.ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_res:
                h = attn_block()(h)
            if progressive != "none":
                if i_level == num_resolutions - 1:
                    if progressive == "output_skip":
                        pyramid = act(norm(h.shape[-1])(h))
                        pyramid = conv3x3(x.shape[-1], init_scale=self.init_scale)(pyramid)
                    else:
                        pyramid = act(norm(h.shape[-1])(h))
                        pyramid = conv3x3(h.shape[-1])(pyramid)
                elif progressive == "output_skip":
                    pyramid = pyramid_upsample()(pyramid)
                    pyramid_h = act(norm(h.shape[-1])(h))
                    pyramid = pyramid + conv3x3(x.shape[-1], init_scale=self.init_scale)(
                        pyramid_h)
                else:
                    pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
                    pyramid = pyramid + h
                    if self.skip_rescale:
                        pyramid = pyramid / math.sqrt(2.0)
                    h = pyramid
            if i_level != 0:
                if resblock_type == "ddpm":
                    h = listed(layerspp.Upsample(with_conv=self.resamp_with_conv,
                                                 fir=self.fir, fir_kernel=fir_kernel,
                                                 dtype=dtype))(h)
                else:
                    h = resnet_block(up=True)(h, temb, train)
        assert not hs

        if progressive == "output_skip":
            h = pyramid
        else:
            h = act(norm(h.shape[-1])(h))
            h = conv3x3(x.shape[-1], init_scale=self.init_scale)(h)

        if self.scale_by_sigma:
            h = h.astype(emb_dtype) / used_sigmas.reshape((-1, 1, 1, 1))
        return h.astype(out_dtype)
