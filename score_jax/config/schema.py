"""The config schema: `base_config` (every key, reference defaults) and `known_keys`.

Sampler options: `base_config` generates a None placeholder in ``config.sampling`` for every
keyword-only option of every sampler in ``sampling.METHODS`` it does not declare, so
``--config.sampling.<option>=...`` works for a newly added sampler without editing this file.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import ml_collections

from score_jax import likelihood, parallel, sampling
from score_jax import sde as sde_lib

placeholder = ml_collections.config_dict.placeholder


# The likelihood integration starts at t = eps (score_sde ``likelihood.get_likelihood_fn``:
# eps=1e-5), for every bits/dim in the project (sample.py --mode=bpd, evaluate.py), independent of
# the sampler's ``sampling.eps``: ``likelihood.DEFAULT_EPS``, its one definition.
LIKELIHOOD_EPS = likelihood.DEFAULT_EPS

SECTIONS = ("training", "sampling", "eval", "data", "model", "optim")
# config.sampling names of the reference -> sampler option names
OPTION_ALIASES = {"n_steps_each": "n_steps", "noise_removal": "denoise"}
# model keys read by get_model / the builders beyond the networks' dataclass fields
_MODEL_EXTRA_KEYS = {"name", "ema_rate", "ema_warmup", "normalization", "interpolation", "attention_type",
                     "conv_size", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales",
                     "fourier_scale", "embedding_type", "dropout", "num_classes", "dtype", "remat",
                     "normalization_type"}
_OPTIM_EXTRA_KEYS = {"amsgrad"}
# Classes of the datasets with labels (labels outside [0, num_classes) are refused).
# ``config.data.dataset`` of a config that only samples (a released checkpoint's: DiT-XL/2 on
# ImageNet): no pipeline; the image size, channels and ``model.num_classes`` come from the
# config. Training, bits/dim and evaluate.py refuse it (``builders.dataset_from_config``).
NO_DATASET = "NONE"
DATASET_NUM_CLASSES = {"DIGITS": 10, "CIFAR10": 10, "SVHN": 10, "MNIST": 10}
# Label dropout of a class-conditional model when training.label_dropout is None (the "eta" of
# classifier-free guidance, Ho & Salimans 2022 sec. 3.2 use 0.1 / 0.2).
DEFAULT_LABEL_DROPOUT = 0.1


# ----------------------------------------------------------------------------------------------
# The schema
# ----------------------------------------------------------------------------------------------
def _option_type(default: Any, annotation: Any) -> type:
    if isinstance(default, bool | int | float | str):
        return type(default)
    text = str(annotation)
    for typ in (bool, int, float, str):
        if text.split("|")[0].strip() == typ.__name__:
            return typ
    return str


def _add_sampler_placeholders(s) -> None:
    """A None placeholder in ``config.sampling`` for every option of every sampler in
    ``sampling.METHODS`` not declared above (so ``--config.sampling.<option>=...`` works for a
    newly added sampler without editing this schema)."""
    declared = set(s.keys()) | set(OPTION_ALIASES.values())
    for method in sampling.METHODS:
        params = inspect.signature(sampling.METHODS[method]).parameters
        for name, default in sampling.method_options(method).items():
            if name in declared:
                continue
            s[name] = placeholder(_option_type(default, params[name].annotation))
            declared.add(name)


def base_config() -> ml_collections.ConfigDict:
    """The fields every config has, with the reference defaults (score_sde
    ``configs/default_cifar10_configs.py``); absent values are None placeholders, so every key
    can be set from the command line (``--config.model.num_classes=10``)."""
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
    training.num_devices = placeholder(int)  # None: all devices
    # gradient accumulation: the batch is cut into this many micro-batches scanned inside the
    # jitted step (train_step.accumulated_loss_and_grad); one optimiser update per step
    training.grad_accum_steps = 1
    # per-example noise keys fold_in(step_key, i) (always with grad_accum_steps > 1); False: the
    # batch's noise from the step key, as every earlier version drew it
    training.per_example_noise = False
    # checkpoints written in the background (orbax async: the loop blocks only for the copy to
    # host memory); preemption checkpoints are always complete before the process exits
    training.async_checkpoints = True
    # (start, stop): a jax.profiler trace of train steps start..stop-1 in
    # <workdir>/tensorboard/plugins/profile (TensorBoard's profile plugin); None: no trace
    training.profile_steps = placeholder(tuple)
    # score_jax additions: the objective ("score": denoising score matching; "flow_matching":
    # velocity regression on flow_path "condot" or "sde" (the SDE's own Gaussian path), with
    # t ~ U(0, flow_t_max))
    training.objective = "score"
    training.flow_path = "condot"
    training.flow_t_max = 1.0
    # classifier-free guidance training: labels dropped to the null label with this probability
    # (None: DEFAULT_LABEL_DROPOUT for a class-conditional model, `label_dropout_from_config`)
    training.label_dropout = placeholder(float)
    # DIGITS runs score at least this many snapshot samples with the digits metric (None: 256)
    training.snapshot_metric_samples = placeholder(int)
    # objective "edm" (Karras et al. 2022, score_jax.edm): preconditioning "edm" | "vp" | "ve",
    # sigma_data, and the log-normal training noise levels ln sigma ~ N(p_mean, p_std^2)
    training.precond = "edm"
    training.sigma_data = 0.5
    training.p_mean = -1.2
    training.p_std = 1.2
    # objective "autoencoder" (stage 1 of latent diffusion, score_jax.latent): reconstruction
    # "l1" | "l2" of a posterior sample + kl_weight x KL(q(z | x) || N(0, I))
    training.kl_weight = 1e-6
    training.reconstruction = "l1"

    config.sampling = s = ml_collections.ConfigDict()
    s.method = "pc"  # a key of sampling.METHODS that needs no inputs, or "flow"
    s.predictor = "euler_maruyama"
    s.corrector = "none"
    s.n_steps_each = 1
    s.noise_removal = True
    s.probability_flow = False
    s.snr = 0.16
    # score_jax additions
    s.num_steps = placeholder(int)  # None: the sampler's default (model.num_scales for pc)
    s.solver = placeholder(str)  # ode / sde / flow: None = default
    s.rtol = 1e-5
    s.atol = 1e-5
    s.eps = placeholder(float)  # None: the SDE's default
    s.num_samples = 64  # snapshot / sample.py grid size (any number: padded to the devices)
    s.batch_size = placeholder(int)  # None: num_samples
    # class-conditional models: None draws labels uniformly from [0, num_classes); an int in
    # [0, num_classes] samples that class (num_classes: the null label, unconditional)
    s.class_label = placeholder(int)
    # classifier-free guidance scale w of a class-conditional model (score_jax.guidance.cfg):
    # pred = (1 - w) pred(x | null) + w pred(x | y); None: plain conditional sampling (w = 1
    # without the second, unconditional half of the batch)
    s.guidance_scale = placeholder(float)
    # fast samplers (score_jax.sampling.fast): None = the sampler's default
    s.eta = placeholder(float)  # ddim
    s.schedule = placeholder(str)  # ddim, dpm_solver, heun
    s.order = placeholder(int)  # dpm_solver
    s.solver_type = placeholder(str)  # dpm_solver
    s.lower_order_final = placeholder(bool)  # dpm_solver
    s.rho = placeholder(float)  # heun
    s.s_churn = placeholder(float)  # heun
    s.s_tmin = placeholder(float)  # heun
    s.s_tmax = placeholder(float)  # heun
    s.s_noise = placeholder(float)  # heun
    # flow models (flow.flow_sample): SDE-extension noise level sigma (with an SDE solver of
    # flow.FLOW_SDE_SOLVERS) and the integration interval [t0, t1] (stop short of a singular end)
    s.sigma = placeholder(float)
    s.t0 = placeholder(float)
    s.t1 = placeholder(float)
    _add_sampler_placeholders(s)

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
    evaluate.bpd_max_batches = placeholder(int)  # None: whole split
    # FID / IS / KID resize convention (score_jax.evaluation.metrics.RESIZE_CONVENTIONS):
    # "pytorch" = pytorch-fid / TF2 half-pixel bilinear; "tf1" = TF1 ResizeBilinear of the FID
    # Inception graph (TTUR, TF-GAN, score_sde's evaluation.py and its cifar10_stats.npz).
    evaluate.fid_resize = "pytorch"

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "CIFAR10"
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3
    data.category = placeholder(str)  # LSUN category
    data.tfrecords_path = placeholder(str)  # FFHQ / CelebA-HQ
    data.data_dir = placeholder(str)  # TFDS data_dir
    data.path = placeholder(str)  # dataset "FOLDER": a folder of images; "NPZ": an .npz file
    data.num_workers = 0  # grain worker processes building training batches (0: in-process)
    data.prefetch = 2  # training batches laid out on the devices ahead of the step (0: none)

    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.embedding_type = "fourier"
    model.num_classes = placeholder(int)  # class-conditional network; label num_classes = null
    # compute dtype ("bfloat16": params and optimizer state stay float32) and per-block activation
    # rematerialisation; None: the network's default (float32, no remat)
    model.dtype = placeholder(str)
    model.remat = placeholder(bool)
    # EMA decay min(ema_rate, (1 + n) / (10 + n)) at update n (score_sde_pytorch); False: ema_rate
    model.ema_warmup = True

    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.0
    optim.lr_decay = "constant"  # train_step.LR_DECAYS; "cosine" / "linear" reach 0 at n_iters

    # stage 2 of latent diffusion (score_jax.latent): the frozen autoencoder (a stage-1 workdir or
    # a converted .msgpack), its AutoencoderKL fields (default: the stage-1 workdir's, else SD's)
    # and the latent scale factor (None: 1 / std of the first batch's latents)
    config.latent = lat = ml_collections.ConfigDict()
    lat.autoencoder_checkpoint = placeholder(str)
    lat.scale_factor = placeholder(float)
    lat.autoencoder = ml_collections.ConfigDict()

    # parameter sharding (FSDP, score_jax.parallel): devices per parameter-shard group (1: the
    # state is replicated; the mesh is data x fsdp = (devices / fsdp, fsdp)); leaves of fewer
    # than fsdp_min_size elements stay replicated
    config.parallel = par = ml_collections.ConfigDict()
    par.fsdp = 1
    par.fsdp_min_size = parallel.MIN_SHARD_SIZE

    # objective "distill" (score_jax.distill): a few-step student of a trained teacher
    config.distill = distill_base_config()

    config.seed = 42
    return config


def distill_base_config() -> ml_collections.ConfigDict:
    """``config.distill`` (objective "distill", ``score_jax.distill``): method "cd" | "ct" | "pd";
    the teacher (a workdir of the project, or a converted checkpoint, trained with objective
    ``teacher_objective`` on this config's network and SDE); the student starts from the teacher's
    EMA weights (``init_from_teacher``, CM / ECT / PD). CD: ``num_scales`` N, teacher ODE
    ``solver`` and its ``teacher_steps`` per consistency link (1: CM), the loss ``weighting``
    ("uniform": CM; "inverse_dsigma"; "inverse_cout2"), ``metric`` (None: "l2";
    "pseudo_huber"), ``target`` "ema" (theta^- = EMA at
    ``model.ema_rate``) | "stopgrad". CT: curriculum ``ct_s0`` -> ``ct_s1`` over training.n_iters,
    lognormal (``ct_p_mean``, ``ct_p_std``). PD: the student's ``pd_num_steps`` (its teacher walks
    twice as many DDIM steps)."""
    d = ml_collections.ConfigDict()
    d.method = "cd"
    d.teacher_workdir = placeholder(str)
    d.teacher_checkpoint = placeholder(str)
    d.teacher_step = placeholder(int)
    d.teacher_objective = "edm"
    d.init_from_teacher = True
    d.num_scales = 18
    d.rho = 7.0
    d.solver = "heun"
    d.teacher_steps = 1
    d.weighting = "uniform"
    d.metric = placeholder(str)
    d.target = "ema"
    d.ct_s0 = 10
    d.ct_s1 = 1280
    d.ct_p_mean = -1.1
    d.ct_p_std = 2.0
    d.pd_num_steps = placeholder(int)
    return d


def known_keys() -> dict[str, set[str]]:
    """The valid keys of each section: the schema's, plus every network field for ``model``."""
    from score_jax import models

    base = base_config()
    keys = {sec: set(base[sec].keys()) for sec in SECTIONS}
    for cls in models.MODELS.values():
        keys["model"] |= {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    keys["model"] |= _MODEL_EXTRA_KEYS
    for name in sde_lib.SDES:  # every SDE's declared parameters (a user SDE's included)
        keys["model"] |= set(sde_lib.sde_parameters(name))
    keys["optim"] |= _OPTIM_EXTRA_KEYS
    return keys


