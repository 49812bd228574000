"""Gaussian probability paths in flow time (noise at t = 0, data at t = 1): ``GaussianPath``,
``CondOTPath``, ``SDEPath``, ``PATHS`` / ``get_path`` (see the package docstring).
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from score_jax import pytree
from score_jax import score as score_lib
from score_jax.sde import GaussianPrior, batch_mul, gaussian_perturb

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]


class GaussianPathMethods(GaussianPrior, abc.ABC):
    """The formulas shared by every Gaussian path (``GaussianPath``, ``CondOTPath``, ``SDEPath``),
    written in terms of ``marginal_coeffs(t) -> (alpha_t, beta_t)``; see ``GaussianPath``."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha_t, beta_t) at flow time t (any shape)."""

    def coeffs_and_derivs(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """(alpha_t, beta_t, alpha'_t, beta'_t) at flow time t, derivatives by forward-mode AD."""
        return score_lib.marginal_coeffs_and_derivs(self, jnp.asarray(t))

    def sample_conditional(self, key: Array, z: Array, t: Array) -> Array:
        """x ~ p_t(. | z) = N(alpha_t z, beta_t^2 I), z of shape (B, ...), t of shape (B,)."""
        a, b = self.marginal_coeffs(t)
        return gaussian_perturb(a, b, z, jax.random.normal(key, z.shape, z.dtype))

    def conditional_velocity(self, x: Array, z: Array, t: Array) -> Array:
        """u_t(x | z) = (alpha'_t - beta'_t / beta_t alpha_t) z + beta'_t / beta_t x; x, z of
        shape (B, ...), t (B,). Singular where beta_t = 0."""
        a, b, da, db = self.coeffs_and_derivs(t)
        return batch_mul(da - db / b * a, z) + batch_mul(db / b, x)

    def conditional_score(self, x: Array, z: Array, t: Array) -> Array:
        """grad_x log N(x; alpha_t z, beta_t^2 I) = -(x - alpha_t z) / beta_t^2."""
        a, b = self.marginal_coeffs(t)
        return batch_mul(-1.0 / jnp.square(b), x - batch_mul(a, z))

    def velocity_from_score(self, score: Array, x: Array, t: Array) -> Array:
        """u = (alpha'_t / alpha_t) x + (beta_t^2 alpha'_t / alpha_t - beta'_t beta_t) score
        (singular at alpha_t = 0)."""
        a, b, da, db = self.coeffs_and_derivs(t)
        return batch_mul(da / a, x) + batch_mul(b**2 * da / a - db * b, score)

    def score_from_velocity(self, u: Array, x: Array, t: Array) -> Array:
        """The inverse: score = (u - (alpha'_t / alpha_t) x) / (beta_t^2 alpha'_t / alpha_t -
        beta'_t beta_t) = (alpha_t u - alpha'_t x) / (beta_t (alpha'_t beta_t - alpha_t beta'_t))
        (finite at alpha_t = 0, singular at beta_t = 0)."""
        a, b, da, db = self.coeffs_and_derivs(t)
        return batch_mul(1.0 / (b * (da * b - a * db)), batch_mul(a, u) - batch_mul(da, x))


@pytree.dataclass
class GaussianPath(GaussianPathMethods):
    """A Gaussian probability path from two callables of flow time t (MIT 6.S184 lecture 2):

        x_t = alpha_t z + beta_t eps,   z ~ data, eps ~ N(0, I),   alpha_0 = 0, beta_0 = 1,
        alpha_1 = 1, beta_1 = 0 (not checked: e.g. beta_t = sqrt(1 - t) is fine),

    ``GaussianPath(alpha=lambda t: t, beta=lambda t: jnp.sqrt(1 - t))``. ``alpha`` / ``beta`` map
    an array of t to an array of its shape and must be differentiable (alpha'_t, beta'_t by
    forward-mode autodiff, ``score.marginal_coeffs_and_derivs``); they are static pytree fields
    (hashed by identity: a new lambda recompiles the samplers). Prior N(0, prior_std^2 I) at t = 0
    (``prior_std`` = 1 for a path with beta_0 = 1). The course's formulas (eq. numbers of the
    6.S184 notes, Sec. 3):

        conditional velocity  u_t(x | z) = (alpha'_t - beta'_t / beta_t alpha_t) z + beta'_t / beta_t x,
        conditional score     grad log p_t(x | z) = -(x - alpha_t z) / beta_t^2,
        marginal conversion   u_t(x) = (alpha'_t / alpha_t) x
                                       + (beta_t^2 alpha'_t / alpha_t - beta'_t beta_t) score_t(x).

    ``CondOTPath`` and ``SDEPath`` are registered (virtual) subclasses with closed-form
    ``marginal_coeffs`` and the same methods (``GaussianPathMethods``): every flow function takes
    any of them.
    """

    alpha: Callable | None = struct.field(pytree_node=False, default=None)
    beta: Callable | None = struct.field(pytree_node=False, default=None)
    prior_std = 1.0
    name = "gaussian"

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha_t, beta_t) at flow time t (any shape)."""
        if self.alpha is None or self.beta is None:
            raise ValueError("GaussianPath needs alpha and beta: callables of t, e.g. "
                             "GaussianPath(alpha=lambda t: t, beta=lambda t: 1 - t)")
        t = jnp.asarray(t)
        return jnp.asarray(self.alpha(t)), jnp.asarray(self.beta(t))


@pytree.dataclass
class CondOTPath(GaussianPathMethods):
    """Conditional optimal-transport path (Lipman et al. 2023, eq. 20 - 23):

        x_t = t x1 + (1 - (1 - sigma_min) t) eps,   u = x1 - (1 - sigma_min) eps,   t in [0, 1].

    Prior N(0, I) at t = 0; with sigma_min = 0 the data are reached exactly at t = 1.
    A ``GaussianPath`` with alpha_t = t, beta_t = 1 - (1 - sigma_min) t.
    """

    sigma_min: float = 0.0
    prior_std = 1.0
    name = "condot"

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha_t, sigma_t) = (t, 1 - (1 - sigma_min) t)."""
        t = jnp.asarray(t)
        return t, 1.0 - (1.0 - self.sigma_min) * t


