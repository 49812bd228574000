"""Ancestral DDPM sampling with a learned variance (Improved DDPM; DiT's official sampler).

A network with ``learn_sigma`` outputs 2C channels at the DDPM step index t: eps (the first C)
and v in [-1, 1] (the last C), which interpolates the log-variance of each reverse step between
the two bounds of Ho et al. (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic
Models", eq. 15):

    log var_t = frac log(beta_t) + (1 - frac) log(beta~_t),   frac = (v + 1) / 2,
    beta~_t   = beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)   (the posterior variance;
                at t = 0 its log is clipped to that of t = 1),
    x0        = x_t / sqrt(alphabar_t) - sqrt(1 / alphabar_t - 1) eps,
    mean      = beta_t sqrt(alphabar_{t-1}) / (1 - alphabar_t) x0
                + (1 - alphabar_{t-1}) sqrt(1 - beta_t) / (1 - alphabar_t) x_t,
    x_{t-1}   = mean + [t > 0] exp(log var_t / 2) z,     z ~ N(0, I).

Respacing (Nichol & Dhariwal sec. 4): ``space_timesteps(N, "250")`` keeps 250 of the N DDPM
steps; the kept chain has beta_k = 1 - alphabar_{t_k} / alphabar_{t_{k-1}} and the network is fed
the original index t_k. This is facebookresearch/DiT ``diffusion/gaussian_diffusion.py``
``p_sample_loop`` with ``create_diffusion(str(num_steps))`` (learned range variance, eps mean,
``clip_denoised=False`` as in DiT's ``sample.py``), checked to 1e-6 in float64 against the
official code (``tests/fixtures/ddpm_learned/``).

The score function must expose ``ddpm_output(x, timesteps) -> (eps, v)`` (timesteps: the
original DDPM indices as floats, shape (B,)): ``score.LearnedVarianceScoreFn`` does, for DiT
with ``learn_sigma`` (its ``__call__`` is the score of the eps half, so the other samplers run
on the same object). The SDE must be the discrete VP chain whose betas are DDPM's
(``VPSDE``: beta_i = linspace(beta_min / N, beta_max / N, N); DiT: 0.1, 20, N = 1000).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.sampling.common import time_dtype, to_state

Array = jax.Array


def space_timesteps(num_timesteps: int, section_counts: int | str) -> list[int]:
    """The DDPM step indices kept by respacing, sorted ascending.

    ``section_counts``: an int or "250" (one section), "10,15,20" (the N steps cut into equal
    sections, each strided to that many steps: the first ``N % len`` sections get one more
    step), or "ddimK" (the fixed integer stride of the DDIM paper giving exactly K steps).
    Each section of ``size`` steps strided to ``count`` takes the indices
    ``start + round(j (size - 1) / (count - 1))``, j = 0..count-1 (Python's round, half to
    even), as Improved DDPM ``respace.py``.

    Raises:
      ValueError: a section with more steps than it has, a count < 1, or no integer DDIM
        stride giving K steps.
    """
    n = int(num_timesteps)
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        k = int(section_counts[len("ddim"):])
        for stride in range(1, n):
            if len(range(0, n, stride)) == k:
                return list(range(0, n, stride))
        raise ValueError(f"cannot take exactly {k} steps of {n} with an integer stride "
                         f"(section_counts={section_counts!r})")
    counts = ([int(section_counts)] if not isinstance(section_counts, str)
              else [int(c) for c in section_counts.split(",")])
    size_per, extra = divmod(n, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count} "
                             f"(section_counts={section_counts!r}, num_timesteps={n}); valid: "
                             f"1..{size} per section")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(steps))


def respaced_schedule(betas: Array, timesteps) -> dict[str, Array]:
    """The coefficients of the respaced chain (arrays of shape (K,), index k = 0..K-1 for the
    kept steps ``timesteps``, ascending) from the full chain's betas (N,), in their dtype.

    Keys: ``alphas_cumprod``; ``betas`` = 1 - alphabar_k / alphabar_{k-1}; ``log_betas``;
    ``posterior_log_variance_clipped`` (log beta~, k = 0 replaced by k = 1); ``coef_x0`` and
    ``coef_xt`` (the posterior mean); ``sqrt_recip`` = 1 / sqrt(alphabar) and ``sqrt_recipm1`` =
    sqrt(1 / alphabar - 1). The products are taken in log space (log alphabar = cumsum log(1 -
    beta), beta_k = -expm1(log alphabar_k - log alphabar_{k-1})), so float32 keeps the small
    betas of the first steps to ~1e-5 relative instead of losing them to 1 - alphabar_k /
    alphabar_{k-1} cancellation (the official code works in float64 and casts)."""
    log_ac_full = jnp.cumsum(jnp.log1p(-betas))
    log_ac = log_ac_full[jnp.asarray(timesteps)]
    log_ac_prev = jnp.concatenate([jnp.zeros((1,), log_ac.dtype), log_ac[:-1]])
    ac, ac_prev = jnp.exp(log_ac), jnp.exp(log_ac_prev)
    one_m_ac, one_m_ac_prev = -jnp.expm1(log_ac), -jnp.expm1(log_ac_prev)
    b = -jnp.expm1(log_ac - log_ac_prev)
    post_var = b * one_m_ac_prev / one_m_ac
    return {
        "alphas_cumprod": ac,
        "betas": b,
        "log_betas": jnp.log(b),
        "posterior_log_variance_clipped": jnp.log(jnp.concatenate([post_var[1:2], post_var[1:]])),
        "coef_x0": b * jnp.sqrt(ac_prev) / one_m_ac,
        "coef_xt": one_m_ac_prev * jnp.exp(0.5 * (log_ac - log_ac_prev)) / one_m_ac,
        "sqrt_recip": jnp.exp(-0.5 * log_ac),
        "sqrt_recipm1": jnp.sqrt(one_m_ac / ac),
    }


def learned_variance_loop(output_fn: Callable[[Array, Array], tuple[Array, Array]],
                          betas: Array, timesteps, x_init: Array,
                          noise_fn: Callable[[Array, Array], Array], *,
                          clip_denoised: bool = False) -> Array:
    """The ancestral loop of the module docstring over the kept ``timesteps`` (ascending; run from
    the last to the first), as a ``lax.scan``.

    Args:
      output_fn: ``(x, t) -> (eps, v)``, t the original DDPM indices (B,) in the time dtype.
      betas: (N,) the betas of the full chain.
      timesteps: the kept indices (``space_timesteps``), at least 2.
      x_init: (B, ...) the draw at the last kept step.
      noise_fn: ``(k, x) -> z`` the standard normal noise of respaced step k (not used at k = 0).
      clip_denoised: clip the x0 prediction to [-1, 1] (DiT's sample.py: False).

    Returns:
      x at t = 0, x_init's dtype.
    """
    timesteps = [int(t) for t in timesteps]
    if len(timesteps) < 2:
        raise ValueError(f"the learned-variance sampler needs at least 2 steps (the posterior "
                         f"log-variance of step 0 is that of step 1); got {len(timesteps)}")
    tdt = time_dtype(x_init.dtype)
    c = respaced_schedule(jnp.asarray(betas).astype(tdt), timesteps)
    tmap = jnp.asarray(timesteps, tdt)

    def body(x, k):
        t = jnp.full((x.shape[0],), tmap[k], tdt)
        eps, v = output_fn(x, t)
        xf, eps, v = x.astype(tdt), eps.astype(tdt), v.astype(tdt)
        frac = (v + 1.0) / 2.0
        log_var = frac * c["log_betas"][k] + (1.0 - frac) * c["posterior_log_variance_clipped"][k]
        x0 = c["sqrt_recip"][k] * xf - c["sqrt_recipm1"][k] * eps
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
        mean = c["coef_x0"][k] * x0 + c["coef_xt"][k] * xf
        z = noise_fn(k, x).astype(tdt)
        x_next = mean + jnp.where(k > 0, 1.0, 0.0).astype(tdt) * jnp.exp(0.5 * log_var) * z
        return to_state(x_next, x), None

    x, _ = jax.lax.scan(body, x_init, jnp.arange(len(timesteps) - 1, -1, -1))
    return x


def learned_variance_sample(
    key: Array,
    sde,
    score_fn,
    x_init: Array,
    *,
    num_steps: int = 250,
    respacing: str | None = None,
    clip_denoised: bool = False,
) -> tuple[Array, int]:
    """DiT's official sampler: ancestral DDPM with the learned variance on ``num_steps`` evenly
    respaced steps of the SDE's N (``space_timesteps(N, str(num_steps))``; ``respacing``, e.g.
    "10,15,20" or "ddim50", replaces it). Noise of respaced step k: ``normal(fold_in(key, k))``.

    ``score_fn`` must have ``ddpm_output(x, t) -> (eps, v)`` (``score.LearnedVarianceScoreFn``:
    ``sample.py`` builds it for ``config.sampling.method = "learned_variance"``); ``sde`` must
    be a ``VPSDE`` (its discrete betas are the DDPM chain). Returns ``(x, K)``, K the number of
    kept steps (network evaluations).

    Raises:
      ValueError: a score function without ``ddpm_output``, another SDE, or a bad respacing.
    """
    from score_jax.sde import VPSDE

    if not hasattr(score_fn, "ddpm_output"):
        raise ValueError("sampling method 'learned_variance' needs a network with a learned "
                         "variance (DiT with model.learn_sigma=True) wrapped by "
                         "score.LearnedVarianceScoreFn; got a plain score function "
                         f"{type(score_fn).__name__}; valid: another method (ddim, dpm_solver, "
                         "pc, ...) for networks without it")
    if not isinstance(sde, VPSDE):
        raise ValueError(f"sampling method 'learned_variance' runs the DDPM chain of a VPSDE; got "
                         f"{type(sde).__name__}; valid: training.sde='vpsde'")
    timesteps = space_timesteps(sde.N, respacing if respacing is not None else int(num_steps))

    def noise_fn(k, x):
        return jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)

    x = learned_variance_loop(score_fn.ddpm_output, sde.discrete_betas, timesteps, x_init,
                              noise_fn, clip_denoised=clip_denoised)
    return x, len(timesteps)


__all__ = ["space_timesteps", "respaced_schedule", "learned_variance_loop",
           "learned_variance_sample"]
