"""The general SDE simulator: dX = drift(X, t) dt + diffusion(X, t) dW for any drift and
diagonal diffusion (a scalar, one value per example, or x's shape), by a ``lax.scan``
Euler-Maruyama stepper or diffrax's SDE solvers on a fixed grid (``UnsafeBrownianPath``).

Public API: ``sampling.simulate_sde`` (the whole path) and ``sde_solve`` (the final state; also
the integrator of ``flow.flow_sample``'s SDE extension, which may not import the sampler
package). Moved out of ``sde.py`` (which re-exports these names) so that ``sde.py`` holds the
SDE family only.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx

Array = jax.Array


# name -> (diffrax solver class, Levy area). "euler_maruyama" is the lax.scan stepper (no diffrax).
# "euler" is Ito Euler-Maruyama through diffrax; "heun" converges to the Stratonovich solution
# (equal to Ito for additive noise); "sea", "sra1", "shark" assume additive noise (a diffusion
# that does not depend on x).
SIMULATE_SOLVERS = {
    "euler_maruyama": None,
    "euler": (dfx.Euler, dfx.BrownianIncrement),
    "heun": (dfx.Heun, dfx.BrownianIncrement),
    "sea": (dfx.SEA, dfx.SpaceTimeLevyArea),
    "sra1": (dfx.SRA1, dfx.SpaceTimeLevyArea),
    "shark": (dfx.ShARK, dfx.SpaceTimeLevyArea),
}


def _traced_fn(fn: Callable):
    """A pytree stand-in for ``fn``: a bound method of a pytree becomes ``Partial(func, self)``
    (self traced); other callables go through ``runner.as_pytree_fn``."""
    if inspect.ismethod(fn):
        self = fn.__self__
        leaves = jax.tree_util.tree_leaves(self)
        if not (len(leaves) == 1 and leaves[0] is self):
            return jax.tree_util.Partial(fn.__func__, self)
    leaves = jax.tree_util.tree_leaves(fn)
    if len(leaves) == 1 and leaves[0] is fn:  # a plain callable: static
        return jax.tree_util.Partial(fn)
    return fn


def _diag(g: Array, x: Array) -> Array:
    """The diffusion's value as an array of x's shape: a scalar, (B,) (per example) or x.shape."""
    g = jnp.asarray(g, x.dtype)
    if g.ndim == 1 and g.shape[0] == x.shape[0] and x.ndim > 1:
        return jnp.broadcast_to(g.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    return jnp.broadcast_to(g, x.shape)


def _check_simulate(solver: str, substeps, x0) -> None:
    if solver not in SIMULATE_SOLVERS:
        raise ValueError(f"Unknown SDE solver {solver!r}; valid choices: {list(SIMULATE_SOLVERS)}")
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an int >= 1; got {substeps!r}")
    if jnp.ndim(x0) < 1:
        raise ValueError(f"x0 must have shape (B, ...); got shape {jnp.shape(x0)}")


def _grid(ts: Array, substeps: int) -> Array:
    """ts refined by ``substeps`` equal steps per interval, shape ((len(ts) - 1) substeps + 1,)."""
    frac = jnp.arange(substeps, dtype=ts.dtype) / substeps
    inner = (ts[:-1, None] + frac[None] * (ts[1:] - ts[:-1])[:, None]).reshape(-1)
    return jnp.concatenate([inner, ts[-1:]])


@functools.partial(jax.jit, static_argnames=("solver", "substeps"))
def _simulate(key, drift, diffusion, x0, ts, solver, substeps):
    B = x0.shape[0]
    grid = _grid(ts, substeps)

    def tb(t):
        return jnp.full((B,), t, x0.dtype)

    if solver == "euler_maruyama":
        def step(x, inp):
            t, dt, k = inp
            z = jax.random.normal(k, x.shape, x.dtype)
            x = x + drift(x, tb(t)) * dt + _diag(diffusion(x, tb(t)), x) * jnp.sqrt(dt) * z
            return x, x

        dts = grid[1:] - grid[:-1]
        keys = jax.random.split(key, dts.shape[0])
        _, xs = jax.lax.scan(step, x0, (grid[:-1], dts, keys))
        xs = jnp.concatenate([x0[None], xs])[::substeps]
        return xs
    solver_cls, levy = SIMULATE_SOLVERS[solver]
    terms = dfx.MultiTerm(
        dfx.ODETerm(lambda t, x, a: drift(x, tb(t))),
        dfx.ControlTerm(lambda t, x, a: lx.DiagonalLinearOperator(_diag(diffusion(x, tb(t)), x)),
                        dfx.UnsafeBrownianPath(shape=x0.shape, key=key, levy_area=levy)))
    sol = dfx.diffeqsolve(terms, solver_cls(), t0=grid[0], t1=grid[-1], dt0=None, y0=x0,
                          saveat=dfx.SaveAt(ts=ts), adjoint=dfx.ForwardMode(),
                          stepsize_controller=dfx.StepTo(ts=grid), max_steps=grid.shape[0] - 1)
    return sol.ys


def sde_solve(key: Array, drift: Callable, diffusion: Callable, x0: Array, t0: float, t1: float,
              num_steps: int, *, solver: str = "euler_maruyama") -> tuple[Array, int]:
    """The state at t1 of ``simulate_sde`` on a uniform grid of ``num_steps`` steps from t0 to t1
    (traceable: callers jit it). Returns ``(x, nfe)``, nfe the number of drift evaluations
    (diffrax "heun" evaluates it twice per step, SRK solvers once per stage)."""
    _check_simulate(solver, num_steps, x0)
    ts = jnp.asarray([t0, t1], x0.dtype)
    x = _simulate(key, _traced_fn(drift), _traced_fn(diffusion), x0, ts, solver, num_steps)[-1]
    if solver == "euler_maruyama":
        return x, num_steps
    slv = SIMULATE_SOLVERS[solver][0]()
    if isinstance(slv, dfx.Euler):
        per = 1
    elif isinstance(slv, dfx.Heun):
        per = 2
    else:  # stochastic RK: one drift evaluation per stage not flagged ignore_stage_f
        tab = slv.tableau
        per = len(tab.c) + 1 - int(sum(bool(v) for v in (getattr(tab, "ignore_stage_f", None)
                                                          or ())))
    return x, per * num_steps




__all__ = ["SIMULATE_SOLVERS", "sde_solve"]
