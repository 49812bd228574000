"""Training objectives: a registry of small records (`Objective`) instead of string tests.

Each objective declares, in one place, what the rest of the project asks of it:

- ``loss(config, sde, model, *, train, num_classes, label_dropout)``: the loss function
  ``(variables, batch, key) -> (loss, aux)`` on batches in the model's range (the [0, 1] ->
  [-1, 1] scaling of ``data.centered`` is applied by `loss_fn_from_config`);
- ``score(config, sde, model)``: ``make(params, model_kwargs=None) -> score_fn(x, t)``, the
  wiring of the trained network into a score on ``sde``; None when the network has no score
  (a velocity field, an autoencoder);
- ``sampler``: which samplers apply: "score" (every ``sampling.METHODS`` entry through the
  score), "flow" (``flow.flow_sample``, ``config.sampling.method="flow"``) or None (nothing to
  sample: the autoencoder of latent diffusion);
- ``bpd``: whether bits/dim apply (the likelihood ODE of the score / the velocity);
- ``model_name``: the network the objective needs (None: any network of ``models.MODELS``);
- ``init(model, tx, image_shape, mesh, *, num_classes, min_shard_size) -> (init_fn(key),
  abstract_state)``: how the train state is initialised (None: ``train_step.jit_init``, a network
  called as ``(x, labels, *, train)``; the autoencoder's ``init(key, x)`` takes no labels);
- ``frozen(config) -> {name: weights} | None``: pretrained weights the loss reads and does not
  train (a frozen text encoder), as ``variables["frozen"][name]``. ``config.build`` passes them to
  the jitted train / eval steps as their ``frozen`` argument (FSDP-sharded like the parameters,
  not constants of the compiled step, not in the train state) and to the score wiring as
  ``score(config, sde, model, frozen=...)`` (the same placed arrays).

Adding an objective (e.g. consistency distillation) is one `register_objective` call; a
config then names it with ``training.objective``. ``config.training`` keys it reads must be in
the schema (`schema.base_config`) or added to it by its module.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from score_jax import edm, flow, losses
from score_jax import latent as latent_lib
from score_jax import score as score_lib
from score_jax.config.builders import label_dropout_from_config, scaled_loss_fn


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective (see the module docstring for each field)."""

    name: str
    loss: Callable
    score: Callable | None = None
    sampler: str | None = "score"
    bpd: bool = True
    model_name: str | None = None
    description: str = ""
    precond: Callable | None = None  # (config, sde) -> EDM-style preconditioning, or None
    state_inputs: bool = False  # the loss reads the EMA parameters and the step (distillation)
    uses_teacher: bool = False  # the loss builder takes ``teacher=`` (train_lib.load_teacher)
    init: Callable | None = None  # the train-state initialiser (None: train_step.jit_init)
    frozen: Callable | None = None  # config -> {name: weights} the loss reads (variables["frozen"])

    def __post_init__(self):
        if self.sampler not in SAMPLER_KINDS:
            raise ValueError(f"Objective {self.name!r}: sampler={self.sampler!r} unknown; valid "
                             f"choices: {list(SAMPLER_KINDS)}")


SAMPLER_KINDS = ("score", "flow", None)
OBJECTIVE_SPECS: dict[str, Objective] = {}


def register_objective(spec: Objective, *, replace: bool = False) -> Objective:
    """Add ``spec`` to `OBJECTIVE_SPECS` (``training.objective=spec.name`` then builds it).

    Raises:
      ValueError: the name is taken (pass ``replace=True`` to override on purpose).
    """
    if spec.name in OBJECTIVE_SPECS and not replace:
        raise ValueError(f"objective {spec.name!r} is already registered; registered: "
                         f"{sorted(OBJECTIVE_SPECS)}")
    OBJECTIVE_SPECS[spec.name] = spec
    return spec


def objective_from_config(config) -> str:
    """``config.training.objective`` ("score" if absent); unknown names raise ValueError."""
    objective = config.training.get("objective", "score")
    if objective not in OBJECTIVE_SPECS:
        raise ValueError(f"config.training.objective={objective!r} unknown; valid choices: "
                         f"{list(OBJECTIVE_SPECS)}")
    return objective


