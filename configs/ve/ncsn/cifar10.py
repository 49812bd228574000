"""NCSNv1 (Song & Ermon 2019) on CIFAR-10: 10 scales, sigma_max 1, ALD 100 steps."""
from configs.common import apply_variant
from configs.default_cifar10 import get_default_configs
from configs.models import ncsn_recipe


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = ncsn_recipe(get_default_configs(),
                         n_steps_each=100, snr=0.316, sigma_max=1.0, num_scales=10, ema_rate=0.0)
    return apply_variant(config, arg)
