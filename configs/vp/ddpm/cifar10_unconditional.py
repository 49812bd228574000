"""DDPM on CIFAR-10 without conditioning on the time step (NCSNv2 technique 3): discrete VP,
ancestral sampling, ``model.conditional=False`` (score_sde configs/vp/ddpm/cifar10_unconditional.py).
Everything else is ``configs/vp/ddpm/cifar10.py``."""
from configs.common import apply_variant
from configs.vp.ddpm import cifar10


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = cifar10.get_config()
    config.model.conditional = False
    return apply_variant(config, arg)
