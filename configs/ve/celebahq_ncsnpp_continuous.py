"""NCSN++ on CelebA-HQ 1024 (TFRecords) with the VE SDE."""
from configs.common import apply_variant
from configs.default_lsun import get_default_configs, highres_ncsnpp


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = highres_ncsnpp(get_default_configs(), dataset="CELEBAHQ", image_size=1024,
                            sigma_max=1348.0)
    config.training.reduce_mean = False  # as the reference (its FFHQ 1024 config has True)
    return apply_variant(config, arg)
