"""NCSN++ (deep) on CIFAR-10 with the sub-VP SDE."""
from configs import models
from configs.common import apply_variant
from configs.default_cifar10 import get_default_configs


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = get_default_configs()
    training = config.training
    training.sde = "subvpsde"
    training.continuous = True
    training.reduce_mean = True
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    config.model.update(models.NCSNPP_VP)
    config.data.centered = True
    training.n_iters = 950001
    config.model.num_res_blocks = 8
    return apply_variant(config, arg)
