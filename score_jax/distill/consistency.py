"""Consistency models: consistency distillation (CD) and improved consistency training (CT).

Song, Dhariwal, Chen & Sutskever 2023 ("Consistency Models", Sec. 3-5, App. C; openai/
consistency_models ``cm/karras_diffusion.py``), Song & Dhariwal 2023 ("Improved Techniques for
Training Consistency Models", Sec. 3), Geng et al. 2024 (ECT: consistency training initialised
from a pretrained diffusion model).

Everything runs in EDM's variables (``score_jax.edm``): y = x_t / a_t and sigma = s_t / a_t, so it
holds on every Gaussian path of the project (VE: a = 1; VP, sub-VP: through sigma(t)). The
consistency function is a preconditioned denoiser (``edm.EDMDenoiser`` with
`ConsistencyPrecond`):

    f(y, sigma) = c_skip(sigma) y + c_out(sigma) F(c_in(sigma) y; c_noise(sigma)),
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),   c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),                   c_noise = ln(sigma) / 4,

so f(y, sigma_min) = y exactly (the boundary condition); c_in and c_noise are EDM's, so a student
initialised from an EDM teacher starts at the teacher's denoiser (up to the sigma_min shift).

Noise levels (CM eq. 5): the rho = 7 grid sigma_i = (sigma_min^(1/rho) + i / (N - 1)
(sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 0..N-1 (increasing).

CD (CM Algorithm 2): i ~ U{0..N-2}, y_{i+1} = x0 + sigma_{i+1} z, one teacher ODE step
(`TEACHER_SOLVERS`, Heun by default) of dy/dsigma = (y - D(y; sigma)) / sigma to sigma_i, loss
d(f_theta(y_{i+1}, sigma_{i+1}), f_target(y_i, sigma_i)) with the target network theta^- (the EMA of
theta, rate mu, CM Sec. 4; or stopgrad(theta), improved CT Sec. 3.2).

Improved CT (iCT): y_i = x0 + sigma_i z with the same z (no teacher), target stopgrad(theta),
pseudo-Huber d(x, y) = sqrt(|x - y|^2 + c^2) - c with c = 0.00054 sqrt(dim), weight
1 / (sigma_{i+1} - sigma_i), i drawn with p(i) proportional to
erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((ln sigma_i - P_mean) / (sqrt 2 P_std))
(P_mean = -1.1, P_std = 2.0), and the discretisation curriculum
N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1)) (s0 = 10,
s1 = 1280, K the total training steps).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax import pytree
from score_jax.edm import EDMDenoiser
from score_jax.sampling.common import sigma_range
from score_jax.sde import batch_mul

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# The consistency function
# ----------------------------------------------------------------------------------------------
@pytree.dataclass
class ConsistencyPrecond:
    """The consistency parameterisation (CM App. C; ``cm/karras_diffusion.py::
    get_scalings_for_boundary_condition``) as an EDM preconditioning (`edm.EDMDenoiser` takes it):

        c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),                 c_noise = ln(sigma) / 4,   sd = sigma_data.

    At sigma = sigma_min: c_skip = 1, c_out = 0, so f(y, sigma_min) = y exactly.
    ``sigma_min`` / ``sigma_max`` are the noise range of training and sampling.
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    name = "consistency"

    def coeffs(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape, > 0)."""
        sd2 = jnp.square(self.sigma_data)
        shifted = sigma - self.sigma_min
        c_skip = sd2 / (jnp.square(shifted) + sd2)
        r = jnp.sqrt(jnp.square(sigma) + sd2)
        return c_skip, shifted * self.sigma_data / r, 1.0 / r, jnp.log(sigma) / 4.0


def consistency_precond_for_sde(sde, *, sigma_data: float = 0.5,
                                eps: float | None = None) -> ConsistencyPrecond:
    """`ConsistencyPrecond` with the boundary at the sampling SDE's end: sigma_min / sigma_max from
    `sigma_range` (VESDE(0.002, 80): EDM's range; VPSDE: sigma(eps) = s_eps / a_eps, sigma(T))."""
    lo, hi = sigma_range(sde, eps)
    return ConsistencyPrecond(sigma_data=sigma_data, sigma_min=lo, sigma_max=hi)


def karras_sigma(i: Array, n: Array, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Array:
    """sigma_i = (sigma_min^(1/rho) + i / (n - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho
    (CM eq. 5; increasing in i, sigma_0 = sigma_min, sigma_{n-1} = sigma_max). ``i`` and ``n`` may
    be traced (the improved-CT curriculum changes n during training)."""
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    u = jnp.asarray(i, jnp.float32) / (jnp.asarray(n, jnp.float32) - 1.0)
    return (lo + u * (hi - lo)) ** rho


# ----------------------------------------------------------------------------------------------
# One teacher ODE step (EDM variables: dy/dsigma = (y - D(y; sigma)) / sigma)
# ----------------------------------------------------------------------------------------------
def euler_step(denoiser: Callable, y: Array, sigma: Array, sigma_next: Array) -> Array:
    """Euler step of dy/dsigma = (y - D(y; sigma)) / sigma from ``sigma`` to ``sigma_next`` (both
    (B,)); one denoiser evaluation. (= DDIM's deterministic step.)"""
    d = batch_mul(1.0 / sigma, y - denoiser(y, sigma))
    return y + batch_mul(sigma_next - sigma, d)


def heun_step(denoiser: Callable, y: Array, sigma: Array, sigma_next: Array) -> Array:
    """Heun step of the same ODE (EDM Algorithm 1 lines 5-8; CM ``heun_solver``); two
    evaluations; ``sigma_next`` > 0."""
    d = batch_mul(1.0 / sigma, y - denoiser(y, sigma))
    y_euler = y + batch_mul(sigma_next - sigma, d)
    d_next = batch_mul(1.0 / sigma_next, y_euler - denoiser(y_euler, sigma_next))
    return y + batch_mul(sigma_next - sigma, 0.5 * (d + d_next))


TEACHER_SOLVERS = {"heun": heun_step, "euler": euler_step}


def get_teacher_solver(name: str) -> Callable:
    """The one-step ODE solver ``name`` of `TEACHER_SOLVERS`; ValueError listing them otherwise."""
    if name not in TEACHER_SOLVERS:
        raise ValueError(f"Unknown teacher ODE solver {name!r}; valid choices: "
                         f"{list(TEACHER_SOLVERS)}")
    return TEACHER_SOLVERS[name]


# ----------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------
def pseudo_huber_constant(dim: int) -> float:
    """c = 0.00054 sqrt(dim) (iCT Sec. 3.3, for data in [-1, 1])."""
    return 0.00054 * math.sqrt(dim)


def distance(x: Array, y: Array, metric: str = "l2", c: float | None = None) -> Array:
    """Per-example distance (B,): "l2" = mean over dimensions of (x - y)^2 (CM's ``mean_flat``);
    "pseudo_huber" = sqrt(|x - y|^2 + c^2) - c (iCT eq. 9; c from `pseudo_huber_constant` when
    None). ValueError for another metric."""
    diff = (x - y).reshape(x.shape[0], -1)
    if metric == "l2":
        return jnp.mean(jnp.square(diff), axis=-1)
    if metric == "pseudo_huber":
        c = pseudo_huber_constant(diff.shape[-1]) if c is None else c
        return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + c**2) - c
    raise ValueError(f"Unknown consistency metric {metric!r}; valid choices: "
                     f"{list(METRICS)}")


METRICS = ("l2", "pseudo_huber")


# ----------------------------------------------------------------------------------------------
# Losses on denoisers (pure)
# ----------------------------------------------------------------------------------------------
def cd_loss(key: Array, student: Callable, target: Callable, teacher: Callable, x0: Array, *,
            num_scales: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
            rho: float = 7.0, solver: str = "heun", metric: str = "l2",
            c: float | None = None, teacher_steps: int = 1, weighting: str = "uniform",
            sigma_data: float = 0.5) -> tuple[Array, dict]:
    """Consistency distillation (CM Algorithm 2, uniform weighting).

    With ``teacher_steps`` k = 1 (CM): i ~ U{0..N-2}, one teacher step sigma_{i+1} -> sigma_i.
    With k > 1 each consistency link spans k intervals of the same grid: j ~ U{1..N-1},
    y_j = x0 + sigma_j z, and the teacher walks k solver steps sigma_j -> sigma_{j-1} -> ... ->
    sigma_{max(j-k, 0)} (fewer at the bottom of the grid) before the target is evaluated; the
    student then needs ~(N-1)/k links instead of N-1 to carry the boundary condition to
    sigma_max, at 2k teacher evaluations per example (Heun) instead of 2, and the teacher's
    discretisation is still the N-point grid (the multi-step teacher of consistency trajectory
    models, Kim et al. 2024, Sec. 4, restricted to the grid).

    ``weighting`` lambda of each example's distance (`WEIGHTINGS`): "uniform" (CM: 1);
    "inverse_dsigma" (iCT Sec. 3.4 / ECT: 1 / (sigma_j - sigma_lo)); "inverse_cout2" (EDM's
    lambda = 1 / c_out(sigma_j)^2 with c_out of `ConsistencyPrecond` and ``sigma_data``: the
    distance measured on the network output F rather than on f, so the low noise levels, where
    c_out ~ sigma is small and every link of the chain starts, are not drowned by the high ones).

    Args:
      student / target: consistency functions f(y, sigma) (the network and the target network).
      teacher: the teacher denoiser D(y, sigma) (any score model through ``edm``'s conversions).
      x0: data (B, ...). ``num_scales`` N >= 2 grid points. ``teacher_steps`` k >= 1 (static).
    Returns ``(loss, {"losses": (B,) weighted, "sigma": sigma_j (B,)})``.
    Raises ValueError for N < 2, k < 1 or an unknown weighting.
    """
    if num_scales < 2:
        raise ValueError(f"num_scales must be >= 2; got {num_scales}")
    check_teacher_steps(teacher_steps)
    check_weighting(weighting)
    step = get_teacher_solver(solver)
    k_i, k_z = jax.random.split(key)
    B = x0.shape[0]
    j = jax.random.randint(k_i, (B,), 1, num_scales)  # the student's level index
    lo = jnp.maximum(j - teacher_steps, 0)
    sig_hi = karras_sigma(j, num_scales, sigma_min, sigma_max, rho).astype(x0.dtype)
    sig_lo = karras_sigma(lo, num_scales, sigma_min, sigma_max, rho).astype(x0.dtype)
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    y_hi = x0 + batch_mul(sig_hi, z)
    y_lo, sig = y_hi, sig_hi
    for s in range(1, teacher_steps + 1):  # k is small and static: unrolled
        # past the bottom (j - s < lo) the level repeats and the step is the identity
        sig_next = karras_sigma(jnp.maximum(j - s, lo), num_scales, sigma_min, sigma_max,
                                rho).astype(x0.dtype)
        y_lo = jnp.where(_bcast(sig_next < sig, y_lo), step(teacher, y_lo, sig, sig_next), y_lo)
        sig = sig_next
    y_lo = jax.lax.stop_gradient(y_lo)
    pred = student(y_hi, sig_hi)
    tgt = jax.lax.stop_gradient(target(y_lo, sig_lo))
    losses = distance(pred, tgt, metric, c) * cd_weight(weighting, sig_hi, sig_lo, sigma_min,
                                                        sigma_data)
    return jnp.mean(losses), {"losses": losses, "sigma": sig_hi}


WEIGHTINGS = ("uniform", "inverse_dsigma", "inverse_cout2")


def check_teacher_steps(teacher_steps) -> int:
    """ValueError naming ``teacher_steps`` unless it is an integer >= 1 (`cd_loss`)."""
    if isinstance(teacher_steps, bool) or not isinstance(teacher_steps, int) or teacher_steps < 1:
        raise ValueError(f"teacher_steps must be an integer >= 1; got {teacher_steps!r}")
    return teacher_steps


def check_weighting(weighting: str) -> str:
    """ValueError naming ``weighting`` and `WEIGHTINGS` unless it is one of them."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown consistency weighting {weighting!r}; valid choices: "
                         f"{list(WEIGHTINGS)}")
    return weighting


def cd_weight(weighting: str, sigma: Array, sigma_lo: Array, sigma_min: float,
              sigma_data: float = 0.5) -> Array:
    """lambda(sigma_j, sigma_lo) of `cd_loss` (`WEIGHTINGS`), shape of ``sigma``."""
    check_weighting(weighting)
    if weighting == "uniform":
        return jnp.ones_like(sigma)
    if weighting == "inverse_dsigma":
        return 1.0 / (sigma - sigma_lo)
    c_out = (sigma - sigma_min) * sigma_data / jnp.sqrt(jnp.square(sigma) + sigma_data**2)
    return 1.0 / jnp.square(c_out)


def _bcast(mask: Array, x: Array) -> Array:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``x``."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def ct_num_scales(step: Array, total_steps: int, s0: int = 10, s1: int = 1280) -> Array:
    """iCT's curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1,
    K' = floor(K / (log2 floor(s1 / s0) + 1)) (iCT eq. 8); ``step`` k may be traced."""
    k_prime = max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))
    doublings = jnp.floor_divide(jnp.asarray(step, jnp.int32), k_prime)
    n = jnp.minimum(s0 * jnp.exp2(jnp.minimum(doublings, 30).astype(jnp.float32)), s1)
    return n.astype(jnp.int32) + 1


