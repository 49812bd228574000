"""NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020) RefineNet score networks.

A ResNet encoder of pre-activation residual blocks (ELU, InstanceNorm++), where later stages use
dilated convolutions instead of further down-sampling, feeds a RefineNet decoder
(RCU -> multi-resolution fusion -> chained residual pooling; NCSNv2 paper, Sec. 3 / App. B.1):

  h = Conv(x or 2x - 1); layer1 = RB(RB(h)); for each stage: layer_k = RB(RB_down(layer_{k-1}))
  ref = Refine([layer_K], start); ref = Refine([layer_k, ref]) for k = K-1..1 (end at k = 1)
  out = Conv(act(norm(ref)))    [ / sigmas[labels] if scale_by_sigma ]

NCSNv2 is unconditional inside the network (the output is divided by sigma); NCSN v1 instead
conditions every normalisation on the noise index (conditional InstanceNorm++, one row per noise
level, i.e. num_scales rows). The PyTorch port cannot build these networks, so they follow the
JAX reference (score_sde) — 'SAME' padding for the dilated convolutions.

Stages (features, dilation) after layer1 (nf features), and RefineNet widths from the deepest:
  ncsnv2_64 : (2nf,1) (2nf,2) (2nf,4)                 refine 2nf 2nf 2nf nf
  ncsnv2_128: (2nf,1) (2nf,1) (4nf,2) (4nf,4)         refine 4nf 2nf 2nf nf nf
  ncsnv2_256: (2nf,1) (2nf,1) (2nf,1) (4nf,2) (4nf,4) refine 4nf 2nf 2nf 2nf nf nf
  ncsn      : as ncsnv2_64 with noise-conditional blocks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from . import layers, normalization
from .base import Network
from .utils import check_image, check_image_size, float_dtype, get_sigmas

Array = jnp.ndarray


class _RefineNet(Network):
    """Shared body of NCSN / NCSNv2; subclasses fix the stage layout (class variables)."""

    image_size: int | None = None
    num_channels: int = 3
    centered: bool = False
    nf: int = 128
    normalization: str = "InstanceNorm++"
    nonlinearity: str = "elu"
    interpolation: str = "bilinear"
    scale_by_sigma: bool = True
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    num_classes: int | None = None
    dtype: Any = None
    remat: bool = False

    NAME: ClassVar[str] = ""
    STAGES: ClassVar[tuple[tuple[int, int], ...]] = ()  # (feature multiplier, dilation)
    REFINE: ClassVar[tuple[int, ...]] = ()  # feature multipliers, deepest first
    CONDITIONAL: ClassVar[bool] = False

    @classmethod
    def divisor(cls) -> int:
        """2 ** (number of non-dilated down-samplings)."""
        return 2 ** sum(1 for _, d in cls.STAGES if d == 1)

    @classmethod
    def smoke_config(cls, model_config) -> None:
        """``:smoke``: nf 8."""
        model_config.nf = 8

    def validate(self) -> None:
        """Raise ValueError for settings this network cannot take."""
        if self.num_classes is not None:
            raise ValueError(f"{self.NAME}: class conditioning (num_classes) is only available "
                             "for 'ncsnpp' and 'ddpm'")
        layers.get_act(self.nonlinearity)
        normalization.get_normalization(self.normalization, conditional=self.CONDITIONAL,
                                        num_classes=self.num_scales)
        if self.interpolation not in ("bilinear", "nearest_neighbor"):
            raise ValueError(f"{self.NAME}: interpolation={self.interpolation!r} unknown; valid: "
                             "['bilinear', 'nearest_neighbor']")
        check_image_size(self.NAME, self.image_size, self.divisor())

    @nn.compact
    def __call__(self, x: Array, labels: Array, *, train: bool = False,
                 y: Array | None = None) -> Array:
        self.validate()
        if y is not None:
            raise ValueError(f"{self.NAME}: class labels y given but num_classes is None")
        check_image(x, model=self.NAME, image_size=self.image_size,
                    num_channels=self.num_channels, divisor=self.divisor())
        nf, dtype = self.nf, self.dtype
        act = layers.get_act(self.nonlinearity)
        norm = normalization.get_normalization(self.normalization, conditional=self.CONDITIONAL,
                                               num_classes=self.num_scales, dtype=dtype)
        out_dtype, f_dtype = x.dtype, float_dtype(x)
        labels = jnp.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"{self.NAME}: labels must have shape ({x.shape[0]},), got "
                             f"{labels.shape}")
        idx = labels.astype(jnp.int32)

        if self.CONDITIONAL:
            res_cls, ref_cls = layers.ConditionalResidualBlock, layers.CondRefineBlock
            extra: tuple = (idx,)
            ref_kw = {"normalizer": norm}
        else:
            res_cls, ref_cls = layers.ResidualBlock, layers.RefineBlock
            extra = ()
            ref_kw = {}
        if self.remat:
            res_cls, ref_cls = _remat(res_cls), _remat(ref_cls)

        def res_block(features, resample=None, dilation=1):
            return res_cls(features, normalization=norm, resample=resample, act=act,
                           dilation=dilation, dtype=dtype)

        h = x if self.centered else 2 * x - 1.0
        if dtype is not None:
            h = h.astype(dtype)
        h = layers.ncsn_conv3x3(h, nf, stride=1, bias=True, dtype=dtype)
        h = res_block(nf)(h, *extra)
        feats = [res_block(nf)(h, *extra)]
        for mult, dilation in self.STAGES:
            h = res_block(mult * nf, "down", dilation)(feats[-1], *extra)
            feats.append(res_block(mult * nf, None, dilation)(h, *extra))

        ref = None
        for i, mult in enumerate(self.REFINE):
            layer = feats[-1 - i]
            block = ref_cls(tuple(layer.shape[1:3]), mult * nf, act=act,
                            interpolation=self.interpolation, start=i == 0,
                            end=i == len(self.REFINE) - 1, dtype=dtype, **ref_kw)
            ref = block([layer] if i == 0 else [layer, ref], *extra)

        h = act(norm()(ref, *extra))
        h = layers.ncsn_conv3x3(h, x.shape[-1], dtype=dtype)
        if self.scale_by_sigma:
            sigmas = jnp.asarray(get_sigmas(self.sigma_min, self.sigma_max, self.num_scales),
                                 f_dtype)
            h = h.astype(f_dtype) / sigmas[idx].reshape((-1, 1, 1, 1))
        return h.astype(out_dtype)


def _remat(cls: type[nn.Module]) -> type[nn.Module]:
    rcls = nn.remat(cls)
    rcls.__name__ = cls.__name__
    return rcls


class NCSNv2(_RefineNet):
    """NCSNv2 for images up to 64 px (CIFAR-10, CelebA 64): one down-sampling, then dilation 2
    and 4. Labels are noise indices (int); with scale_by_sigma the output is divided by
    sigmas[labels]."""

    NAME: ClassVar[str] = "ncsnv2_64"
    STAGES: ClassVar[tuple[tuple[int, int], ...]] = ((2, 1), (2, 2), (2, 4))
    REFINE: ClassVar[tuple[int, ...]] = (2, 2, 2, 1)


class NCSNv2_128(_RefineNet):  # noqa: N801 - reference name
    """NCSNv2 for 96-128 px images (LSUN 128): two down-samplings, then dilation 2 and 4."""

    NAME: ClassVar[str] = "ncsnv2_128"
    STAGES: ClassVar[tuple[tuple[int, int], ...]] = ((2, 1), (2, 1), (4, 2), (4, 4))
    REFINE: ClassVar[tuple[int, ...]] = (4, 2, 2, 1, 1)


class NCSNv2_256(_RefineNet):  # noqa: N801 - reference name
    """NCSNv2 for 256 px images: three down-samplings, then dilation 2 and 4."""

    NAME: ClassVar[str] = "ncsnv2_256"
    STAGES: ClassVar[tuple[tuple[int, int], ...]] = ((2, 1), (2, 1), (2, 1), (4, 2), (4, 4))
    REFINE: ClassVar[tuple[int, ...]] = (4, 2, 2, 2, 1, 1)


class NCSN(_RefineNet):
    """NCSN v1: the ncsnv2_64 layout with noise-conditional InstanceNorm++ everywhere (an
    embedding row per noise level, num_scales rows); labels are the noise indices. The
    reference configs use scale_by_sigma=False for it."""

    NAME: ClassVar[str] = "ncsn"
    STAGES: ClassVar[tuple[tuple[int, int], ...]] = ((2, 1), (2, 2), (2, 4))
    REFINE: ClassVar[tuple[int, ...]] = (2, 2, 2, 1)
    CONDITIONAL: ClassVar[bool] = True
