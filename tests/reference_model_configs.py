"""config.model / config.data of the full-size reference configurations (score_sde), written out
here so that model tests do not depend on configs/ (values read from the reference config files).
"""

from __future__ import annotations

import copy

# configs/default_cifar10_configs.py: model defaults; data: 32 px, 3 channels, not centred.
_CIFAR_DEFAULT = dict(sigma_min=0.01, sigma_max=50, num_scales=1000, beta_min=0.1, beta_max=20.0,
                      dropout=0.1, embedding_type="fourier")
# configs/default_lsun_configs.py (also used by the 256 px CelebA-HQ / FFHQ configs).
_LSUN_DEFAULT = dict(sigma_max=378, sigma_min=0.01, num_scales=2000, beta_min=0.1, beta_max=20.0,
                     dropout=0.0, embedding_type="fourier")

_NCSNPP = dict(name="ncsnpp", normalization="GroupNorm", nonlinearity="swish", nf=128,
               ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
               resamp_with_conv=True, conditional=True, fir=True, fir_kernel=[1, 3, 3, 1],
               skip_rescale=True, resblock_type="biggan", progressive="none",
               progressive_input="residual", progressive_combine="sum", attention_type="ddpm",
               init_scale=0.0, fourier_scale=16, conv_size=3)
_DDPMPP = dict(_NCSNPP, fir=False, progressive_input="none", embedding_type="positional",
               scale_by_sigma=False, ema_rate=0.9999)
_DDPM = dict(name="ddpm", scale_by_sigma=False, ema_rate=0.9999, normalization="GroupNorm",
             nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
             attn_resolutions=(16,), resamp_with_conv=True, conditional=True)
_NCSNPP_256 = dict(_NCSNPP, sigma_max=348, scale_by_sigma=True, ema_rate=0.999,
                   ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, progressive="output_skip",
                   progressive_input="input_skip")
_NCSNPP_1024 = dict(_NCSNPP, scale_by_sigma=True, sigma_max=1348, num_scales=2000,
                    ema_rate=0.9999, sigma_min=0.01, nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32),
                    num_res_blocks=1, dropout=0.0, progressive="output_skip",
                    progressive_input="input_skip", embedding_type="fourier")


def _cifar(model, centered=False):
    return {"model": dict(_CIFAR_DEFAULT, **model),
            "data": {"image_size": 32, "num_channels": 3, "centered": centered}}


def _lsun(model, size=256):
    return {"model": dict(_LSUN_DEFAULT, **model),
            "data": {"image_size": size, "num_channels": 3, "centered": False}}


REFERENCE_CONFIGS = {
    "ve/cifar10_ncsnpp": _cifar(dict(_NCSNPP, scale_by_sigma=True, ema_rate=0.999,
                                     embedding_type="positional")),
    "ve/cifar10_ncsnpp_continuous": _cifar(dict(_NCSNPP, scale_by_sigma=True, ema_rate=0.999)),
    "ve/cifar10_ncsnpp_deep_continuous": _cifar(dict(_NCSNPP, scale_by_sigma=True,
                                                     ema_rate=0.999, num_res_blocks=8)),
    "vp/cifar10_ddpmpp": _cifar(_DDPMPP, centered=True),
    "vp/cifar10_ddpmpp_continuous": _cifar(_DDPMPP, centered=True),
    "vp/cifar10_ddpmpp_deep_continuous": _cifar(dict(_DDPMPP, num_res_blocks=8), centered=True),
    "subvp/cifar10_ddpmpp_continuous": _cifar(_DDPMPP, centered=True),
    "subvp/cifar10_ddpmpp_deep_continuous": _cifar(dict(_DDPMPP, num_res_blocks=8),
                                                   centered=True),
    "vp/cifar10_ncsnpp_continuous": _cifar(dict(_NCSNPP, scale_by_sigma=False, ema_rate=0.9999,
                                                embedding_type="positional"), centered=True),
    "vp/ddpm/cifar10": _cifar(_DDPM, centered=True),
    "subvp/cifar10_ddpm_continuous": _cifar(_DDPM, centered=True),
    "ve/celebahq_256_ncsnpp_continuous": _lsun(_NCSNPP_256),
    "ve/ffhq_256_ncsnpp_continuous": _lsun(_NCSNPP_256),
    "ve/bedroom_ncsnpp_continuous": _lsun(dict(_NCSNPP_256, sigma_max=378)),
    "ve/celebahq_ncsnpp_continuous": {"model": dict(_NCSNPP_1024), "data": {
        "image_size": 1024, "num_channels": 3, "centered": False}},
    "ve/ffhq_ncsnpp_continuous": {"model": dict(_NCSNPP_1024), "data": {
        "image_size": 1024, "num_channels": 3, "centered": False}},
}

# configs/ve/ncsnv2/*.py and configs/ve/ncsn/cifar10.py (JAX reference).
NCSN_CONFIGS = {
    "ve/ncsnv2/cifar10": {"model": dict(_CIFAR_DEFAULT, name="ncsnv2_64", scale_by_sigma=True,
                                        num_scales=232, ema_rate=0.999,
                                        normalization="InstanceNorm++", nonlinearity="elu",
                                        nf=128, interpolation="bilinear"),
                          "data": {"image_size": 32, "num_channels": 3, "centered": False}},
    "ve/ncsnv2/bedroom": {"model": dict(_LSUN_DEFAULT, name="ncsnv2_128", scale_by_sigma=True,
                                        sigma_max=190, num_scales=1086, ema_rate=0.9999,
                                        normalization="InstanceNorm++", nonlinearity="elu",
                                        nf=128, interpolation="bilinear"),
                          "data": {"image_size": 128, "num_channels": 3, "centered": False}},
    "ve/ncsn/cifar10": {"model": dict(_CIFAR_DEFAULT, name="ncsn", scale_by_sigma=False,
                                      sigma_max=1, num_scales=10, ema_rate=0.0,
                                      normalization="InstanceNorm++", nonlinearity="elu",
                                      nf=128, interpolation="bilinear"),
                        "data": {"image_size": 32, "num_channels": 3, "centered": False}},
}


def get(name: str) -> dict:
    """A deep copy of one reference configuration ({'model': ..., 'data': ...})."""
    table = REFERENCE_CONFIGS if name in REFERENCE_CONFIGS else NCSN_CONFIGS
    return copy.deepcopy(table[name])
