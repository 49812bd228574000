"""DDPM++ on CIFAR-10 with the continuous VP SDE (score_sde
``configs/vp/cifar10_ddpmpp_continuous.py``): the CIFAR-10 default, ``configs/default_cifar10.py``
(``models.ddpmpp_continuous_vp``: reduce-mean DSM, Euler-Maruyama PC sampling, centred data).
This file keeps the reference's name; it adds nothing."""
from configs.default_cifar10 import get_config

__all__ = ["get_config"]