def lognormal_index_probs(n: Array, max_scales: int, sigma_min: float, sigma_max: float, *,
                          rho: float = 7.0, p_mean: float = -1.1, p_std: float = 2.0) -> Array:
    """p(i), i = 0..max_scales-2, proportional to erf((ln sigma_{i+1} - P_mean) / (sqrt 2 P_std)) -
    erf((ln sigma_i - P_mean) / (sqrt 2 P_std)) for i < n - 1 and 0 beyond (iCT Sec. 3.5); ``n``
    may be traced, ``max_scales`` (the curriculum's largest N) is static."""
    i = jnp.arange(max_scales - 1)
    lo = karras_sigma(i, n, sigma_min, sigma_max, rho)
    hi = karras_sigma(i + 1, n, sigma_min, sigma_max, rho)
    w = (jax.scipy.special.erf((jnp.log(hi) - p_mean) / (math.sqrt(2.0) * p_std))
         - jax.scipy.special.erf((jnp.log(lo) - p_mean) / (math.sqrt(2.0) * p_std)))
    w = jnp.where(i < n - 1, jnp.maximum(w, 0.0), 0.0)
    return w / jnp.sum(w)


def ct_loss(key: Array, student: Callable, x0: Array, step: Array, *, total_steps: int,
            sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, s0: int = 10,
            s1: int = 1280, p_mean: float = -1.1, p_std: float = 2.0, metric: str = "pseudo_huber",
            c: float | None = None) -> tuple[Array, dict]:
    """Improved consistency training (iCT Sec. 3): the loss of training step ``step`` (traced).

    y_{i+1} = x0 + sigma_{i+1} z, y_i = x0 + sigma_i z (the same z), i drawn by
    `lognormal_index_probs` on the grid of N(step) = `ct_num_scales` points, per example
    d(f(y_{i+1}, sigma_{i+1}), stopgrad f(y_i, sigma_i)) / (sigma_{i+1} - sigma_i).
    Returns ``(loss, {"losses": (B,), "sigma": sigma_{i+1}, "num_scales": N})``.
    """
    k_i, k_z = jax.random.split(key)
    B = x0.shape[0]
    n = ct_num_scales(step, total_steps, s0, s1)
    probs = lognormal_index_probs(n, s1 + 1, sigma_min, sigma_max, rho=rho, p_mean=p_mean,
                                  p_std=p_std)
    i = jax.random.choice(k_i, probs.shape[0], (B,), p=probs)
    sig_lo = karras_sigma(i, n, sigma_min, sigma_max, rho).astype(x0.dtype)
    sig_hi = karras_sigma(i + 1, n, sigma_min, sigma_max, rho).astype(x0.dtype)
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    pred = student(x0 + batch_mul(sig_hi, z), sig_hi)
    tgt = jax.lax.stop_gradient(student(x0 + batch_mul(sig_lo, z), sig_lo))
    losses = distance(pred, tgt, metric, c) / (sig_hi - sig_lo)
    return jnp.mean(losses), {"losses": losses, "sigma": sig_hi, "num_scales": n}


