"""NCSNv1 on CIFAR-10 with technique 5 (EMA) only."""
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
    sampling.predictor = "none"
    sampling.corrector = "ald"
    config.model.update(models.NCSN)
    config.optim.update(models.NCSN_OPTIM)
    sampling.n_steps_each = 100
    sampling.snr = 0.316
    config.model.update(dict(sigma_max=1.0, num_scales=10, ema_rate=0.999))
    return apply_variant(config, arg)
