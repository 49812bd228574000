"""NCSN++ on CelebA-HQ 256 (TFRecords) with the VE SDE."""
from configs import models
from configs.common import apply_variant
from configs.default_lsun import get_default_configs


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = True
    training.reduce_mean = False
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    config.model.update(models.NCSNPP_256)
    config.data.dataset = "CELEBAHQ"
    config.data.image_size = 256
    config.model.sigma_max = 348.0
    return apply_variant(config, arg)
