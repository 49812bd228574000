"""Diffrax solvers for the probability-flow ODE and the reverse SDE.

Time convention for the reverse SDE: diffrax integrates forward in s = T - t (s from 0 to T - eps),
so the Brownian path runs forward; the ODE is integrated directly from t = T down to eps.

NFE accounting (true score evaluations): an explicit Runge-Kutta step costs ``num_stages``
evaluations, or ``num_stages - 1`` for FSAL tableaus after one initial evaluation; rejected steps
count too. ``dt0`` is always given, so diffrax makes no extra evaluations to pick the first step.
"""
from __future__ import annotations

from typing import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx

from score_jax.score import ode_velocity_from_score
from score_jax.sde import batch_mul

Array = jax.Array

ODE_SOLVERS = {
    "euler": dfx.Euler,
    "heun": dfx.Heun,
    "midpoint": dfx.Midpoint,
    "ralston": dfx.Ralston,
    "bosh3": dfx.Bosh3,
    "tsit5": dfx.Tsit5,
    "dopri5": dfx.Dopri5,
    "dopri8": dfx.Dopri8,
}
# Reverse-SDE solvers. The reverse-time noise g(t) does not depend on x (additive noise), so Ito and
# Stratonovich agree and the additive-noise schemes (SEA, SRA1, ShARK) apply.
SDE_SOLVERS = {
    "euler": (dfx.Euler, dfx.BrownianIncrement),
    "heun": (dfx.Heun, dfx.BrownianIncrement),
    "sea": (dfx.SEA, dfx.SpaceTimeLevyArea),
    "sra1": (dfx.SRA1, dfx.SpaceTimeLevyArea),
    "shark": (dfx.ShARK, dfx.SpaceTimeLevyArea),
}


def get_ode_solver(name: str):
    if name not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE solver {name!r}; valid choices: {list(ODE_SOLVERS)}")
    return ODE_SOLVERS[name]()


def _evals_per_step(solver) -> tuple[int, int]:
    """(evaluations per step, initial evaluations) of an explicit RK solver."""
    if isinstance(solver, (dfx.Euler,)):
        return 1, 0
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        raise ValueError(f"cannot count evaluations of solver {type(solver).__name__}")
    stages = len(tableau.c) + 1
    return (stages - 1, 1) if tableau.fsal else (stages, 0)


def ode_nfe(solver, num_steps: Array) -> Array:
    """True number of vector-field evaluations of ``num_steps`` (accepted + rejected) RK steps."""
    per_step, init = _evals_per_step(solver)
    return per_step * num_steps + init


def solve_ode(
    vector_field: Callable[[Array, Array], Array],
    y0,
    t0: float,
    t1: float,
    *,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
    max_steps: int = 16384,
):
    """Solve dy/dt = vector_field(t, y) from t0 to t1 with diffrax.

    Adaptive (PID controller, ``rtol``/``atol``; initial step (t1 - t0)/100) unless ``num_steps`` is
    given, in which case the step is fixed. Returns ``(y1, nfe)``; nfe is an int32 scalar array.
    """
    slv = get_ode_solver(solver)
    term = dfx.ODETerm(lambda t, y, args: vector_field(t, y))
    if num_steps is not None:
        controller = dfx.ConstantStepSize()
        dt0 = (t1 - t0) / num_steps
        max_steps = num_steps
    else:
        if solver == "euler":
            raise ValueError("solver 'euler' has no error estimate: give num_steps for a fixed-step solve")
        controller = dfx.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 100.0
    sol = dfx.diffeqsolve(
        term, slv, t0=t0, t1=t1, dt0=dt0, y0=y0, stepsize_controller=controller,
        saveat=dfx.SaveAt(t1=True), max_steps=max_steps, throw=True,
    )
    y1 = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    return y1, ode_nfe(slv, sol.stats["num_steps"])


def probability_flow_velocity(sde, score_fn: Callable) -> Callable[[Array, Array], Array]:
    """dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 as ``v(t, x)`` with scalar t."""

    def v(t, x):
        tb = jnp.full((x.shape[0],), t, x.dtype)
        return ode_velocity_from_score(sde, x, tb, score_fn(x, tb))

    return v


