"""Defaults for CelebA 64 x 64 (reference ``configs/default_celeba_configs.py``)."""
from configs.common import base_config


def get_default_configs():
    """CelebA defaults: central crop 140, 64 x 64, sigma_max 90, snr 0.17."""
    config = base_config()
    config.training.batch_size = 128
    config.training.n_iters = 1300001
    config.training.snapshot_freq = 50000
    config.training.log_freq = 50
    config.training.eval_freq = 100
    config.training.snapshot_freq_for_preemption = 10000
    config.sampling.snr = 0.17
    config.eval.begin_ckpt = 1
    config.eval.end_ckpt = 26
    config.eval.enable_sampling = True
    config.data.dataset = "CELEBA"
    config.data.image_size = 64
    config.model.sigma_max = 90.0
    return config
