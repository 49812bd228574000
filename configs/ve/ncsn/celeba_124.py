"""NCSN on CelebA with NCSNv2 techniques 1, 2, 4 (500 scales, sigma_max 90)."""
from configs.common import apply_variant
from configs.default_celeba import get_default_configs
from configs.models import ncsn_recipe


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = ncsn_recipe(get_default_configs(),
                         n_steps_each=5, snr=0.128, num_scales=500, ema_rate=0.0)
    return apply_variant(config, arg)
