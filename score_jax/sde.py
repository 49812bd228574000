"""Forward SDEs of Score SDE (Song et al. 2021, Sec. 3.4 and App. B) as immutable pytrees.

Time runs from data (t = 0) to noise (t = T = 1). Every SDE here is linear,

    dx = f(t) x dt + g(t) dW,

with Gaussian perturbation kernel p_0t(x_t | x_0) = N(a_t x_0, s_t^2 I). The float parameters
(beta_min, beta_max, sigma_min, sigma_max) are pytree leaves, so changing them does not recompile;
the number of discretisation steps ``N`` is static.

Shapes: ``x`` is ``(B, ...)``, ``t`` is ``(B,)`` (a scalar ``t`` is broadcast). Per-example scalars
(diffusion, std, ...) are returned with shape ``(B,)``.

Behaviour that differs by SDE (ancestral step, Langevin step scale, time labels of the reference
networks) is a method of the SDE, so that samplers never test the SDE type.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_mul(a: Array, x: Array) -> Array:
    """Multiply a per-example scalar ``a`` of shape ``(B,)`` (or ``()``) into ``x`` of shape ``(B, ...)``."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def _bcast_t(x: Array, t: Array) -> Array:
    t = jnp.asarray(t, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, x.shape[:1])
    if t.shape != x.shape[:1]:
        raise ValueError(
            f"t must have shape () or (B,) = {x.shape[:1]} matching x of shape {x.shape}; "
            f"got t of shape {t.shape}"
        )
    return t


def _sum_sq(z: Array) -> Array:
    return jnp.sum(jnp.square(z).reshape(z.shape[0], -1), axis=-1)


class GaussianPrior:
    """Prior N(0, prior_std^2 I) of a path (SDEs here, flow-matching paths in ``flow.py``)."""

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, v I) per example: -D/2 log(2 pi v) - |z|^2 / (2 v), shape (B,)."""
        v = jnp.square(self.prior_std)
        D = math.prod(z.shape[1:])
        return -0.5 * D * jnp.log(2 * jnp.pi * v) - _sum_sq(z) / (2 * v)

    def prior_sampling(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Sample the prior N(0, prior_std^2 I)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)


class _GaussianPathMixin(GaussianPrior):
    """Methods shared by all linear SDEs, written in terms of ``marginal_coeffs``."""

    T: float = 1.0

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean and std of p_0t(x_t | x_0 = x): returns ``(a_t x, s_t)`` with ``s_t`` of shape (B,)."""
        t = _bcast_t(x, t)
        a, s = self.marginal_coeffs(t)
        return batch_mul(a, x), s

    def perturb(self, x0: Array, t: Array, noise: Array) -> Array:
        """x_t = a_t x_0 + s_t z."""
        t = _bcast_t(x0, t)
        a, s = self.marginal_coeffs(t)
        return batch_mul(a, x0) + batch_mul(s, noise)

    def log_snr(self, t: Array) -> Array:
        """lambda_t = log(a_t / s_t) (half log-SNR, the DPM-Solver time variable)."""
        a, s = self.marginal_coeffs(t)
        return jnp.log(a) - jnp.log(s)

    def ancestral_posterior(self, x: Array, t: Array, s_time: Array, x0: Array) -> tuple[Array, Array]:
        """Mean and std of the Gaussian posterior q(x_s | x_t = x, x_0 = x0) for s < t.

        With a_{t|s} = a_t / a_s and s_{t|s}^2 = s_t^2 - a_{t|s}^2 s_s^2 (the transition kernel of a
        linear SDE), the posterior is N(mu, tau^2 I) with
            mu    = (a_{t|s} s_s^2 / s_t^2) x_t + (a_s s_{t|s}^2 / s_t^2) x_0,
            tau^2 = s_{t|s}^2 s_s^2 / s_t^2.
        This is the DDPM posterior (Ho et al. 2020, eq. 7) for an arbitrary linear SDE.
        """
        t = _bcast_t(x, t)
        s_time = _bcast_t(x, s_time)
        a_t, sig_t = self.marginal_coeffs(t)
        a_s, sig_s = self.marginal_coeffs(s_time)
        a_ts = a_t / a_s
        var_ts = jnp.maximum(sig_t**2 - a_ts**2 * sig_s**2, 0.0)
        c_x = a_ts * sig_s**2 / sig_t**2
        c_0 = a_s * var_ts / sig_t**2
        mean = batch_mul(c_x, x) + batch_mul(c_0, x0)
        std = jnp.sqrt(var_ts * sig_s**2 / sig_t**2)
        return mean, std

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn`` (Song et al. eq. 6, 13)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def time_index(self, t: Array) -> Array:
        """Index of the discrete step for time t: i = floor(t (N-1) / T), clipped to [0, N-1].

        This is the reference's ``(t * (N - 1) / T).long()``; on the sampler grid
        ``linspace(T, eps, N)`` it gives N-1, N-2, ..., 0.
        """
        i = jnp.floor(t * (self.N - 1) / self.T).astype(jnp.int32)
        return jnp.clip(i, 0, self.N - 1)


