"""Simulating a given SDE and Langevin dynamics (MIT 6.S184 lab 1; Song & Ermon 2019, Sec. 2.2).

- ``simulate_sde(key, drift, diffusion, x0, ts)``: dX = drift(X, t) dt + diffusion(X, t) dW_t
  (Ito) for any drift and diagonal diffusion, from ``ts[0]`` to ``ts[-1]``, returning the state at
  every time of ``ts``: Euler-Maruyama in one ``lax.scan`` ("euler_maruyama") or a diffrax SDE
  solve ("euler", "heun", "sea", "sra1", "shark").
- ``langevin(key, score_fn, x_init, step_size, num_steps)``: unadjusted Langevin dynamics
  x <- x + eps grad log p(x) + sqrt(2 eps) z for a fixed (time-independent) target p.
- ``sde_solve``: the final state only, used by ``flow.flow_sample``'s stochastic solvers.

Everything runs in one ``jax.jit`` (no Python loop over steps). Plain functions are static under
jit (compiled once per function object); pytree callables (an equinox module, a
``jax.tree_util.Partial``) and methods of pytrees (``sde.OUProcess(...).drift``) are traced.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx

from score_jax.runner import as_pytree_fn
from score_jax.sde import batch_mul

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
    return as_pytree_fn(fn)


def _diag(g: Array, x: Array) -> Array:
    """The diffusion's value as an array of x's shape: a scalar, (B,) (per example) or x.shape."""
    g = jnp.asarray(g, x.dtype)
    if g.ndim == 1 and g.shape[0] == x.shape[0] and x.ndim > 1:
        return batch_mul(g, jnp.ones_like(x))
    return jnp.broadcast_to(g, x.shape)


def _check(solver: str, substeps, x0) -> None:
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


def simulate_sde(
    key: Array,
    drift: Callable[[Array, Array], Array],
    diffusion: Callable[[Array, Array], Array],
    x0: Array,
    ts: Array,
    *,
    solver: str = "euler_maruyama",
    substeps: int = 1,
) -> Array:
    """Simulate the Ito SDE dX_t = drift(X_t, t) dt + diffusion(X_t, t) dW_t (diagonal noise).

    Args:
      key: PRNG key of the Brownian path.
      drift: ``drift(x, t)`` with x of shape (B, ...) and t of shape (B,) (every example at the same
        time), returning x's shape.
      diffusion: ``diffusion(x, t)``: the diagonal of the noise matrix, an array of x's shape, a
        per-example (B,) array or a scalar.
      x0: initial states, shape (B, ...), at time ``ts[0]``.
      ts: increasing save times, shape (M,), M >= 2; the integration runs from ts[0] to ts[-1].
      solver: "euler_maruyama" (x <- x + f dt + g sqrt(dt) z in a lax.scan), or the diffrax SDE
        solvers "euler" (Ito Euler-Maruyama), "heun" (Stratonovich; equal to Ito for additive
        noise), "sea" / "sra1" / "shark" (additive noise only).
      substeps: solver steps per interval [ts[i], ts[i+1]] (equal steps).

    Returns:
      The trajectory at ``ts``, TIME-MAJOR: shape (M, B, ...), ``out[0] == x0``.

    Raises:
      ValueError: unknown solver, substeps < 1, x0 without a batch axis, ts not 1-D with >= 2
        entries.
    """
    _check(solver, substeps, x0)
    ts = jnp.asarray(ts, jnp.result_type(x0.dtype, jnp.float32))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be 1-D with at least 2 times; got shape {ts.shape}")
    return _simulate(key, _traced_fn(drift), _traced_fn(diffusion), x0, ts.astype(x0.dtype),
                     solver, substeps)


def sde_solve(key: Array, drift: Callable, diffusion: Callable, x0: Array, t0: float, t1: float,
              num_steps: int, *, solver: str = "euler_maruyama") -> tuple[Array, int]:
    """The state at t1 of ``simulate_sde`` on a uniform grid of ``num_steps`` steps from t0 to t1
    (traceable: callers jit it). Returns ``(x, nfe)``, nfe the number of drift evaluations
    (diffrax "heun" evaluates it twice per step, SRK solvers once per stage)."""
    _check(solver, num_steps, x0)
    ts = jnp.asarray([t0, t1], x0.dtype)
    x = _simulate(key, _traced_fn(drift), _traced_fn(diffusion), x0, ts, solver, num_steps)[-1]
    if solver == "euler_maruyama":
        return x, num_steps
    from score_jax.sampling.diffeq import sde_evals_per_step

    return x, sde_evals_per_step(SIMULATE_SOLVERS[solver][0]()) * num_steps


@functools.partial(jax.jit, static_argnames=("num_steps", "return_trajectory"))
def _langevin(key, score_fn, x, step_size, num_steps, return_trajectory):
    def step(x, k):
        z = jax.random.normal(k, x.shape, x.dtype)
        x = x + step_size * score_fn(x) + jnp.sqrt(2.0 * step_size) * z
        return x, (x if return_trajectory else None)

    x, traj = jax.lax.scan(step, x, jax.random.split(key, num_steps))
    return (x, traj) if return_trajectory else x


def langevin(key: Array, score_fn: Callable[[Array], Array], x_init: Array, step_size: float,
             num_steps: int, *, return_trajectory: bool = False):
    """Unadjusted Langevin dynamics on a fixed target p (Roberts & Tweedie 1996; Song & Ermon 2019
    eq. 4): x_{k+1} = x_k + eps grad log p(x_k) + sqrt(2 eps) z_k, z_k ~ N(0, I).

    ``score_fn(x)`` is the time-independent score grad log p, x of shape (B, ...) (e.g.
    ``toy.GaussianMixture.score``); ``step_size`` eps > 0 (the chain's bias is O(eps)).
    Returns the final x (B, ...), or ``(x, trajectory)`` with the trajectory time-major
    (num_steps, B, ...) when ``return_trajectory``. Raises ValueError for eps <= 0 or
    num_steps < 1.
    """
    if not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(f"step_size must be a number > 0; got {step_size!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1; got {num_steps!r}")
    return _langevin(key, _traced_fn(score_fn), x_init, jnp.asarray(step_size, x_init.dtype),
                     num_steps, return_trajectory)


__all__ = ["SIMULATE_SOLVERS", "simulate_sde", "sde_solve", "langevin"]
