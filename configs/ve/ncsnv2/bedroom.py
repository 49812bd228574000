"""NCSNv2 on LSUN bedroom 128: 1086 scales, sigma_max 190, ALD 3 steps, snr 0.095."""
from configs import models
from configs.common import apply_variant
from configs.default_lsun import get_default_configs


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
    # The reference sets the misspelt key "continuouse"; the intended discrete objective is used.
    training.batch_size = 128
    sampling.n_steps_each = 3
    sampling.snr = 0.095
    config.data.category = "bedroom"
    config.data.image_size = 128
    config.model.update(dict(name="ncsnv2_128", scale_by_sigma=True, sigma_max=190.0,
                             num_scales=1086, ema_rate=0.9999, sigma_min=0.01))
    config.optim.lr = 1e-4
    return apply_variant(config, arg)
