"""ODE integration for sampling, likelihood and flows: the probability-flow drift, a diffrax solve
with true NFE counting, and a fixed-step stepper that can interrupt the solve between steps.

Layer: imports ``sde`` / ``score`` only; ``sampling``, ``likelihood`` and ``flow`` import this
module (never the other way round).

NFE accounting (true vector-field evaluations): an explicit Runge-Kutta step costs ``num_stages``
evaluations, or ``num_stages - 1`` for first-same-as-last (FSAL) tableaus after one initial
evaluation; rejected steps count too. ``dt0`` is always given, so diffrax makes no extra evaluations
to pick the first step. ``solve_ode`` makes the initial FSAL evaluation itself and hands it to diffrax
as the solver state: left to diffrax, a rejected first step keeps its "first step" flag and
re-evaluates the first stage (diffrax 0.7 ``runge_kutta.py``: the solver state is only replaced on an
accepted step), so ``sol.stats`` could not give the count (bosh3 on VE: 236 evaluations, 235 by the
formula, after one rejected first step).
"""
from __future__ import annotations

from typing import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp

from score_jax.score import ode_velocity_from_score

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
# Solvers without an embedded error estimate: fixed steps only.
FIXED_STEP_ONLY = ("euler",)


def get_ode_solver(name: str):
    """The diffrax solver instance for ``name``; unknown names raise ValueError listing the valid."""
    if name not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE solver {name!r}; valid choices: {list(ODE_SOLVERS)}")
    return ODE_SOLVERS[name]()


def evals_per_step(solver, *, fsal: bool = True) -> tuple[int, int]:
    """(vector-field evaluations per step, initial evaluations) of an explicit RK ``solver``.

    ``fsal=False`` counts a step that cannot reuse the last stage (the state was changed between
    steps, see ``fixed_step_solve``): every stage is evaluated.
    """
    if isinstance(solver, dfx.Euler):
        return 1, 0
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        raise ValueError(f"cannot count evaluations of solver {type(solver).__name__}")
    stages = len(tableau.c) + 1
    return (stages - 1, 1) if (tableau.fsal and fsal) else (stages, 0)


def ode_nfe(solver, num_steps):
    """True number of vector-field evaluations of ``num_steps`` (accepted + rejected) RK steps."""
    per_step, init = evals_per_step(solver)
    return per_step * num_steps + init


def check_solve_options(solver: str, rtol: float, atol: float, num_steps: int | None) -> None:
    """ValueError naming the bad value and the valid range: solver in ``ODE_SOLVERS``, rtol and atol
    finite and > 0, num_steps None (adaptive) or an int >= 1; "euler" needs num_steps."""
    get_ode_solver(solver)
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float)) and 0.0 < float(v) < float("inf")):
            raise ValueError(f"{name} must be a finite number > 0; got {name}={v!r}")
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int)
                                  or num_steps < 1):
        raise ValueError(f"num_steps must be None (adaptive) or an int >= 1; got {num_steps!r}")
    if num_steps is None and solver in FIXED_STEP_ONLY:
        raise ValueError(f"solver {solver!r} has no error estimate: give num_steps for a "
                         f"fixed-step solve (adaptive solvers: "
                         f"{[s for s in ODE_SOLVERS if s not in FIXED_STEP_ONLY]})")


