"""The config boundary: the schema, validation, every ``*_from_config`` and ``build``.

An ``ml_collections.ConfigDict`` is read here and nowhere below: ``build(config)`` returns a
typed `Built` of plain objects (SDE, network, optimiser, loss functions, jitted steps, sampler
method and options) that ``train_lib``, ``sample_lib`` and ``evaluation`` use. The schema
(`base_config`) lives inside the package, so validation is the same whether score_jax is used
from the repository (whose ``configs/common.py`` builds on it) or installed.

Sampler options are read generically: the options of ``config.sampling.method`` M are the
keyword-only parameters of ``sampling.METHODS[M]`` (``flow.flow_sample`` for "flow"); the
reference's names are aliases (``n_steps_each`` -> ``n_steps``, ``noise_removal`` ->
``denoise``) and None values are left to the sampler's defaults. Adding a sampler to
``sampling.METHODS`` is all the config side needs: `base_config` generates a None placeholder
for every option name it does not declare (so ``--config.sampling.<option>=...`` works).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from score_jax import data as data_lib
from score_jax import distill as distill_lib
from score_jax import edm, flow, likelihood, losses, parallel, sampling
from score_jax import latent as latent_lib
from score_jax import score as score_lib
from score_jax import sde as sde_lib
from score_jax import train_step as ts

placeholder = ml_collections.config_dict.placeholder

# The likelihood integration starts at t = eps (score_sde ``likelihood.get_likelihood_fn``:
# eps=1e-5), for every bits/dim in the project (sample.py --mode=bpd, evaluate.py), independent of
# the sampler's ``sampling.eps``: ``likelihood.DEFAULT_EPS``, its one definition.
LIKELIHOOD_EPS = likelihood.DEFAULT_EPS

FLOW_METHOD = "flow"
OBJECTIVES = ("score", "flow_matching", "edm", latent_lib.OBJECTIVE, "distill")
SECTIONS = ("training", "sampling", "eval", "data", "model", "optim")
# config.sampling names of the reference -> sampler option names
OPTION_ALIASES = {"n_steps_each": "n_steps", "noise_removal": "denoise"}
# config.sampling keys that are not sampler options
_SAMPLING_NON_OPTIONS = {"method", "num_samples", "batch_size", "class_label", "guidance_scale"}
_PC_SCHEMA_KEYS = {"predictor", "corrector", "snr", "n_steps_each", "noise_removal",
                   "probability_flow"}
# keyword-only parameters of a sampler that the config never sets (traced inputs, layout)
_NOT_CONFIG_OPTIONS = {"project", "inputs", "path", "x_init", "dtype", "sharding"}
# model keys read by get_model / the builders beyond the networks' dataclass fields
_MODEL_EXTRA_KEYS = {"name", "ema_rate", "normalization", "interpolation", "attention_type",
                     "conv_size", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales",
                     "fourier_scale", "embedding_type", "dropout", "num_classes", "dtype", "remat",
                     "normalization_type"}
_OPTIM_EXTRA_KEYS = {"amsgrad"}
# Classes of the datasets with labels (labels outside [0, num_classes) are refused).
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

    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.embedding_type = "fourier"
    model.num_classes = placeholder(int)  # class-conditional network; label num_classes = null

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

    # objective "distill" (score_jax.distill): a few-step student of a trained teacher
    config.distill = distill_base_config()

    config.seed = 42
    return config


def distill_base_config() -> ml_collections.ConfigDict:
    """``config.distill`` (objective "distill", ``score_jax.distill``): method "cd" | "ct" | "pd";
    the teacher (a workdir of the project, or a converted checkpoint, trained with objective
    ``teacher_objective`` on this config's network and SDE); the student starts from the teacher's
    EMA weights (``init_from_teacher``, CM / ECT / PD). CD: ``num_scales`` N, teacher ODE
    ``solver``, ``metric`` (None: "l2"; "pseudo_huber"), ``target`` "ema" (theta^- = EMA at
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
    keys["optim"] |= _OPTIM_EXTRA_KEYS
    return keys


# ----------------------------------------------------------------------------------------------
# Config -> objects
# ----------------------------------------------------------------------------------------------
def sde_from_config(config):
    """The forward SDE of ``config.training.sde`` with the model's noise parameters."""
    m = config.model
    name = config.training.sde.lower()
    if name in ("vpsde", "subvpsde"):
        return sde_lib.get_sde(name, beta_min=float(m.beta_min), beta_max=float(m.beta_max),
                               N=int(m.num_scales))
    if name == "vesde":
        return sde_lib.get_sde(name, sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max),
                               N=int(m.num_scales))
    raise ValueError(f"training.sde={config.training.sde!r} unknown; valid: {sorted(sde_lib.SDES)}")


def model_from_config(config) -> nn.Module:
    """``models.get_model(config.model, image_size, num_channels, centered)``."""
    from score_jax import models

    return models.get_model(config.model, image_size=config.data.image_size,
                            num_channels=config.data.num_channels,
                            centered=config.data.centered)


def optimizer_from_config(config) -> tuple[optax.GradientTransformation, Callable]:
    """``train_step.make_optimizer`` with ``config.optim``; returns ``(tx, schedule)``."""
    o = config.optim
    return ts.make_optimizer(lr=float(o.lr), beta1=float(o.beta1), eps=float(o.eps),
                             warmup=int(o.warmup), grad_clip=float(o.grad_clip),
                             weight_decay=float(o.weight_decay), optimizer=o.optimizer,
                             lr_decay=o.get("lr_decay", "constant"),
                             decay_steps=int(config.training.n_iters))


def scaled_loss_fn(loss_fn: Callable, centered: bool) -> Callable:
    """``loss_fn`` on batches in [0, 1], scaled to the model's range first (2x - 1 if
    ``centered``; reference ``scaler`` in ``train_step``)."""
    scaler = data_lib.get_data_scaler(centered)

    def fn(variables, batch, key):
        if isinstance(batch, dict):
            batch = dict(batch, image=scaler(batch["image"]))
        else:
            batch = scaler(batch)
        return loss_fn(variables, batch, key)

    return fn


def dataset_from_config(config, split: str, *, batch_size: int, training: bool,
                        uniform_dequantization: bool | None = None):
    """The pipeline of ``split`` of ``config.data`` with this process's share
    (``batch_size // process_count``) of the global ``batch_size``; random flips only when
    ``training``. ``uniform_dequantization`` defaults to ``data.uniform_dequantization``."""
    d = config.data
    deq = d.uniform_dequantization if uniform_dequantization is None else uniform_dequantization
    return data_lib.get_dataset(d.dataset, split=split,
                                batch_size=int(batch_size) // jax.process_count(),
                                image_size=d.image_size, training=training,
                                random_flip=bool(d.random_flip) and training,
                                uniform_dequantization=bool(deq), seed=int(config.seed),
                                category=d.get("category"), data_dir=d.get("data_dir"),
                                tfrecords_path=d.get("tfrecords_path"),
                                num_channels=d.num_channels)


def eval_split(config) -> str:
    """The evaluation split of ``config.data.dataset``: "validation" for CelebA, else "test"."""
    return "validation" if config.data.dataset.upper() == "CELEBA" else "test"


def objective_from_config(config) -> str:
    """``config.training.objective`` ("score" if absent); unknown names raise ValueError."""
    objective = config.training.get("objective", "score")
    if objective not in OBJECTIVES:
        raise ValueError(f"config.training.objective={objective!r} unknown; valid choices: "
                         f"{list(OBJECTIVES)}")
    return objective


def flow_path_from_config(config, sde):
    """The probability path of a flow-matching config: ``flow.CondOTPath()`` for
    ``training.flow_path="condot"``, ``flow.SDEPath(sde)`` (the SDE's Gaussian path in flow
    time) for "sde"; unknown names raise ValueError listing ``flow.PATHS``."""
    name = config.training.get("flow_path", "condot")
    if name not in flow.PATHS:
        raise ValueError(f"config.training.flow_path={name!r} unknown; valid choices: "
                         f"{sorted(flow.PATHS)}")
    return flow.get_path(name, sde=sde) if name == "sde" else flow.get_path(name)


def precond_from_config(config, sde):
    """The EDM preconditioning of objective "edm" (``edm.precond_for_sde(training.precond, sde,
    sigma_data=training.sigma_data)``), the student's of objective "distill"
    (``distill.student_precond``); None for the other objectives."""
    objective = objective_from_config(config)
    t = config.training
    if objective == "distill":
        return distill_lib.student_precond(config.distill.method, sde,
                                           sigma_data=float(t.sigma_data))
    if objective != "edm":
        return None
    return edm.precond_for_sde(t.precond, sde, sigma_data=float(t.sigma_data))


def _edm_log_label(config) -> bool:
    # NCSN++ with Fourier features takes log(label) itself; EDM feeds c_noise = ln(sigma) / 4
    return config.model.get("embedding_type") == "fourier"


def score_fn_factory(config, sde, model) -> Callable:
    """``make(params, model_kwargs=None) -> score_fn(x, t)`` of the trained network on ``sde``:
    the reference wiring ``score.get_score_fn`` (objective "score"), or the EDM denoiser's score
    (a D(x / a; s / a) - x) / s^2 (objective "edm", ``edm.get_edm_score_fn``). Usable inside jit
    (params traced). Flow-matching models have a velocity, not a score: None."""
    objective = objective_from_config(config)
    if objective in ("flow_matching", latent_lib.OBJECTIVE):
        return None
    if objective in ("edm", "distill"):
        precond, log_label = precond_from_config(config, sde), _edm_log_label(config)

        def make(params, model_kwargs=None):
            return edm.get_edm_score_fn(sde, model, {"params": params}, precond,
                                        log_label=log_label, model_kwargs=model_kwargs)
        return make
    continuous = bool(config.training.continuous)

    def make(params, model_kwargs=None):
        return score_lib.get_score_fn(sde, model, {"params": params}, continuous=continuous,
                                      model_kwargs=model_kwargs)
    return make


def label_dropout_from_config(config) -> float:
    """``training.label_dropout``; None (unset) means `DEFAULT_LABEL_DROPOUT` (0.1) for a
    class-conditional model (``model.num_classes`` set) and 0 otherwise. An explicit 0.0 is
    kept (a conditional model that cannot be guided)."""
    value = config.training.get("label_dropout")
    if value is None:
        return DEFAULT_LABEL_DROPOUT if config.model.get("num_classes") is not None else 0.0
    return float(value)


def guidance_scale_from_config(config) -> float | None:
    """``sampling.guidance_scale`` w of classifier-free guidance (None: plain conditional)."""
    w = config.sampling.get("guidance_scale")
    return None if w is None else float(w)


def distill_loss_from_config(config, sde, model, *, train: bool, teacher: Callable | None
                             ) -> Callable:
    """Objective "distill": ``distill.get_distill_loss_fn`` with ``config.distill``'s keys and
    ``teacher`` (the teacher's denoiser, loaded by ``train_lib.load_teacher``). Without a teacher
    the cd / pd loss raises ValueError when called (a config built only to sample the student)."""
    d, t = config.distill, config.training
    kwargs = dict(train=train, sigma_data=float(t.sigma_data), log_label=_edm_log_label(config),
                  total_steps=int(t.n_iters), num_scales=int(d.num_scales), rho=float(d.rho),
                  solver=d.solver, metric=d.get("metric"), target=d.target, ct_s0=int(d.ct_s0),
                  ct_s1=int(d.ct_s1), ct_p_mean=float(d.ct_p_mean), ct_p_std=float(d.ct_p_std),
                  pd_num_steps=d.get("pd_num_steps"))
    if teacher is None and d.method != "ct":
        def no_teacher(variables, batch, key):
            raise ValueError(f"distillation method {d.method!r} needs a teacher: set "
                             f"distill.teacher_workdir or distill.teacher_checkpoint (train.py "
                             f"loads it)")
        return no_teacher
    return distill_lib.get_distill_loss_fn(d.method, model, sde, teacher=teacher, **kwargs)


def loss_fn_from_config(config, sde, model, *, train: bool,
                        teacher: Callable | None = None) -> Callable:
    """The training objective of ``config`` on data batches in [0, 1] (scaled inside).

    ``training.objective="score"``: denoising score matching (``losses.get_loss_fn``);
    "flow_matching": conditional flow matching (``flow.get_flow_loss_fn``, Lipman et al. 2023
    eq. 9) on ``flow_path_from_config`` with t ~ U(0, ``training.flow_t_max``). With
    ``model.num_classes`` set, labels are dropped to the null label with probability
    ``training.label_dropout`` (training only).
    """
    t = config.training
    num_classes = config.model.get("num_classes")
    dropout = label_dropout_from_config(config) if train else 0.0
    objective = objective_from_config(config)
    if objective == latent_lib.OBJECTIVE:
        fn = latent_lib.autoencoder_objective(model, kl_weight=float(t.kl_weight),
                                              reconstruction=t.reconstruction, train=train)
    elif objective == "edm":
        fn = edm.get_edm_loss_fn(model, precond_from_config(config, sde), train=train,
                                 reduce_mean=bool(t.reduce_mean), p_mean=float(t.p_mean),
                                 p_std=float(t.p_std), log_label=_edm_log_label(config),
                                 num_classes=num_classes, label_dropout=dropout)
    elif objective == "distill":
        fn = distill_loss_from_config(config, sde, model, train=train, teacher=teacher)
    elif objective == "flow_matching":
        fn = flow.get_flow_loss_fn(model, flow_path_from_config(config, sde), train=train,
                                   reduce_mean=bool(t.reduce_mean),
                                   t_max=float(t.get("flow_t_max", 1.0)),
                                   num_classes=num_classes, label_dropout=dropout)
    else:
        fn = losses.get_loss_fn(sde, model, train=train, continuous=bool(t.continuous),
                                reduce_mean=bool(t.reduce_mean),
                                likelihood_weighting=bool(t.likelihood_weighting),
                                num_classes=num_classes, label_dropout=dropout)
    return scaled_loss_fn(fn, bool(config.data.centered))


def _sampler_fn(method: str) -> Callable:
    return flow.flow_sample if method == FLOW_METHOD else sampling.METHODS[method]


def method_options(method: str) -> dict[str, inspect.Parameter]:
    """The options a config may set for ``method``: the keyword-only parameters of its sampler
    (``sampling.method_options(method)``, or those of ``flow.flow_sample`` for "flow")."""
    if method != FLOW_METHOD:
        return sampling.method_options(method)
    params = inspect.signature(_sampler_fn(method)).parameters
    return {k: p for k, p in params.items()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and k not in _NOT_CONFIG_OPTIONS}


def config_methods() -> list[str]:
    """The valid ``config.sampling.method`` names: every ``sampling.METHODS`` entry that needs no
    traced ``inputs`` (so not inpaint / colorize, which need data and masks), and "flow"."""
    out = []
    for name, fn in sampling.METHODS.items():
        p = inspect.signature(fn).parameters.get("inputs")
        if p is None or p.default is not inspect.Parameter.empty:
            out.append(name)
    return out + [FLOW_METHOD]


def sampling_methods() -> list[str]:
    """Alias of `config_methods` (the valid ``config.sampling.method`` names)."""
    return config_methods()


_GENERIC_SAMPLING_OPTIONS = ("num_steps", "eps", "denoise")


def _set_method_option(key: str, value, schema) -> bool:
    """Whether ``config.sampling.key = value`` is a method option someone set: a schema
    placeholder (default None) with a value, or one of pc's keys, which every config carries,
    away from its schema default. Such a key is reset by `set_sampler` and refused by
    `sampling_options_from_config` when the method does not take it (rtol / atol also set the
    likelihood's tolerances, so they are never either)."""
    return key in schema and value is not None and (
        schema[key] is None or (key in _PC_SCHEMA_KEYS and value != schema[key]))


def set_sampler(config, method: str, *, keep=(), reset_tuning: bool = False,
                **options) -> list[str]:
    """Switch ``config.sampling`` to ``method`` in place and return the keys that were reset.

    1. Every option key set for the previous method that ``method`` does not take (a schema
       placeholder with a value, or one of pc's keys away from its default:
       `_set_method_option`) goes back to its schema default.
    2. With ``reset_tuning``, the set placeholder options that ``method`` does take go back to
       None as well (a grid, an order, ... chosen for the previous method), so that ``method``
       runs with its own defaults; ``num_steps``, ``eps`` and ``denoise`` are kept.
    3. Keys in ``keep`` are never reset (e.g. given on the command line: validation then reports
       them if ``method`` does not take them).
    4. ``options`` are set last (e.g. a flow variant of a config whose Heun sampler set ``rho``).

    Raises:
      ValueError: unknown method (valid choices listed), or an option ``method`` does not take.
    """
    method = method.lower()
    valid = config_methods()
    if method not in valid:
        raise ValueError(f"config.sampling.method={method!r} unknown; valid choices: {valid}")
    accepted = method_options(method)
    bad = sorted(k for k in options if OPTION_ALIASES.get(k, k) not in accepted)
    if bad:
        raise ValueError(f"{bad} are not options of method {method!r}; its options: "
                         f"{sorted(accepted)}")
    schema = base_config().sampling
    s = config.sampling
    cleared = []
    for key in list(s.keys()):
        if key in keep or key in _SAMPLING_NON_OPTIONS or not _set_method_option(key, s[key],
                                                                                  schema):
            continue
        name = OPTION_ALIASES.get(key, key)
        if name not in accepted or (reset_tuning and schema[key] is None
                                    and name not in _GENERIC_SAMPLING_OPTIONS):
            s[key] = schema[key]
            cleared.append(key)
    s.method = method
    for key, value in options.items():
        s[key] = value
    return cleared


def sampling_options_from_config(sampling_config) -> tuple[str, dict]:
    """Map ``config.sampling`` to ``(method, options)`` for ``sampling.sample(method=...,
    **options)`` (or ``flow.flow_sample(**options)`` for "flow"): the ONE place.

    The options are the keys of ``config.sampling`` (through ``OPTION_ALIASES``) that are
    keyword-only parameters of the method's sampler; None values are left to the sampler's
    defaults. String options of pc (predictor, corrector) are lower-cased.

    Raises:
      ValueError: unknown method (valid choices listed), or a set (non-None) key that is an
        option of no sampler, or an option the chosen method does not take set to anything but
        its schema default (e.g. ``sampling.eta`` with method "pc", ``sampling.snr=0.2`` with
        method "heun").
    """
    s = sampling_config
    method = s.method.lower()
    valid = config_methods()
    if method not in valid:
        raise ValueError(f"config.sampling.method={s.method!r} unknown; valid choices: {valid}")
    accepted = method_options(method)
    schema = base_config().sampling
    opts = {}
    for key, value in s.items():
        if key in _SAMPLING_NON_OPTIONS or value is None:
            continue
        name = OPTION_ALIASES.get(key, key)
        if name not in accepted:
            if _set_method_option(key, value, schema):  # it would be ignored silently
                raise ValueError(f"config.sampling.{key}={value!r} is not an option of method "
                                 f"{method!r}; its options: {sorted(accepted)}")
            continue
        if isinstance(value, str) and name in ("predictor", "corrector"):
            value = value.lower()
        opts[name] = value
    return method, opts


# ----------------------------------------------------------------------------------------------
# Validation: fails before any compilation, naming the value and the valid choices
# ----------------------------------------------------------------------------------------------
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _pos_int(path: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    _need(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0,
          f"config.{path}={v!r} must be a positive integer")


def _validate_keys(config) -> None:
    top = set(SECTIONS) | {"seed", "latent", "distill"}
    for k in config.keys():
        _need(k in top, f"config.{k} is not a known config section; valid: {sorted(top)}")
    valid_distill = set(distill_base_config().keys())
    for k in config.get("distill", {}).keys():
        _need(k in valid_distill, f"config.distill.{k} is not a known key; valid keys of "
                                  f"config.distill: {sorted(valid_distill)}")
    for sec, valid in known_keys().items():
        for k in config[sec].keys():
            _need(k in valid, f"config.{sec}.{k} is not a known key; valid keys of "
                              f"config.{sec}: {sorted(valid)}")


def _validate_flow_sampler(options: dict) -> None:
    """Option values of the flow sampler (the score samplers are checked by
    ``sampling.validate_options``)."""
    solver = options.get("solver", "heun")
    valid = list(flow.FLOW_SOLVERS) + list(flow.FLOW_SDE_SOLVERS)
    _need(solver in valid, f"config.sampling.solver={solver!r} unknown for method 'flow'; valid "
                           f"choices: {valid}")
    _need(options.get("sigma") is None or solver in flow.FLOW_SDE_SOLVERS,
          f"config.sampling.sigma={options.get('sigma')!r} needs an SDE solver for method 'flow' "
          f"(the ODE has no noise); valid choices: {list(flow.FLOW_SDE_SOLVERS)}")
    _need(solver != "euler" or options.get("num_steps") is not None,
          "config.sampling.solver='euler' with method 'flow' needs sampling.num_steps (it "
          "has no error estimate for adaptive steps)")


def _validate_labels(config) -> None:
    nc = config.model.get("num_classes")
    s = config.sampling
    if nc is None:
        _need(s.get("class_label") is None,
              f"config.sampling.class_label={s.class_label!r} needs a class-conditional model "
              f"(config.model.num_classes)")
        _need(s.get("guidance_scale") is None,
              f"config.sampling.guidance_scale={s.guidance_scale!r} needs a class-conditional "
              f"model (config.model.num_classes)")
        return
    _pos_int("model.num_classes", nc)
    dataset = config.data.dataset.upper()
    have = DATASET_NUM_CLASSES.get(dataset)
    _need(have is None or nc >= have,
          f"config.model.num_classes={nc} is smaller than the {have} classes of "
          f"data.dataset={config.data.dataset!r} (labels 0..{have - 1 if have else 0}); label "
          f"{nc} would be the null (unconditional) row. Valid: num_classes >= {have}")
    drop = label_dropout_from_config(config)
    _need(0.0 <= drop < 1.0, f"config.training.label_dropout={drop!r} must be in [0, 1)")
    m = config.model
    null_needed = drop > 0 or s.get("guidance_scale") is not None or s.get("class_label") == nc
    from score_jax import models  # lazy, as in validate_config

    dit_prob = m.get("class_dropout_prob", models.DiT.class_dropout_prob)
    _need(m.get("name") != "dit" or not null_needed or float(dit_prob) > 0,
          f"config.model.class_dropout_prob={m.get('class_dropout_prob')!r} gives the DiT no "
          f"null-label row, which training.label_dropout={drop!r} / guidance / class_label={nc} "
          f"use; set it > 0 (it only creates the row; labels are dropped by "
          f"training.label_dropout)")
    _validate_guidance(config)
    label = s.get("class_label")
    _need(label is None or 0 <= label <= nc,
          f"config.sampling.class_label={label!r} invalid; valid: 0..{nc - 1}, or {nc} (the "
          f"null label, unconditional), or None (uniform over the classes)")


def _validate_guidance(config) -> None:
    w = config.sampling.get("guidance_scale")
    if w is None:
        return
    _need(isinstance(w, int | float) and not isinstance(w, bool) and np.isfinite(w),
          f"config.sampling.guidance_scale={w!r} must be a finite number (0: unconditional, "
          f"1: conditional, > 1: guided) or None (plain conditional)")
    label = config.sampling.get("class_label")
    _need(label is None or label != config.model.num_classes,
          f"config.sampling.class_label={label} is the null label: guidance_scale={w} has "
          f"nothing to guide; valid: a class 0..{config.model.num_classes - 1}, or "
          f"guidance_scale=None")


def validate_config(config, *, num_devices: int | None = None) -> None:
    """Check keys and values of a training / sampling config; raise ValueError naming the bad
    key or value and the valid choices. Runs before anything is built or compiled, and needs no
    ``configs/`` folder (the schema is `base_config`)."""
    from score_jax import models

    _validate_keys(config)
    t, s, d, m, o = config.training, config.sampling, config.data, config.model, config.optim
    for k in ("batch_size", "n_iters", "snapshot_freq", "log_freq", "eval_freq",
              "snapshot_freq_for_preemption"):
        _pos_int(f"training.{k}", t[k])
    _need(t.sde.lower() in sde_lib.SDES,
          f"config.training.sde={t.sde!r} unknown; valid choices: {sorted(sde_lib.SDES)}")
    _need(t.continuous or t.sde.lower() != "subvpsde",
          "config.training.continuous=False is invalid with sde='subvpsde' (sub-VP has no "
          "discrete objective); valid: continuous=True, or sde in ['vesde', 'vpsde']")
    ndev = jax.device_count() if num_devices is None else num_devices
    if t.get("num_devices") is not None:
        _need(1 <= t.num_devices <= jax.device_count(),
              f"config.training.num_devices={t.num_devices} is invalid; valid: "
              f"1..{jax.device_count()}")
        ndev = t.num_devices
    _need(t.batch_size % ndev == 0,
          f"config.training.batch_size={t.batch_size} is not divisible by the number of devices "
          f"{ndev}; valid choices are multiples of {ndev}")
    _pos_int("eval.batch_size", config.eval.batch_size)
    _need(config.eval.batch_size % ndev == 0,
          f"config.eval.batch_size={config.eval.batch_size} is not divisible by the number of "
          f"devices {ndev}; valid choices are multiples of {ndev}")
    _pos_int("sampling.num_samples", s.num_samples)
    _pos_int("sampling.batch_size", s.get("batch_size"), allow_none=True)
    _pos_int("sampling.num_steps", s.get("num_steps"), allow_none=True)
    objective = t.get("objective", "score")
    _need(objective in OBJECTIVES, f"config.training.objective={objective!r} unknown; valid "
                                   f"choices: {list(OBJECTIVES)}")
    if objective == "distill":
        distill_lib.objective.check_method(config.distill.method)
        _need(config.distill.method != "pd" or config.distill.get("pd_num_steps"),
              "config.distill.method='pd' needs distill.pd_num_steps (the student's steps)")
    flow_model = objective == "flow_matching"
    if flow_model:
        _need(t.get("flow_path", "condot") in flow.PATHS,
              f"config.training.flow_path={t.get('flow_path')!r} unknown; valid choices: "
              f"{sorted(flow.PATHS)}")
        t_max = t.get("flow_t_max", 1.0)
        _need(isinstance(t_max, int | float) and 0.0 < t_max <= 1.0,
              f"config.training.flow_t_max={t_max!r} must be in (0, 1]")
    method = s.method.lower()
    _need(method in config_methods(),
          f"config.sampling.method={s.method!r} unknown; valid choices: {config_methods()}"
          + (f" (inpaint / colorize need data and a mask: call {sampling.MOVED[method]} from "
             "Python)" if method in sampling.MOVED else ""))
    if flow_model:
        _need(method == FLOW_METHOD,
              f"config.sampling.method={s.method!r} cannot sample a flow-matching model (the "
              f"network predicts a velocity, not a score); valid choices: ['flow']")
    else:
        _need(method != FLOW_METHOD,
              "config.sampling.method='flow' needs training.objective='flow_matching' (the "
              f"network of objective {objective!r} predicts a score); valid choices: "
              f"{config_methods()[:-1]}")
    _, options = sampling_options_from_config(s)
    if method == FLOW_METHOD:
        _validate_flow_sampler(options)
    else:
        sampling.validate_options(method, sde_from_config(config), options)
    _need(d.dataset.upper() in data_lib.DATASETS,
          f"config.data.dataset={d.dataset!r} unknown; valid choices: {list(data_lib.DATASETS)}")
    _pos_int("data.image_size", d.image_size)
    _need(d.num_channels in (1, 3), f"config.data.num_channels={d.num_channels!r} invalid; "
                                    "valid choices: [1, 3]")
    _need(m.get("name") in models.MODELS,
          f"config.model.name={m.get('name')!r} unknown; valid choices: {sorted(models.MODELS)}")
    _need(0.0 <= float(m.ema_rate) < 1.0 if m.get("ema_rate") is not None else False,
          f"config.model.ema_rate={m.get('ema_rate')!r} must be in [0, 1)")
    _pos_int("model.num_scales", m.num_scales)
    _validate_labels(config)
    _need(o.optimizer in ts.OPTIMIZERS,
          f"config.optim.optimizer={o.optimizer!r} unknown; valid choices: {list(ts.OPTIMIZERS)}")
    _need(not o.get("amsgrad", False), "config.optim.amsgrad=True is not supported; valid: False")
    _need(float(o.lr) > 0, f"config.optim.lr={o.lr!r} must be > 0")
    _need(int(o.warmup) >= 0, f"config.optim.warmup={o.warmup!r} must be >= 0")
    _need(o.get("lr_decay", "constant") in ts.LR_DECAYS,
          f"config.optim.lr_decay={o.get('lr_decay')!r} unknown; valid choices: "
          f"{list(ts.LR_DECAYS)}")
    _need(o.get("lr_decay", "constant") == "constant"
          or int(config.training.n_iters) > int(o.warmup),
          f"config.optim.lr_decay={o.get('lr_decay')!r} decays to 0 at training.n_iters="
          f"{config.training.n_iters}, which must exceed optim.warmup={o.warmup}")
    latent_lib.validate(config)


# ----------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------
class Built(NamedTuple):
    """Everything a run needs, built once from a config (`build`); no config below this."""

    mesh: jax.sharding.Mesh
    sde: Any
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: Callable
    image_shape: tuple[int, int, int]  # (H, W, C)
    init: Callable  # jitted key -> TrainState (replicated)
    abstract_state: Any  # shape-only TrainState that orbax restores into
    train_loss: Callable  # (variables, batch, key) -> (loss, aux), batches in [0, 1]
    eval_loss: Callable
    train_step: Callable  # jitted (state, global batch, key) -> (state, metrics)
    eval_step: Callable  # jitted (state, global batch, key) -> loss
    ema_rate: float
    objective: str  # "score", "flow_matching" or "edm"
    method: str  # sampling method ("flow" for flow models)
    options: dict  # sampler options
    flow_path: Any  # the flow's probability path, None for score models
    continuous: bool
    centered: bool
    num_classes: int | None
    class_label: int | None
    make_score_fn: Callable | None  # (params, model_kwargs=None) -> score_fn; None for flows
    guidance_scale: float | None = None  # classifier-free guidance w (None: conditional)
    latent: Any = None  # latent_lib.LatentSpace of a latent diffusion model (stage 2), or None


def build(config, *, mesh=None, model: nn.Module | None = None,
          teacher: Callable | None = None) -> Built:
    """Validate ``config`` (before any compilation), then build every object of a run.

    Args:
      mesh: the device mesh (default ``parallel.make_mesh(training.num_devices)``).
      model: replaces the config's network (tests, notebooks).
      teacher: objective "distill": the teacher's denoiser (``train_lib.load_teacher``).

    Raises:
      ValueError: invalid config, naming the value and the valid choices.
    """
    mesh = mesh or parallel.make_mesh(config.training.get("num_devices"))
    validate_config(config, num_devices=mesh.devices.size)
    parallel.check_batch_size(config.training.batch_size, mesh)
    parallel.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
    sde = sde_from_config(config)
    space = latent_lib.latent_space_from_config(config, mesh) if latent_lib.is_latent(config) \
        else None
    if model is None:
        model = model_from_config(config) if space is None else _latent_model(config, space)
    tx, schedule = optimizer_from_config(config)
    d, t = config.data, config.training
    shape = (int(d.image_size), int(d.image_size), int(d.num_channels))
    num_classes = config.model.get("num_classes")
    if objective_from_config(config) == latent_lib.OBJECTIVE:
        init, abstract = latent_lib.jit_autoencoder_init(model, tx, shape, mesh)
    else:
        shape = space.latent_shape if space is not None else shape
        init, abstract = ts.jit_init(model, tx, shape, mesh, num_classes=num_classes)
    if space is not None:  # latents: encoded on the fly, no [0, 1] -> [-1, 1] scaling
        unscaled = config.copy_and_resolve_references()
        unscaled.data.centered = False
        train_loss = latent_lib.encoded_loss_fn(
            loss_fn_from_config(unscaled, sde, model, train=True), space)
        eval_loss = latent_lib.encoded_loss_fn(
            loss_fn_from_config(unscaled, sde, model, train=False), space)
    else:
        train_loss = loss_fn_from_config(config, sde, model, train=True, teacher=teacher)
        eval_loss = loss_fn_from_config(config, sde, model, train=False, teacher=teacher)
    ema_rate = float(config.model.ema_rate)
    state_inputs = objective_from_config(config) == "distill"  # target network, step
    method, options = sampling_options_from_config(config.sampling)
    objective = objective_from_config(config)
    path = flow_path_from_config(config, sde) if objective == "flow_matching" else None
    return Built(mesh=mesh, sde=sde, model=model, tx=tx, schedule=schedule, image_shape=shape,
                 init=init, abstract_state=abstract, train_loss=train_loss, eval_loss=eval_loss,
                 train_step=ts.jit_train_step(train_loss, tx, schedule, ema_rate, mesh,
                                              state_inputs=state_inputs),
                 eval_step=ts.jit_eval_step(eval_loss, mesh, state_inputs=state_inputs),
                 ema_rate=ema_rate,
                 objective=objective, method=method, options=options, flow_path=path,
                 continuous=bool(t.continuous),
                 centered=bool(d.centered) or space is not None,  # decoded latents: [-1, 1]
                 num_classes=num_classes, class_label=config.sampling.get("class_label"),
                 make_score_fn=score_fn_factory(config, sde, model),
                 guidance_scale=guidance_scale_from_config(config), latent=space)


def _latent_model(config, space) -> nn.Module:
    """The diffusion network of a latent model: input (h, w, latent_channels) = the latent
    shape, no [0, 1] -> [-1, 1] shift inside (latents are centred)."""
    from score_jax import models

    h, _, c = space.latent_shape
    return models.get_model(config.model, image_size=h, num_channels=c, centered=True)


__all__ = [
    "LIKELIHOOD_EPS", "FLOW_METHOD", "OBJECTIVES", "OPTION_ALIASES", "DATASET_NUM_CLASSES",
    "base_config", "known_keys", "sde_from_config", "model_from_config", "optimizer_from_config",
    "scaled_loss_fn", "dataset_from_config", "eval_split", "objective_from_config",
    "flow_path_from_config", "precond_from_config", "score_fn_factory", "loss_fn_from_config",
    "distill_base_config", "distill_loss_from_config",
    "DEFAULT_LABEL_DROPOUT", "label_dropout_from_config", "guidance_scale_from_config",
    "method_options", "config_methods", "sampling_methods", "sampling_options_from_config",
    "validate_config", "Built", "build",
]
