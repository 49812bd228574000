"""Forward SDEs of Score SDE (Song et al. 2021, Sec. 3.4 and App. B) as immutable pytrees.

Time runs from data (t = 0) to noise (t = T = 1). Every SDE here is linear,

    dx = f(t) x dt + g(t) dW,

with Gaussian perturbation kernel p_0t(x_t | x_0) = N(a_t x_0, s_t^2 I). The float parameters
(beta_min, beta_max, sigma_min, sigma_max) are pytree leaves, so changing them does not recompile;
the number of discretisation steps ``N`` is static.

Shapes: ``x`` is ``(B, ...)``, ``t`` is ``(B,)`` (a scalar ``t`` is broadcast). Per-example scalars
(diffusion, std, ...) are returned with shape ``(B,)``.

``AbstractSDE`` declares every quantity that samplers, losses and the network wiring need (marginal
coefficients, drift / diffusion, discretisation, ancestral step, Langevin step size, network labels
and output -> score wiring, the discrete training chain, prior, default eps) as an abstract method;
a subclass that misses one raises ``TypeError`` when instantiated. ``VPSDE``, ``subVPSDE`` and
``VESDE`` are final siblings, and no other module tests the SDE type: adding an SDE is one class
in this file (plus its entry in ``SDES``).

``OUProcess`` (Ornstein-Uhlenbeck, closed-form marginals) and the generic integrator of
dX = drift(X, t) dt + diffusion(X, t) dW (``sde_solve``; public API ``sampling.simulate_sde``) are
for simulation (MIT 6.S184 lab 1), outside the diffusion-model interface.
"""
from __future__ import annotations

import abc
import dataclasses
import math
import typing
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from score_jax import discrete, pytree
from score_jax.sde_simulator import (  # noqa: F401 (re-exported: the simulator moved there)
    SIMULATE_SOLVERS,
    _check_simulate,
    _diag,
    _grid,
    _simulate,
    _traced_fn,
    sde_solve,
)

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_mul(a: Array, x: Array) -> Array:
    """Multiply a per-example scalar ``a`` of shape ``(B,)`` (or ``()``) into ``x`` of shape ``(B, ...)``."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def gaussian_perturb(a: Array, s: Array, x0: Array, noise: Array) -> Array:
    """x_t = a x0 + s z for per-example coefficients ``a``, ``s`` of shape (B,) (or ()): the one
    home of the forward perturbation of a Gaussian path (SDEs, their discrete chains, flow paths)."""
    return batch_mul(a, x0) + batch_mul(s, noise)


def _bcast_t(x: Array, t: Array) -> Array:
    # Times in float32, or x's dtype where wider: a bf16 x keeps float32 t (sampling/common.py).
    t = jnp.asarray(t, dtype=jnp.promote_types(x.dtype, jnp.float32)
                    if jnp.issubdtype(x.dtype, jnp.floating) else None)
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
    """Prior N(0, prior_std^2 I) of a path (SDEs here, flow-matching paths in ``flow.py``); the
    class using it provides ``prior_std``."""

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, v I) per example: -D/2 log(2 pi v) - |z|^2 / (2 v), shape (B,)."""
        v = jnp.square(self.prior_std)
        D = math.prod(z.shape[1:])
        return -0.5 * D * jnp.log(2 * jnp.pi * v) - _sum_sq(z) / (2 * v)

    def prior_sampling(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Sample the prior N(0, prior_std^2 I)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)


