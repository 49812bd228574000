"""Reproducing DDPM on CelebA-HQ 256 (TFRecords)."""
from configs import models
from configs.common import apply_variant
from configs.default_lsun import get_default_configs


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
    config.data.dataset = "CELEBAHQ"
    config.data.image_size = 256
    config.data.centered = True
    config.model.num_scales = 1000
    config.model.ch_mult = (1, 1, 2, 2, 4, 4)
    config.optim.lr = 2e-5
    return apply_variant(config, arg)
