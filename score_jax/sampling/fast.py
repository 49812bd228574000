"""Fast samplers for any Gaussian-path SDE: DDIM, DPM-Solver++ (multistep), EDM's Heun sampler.

All three work in the coefficients of the SDE's Gaussian path x_t = a_t x_0 + s_t eps
(``sde.marginal_coeffs``) and its half log-SNR lambda_t = log(a_t / s_t) (``sde.log_snr``), so VP,
sub-VP and VE share one implementation. The network enters through the data prediction
(Tweedie's formula, Efron 2011)

    x0_hat(x, t) = (x + s_t^2 score(x, t)) / a_t,     eps_hat(x, t) = -s_t score(x, t).

Time grids (``SCHEDULES``), from t = T down to ``eps``:
- ``"logSNR"``: uniform in lambda (Lu et al. 2022, DPM-Solver Sec. 3.3), mapped back to t by
  ``inverse_log_snr`` (bisection on the monotone lambda(t): exact for every SDE, jit-able);
- ``"time_uniform"``: uniform in t (DDIM's "uniform" skip);
- ``"time_quadratic"``: t = (linspace(sqrt T, sqrt eps))^2 (DDIM / DPM-Solver "quadratic");
- ``"edm"``: Karras et al. 2022 eq. 5 on sigma = s_t / a_t = exp(-lambda),
  sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7.
- ``"leading"``, ``"trailing"``, ``"linspace"`` (``SPACINGS``): diffusers' inference timesteps of a
  discrete-table SDE (``sde.DiscreteVPSDE``), so that ddim / euler / dpm_solver / unipc take the
  steps of DDIMScheduler / EulerDiscreteScheduler / DPMSolverMultistepScheduler /
  UniPCMultistepScheduler (``discrete_grid``).

Final denoising (``denoise=True``, the default, as in the package's other samplers): the last of
the ``num_steps`` steps jumps from t = eps to the clean prediction x0_hat(x, eps) — the step to
sigma = 0 of EDM (Algorithm 1, last step) and of DPM-Solver++'s first-order update (a -> 1,
s -> 0). Every step costs one network evaluation, so the NFE does not change; the grid from T to
eps then has ``num_steps`` points instead of ``num_steps + 1``. With ``denoise=False`` the
samplers stop at t = eps (the ODE solvers then approximate the probability-flow solution there).

True NFE per call (network evaluations per batch):
- ddim, dpm_solver: ``num_steps``;
- heun: ``2 num_steps - 1`` with ``denoise`` (EDM's count: the step to sigma = 0 is Euler),
  ``2 num_steps`` without.

Every sampler is one ``lax.scan`` over the steps inside the caller's jit (``sampling.sample``).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.sampling import options as opts
from score_jax.sampling.common import (
    apply_project,
    resolve_eps,
    time_dtype,
    to_state,
    x0_prediction,
)

Array = jax.Array

CONTINUOUS_SCHEDULES = ("logSNR", "time_uniform", "time_quadratic", "edm")
SPACINGS = ("leading", "trailing", "linspace")
"""diffusers' timestep spacings: only for an SDE with a discrete table (``sde.timesteps``,
``sde.DiscreteVPSDE``); see ``discrete_grid``."""
SCHEDULES = CONTINUOUS_SCHEDULES + SPACINGS


# ----------------------------------------------------------------------------------------------
# Time grids
# ----------------------------------------------------------------------------------------------
def inverse_log_snr(sde, lam: Array, *, t_min: float = 0.0, t_max: float | None = None,
                    iters: int = 64) -> Array:
    """t with ``sde.log_snr(t) = lam`` (elementwise), by bisection on [t_min, t_max].

    lambda(t) = log(a_t / s_t) is strictly decreasing in t for VP, sub-VP and VE, so bisection is
    exact to the floating-point resolution of t after ~``iters`` halvings, needs no closed form per
    SDE (sub-VP has none in t without solving a quadratic in a_t), and is jit-able.
    Values of ``lam`` outside [lambda(t_max), lambda(t_min)] are clipped to the interval's ends.
    """
    lam = jnp.asarray(lam)
    t_max = sde.T if t_max is None else t_max
    lo = jnp.full(lam.shape, t_min, lam.dtype)
    hi = jnp.full(lam.shape, t_max, lam.dtype)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        too_early = sde.log_snr(mid) > lam  # lambda still too large: the root lies later in t
        return jnp.where(too_early, mid, lo), jnp.where(too_early, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)


def get_timesteps(sde, num_points: int, eps: float, schedule: str = "logSNR", *, rho: float = 7.0,
                  dtype=jnp.float32) -> Array:
    """``num_points`` decreasing times from ``sde.T`` to ``eps`` (both included) by ``schedule``.

    See the module docstring for the schedules. Raises ValueError for an unknown schedule or fewer
    than 2 points.
    """
    opts.check_choice("time schedule", schedule, SCHEDULES)
    if schedule in SPACINGS:  # num_points of DPM-Solver's timesteps (samplers use ``_grid``)
        return discrete_grid(sde, num_points, schedule, "dpm", True, dtype)[0]
    if num_points < 2:
        raise ValueError(f"a time grid needs >= 2 points (T, eps); got num_points={num_points}")
    T = sde.T
    if not 0.0 < eps < T:
        raise ValueError(f"eps must lie in (0, T={T}); got eps={eps}")
    if schedule == "time_uniform":
        return jnp.linspace(T, eps, num_points, dtype=dtype)
    if schedule == "time_quadratic":
        return jnp.square(jnp.linspace(math.sqrt(T), math.sqrt(eps), num_points, dtype=dtype))
    ends = jnp.asarray([T, eps], dtype)
    lam_T, lam_eps = sde.log_snr(ends)
    if schedule == "logSNR":
        lam = jnp.linspace(lam_T, lam_eps, num_points, dtype=dtype)
    else:  # edm: rho-grid on sigma = exp(-lambda)
        i = jnp.arange(num_points, dtype=dtype) / (num_points - 1)
        smax, smin = jnp.exp(-lam_T / rho), jnp.exp(-lam_eps / rho)
        lam = -rho * jnp.log(smax + i * (smin - smax))
    t = inverse_log_snr(sde, lam, t_min=0.0, t_max=T)
    # The ends are known exactly: do not let bisection round them.
    return t.at[0].set(T).at[-1].set(eps)


def discrete_grid(sde, num_steps: int, spacing: str, family: str, denoise: bool,
                  dtype=jnp.float32) -> tuple[Array, Array]:
    """The evaluation times and step targets of diffusers' ``family`` scheduler ("ddim", "euler",
    "dpm" = DPM-Solver++ / UniPC) with ``num_steps`` network evaluations on a discrete-table SDE.

    Returns ``(t_eval (num_steps,), t_to (num_steps,))`` with t = (k + 1) / N of the labels k of
    ``sde.timesteps(family, spacing, num_steps)``; step i evaluates the network at t_eval[i] and
    moves the state to t_to[i]:
    - ddim: t_to[i] = time of k_i - N // num_steps (DDIMScheduler's ``prev_timestep``), below 0 the
      final alpha: 1 (t = 0) with ``denoise`` (``set_alpha_to_one=True``), else alphabar_0
      (t = 1 / N, ``set_alpha_to_one=False``, Stable Diffusion's setting);
    - euler, dpm: t_to[i] = t_eval[i + 1], the last one 0 (sigma = 0: ``final_sigmas_type="zero"``)
      with ``denoise``, else 1 / N.

    Raises:
      ValueError: the SDE has no discrete table (``timesteps`` method), or a bad spacing.
    """
    opts.check_choice("timestep spacing", spacing, SPACINGS)
    if not hasattr(sde, "timesteps"):
        raise ValueError(f"schedule {spacing!r} (diffusers' timestep spacing) needs an SDE with a "
                         f"discrete table (sde.DiscreteVPSDE), got {type(sde).__name__}; valid "
                         f"schedules for it: {list(CONTINUOUS_SCHEDULES)}")
    import numpy as np

    ks = np.asarray(sde.timesteps(family, spacing, num_steps), np.float64)
    final = -1.0 if denoise else 0.0
    if family == "ddim":
        to = ks - sde.N // num_steps
        to = np.where(to < 0, final, to)
    else:
        to = np.concatenate([ks[1:], [final]])
    return (jnp.asarray((ks + 1.0) / sde.N, dtype), jnp.asarray((to + 1.0) / sde.N, dtype))


def _check_common(method, num_steps, denoise, eps, sde, **options):
    """The shared option rules (``sampling/options.py``); returns the resolved eps."""
    opts.check_num_steps(num_steps, denoise, method)
    opts.check_options(method, sde, **options)
    return resolve_eps(sde, eps)


def _grid(sde, x, num_steps, eps, schedule, denoise, rho=7.0, family="dpm"):
    """Times t_0 = T > ... > t_K = eps with K = num_steps - 1 (denoise) or num_steps, and their
    (a, s, lambda). A diffusers spacing (``SPACINGS``) gives the ``num_steps`` timesteps of
    ``family`` with ``denoise`` (the final jump is the step to sigma = 0), else those and t = 1/N
    (label 0)."""
    if schedule in SPACINGS:
        t_eval, t_to = discrete_grid(sde, num_steps, schedule, family, denoise, time_dtype(x.dtype))
        t = t_eval if denoise else jnp.concatenate([t_eval, t_to[-1:]])
        a, s = sde.marginal_coeffs(t)
        return t, a, s, jnp.log(a) - jnp.log(s)
    K = num_steps - 1 if denoise else num_steps
    t = get_timesteps(sde, K + 1, eps, schedule, rho=rho, dtype=time_dtype(x.dtype))
    a, s = sde.marginal_coeffs(t)
    return t, a, s, jnp.log(a) - jnp.log(s)


_x0_pred = x0_prediction
_apply_project = apply_project


# ----------------------------------------------------------------------------------------------
# DDIM
# ----------------------------------------------------------------------------------------------
def ddim_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    num_steps: int,
    eta: float = 0.0,
    eps: float | None = None,
    schedule: str = "logSNR",
    denoise: bool = True,
    project: Callable | None = None,
) -> tuple[Array, int]:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on the SDE's Gaussian path.

    From t to s < t with x0 = x0_hat(x_t, t), e = eps_hat(x_t, t):

        x_s = a_s x0 + sqrt(s_s^2 - sigma^2) e + sigma z,     sigma = eta tau_{s|t},
        tau_{s|t}^2 = s_{t|s}^2 s_s^2 / s_t^2,   s_{t|s}^2 = s_t^2 - (a_t / a_s)^2 s_s^2,

    tau the std of the Gaussian posterior q(x_s | x_t, x_0) (``sde.ancestral_posterior``). eta = 0
    is deterministic (the first-order solver of the probability-flow ODE in lambda, = DPM-Solver-1);
    eta = 1 samples that posterior with x_0 = x0_hat (DDPM's ancestral sampling on this grid).
    Default grid ``"logSNR"`` (by measurement, bench/RESULTS.md "Few-step solvers and time grids":
    std ratio 0.756 vs 0.322 for ``"time_uniform"`` at 10 NFE on the narrow Gaussian, exact 0.981);
    ``schedule="time_uniform"`` gives the DDIM paper's uniform skip.
    ``project`` is the hook of ``pc_sample`` (see ``_apply_project``). Returns ``(x, num_steps)``.
    """
    eps = _check_common("ddim", num_steps, denoise, eps, sde, eta=eta)
    opts.check_choice("time schedule", schedule, SCHEDULES)
    return _ddim(key, sde, score_fn, x_init, num_steps, eta, eps, schedule, denoise, project, "ddim")


def _ddim(key, sde, score_fn, x_init, num_steps, eta, eps, schedule, denoise, project, family):
    if schedule in SPACINGS:  # diffusers' grid: the final target encodes denoise, no extra jump
        t, t_to = discrete_grid(sde, num_steps, schedule, family, denoise, time_dtype(x_init.dtype))
        jump = False
    else:
        t_all, _, _, _ = _grid(sde, x_init, num_steps, eps, schedule, denoise)
        t, t_to, jump = t_all[:-1], t_all[1:], denoise
    a, s = sde.marginal_coeffs(t)
    a_to, s_to = sde.marginal_coeffs(t_to)
    K = t.shape[0]

    def body(x, i):
        x0 = _x0_pred(score_fn, x, t[i], a[i], s[i])
        e = (x - a[i] * x0) / s[i]
        a_next, s_next = a_to[i], s_to[i]
        var_ts = jnp.maximum(s[i] ** 2 - (a[i] / a_next) ** 2 * s_next**2, 0.0)
        sigma = eta * jnp.sqrt(var_ts * s_next**2 / s[i] ** 2)
        dir_coef = jnp.sqrt(jnp.maximum(s_next**2 - sigma**2, 0.0))
        x_next = a_next * x0 + dir_coef * e
        k_noise, k_proj = jax.random.split(jax.random.fold_in(key, i))
        if eta > 0:
            x_next = x_next + sigma * jax.random.normal(k_noise, x.shape, x.dtype)
        return _apply_project(project, k_proj, to_state(x_next, x), t_to[i], i), None

    x, _ = jax.lax.scan(body, x_init, jnp.arange(K))
    if jump:
        x = _x0_pred(score_fn, x, t_to[K - 1], a_to[K - 1], s_to[K - 1])
    return x, num_steps


def euler_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    num_steps: int,
    eps: float | None = None,
    schedule: str = "logSNR",
    denoise: bool = True,
    project: Callable | None = None,
) -> tuple[Array, int]:
    """Euler on the probability-flow ODE in EDM's variables y = x / a_t, sigma = s_t / a_t
    (diffusers' EulerDiscreteScheduler, k-diffusion ``sample_euler`` without churn):

        y_next = y + (sigma_next - sigma) (y - D(y; sigma)) / sigma,

    which in x = a_t y is exactly deterministic DDIM (eta = 0) on the same grid; it differs from
    ``ddim`` only in the grid of the diffusers spacings: Euler's timesteps ("linspace" unrounded,
    fractional labels allowed: sigma interpolated linearly between table entries) and the next
    evaluated time as each step's target, the last one sigma = 0 with ``denoise``.
    State in the package's scale x (diffusers' Euler latents are y = x sqrt(1 + sigma^2)).
    NFE = ``num_steps``. Returns ``(x, num_steps)``.
    """
    eps = _check_common("euler", num_steps, denoise, eps, sde)
    opts.check_choice("time schedule", schedule, SCHEDULES)
    return _ddim(key, sde, score_fn, x_init, num_steps, 0.0, eps, schedule, denoise, project, "euler")