class SDECore(GaussianPrior, abc.ABC):
    """The core of a linear forward SDE dx = f(t) x dt + g(t) dW on t in [0, T]: what the
    continuous-time samplers (probability-flow ODE, reverse SDE, DPM-Solver / DDIM / UniPC, EDM
    Heun), the likelihood, DSM training and the score <-> head conversions need.

    Abstract (a subclass must implement each, else instantiating it raises ``TypeError``):

    - ``N`` (int, static): number of discretisation steps (the default sampler grid); ``name``
      (str): the key in ``SDES``; ``prior_std``: std of the prior N(0, prior_std^2 I) at t = T;
      ``sampling_eps``: the default final time of samplers (the reference's ``sampling_eps``).
    - ``marginal_coeffs(t) -> (a_t, s_t)``: p_0t(x_t | x_0) = N(a_t x_0, s_t^2 I).
    - ``drift_coeff(t) -> f(t)`` and ``diffusion_coeff(t) -> g(t)``.

    Concrete, written only in terms of the above: ``sde``, ``marginal_prob``, ``perturb``,
    ``log_snr``, ``ancestral_posterior``, ``reverse``, ``prior_logp``, ``prior_sampling``.

    Optional declared capabilities (mixins; ``isinstance(sde, DiscreteChain)`` tells):
    ``DiscreteChain`` (the reference's discrete chain: predictors ``reverse_diffusion`` /
    ``ancestral_sampling``, the Langevin corrector, SMLD / DDPM training) and
    ``ReferenceWiring`` (score_sde's network labels and output scaling). ``AbstractSDE`` is the
    three together: the full interface of the built-in SDEs.
    """

    T = 1.0

    # --- declared constants ---------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def N(self) -> int:
        """Number of discretisation steps of the discrete chain (a static field)."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Name of the SDE, its key in ``SDES``."""

    @property
    @abc.abstractmethod
    def prior_std(self):
        """Std of the prior N(0, prior_std^2 I) approximating p_T."""

    @property
    @abc.abstractmethod
    def sampling_eps(self) -> float:
        """Default final time of samplers (reference: 1e-3 for VP / sub-VP, 1e-5 for VE)."""

    # --- declared continuous-time quantities ----------------------------------------------------
    @abc.abstractmethod
    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(a_t, s_t) of the perturbation kernel p_0t(x_t | x_0) = N(a_t x_0, s_t^2 I); t of any
        shape, results of the same shape. Must be differentiable in t (``score.convert`` takes
        its forward-mode derivative)."""

    @abc.abstractmethod
    def drift_coeff(self, t: Array) -> Array:
        """f(t) in the drift f(x, t) = f(t) x (a_t = exp(int_0^t f)); shape of t."""

    @abc.abstractmethod
    def diffusion_coeff(self, t: Array) -> Array:
        """g(t); shape of t (d s_t^2 / dt = 2 f(t) s_t^2 + g(t)^2)."""

    # --- concrete, from the declared methods ----------------------------------------------------
    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """(f(x, t), g(t)) = (f(t) x, g(t)); drift shaped like x, diffusion shape (B,)."""
        t = _bcast_t(x, t)
        return batch_mul(self.drift_coeff(t), x), self.diffusion_coeff(t)

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean and std of p_0t(x_t | x_0 = x): returns ``(a_t x, s_t)`` with ``s_t`` of shape (B,)."""
        t = _bcast_t(x, t)
        a, s = self.marginal_coeffs(t)
        return batch_mul(a, x), s

    def perturb(self, x0: Array, t: Array, noise: Array) -> Array:
        """x_t = a_t x_0 + s_t z (a sample of p_0t(. | x_0) for z = ``noise`` ~ N(0, I))."""
        t = _bcast_t(x0, t)
        a, s = self.marginal_coeffs(t)
        return gaussian_perturb(a, s, x0, noise)

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



