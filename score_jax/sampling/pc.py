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

from score_jax import pytree
from score_jax.sampling import options as opts
from score_jax.sampling.common import resolve_eps, time_dtype, to_state, tweedie_denoise
from score_jax.sde import batch_mul

Array = jax.Array


def _per_example_norm(x: Array) -> Array:
    x = x.astype(time_dtype(x.dtype))  # norms of a bf16 state in float32
    return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


# ----------------------------------------------------------------------------------------------
# Predictors
# ----------------------------------------------------------------------------------------------
@pytree.dataclass
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


@pytree.dataclass
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


@pytree.dataclass
class AncestralSamplingPredictor:
    """Ancestral sampling: the SDE's own ``ancestral_step`` (DDPM for VP, SMLD for VE, the exact
    Gaussian posterior for sub-VP; see ``sde.py``)."""

    probability_flow: bool = struct.field(pytree_node=False, default=False)
    nfe = 1

    def update(self, key, sde, score_fn, x, t):
        if self.probability_flow:
            raise ValueError("ancestral_sampling has no probability-flow variant; use reverse_diffusion")
        return sde.ancestral_step(x, t, score_fn(x, t), key)


@pytree.dataclass
class NonePredictor:
    """No predictor (corrector-only sampling): the identity, 0 score evaluations."""

    probability_flow: bool = struct.field(pytree_node=False, default=False)
    nfe = 0

    def update(self, key, sde, score_fn, x, t):
        return x, x


# ----------------------------------------------------------------------------------------------
# Correctors
# ----------------------------------------------------------------------------------------------
@pytree.dataclass
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
        alpha = sde.langevin_alpha(t)  # in t's dtype (float32 for a bf16 state)
        x_mean = x
        for k in jax.random.split(key, self.n_steps):
            grad = score_fn(x, t)
            z = jax.random.normal(k, x.shape, x.dtype)
            grad_norm = jnp.mean(_per_example_norm(grad))
            noise_norm = jnp.mean(_per_example_norm(z))
            step = 2.0 * alpha * (self.snr * noise_norm / grad_norm) ** 2
            x_mean = x + batch_mul(step, grad)
            x, x_mean = to_state(x_mean + batch_mul(jnp.sqrt(2.0 * step), z), x), to_state(x_mean, x)
        return x, x_mean


@pytree.dataclass
class AnnealedLangevinDynamics:
    """Annealed Langevin dynamics (Song & Ermon 2019) with step = 2 alpha (snr s_t)^2, s_t the
    marginal std at t: x_mean = x + step * score, x = x_mean + sqrt(2 step) z."""

    snr: float = 0.16
    n_steps: int = struct.field(pytree_node=False, default=1)

    @property
    def nfe(self):
        return self.n_steps

    def update(self, key, sde, score_fn, x, t):
        alpha = sde.langevin_alpha(t)  # in t's dtype (float32 for a bf16 state)
        std = sde.marginal_coeffs(t)[1]
        step = 2.0 * alpha * (self.snr * std) ** 2
        x_mean = x
        for k in jax.random.split(key, self.n_steps):
            grad = score_fn(x, t)
            z = jax.random.normal(k, x.shape, x.dtype)
            x_mean = x + batch_mul(step, grad)
            x, x_mean = to_state(x_mean + batch_mul(jnp.sqrt(2.0 * step), z), x), to_state(x_mean, x)
        return x, x_mean


@pytree.dataclass
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
    opts.check_choice("predictor", name, PREDICTORS)
    return PREDICTORS[name](probability_flow=probability_flow)


def get_corrector(name: str, snr: float = 0.16, n_steps: int = 1):
    """Build a corrector by name; unknown names raise ValueError listing the valid ones."""
    opts.check_choice("corrector", name, CORRECTORS)
    if name == "none":
        return NoneCorrector()
    opts.check_range("n_steps", n_steps)
    return CORRECTORS[name](snr=snr, n_steps=n_steps)