@pytree.dataclass
class SDEPath(GaussianPathMethods):
    """The Gaussian path of a linear SDE in flow time: SDE time s(t) = T + t (eps - T), so t = 0 is
    the SDE's prior end and t = 1 its data end s = eps. The prior is the SDE's
    (N(0, sigma_max^2 I) for VE). Flow matching on this path is diffusion training with a
    velocity head (Lipman et al. Sec. 4.1 for VP and VE). Its velocity is d x / dt in flow time t:
    -(T - eps) times the velocity d x / ds in SDE time s. A model trained on it runs in the SDE
    samplers through ``score_fn_from_velocity(velocity_fn, path)`` (which maps SDE time to flow
    time), NOT through ``score.convert(..., sde, source="velocity")`` (SDE-time velocity)."""

    sde: Any
    eps: float = 1e-5
    name = "sde"

    @property
    def prior_std(self):
        return self.sde.prior_std

    def sde_time(self, t: Array) -> Array:
        """s(t) = T + t (eps - T)."""
        return self.sde.T + t * (self.eps - self.sde.T)

    def flow_time(self, s: Array) -> Array:
        """t(s) = (T - s) / (T - eps), the inverse of ``sde_time``."""
        return (self.sde.T - s) / (self.sde.T - self.eps)

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        return self.sde.marginal_coeffs(self.sde_time(jnp.asarray(t)))


# CondOTPath and SDEPath are GaussianPaths with closed-form coefficients (virtual subclasses:
# ``isinstance(CondOTPath(), GaussianPath)`` holds; they keep their own constructors).
GaussianPath.register(CondOTPath)
GaussianPath.register(SDEPath)

PATHS = {"condot": CondOTPath, "sde": SDEPath}


def get_path(name: str, **kwargs):
    """Build a path by name ("condot", or "sde" with ``sde=``); unknown names raise ValueError."""
    if name not in PATHS:
        raise ValueError(f"Unknown probability path {name!r}; valid choices: {sorted(PATHS)}")
    return PATHS[name](**kwargs)
