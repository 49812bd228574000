"""UniPC: the unified predictor-corrector of Zhao et al. 2023 ("UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models", Sec. 3, Algorithms 2-3, App. C), multistep, data
prediction, B(h) variants; as wl-zhao/UniPC ``uni_pc.py::multistep_uni_pc_bh_update`` with
``predict_x0=True`` and ``sample(method="multistep")``.

On the Gaussian path x_t = a_t x0 + s_t eps of any SDE of the package (``sde.marginal_coeffs``,
lambda_t = log(a_t / s_t)), with data predictions m_j = x0_hat(x_j, t_j) (Tweedie) and a step from
t_i to t = t_{i+1}, h = lambda_t - lambda_i, hh = -h:

    x_lin = (s_t / s_i) x_i - a_t (e^{hh} - 1) m_i                       (DDIM / DPM-Solver++ 1)
    D_k   = (m_{i-k} - m_i) / r_k,   r_k = (lambda_{i-k} - lambda_i) / h,   k = 1 .. p-1
    UniP-p: x_t^pred = x_lin - a_t B(h) sum_k rho^p_k D_k
    UniC-p: x_t      = x_lin - a_t B(h) (sum_k rho^c_k D_k + rho^c_p (m(x_t^pred, t) - m_i))

with B(h) = hh ("bh1") or e^{hh} - 1 ("bh2"), and rho^c solving R rho = b, R_jk = r_k^{j-1}
(r_p = 1), b_j = h_phi_{j+1} j! / B(h), h_phi_1 = e^{hh} - 1, h_phi_{k+1} = h_phi_k / hh - 1/k!
(the reference's recursion); rho^p solves the leading (p-1) x (p-1) system. The reference's
shortcuts rho^p = 0.5 for p = 2 and rho^c = 0.5 for p = 1 are kept. The corrector re-uses the
evaluation m(x_t^pred, t) as the next step's history, so it costs no extra evaluation; the final
step (to eps) is not corrected (reference: "do not run corrector at the last step"). The first
steps use the orders their history allows; with ``lower_order_final`` (the reference default,
off here by measurement) step i's order is min(order, K - i), K steps in all.

Exactness: UniP alone (``use_corrector=False``) with "bh2" is DPM-Solver++ multistep for orders 1 and
2 (tested). With the corrector, UniC-p raises the order by one (paper Theorem 3.1; observed global
orders 2 and 3 for p = 1, 2, and >= 3 for p = 3: tests/test_unipc.py).

Time grids: ``sampling.fast.get_timesteps`` (``schedule`` in ``fast.SCHEDULES``), T -> eps, or
diffusers' UniPCMultistepScheduler timesteps on a discrete-table SDE (``fast.SPACINGS``).
Final denoising (``denoise=True``): K = num_steps - 1 UniPC steps to eps, then the Tweedie jump to
x0_hat(x_eps, eps) (one evaluation), as the package's other fast samplers. True NFE = num_steps
either way (evaluations at t_0 .. t_{K-1}, plus the jump with ``denoise``).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.sampling import options as opts
from score_jax.sampling.common import resolve_eps, to_state, x0_prediction
from score_jax.sampling.fast import SCHEDULES, _grid

Array = jax.Array

UNIPC_VARIANTS = ("bh1", "bh2")


_x0 = x0_prediction  # float32 times for a bf16 state (common.py)


def _coefficients(p, h, rks, variant):
    """(B(h), h_phi_1, rhos_p (p-1,), rhos_c (p,)) of the reference for step order p, with
    rks = (r_1, ..., r_{p-1}) (each a scalar)."""
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    B_h = hh if variant == "bh1" else jnp.expm1(hh)
    r = jnp.stack(list(rks) + [jnp.ones_like(h)])  # (p,)
    h_phi_k = h_phi_1 / hh - 1.0
    fact = 1.0
    b = []
    for j in range(1, p + 1):
        b.append(h_phi_k * fact / B_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    b = jnp.stack(b)
    R = jnp.stack([r ** (j - 1) for j in range(1, p + 1)])  # R[j-1, k] = r_k^(j-1)
    if p == 1:
        rhos_p = jnp.zeros((0,), h.dtype)
        rhos_c = jnp.full((1,), 0.5, h.dtype)
    else:
        rhos_p = (jnp.full((1,), 0.5, h.dtype) if p == 2
                  else jnp.linalg.solve(R[:-1, :-1], b[:-1]))
        rhos_c = jnp.linalg.solve(R, b)
    return B_h, h_phi_1, rhos_p, rhos_c


def _step(p, variant, x, ms, lams, lam_t, a_t, s_t, s_i):
    """UniP-p: (x_t^pred, x_lin, B_h, D-weighted corrector part, rho^c_p) for history
    ms = (m_i, m_{i-1}, m_{i-2}) at lams (lambda_i, ...)."""
    h = lam_t - lams[0]
    rks = [(lams[k] - lams[0]) / h for k in range(1, p)]
    Ds = [(ms[k] - ms[0]) / rks[k - 1] for k in range(1, p)]
    B_h, h_phi_1, rhos_p, rhos_c = _coefficients(p, h, rks, variant)
    x_lin = (s_t / s_i) * x - (a_t * h_phi_1) * ms[0]  # in the time dtype (float32 for bf16 x)
    pred = sum((rhos_p[k] * Ds[k] for k in range(p - 1)), jnp.zeros_like(x_lin))
    corr = sum((rhos_c[k] * Ds[k] for k in range(p - 1)), jnp.zeros_like(x_lin))
    return x_lin - (a_t * B_h) * pred, x_lin, B_h, corr, rhos_c[-1]


def _branch(p, variant, ops):
    return _step(p, variant, *ops)


def unipc_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    num_steps: int,
    order: int = 2,
    variant: str = "bh2",
    schedule: str = "logSNR",
    eps: float | None = None,
    denoise: bool = True,
    lower_order_final: bool = False,
    use_corrector: bool = True,
    rho: float = 7.0,
    project: Callable | None = None,
) -> tuple[Array, int]:
    """Multistep UniPC (UniP-p + UniC, data prediction) from x_init at t = T down to ``eps``.

    Args:
      key: PRNG key (used only by ``project``).
      sde: any SDE with ``marginal_coeffs``, ``log_snr``, ``T``, ``sampling_eps`` (VP, sub-VP, VE;
        EDM models through ``edm.edm_score_fn``).
      score_fn: ``score_fn(x, t)`` with x (B, ...), t (B,).
      x_init: (B, ...) prior sample at t = T (float32 or float64).
      num_steps: evaluations (= NFE); >= 2 with ``denoise``, >= 1 without.
      order: 1, 2 or 3 (the predictor's order p; the corrector adds one).
      variant: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1; the reference's choice for guided /
        pixel models).
      schedule: time grid, one of ``fast.SCHEDULES`` ("logSNR", "time_uniform", "time_quadratic",
        "edm" with ``rho``).
      eps: last time (None: ``sde.sampling_eps``).
      denoise: finish with the Tweedie jump x0_hat(x_eps, eps) (counted in ``num_steps``).
      lower_order_final: the reference's default (True): the order of the last steps is at most
        the number of steps left (so the last step is first order). Off by default here: measured
        (bench/bench_few_step.py, bench/RESULTS.md "Few-step solvers") the first-order last step
        costs most of the accuracy at 8-10 NFE on narrow modes (256-D Gaussian of std 0.05 at 10
        NFE: std ratio 0.879 with it, 0.982 without; exact 0.981).
      use_corrector: False runs the predictor UniP alone (for checks).
      project: hook ``project(key, x, x_mean, t, step_index) -> (x, x_mean)`` after every step (as
        in ``pc_sample``).

    Returns:
      ``(x, nfe)``, x of x_init's shape and dtype, nfe = ``num_steps``.

    Raises:
      ValueError: bad ``num_steps``, ``order``, ``variant``, ``schedule`` or ``eps``.
    """
    opts.check_num_steps(num_steps, denoise, "unipc")
    opts.check_options("unipc", sde, order=order, rho=rho)
    opts.check_choice("UniPC variant", variant, UNIPC_VARIANTS)
    opts.check_choice("time schedule", schedule, SCHEDULES)
    eps = resolve_eps(sde, eps)
    # diffusers' spacings ("leading" ...): UniPCMultistepScheduler's timesteps (family "dpm")
    t, a, s, lam = _grid(sde, x_init, num_steps, eps, schedule, denoise, rho=rho, family="dpm")
    K = t.shape[0] - 1

    def order_at(i):  # step i goes from t_i to t_{i+1}
        p = jnp.minimum(order, i + 1)
        return jnp.minimum(p, K - i) if lower_order_final else p

    def project_fn(x, i):
        if project is None:
            return x
        tb = jnp.full((x.shape[0],), t[i + 1], t.dtype)
        return to_state(project(jax.random.fold_in(key, i), x, x, tb, i)[0], x_init)

    branches = [functools.partial(_branch, p, variant) for p in range(1, order + 1)]

    def body(carry, i):
        x, ms, lams = carry
        ops = (x, ms, lams, lam[i + 1], a[i + 1], s[i + 1], s[i])
        x_pred, x_lin, B_h, corr, rho_c = jax.lax.switch(order_at(i) - 1, branches, ops)
        x_pred = to_state(x_pred, x_init)
        m_new = _x0(score_fn, x_pred, t[i + 1], a[i + 1], s[i + 1])
        if use_corrector:
            x_new = x_lin - (a[i + 1] * B_h) * (corr + rho_c * (m_new - ms[0]))
        else:
            x_new = x_pred
        x_new = project_fn(to_state(x_new, x_init), i)
        return (x_new, (m_new, ms[0], ms[1]), (lam[i + 1], lams[0], lams[1])), None

    m0 = _x0(score_fn, x_init, t[0], a[0], s[0])
    # Placeholder history (never read: the first steps' orders are limited to i + 1).
    ms = (m0, jnp.zeros_like(x_init), jnp.zeros_like(x_init))
    lams = (lam[0], lam[0] + 1.0, lam[0] + 2.0)
    (x, ms, lams), _ = jax.lax.scan(body, (x_init, ms, lams), jnp.arange(K - 1))
    # The last step, uncorrected: its order is static.
    p_last = min(order, K, 1) if lower_order_final else min(order, K)
    ops = (x, ms, lams, lam[K], a[K], s[K], s[K - 1])
    x = project_fn(to_state(_step(p_last, variant, *ops)[0], x_init), K - 1)
    if denoise:
        x = _x0(score_fn, x, t[K], a[K], s[K])
    return x, num_steps


__all__ = ["unipc_sample", "UNIPC_VARIANTS"]
