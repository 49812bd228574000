"""Predictor-corrector samplers (Song et al. 2021, Sec. 4.2 and Algorithms 2-5).

Predictors and correctors are small immutable pytrees with one method,
``update(key, sde, score_fn, x, t) -> (x, x_mean)``, and a static ``nfe`` (score evaluations per
call). The PC loop is one ``lax.scan`` over ``timesteps = linspace(T, eps, N)``: corrector, then
predictor, at each step; with ``denoise`` the result is the noise-free ``x_mean`` of the last step.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from score_jax.sde import batch_mul

Array = jax.Array


def _per_example_norm(x: Array) -> Array:
    return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


# ----------------------------------------------------------------------------------------------
# Predictors
# ----------------------------------------------------------------------------------------------
@struct.dataclass
class EulerMaruyamaPredictor:
    """Euler-Maruyama on the reverse SDE with dt = -T/N:
    x_mean = x + [f - g^2 score] dt,  x = x_mean + g sqrt(|dt|) z.
    With ``probability_flow`` it is Euler on the probability-flow ODE."""

    probability_flow: bool = struct.field(pytree_node=False, default=False)
    nfe = 1

    def update(self, key, sde, score_fn, x, t):
        dt = -sde.T / sde.N
        drift, diffusion = sde.reverse(score_fn, self.probability_flow).sde(x, t)
        x_mean = x + drift * dt
        if self.probability_flow:
            return x_mean, x_mean
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + batch_mul(diffusion * math.sqrt(-dt), z), x_mean


@struct.dataclass
class ReverseDiffusionPredictor:
    """Reverse diffusion (Song et al. eq. 46): x_mean = x - f_rev, x = x_mean + G z, with
    (f_rev, G) = reverse(sde).discretize(x, t)."""

    probability_flow: bool = struct.field(pytree_node=False, default=False)
    nfe = 1

    def update(self, key, sde, score_fn, x, t):
        f, G = sde.reverse(score_fn, self.probability_flow).discretize(x, t)
        x_mean = x - f
        if self.probability_flow:
            return x_mean, x_mean
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + batch_mul(G, z), x_mean


@struct.dataclass
class AncestralSamplingPredictor:
    """Ancestral sampling: the SDE's own ``ancestral_step`` (DDPM for VP, SMLD for VE, the exact
    Gaussian posterior for sub-VP; see ``sde.py``)."""

    probability_flow: bool = struct.field(pytree_node=False, default=False)
    nfe = 1

    def update(self, key, sde, score_fn, x, t):
        if self.probability_flow:
            raise ValueError("ancestral_sampling has no probability-flow variant; use reverse_diffusion")
        return sde.ancestral_step(x, t, score_fn(x, t), key)


@struct.dataclass
class NonePredictor:
    """No predictor (corrector-only sampling): the identity, 0 score evaluations."""

    probability_flow: bool = struct.field(pytree_node=False, default=False)
    nfe = 0

    def update(self, key, sde, score_fn, x, t):
        return x, x


# ----------------------------------------------------------------------------------------------
# Correctors
# ----------------------------------------------------------------------------------------------
@struct.dataclass
class LangevinCorrector:
    """Langevin MCMC with a signal-to-noise step rule (Song et al. Algorithm 4/5):

        step = 2 alpha (snr |z| / |score|)^2   (norms averaged over the batch),
        x_mean = x + step * score,  x = x_mean + sqrt(2 step) z,

    alpha = sde.langevin_alpha(t): 1 - beta_i for VP, 1 - beta(t) T/N for sub-VP, 1 for VE.
    The batch-mean norms are taken over the global batch (identical on 1 or N devices).
    """

    snr: float = 0.16
    n_steps: int = struct.field(pytree_node=False, default=1)

    @property
    def nfe(self):
        return self.n_steps

    def update(self, key, sde, score_fn, x, t):
        alpha = sde.langevin_alpha(t).astype(x.dtype)
        x_mean = x
        for k in jax.random.split(key, self.n_steps):
            grad = score_fn(x, t)
            z = jax.random.normal(k, x.shape, x.dtype)
            grad_norm = jnp.mean(_per_example_norm(grad))
            noise_norm = jnp.mean(_per_example_norm(z))
            step = 2.0 * alpha * (self.snr * noise_norm / grad_norm) ** 2
            x_mean = x + batch_mul(step, grad)
            x = x_mean + batch_mul(jnp.sqrt(2.0 * step), z)
        return x, x_mean


@struct.dataclass
class AnnealedLangevinDynamics:
    """Annealed Langevin dynamics (Song & Ermon 2019) with step = 2 alpha (snr s_t)^2, s_t the
    marginal std at t: x_mean = x + step * score, x = x_mean + sqrt(2 step) z."""

    snr: float = 0.16
    n_steps: int = struct.field(pytree_node=False, default=1)

    @property
    def nfe(self):
        return self.n_steps

    def update(self, key, sde, score_fn, x, t):
        alpha = sde.langevin_alpha(t).astype(x.dtype)
        std = sde.marginal_coeffs(t)[1].astype(x.dtype)
        step = 2.0 * alpha * (self.snr * std) ** 2
        x_mean = x
        for k in jax.random.split(key, self.n_steps):
            grad = score_fn(x, t)
            z = jax.random.normal(k, x.shape, x.dtype)
            x_mean = x + batch_mul(step, grad)
            x = x_mean + batch_mul(jnp.sqrt(2.0 * step), z)
        return x, x_mean


@struct.dataclass
class NoneCorrector:
    """No corrector: the identity, 0 score evaluations."""

    snr: float = 0.0
    n_steps: int = struct.field(pytree_node=False, default=0)
    nfe = 0

    def update(self, key, sde, score_fn, x, t):
        return x, x


PREDICTORS = {
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
}
CORRECTORS = {"langevin": LangevinCorrector, "ald": AnnealedLangevinDynamics, "none": NoneCorrector}


def get_predictor(name: str, probability_flow: bool = False):
    """Build a predictor by name; unknown names raise ValueError listing the valid ones."""
    if name not in PREDICTORS:
        raise ValueError(f"Unknown predictor {name!r}; valid choices: {list(PREDICTORS)}")
    return PREDICTORS[name](probability_flow=probability_flow)


def get_corrector(name: str, snr: float = 0.16, n_steps: int = 1):
    """Build a corrector by name; unknown names raise ValueError listing the valid ones."""
    if name not in CORRECTORS:
        raise ValueError(f"Unknown corrector {name!r}; valid choices: {list(CORRECTORS)}")
    if name == "none":
        return NoneCorrector()
    if n_steps < 1:
        raise ValueError(f"corrector n_steps must be >= 1, got {n_steps}")
    return CORRECTORS[name](snr=snr, n_steps=n_steps)


def pc_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    predictor,
    corrector,
    eps: float,
    denoise: bool = True,
    num_steps: int | None = None,
    project: Callable[[Array, Array, Array, Array, Array], tuple[Array, Array]] | None = None,
) -> tuple[Array, int]:
    """Run the PC loop from ``x_init`` (a prior sample) over ``linspace(T, eps, N)``.

    ``num_steps`` defaults to ``sde.N`` (the reference ties the grid to the SDE's N); another value
    runs the same SDE discretised with N = num_steps.
    ``project(key, x, x_mean, t_next_or_t, step_index) -> (x, x_mean)`` is applied after every
    update (inpainting / colorization hook); None leaves x unchanged.
    Returns ``(x_mean if denoise else x, nfe)`` with the true number of score evaluations.
    """
    if num_steps is not None and num_steps != sde.N:
        # The discrete predictors (reverse diffusion, ancestral) and the Langevin alpha_i index the
        # SDE's N-step chain: a grid of num_steps steps needs the chain with N = num_steps.
        sde = sde.replace(N=num_steps)
    N = sde.N
    timesteps = jnp.linspace(sde.T, eps, N).astype(x_init.dtype)
    B = x_init.shape[0]

    def body(carry, inp):
        x, _ = carry
        i, t_scalar = inp
        t = jnp.full((B,), t_scalar, x.dtype)
        k = jax.random.fold_in(key, i)
        kc, kp, kproj_c, kproj_p = jax.random.split(k, 4)
        x, x_mean = corrector.update(kc, sde, score_fn, x, t)
        if project is not None:
            x, x_mean = project(kproj_c, x, x_mean, t, i)
        x, x_mean = predictor.update(kp, sde, score_fn, x, t)
        if project is not None:
            x, x_mean = project(kproj_p, x, x_mean, t, i)
        return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(body, (x_init, x_init), (jnp.arange(N), timesteps))
    nfe = N * (predictor.nfe + corrector.nfe)
    return (x_mean if denoise else x), nfe
