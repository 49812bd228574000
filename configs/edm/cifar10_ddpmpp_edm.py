"""EDM's CIFAR-10 recipe (Karras et al. 2022, Table 7 "Ours", config F; NVlabs/edm ``train.py``
``--arch=ddpmpp --precond=edm``) on the project's DDPM++ network.

EDM settings kept: EDMPrecond (sigma_data 0.5), ln sigma ~ N(-1.2, 1.2^2), loss summed over pixels
(``reduce_mean=False``), batch 512, Adam lr 1e-3 (betas 0.9 / 0.999, eps 1e-8), learning-rate
ramp-up over 10 Mimg (19,531 steps at batch 512), 200 Mimg (390,625 steps), EMA half-life 0.5 Mimg
(rate 0.5^(512 / 500000) = 0.99929), no gradient clipping, DDPM++ with 128 channels, channel
multipliers (2, 2, 2), 4 blocks per resolution, attention at 16 x 16, dropout 0.13, positional
noise embedding (fed c_noise = ln(sigma) / 4); sampling: Heun, 18 steps (35 NFE), rho = 7,
sigma in [0.002, 80]. Not reproduced: EDM's non-leaking augmentation pipeline (p = 0.12; EDM
Table 7) and its EMA warm-up ratio.

EDM keys: see ``configs/edm/digits_edm.py``.
"""
from configs import models
from configs.common import apply_variant
from configs.default_cifar10 import get_default_configs
from configs.models import edm_recipe


def get_config(arg=None):
    """Return the config; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = get_default_configs()
    config.model.update(models.DDPMPP)
    config.model.update(dict(nf=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                             dropout=0.13, ema_rate=0.99929, embedding_type="positional"))
    edm_recipe(config)
    t = config.training
    t.batch_size = 512
    t.n_iters = 390625
    t.reduce_mean = False
    t.continuous = True
    config.data.centered = True
    config.data.random_flip = True
    o = config.optim
    o.lr = 1e-3
    o.warmup = 19531
    o.grad_clip = -1.0
    o.beta1 = 0.9
    o.eps = 1e-8
    return apply_variant(config, arg)
