"""Gaussian-mixture data with exact scores and densities at every noise level.

For data p_0 = sum_k w_k N(mu_k, sd_k^2 I) and a Gaussian path x_t = a_t x_0 + s_t z, the marginal is
again a mixture, p_t = sum_k w_k N(a_t mu_k, (a_t^2 sd_k^2 + s_t^2) I), so

    log p_t(x) = logsumexp_k [log w_k + log N(x; a_t mu_k, v_k I)],   v_k = a_t^2 sd_k^2 + s_t^2
    score_t(x) = sum_k r_k(x) (a_t mu_k - x) / v_k,   r_k = softmax_k(log w_k + log N(x; a_t mu_k, v_k I)).

These closed forms are the ground truth of the tests and benchmarks: samplers, likelihoods and losses
are checked against them. A single Gaussian is the K = 1 case.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from score_jax import pytree
from score_jax.score import marginal_coeffs_and_derivs

Array = jax.Array


@pytree.dataclass
class GaussianMixture:
    """Isotropic Gaussian mixture: ``weights`` (K,), ``means`` (K, *event_shape), ``stds`` (K,)."""

    weights: Array
    means: Array
    stds: Array

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def _component_logits(self, x: Array, a: Array, s: Array) -> tuple[Array, Array, Array]:
        """Per-example, per-component log w_k + log N(x; a mu_k, v_k I); returns (logits, means, v)."""
        B = x.shape[0]
        xf = x.reshape(B, 1, -1)
        mu = self.means.reshape(1, self.means.shape[0], -1) * a.reshape(B, 1, 1)
        v = (a.reshape(B, 1) ** 2) * self.stds.reshape(1, -1) ** 2 + s.reshape(B, 1) ** 2  # (B, K)
        sq = jnp.sum(jnp.square(xf - mu), axis=-1)  # (B, K)
        D = xf.shape[-1]
        logits = jnp.log(self.weights)[None] - 0.5 * D * jnp.log(2 * jnp.pi * v) - 0.5 * sq / v
        return logits, mu, v

    def log_prob_t(self, x: Array, a: Array, s: Array) -> Array:
        """log p_t(x) for the path coefficients (a_t, s_t) of shape (B,)."""
        logits, _, _ = self._component_logits(x, a, s)
        return jax.nn.logsumexp(logits, axis=-1)

    def score_t(self, x: Array, a: Array, s: Array) -> Array:
        """grad_x log p_t(x) for the path coefficients (a_t, s_t) of shape (B,)."""
        logits, mu, v = self._component_logits(x, a, s)
        r = jax.nn.softmax(logits, axis=-1)  # (B, K)
        B = x.shape[0]
        g = jnp.sum(r[..., None] * (mu - x.reshape(B, 1, -1)) / v[..., None], axis=1)
        return g.reshape(x.shape)

    def posterior_t(self, x: Array, a: Array, s: Array) -> tuple[Array, Array]:
        """(E[x1 | x_t = x], E[eps | x_t = x]) for x_t = a x1 + s eps (coefficients (B,)):

            E[x1 | x] = sum_k r_k (mu_k + a sd_k^2 (x - a mu_k) / v_k),
            E[eps | x] = sum_k r_k s (x - a mu_k) / v_k,      v_k = a^2 sd_k^2 + s^2,

        r_k the posterior component probabilities; finite at a = 0 and at s = 0 (no division by
        a or s)."""
        logits, amu, v = self._component_logits(x, a, s)
        B = x.shape[0]
        r = jax.nn.softmax(logits, axis=-1)[..., None]  # (B, K, 1)
        resid = x.reshape(B, 1, -1) - amu  # (B, K, D)
        sd2 = jnp.square(self.stds).reshape(1, -1, 1)
        mu = self.means.reshape(1, self.means.shape[0], -1)
        x1 = jnp.sum(r * (mu + a.reshape(B, 1, 1) * sd2 / v[..., None] * resid), 1)
        eps = jnp.sum(r * (s.reshape(B, 1, 1) / v[..., None]) * resid, 1)
        return x1.reshape(x.shape), eps.reshape(x.shape)

    def score(self, x: Array) -> Array:
        """grad_x log p_0(x), the time-independent score of the mixture itself (Langevin target)."""
        B = x.shape[0]
        return self.score_t(x, jnp.ones((B,), x.dtype), jnp.zeros((B,), x.dtype)).astype(x.dtype)

    def log_prob(self, x: Array) -> Array:
        """log p_0(x), shape (B,)."""
        B = x.shape[0]
        return self.log_prob_t(x, jnp.ones((B,), x.dtype), jnp.zeros((B,), x.dtype))

    def responsibilities(self, x: Array) -> Array:
        """Posterior component probabilities under p_0, shape (B, K)."""
        B = x.shape[0]
        logits, _, _ = self._component_logits(x, jnp.ones((B,), x.dtype), jnp.zeros((B,), x.dtype))
        return jax.nn.softmax(logits, axis=-1)

    def sample(self, key: Array, n: int, dtype=jnp.float32) -> tuple[Array, Array]:
        """n samples and their component indices."""
        kc, kz = jax.random.split(key)
        comp = jax.random.choice(kc, self.weights.shape[0], (n,), p=self.weights)
        z = jax.random.normal(kz, (n,) + self.event_shape, dtype)
        sd = self.stds[comp].reshape((n,) + (1,) * len(self.event_shape))
        return (self.means[comp] + sd * z).astype(dtype), comp

    def score_fn(self, sde) -> "MixtureScore":
        """The exact score function ``score_fn(x, t)`` of the diffused mixture under ``sde`` (any
        object with ``marginal_coeffs(t)``: an SDE in SDE time, or a ``flow`` path in flow time)."""
        return MixtureScore(self, sde)


@pytree.dataclass
class MixtureScore:
    """Exact ``score_fn(x, t)`` of a Gaussian mixture diffused by an SDE (a pytree: jit-friendly)."""

    mixture: GaussianMixture
    sde: object

    def __call__(self, x: Array, t: Array) -> Array:
        a, s = self.sde.marginal_coeffs(t)
        return self.mixture.score_t(x, a, s).astype(x.dtype)

    def log_prob(self, x: Array, t: Array) -> Array:
        a, s = self.sde.marginal_coeffs(t)
        return self.mixture.log_prob_t(x, a, s)


@pytree.dataclass
class MixtureVelocity:
    """The exact marginal velocity of Gaussian-mixture data on ``path`` (flow time t; any object
    with ``marginal_coeffs``), the ground truth for flow-matching tests and benchmarks:

        u(x, t) = alpha'_t E[x1 | x_t = x] + sigma'_t E[eps | x_t = x]

    with the posterior means of ``GaussianMixture.posterior_t`` (the same component posterior
    as `MixtureScore`: one ground truth). Finite at both ends of the path. Also
    ``flow.MixtureVelocity``.
    """

    mixture: GaussianMixture
    path: object

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        a, s, da, ds = marginal_coeffs_and_derivs(self.path, t)
        x1_hat, eps_hat = self.mixture.posterior_t(x, a, s)
        B = x.shape[0]
        u = (da.reshape((B,) + (1,) * (x.ndim - 1)) * x1_hat
             + ds.reshape((B,) + (1,) * (x.ndim - 1)) * eps_hat)
        return u.astype(x.dtype)

    def score(self, x: Array, t: Array) -> Array:
        """The score of the same diffused mixture (= ``MixtureScore(mixture, path)(x, t)``)."""
        return MixtureScore(self.mixture, self.path)(x, t)


def gaussian(mean: Array, std: float) -> GaussianMixture:
    """A single isotropic Gaussian N(mean, std^2 I) as a one-component mixture."""
    mean = jnp.asarray(mean)
    return GaussianMixture(jnp.ones((1,)), mean[None], jnp.full((1,), std, mean.dtype))


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.1, dim: int = 2,
                 weights: Array | None = None, dtype=jnp.float32) -> GaussianMixture:
    """Modes evenly spaced on a circle in the first two coordinates (zero elsewhere); optional
    unequal weights (default: geometric 1, 2, ..., normalised, so mode weights are testable)."""
    ang = 2 * jnp.pi * jnp.arange(num_modes) / num_modes
    means = jnp.zeros((num_modes, dim), dtype)
    means = means.at[:, 0].set(radius * jnp.cos(ang)).at[:, 1].set(radius * jnp.sin(ang))
    if weights is None:
        weights = jnp.arange(1, num_modes + 1, dtype=dtype)
    weights = jnp.asarray(weights, dtype)
    return GaussianMixture(weights / weights.sum(), means, jnp.full((num_modes,), std, dtype))


def image_mixture(key: Array, num_modes: int = 4, shape=(32, 32, 3), std: float = 0.1,
                  dtype=jnp.float32) -> GaussianMixture:
    """A mixture in image space (e.g. 3072 = 32x32x3 dims) with random means in [-0.7, 0.7] and
    unequal weights 1..K: the high-dimensional benchmark."""
    means = jax.random.uniform(key, (num_modes,) + tuple(shape), dtype, -0.7, 0.7)
    w = jnp.arange(1, num_modes + 1, dtype=dtype)
    return GaussianMixture(w / w.sum(), means, jnp.full((num_modes,), std, dtype))


def checkerboard(key: Array, n: int, *, size: int = 4, scale: float = 1.0,
                 dtype=jnp.float32) -> Array:
    """n points uniform on the black squares of a ``size`` x ``size`` checkerboard covering
    [-size/2, size/2]^2 * scale (the 2-D benchmark of MIT 6.S184 lab 2 and of flow-matching
    papers); shape (n, 2). No closed-form score: compare samples by MMD / sliced W2."""
    kc, ku = jax.random.split(key)
    # Black squares: (i + j) even, i, j in 0..size-1.
    cells = jnp.asarray([(i, j) for i in range(size) for j in range(size) if (i + j) % 2 == 0],
                        dtype)
    idx = jax.random.randint(kc, (n,), 0, cells.shape[0])
    u = jax.random.uniform(ku, (n, 2), dtype)
    return ((cells[idx] + u) - size / 2) * scale


def circles(key: Array, n: int, *, radii=(0.5, 1.5), noise: float = 0.05,
            dtype=jnp.float32) -> Array:
    """n points on concentric circles of the given ``radii`` (equal counts in expectation) plus
    N(0, noise^2) jitter; shape (n, 2). The source of the circles -> checkerboard bridge."""
    kr, ka, kz = jax.random.split(key, 3)
    r = jnp.asarray(radii, dtype)[jax.random.randint(kr, (n,), 0, len(radii))]
    ang = jax.random.uniform(ka, (n,), dtype, 0.0, 2 * jnp.pi)
    x = jnp.stack([r * jnp.cos(ang), r * jnp.sin(ang)], -1)
    return x + noise * jax.random.normal(kz, x.shape, dtype)


def mmd_rbf(x: Array, y: Array, bandwidths=(0.1, 0.2, 0.5, 1.0, 2.0)) -> Array:
    """Biased squared MMD between samples x (n, D) and y (m, D) with a sum of Gaussian kernels
    k(a, b) = exp(-|a - b|^2 / (2 h^2)) over ``bandwidths`` (Gretton et al. 2012, eq. 5)."""
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)

    def k(a, b):
        d2 = jnp.sum(jnp.square(a[:, None] - b[None]), -1)
        return sum(jnp.exp(-d2 / (2 * h**2)) for h in bandwidths)

    return jnp.mean(k(x, x)) + jnp.mean(k(y, y)) - 2 * jnp.mean(k(x, y))


def sliced_w2(key: Array, x: Array, y: Array, num_projections: int = 256) -> Array:
    """Sliced 2-Wasserstein distance between equal-size samples x, y (n, D): sqrt of the mean over
    random unit directions of the 1-D W2^2 of the projections (sorted matching)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sliced_w2 needs equal sample counts; got {x.shape[0]} and {y.shape[0]}")
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    d = jax.random.normal(key, (x.shape[1], num_projections), x.dtype)
    d = d / jnp.linalg.norm(d, axis=0, keepdims=True)
    px, py = jnp.sort(x @ d, axis=0), jnp.sort(y @ d, axis=0)
    return jnp.sqrt(jnp.mean(jnp.square(px - py)))
