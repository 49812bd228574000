"""NCSNv1 on CIFAR-10 with technique 5 (EMA) only."""
from configs.common import apply_variant
from configs.default_cifar10 import get_default_configs
from configs.models import ncsn_recipe


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = ncsn_recipe(get_default_configs(),
                         n_steps_each=100, snr=0.316, sigma_max=1.0, num_scales=10, ema_rate=0.999)
    return apply_variant(config, arg)