class DiscreteChain(abc.ABC):
    """Capability: the reference's discrete chain of an `SDECore` (mixed into an SDE class).

    Abstract: ``discretize(x, t) -> (f_i, G_i)`` (the chain x_{i+1} = x_i + f_i + G_i z),
    ``ancestral_step(x, t, score, key) -> (x, x_mean)``, ``langevin_alpha(t)``,
    ``discrete_objective()`` and ``discrete_perturbation(labels, x0, noise)`` (the SMLD / DDPM
    training objective, or ``ValueError`` when the SDE has none). Concrete: ``time_index``,
    ``euler_maruyama_discretize``, ``posterior_ancestral_step`` (in terms of the core).
    """

    # --- declared discrete-time quantities ------------------------------------------------------
    @abc.abstractmethod
    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """(f_i, G_i) of the forward chain x_{i+1} = x_i + f_i + G_i z at the step of time t:
        f_i shaped like x, G_i shape (B,)."""

    @abc.abstractmethod
    def ancestral_step(self, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
        """One reverse ancestral sampling step from time t given ``score`` = score(x, t);
        returns ``(x_next, x_mean)`` (the mean is the noise-free last step)."""

    @abc.abstractmethod
    def langevin_alpha(self, t: Array) -> Array:
        """alpha_i of the reference Langevin corrector's step size
        2 alpha_i (snr |z| / |score|)^2; shape of t."""

    # --- declared discrete training objective ---------------------------------------------------
    @abc.abstractmethod
    def discrete_objective(self) -> str:
        """Name of the reference's discrete training objective ("smld" or "ddpm"); raises
        ``ValueError`` when the SDE has no discrete chain to train on."""

    @abc.abstractmethod
    def discrete_perturbation(self, labels: Array, x0: Array, noise: Array) -> tuple[Array, Array, Array]:
        """The discrete objective at integer network labels ``labels`` (B,) in [0, N): returns
        ``(x_i, target, weight)`` with x_i = a_i x0 + s_i noise, the regression target of the
        network output, and the per-example weight (B,); the loss is weight |out - target|^2.
        Raises ``ValueError`` when the SDE has no discrete chain."""

    def time_index(self, t: Array) -> Array:
        """Index of the discrete step for time t: i = floor(t (N-1) / T), clipped to [0, N-1].

        This is the reference's ``(t * (N - 1) / T).long()``; on the sampler grid
        ``linspace(T, eps, N)`` it gives N-1, N-2, ..., 0.
        """
        i = jnp.floor(t * (self.N - 1) / self.T).astype(jnp.int32)
        return jnp.clip(i, 0, self.N - 1)

    def euler_maruyama_discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """The reference's default discretisation: f_i = f(x, t) dt, G_i = g(t) sqrt(dt), dt = T/N."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def posterior_ancestral_step(self, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
        """Ancestral step from t to t - T/N through the exact posterior q(x_s | x_t, x0_hat) of the
        path (``ancestral_posterior``), x0_hat = (x_t + s_t^2 score) / a_t (Tweedie)."""
        t = _bcast_t(x, t)
        a_t, s_t = self.marginal_coeffs(t)
        x0_hat = batch_mul(1.0 / a_t, x + batch_mul(s_t**2, score))
        s_time = jnp.maximum(t - self.T / self.N, 0.0)
        mean, std = self.ancestral_posterior(x, t, s_time, x0_hat)
        z = jax.random.normal(key, x.shape, x.dtype)
        return mean + batch_mul(std, z), mean




class ReferenceWiring(abc.ABC):
    """Capability: score_sde's wiring of a network to an SDE (``models/utils.py::get_score_fn``):
    ``network_labels(t, continuous)`` and ``output_to_score(out, t, labels, continuous)``."""

    # --- declared network wiring ----------------------------------------------------------------
    @abc.abstractmethod
    def network_labels(self, t: Array, continuous: bool) -> Array:
        """The time label the reference feeds its network at SDE time t (shape (B,)).

        ``continuous=False`` selects the labels of the discrete (SMLD / DDPM) training."""

    @abc.abstractmethod
    def output_to_score(self, out: Array, t: Array, labels: Array, continuous: bool) -> Array:
        """The reference's conversion of the network output ``out`` (shaped like x) at time t,
        fed ``labels = network_labels(t, continuous)``, into the score."""



class AbstractSDE(SDECore, DiscreteChain, ReferenceWiring):
    """The full declared interface of the built-in SDEs: the core (`SDECore`) with the discrete
    chain (`DiscreteChain`) and the reference network wiring (`ReferenceWiring`).

    Abstract (a subclass must implement each, else instantiating it raises ``TypeError``):
    ``N``, ``name``, ``prior_std``, ``sampling_eps``, ``marginal_coeffs``, ``drift_coeff``,
    ``diffusion_coeff`` (core); ``discretize``, ``ancestral_step``, ``langevin_alpha``,
    ``discrete_objective``, ``discrete_perturbation`` (chain); ``network_labels``,
    ``output_to_score`` (wiring). Everything else is concrete (see the three bases).
    """


@pytree.dataclass
class _LinearBetaSDE(AbstractSDE):
    """Shared by VP and sub-VP (abstract: no marginal, diffusion, chain or wiring of its own):
    the linear schedule beta(t) = b0 + t (b1 - b0) and the drift f(t) = -beta(t) / 2, with
    log a_t = int_0^t f = -t^2 (b1 - b0) / 4 - t b0 / 2."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = struct.field(pytree_node=False, default=1000)

    prior_std = 1.0
    sampling_eps = 1e-3

    def beta(self, t: Array) -> Array:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Array) -> Array:
        """log a_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coeff(self, t: Array) -> Array:
        """f(t) = -beta(t) / 2."""
        return -0.5 * self.beta(t)


@typing.final
@pytree.dataclass
class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE (DDPM in the continuum limit), Song et al. eq. 11.

        dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW,   beta(t) = b0 + t (b1 - b0)
        log a_t = -t^2 (b1 - b0) / 4 - t b0 / 2,      s_t = sqrt(1 - a_t^2)

    Discrete chain: DDPM (Ho et al. 2020) with beta_i = linspace(b0/N, b1/N, N).
    Network wiring (reference): continuous labels 999 t, score = -out / s_t; discrete labels
    (N - 1) t, score = -out / sqrt(1 - alphabar_i) at i = floor(label).
    """

    name = "vpsde"

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(a_t, s_t) with a_t = exp(log_mean_coeff(t)), s_t = sqrt(1 - a_t^2)."""
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def diffusion_coeff(self, t: Array) -> Array:
        """g(t) = sqrt(beta(t))."""
        return jnp.sqrt(self.beta(t))

    # --- discrete DDPM chain (Ho et al. 2020) -------------------------------------------------
    @property
    def discrete_betas(self) -> Array:
        """beta_i = linspace(b0/N, b1/N, N)."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas(self) -> Array:
        """alpha_i = 1 - beta_i."""
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> Array:
        """alphabar_i = prod_{j <= i} alpha_j."""
        return jnp.cumprod(self.alphas)

    @property
    def sqrt_alphas_cumprod(self) -> Array:
        """sqrt(alphabar_i): the a_i of the discrete chain."""
        return jnp.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> Array:
        """sqrt(1 - alphabar_i): the s_i of the discrete chain."""
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
        """alpha_i = 1 - beta_i (reference ``LangevinCorrector``)."""
        return self.alphas[self.time_index(t)]

    def network_labels(self, t: Array, continuous: bool) -> Array:
        """Continuous: 999 t; discrete: (N - 1) t (float; the DDPM step index before flooring)."""
        return t * 999.0 if continuous else t * (self.N - 1)

    def output_to_score(self, out: Array, t: Array, labels: Array, continuous: bool) -> Array:
        """The network predicts eps: score = -out / s_t (continuous) or -out / sqrt(1 - alphabar_i)
        with i = floor(labels) (discrete)."""
        if continuous:
            std = self.marginal_coeffs(t)[1]
        else:
            std = self.sqrt_1m_alphas_cumprod[jnp.floor(labels).astype(jnp.int32)]
        return batch_mul(-1.0 / std.astype(out.dtype), out)

    def discrete_objective(self) -> str:
        """"ddpm" (Ho et al. 2020, L_simple)."""
        return "ddpm"

    def discrete_perturbation(self, labels: Array, x0: Array, noise: Array) -> tuple[Array, Array, Array]:
        """x_i = sqrt(alphabar_i) x0 + sqrt(1 - alphabar_i) eps, target eps, weight 1."""
        a = self.sqrt_alphas_cumprod[labels].astype(x0.dtype)
        s = self.sqrt_1m_alphas_cumprod[labels].astype(x0.dtype)
        return gaussian_perturb(a, s, x0, noise), noise, jnp.ones_like(a)


