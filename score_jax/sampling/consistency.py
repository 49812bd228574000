"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1;
openai/consistency_models ``cm/karras_diffusion.py::stochastic_iterative_sampler``).

A consistency model f(y, sigma) (``score_jax.distill.consistency``) is passed, like every model of
the project, as ``score_fn(x, t)`` of the SDE's path (``edm.edm_score_fn`` of its denoiser form);
Tweedie's formula x0_hat = (x + s_t^2 score(x, t)) / a_t returns f(x_t / a_t, s_t / a_t) exactly.
With sigma = s / a:

    x0 = f(x_T / a_T, sigma(T));  for each next noise level sigma_k (decreasing):
        x0 = f(x0 + sqrt(sigma_k^2 - sigma_min^2) z, sigma_k),      z ~ N(0, I),

sigma_min = sigma(eps) the boundary of the consistency function. NFE = ``num_steps``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.sampling.common import resolve_eps, sigma_range, x0_prediction

Array = jax.Array


def parse_sigmas(sigmas, num_steps: int) -> tuple[float, ...] | None:
    """The intermediate noise levels: None, a sequence of floats, or a comma-separated string
    ("0.8,0.2"); ValueError unless there are ``num_steps - 1`` of them, decreasing and > 0."""
    if sigmas is None:
        return None
    if isinstance(sigmas, str):
        try:
            sigmas = tuple(float(v) for v in sigmas.split(",") if v.strip())
        except ValueError as e:
            raise ValueError(f"sigmas={sigmas!r} must be comma-separated numbers") from e
    sigmas = tuple(float(v) for v in sigmas)
    if len(sigmas) != num_steps - 1:
        raise ValueError(f"sigmas needs num_steps - 1 = {num_steps - 1} intermediate noise levels; "
                         f"got {len(sigmas)}: {sigmas}")
    if any(v <= 0 for v in sigmas) or any(a <= b for a, b in zip(sigmas[:-1], sigmas[1:], strict=True)):
        raise ValueError(f"sigmas must be decreasing and > 0; got {sigmas}")
    return sigmas


def mid_levels(sde, sigma_mid: float, num_steps: int, eps: float, rho: float = 7.0) -> Array:
    """The ``num_steps - 1`` intermediate levels of `consistency_sample` with ``sigma_mid``:
    sigma_k = (sigma_mid^(1/rho) + k / (num_steps - 1) (sigma_min^(1/rho) - sigma_mid^(1/rho)))^rho,
    k = 0..num_steps-2, sigma_min = sigma(eps) (a (num_steps - 1,) array; ``sde`` may be traced).
    ValueError unless sigma_min < sigma_mid < sigma(T) (checked when the SDE is concrete)."""
    check_sigma_mid(sde, sigma_mid, eps)
    a_min, s_min = sde.marginal_coeffs(jnp.asarray(eps, jnp.float32))
    a = jnp.float32(sigma_mid) ** (1.0 / rho)
    b = (s_min / a_min) ** (1.0 / rho)
    k = jnp.arange(num_steps - 1, dtype=jnp.float32)
    return (a + k / (num_steps - 1) * (b - a)) ** rho


def check_sigma_mid(sde, sigma_mid: float, eps: float | None = None) -> None:
    """ValueError unless sigma(eps) < ``sigma_mid`` < sigma(T) on ``sde`` (skipped while the SDE's
    parameters are traced: `consistency_sample` runs inside jit, ``validate_options`` outside)."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(sde)):
        return
    lo, hi = sigma_range(sde, resolve_eps(sde, eps))
    if not lo < float(sigma_mid) < hi:
        raise ValueError(f"sigma_mid={sigma_mid!r} must lie between the SDE's sigma_min {lo:.4g} "
                         f"and sigma_max {hi:.4g}")


def consistency_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    num_steps: int = 1,
    sigmas: str | None = None,
    rho: float = 7.0,
    eps: float | None = None,
    sigma_mid: float | None = None,
) -> tuple[Array, int]:
    """Sample a consistency model in ``num_steps`` evaluations (module doc).

    Args:
      x_init: the prior sample x_T (B, ...).
      num_steps: network evaluations, >= 1.
      sigmas: the ``num_steps - 1`` intermediate noise levels sigma = s / a (decreasing), as a
        tuple or a comma-separated string; None: the first ``num_steps`` points of EDM's rho grid
        with ``num_steps + 1`` points from sigma(T) to sigma(eps) (``sampling.get_timesteps``,
        schedule "edm"), unless ``sigma_mid`` is given.
      rho: the grid's rho (ignored with ``sigmas``). eps: the end time (sigma_min = sigma(eps)).
      sigma_mid: the first intermediate level when ``sigmas`` is None: the intermediate levels
        are then the first ``num_steps - 1`` points of the ``num_steps``-point rho grid from
        sigma_mid down to sigma_min (2 steps: sigma_mid alone). ECT's and iCT's two-step level
        on CIFAR-10 is 0.821 (locuslab/ect ``ct_eval.py --mid_t``); must lie in
        (sigma_min, sigma(T)). Ignored with ``sigmas`` (explicit levels win) and with 1 step.
    Returns ``(x0, num_steps)``.
    Raises ValueError for bad ``sigmas`` or a ``sigma_mid`` outside (sigma_min, sigma(T)).
    """
    from score_jax.sampling import options as opts
    from score_jax.sampling.fast import get_timesteps, inverse_log_snr

    # no denoise option: every evaluation returns x0 (sampling/options.py: num_steps >= 1)
    opts.check_options("consistency", sde, denoise=False, num_steps=num_steps, eps=eps, rho=rho,
                       sigma_mid=sigma_mid)
    eps = resolve_eps(sde, eps)
    levels = parse_sigmas(sigmas, num_steps)
    if levels is None and sigma_mid is not None and num_steps >= 2:
        levels = mid_levels(sde, sigma_mid, num_steps, eps, rho)
    if levels is None:
        t = get_timesteps(sde, num_steps + 1, eps, "edm", rho=rho, dtype=x_init.dtype)[:num_steps]
    else:
        lam = -jnp.log(jnp.asarray(levels, x_init.dtype))
        t = jnp.concatenate([jnp.asarray([sde.T], x_init.dtype),
                             inverse_log_snr(sde, lam, t_min=0.0, t_max=sde.T)])
    a, s = sde.marginal_coeffs(t)
    a_min, s_min = sde.marginal_coeffs(jnp.asarray(eps, x_init.dtype))
    sigma_min = s_min / a_min
    x0 = x0_prediction(score_fn, x_init, t[0], a[0], s[0])
    for k in range(1, num_steps):  # num_steps <= a handful: unrolled
        z = jax.random.normal(jax.random.fold_in(key, k), x0.shape, x0.dtype)
        sigma = s[k] / a[k]
        y = x0 + jnp.sqrt(jnp.maximum(sigma**2 - sigma_min**2, 0.0)) * z
        x0 = x0_prediction(score_fn, a[k] * y, t[k], a[k], s[k])
    return x0, num_steps


__all__ = ["consistency_sample", "parse_sigmas", "mid_levels", "check_sigma_mid"]