# ----------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep, data prediction)
# ----------------------------------------------------------------------------------------------
DPM_SOLVER_TYPES = ("midpoint", "heun")
# How ``lower_order_final`` counts the last steps (``dpm_solver_sample``).
LOWER_ORDER_COUNTS = ("with_jump", "solver_steps")


def _dpm_update(order, x, m0, m1, m2, lam_prev, lam_t, a_t, s_t, s_prev0, solver_type):
    """One multistep DPM-Solver++ update from lambda_{i} to lambda_t using the last ``order`` data
    predictions m0 (newest), m1, m2 at lambda_prev = (lambda_i, lambda_{i-1}, lambda_{i-2})
    (Lu et al. 2022b, Algorithm 2 and App. B; the 3rd order as in LuChengTHU/dpm-solver)."""
    h = lam_t - lam_prev[0]
    phi_1 = jnp.expm1(-h)  # e^{-h} - 1
    x_lin = (s_t / s_prev0) * x - (a_t * phi_1) * m0
    if order == 1:
        return x_lin
    h_0 = lam_prev[0] - lam_prev[1]
    r0 = h_0 / h
    D1_0 = (m0 - m1) / r0
    if order == 2:
        if solver_type == "midpoint":
            return x_lin - 0.5 * (a_t * phi_1) * D1_0
        phi_2 = phi_1 / h + 1.0
        return x_lin + (a_t * phi_2) * D1_0
    h_1 = lam_prev[1] - lam_prev[2]
    r1 = h_1 / h
    D1_1 = (m1 - m2) / r1
    D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)  # ~ h m'
    # ~ h^2 m''. Deliberately twice the reference's: LuChengTHU/dpm-solver (and diffusers) use
    # (D1_0 - D1_1) / (r0 + r1) ~ h^2 m'' / 2 here, which halves the second-order term and makes
    # "3M" converge at order 2 only; with the factor 2 (as in their singlestep "taylor" update) the
    # error falls as h^3 (tests/test_fast_samplers.py).
    D2 = 2.0 * (D1_0 - D1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return x_lin + (a_t * phi_2) * D1 - (a_t * phi_3) * D2


def _dpm_branch(order, solver_type, ops):
    return _dpm_update(order, *ops, solver_type)


def dpm_solver_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    num_steps: int,
    order: int = 2,
    eps: float | None = None,
    schedule: str = "logSNR",
    lower_order_final: bool = True,
    lower_order_count: str = "with_jump",
    solver_type: str = "midpoint",
    denoise: bool = True,
    project: Callable | None = None,
) -> tuple[Array, int]:
    """Multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Algorithm 2) of order 1, 2 or 3.

    The probability-flow ODE in data prediction form, solved exactly in its linear part:

        x_t = (s_t / s_i) x_i - a_t (e^{-h} - 1) m_i + corrections,   h = lambda_t - lambda_i,

    with m_i = x0_hat(x_i, t_i) and the corrections from finite differences of the previous m's:
    order 2 ("midpoint"): - a_t (e^{-h} - 1) D1 / 2, D1 = (m_i - m_{i-1}) / r0, r0 = h_{i-1} / h;
    order 3: + a_t phi_2 D1 - a_t phi_3 D2 with phi_2 = (e^{-h} - 1)/h + 1, phi_3 = phi_2/h - 1/2,
    D1 ~ h m' and D2 ~ h^2 m'' from three-point differences.

    Deliberate deviation (3M): D2 = 2 (D1_0 - D1_1) / (r0 + r1), twice the D2 of LuChengTHU/dpm-solver
    and diffusers' ``multistep_dpm_solver_third_order_update``. Taylor expansion gives
    D1_0 - D1_1 = (r0 + r1) h^2 m'' / 2 + O(h^3), and the exact integral's h^2 term is
    -a_t phi_3 h^2 m'', so their D2 halves it and their "3M" converges at order 2 (measured 2.04);
    ours converges at order 3 (measured 3.3; tests/test_fast_samplers.py, float64, exact score).

    The first steps use the orders their history allows (1, then 2, ...). ``lower_order_final``
    (for fewer than 10 solver steps, as LuChengTHU/dpm-solver; diffusers uses < 15 timesteps) caps
    the order of each of the last steps at the number of steps left, itself included, counted by
    ``lower_order_count``:
    - ``"with_jump"`` (default; diffusers' DPMSolverMultistepScheduler with final_sigmas_type
      "zero"): with ``denoise`` the final jump to t = 0 is one of the steps left, and it is the
      lowered first-order step: step i (of K = num_steps - 1 solver steps) has order
      min(order, i + 1, K + 1 - i). 2M is then not lowered at all; 3M's last solver step is 2nd
      order. Equal to diffusers (lower_order_final=True, final_sigmas_type="zero", < 15 steps) on
      the same grid, step for step.
    - ``"solver_steps"`` (LuChengTHU/dpm-solver ``sample(lower_order_final=True,
      denoise_to_zero=True)``, and this package before): the last solver step to eps is first
      order, min(order, i + 1, K - i), then the jump.
    Chosen by measurement (bench/bench_dpm_lower_order.py, bench/RESULTS.md "DPM-Solver++ lower
    order final"): on a 64-D Gaussian of std 0.05, 2M at 10 NFE is 0.032 (RMS, relative) from the
    exact ODE solution with "with_jump" vs 0.132 with "solver_steps"; without ``denoise`` both
    are the same.
    One evaluation per step: NFE = ``num_steps``. ``project``: see ``_apply_project``.
    Returns ``(x, num_steps)``.
    """
    eps = _check_common("dpm_solver", num_steps, denoise, eps, sde, order=order)
    opts.check_choice("time schedule", schedule, SCHEDULES)
    opts.check_choice("DPM-Solver solver_type", solver_type, DPM_SOLVER_TYPES)
    opts.check_choice("lower_order_count", lower_order_count, LOWER_ORDER_COUNTS)
    t, a, s, lam = _grid(sde, x_init, num_steps, eps, schedule, denoise, family="dpm")
    K = t.shape[0] - 1
    use_lof = lower_order_final and K < 10
    # Steps left after step i (itself included): the jump counts as one of them with "with_jump".
    left = K + (1 if denoise and lower_order_count == "with_jump" else 0)

    def body(carry, i):
        x, (m1, m2), (lam1, lam2) = carry  # the two previous data predictions and their lambdas
        m = _x0_pred(score_fn, x, t[i], a[i], s[i])
        lam_prev = jnp.stack([lam[i], lam1, lam2])
        step_order = jnp.minimum(order, i + 1)
        if use_lof:
            step_order = jnp.minimum(step_order, left - i)
        branches = [functools.partial(_dpm_branch, k, solver_type) for k in range(1, order + 1)]
        ops = (x, m, m1, m2, lam_prev, lam[i + 1], a[i + 1], s[i + 1], s[i])
        x = to_state(jax.lax.switch(step_order - 1, branches, ops), x)
        x = _apply_project(project, jax.random.fold_in(key, i), x, t[i + 1], i)
        return (x, (m, m1), (lam[i], lam1)), None

    zeros = jnp.zeros_like(x_init)
    # Placeholder history for the first steps (never used: their order is limited to i + 1).
    lam0 = (lam[0] + 1.0, lam[0] + 2.0)
    (x, _, _), _ = jax.lax.scan(body, (x_init, (zeros, zeros), lam0), jnp.arange(K))
    if denoise:
        x = _x0_pred(score_fn, x, t[K], a[K], s[K])
    return x, num_steps