@typing.final
@pytree.dataclass
class subVPSDE(_LinearBetaSDE):
    """sub-VP SDE (Song et al. eq. 12): the VP drift, diffusion
        g(t) = sqrt(beta(t) (1 - exp(-2 b0 t - (b1 - b0) t^2))),  s_t = 1 - a_t^2  (no square root).

    The reference has no discrete chain for sub-VP and crashes with the Langevin corrector and the
    ancestral predictor. Here:
    - ``discretize`` is Euler-Maruyama: f = f(x,t) dt, G = g(t) sqrt(dt), dt = T/N (the reference's
      default discretisation);
    - ``ancestral_step`` samples the exact Gaussian posterior q(x_{t-dt} | x_t, x0_hat) of the
      sub-VP path, with x0_hat = (x_t + s_t^2 score) / a_t (Tweedie);
    - ``langevin_alpha`` is 1 - beta(t) dt, the VP value, since both share the drift;
    - the network wiring is the continuous one whatever ``continuous`` says (labels 999 t,
      score = -out / s_t), as in the reference;
    - there is no discrete training objective (``discrete_objective`` raises ``ValueError``).
    """

    name = "subvpsde"

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(a_t, s_t) = (exp(log_mean_coeff(t)), 1 - a_t^2)."""
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), -jnp.expm1(2.0 * lmc)

    def diffusion_coeff(self, t: Array) -> Array:
        """g(t) = sqrt(beta(t) (1 - exp(-2 b0 t - (b1 - b0) t^2)))."""
        discount = -jnp.expm1(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return jnp.sqrt(self.beta(t) * discount)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Euler-Maruyama: f = f(x, t) T/N, G = g(t) sqrt(T/N)."""
        return self.euler_maruyama_discretize(x, t)

    def ancestral_step(self, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
        """Exact-posterior step from t to t - T/N (``posterior_ancestral_step``)."""
        return self.posterior_ancestral_step(x, t, score, key)

    def langevin_alpha(self, t: Array) -> Array:
        """1 - beta(t) T / N."""
        return 1.0 - self.beta(t) * (self.T / self.N)

    def network_labels(self, t: Array, continuous: bool) -> Array:
        """999 t (continuous and discrete alike: the reference has no discrete sub-VP wiring)."""
        return t * 999.0

    def output_to_score(self, out: Array, t: Array, labels: Array, continuous: bool) -> Array:
        """score = -out / s_t."""
        std = self.marginal_coeffs(t)[1]
        return batch_mul(-1.0 / std.astype(out.dtype), out)

    def discrete_objective(self) -> str:
        """Raises ``ValueError``: sub-VP has no discrete chain."""
        raise ValueError("sub-VP has no discrete objective (the reference defines none): "
                         "set continuous=True")

    def discrete_perturbation(self, labels: Array, x0: Array, noise: Array) -> tuple[Array, Array, Array]:
        """Raises ``ValueError``: sub-VP has no discrete chain."""
        raise ValueError("sub-VP has no discrete objective (the reference defines none): "
                         "set continuous=True")


@typing.final
@pytree.dataclass
class VESDE(AbstractSDE):
    """Variance-exploding SDE (SMLD in the continuum limit), Song et al. eq. 9.

        dx = sigma(t) sqrt(2 ln(sigma_max / sigma_min)) dW,  sigma(t) = sigma_min (sigma_max/sigma_min)^t
        a_t = 1, s_t = sigma(t); prior N(0, sigma_max^2 I).

    As in the reference, s_t = sigma(t) is the marginal std of the SDE started at noise level
    sigma_min (x(0) = x_0 + sigma_min z): integrating the SDE from a point gives
    sigma(t)^2 - sigma_min^2, which differs by sigma_min^2 = 1e-4.

    Discrete chain: SMLD (Song & Ermon 2019) with sigma_i = exp(linspace(ln sigma_min,
    ln sigma_max, N)). Network wiring (reference): continuous labels sigma(t), discrete labels
    round((T - t)(N - 1)) (int32, label 0 is sigma_max); the network divides by sigma itself
    (``scale_by_sigma``), so score = out.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = struct.field(pytree_node=False, default=1000)

    sampling_eps = 1e-5
    name = "vesde"

    @property
    def prior_std(self):
        """sigma_max."""
        return self.sigma_max

    def sigma(self, t: Array) -> Array:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(a_t, s_t) = (1, sigma(t))."""
        return jnp.ones_like(t), self.sigma(t)

    def drift_coeff(self, t: Array) -> Array:
        """f(t) = 0."""
        return jnp.zeros_like(t)

    def diffusion_coeff(self, t: Array) -> Array:
        """g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min))."""
        return self.sigma(t) * jnp.sqrt(2 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))

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
        """alpha_i = 1 (reference ``LangevinCorrector`` for VE)."""
        return jnp.ones_like(t)

    def network_labels(self, t: Array, continuous: bool) -> Array:
        """Continuous: sigma(t); discrete: round((T - t)(N - 1)) as int32 (0 is sigma_max)."""
        if continuous:
            return self.sigma(t)
        return jnp.round((self.T - t) * (self.N - 1)).astype(jnp.int32)

    def output_to_score(self, out: Array, t: Array, labels: Array, continuous: bool) -> Array:
        """score = out (the network already divides by sigma)."""
        return out

    def discrete_objective(self) -> str:
        """"smld" (Song & Ermon 2019)."""
        return "smld"

    def discrete_perturbation(self, labels: Array, x0: Array, noise: Array) -> tuple[Array, Array, Array]:
        """sigma = flip(discrete_sigmas)[label] (label 0 is sigma_max), x~ = x0 + sigma z,
        target = -(x~ - x0) / sigma^2 = -z / sigma, weight sigma^2 (Song & Ermon 2019, eq. 5)."""
        sigmas = jnp.flip(self.discrete_sigmas)[labels].astype(x0.dtype)
        scaled = batch_mul(sigmas, noise)
        x = gaussian_perturb(jnp.ones_like(sigmas), sigmas, x0, noise)
        return x, batch_mul(-1.0 / sigmas**2, scaled), sigmas**2


