"""NCSN++ on CelebA 64 with SMLD (discrete VE)."""
from configs import models
from configs.common import apply_variant
from configs.default_celeba import get_default_configs


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
    config.model.update(models.NCSNPP)
    config.model.embedding_type = "positional"
    return apply_variant(config, arg)