# ----------------------------------------------------------------------------------------------
# EDM Heun sampler
# ----------------------------------------------------------------------------------------------
def heun_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    num_steps: int,
    eps: float | None = None,
    schedule: str = "edm",
    rho: float = 7.0,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    denoise: bool = True,
    project: Callable | None = None,
) -> tuple[Array, int]:
    """EDM's second-order sampler (Karras et al. 2022, Algorithm 2; NVlabs/edm ``generate.py``).

    Any of our SDEs is EDM's ODE after the change of variables y = x / a_t, sigma = s_t / a_t:

        dy / dsigma = (y - D(y; sigma)) / sigma,    D(y; sigma) = x0_hat(a_t y, t(sigma)),

    with t(sigma) = lambda^{-1}(-log sigma). On the sigma grid (``schedule="edm"``: rho = 7) each
    step optionally adds churn: gamma_i = min(s_churn / num_steps, sqrt 2 - 1) for
    s_tmin <= sigma_i <= s_tmax, sigma_hat = (1 + gamma_i) sigma_i,
    y_hat = y + sqrt((sigma_hat - sigma_i)(sigma_hat + sigma_i)) s_noise z (EDM's
    sqrt(sigma_hat^2 - sigma_i^2), factored so that it is exactly 0 where gamma_i = 0); then an
    Euler step to sigma_{i+1} and Heun's trapezoidal correction. With ``denoise`` the last step goes
    to sigma = 0 (an Euler step after the churn, y = D(y_hat; sigma_hat_min), as EDM's last step),
    so NFE = 2 num_steps - 1 (EDM's count); without, all ``num_steps`` steps are corrected: NFE = 2 num_steps.
    ``project``: see ``_apply_project`` (applied to x = a_t y).
    Returns ``(x, nfe)``.
    Deterministic when ``s_churn = 0``.
    """
    eps = _check_common("heun", num_steps, denoise, eps, sde, rho=rho, s_churn=s_churn, s_tmin=s_tmin,
                        s_tmax=s_tmax, s_noise=s_noise)
    opts.check_choice("time schedule", schedule, SCHEDULES)
    t, a, s, lam = _grid(sde, x_init, num_steps, eps, schedule, denoise, rho=rho)
    K = t.shape[0] - 1
    sigma = s / a
    # Churn: the raised noise levels sigma_hat_i and their times are fixed by the grid.
    in_range = (sigma >= s_tmin) & (sigma <= s_tmax)
    # EDM generate.py: gamma = min(S_churn / num_steps, sqrt 2 - 1), num_steps the number of
    # sigma points (ours: num_steps with or without the final jump).
    gamma = jnp.where(in_range, min(s_churn / num_steps, math.sqrt(2.0) - 1.0), 0.0)
    sigma_hat = sigma * (1.0 + gamma)
    churn = s_churn > 0
    if churn:
        t_hat = inverse_log_snr(sde, -jnp.log(sigma_hat), t_min=0.0, t_max=sde.T)
        t_hat = jnp.where(gamma > 0, t_hat, t)
        sigma_hat = jnp.where(gamma > 0, sigma_hat, sigma)
    else:
        t_hat, sigma_hat = t, sigma
    # sqrt(sigma_hat^2 - sigma^2) as sqrt((sigma_hat - sigma)(sigma_hat + sigma)): exactly 0 where no
    # churn applies (the difference of squares, fused into an FMA by XLA, leaves a rounding residue
    # of up to ~2e-4 sigma in float32 there).
    churn_std = jnp.sqrt(jnp.maximum((sigma_hat - sigma) * (sigma_hat + sigma), 0.0))

    def denoised(y, t_i):  # D(y; sigma(t_i)) in y's dtype; the network sees x = a y in it too
        a_i, s_i = sde.marginal_coeffs(t_i)
        return _x0_pred(score_fn, to_state(a_i * y, y), t_i, a_i, s_i)

    def body(y, i):
        k_noise, k_proj = jax.random.split(jax.random.fold_in(key, i))
        if churn:
            z = jax.random.normal(k_noise, y.shape, y.dtype)
            y = to_state(y + churn_std[i] * s_noise * z, y)
        d = (y - denoised(y, t_hat[i])) / sigma_hat[i]
        y_next = y + (sigma[i + 1] - sigma_hat[i]) * d
        d_next = (y_next - denoised(y_next, t[i + 1])) / sigma[i + 1]
        y_next = y + (sigma[i + 1] - sigma_hat[i]) * 0.5 * (d + d_next)
        if project is not None:
            a_next = a[i + 1]
            y_next = _apply_project(project, k_proj, to_state(a_next * y_next, y), t[i + 1], i) / a_next
        return to_state(y_next, y), None

    # The prior sample x_T = a_T y_T.
    y, _ = jax.lax.scan(body, to_state(x_init / a[0], x_init), jnp.arange(K))
    if denoise:
        # EDM generate.py churns before its last (Euler) step to sigma = 0 too; that step lands
        # on D(y_hat; sigma_hat).
        if churn:
            z = jax.random.normal(jax.random.fold_in(key, K), y.shape, y.dtype)
            y = to_state(y + churn_std[K] * s_noise * z, y)
        return denoised(y, t_hat[K]), 2 * K + 1
    return to_state(a[K] * y, y), 2 * K


__all__ = [
    "ddim_sample", "euler_sample", "dpm_solver_sample", "heun_sample", "get_timesteps",
    "inverse_log_snr", "discrete_grid", "SCHEDULES", "CONTINUOUS_SCHEDULES", "SPACINGS",
    "DPM_SOLVER_TYPES", "LOWER_ORDER_COUNTS",
]