@pytree.dataclass
class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 score] dt + g dW-bar (Song et al. eq. 6), or with
    ``probability_flow=True`` the ODE dx/dt = f - g^2 score / 2 (eq. 13).

    Exposes the same ``sde(x, t)`` and ``discretize(x, t)`` interface as the forward SDE:
    ``discretize`` gives f_rev = f - G^2 score (x 1/2 for the ODE) and G_rev = G (0 for the ODE).
    """

    fwd: AbstractSDE
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


@pytree.dataclass
class OUProcess:
    """Ornstein-Uhlenbeck process dX_t = -theta (X_t - mu) dt + sigma dW_t on t >= 0
    (theta >= 0; theta = 0 is scaled Brownian motion). Closed-form marginals:

        X_t | X_0 = x0  ~  N(mu + (x0 - mu) e^{-theta t}, v_t I),
        v_t = sigma^2 (1 - e^{-2 theta t}) / (2 theta)   (sigma^2 t for theta = 0),

    stationary law N(mu, sigma^2 / (2 theta) I) for theta > 0 (Gardiner, Handbook of Stochastic
    Methods, Sec. 3.8.4; MIT 6.S184 lab 1).

    A plain pytree, not an ``AbstractSDE``: it has no fixed horizon T, no prior at T, no discrete
    training chain and no network wiring, which the diffusion-model interface declares; it exposes
    what simulation needs: ``drift(x, t)`` and ``diffusion(x, t)`` for
    ``sampling.simulate_sde``, and ``marginal(x0, t)`` / ``stationary_std`` for checks.
    (A VP SDE with constant beta is the special case theta = beta / 2, sigma = sqrt(beta).)
    Float parameters are pytree leaves (traced). Negative theta or sigma raise ValueError.
    """

    theta: float = 1.0
    sigma: float = 1.0
    mu: float = 0.0

    def __post_init__(self):
        for name in ("theta", "sigma"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not v >= 0:
                raise ValueError(f"OUProcess {name} must be >= 0; got {name}={v!r}")

    def drift(self, x: Array, t: Array) -> Array:
        """-theta (x - mu), x's shape (t unused: time-homogeneous)."""
        return -self.theta * (x - self.mu)

    def diffusion(self, x: Array, t: Array) -> Array:
        """sigma, per example: shape (B,)."""
        return jnp.full(x.shape[:1], self.sigma, x.dtype)

    def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
        """(mean, std) of X_t given X_0 = x0: mean of x0's shape, std of t's shape (scalar t or
        per-example (B,)); see the class docstring."""
        t = jnp.asarray(t)
        decay = jnp.exp(-self.theta * t)
        mean = self.mu + batch_mul(decay, x0 - self.mu) if t.ndim else self.mu + decay * (x0 - self.mu)
        th = jnp.asarray(self.theta)
        safe = jnp.where(th > 0, th, 1.0)
        var = jnp.where(th > 0, -jnp.square(self.sigma) * jnp.expm1(-2 * safe * t) / (2 * safe),
                        jnp.square(self.sigma) * t)
        return mean, jnp.sqrt(var)

    @property
    def stationary_std(self):
        """sigma / sqrt(2 theta) (infinite for theta = 0)."""
        return self.sigma / jnp.sqrt(2.0 * jnp.asarray(self.theta))


