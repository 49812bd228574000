"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", Algorithm 2; google-research ``diffusion_distillation/diffusion_distillation/
dpm.py``): a student whose one DDIM step matches two DDIM steps of the teacher; the step count
halves per round (each round a training run whose teacher is the previous round's student).

Variables of ``score_jax.edm``: y = x_t / a_t, sigma = s_t / a_t; DDIM is scale-invariant, so its
step in these variables is the step on any Gaussian path of the project:

    y_s = x0_hat + (sigma_s / sigma_t) (y_t - x0_hat),      x0_hat = D(y_t; sigma_t).

Grid: the N-step student walks sigma_0 > ... > sigma_N on EDM's rho grid between sigma_max and
sigma_min (``sampling.get_timesteps(..., schedule="edm")``: what ``sampling.ddim_sample(num_steps=N,
schedule="edm", denoise=False)`` walks, so the student is sampled by that sampler with N
evaluations); the teacher's 2N-step grid holds the student's points at its even indices.

Target (Salimans & Ho Algorithm 2, in these variables a = 1, s = sigma): from y_t, two teacher DDIM
steps t -> t' -> t'' give y_t''; the x0 whose one DDIM step t -> t'' lands there is

    x0~ = (y_t'' - (sigma_t'' / sigma_t) y_t) / (1 - sigma_t'' / sigma_t)

(the paper's (z_t'' - (s_t''/s_t) z_t) / (a_t'' - (s_t''/s_t) a_t) with a = 1, s = sigma). Loss
per example: max(SNR, 1) |x0_hat_student(y_t) - x0~|^2 with SNR = 1 / sigma_t^2 ("truncated SNR"
weighting), mean over dimensions.

Parameterisation: the student is EDM's preconditioned denoiser (``edm.EDMPrecond``):
D = sd^2 / (sigma^2 + sd^2) y + sigma sd / sqrt(sigma^2 + sd^2) F. With sd = 1 this is exactly
v-prediction on the variance-preserving path a = 1 / sqrt(1 + sigma^2), s = sigma a
(x0 = a x_t - s v gives F = -v); sd = sigma_data is v-prediction for data of that scale.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.edm import EDMDenoiser
from score_jax.sde import batch_mul

Array = jax.Array


def ddim_step(denoiser: Callable, y: Array, sigma: Array, sigma_next: Array) -> Array:
    """One deterministic DDIM step y_s = x0_hat + (sigma_s / sigma_t)(y_t - x0_hat) (B,)-shaped
    sigmas; ``sigma_next`` may be 0 (then y_s = x0_hat)."""
    x0 = denoiser(y, sigma)
    return x0 + batch_mul(sigma_next / sigma, y - x0)


def pd_target(teacher: Callable, y: Array, sigma: Array, sigma_mid: Array,
              sigma_next: Array) -> Array:
    """x0~ = (y'' - (sigma'' / sigma) y) / (1 - sigma'' / sigma): the data prediction whose single
    DDIM step from (y, sigma) reaches the teacher's two DDIM steps y'' (via ``sigma_mid``) at
    ``sigma_next`` (Salimans & Ho Algorithm 2). Two teacher evaluations."""
    y_mid = ddim_step(teacher, y, sigma, sigma_mid)
    y_next = ddim_step(teacher, y_mid, sigma_mid, sigma_next)
    r = sigma_next / sigma
    return batch_mul(1.0 / (1.0 - r), y_next - batch_mul(r, y))


def student_sigmas(sde, num_steps: int, *, eps: float | None = None) -> Array:
    """sigma_0 > ... > sigma_{2 num_steps}: the teacher's 2N-step grid (rho = 7, EDM's schedule of
    ``sampling.get_timesteps``) as sigma = s_t / a_t; the student's grid is every other point."""
    from score_jax.sampling.common import resolve_eps
    from score_jax.sampling.fast import get_timesteps

    eps = resolve_eps(sde, eps)
    t = get_timesteps(sde, 2 * num_steps + 1, eps, "edm")
    a, s = sde.marginal_coeffs(t)
    return s / a


def pd_loss(key: Array, student: Callable, teacher: Callable, x0: Array, sigmas: Array
            ) -> tuple[Array, dict]:
    """Progressive distillation loss on the teacher grid ``sigmas`` (2N + 1 decreasing levels,
    `student_sigmas`): j ~ U{0..N-1}, sigma = sigmas[2j], y = x0 + sigma z, target `pd_target`
    through sigmas[2j+1] to sigmas[2j+2], per example max(1 / sigma^2, 1) mean |D_S(y) - x0~|^2.
    Returns ``(loss, {"losses": (B,), "sigma": (B,)})``."""
    k_j, k_z = jax.random.split(key)
    B = x0.shape[0]
    n = (sigmas.shape[0] - 1) // 2
    j = jax.random.randint(k_j, (B,), 0, n)
    sig, sig_mid, sig_next = (sigmas[2 * j].astype(x0.dtype), sigmas[2 * j + 1].astype(x0.dtype),
                              sigmas[2 * j + 2].astype(x0.dtype))
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    y = x0 + batch_mul(sig, z)
    tgt = jax.lax.stop_gradient(pd_target(teacher, y, sig, sig_mid, sig_next))
    pred = student(y, sig)
    weight = jnp.maximum(1.0 / jnp.square(sig), 1.0)
    losses = weight * jnp.mean(jnp.square(pred - tgt).reshape(B, -1), axis=-1)
    return jnp.mean(losses), {"losses": losses, "sigma": sig}


def get_progressive_loss_fn(model: nn.Module, precond: Any, teacher: Callable, sigmas: Array, *,
                            train: bool = True, log_label: bool = False
                            ) -> Callable[[Any, Any, Array], tuple[Array, dict]]:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` of one progressive-distillation round:
    the student ``EDMDenoiser(precond, variables, model)`` (v-prediction, module doc) against
    ``teacher`` (a denoiser D(y, sigma); its two evaluations run inside the same jitted step) on
    the teacher grid ``sigmas`` (`student_sigmas`, 2N + 1 points). ``batch``: images in the model's
    range or a dict with "image". Raises ValueError for a grid of even length or < 3 points."""
    from score_jax.losses import split_batch

    sigmas = jnp.asarray(sigmas, jnp.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] < 3 or sigmas.shape[0] % 2 != 1:
        raise ValueError(f"the teacher grid needs 2N + 1 >= 3 noise levels; got shape "
                         f"{sigmas.shape}")

    def loss_fn(variables, batch, key):
        key_loss, key_drop = jax.random.split(key)
        x0, _ = split_batch(batch)
        student = EDMDenoiser(precond, {"params": variables["params"]}, model, train, log_label,
                              key_drop, None)
        return pd_loss(key_loss, student, teacher, x0, sigmas)

    return loss_fn


__all__ = ["ddim_step", "pd_target", "student_sigmas", "pd_loss", "get_progressive_loss_fn"]