@struct.dataclass
class VPSDE(_GaussianPathMixin):
    """Variance-preserving SDE (DDPM in the continuum limit), Song et al. eq. 11.

        dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW,   beta(t) = b0 + t (b1 - b0)
        log a_t = -t^2 (b1 - b0) / 4 - t b0 / 2,      s_t = sqrt(1 - a_t^2)
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = struct.field(pytree_node=False, default=1000)

    prior_std = 1.0
    sampling_eps = 1e-3
    name = "vpsde"

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Array) -> Array:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(a_t, s_t) with a_t = exp(log_mean_coeff(t)), s_t = sqrt(1 - a_t^2)."""
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def drift_coeff(self, t: Array) -> Array:
        """f(t) in f(x, t) = f(t) x."""
        return -0.5 * self.beta(t)

    def diffusion_coeff(self, t: Array) -> Array:
        return jnp.sqrt(self.beta(t))

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """(f(x,t), g(t)) = (-beta(t) x / 2, sqrt(beta(t)))."""
        t = _bcast_t(x, t)
        return batch_mul(self.drift_coeff(t), x), self.diffusion_coeff(t)

    # --- discrete DDPM chain (Ho et al. 2020) -------------------------------------------------
    @property
    def discrete_betas(self) -> Array:
        """beta_i = linspace(b0/N, b1/N, N)."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas(self) -> Array:
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> Array:
        return jnp.cumprod(self.alphas)

    @property
    def sqrt_alphas_cumprod(self) -> Array:
        return jnp.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> Array:
        return jnp.sqrt(1.0 - self.alphas_cumprod)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """DDPM step x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z: f = (sqrt(1-beta_i) - 1) x, G = sqrt(beta_i)."""
        t = _bcast_t(x, t)
        beta = self.discrete_betas[self.time_index(t)].astype(x.dtype)
        return batch_mul(jnp.sqrt(1.0 - beta) - 1.0, x), jnp.sqrt(beta)

    def ancestral_step(self, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
        """Reference ancestral sampling step for VP (DDPM, Ho et al. eq. 11 written with the score).

            x_mean = (x + beta_i score) / sqrt(1 - beta_i),   x = x_mean + sqrt(beta_i) z.
        """
        t = _bcast_t(x, t)
        beta = self.discrete_betas[self.time_index(t)].astype(x.dtype)
        x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + batch_mul(jnp.sqrt(beta), z), x_mean

    def langevin_alpha(self, t: Array) -> Array:
        """Step-size factor alpha_i of the reference Langevin corrector: alpha_i = 1 - beta_i."""
        return self.alphas[self.time_index(t)]

    def discrete_sigmas_at(self, t: Array) -> Array:
        """std of the discrete DDPM marginal at step i: sqrt(1 - alphabar_i)."""
        return self.sqrt_1m_alphas_cumprod[self.time_index(t)]


@struct.dataclass
class subVPSDE(VPSDE):
    """sub-VP SDE (Song et al. eq. 12): same drift as VP, diffusion
        g(t) = sqrt(beta(t) (1 - exp(-2 b0 t - (b1 - b0) t^2))),  s_t = 1 - a_t^2  (no square root).

    The reference has no discrete chain for sub-VP and crashes with the Langevin corrector and the
    ancestral predictor. Here:
    - ``discretize`` is Euler-Maruyama: f = f(x,t) dt, G = g(t) sqrt(dt), dt = T/N (the reference's
      default discretisation);
    - ``ancestral_step`` samples the exact Gaussian posterior q(x_{t-dt} | x_t, x0_hat) of the
      sub-VP path, with x0_hat = (x_t + s_t^2 score) / a_t (Tweedie);
    - ``langevin_alpha`` is 1 - beta(t) dt, the VP value, since both share the drift.
    """

    name = "subvpsde"

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), -jnp.expm1(2.0 * lmc)

    def diffusion_coeff(self, t: Array) -> Array:
        discount = -jnp.expm1(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return jnp.sqrt(self.beta(t) * discount)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        return _euler_maruyama_discretize(self, x, t)

    def ancestral_step(self, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
        return _posterior_ancestral_step(self, x, t, score, key)

    def langevin_alpha(self, t: Array) -> Array:
        return 1.0 - self.beta(t) * (self.T / self.N)


@struct.dataclass
class VESDE(_GaussianPathMixin):
    """Variance-exploding SDE (SMLD in the continuum limit), Song et al. eq. 9.

        dx = sigma(t) sqrt(2 ln(sigma_max / sigma_min)) dW,  sigma(t) = sigma_min (sigma_max/sigma_min)^t
        a_t = 1, s_t = sigma(t); prior N(0, sigma_max^2 I).

    As in the reference, s_t = sigma(t) is the marginal std of the SDE started at noise level
    sigma_min (x(0) = x_0 + sigma_min z): integrating the SDE from a point gives
    sigma(t)^2 - sigma_min^2, which differs by sigma_min^2 = 1e-4.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = struct.field(pytree_node=False, default=1000)

    sampling_eps = 1e-5
    name = "vesde"

    @property
    def prior_std(self):
        return self.sigma_max

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        return jnp.ones_like(t), self.sigma(t)

    def drift_coeff(self, t: Array) -> Array:
        return jnp.zeros_like(t)

    def diffusion_coeff(self, t: Array) -> Array:
        return self.sigma(t) * jnp.sqrt(2 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """(f, g) = (0, sigma(t) sqrt(2 ln(sigma_max / sigma_min)))."""
        t = _bcast_t(x, t)
        return jnp.zeros_like(x), self.diffusion_coeff(t)

    @property
    def discrete_sigmas(self) -> Array:
        """sigma_i = exp(linspace(ln sigma_min, ln sigma_max, N)) (increasing with i)."""
        return jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), self.N))

    def _sigma_and_prev(self, x: Array, t: Array) -> tuple[Array, Array]:
        i = self.time_index(_bcast_t(x, t))
        sig = self.discrete_sigmas
        sigma = sig[i].astype(x.dtype)
        prev = jnp.where(i == 0, 0.0, sig[jnp.maximum(i - 1, 0)]).astype(x.dtype)
        return sigma, prev

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """SMLD chain: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2) with sigma_{-1} = 0."""
        sigma, prev = self._sigma_and_prev(x, t)
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - prev**2)

    def ancestral_step(self, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
        """Reference SMLD ancestral step (Song et al. App. F):

            x_mean = x + (sigma_i^2 - sigma_{i-1}^2) score,
            x = x_mean + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) z.
        """
        sigma, prev = self._sigma_and_prev(x, t)
        diff = sigma**2 - prev**2
        x_mean = x + batch_mul(diff, score)
        std = jnp.sqrt(prev**2 * diff / sigma**2)
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + batch_mul(std, z), x_mean

    def langevin_alpha(self, t: Array) -> Array:
        return jnp.ones_like(t)


def _euler_maruyama_discretize(sde, x: Array, t: Array) -> tuple[Array, Array]:
    """f = f(x,t) dt, G = g(t) sqrt(dt) with dt = T/N (reference default discretisation)."""
    dt = sde.T / sde.N
    drift, diffusion = sde.sde(x, t)
    return drift * dt, diffusion * math.sqrt(dt)


def _posterior_ancestral_step(sde, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
    """Ancestral step from t to t - T/N through the exact posterior q(x_s | x_t, x0_hat)."""
    t = _bcast_t(x, t)
    a_t, s_t = sde.marginal_coeffs(t)
    x0_hat = batch_mul(1.0 / a_t, x + batch_mul(s_t**2, score))
    s_time = jnp.maximum(t - sde.T / sde.N, 0.0)
    mean, std = sde.ancestral_posterior(x, t, s_time, x0_hat)
    z = jax.random.normal(key, x.shape, x.dtype)
    return mean + batch_mul(std, z), mean


@struct.dataclass
class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 score] dt + g dW-bar (Song et al. eq. 6), or with
    ``probability_flow=True`` the ODE dx/dt = f - g^2 score / 2 (eq. 13).

    Exposes the same ``sde(x, t)`` and ``discretize(x, t)`` interface as the forward SDE:
    ``discretize`` gives f_rev = f - G^2 score (x 1/2 for the ODE) and G_rev = G (0 for the ODE).
    """

    fwd: object
    score_fn: ScoreFn = struct.field(pytree_node=False)
    probability_flow: bool = struct.field(pytree_node=False, default=False)

    @property
    def T(self):
        return self.fwd.T

    @property
    def N(self):
        return self.fwd.N

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        drift, diffusion = self.fwd.sde(x, t)
        score = self.score_fn(x, _bcast_t(x, t))
        c = 0.5 if self.probability_flow else 1.0
        drift = drift - batch_mul(c * diffusion**2, score)
        diffusion = jnp.zeros_like(diffusion) if self.probability_flow else diffusion
        return drift, diffusion

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        f, G = self.fwd.discretize(x, t)
        score = self.score_fn(x, _bcast_t(x, t))
        c = 0.5 if self.probability_flow else 1.0
        rev_f = f - batch_mul(c * G**2, score)
        rev_G = jnp.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


SDES = {"vpsde": VPSDE, "subvpsde": subVPSDE, "vesde": VESDE}


def get_sde(name: str, **kwargs):
    """Build an SDE by name ("vpsde", "subvpsde", "vesde"); unknown names raise ValueError."""
    key = name.lower()
    if key not in SDES:
        raise ValueError(f"Unknown SDE {name!r}; valid choices: {sorted(SDES)}")
    return SDES[key](**kwargs)