@typing.final
@pytree.dataclass
class DiscreteVPSDE(AbstractSDE):
    """A VP path given by a discrete DDPM table alphabar_k, k = 0 .. N-1 (``alphas_cumprod``:
    linear, Stable Diffusion's scaled-linear, iDDPM's cosine, or any other; ``score_jax.discrete``),
    with DDPM's discrete timestep labels: the network sees k as diffusers feeds it.

    Time: t_k = (k + 1) / N (DPM-Solver's ``NoiseScheduleVP("discrete")`` convention), so t = 1 is
    k = N-1 and t = 1/N is k = 0 (``sampling_eps``); t = 0 is the clean data (alphabar = 1,
    diffusers' ``set_alpha_to_one``). Between table points sigma = sqrt((1 - alphabar) / alphabar)
    is linear in the label k = N t - 1 (diffusers' ``np.interp`` of the sigma table, as
    EulerDiscreteScheduler for fractional timesteps), from sigma = 0 at k = -1 (t = 0):

        a_t = 1 / sqrt(1 + sigma(t)^2),   s_t = sigma(t) a_t,   a_t^2 + s_t^2 = 1,

    so a_t^2 = alphabar_k exactly at every t_k. The SDE coefficients follow from the path:
    f(t) = -sigma sigma' / (1 + sigma^2), g(t)^2 = 2 sigma sigma' / (1 + sigma^2).

    Network wiring (``continuous`` is ignored: the labels are always discrete): labels = N t - 1,
    snapped to the nearest integer when within 1e-3 of it (t = (k + 1) / N in float32 gives
    k +- 6e-5); the network predicts eps (``prediction="auto"``; ``"v"`` through
    ``score.get_score_fn(prediction="v")``), score = -out / s_t.

    Discrete chain: the DDPM chain of the table, beta_k = 1 - alphabar_k / alphabar_{k-1}.

    Samplers: every sampler runs on this SDE; the ``schedule`` options "leading", "trailing" and
    "linspace" of ddim / euler / dpm_solver / unipc take diffusers' inference timesteps
    (``score_jax.discrete.timesteps``, with this SDE's ``steps_offset``).

    Build with `discrete_vpsde`. Not in ``SDES`` (its parameter is a table, not config floats).
    """

    alphas_cumprod: Array
    N: int = struct.field(pytree_node=False, default=1000)
    steps_offset: int = struct.field(pytree_node=False, default=0)

    name = "discrete_vpsde"
    prior_std = 1.0

    @property
    def sampling_eps(self) -> float:
        """1 / N: the time of label 0."""
        return 1.0 / self.N

    def _sigma_table(self) -> Array:
        ac = jnp.asarray(self.alphas_cumprod)
        return jnp.concatenate([jnp.zeros((1,), ac.dtype), jnp.sqrt((1.0 - ac) / ac)])

    def sigma(self, t: Array) -> Array:
        """sigma(t), piecewise linear in k = N t - 1 over the table (0 at t = 0)."""
        t = jnp.asarray(t)
        table = self._sigma_table().astype(jnp.promote_types(t.dtype, jnp.float32))
        k = jnp.clip(t * self.N, 0.0, float(self.N))  # k + 1: the table index with the prepended 0
        lo = jnp.clip(jnp.floor(k), 0, self.N - 1).astype(jnp.int32)
        w = k - lo
        return table[lo] + w * (table[lo + 1] - table[lo])

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(a_t, s_t) = (1, sigma) / sqrt(1 + sigma^2)."""
        sig = self.sigma(t)
        a = jax.lax.rsqrt(1.0 + sig * sig)
        return a, sig * a

    def _sigma_and_deriv(self, t: Array) -> tuple[Array, Array]:
        t = jnp.asarray(t)
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))

    def drift_coeff(self, t: Array) -> Array:
        """f(t) = -sigma sigma' / (1 + sigma^2)."""
        sig, d = self._sigma_and_deriv(t)
        return -sig * d / (1.0 + sig * sig)

    def diffusion_coeff(self, t: Array) -> Array:
        """g(t) = sqrt(2 sigma sigma' / (1 + sigma^2))."""
        sig, d = self._sigma_and_deriv(t)
        return jnp.sqrt(jnp.maximum(2.0 * sig * d / (1.0 + sig * sig), 0.0))

    def timesteps(self, family: str, spacing: str, num_steps: int) -> Array:
        """diffusers' inference timesteps (labels k, float64 numpy) of ``family`` / ``spacing``
        (``score_jax.discrete.timesteps``, with this SDE's N and steps_offset)."""
        return discrete.timesteps(family, spacing, num_steps, self.N, self.steps_offset)

    def label_time(self, k) -> Array:
        """t = (k + 1) / N of a label k (k = -1 is t = 0, the data)."""
        return (jnp.asarray(k) + 1.0) / self.N

    # --- discrete chain --------------------------------------------------------------------------
    @property
    def discrete_betas(self) -> Array:
        """beta_k = 1 - alphabar_k / alphabar_{k-1} (alphabar_{-1} = 1)."""
        ac = jnp.asarray(self.alphas_cumprod)
        prev = jnp.concatenate([jnp.ones((1,), ac.dtype), ac[:-1]])
        return 1.0 - ac / prev

    def time_index(self, t: Array) -> Array:
        """k = round(N t - 1), clipped to [0, N-1]."""
        return jnp.clip(jnp.round(t * self.N - 1.0), 0, self.N - 1).astype(jnp.int32)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """DDPM step: f = (sqrt(1 - beta_k) - 1) x, G = sqrt(beta_k)."""
        t = _bcast_t(x, t)
        beta = self.discrete_betas[self.time_index(t)].astype(x.dtype)
        return batch_mul(jnp.sqrt(1.0 - beta) - 1.0, x), jnp.sqrt(beta)

    def ancestral_step(self, x: Array, t: Array, score: Array, key: Array) -> tuple[Array, Array]:
        """DDPM ancestral step x_mean = (x + beta_k score) / sqrt(1 - beta_k), + sqrt(beta_k) z."""
        t = _bcast_t(x, t)
        beta = self.discrete_betas[self.time_index(t)].astype(x.dtype)
        x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + batch_mul(jnp.sqrt(beta), z), x_mean

    def langevin_alpha(self, t: Array) -> Array:
        """1 - beta_k."""
        return 1.0 - self.discrete_betas[self.time_index(t)]

    def network_labels(self, t: Array, continuous: bool) -> Array:
        """k = N t - 1 (snapped to an integer within 1e-3), whatever ``continuous``."""
        k = jnp.asarray(t) * self.N - 1.0
        r = jnp.round(k)
        return jnp.where(jnp.abs(k - r) < 1e-3, r, k)

    def output_to_score(self, out: Array, t: Array, labels: Array, continuous: bool) -> Array:
        """The network predicts eps: score = -out / s_t."""
        std = self.marginal_coeffs(t)[1]
        return batch_mul(-1.0 / std.astype(out.dtype), out)

    def discrete_objective(self) -> str:
        """"ddpm" (L_simple on the table)."""
        return "ddpm"

    def discrete_perturbation(self, labels: Array, x0: Array, noise: Array) -> tuple[Array, Array, Array]:
        """x_k = sqrt(alphabar_k) x0 + sqrt(1 - alphabar_k) eps at labels k, target eps, weight 1."""
        ac = jnp.asarray(self.alphas_cumprod)[labels]
        a, s = jnp.sqrt(ac).astype(x0.dtype), jnp.sqrt(1.0 - ac).astype(x0.dtype)
        return gaussian_perturb(a, s, x0, noise), noise, jnp.ones_like(a)


