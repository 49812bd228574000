"""Defaults for CIFAR-10 (reference ``configs/default_cifar10_configs.py``)."""
from configs import models
from configs.common import apply_variant, base_config


def get_default_configs():
    """CIFAR-10 32 x 32 defaults: batch 128, 1.3M iterations, Adam 2e-4, warmup 5000, clip 1."""
    config = base_config()
    config.data.dataset = "CIFAR10"
    config.data.image_size = 32
    config.sampling.snr = 0.16
    return config


def get_config(arg=None):
    """The CIFAR-10 defaults with a DDPM++ (continuous VP) network, as a runnable config (the
    values of ``configs/vp/cifar10_ddpmpp_continuous.py``, which imports this module)."""
    return apply_variant(models.ddpmpp_continuous_vp(get_default_configs()), arg)


__all__ = ["get_default_configs", "get_config", "apply_variant"]
