"""Sampling a flow (ODE: Euler, Heun, diffrax; SDE extension) and its log-likelihood by the
instantaneous change of variables (``ode.py`` / ``likelihood.py`` machinery).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.flow.conversions import velocity_to_score
from score_jax.flow.paths import CondOTPath
from score_jax.likelihood import ode_log_likelihood
from score_jax.ode import ODE_SOLVERS, check_solve_options, solve_ode
from score_jax.runner import run_sampler
from score_jax.sde import batch_mul
from score_jax.sde_simulator import sde_solve

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]


FLOW_SOLVERS = tuple(ODE_SOLVERS)


def flow_ode_solve(velocity_fn: VelocityFn, x_init: Array, *, solver: str = "heun",
                   num_steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                   t0: float = 0.0, t1: float = 1.0) -> tuple[Array, Array]:
    """Integrate dx/dt = v(x, t) from t0 to t1 with diffrax (``ode.solve_ode``): fixed steps
    when ``num_steps`` is given (euler: NFE = num_steps, heun / midpoint: 2 num_steps, ...), else
    adaptive with rtol / atol (tsit5, dopri5, bosh3, heun, ...). Returns ``(x, nfe)``."""
    check_solve_options(solver, rtol, atol, num_steps)

    def vf(t, x):
        return velocity_fn(x, jnp.full((x.shape[0],), t, jnp.promote_types(x.dtype, jnp.float32)))

    return solve_ode(vf, x_init, t0, t1, solver=solver, rtol=rtol, atol=atol, num_steps=num_steps)


def flow_ode_sampler(key: Array, path, velocity_fn: VelocityFn, x_init: Array, *,
                     solver: str = "heun", num_steps: int | None = None, rtol: float = 1e-5,
                     atol: float = 1e-5, t0: float = 0.0, t1: float = 1.0) -> tuple[Array, Array]:
    """The flow sampler in the sampler contract ``fn(key, sde, score_fn, x_init, **options)`` of
    ``runner.run_sampler`` (``path`` in the SDE's place, the velocity in the score's): the ODE from
    t0 (prior, default 0) to t1 (data, default 1). Deterministic: ``key`` is unused."""
    return flow_ode_solve(velocity_fn, x_init, solver=solver, num_steps=num_steps, rtol=rtol,
                          atol=atol, t0=t0, t1=t1)


# Stochastic flow solvers: flow_sample name -> sampling.simulate solver name.
FLOW_SDE_SOLVERS = {"euler_maruyama": "euler_maruyama", "sde_heun": "heun", "sea": "sea",
                    "sra1": "sra1", "shark": "shark"}


def _sigma_t(sigma, t: Array) -> Array:
    return jnp.asarray(sigma(t) if callable(sigma) else sigma, t.dtype) * jnp.ones_like(t)


def flow_sde_sampler(key: Array, path, velocity_fn: VelocityFn, x_init: Array, *,
                     solver: str = "euler_maruyama", num_steps: int = 100, sigma=1.0,
                     t0: float = 0.0, t1: float = 1.0) -> tuple[Array, int]:
    """The SDE extension of a flow (MIT 6.S184 lecture 3, Theorem "SDE extension trick"): for any
    sigma_t >= 0,

        dX_t = [u_t(X_t) + sigma_t^2 / 2 score_t(X_t)] dt + sigma_t dW_t,   X_0 ~ prior,

    has the marginals p_t of the flow dX = u_t(X) dt; the score comes from the velocity on the
    Gaussian path (``velocity_to_score``; singular at beta_t = 0, so Euler-Maruyama, which never
    evaluates the drift at t1, reaches t1 = 1 on CondOT; solvers evaluating at t1 need t1 < 1).
    ``sigma``: a float or a callable of t (shape (B,) -> (B,)). One velocity evaluation per
    drift evaluation. Returns ``(x, nfe)``."""
    def drift(x, t):
        u = velocity_fn(x, t)
        g2 = jnp.square(_sigma_t(sigma, t))
        return u + batch_mul(0.5 * g2, velocity_to_score(u, x, t, path))

    def diffusion(x, t):
        return _sigma_t(sigma, t)

    return sde_solve(key, jax.tree_util.Partial(drift), jax.tree_util.Partial(diffusion), x_init,
                     t0, t1, num_steps, solver=FLOW_SDE_SOLVERS[solver])


def flow_sample(
    key: Array,
    velocity_fn: VelocityFn,
    shape: tuple[int, ...],
    *,
    path=None,
    solver: str = "heun",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    sigma=None,
    t0: float = 0.0,
    t1: float = 1.0,
    x_init: Array | None = None,
    dtype=jnp.float32,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[Array, int]:
    """Draw samples by integrating the flow from the prior of ``path`` (default ``CondOTPath()``)
    at t0 (default 0) to the data at t1 (default 1), in the one jitted runner
    (``runner.run_sampler``); returns ``(x, nfe)`` with the true number of velocity evaluations (a
    Python int).

    ``solver``: an ODE solver of ``FLOW_SOLVERS`` ("euler", "heun", "midpoint" with ``num_steps``,
    or an adaptive solver "tsit5", "dopri5", ... with ``num_steps=None``), or a stochastic solver
    of ``FLOW_SDE_SOLVERS`` ("euler_maruyama", "sde_heun", "sea", "sra1", "shark"; fixed
    ``num_steps``, default 100) for the SDE extension with noise level ``sigma`` (a float >= 0 or
    a callable of t; default 1.0; see ``flow_sde_sampler``). ``t1 < 1`` stops short of a singular
    end point (e.g. beta_t = sqrt(1 - t), whose velocity is infinite at t = 1). ``x_init`` replaces
    the prior draw (e.g. a batch of a source data set for a bridge). ``sharding`` lays the batch
    out over a device mesh (the result does not depend on it).

    Raises ValueError for an unknown solver (listing both families), tolerances <= 0,
    num_steps < 1, an adaptive "euler", ``sigma`` with an ODE solver, a negative ``sigma``, or
    not 0 <= t0 < t1 <= 1, before compiling."""
    path = CondOTPath() if path is None else path
    if not (isinstance(t0, (int, float)) and isinstance(t1, (int, float)) and 0.0 <= t0 < t1 <= 1.0):
        raise ValueError(f"need 0 <= t0 < t1 <= 1; got t0={t0!r}, t1={t1!r}")
    if solver in FLOW_SDE_SOLVERS:
        sigma = 1.0 if sigma is None else sigma
        if not callable(sigma) and not (isinstance(sigma, (int, float)) and sigma >= 0):
            raise ValueError(f"sigma must be a float >= 0 or a callable of t; got {sigma!r}")
        num_steps = 100 if num_steps is None else num_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1; got {num_steps!r}")
        return run_sampler(flow_sde_sampler, key, path, velocity_fn, shape, x_init=x_init,
                           dtype=dtype, sharding=sharding,
                           options=dict(solver=solver, num_steps=num_steps, sigma=sigma,
                                        t0=float(t0), t1=float(t1)))
    if solver not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE solver {solver!r} (flow_sample); valid choices: ODE "
                         f"{list(ODE_SOLVERS)}, "
                         f"SDE {list(FLOW_SDE_SOLVERS)}")
    if sigma is not None:
        raise ValueError(f"sigma={sigma!r} is an option of the stochastic solvers "
                         f"{list(FLOW_SDE_SOLVERS)}; solver {solver!r} is an ODE solver")
    check_solve_options(solver, rtol, atol, num_steps)
    return run_sampler(flow_ode_sampler, key, path, velocity_fn, shape, x_init=x_init,
                       dtype=dtype, sharding=sharding,
                       options=dict(solver=solver, num_steps=num_steps, rtol=rtol, atol=atol,
                                    t0=float(t0), t1=float(t1)))


def flow_log_likelihood(
    key: Array,
    velocity_fn: VelocityFn,
    x: Array,
    *,
    path=None,
    hutchinson: str = "rademacher",
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
) -> tuple[Array, Array, Array]:
    """log p_1(x) in nats per example under the flow (instantaneous change of variables, Chen et
    al. 2018): log p_1(x) = log p_0(z) - int_0^1 div v(x_t, t) dt, integrated from data (t = 1) to
    noise (t = 0) by ``likelihood.ode_log_likelihood`` (exact or Hutchinson divergence).
    Returns ``(logp, z, nfe)``. Jit-able."""
    path = CondOTPath() if path is None else path

    def vf(t, y):
        return velocity_fn(y, jnp.full((y.shape[0],), t, jnp.promote_types(y.dtype, jnp.float32)))

    return ode_log_likelihood(key, vf, x, 1.0, 0.0, path.prior_logp, hutchinson=hutchinson,
                              solver=solver, rtol=rtol, atol=atol, num_steps=num_steps)
