"""Exact likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2).

Along dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 (the instantaneous change of variables of
Chen et al. 2018),

    log p_0(x(eps)) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt.

The divergence is integrated alongside x by diffrax, either exactly (D Jacobian-vector products per
evaluation: small D only) or by the Hutchinson-Skilling estimator div F = E_v[v^T (dF/dx) v] with one
Rademacher or Gaussian probe v per solve (one JVP per evaluation). Everything runs inside one jit.

bits/dim (reference ``likelihood.py`` / ``run_lib.evaluate``): for 8-bit data dequantised as
x = (k + u) / 256, u ~ U[0, 1), bpd = -log p(x) / (D ln 2) + offset, offset = 8 for data in [0, 1]
and 7 when the model sees centred data 2x - 1 (the Jacobian of the affine maps). This module is the
one home of dequantisation and bits/dim: the formula (``bpd_from_logp`` / ``bits_per_dim_from_logp``),
``dequantize`` / ``uniform_dequantize``, and the dataset loop ``bpd_rounds`` that sample.py
``--mode=bpd`` and evaluate.py both run (``evaluation.metrics`` re-exports these names).

Input convention for ``dequantize`` / ``bits_per_dim``: 8-bit images either as uint8 levels
k in {0, ..., 255} or as floats k / 255 in [0, 1]. uint8 is converted; floats outside [0, 1]
(e.g. [0, 255], or data already centred to [-1, 1]) are refused with the range found.

``DEFAULT_EPS`` (1e-5, the reference's likelihood eps) is where the likelihood ODE starts: the one
definition used by every caller.

Layer: imports ``score_jax.ode`` (never the sampler package).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.ode import check_solve_options, probability_flow_drift, solve_ode

Array = jax.Array

HUTCHINSON = ("rademacher", "gaussian", "exact")
DEFAULT_EPS = 1e-5
"""Start time of the likelihood ODE (score_sde ``likelihood.py``: eps=1e-5)."""


def check_options(sde, eps: float, hutchinson: str, solver: str, rtol: float, atol: float,
                  num_steps: int | None) -> None:
    """ValueError naming the bad value and the valid range: eps in (0, T), hutchinson in
    ``HUTCHINSON``, solver in ``ode.ODE_SOLVERS``, rtol / atol > 0, num_steps None or >= 1."""
    T = float(sde.T)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and 0.0 < eps < T):
        raise ValueError(f"likelihood eps must be a number in (0, T={T}); got eps={eps!r}")
    if hutchinson not in HUTCHINSON:
        raise ValueError(f"Unknown hutchinson estimator {hutchinson!r}; valid choices: "
                         f"{list(HUTCHINSON)}")
    check_solve_options(solver, rtol, atol, num_steps)


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
            dy, div = hutchinson_divergence(fn, y, v.astype(y.dtype))
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
    eps: float = DEFAULT_EPS,
    solver: str = "tsit5",
    num_steps: int | None = None,
) -> tuple[Array, Array, Array]:
    """log p_eps(x) in nats per example through the probability-flow ODE of ``sde``.

    x (B, ...) in the model's data space. Returns ``(logp, z, nfe)``: logp (B,), z = x(T) the latent
    (the encoding of x), nfe the number of probability-flow evaluations (int32 array). Jit-able; the
    ODE is solved for the whole batch at once. Raises ValueError for options out of range
    (``check_options``).
    """
    check_options(sde, eps, hutchinson, solver, rtol, atol, num_steps)
    vf = probability_flow_drift(sde, score_fn)
    return ode_log_likelihood(key, vf, x, eps, sde.T, sde.prior_logp, hutchinson=hutchinson,
                              solver=solver, rtol=rtol, atol=atol, num_steps=num_steps)


def check_8bit(x: Array) -> Array:
    """8-bit images in the documented convention as floats k / 255 in [0, 1].

    uint8 levels are divided by 255; a float array outside [0, 1] raises ValueError with the range
    found (checked when x is concrete; traced values pass unchecked). Other integer dtypes and
    non-numeric arrays are refused.
    """
    x = jnp.asarray(x) if not isinstance(x, jax.core.Tracer) else x
    if x.dtype == jnp.uint8:
        return x.astype(jnp.result_type(float)) / 255.0  # jax's default float dtype
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"8-bit images must be uint8 levels in [0, 255] or floats in [0, 1]; got "
                         f"dtype {x.dtype}")
    if not isinstance(x, jax.core.Tracer) and x.size:
        lo, hi = float(np.min(np.asarray(x))), float(np.max(np.asarray(x)))
        if lo < 0.0 or hi > 1.0 or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"8-bit images as floats must lie in [0, 1] (uint8 levels are "
                             f"converted); got values in [{lo}, {hi}] (centred [-1, 1] data: pass "
                             f"(x + 1) / 2 and centered=True to bits_per_dim)")
    return x


def dequantize(key: Array, x: Array) -> Array:
    """Uniform dequantisation of 8-bit data: y = (k + u) / 256, u ~ U[0, 1), k the level.

    x: uint8 levels (B, ...) in [0, 255], or floats k / 255 in [0, 1] (``check_8bit``); float
    levels are rounded to the nearest integer k (so k / 255 in float32 gives k exactly). Returns
    floats in [0, 1) (jax's default float dtype for uint8 input, else x's dtype).
    """
    x = check_8bit(x)
    return (jnp.round(x * 255.0) + jax.random.uniform(key, x.shape, x.dtype)) / 256.0


def uniform_dequantize(key: Array, x: Array, *, centered: bool = False) -> Array:
    """`dequantize`, then the model's range: ``2 y - 1`` in [-1, 1) when ``centered`` (use
    ``bpd_offset(centered)``: 7) else y in [0, 1) (offset 8)."""
    return to_model_space(dequantize(key, x), centered)


def bpd_offset(centered: bool) -> float:
    """8 for data in [0, 1] (the 1/256 bin width), 7 for centred data in [-1, 1] (scale 2)."""
    return 7.0 if centered else 8.0


def _bpd(logp, num_dims: int, offset: float):
    """The one bits/dim formula: -log p / (D ln 2) + offset (jax or numpy arrays alike)."""
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive; got {num_dims}")
    return -logp / (num_dims * math.log(2.0)) + offset


def bpd_from_logp(logp: Array, num_dims: int, centered: bool = False) -> Array:
    """bits/dim of 8-bit data from the log-density (nats) of its dequantised, model-space version:

        bpd = -log p / (D ln 2) + offset(centered)

    (score_sde ``likelihood.py``; offset 8 for [0, 1] data, 7 for centred [-1, 1] data)."""
    return _bpd(logp, num_dims, bpd_offset(centered))


def bits_per_dim_from_logp(logp_nats: Any, num_dims: int, offset: float = 8.0) -> np.ndarray:
    """Bits per dimension of 8-bit data from a continuous log-density of dequantised data, in
    float64 numpy:

        bpd = -log p(y) / (D ln 2) + offset.

    For data scaled to [0, 1] and uniformly dequantised as y = (x + u) / 256, u ~ U[0, 1)^D
    (x in {0..255}), the discrete probability is P(x) = int p(y) dy over a cube of side 1/256,
    whose Monte-Carlo estimate is p(y) 256^-D, so -log2 P(x) / D = -log p(y) / (D ln 2) + 8:
    ``offset=8``. For centred data z = 2y - 1 in [-1, 1], log p(y) = log p(z) + D ln 2, so
    ``offset=7`` (score_sde ``likelihood.py``). ``offset=0`` gives plain continuous bits/dim.

    Args:
      logp_nats: log-densities in nats, any shape (one per example).
      num_dims: D, the number of dimensions of one example (e.g. 32 * 32 * 3).
      offset: see above.

    Returns:
      Bits/dim with the shape of ``logp_nats`` (float64).
    """
    return _bpd(np.asarray(logp_nats, np.float64), num_dims, offset)


def to_model_space(x: Array, centered: bool) -> Array:
    """Data in [0, 1] as the model sees it: 2x - 1 when ``centered``, else x."""
    return 2.0 * x - 1.0 if centered else x


def bits_per_dim(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    *,
    centered: bool = False,
    dequantize_data: bool = True,
    hutchinson: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = DEFAULT_EPS,
    solver: str = "tsit5",
    num_steps: int | None = None,
) -> tuple[Array, Array, Array]:
    """bits/dim of 8-bit images ``x`` (B, H, W, C), as the reference computes it.

    x: uint8 levels in [0, 255] or floats k / 255 in [0, 1] (module docstring); with
    ``dequantize_data=False`` floats in [0, 1] already dequantised. x is dequantised, mapped to the
    model's range (2x - 1 if ``centered``), and bpd = -log p_eps(x_model) / (D ln 2) + offset
    (``bpd_from_logp``), log p_eps by ``log_likelihood`` from t = ``eps`` (default
    ``DEFAULT_EPS``) with the other options. Returns ``(bpd (B,), z, nfe)``.
    Raises ValueError for data outside the convention or options out of range.
    """
    check_options(sde, eps, hutchinson, solver, rtol, atol, num_steps)
    kd, kl = jax.random.split(key)
    x = dequantize(kd, x) if dequantize_data else check_8bit(x)
    logp, z, nfe = log_likelihood(kl, sde, score_fn, to_model_space(x, centered),
                                  hutchinson=hutchinson, rtol=rtol, atol=atol, eps=eps,
                                  solver=solver, num_steps=num_steps)
    return bpd_from_logp(logp, math.prod(x.shape[1:]), centered), z, nfe


def encode(sde, score_fn, x: Array, *, eps: float = DEFAULT_EPS,
           **kwargs) -> tuple[Array, Array]:
    """Deterministic encoding x -> z = x(T) by the probability-flow ODE from t = eps; returns
    (z, nfe). ``kwargs``: solver, rtol, atol, num_steps of ``ode.solve_ode``."""
    vf = probability_flow_drift(sde, score_fn)
    return solve_ode(vf, x, eps, sde.T, **kwargs)


def decode(sde, score_fn, z: Array, *, eps: float = DEFAULT_EPS,
           **kwargs) -> tuple[Array, Array]:
    """Decoding z -> x(eps) by the same ODE run backwards (no final denoising step); (x, nfe)."""
    vf = probability_flow_drift(sde, score_fn)
    return solve_ode(vf, z, sde.T, eps, **kwargs)


# ----------------------------------------------------------------------------------------------
# bits/dim of a dataset (sample.py --mode=bpd and evaluate.py both go through bpd_rounds)
# ----------------------------------------------------------------------------------------------
def bpd_rounds(logp_fn: Any, batches: Iterable[Any], key: Array, *, num_repeats: int,
               centered: bool, done: Any = None) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yields ``(round_id, bits/dim (B,) float64 of the batch)`` for round = repeat x batch, in
    order (round_id = repeat * num_batches + batch); ``None`` instead of the values for rounds
    where ``done(round_id)`` is true (``logp_fn`` is then not called: resumed rounds).

    Repeat r, batch b use key ``fold_in(fold_in(key, r), b)``, split into the dequantisation key
    (`uniform_dequantize`) and ``logp_fn``'s key; ``logp_fn(key, y) -> (B,)`` log-densities in
    nats of y in the model's range. ValueError for ``num_repeats < 1``, no batch, or a logp of
    the wrong shape.
    """
    if num_repeats < 1:
        raise ValueError(f"num_repeats must be positive, got {num_repeats}")
    offset = bpd_offset(centered)
    rid = 0
    for r in range(num_repeats):
        key_r = jax.random.fold_in(key, r)
        for b, batch in enumerate(batches):
            if done is not None and done(rid):
                yield rid, None
                rid += 1
                continue
            x = jnp.asarray(batch)
            k_deq, k_fn = jax.random.split(jax.random.fold_in(key_r, b))
            y = uniform_dequantize(k_deq, x, centered=centered)
            logp = np.asarray(logp_fn(k_fn, y))
            if logp.shape != (x.shape[0],):
                raise ValueError(f"logp_fn must return shape ({x.shape[0]},), got {logp.shape}")
            yield rid, bits_per_dim_from_logp(logp, int(np.prod(x.shape[1:])), offset)
            rid += 1
    if rid == 0:
        raise ValueError("batches is empty")


