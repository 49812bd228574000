"""NCSN++ (deep: 8 res-blocks per level) on CIFAR-10 with the VE SDE."""
from configs import models
from configs.common import apply_variant
from configs.default_cifar10 import get_default_configs


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
    config.model.update(models.NCSNPP)
    training.n_iters = 950001
    config.model.num_res_blocks = 8
    return apply_variant(config, arg)