def objective_spec(config) -> Objective:
    """The `Objective` record of ``config.training.objective``."""
    return OBJECTIVE_SPECS[objective_from_config(config)]


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
    """The objective's preconditioning (its record's ``precond``): EDM's for "edm"
    (``edm.precond_for_sde(training.precond, sde, sigma_data=training.sigma_data)``), the
    student's for "distill" (``distill.student_precond``); None for the other objectives."""
    spec = objective_spec(config)
    return None if spec.precond is None else spec.precond(config, sde)


def _edm_log_label(config) -> bool:
    # NCSN++ with Fourier features takes log(label) itself; EDM feeds c_noise = ln(sigma) / 4
    return config.model.get("embedding_type") == "fourier"


def score_fn_factory(config, sde, model, *, frozen: dict | None = None) -> Callable | None:
    """``make(params, model_kwargs=None) -> score_fn(x, t)`` of the trained network on ``sde``
    (the objective's ``score`` wiring): the reference wiring ``score.get_score_fn`` (objective
    "score"), or the EDM denoiser's score (a D(x / a; s / a) - x) / s^2 (objective "edm",
    ``edm.get_edm_score_fn``). Usable inside jit (params traced). Flow-matching models have a
    velocity, not a score, and an autoencoder has neither: None. ``frozen``: the placed frozen
    weights (``config.build``'s) handed to an objective that declares ``frozen``; None: it loads
    its own."""
    spec = objective_spec(config)
    if spec.score is None:
        return None
    if spec.frozen is not None:
        return spec.score(config, sde, model, frozen=frozen)
    return spec.score(config, sde, model)


def frozen_from_config(config) -> dict | None:
    """The objective's own frozen weights (its record's ``frozen``: e.g. a pretrained text
    encoder, ``{"text_encoder": variables}``), or None."""
    spec = objective_spec(config)
    return None if spec.frozen is None else spec.frozen(config)


def loss_fn_from_config(config, sde, model, *, train: bool,
                        teacher: Callable | None = None) -> Callable:
    """The training objective of ``config`` on data batches in [0, 1] (scaled inside).

    ``training.objective="score"``: denoising score matching (``losses.get_loss_fn``);
    "flow_matching": conditional flow matching (``flow.get_flow_loss_fn``, Lipman et al. 2023
    eq. 9) on ``flow_path_from_config`` with t ~ U(0, ``training.flow_t_max``); "edm": EDM's
    loss; "autoencoder": stage 1 of latent diffusion; a registered objective: its ``loss``. With
    ``model.num_classes`` set, labels are dropped to the null label with probability
    ``training.label_dropout`` (training only). ``teacher``: the teacher's denoiser of an
    objective that declares ``uses_teacher`` ("distill"; ``train_lib.load_teacher``).
    """
    spec = objective_spec(config)
    dropout = label_dropout_from_config(config) if train else 0.0
    extra = {"teacher": teacher} if spec.uses_teacher else {}
    fn = spec.loss(config, sde, model, train=train, num_classes=config.model.get("num_classes"),
                   label_dropout=dropout, **extra)
    return scaled_loss_fn(fn, bool(config.data.centered))


# ----------------------------------------------------------------------------------------------
# The built-in objectives
# ----------------------------------------------------------------------------------------------
def _score_loss(config, sde, model, *, train, num_classes, label_dropout):
    t = config.training
    return losses.get_loss_fn(sde, model, train=train, continuous=bool(t.continuous),
                              reduce_mean=bool(t.reduce_mean),
                              likelihood_weighting=bool(t.likelihood_weighting),
                              num_classes=num_classes, label_dropout=label_dropout)


def _score_wiring(config, sde, model):
    continuous = bool(config.training.continuous)

    def make(params, model_kwargs=None):
        return score_lib.get_score_fn(sde, model, {"params": params}, continuous=continuous,
                                      model_kwargs=model_kwargs)
    return make


def _edm_precond(config, sde):
    t = config.training
    return edm.precond_for_sde(t.precond, sde, sigma_data=float(t.sigma_data))


def _edm_loss(config, sde, model, *, train, num_classes, label_dropout):
    t = config.training
    return edm.get_edm_loss_fn(model, precond_from_config(config, sde), train=train,
                               reduce_mean=bool(t.reduce_mean), p_mean=float(t.p_mean),
                               p_std=float(t.p_std), log_label=_edm_log_label(config),
                               num_classes=num_classes, label_dropout=label_dropout)


