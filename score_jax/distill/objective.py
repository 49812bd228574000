"""The distillation objective from explicit arguments: the one function the config boundary calls
(``config.loss_fn_from_config`` for ``training.objective="distill"``), and the student's
preconditioning (what its sampler and its score use)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from score_jax import edm
from score_jax.distill import consistency, progressive

METHODS = ("cd", "ct", "pd")
# the sampler each method's student is drawn with (config.sampling.method)
SAMPLERS = {"cd": "consistency", "ct": "consistency", "pd": "ddim"}


def check_method(method: str) -> str:
    """ValueError naming ``method`` and `METHODS` unless it is one of them."""
    if method not in METHODS:
        raise ValueError(f"Unknown distillation method {method!r}; valid choices: {list(METHODS)}")
    return method


def student_precond(method: str, sde, *, sigma_data: float = 0.5, eps: float | None = None) -> Any:
    """The student's preconditioning on ``sde``'s noise range: `consistency.ConsistencyPrecond`
    (boundary at sigma(eps)) for "cd" / "ct"; EDM's (v-prediction for sigma_data = 1,
    ``progressive`` module doc) for "pd"."""
    check_method(method)
    if method == "pd":
        return edm.precond_for_sde("edm", sde, sigma_data=sigma_data)
    return consistency.consistency_precond_for_sde(sde, sigma_data=sigma_data, eps=eps)


@dataclasses.dataclass(frozen=True)
class FrozenTeacher:
    """A teacher whose weights are an input of the loss, not constants of it: the loss builds the
    denoiser ``denoiser_of(variables["frozen"][key])`` inside the step, from the ``frozen`` tree
    ``train_step.train_step`` passes (a jitted argument, sharded like the student's parameters:
    ``train_lib.load_teacher``, ``config.build(frozen=...)``), so a large teacher is neither
    baked into the compiled step nor replicated under FSDP."""

    denoiser_of: Callable  # params -> denoiser D(y, sigma)
    key: str = "teacher"


def get_distill_loss_fn(
    method: str,
    model: nn.Module,
    sde,
    *,
    teacher: Callable | None,
    train: bool = True,
    sigma_data: float = 0.5,
    log_label: bool = False,
    total_steps: int | None = None,
    num_scales: int = 18,
    rho: float = 7.0,
    solver: str = "heun",
    metric: str | None = None,
    target: str = "ema",
    ct_s0: int = 10,
    ct_s1: int = 1280,
    ct_p_mean: float = -1.1,
    ct_p_std: float = 2.0,
    pd_num_steps: int | None = None,
    eps: float | None = None,
    teacher_steps: int = 1,
    weighting: str = "uniform",
) -> Callable:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` of distillation ``method`` (`METHODS`)
    for the student network ``model`` on ``sde``'s noise range, the contract of
    ``losses.get_loss_fn``; ``variables`` as ``train_step(..., state_inputs=True)`` passes them.

    ``teacher``: the teacher's denoiser D(y, sigma) (``edm.EDMDenoiser``, or
    ``edm.denoiser_from_score`` of a score model; its weights are then constants of the step), or
    a `FrozenTeacher` (weights read from ``variables["frozen"]``); needed by "cd" and "pd". "cd":
    `consistency.cd_loss` with ``num_scales``, ``solver``, ``metric`` (default "l2"), ``target``,
    ``teacher_steps`` (solver steps per consistency link, default 1 = CM), ``weighting`` (the
    loss weight, default "uniform" = CM);
    "ct": improved CT (`consistency.ct_loss`) with the curriculum ``ct_s0`` -> ``ct_s1`` over
    ``total_steps``; "pd": one round with a ``pd_num_steps``-step student and a 2N-step teacher
    (`progressive.get_progressive_loss_fn`).
    Raises ValueError for an unknown method, a missing teacher, or a missing pd_num_steps.
    """
    check_method(method)
    if isinstance(teacher, FrozenTeacher):
        kwargs = dict(train=train, sigma_data=sigma_data, log_label=log_label,
                      total_steps=total_steps, num_scales=num_scales, rho=rho, solver=solver,
                      metric=metric, target=target, ct_s0=ct_s0, ct_s1=ct_s1, ct_p_mean=ct_p_mean,
                      ct_p_std=ct_p_std, pd_num_steps=pd_num_steps, eps=eps,
                      teacher_steps=teacher_steps, weighting=weighting)
        spec, current = teacher, []  # the denoiser of the weights being traced

        def proxy(y, sigma):
            return current[-1](y, sigma)

        # built once, outside any trace (the options are checked now, before any compilation)
        inner = get_distill_loss_fn(method, model, sde, teacher=proxy, **kwargs)

        def loss_fn(variables, batch, key):
            if spec.key not in variables.get("frozen", {}):
                raise ValueError(f"the distillation teacher's weights are read from "
                                 f"variables['frozen'][{spec.key!r}]; pass frozen={{{spec.key!r}: "
                                 f"params}} to the train step (train_step.bind_frozen)")
            current.append(spec.denoiser_of(variables["frozen"][spec.key]))
            try:
                return inner(variables, batch, key)
            finally:
                current.pop()

        return loss_fn
    precond = student_precond(method, sde, sigma_data=sigma_data, eps=eps)
    if method in ("cd", "pd") and teacher is None:
        raise ValueError(f"distillation method {method!r} needs a teacher (distill.teacher_workdir "
                         f"or distill.teacher_checkpoint)")
    if method == "pd":
        if not (isinstance(pd_num_steps, int) and pd_num_steps >= 1):
            raise ValueError(f"progressive distillation needs pd_num_steps >= 1 (the student's "
                             f"steps); got {pd_num_steps!r}")
        sigmas = progressive.student_sigmas(sde, pd_num_steps, eps=eps)
        return progressive.get_progressive_loss_fn(model, precond, teacher, sigmas, train=train,
                                                   log_label=log_label)
    return consistency.get_consistency_loss_fn(
        model, precond, method=method, teacher=teacher, target=target, train=train,
        num_scales=num_scales, rho=rho, solver=solver, metric=metric, total_steps=total_steps,
        s0=ct_s0, s1=ct_s1, p_mean=ct_p_mean, p_std=ct_p_std, log_label=log_label,
        teacher_steps=teacher_steps, weighting=weighting)


def teacher_denoiser(score_fn: Callable, sde) -> Callable:
    """The denoiser D(y, sigma) of a teacher ``score_fn(x, t)`` on ``sde``: the EDM denoiser itself
    for an EDM model (``edm.DenoiserScoreFn``), else ``edm.denoiser_from_score`` (Tweedie at
    t(sigma), found by bisection)."""
    if isinstance(score_fn, edm.DenoiserScoreFn):
        return score_fn.denoiser
    return edm.denoiser_from_score(score_fn, sde)


__all__ = ["METHODS", "SAMPLERS", "FrozenTeacher", "check_method", "student_precond", "get_distill_loss_fn",
           "teacher_denoiser"]