def solve_ode(
    vector_field: Callable,
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
    """Solve dy/dt = vector_field(t, y) (t a scalar, y any pytree) from t0 to t1 with diffrax.

    Adaptive (PID controller with ``rtol`` / ``atol``; first step (t1 - t0) / 100) unless
    ``num_steps`` is given, in which case the steps are ``linspace(t0, t1, num_steps + 1)``.
    Returns ``(y1, nfe)``, nfe the true
    number of vector-field evaluations as an int32 scalar array. Raises ValueError for an unknown
    solver, tolerances <= 0, num_steps < 1, or an adaptive solve with "euler".
    """
    check_solve_options(solver, rtol, atol, num_steps)
    slv = get_ode_solver(solver)
    term = dfx.ODETerm(lambda t, y, args: vector_field(t, y))
    if num_steps is not None:
        # Exactly num_steps steps on linspace(t0, t1): ConstantStepSize accumulates t0 + k dt in
        # float32 and may need one more (tiny) step than max_steps allows (seen at eps = 0.9).
        controller = dfx.StepTo(ts=jnp.linspace(t0, t1, num_steps + 1))
        dt0 = None
        max_steps = num_steps
    else:
        controller = dfx.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 100.0
    solver_state = None
    if evals_per_step(slv)[1]:
        # FSAL: evaluate the first stage once here, so that no step (a rejected first step included)
        # re-evaluates it and the count is exactly ode_nfe(num_steps) (module docstring).
        # in the dtype diffrax gives the state (y0 promoted with the time dtype: a bf16 state is
        # solved in float32), as its own init lays the FSAL slot out; the loop carry keeps it
        t_dtype = jnp.asarray(t0).dtype
        y0_solved = jax.tree_util.tree_map(
            lambda y: jnp.asarray(y, jnp.result_type(y.dtype, t_dtype)), y0)
        f0 = jax.tree_util.tree_map(lambda f, y: jnp.asarray(f, y.dtype),
                                    term.vf(t0, y0_solved, None), y0_solved)
        solver_state = (jnp.asarray(False), f0)
    sol = dfx.diffeqsolve(
        term, slv, t0=t0, t1=t1, dt0=dt0, y0=y0, stepsize_controller=controller,
        saveat=dfx.SaveAt(t1=True), max_steps=max_steps, throw=True, solver_state=solver_state,
    )
    y1 = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    return y1, jnp.asarray(ode_nfe(slv, sol.stats["num_steps"]), jnp.int32)


def fixed_step_solve(
    vector_field: Callable,
    y0: Array,
    times: Array,
    *,
    solver: str = "heun",
    after_step: Callable[[int, Array, Array], Array] | None = None,
) -> tuple[Array, int]:
    """Integrate dy/dt = vector_field(t, y) over the grid ``times`` (K + 1 points) with K steps of
    the diffrax ``solver`` in one ``lax.scan``, calling ``after_step(i, y, t_{i+1}) -> y`` after
    step i (e.g. the replacement of known pixels in inpainting; None: no hook).

    With a hook the state changes between steps, so FSAL solvers re-evaluate their first stage:
    every step costs all its stages. Returns ``(y_K, nfe)`` with nfe a Python int.
    """
    slv = get_ode_solver(solver)
    term = dfx.ODETerm(lambda t, y, args: vector_field(t, y))
    K = times.shape[0] - 1
    made_jump = after_step is not None
    state0 = slv.init(term, times[0], times[1], y0, None)

    def body(carry, i):
        y, state = carry
        y, _, _, state, _ = slv.step(term, times[i], times[i + 1], y, None, state, made_jump)
        if after_step is not None:
            y = after_step(i, y, times[i + 1])
        return (y, state), None

    (y, _), _ = jax.lax.scan(body, (y0, state0), jnp.arange(K))
    per_step, init = evals_per_step(slv, fsal=not made_jump)
    return y, per_step * K + init


def probability_flow_drift(sde, score_fn: Callable[[Array, Array], Array]) -> Callable:
    """The probability-flow ODE of ``sde`` as ``v(t, x)`` with scalar t (Song et al. 2021 eq. 13):

        dx/dt = f(x, t) - g(t)^2 score(x, t) / 2,

    x of shape (B, ...), t broadcast to (B,) in float32 (or x's dtype where wider: a bf16 state keeps
    float32 times, ``sampling/common.py``), the velocity returned in x's dtype. The formula itself is
    ``score.ode_velocity_from_score`` (one home); every sampler, likelihood and encoder builds its vector field here.
    """

    def v(t, x):
        # Times in float32 (or x's wider dtype) whatever x's dtype; the velocity in x's dtype.
        tb = jnp.full((x.shape[0],), t, jnp.promote_types(x.dtype, jnp.float32))
        return ode_velocity_from_score(sde, x, tb, score_fn(x, tb)).astype(x.dtype)

    return v


# The name used before the ODE layer existed (sampling.diffeq.probability_flow_velocity).
probability_flow_velocity = probability_flow_drift

__all__ = [
    "ODE_SOLVERS", "FIXED_STEP_ONLY", "get_ode_solver", "evals_per_step", "ode_nfe",
    "check_solve_options", "solve_ode", "fixed_step_solve", "probability_flow_drift",
    "probability_flow_velocity",
]
