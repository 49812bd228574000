"""The released DiT-XL/2 class-conditional ImageNet models (Peebles & Xie 2023,
facebookresearch/DiT ``DiT-XL-2-256x256.pt`` / ``DiT-XL-2-512x512.pt``) with the Stable Diffusion
VAE (``stabilityai/sd-vae-ft-ema`` / ``-mse``), sampled as the official ``sample_ddp.py`` does:
250 respaced DDPM steps with the learned variance (``sampling.method = "learned_variance"``),
classifier-free guidance 1.5 on the first 3 latent channels, uniformly drawn classes of 1000.

No dataset is needed (``data.dataset = "NONE"``: the pixel size, channels and the 1000 classes
come from this config). Convert once, then sample (``arg``: "256" (default) or "512"; "smoke":
the tiny shapes of the tests)::

    python -m score_jax.convert dit DiT-XL-2-256x256.pt dit_xl2_256.msgpack --preset DiT-XL/2
    python -m score_jax.convert autoencoder_kl sd-vae-ft-ema/ sd_vae.msgpack   # diffusers folder
    python sample.py --config=configs/released/dit_xl2.py:256 --checkpoint=dit_xl2_256.msgpack \\
        --output_dir=out --num_samples=16 --labels=207,360,387,974,88,979,417,279

Class labels: ``--labels``, ``--per_class``, ``--config.sampling.class_label=K`` or uniform
draws; ``--guidance_scale=w`` (``--config.sampling.guidance_scale=None``: conditional, no
guidance). Fast samplers run on the eps half,
e.g. ``--config.sampling.method=ddim --config.sampling.num_steps=50`` (their guidance is the
project's on all 4 channels). The SD VAE file: ``--config.latent.autoencoder_checkpoint``.
"""
from score_jax import config as config_lib
from score_jax.models import dit_config

VARIANTS = ("256", "512", "smoke")
# ``smoke``: the shapes of the tiny official-layout test fixtures (tests/test_released.py): a
# 2-block DiT on 8 x 8 x 3 latents of a 16 px f = 2 VAE, 10 classes, 4 sampling steps
SMOKE_DIT = {"hidden_size": 32, "depth": 2, "num_heads": 4, "patch_size": 2, "num_classes": 10}
SMOKE_VAE = {"block_out_channels": (8, 16), "layers_per_block": 1, "latent_channels": 3,
             "norm_num_groups": 4}


def get_config(arg=None):
    """DiT-XL/2 + the SD VAE, DiT's sampler and CFG 1.5; ``arg``: "256" (default) or "512"
    pixels, or "smoke" (comma-separated)."""
    args = [a for a in str(arg or "").split(",") if a and a != "None"]
    bad = [a for a in args if a not in VARIANTS]
    if bad or ("256" in args and "512" in args):
        raise ValueError(f"unknown dit_xl2 variant {arg!r}; valid choices: {list(VARIANTS)} "
                         f"(one size)")
    size = "512" if "512" in args else "256"
    config = config_lib.base_config()
    d = config.data
    d.dataset = config_lib.NO_DATASET
    d.image_size = int(size)  # pixels; the latents are image_size / 8 x image_size / 8 x 4
    d.num_channels = 3
    d.centered = True  # the VAE decodes to [-1, 1]
    d.random_flip = False
    t = config.training
    t.sde = "vpsde"  # DiT's linear schedule: beta_i = linspace(1e-4, 0.02, 1000)
    t.continuous = False
    t.batch_size = 256
    config.model.update(dit_config("DiT-XL/2", num_classes=1000, class_dropout_prob=0.1,
                                   learn_sigma=True))
    m = config.model
    m.beta_min, m.beta_max, m.num_scales = 0.1, 20.0, 1000
    m.ema_rate = 0.9999
    m.dropout = 0.0
    s = config.sampling
    s.method = "learned_variance"
    s.num_steps = 250
    s.guidance_scale = 1.5  # sample_ddp.py's default (FID 2.27 at 256 px)
    s.num_samples = 16
    s.batch_size = 16
    config.eval.batch_size = 256
    config.eval.enable_loss = False
    lat = config.latent
    lat.autoencoder_checkpoint = "sd_vae.msgpack"
    lat.scale_factor = 0.18215
    # the SD VAE (sd-vae-ft-ema / -mse): f = 8, 4 latent channels; spelled out so that each
    # field can be overridden from the command line
    lat.autoencoder.update(dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                latent_channels=4, norm_num_groups=32))
    if "smoke" in args:
        config.model.update(SMOKE_DIT)
        d.image_size = 16
        lat.autoencoder.update(SMOKE_VAE)
        s.num_steps = 4
        s.num_samples = s.batch_size = 4
    return config
