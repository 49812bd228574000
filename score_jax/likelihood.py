"""Exact likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2).

Along dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 (the instantaneous change of variables of
Chen et al. 2018),

    log p_0(x(eps)) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt.

The divergence is integrated alongside x by diffrax, either exactly (D Jacobian-vector products per
evaluation: small D only) or by the Hutchinson-Skilling estimator div F = E_v[v^T (dF/dx) v] with one
Rademacher or Gaussian probe v per solve (one JVP per evaluation). Everything runs inside one jit.

bits/dim (reference ``likelihood.py`` / ``run_lib.evaluate``): for 8-bit data dequantised as
x = (k + u) / 256, u ~ U[0, 1), bpd = -log p(x) / (D ln 2) + offset, offset = 8 for data in [0, 1]
and 7 when the model sees centred data 2x - 1 (the Jacobian of the affine maps).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.sampling.diffeq import probability_flow_velocity, solve_ode

Array = jax.Array

HUTCHINSON = ("rademacher", "gaussian", "exact")


def _per_example_sum(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def exact_divergence(fn: Callable[[Array], Array], x: Array) -> tuple[Array, Array]:
    """(fn(x), div fn(x)) per example, computing the Jacobian trace with D JVPs.

    ``fn`` maps (B, ...) -> (B, ...) with examples independent; the j-th JVP uses the j-th unit vector
    in every example at once, so the cost is D evaluations whatever B is.
    """
    B = x.shape[0]
    D = math.prod(x.shape[1:])
    out = fn(x)

    def one(j):
        e = jnp.zeros((B, D), x.dtype).at[:, j].set(1.0).reshape(x.shape)
        _, jv = jax.jvp(fn, (x,), (e,))
        return jv.reshape(B, D)[:, j]

    diag = jax.lax.map(one, jnp.arange(D))  # (D, B)
    return out, jnp.sum(diag, axis=0)


def hutchinson_divergence(fn: Callable[[Array], Array], x: Array, v: Array) -> tuple[Array, Array]:
    """(fn(x), v^T (d fn/dx) v) per example: one JVP (Hutchinson 1990; Skilling 1989)."""
    out, jv = jax.jvp(fn, (x,), (v,))
    return out, _per_example_sum(v * jv)


def probe(key: Array, shape: tuple[int, ...], kind: str, dtype=jnp.float32) -> Array | None:
    """A Hutchinson probe: Rademacher (+-1) or standard Gaussian; None for the exact trace."""
    if kind not in HUTCHINSON:
        raise ValueError(f"Unknown hutchinson estimator {kind!r}; valid choices: {list(HUTCHINSON)}")
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    return None


def ode_log_likelihood(
    key: Array,
    velocity_fn: Callable[[Array, Array], Array],
    x: Array,
    t0: float,
    t1: float,
    prior_logp: Callable[[Array], Array],
    *,
    hutchinson: str = "rademacher",
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
) -> tuple[Array, Array, Array]:
    """log-density of x under any continuous normalising flow dx/dt = velocity_fn(t, x).

    Integrates (x, delta) from t0 (data) to t1 (prior) with d delta / dt = div velocity, and returns
    ``(logp, z, nfe)`` with logp = prior_logp(z) + delta(t1) in nats per example, z = x(t1), and nfe
    the number of velocity evaluations (each with one JVP, or D JVPs for ``"exact"``). Used by the
    score-SDE likelihood and by flow matching (whose t0/t1 run the other way).
    """
    v = probe(key, x.shape, hutchinson, x.dtype)

    def aug(t, state):
        y, _ = state
        fn = functools.partial(velocity_fn, t)
        if v is None:
            dy, div = exact_divergence(fn, y)
        else:
            dy, div = hutchinson_divergence(fn, y, v)
        return dy, div

    state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
    (z, delta), nfe = solve_ode(aug, state0, t0, t1, solver=solver, rtol=rtol, atol=atol,
                                num_steps=num_steps)
    return prior_logp(z) + delta, z, nfe


def log_likelihood(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    *,
    hutchinson: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    solver: str = "tsit5",
    num_steps: int | None = None,
) -> tuple[Array, Array, Array]:
    """log p_eps(x) in nats per example through the probability-flow ODE of ``sde``.

    Returns ``(logp, z, nfe)``: z = x(T) is the latent (the encoding of x), nfe the number of
    probability-flow evaluations. Jit-able; the ODE is solved for the whole batch at once.
    """
    vf = probability_flow_velocity(sde, score_fn)
    return ode_log_likelihood(key, vf, x, eps, sde.T, sde.prior_logp, hutchinson=hutchinson,
                              solver=solver, rtol=rtol, atol=atol, num_steps=num_steps)


def dequantize(key: Array, x: Array) -> Array:
    """Uniform dequantisation of 8-bit data given in [0, 1]: (255 x + u) / 256, u ~ U[0, 1)."""
    return (x * 255.0 + jax.random.uniform(key, x.shape, x.dtype)) / 256.0


def bpd_offset(centered: bool) -> float:
    """8 for data in [0, 1] (the 1/256 bin width), 7 for centred data in [-1, 1] (scale 2)."""
    return 7.0 if centered else 8.0


def bits_per_dim(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    *,
    centered: bool = False,
    dequantize_data: bool = True,
    **kwargs,
) -> tuple[Array, Array, Array]:
    """bits/dim of 8-bit image data ``x`` in [0, 1] (B, H, W, C) as the reference computes it.

    x is dequantised (unless ``dequantize_data=False``: then x must already be dequantised),
    scaled to the model's range (2x - 1 if ``centered``), and
        bpd = -log p(x_model) / (D ln 2) + offset(centered).
    Returns ``(bpd, z, nfe)``; ``kwargs`` go to ``log_likelihood``.
    """
    kd, kl = jax.random.split(key)
    if dequantize_data:
        x = dequantize(kd, x)
    xm = 2.0 * x - 1.0 if centered else x
    logp, z, nfe = log_likelihood(kl, sde, score_fn, xm, **kwargs)
    D = math.prod(x.shape[1:])
    return -logp / (D * math.log(2.0)) + bpd_offset(centered), z, nfe


def encode(sde, score_fn, x: Array, *, eps: float = 1e-5, **kwargs) -> tuple[Array, Array]:
    """Deterministic encoding x -> z = x(T) by the probability-flow ODE; returns (z, nfe)."""
    vf = probability_flow_velocity(sde, score_fn)
    return solve_ode(vf, x, eps, sde.T, **kwargs)


def decode(sde, score_fn, z: Array, *, eps: float = 1e-5, **kwargs) -> tuple[Array, Array]:
    """Decoding z -> x(eps) by the same ODE run backwards (no final denoising step); (x, nfe)."""
    vf = probability_flow_velocity(sde, score_fn)
    return solve_ode(vf, z, sde.T, eps, **kwargs)
