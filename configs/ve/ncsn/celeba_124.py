"""NCSN on CelebA with NCSNv2 techniques 1, 2, 4 (500 scales, sigma_max 90)."""
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
    sampling.predictor = "none"
    sampling.corrector = "ald"
    config.model.update(models.NCSN)
    config.optim.update(models.NCSN_OPTIM)
    sampling.n_steps_each = 5
    sampling.snr = 0.128
    config.model.update(dict(num_scales=500, ema_rate=0.0))
    return apply_variant(config, arg)
