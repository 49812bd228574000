"""Class-conditional digits with classifier-free guidance (Ho & Salimans 2022).

The continuous-VP DSM recipe of the embedded digits (``configs/default_digits.py``
``dsm_config``: 8 x 8 digits, DDPM++ nf 32, 1500 steps (``training.n_iters``); EMA 0.999 with
the warmup of ``train_step.ema_decay``) with the ten digit labels as a condition:
``model.num_classes = 10`` (label 10 is the null label), labels dropped to the null label with
probability ``training.label_dropout = 0.1``, and
guided sampling pred = (1 - w) pred(x | null) + w pred(x | y) with ``sampling.guidance_scale``
w = 2 (w = 1: the conditional model, w = 0: the unconditional one) and DPM-Solver with 20 steps.

    python train.py  --config=configs/digits_cond.py --workdir=workdirs/digits_cond
    python sample.py --config=configs/digits_cond.py --workdir=workdirs/digits_cond --per_class=8
    python sample.py --config=configs/digits_cond.py --workdir=workdirs/digits_cond \\
        --labels=3,3,7 --config.sampling.guidance_scale=4

Variants (``--config=configs/digits_cond.py:<arg>``): ``dit`` (the DiT backbone: patch 2 on the
8 x 8 digits, 16 tokens, hidden 96, depth 4, 4 heads), ``unet2d`` (Stable Diffusion's
cross-attention U-Net, ``unet2d_condition``: widths (32, 64), 4 heads, the digit label as one
learned 64-wide cross-attention token), ``smoke`` (CPU seconds), ``dit_smoke``, ``unet2d_smoke``.
Everything else (data, optimiser, schedule) is inherited from ``default_digits.dsm_config``.
"""
from configs import default_digits
from configs.common import apply_variant

VARIANTS = (None, "dit", "smoke", "dit_smoke", "unet2d", "unet2d_smoke")
NUM_CLASSES = 10


def _dit(config):
    m = config.model
    for key in list(m.keys()):  # drop the U-Net fields: DiT has its own
        if key not in ("sigma_min", "sigma_max", "num_scales", "beta_min", "beta_max",
                       "dropout", "embedding_type", "num_classes", "ema_rate"):
            del m[key]
    m.name = "dit"
    m.patch_size = 2
    m.hidden_size = 96
    m.depth = 4
    m.num_heads = 4
    m.learn_sigma = False
    m.class_dropout_prob = 0.1  # only creates the null row; labels are dropped in the loss
    return config


def _unet2d(config):
    m = config.model
    for key in list(m.keys()):  # drop the DDPM++ fields: the cross-attention U-Net has its own
        if key not in ("sigma_min", "sigma_max", "num_scales", "beta_min", "beta_max",
                       "dropout", "num_classes", "ema_rate"):
            del m[key]
    m.name = "unet2d_condition"
    m.block_out_channels = (32, 64)
    m.down_block_types = ("CrossAttnDownBlock2D", "DownBlock2D")
    m.up_block_types = ("UpBlock2D", "CrossAttnUpBlock2D")
    m.layers_per_block = 2
    m.attention_head_dim = 4  # the number of heads, as in diffusers' configs
    m.norm_num_groups = 8
    m.cross_attention_dim = 64
    return config


def get_config(arg=None):
    """``arg``: one of `VARIANTS` (ValueError otherwise)."""
    if arg not in (None, "", "None") and arg not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; valid choices: {list(VARIANTS)}")
    config = default_digits.dsm_config()
    config.model.ema_rate = 0.999
    config.model.num_classes = NUM_CLASSES
    config.training.label_dropout = 0.1
    s = config.sampling
    s.method = "dpm_solver"
    s.predictor = "euler_maruyama"
    s.corrector = "none"
    s.num_steps = 20
    s.num_samples = 100  # snapshots: 10 rows (one per class) of 10
    s.guidance_scale = 2.0
    if arg in ("dit", "dit_smoke"):
        _dit(config)
    if arg in ("unet2d", "unet2d_smoke"):
        _unet2d(config)
    if arg in ("smoke", "dit_smoke", "unet2d_smoke"):
        config = apply_variant(config, "smoke")
        config.data.image_size = 8
        config.sampling.num_samples = 20
        if arg == "dit_smoke":
            config.model.hidden_size = 16
            config.model.depth = 1
            config.model.num_heads = 2
    return config
