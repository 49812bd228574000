"""What every sampler shares: the end time eps, the Tweedie data prediction and the final
denoising jump, and the ``project`` hook convention.

Final denoising (``denoise=True``) means the same for every sampler: a jump from t = eps to t = 0
by Tweedie's formula (Efron 2011) with one score evaluation,

    x0_hat = (x + s_eps^2 score(x, eps)) / a_eps,

the posterior mean E[x_0 | x_eps = x], exact for any step count (the reference's reverse-diffusion
step at eps only equals it when the grid has the SDE's N steps; with fewer steps it multiplies the
residual noise by 1 - beta_0 / s_eps^2, e.g. -8.1 for VP at 100 steps).

``project(key, x, x_mean, t, step_index) -> (x, x_mean)`` (inpainting / colorization) is called
after every update with t (shape (B,)) the time the updated state has reached.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def resolve_eps(sde, eps: float | None) -> float:
    """``eps`` or the SDE's default ``sde.sampling_eps``; ValueError unless 0 < eps < T."""
    eps = sde.sampling_eps if eps is None else eps
    check_eps(sde, eps)
    return eps


def check_eps(sde, eps, name: str = "eps") -> None:
    """ValueError naming ``eps`` and the valid range (0, T) unless it is a finite number there."""
    T = float(sde.T)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and 0.0 < eps < T):
        raise ValueError(f"{name} must be a number in (0, T={T}); got {name}={eps!r}")


def x0_prediction(score_fn: Callable, x: Array, t_scalar, a, s) -> Array:
    """Tweedie data prediction x0_hat = (x + s^2 score(x, t)) / a at the scalar time t with
    (a, s) = sde.marginal_coeffs(t). One score evaluation."""
    tb = jnp.full((x.shape[0],), t_scalar, x.dtype)
    score = score_fn(x, tb)
    return (x + (s * s) * score) / a


def tweedie_denoise(sde, score_fn: Callable, x: Array, eps: float) -> Array:
    """The final denoising jump from t = eps to 0: x0_hat(x, eps) (module docstring)."""
    a, s = sde.marginal_coeffs(jnp.asarray(eps, x.dtype))
    return x0_prediction(score_fn, x, eps, a, s)


def apply_project(project: Callable | None, key: Array, x: Array, t_scalar, i) -> Array:
    """Call ``project(key, x, x, t, i)`` for a state x without a separate mean, at the scalar time
    t_scalar it has reached; returns the new x. None leaves x unchanged."""
    if project is None:
        return x
    tb = jnp.full((x.shape[0],), t_scalar, x.dtype)
    return project(key, x, x, tb, i)[0]


def check_num_steps(num_steps, denoise: bool, minimum: int = 1) -> None:
    """ValueError unless num_steps is an int >= ``minimum`` (+1 with ``denoise``: the last step is
    the denoising jump)."""
    lo = minimum + (1 if denoise else 0)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < lo:
        raise ValueError(f"num_steps must be an int >= {lo} (denoise={denoise}); got "
                         f"{num_steps!r}")