def discrete_vpsde(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
                   beta_start: float = 0.00085, beta_end: float = 0.012, steps_offset: int = 0,
                   alphas_cumprod=None) -> DiscreteVPSDE:
    """A `DiscreteVPSDE` from a diffusers beta schedule (``discrete.alphas_cumprod``) or an
    explicit ``alphas_cumprod`` table (then N = its length). Stable Diffusion:
    ``discrete_vpsde("scaled_linear", 1000, 0.00085, 0.012, steps_offset=1)``.

    Raises:
      ValueError: unknown beta_schedule; a table that is not 1-D, in (0, 1] and non-increasing.
    """
    if alphas_cumprod is None:
        table = discrete.alphas_cumprod(beta_schedule, num_train_timesteps, beta_start, beta_end)
    else:
        import numpy as np

        table = np.asarray(alphas_cumprod, np.float64)
        if table.ndim != 1 or table.size < 2 or not (np.all(table > 0) and np.all(table <= 1)
                                                     and np.all(np.diff(table) <= 0)):
            raise ValueError("alphas_cumprod must be a 1-D table of >= 2 values in (0, 1], "
                             f"non-increasing; got shape {table.shape}")
    return DiscreteVPSDE(alphas_cumprod=jnp.asarray(table), N=int(table.shape[0]),
                         steps_offset=int(steps_offset))