def dataset_bits_per_dim(logp_fn: Any, batches: Iterable[Any], key: Array, *,
                         num_repeats: int = 5, centered: bool = False) -> dict[str, Any]:
    """Bits/dim of a dataset averaged over ``num_repeats`` dequantisation draws (score_sde: 5).

    For every repeat and batch (8-bit data, uint8 or ``level / 255`` floats) a fresh dequantised
    copy ``y`` is drawn (`uniform_dequantize`), ``logp_fn(key, y)`` returns the per-example
    log-density in nats (e.g. the probability-flow likelihood), and the bits/dim of every
    example are kept; the mean over all (repeat, example) pairs is the reported value
    (`bpd_rounds`; ``score_jax.evaluation.run.evaluate_bpd`` is the resumable version and
    ``sample_lib.bpd_from_checkpoint`` the one of sample.py: same keys, same numbers).

    Args:
      logp_fn: ``(key, y) -> (batch,)`` log-densities in nats of y in [0, 1) (or [-1, 1) when
        ``centered``).
      batches: an iterable over batches, re-iterated once per repeat (a list or a
        re-iterable dataset).
      key: PRNG key; repeat r, batch b use ``fold_in(fold_in(key, r), b)``.
      num_repeats: number of dequantisation draws per example.
      centered: data scaled to [-1, 1] (offset 7) instead of [0, 1] (offset 8).

    Returns:
      ``{"bpd": mean bits/dim, "bpd_per_example": (num_repeats * N,) array}``.
    """
    per_example = np.concatenate([v for _, v in bpd_rounds(
        logp_fn, batches, key, num_repeats=num_repeats, centered=centered)])
    return {"bpd": float(per_example.mean()), "bpd_per_example": per_example}
