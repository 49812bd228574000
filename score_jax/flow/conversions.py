"""Velocity <-> score / eps / x1 on a Gaussian path, and score functions of flow models for the
SDE samplers (``score_fn_from_velocity``) and back.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from score_jax import pytree
from score_jax import score as score_lib
from score_jax.flow.paths import SDEPath

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]


# ----------------------------------------------------------------------------------------------
# Conversions on Gaussian paths
#
# The velocity u here is always d x / dt in FLOW time t of ``path`` (noise at t = 0, data at
# t = 1), and t is flow time. For ``SDEPath(sde, eps)`` (SDE time s = T + t (eps - T)) this is
# u = dx/dt = -(T - eps) dx/ds, with dx/ds the SDE's probability-flow drift
# f - g^2 score / 2 (Song et al. eq. 13): pass ``sde`` itself instead of the path to
# ``score.convert`` to get velocities in SDE time s.
# ----------------------------------------------------------------------------------------------
def velocity_to_score(u: Array, x: Array, t: Array, path) -> Array:
    """The score at (x, flow time t) from the flow-time velocity u = dx/dt of ``path``
    (for ``SDEPath``: dx/dt = -(T - eps) dx/ds in SDE time s, see the note above).

    score = -eps_hat / sigma_t with eps_hat = (alpha_t u - alpha'_t x) / (alpha_t sigma'_t -
    sigma_t alpha'_t); for CondOT: score = (t u - x) / (1 - t). Singular at sigma_t = 0."""
    return score_lib.convert(u, x, t, path, source="velocity", target="score")


def score_to_velocity(score: Array, x: Array, t: Array, path) -> Array:
    """The flow-time velocity u = dx/dt of ``path`` at (x, flow time t) from the score:
    u = alpha'_t x1_hat + sigma'_t eps_hat with eps_hat = -sigma_t score,
    x1_hat = (x - sigma_t eps_hat) / alpha_t; for CondOT: u = (x + (1 - t) score) / t. Singular
    at alpha_t = 0 (the velocity at pure noise depends on E[x1], which the score there lacks)."""
    return score_lib.convert(score, x, t, path, source="score", target="velocity")


def velocity_to_eps(u: Array, x: Array, t: Array, path) -> Array:
    """eps_hat = (alpha_t u - alpha'_t x) / (alpha_t sigma'_t - sigma_t alpha'_t);
    CondOT: x - t u."""
    return score_lib.convert(u, x, t, path, source="velocity", target="eps")


def eps_to_velocity(eps: Array, x: Array, t: Array, path) -> Array:
    """u = alpha'_t (x - sigma_t eps) / alpha_t + sigma'_t eps; CondOT: (x - eps) / t."""
    return score_lib.convert(eps, x, t, path, source="eps", target="velocity")


def velocity_to_x1(u: Array, x: Array, t: Array, path) -> Array:
    """x1_hat = (sigma'_t x - sigma_t u) / (alpha_t sigma'_t - sigma_t alpha'_t); CondOT:
    x + (1 - t) u."""
    return score_lib.convert(u, x, t, path, source="velocity", target="x0")


@pytree.dataclass
class VelocityScoreFn:
    """``score_fn(x, time)`` from a flow-time ``velocity_fn(x, t)`` on ``path``; see
    ``score_fn_from_velocity``."""

    velocity_fn: Any
    path: Any
    sde_time: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x: Array, time: Array) -> Array:
        t = self.path.flow_time(time) if self.sde_time else time
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        return velocity_to_score(self.velocity_fn(x, t), x, t, self.path).astype(x.dtype)


@pytree.dataclass
class ScoreVelocityFn:
    """Flow-time ``velocity_fn(x, t)`` from ``score_fn(x, time)``; see ``velocity_fn_from_score``."""

    score_fn: Any
    path: Any
    sde_time: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        time = self.path.sde_time(t) if self.sde_time else t
        return score_to_velocity(self.score_fn(x, time), x, t, self.path).astype(x.dtype)


def _default_sde_time(path, sde_time):
    if sde_time is None:
        return isinstance(path, SDEPath)
    if sde_time and not isinstance(path, SDEPath):
        raise ValueError(f"sde_time=True needs an SDEPath (the only path with an SDE time); "
                         f"got {type(path).__name__}")
    return bool(sde_time)


def score_fn_from_velocity(velocity_fn: VelocityFn, path, *, sde_time: bool | None = None):
    """The score of a flow model: ``score_fn(x, time)`` = ``velocity_to_score(v(x, t), x, t, path)``.

    ``velocity_fn(x, t)`` predicts the FLOW-time velocity dx/dt of ``path`` (what
    ``flow_matching_loss`` trains). For an ``SDEPath(sde, eps)`` (default ``sde_time=True``) the
    returned ``score_fn`` takes SDE time s (data at s = 0) and maps it to flow time
    t = (T - s) / (T - eps), so it runs in every SDE sampler of ``sampling.sample(key, sde, ...)``
    (at s < eps it extrapolates the path linearly in t). For other paths (or ``sde_time=False``) it
    takes flow time t. Do not feed such a model to ``score.convert(..., sde,
    source="velocity")``: that head is dx/ds in SDE time, -1 / (T - eps) times this velocity.
    Raises ValueError for ``sde_time=True`` on a path that is not an ``SDEPath``.
    """
    return VelocityScoreFn(velocity_fn, path, _default_sde_time(path, sde_time))


def velocity_fn_from_score(score_fn, path, *, sde_time: bool | None = None):
    """The inverse of ``score_fn_from_velocity``: the flow-time ``velocity_fn(x, t)`` of ``path``
    from ``score_fn`` (taking SDE time for an ``SDEPath`` by default, flow time otherwise);
    u = (alpha'_t / alpha_t) x + (beta_t^2 alpha'_t / alpha_t - beta'_t beta_t) score, singular at
    alpha_t = 0 (t = 0)."""
    return ScoreVelocityFn(score_fn, path, _default_sde_time(path, sde_time))
