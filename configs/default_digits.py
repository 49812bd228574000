"""The embedded default: a small DDPM++ on scikit-learn's 8 x 8 digits (shipped with the install).

``python train.py --workdir=workdirs/digits`` runs it: 1617 training digits (the rest is the test
split) at their native 8 x 8 x 1 (17 grey levels), centred to [-1, 1], DDPM++ nf 32, batch 64,
3000 steps of EDM's objective and preconditioning, EMA 0.99, and EDM's Heun sampler (18 steps,
35 NFE, rho = 7 grid). It writes a PNG grid of samples
(``<workdir>/samples/iter_3000/samples.png``) and logs the digits quality metric (FD / floor, IS;
``score_jax.evaluation.digits``) of 256 snapshot samples. Chosen by measurement on the 2-core
CPU (bench/RESULTS.md, "Main job: time to a good digits grid"): at equal CPU time EDM scored a
lower FD than the continuous-VP DSM recipe (``get_config("dsm")``, the previous default), and
no tried change of learning rate, its decay, batch, EMA, sigma_data, p_mean, width or objective
(flow matching) beat it at 3000 steps; 3000 steps take about 3 min 15 s on the unloaded 2-core
CPU. ``--config.data.image_size=16`` trains on bilinearly upsampled 16 x 16 digits (about 4x
slower).

Everything the default sets is written out in ``get_config`` below, section by section; the
other keys hold the schema's defaults (``score_jax.config.base_config``). Variants
(``--config=configs/default_digits.py:<arg>``): ``smoke`` (CPU seconds), ``dsm`` (the
continuous-VP DSM recipe with DPM-Solver++, 20 steps: ``dsm_config``) and ``dsm_smoke``.
"""
from configs import models
from configs.common import apply_variant, base_config

VARIANTS = (None, "smoke", "dsm", "dsm_smoke")
# evaluate.py's samples per checkpoint (eval.num_samples) of every digits config: the N at which
# the README and docs report the digits metric (FD over its floors of the same N; the schema's
# 50000 is CIFAR's FID protocol, 28x the 1797 real digits)
DIGITS_EVAL_SAMPLES = 1000


def digits_data(d) -> None:
    """The embedded digits on ``config.data`` (in place): 8 x 8 x 1, centred to [-1, 1], no flips."""
    d.dataset = "DIGITS"
    d.image_size = 8
    d.num_channels = 1
    d.centered = True
    d.random_flip = False  # digits are not mirror-symmetric


def get_default_configs():
    """Digits data, optimiser and schedule (no network, no objective; the pc sampler of the
    schema with 500 steps): the base the digits configs build on."""
    config = base_config()
    t = config.training
    t.sde = "vpsde"
    t.continuous = True
    t.reduce_mean = True
    t.batch_size = 64
    t.n_iters = 1500
    t.snapshot_freq = 1500
    t.snapshot_freq_for_preemption = 500
    t.log_freq = 50
    t.eval_freq = 250
    digits_data(config.data)
    s = config.sampling
    s.method = "pc"
    s.predictor = "euler_maruyama"
    s.corrector = "none"
    s.num_steps = 500
    s.num_samples = 64
    e = config.eval
    e.begin_ckpt = 1  # evaluate.py scores every snapshot from the first (CIFAR's configs: 9)
    e.num_samples = DIGITS_EVAL_SAMPLES
    e.batch_size = 64
    e.bpd_max_batches = 1
    e.bpd_num_repeats = 1
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    config.model.num_scales = 1000
    return config


def _digits_network(config):
    """DDPM++ (``models.DDPMPP``) shrunk for 8 x 8 digits: nf 32, ch_mult (1, 2), one res block,
    attention at 4 x 4, no dropout, EMA 0.99."""
    config.model.update(models.DDPMPP)
    config.model.update(dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                             dropout=0.0, ema_rate=0.99))
    return config


def dsm_config():
    """The continuous-VP DSM recipe on the same network (the default before EDM), with the
    DPM-Solver++ sampler (20 steps)."""
    config = _digits_network(get_default_configs())
    s = config.sampling
    s.method = "dpm_solver"
    s.num_steps = 20
    return config


def get_config(arg=None):
    """The embedded default config (EDM); see the module docstring for ``arg``."""
    if arg not in (None, "", "None") and arg not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; valid choices: {list(VARIANTS)}")
    if arg in ("dsm", "dsm_smoke"):
        return apply_variant(dsm_config(), "smoke" if arg == "dsm_smoke" else None)
    config = base_config()
    # data: the 1617 training digits at 8 x 8 x 1, centred to [-1, 1], no flips
    digits_data(config.data)
    # training: EDM's objective (Karras et al. 2022 Table 1) for 3000 steps of batch 64
    t = config.training
    t.objective = "edm"
    t.precond = "edm"
    t.sigma_data = 0.5
    t.p_mean = -1.2
    t.p_std = 1.2
    t.sde = "vesde"  # EDM's sampling SDE, sigma in [model.sigma_min, model.sigma_max]
    t.continuous = True
    t.reduce_mean = True
    t.batch_size = 64
    t.n_iters = 3000
    t.snapshot_freq = 3000
    t.snapshot_freq_for_preemption = 500
    t.log_freq = 50
    t.eval_freq = 250
    # network: DDPM++ nf 32, ch_mult (1, 2), one res block, attention at 4 x 4, EMA 0.99
    m = config.model
    m.update(models.DDPMPP)
    m.update(dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                  ema_rate=0.99))
    m.scale_by_sigma = False  # EDM's preconditioning scales
    m.sigma_min = 0.002
    m.sigma_max = 80.0
    m.num_scales = 1000
    # optimiser: Adam 1e-3, 100 warmup steps (the schema's clip 1.0, constant rate)
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    # sampling: EDM's Heun sampler, 18 steps on the rho = 7 sigma grid (35 NFE), 64 samples
    s = config.sampling
    s.method = "heun"
    s.num_steps = 18
    s.schedule = "edm"
    s.rho = 7.0
    s.num_samples = 64
    # evaluation (evaluate.py): every snapshot from the first, the digits metric of 1000 samples,
    # one bits/dim batch
    e = config.eval
    e.begin_ckpt = 1
    e.num_samples = DIGITS_EVAL_SAMPLES
    e.batch_size = 64
    e.bpd_max_batches = 1
    e.bpd_num_repeats = 1
    return apply_variant(config, arg)
