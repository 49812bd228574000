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

Precision of times (``time_dtype``): time grids, the t handed to ``score_fn``, the path
coefficients (a_t, s_t, sigma, lambda), noise levels and step sizes are float32, or the state's
dtype where it is wider (float64), whatever the state's dtype: a bfloat16 state keeps float32
times (bf16 has 8 significant bits: t = 0.98991 would become 0.98828, and nearby grid points of a
fine grid collapse). Each update is computed in that precision and the new state is cast back to
the state's dtype (``to_state``); ``score_fn`` receives x in the state's dtype and t in the time
dtype, and returns x's dtype. As DiffSynth-Studio#562 and diffusers' schedulers (float32 sigmas and
timesteps for half-precision latents).
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


def sigma_range(sde, eps: float | None = None) -> tuple[float, float]:
    """(sigma_min, sigma_max) = (s / a at t = eps, s / a at t = T) of ``sde``'s Gaussian path, eps
    defaulting to ``sde.sampling_eps``: the noise range the samplers of the project cover (a
    concrete ``sde``)."""
    eps = sde.sampling_eps if eps is None else eps
    a, s = sde.marginal_coeffs(jnp.asarray([eps, sde.T], jnp.float32))
    sig = s / a
    return float(sig[0]), float(sig[1])


def check_eps(sde, eps, name: str = "eps") -> None:
    """ValueError naming ``eps`` and the valid range (0, T) unless it is a finite number there."""
    T = float(sde.T)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and 0.0 < eps < T):
        raise ValueError(f"{name} must be a number in (0, T={T}); got {name}={eps!r}")


def time_dtype(dtype) -> jnp.dtype:
    """The dtype of times, coefficients and step sizes for a state of ``dtype``: float32, or
    ``dtype`` when it is wider (float64). A bfloat16 / float16 state gets float32."""
    return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def batch_times(x: Array, t_scalar) -> Array:
    """t_scalar broadcast to the batch of x, shape (B,), in ``time_dtype(x.dtype)``."""
    return jnp.full((x.shape[0],), t_scalar, time_dtype(x.dtype))


def to_state(y: Array, like: Array) -> Array:
    """``y`` (computed in the time dtype) cast back to the state's dtype, that of ``like``."""
    return y.astype(like.dtype)


def x0_prediction(score_fn: Callable, x: Array, t_scalar, a, s) -> Array:
    """Tweedie data prediction x0_hat = (x + s^2 score(x, t)) / a at the scalar time t with
    (a, s) = sde.marginal_coeffs(t); computed in the time dtype (float32 for a bf16 x) and
    returned in x's dtype. One score evaluation."""
    score = score_fn(x, batch_times(x, t_scalar))
    return to_state((x + (s * s) * score) / a, x)


def tweedie_denoise(sde, score_fn: Callable, x: Array, eps: float) -> Array:
    """The final denoising jump from t = eps to 0: x0_hat(x, eps) (module docstring)."""
    a, s = sde.marginal_coeffs(jnp.asarray(eps, time_dtype(x.dtype)))
    return x0_prediction(score_fn, x, eps, a, s)


def apply_project(project: Callable | None, key: Array, x: Array, t_scalar, i) -> Array:
    """Call ``project(key, x, x, t, i)`` for a state x without a separate mean, at the scalar time
    t_scalar it has reached; returns the new x (in x's dtype). None leaves x unchanged."""
    if project is None:
        return x
    return to_state(project(key, x, x, batch_times(x, t_scalar), i)[0], x)
