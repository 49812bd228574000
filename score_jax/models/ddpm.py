"""The DDPM U-Net (Ho et al. 2020; diffusion_tf ``models/unet.py``), as in score_sde's ``ddpm``.

  temb = Dense_1(act(Dense_0(sinusoidal(labels, nf))))     (always positional, whatever
                                                           config.model.embedding_type says)
  h    = Conv(x or 2x - 1); per level num_res_blocks ResnetBlockDDPM (+ AttnBlock at
         attn_resolutions), Downsample between levels; middle: res, attn, res; up path with
         num_res_blocks + 1 blocks on [h, skip] and Upsample; out = Conv(act(GroupNorm32(h))).
  [out /= sigmas[labels] if scale_by_sigma]
GroupNorm has 32 groups (eps 1e-6), so ``nf`` must be a multiple of 32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from . import layers
from .base import Network
from .utils import (
    add_label_embedding,
    check_image,
    check_image_size,
    float_dtype,
    get_sigmas,
    listed,
    remat_class,
)

Array = jnp.ndarray


class DDPM(Network):
    """DDPM score / noise-prediction network.

    Call as ``model.apply(variables, x, labels, train=False, y=None)``; x (B, H, W, C), labels
    (B,) time steps (t * 999 or the integer step). Attributes are the reference's config.model
    fields plus image_size / num_channels / centered, num_classes, dtype and remat (see
    `NCSNpp`).
    """

    image_size: int | None = None
    num_channels: int = 3
    centered: bool = True
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    scale_by_sigma: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    nonlinearity: str = "swish"
    num_classes: int | None = None
    dtype: Any = None
    remat: bool = False

    @classmethod
    def smoke_config(cls, model_config) -> None:
        """``:smoke``: nf 32 (GroupNorm's 32 groups), two levels, one res block, attention at
        8 x 8."""
        model_config.nf = 32
        model_config.ch_mult = (1, 2)
        model_config.num_res_blocks = 1
        model_config.attn_resolutions = (8,)

    def validate(self) -> None:
        """Raise ValueError for settings the DDPM U-Net cannot take."""
        layers.get_act(self.nonlinearity)
        for i, m in enumerate(self.ch_mult):
            if (self.nf * m) % 32:
                raise ValueError(f"ddpm: nf * ch_mult[{i}] = {self.nf * m} channels is not a "
                                 "multiple of 32, which GroupNorm(32) needs")
        check_image_size("ddpm", self.image_size, 2 ** (len(self.ch_mult) - 1))

    @nn.compact
    def __call__(self, x: Array, labels: Array, *, train: bool = False,
                 y: Array | None = None) -> Array:
        self.validate()
        num_resolutions = len(self.ch_mult)
        check_image(x, model="ddpm", image_size=self.image_size, num_channels=self.num_channels,
                    divisor=2 ** (num_resolutions - 1))
        act = layers.get_act(self.nonlinearity)
        nf, dtype = self.nf, self.dtype
        attn_res = tuple(self.attn_resolutions)
        out_dtype, emb_dtype = x.dtype, float_dtype(x)
        labels = jnp.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"ddpm: labels must have shape ({x.shape[0]},), got {labels.shape}")

        if self.conditional:
            temb = layers.get_timestep_embedding(labels, nf, dtype=emb_dtype)
            temb = listed(nn.Dense(nf * 4, kernel_init=layers.default_init(), dtype=dtype))(temb)
            temb = listed(nn.Dense(nf * 4, kernel_init=layers.default_init(),
                                   dtype=dtype))(act(temb))
        else:
            temb = None
        temb = add_label_embedding(temb, y, x.shape[0], self.num_classes, nf * 4,
                                   temb.dtype if temb is not None else emb_dtype)

        block_cls = remat_class(layers.ResnetBlockDDPM) if self.remat else layers.ResnetBlockDDPM

        # Every module of the reference's ``all_modules`` list is created through `listed`, in
        # its order (see `score_jax.models.utils.record_module_order`).
        def resnet_block(**kw):
            return listed(block_cls(act=act, dropout=self.dropout, dtype=dtype, **kw))

        def attn_block():
            return listed(layers.AttnBlock(dtype=dtype))

        h = x if self.centered else 2 * x - 1.0
        if dtype is not None:
            h = h.astype(dtype)

        hs = [listed(layers.ddpm_conv(nf, 3, dtype=dtype))(h)]
        for i_level in range(num_resolutions):
            for _ in range(self.num_res_blocks):
                h = resnet_block(out_ch=nf * self.ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in attn_res:
                    h = attn_block()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                hs.append(listed(layers.Downsample(with_conv=self.resamp_with_conv,
                                                   dtype=dtype))(hs[-1]))

        h = hs[-1]
        h = resnet_block()(h, temb, train)
        h = attn_block()(h)
        h = resnet_block()(h, temb, train)

        for i_level in reversed(range(num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = resnet_block(out_ch=nf * self.ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in attn_res:
                h = attn_block()(h)
            if i_level != 0:
                h = listed(layers.Upsample(with_conv=self.resamp_with_conv, dtype=dtype))(h)
        assert not hs

        h = act(listed(nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=dtype))(h))
        h = listed(layers.ddpm_conv(x.shape[-1], 3, init_scale=0.0, dtype=dtype))(h)

        if self.scale_by_sigma:
            sigmas = jnp.asarray(get_sigmas(self.sigma_min, self.sigma_max, self.num_scales),
                                 emb_dtype)
            h = h.astype(emb_dtype) / sigmas[labels.astype(jnp.int32)].reshape((-1, 1, 1, 1))
        return h.astype(out_dtype)
