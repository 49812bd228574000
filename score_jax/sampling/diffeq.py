"""Samplers through diffrax: the probability-flow ODE and the reverse SDE.

Time convention for the reverse SDE: diffrax integrates forward in s = T - t (s from 0 to T - eps),
so the Brownian path runs forward; the ODE is integrated directly from t = T down to eps.

Both follow the sampler contract ``fn(key, sde, score_fn, x_init, **options) -> (x, nfe)`` with
``eps`` (None: ``sde.sampling_eps``) and ``denoise`` (the Tweedie jump from eps to 0, see
``sampling/common.py``) as in every sampler. The ODE solve and its NFE counting live in
``score_jax.ode``.
"""
from __future__ import annotations

from typing import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx

from score_jax.ode import (
    ODE_SOLVERS,
    fixed_step_solve,
    probability_flow_drift,
    solve_ode,
)
from score_jax.sampling import options as opts
from score_jax.sampling.common import batch_times, resolve_eps, time_dtype, to_state, tweedie_denoise
from score_jax.sde import batch_mul

Array = jax.Array

# Reverse-SDE solvers. The reverse-time noise g(t) does not depend on x (additive noise), so Ito and
# Stratonovich agree and the additive-noise schemes (SEA, SRA1, ShARK) apply.
SDE_SOLVERS = {
    "euler": (dfx.Euler, dfx.BrownianIncrement),
    "heun": (dfx.Heun, dfx.BrownianIncrement),
    "sea": (dfx.SEA, dfx.SpaceTimeLevyArea),
    "sra1": (dfx.SRA1, dfx.SpaceTimeLevyArea),
    "shark": (dfx.ShARK, dfx.SpaceTimeLevyArea),
}


def ode_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
    eps: float | None = None,
    denoise: bool = True,
    project: Callable | None = None,
) -> tuple[Array, Array]:
    """Probability-flow ODE sampler (Song et al. 2021, Sec. 4.3 and eq. 13): integrate
    dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 from T to eps with the diffrax ``solver`` in
    ``ODE_SOLVERS``, then (``denoise``) the Tweedie jump to t = 0.

    Adaptive (``rtol`` / ``atol``) when ``num_steps`` is None; else ``num_steps`` fixed steps on a
    uniform grid, the last of which is the jump with ``denoise`` (num_steps - 1 solver steps).
    ``project`` (inpainting) needs fixed steps: it is applied after every solver step, at the time
    reached. ``key`` is used by ``project`` only. Returns ``(x, nfe)``, nfe the true number of score
    evaluations (an int32 array for adaptive solves).
    """
    eps = resolve_eps(sde, eps)
    v = probability_flow_drift(sde, score_fn)
    if num_steps is not None:
        opts.check_num_steps(num_steps, denoise, "ode")
    K = None if num_steps is None else num_steps - (1 if denoise else 0)
    if project is None:
        x, nfe = solve_ode(v, x_init, sde.T, eps, solver=solver, rtol=rtol, atol=atol,
                           num_steps=K)
    else:
        if K is None:
            raise ValueError("ode_sample with a project hook needs fixed steps: give num_steps "
                             "(an adaptive solve cannot be interrupted between steps)")
        times = jnp.linspace(sde.T, eps, K + 1, dtype=time_dtype(x_init.dtype))

        def after_step(i, x, t_next):
            return to_state(project(jax.random.fold_in(key, i), x, x, batch_times(x, t_next), i)[0], x)

        x, nfe = fixed_step_solve(v, x_init, times, solver=solver, after_step=after_step)
    x = to_state(x, x_init)  # diffrax may solve in a wider dtype than a bf16 state
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, eps)
        nfe = nfe + 1
    return x, nfe


def sde_evals_per_step(solver) -> int:
    """Score evaluations per step of a reverse-SDE solver (the diffusion g(t) needs none)."""
    if isinstance(solver, dfx.Euler):
        return 1
    if isinstance(solver, dfx.Heun):
        return 2
    # Stochastic RK (SRK) solvers: one drift (score) evaluation per stage not flagged
    # ignore_stage_f.
    tab = solver.tableau
    n = len(tab.c) + 1
    if getattr(tab, "ignore_stage_f", None) is not None:
        n -= int(sum(bool(v) for v in tab.ignore_stage_f))
    return n


def sde_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    solver: str = "euler",
    num_steps: int | None = None,
    eps: float | None = None,
    denoise: bool = True,
) -> tuple[Array, int]:
    """Reverse-SDE sampler through diffrax with fixed steps from T to eps (``num_steps`` [sde.N]
    grid steps, the last of which is the Tweedie jump to 0 with ``denoise``).

    In s = T - t the reverse SDE reads dx = -[f - g^2 score](x, T - s) ds + g(T - s) dW_s.
    The noise is diagonal (lineax.DiagonalLinearOperator) and drawn from diffrax's
    ``UnsafeBrownianPath`` (fixed steps, no reversible adjoint needed: ForwardMode adjoint).
    Returns ``(x, nfe)``.
    """
    opts.check_choice("SDE solver", solver, SDE_SOLVERS)
    eps = resolve_eps(sde, eps)
    num_steps = sde.N if num_steps is None else num_steps
    opts.check_num_steps(num_steps, denoise, "sde")
    solver_cls, levy = SDE_SOLVERS[solver]
    slv = solver_cls()
    T = sde.T
    rsde = sde.reverse(score_fn, probability_flow=False)

    def drift(s, x, args):
        return (-rsde.sde(x, batch_times(x, T - s))[0]).astype(x.dtype)

    def diffusion(s, x, args):
        g = sde.diffusion_coeff(batch_times(x, T - s)).astype(x.dtype)
        return lx.DiagonalLinearOperator(batch_mul(g, jnp.ones_like(x)))

    K = num_steps - 1 if denoise else num_steps
    dt = (T - eps) / K
    bm = dfx.UnsafeBrownianPath(shape=x_init.shape, key=key, levy_area=levy)
    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm))
    sol = dfx.diffeqsolve(
        terms, slv, t0=0.0, t1=T - eps, dt0=dt, y0=x_init,
        saveat=dfx.SaveAt(t1=True), adjoint=dfx.ForwardMode(), max_steps=K,
        stepsize_controller=dfx.ConstantStepSize(),
    )
    x = to_state(sol.ys[-1], x_init)
    nfe = sde_evals_per_step(slv) * K
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, eps)
        nfe += 1
    return x, nfe


__all__ = ["ODE_SOLVERS", "SDE_SOLVERS", "ode_sample", "sde_sample", "sde_evals_per_step"]