def discrete_vpsde_from_scheduler_config(config) -> tuple[DiscreteVPSDE, str, str]:
    """``(sde, prediction head, spacing)`` from a diffusers ``scheduler_config.json`` (a path or a
    dict): beta_schedule / num_train_timesteps / beta_start / beta_end / trained_betas /
    steps_offset; ``prediction_type`` "epsilon" -> "eps", "v_prediction" -> "v", "sample" -> "x0";
    ``timestep_spacing`` (default "leading", diffusers' default).

    Raises:
      ValueError: an unsupported key value (naming the key and the valid choices).
    """
    import json
    from pathlib import Path

    import numpy as np

    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    heads = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
    pred = config.get("prediction_type", "epsilon")
    if pred not in heads:
        raise ValueError(f"scheduler config key 'prediction_type' is {pred!r}; valid: {list(heads)}")
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in discrete.SPACINGS:
        raise ValueError(f"scheduler config key 'timestep_spacing' is {spacing!r}; valid: "
                         f"{list(discrete.SPACINGS)}")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler config key 'rescale_betas_zero_snr' = true is not supported")
    table = None
    if config.get("trained_betas") is not None:
        table = np.cumprod(1.0 - np.asarray(config["trained_betas"], np.float64))
    bs = config.get("beta_schedule", "linear")
    if table is None and bs not in discrete.BETA_SCHEDULES:
        raise ValueError(f"scheduler config key 'beta_schedule' is {bs!r}; valid: "
                         f"{list(discrete.BETA_SCHEDULES)}")
    sde = discrete_vpsde(bs, int(config.get("num_train_timesteps", 1000)),
                         float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02)),
                         int(config.get("steps_offset", 0)), alphas_cumprod=table)
    return sde, heads[pred], spacing


SDES = {"vpsde": VPSDE, "subvpsde": subVPSDE, "vesde": VESDE}


def sde_parameters(name: str) -> tuple[str, ...]:
    """Names of the float parameters (pytree leaves) of the SDE ``name``, e.g. ("beta_min",
    "beta_max") for "vpsde": what a config must provide besides ``N``. Unknown names raise
    ``ValueError``."""
    cls = _sde_class(name)
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("pytree_node", True))


def _sde_class(name: str):
    key = name.lower()
    if key not in SDES:
        raise ValueError(f"Unknown SDE {name!r}; valid choices: {sorted(SDES)}")
    return SDES[key]


def get_sde(name: str, **kwargs):
    """Build an SDE by name ("vpsde", "subvpsde", "vesde"); unknown names raise ValueError."""
    return _sde_class(name)(**kwargs)
