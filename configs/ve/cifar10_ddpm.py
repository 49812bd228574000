"""The original DDPM network trained with SMLD (discrete VE) on CIFAR-10."""
from configs import models
from configs.common import apply_variant
from configs.default_cifar10 import get_default_configs


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = False
    training.reduce_mean = False
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    config.model.update(models.DDPM)
    config.model.scale_by_sigma = True
    config.model.ema_rate = 0.999
    return apply_variant(config, arg)