# ----------------------------------------------------------------------------------------------
# loss_fn(variables, batch, key) for a flax backbone
# ----------------------------------------------------------------------------------------------
METHODS = ("cd", "ct")
TARGETS = ("ema", "stopgrad")


def get_consistency_loss_fn(
    model: nn.Module,
    precond: ConsistencyPrecond,
    *,
    method: str = "cd",
    teacher: Callable | None = None,
    target: str = "ema",
    train: bool = True,
    num_scales: int = 18,
    rho: float = 7.0,
    solver: str = "heun",
    metric: str | None = None,
    total_steps: int | None = None,
    s0: int = 10,
    s1: int = 1280,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    log_label: bool = False,
    teacher_steps: int = 1,
    weighting: str = "uniform",
) -> Callable[[Any, Any, Array], tuple[Array, dict]]:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` of CD or iCT for a flax backbone, the
    contract of ``losses.get_loss_fn``.

    ``variables``: {"params": theta} plus, when used, "ema_params" (the target network theta^- of
    ``target="ema"``) and "step" (the training step, for iCT's curriculum): what
    ``train_step.train_step(..., state_inputs=True)`` passes. ``batch``: images (B, H, W, C) in the
    model's range, or a dict with "image".
    ``method="cd"`` needs ``teacher`` (a denoiser D(y, sigma), e.g. ``edm.EDMDenoiser`` of the
    teacher's parameters; its forward passes run inside the same jitted step); ``target``: "ema"
    (CM: theta^- = EMA of theta, rate ``model.ema_rate``) or "stopgrad" (iCT: theta^- = theta).
    ``method="ct"`` (iCT) always uses stopgrad(theta) and needs ``total_steps``.
    ``metric``: default "l2" for CD, "pseudo_huber" for CT. ``teacher_steps``: teacher solver
    steps per CD link, ``weighting`` the CD loss weight lambda (`cd_loss`).
    Raises ValueError for an unknown method, target, metric or solver, CD without a teacher, CT
    without total_steps, teacher_steps < 1, an unknown weighting.
    """
    from score_jax.losses import split_batch

    if method not in METHODS:
        raise ValueError(f"Unknown consistency method {method!r}; valid choices: {list(METHODS)}")
    if target not in TARGETS:
        raise ValueError(f"Unknown consistency target {target!r}; valid choices: {list(TARGETS)}")
    metric = metric or ("l2" if method == "cd" else "pseudo_huber")
    if metric not in METRICS:
        raise ValueError(f"Unknown consistency metric {metric!r}; valid choices: {list(METRICS)}")
    get_teacher_solver(solver)
    check_teacher_steps(teacher_steps)
    check_weighting(weighting)
    if method == "cd" and teacher is None:
        raise ValueError("consistency distillation (method 'cd') needs a teacher denoiser")
    if method == "ct" and not (isinstance(total_steps, int) and total_steps > 0):
        raise ValueError(f"consistency training (method 'ct') needs total_steps > 0 (the "
                         f"curriculum's K); got {total_steps!r}")

    def loss_fn(variables, batch, key):
        key_loss, key_drop = jax.random.split(key)
        x0, _ = split_batch(batch)
        # the same dropout key for f_theta and its target (CM: the same rng for both passes)
        student = EDMDenoiser(precond, {"params": variables["params"]}, model, train, log_label,
                              key_drop, None)
        kw = dict(sigma_min=precond.sigma_min, sigma_max=precond.sigma_max, rho=rho, metric=metric)
        if method == "ct":
            return ct_loss(key_loss, student, x0, variables["step"], total_steps=total_steps,
                           s0=s0, s1=s1, p_mean=p_mean, p_std=p_std, **kw)
        if target == "ema":
            tgt = EDMDenoiser(precond, {"params": variables["ema_params"]}, model, train, log_label,
                              key_drop, None)
        else:
            tgt = student
        return cd_loss(key_loss, student, tgt, teacher, x0, num_scales=num_scales, solver=solver,
                       teacher_steps=teacher_steps, weighting=weighting,
                       sigma_data=precond.sigma_data, **kw)

    return loss_fn


__all__ = [
    "ConsistencyPrecond", "sigma_range", "consistency_precond_for_sde", "karras_sigma",
    "euler_step", "heun_step", "TEACHER_SOLVERS", "get_teacher_solver", "pseudo_huber_constant",
    "distance", "METRICS", "cd_loss", "ct_num_scales", "lognormal_index_probs", "ct_loss",
    "METHODS", "TARGETS", "get_consistency_loss_fn", "WEIGHTINGS", "check_weighting", "cd_weight",
    "check_teacher_steps",
]