def _edm_wiring(config, sde, model):
    precond, log_label = precond_from_config(config, sde), _edm_log_label(config)

    def make(params, model_kwargs=None):
        return edm.get_edm_score_fn(sde, model, {"params": params}, precond,
                                    log_label=log_label, model_kwargs=model_kwargs)
    return make


def _flow_loss(config, sde, model, *, train, num_classes, label_dropout):
    t = config.training
    return flow.get_flow_loss_fn(model, flow_path_from_config(config, sde), train=train,
                                 reduce_mean=bool(t.reduce_mean),
                                 t_max=float(t.get("flow_t_max", 1.0)),
                                 num_classes=num_classes, label_dropout=label_dropout)


def _autoencoder_loss(config, sde, model, *, train, num_classes, label_dropout):
    del sde, num_classes, label_dropout
    t = config.training
    return latent_lib.autoencoder_objective(model, kl_weight=float(t.kl_weight),
                                            reconstruction=t.reconstruction, train=train)


register_objective(Objective(
    "score", _score_loss, _score_wiring, sampler="score", bpd=True,
    description="denoising score matching (Song et al. 2021 eq. 7; discrete SMLD / DDPM with "
                "training.continuous=False)"))
register_objective(Objective(
    "flow_matching", _flow_loss, None, sampler="flow", bpd=True,
    description="conditional flow matching (Lipman et al. 2023 eq. 9)"))
register_objective(Objective(
    "edm", _edm_loss, _edm_wiring, sampler="score", bpd=True, precond=_edm_precond,
    description="EDM preconditioning and loss (Karras et al. 2022 Table 1)"))
def _autoencoder_init(model, tx, image_shape, mesh, *, num_classes=None, min_shard_size):
    del num_classes  # the autoencoder is unconditional: init(key, x)
    return latent_lib.jit_autoencoder_init(model, tx, image_shape, mesh,
                                           min_shard_size=min_shard_size)


register_objective(Objective(
    latent_lib.OBJECTIVE, _autoencoder_loss, None, sampler=None, bpd=False,
    model_name=latent_lib.MODEL_NAME, init=_autoencoder_init,
    description="stage 1 of latent diffusion: the KL autoencoder (Rombach et al. 2022)"))

def _distill_precond(config, sde):
    from score_jax.distill import objective as distill_objective

    return distill_objective.student_precond(config.distill.method, sde,
                                             sigma_data=float(config.training.sigma_data))


def distill_loss_from_config(config, sde, model, *, train: bool, teacher: Callable | None,
                             num_classes=None, label_dropout=0.0) -> Callable:
    """Objective "distill": ``distill.get_distill_loss_fn`` with ``config.distill``'s keys and
    ``teacher`` (the teacher's denoiser, loaded by ``train_lib.load_teacher``). Without a teacher
    the cd / pd loss raises ValueError when called (a config built only to sample the student)."""
    del num_classes, label_dropout  # unconditional students
    from score_jax.distill import objective as distill_objective

    d, t = config.distill, config.training
    kwargs = dict(train=train, sigma_data=float(t.sigma_data), log_label=_edm_log_label(config),
                  total_steps=int(t.n_iters), num_scales=int(d.num_scales), rho=float(d.rho),
                  solver=d.solver, metric=d.get("metric"), target=d.target, ct_s0=int(d.ct_s0),
                  ct_s1=int(d.ct_s1), ct_p_mean=float(d.ct_p_mean), ct_p_std=float(d.ct_p_std),
                  pd_num_steps=d.get("pd_num_steps"), teacher_steps=int(d.teacher_steps),
                  weighting=d.weighting)
    if teacher is None and d.method != "ct":
        def no_teacher(variables, batch, key):
            raise ValueError(f"distillation method {d.method!r} needs a teacher: set "
                             f"distill.teacher_workdir or distill.teacher_checkpoint (train.py "
                             f"loads it)")
        return no_teacher
    return distill_objective.get_distill_loss_fn(d.method, model, sde, teacher=teacher, **kwargs)


register_objective(Objective(
    "distill", distill_loss_from_config, _edm_wiring, sampler="score", bpd=True,
    precond=_distill_precond, state_inputs=True, uses_teacher=True,
    description="few-step distillation (config.distill.method: consistency distillation / "
                "training, Song et al. 2023, Song & Dhariwal 2023; progressive distillation, "
                "Salimans & Ho 2022)"))

# The built-in names (a live view: a registered objective appears in it).
OBJECTIVES = OBJECTIVE_SPECS.keys()