def ode_sample(
    sde, score_fn: Callable, x_init: Array, *, eps: float, solver: str = "tsit5", rtol: float = 1e-5,
    atol: float = 1e-5, num_steps: int | None = None, denoise: bool = True, key: Array | None = None,
) -> tuple[Array, Array]:
    """Probability-flow ODE sampler (Song et al. Sec. 4.3): integrate from T to eps, then (with
    ``denoise``) one reverse-diffusion step at eps returning its mean, as the reference does."""
    v = probability_flow_velocity(sde, score_fn)
    x, nfe = solve_ode(v, x_init, sde.T, eps, solver=solver, rtol=rtol, atol=atol, num_steps=num_steps)
    if denoise:
        t = jnp.full((x.shape[0],), eps, x.dtype)
        f, _ = sde.reverse(score_fn, False).discretize(x, t)
        x = x - f
        nfe = nfe + 1
    return x, nfe


def sde_sample(
    key: Array, sde, score_fn: Callable, x_init: Array, *, eps: float, num_steps: int,
    solver: str = "euler", denoise: bool = True,
) -> tuple[Array, int]:
    """Reverse-SDE sampler through diffrax with ``num_steps`` fixed steps from T to eps.

    In s = T - t the reverse SDE reads dx = -[f - g^2 score](x, T - s) ds + g(T - s) dW_s.
    The noise is diagonal (lineax.DiagonalLinearOperator) and drawn from diffrax's
    ``UnsafeBrownianPath`` (fixed steps, no reversible adjoint needed: ForwardMode adjoint).
    ``denoise`` returns the drift-only mean of the last step (Tweedie-style final denoising as in the
    reference's PC samplers). Returns ``(x, nfe)``.
    """
    if solver not in SDE_SOLVERS:
        raise ValueError(f"Unknown SDE solver {solver!r}; valid choices: {list(SDE_SOLVERS)}")
    solver_cls, levy = SDE_SOLVERS[solver]
    slv = solver_cls()
    T = sde.T
    rsde = sde.reverse(score_fn, probability_flow=False)

    def drift(s, x, args):
        t = jnp.full((x.shape[0],), T - s, x.dtype)
        return -rsde.sde(x, t)[0]

    def diffusion(s, x, args):
        t = jnp.full((x.shape[0],), T - s, x.dtype)
        g = sde.diffusion_coeff(t).astype(x.dtype)
        return lx.DiagonalLinearOperator(batch_mul(g, jnp.ones_like(x)))

    s1 = T - eps
    dt = s1 / num_steps
    steps_main = num_steps - 1 if denoise else num_steps
    x = x_init
    nfe = 0
    if steps_main > 0:
        bm = dfx.UnsafeBrownianPath(shape=x_init.shape, key=key, levy_area=levy)
        terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm))
        sol = dfx.diffeqsolve(
            terms, slv, t0=0.0, t1=steps_main * dt, dt0=dt, y0=x_init,
            saveat=dfx.SaveAt(t1=True), adjoint=dfx.ForwardMode(), max_steps=steps_main,
            stepsize_controller=dfx.ConstantStepSize(),
        )
        x = sol.ys[-1]
        per_step, init = _sde_evals(slv)
        nfe = per_step * steps_main + init
    if denoise:
        x = x + dt * drift(steps_main * dt, x, None)
        nfe += 1
    return x, nfe


def _sde_evals(solver) -> tuple[int, int]:
    if isinstance(solver, dfx.Euler):
        return 1, 0
    if isinstance(solver, dfx.Heun):
        return 2, 0
    # Stochastic RK (SRK) solvers: one drift (score) evaluation per stage not flagged ignore_stage_f;
    # the diffusion g(t) needs no score.
    tab = solver.tableau
    n = len(tab.c) + 1
    if getattr(tab, "ignore_stage_f", None) is not None:
        n -= int(sum(bool(v) for v in tab.ignore_stage_f))
    return n, 0
