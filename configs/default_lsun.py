"""Defaults for LSUN 256 x 256 (reference ``configs/default_lsun_configs.py``); also the base of
the FFHQ / CelebA-HQ configs."""
from configs.common import base_config


def get_default_configs():
    """LSUN defaults: batch 64, 2.4M iterations, sigma_max 378, 2000 scales, no dropout."""
    config = base_config()
    t = config.training
    t.batch_size = 64
    t.n_iters = 2400001
    t.snapshot_freq = 50000
    t.log_freq = 50
    t.eval_freq = 100
    t.snapshot_freq_for_preemption = 5000
    config.sampling.snr = 0.075
    e = config.eval
    e.begin_ckpt = 50
    e.end_ckpt = 96
    e.batch_size = 512
    e.enable_sampling = True
    config.data.dataset = "LSUN"
    config.data.image_size = 256
    m = config.model
    m.sigma_max = 378.0
    m.num_scales = 2000
    m.dropout = 0.0
    return config


def highres_ncsnpp(config, *, dataset, image_size, sigma_max, tfrecords_path=None):
    """The reference's 1024 x 1024 NCSN++ (FFHQ / CelebA-HQ): batch 8, nf 16, 8 levels."""
    t = config.training
    t.batch_size = 8
    t.sde = "vesde"
    t.continuous = True
    t.reduce_mean = True
    s = config.sampling
    s.method, s.predictor, s.corrector = "pc", "reverse_diffusion", "langevin"
    s.snr = 0.15
    e = config.eval
    e.batch_size = 1024
    e.begin_ckpt, e.end_ckpt = 1, 96
    d = config.data
    d.dataset = dataset
    d.image_size = image_size
    d.centered = False
    d.random_flip = True
    d.tfrecords_path = tfrecords_path
    m = config.model
    m.update(dict(
        name="ncsnpp", scale_by_sigma=True, sigma_max=sigma_max, num_scales=2000, ema_rate=0.9999,
        sigma_min=0.01, normalization="GroupNorm", nonlinearity="swish", nf=16,
        ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0,
        resamp_with_conv=True, conditional=True, fir=True, fir_kernel=[1, 3, 3, 1],
        skip_rescale=True, resblock_type="biggan", progressive="output_skip",
        progressive_input="input_skip", progressive_combine="sum", attention_type="ddpm",
        init_scale=0.0, fourier_scale=16, conv_size=3, embedding_type="fourier"))
    config.optim.amsgrad = False
    return config
