"""DDPM on CIFAR-10 without conditioning on the time step (NCSNv2 technique 3): discrete VP,
ancestral sampling, ``model.conditional=False`` (score_sde configs/vp/ddpm/cifar10_unconditional.py)."""
from configs import models
from configs.common import apply_variant
from configs.default_cifar10 import get_default_configs


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = get_default_configs()
    training = config.training
    training.sde = "vpsde"
    training.continuous = False
    training.reduce_mean = True
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "ancestral_sampling"
    sampling.corrector = "none"
    config.model.update(models.DDPM)
    config.model.conditional = False
    config.data.centered = True
    return apply_variant(config, arg)