def pc_sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x_init: Array,
    *,
    predictor="reverse_diffusion",
    corrector="langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    num_steps: int | None = None,
    eps: float | None = None,
    denoise: bool = True,
    project: Callable[[Array, Array, Array, Array, Array], tuple[Array, Array]] | None = None,
) -> tuple[Array, int]:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1) from ``x_init`` (a prior
    sample) over ``linspace(T, eps, num_steps)``: at each time t_i a corrector then a predictor.

    Args:
      predictor: a name in ``PREDICTORS`` (built with ``probability_flow``) or a predictor object.
      corrector: a name in ``CORRECTORS`` (built with ``snr``, ``n_steps``) or a corrector object.
      num_steps: grid size, default ``sde.N`` (the reference ties the grid to the SDE's N); another
        value runs the same SDE discretised with N = num_steps (the discrete predictors and the
        Langevin alpha_i index the chain of N steps).
      eps: last time of the grid (None: ``sde.sampling_eps``), in (0, T).
      denoise: the last predictor step (at t = eps) is replaced by the Tweedie jump to t = 0,
        x0_hat = (x + s_eps^2 score(x, eps)) / a_eps (``sampling/common.py``): exact for any
        num_steps. Without, the last predictor step runs and its noisy x is returned.
      project: ``project(key, x, x_mean, t, step_index) -> (x, x_mean)`` applied after every
        corrector (t = t_i) and predictor (t = t_{i+1}, the time reached; 0 after the last step)
        update (inpainting / colorization); None leaves x unchanged.

    Returns:
      ``(x, nfe)`` with the true number of score evaluations, a Python int:
      num_steps (p + c) with p, c the predictor's / corrector's evaluations per step, except with
      ``denoise`` and no predictor (p = 0), where the jump adds 1.

    Raises:
      ValueError: unknown predictor / corrector, eps outside (0, T), num_steps < 2 with
        ``denoise`` (< 1 without; ``options.min_num_steps``), corrector n_steps < 1, snr < 0.
    """
    opts.check_options("pc", sde, denoise=denoise, snr=snr, n_steps=n_steps)
    if isinstance(predictor, str):
        predictor = get_predictor(predictor, probability_flow)
    if isinstance(corrector, str):
        corrector = get_corrector(corrector, snr, n_steps)
    eps = resolve_eps(sde, eps)
    N = sde.N if num_steps is None else num_steps
    opts.check_num_steps(N, denoise, "pc")
    if N != sde.N:
        sde = sde.replace(N=N)
    tdt = time_dtype(x_init.dtype)  # times stay float32 for a bf16 state (common.py)
    timesteps = jnp.linspace(sde.T, eps, N, dtype=tdt)
    # The time each predictor update reaches: the next grid point, 0 after the last one.
    t_next = jnp.concatenate([timesteps[1:], jnp.zeros((1,), tdt)])
    B = x_init.shape[0]
    n_scan = N - 1 if denoise else N

    def corrector_step(k, x, t_scalar, i):
        t = jnp.full((B,), t_scalar, tdt)
        kc, kproj = jax.random.split(k)
        x, x_mean = corrector.update(kc, sde, score_fn, x, t)
        if project is not None:
            x, x_mean = project(kproj, x, x_mean, t, i)
        return to_state(x, x_init), to_state(x_mean, x_init)

    def body(x, i):
        k_c, k_p, k_proj = jax.random.split(jax.random.fold_in(key, i), 3)
        x, _ = corrector_step(k_c, x, timesteps[i], i)
        t = jnp.full((B,), timesteps[i], tdt)
        x, x_mean = predictor.update(k_p, sde, score_fn, x, t)
        if project is not None:
            x, x_mean = project(k_proj, x, x_mean, jnp.full((B,), t_next[i], tdt), i)
        return to_state(x, x_init), None

    x, _ = jax.lax.scan(body, x_init, jnp.arange(n_scan))
    nfe = n_scan * (predictor.nfe + corrector.nfe)
    if denoise:
        k_c = jax.random.split(jax.random.fold_in(key, N - 1), 3)[0]
        x, _ = corrector_step(k_c, x, timesteps[N - 1], N - 1)
        x = tweedie_denoise(sde, score_fn, x, eps)
        nfe += corrector.nfe + 1
    return x, nfe
