"""Simulating a given SDE and Langevin dynamics (MIT 6.S184 lab 1; Song & Ermon 2019, Sec. 2.2).

- ``simulate_sde(key, drift, diffusion, x0, ts)``: dX = drift(X, t) dt + diffusion(X, t) dW_t
  (Ito) for any drift and diagonal diffusion, from ``ts[0]`` to ``ts[-1]``, returning the state at
  every time of ``ts``: Euler-Maruyama in one ``lax.scan`` ("euler_maruyama") or a diffrax SDE
  solve ("euler", "heun", "sea", "sra1", "shark").
- ``langevin(key, score_fn, x_init, step_size, num_steps)``: unadjusted Langevin dynamics
  x <- x + eps grad log p(x) + sqrt(2 eps) z for a fixed (time-independent) target p.
The integrator itself (``_simulate``, also ``sde.sde_solve``: the final state only, used by
``flow.flow_sample``'s stochastic solvers) lives in ``sde.py``, below ``flow`` and this package.

Everything runs in one ``jax.jit`` (no Python loop over steps). Plain functions are static under
jit (compiled once per function object); pytree callables (an equinox module, a
``jax.tree_util.Partial``) and methods of pytrees (``sde.OUProcess(...).drift``) are traced.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.sde import SIMULATE_SOLVERS, _check_simulate, _simulate, _traced_fn, sde_solve

Array = jax.Array

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
    _check_simulate(solver, substeps, x0)
    ts = jnp.asarray(ts, jnp.result_type(x0.dtype, jnp.float32))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be 1-D with at least 2 times; got shape {ts.shape}")
    return _simulate(key, _traced_fn(drift), _traced_fn(diffusion), x0, ts.astype(x0.dtype),
                     solver, substeps)


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
