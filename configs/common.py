"""Shared config pieces: the base fields every config has, and the variants of ``get_config(arg)``.

``arg`` (the part after ``:`` in ``--config=configs/vp/cifar10_ddpmpp_continuous.py:smoke``):
- None: the configuration as published;
- "smoke": the same objective, SDE and network family shrunk to run on a CPU in seconds on the
  embedded digits data (no download): tiny network, 16 x 16 images, a few steps.
"""
import ml_collections

VARIANTS = (None, "smoke")


def base_config():
    """The fields shared by all configs, with the reference defaults; absent values are None."""
    config = ml_collections.ConfigDict()
    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    # additional checkpoints for preemption in cloud computing environments
    training.snapshot_freq_for_preemption = 10000
    # produce samples at each snapshot
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    training.continuous = True
    training.reduce_mean = False
    training.sde = "vpsde"
    training.num_devices = ml_collections.config_dict.placeholder(int)  # None: all devices
    # score_jax additions: the objective ("score": denoising score matching; "flow_matching":
    # velocity regression on flow_path "condot" or "sde" (the SDE's own Gaussian path), with
    # t ~ U(0, flow_t_max))
    training.objective = "score"
    training.flow_path = "condot"
    training.flow_t_max = 1.0

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"  # pc, ode, sde, ddim, dpm_solver, heun, or flow (flow_matching)
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    # score_jax additions
    sampling.num_steps = ml_collections.config_dict.placeholder(int)  # None: model.num_scales
    sampling.solver = ml_collections.config_dict.placeholder(str)  # ode / sde: None = default
    sampling.rtol = 1e-5
    sampling.atol = 1e-5
    sampling.eps = ml_collections.config_dict.placeholder(float)  # None: the SDE's default
    sampling.num_samples = 64  # snapshot / sample.py grid size
    sampling.batch_size = ml_collections.config_dict.placeholder(int)  # None: num_samples
    # fast samplers (score_jax.sampling.fast): None = the sampler's default
    sampling.eta = ml_collections.config_dict.placeholder(float)  # ddim
    sampling.schedule = ml_collections.config_dict.placeholder(str)  # ddim, dpm_solver, heun
    sampling.order = ml_collections.config_dict.placeholder(int)  # dpm_solver
    sampling.solver_type = ml_collections.config_dict.placeholder(str)  # dpm_solver
    sampling.lower_order_final = ml_collections.config_dict.placeholder(bool)  # dpm_solver
    sampling.rho = ml_collections.config_dict.placeholder(float)  # heun
    sampling.s_churn = ml_collections.config_dict.placeholder(float)  # heun
    sampling.s_tmin = ml_collections.config_dict.placeholder(float)  # heun
    sampling.s_tmax = ml_collections.config_dict.placeholder(float)  # heun
    sampling.s_noise = ml_collections.config_dict.placeholder(float)  # heun

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 9
    evaluate.end_ckpt = 26
    evaluate.batch_size = 1024
    evaluate.enable_sampling = False
    evaluate.num_samples = 50000
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = "test"
    evaluate.bpd_num_repeats = 5
    evaluate.bpd_max_batches = ml_collections.config_dict.placeholder(int)  # None: whole split

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "CIFAR10"
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3
    data.category = ml_collections.config_dict.placeholder(str)  # LSUN category
    data.tfrecords_path = ml_collections.config_dict.placeholder(str)  # FFHQ / CelebA-HQ
    data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir

    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.embedding_type = "fourier"

    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.seed = 42
    return config


def smoke(config):
    """Shrink ``config`` to CPU seconds, keeping its SDE, objective, sampler and network family."""
    config.data.dataset = "DIGITS"
    config.data.image_size = 16
    config.data.category = None
    config.data.tfrecords_path = None
    t = config.training
    t.batch_size = 8
    t.n_iters = 4
    t.snapshot_freq = 4
    t.snapshot_freq_for_preemption = 2
    t.log_freq = 1
    t.eval_freq = 2
    config.eval.batch_size = 8
    config.eval.bpd_max_batches = 1
    config.eval.bpd_num_repeats = 1
    s = config.sampling
    s.num_samples = 8
    s.num_steps = 4
    s.n_steps_each = 1
    s.rtol = s.atol = 1e-2
    m = config.model
    name = m.get("name")
    if name == "ncsnpp":
        m.nf = 16
        m.ch_mult = (1, 2)
        m.num_res_blocks = 1
        m.attn_resolutions = (8,)
    elif name == "ddpm":
        m.nf = 32  # GroupNorm with 32 groups
        m.ch_mult = (1, 2)
        m.num_res_blocks = 1
        m.attn_resolutions = (8,)
    elif name is not None and name.startswith(("ncsn",)):
        m.nf = 8
    config.optim.warmup = 2
    return config


def apply_variant(config, arg):
    """Apply the variant named ``arg`` (see module doc); unknown names raise ValueError."""
    if arg in (None, "", "None"):
        return config
    if arg == "smoke":
        return smoke(config)
    raise ValueError(f"unknown config variant {arg!r}; valid choices: {list(VARIANTS)}")
