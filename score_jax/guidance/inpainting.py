"""Inpainting by replacement (Song et al. 2021, App. I.2; reference ``controllable_generation.py``).

Known coordinates (``mask == 1``) of the data are imposed on the sampler's state after every update:
at time t the known part is replaced by a fresh sample of the forward marginal,

    x_known <- a_t data_known + s_t z,       z ~ N(0, I),

while the unknown part keeps following the (unconditional) reverse process, which couples it to the
noisy known part through the score. At the end the known coordinates are set to the data exactly
and the unknown ones are the sampler's denoised mean. (The reference returns the *noisy* x in the
unknown region at the final step: its ``x_mean`` is built from ``x``; here the returned ``x_mean``
keeps the predictor's mean, see ``replace_known``.)

Replacement samples the exact conditional when the known and unknown coordinates are independent
(tested); with correlations it is approximate, because at high noise the unknown part only sees a
noisy known part. Measured on a 4-D correlated Gaussian (2 known coordinates, exact score, 10k
samples, VP): PC with 1000 steps + Langevin gets the conditional covariance within ~8 % but moves
the mean only part of the way (one coordinate: -0.03 against the exact conditional -0.29; its
marginal is 0.10); the fixed-step ODE and the fast samplers stay closer to the marginal. Exact
conditionals need resampling (RePaint) or a reconstruction-guidance term; neither is here.

The replacement acts in any orthonormal basis (``basis``: ``x -> x @ M``, back with ``M^T``):
the identity for inpainting, a grey/chroma basis for colorization (``colorization.py``).

Samplers (``sampler=``): every ``sampling.METHODS`` entry with a ``project`` hook (``SAMPLERS``):
``"pc"`` (the reference's), ``"ode"`` (the probability-flow ODE with ``num_steps`` fixed steps of
its diffrax ``solver``: an adaptive solve cannot be interrupted between steps), ``"ddim"``,
``"dpm_solver"``, ``"heun"``. The hook is called after every update with the time the state has
reached. Known data and mask are traced inputs of the one sampler runner (new images do not
recompile):

    x, nfe = guidance.inpaint(key, sde, score_fn, data, mask, sampler="pc", snr=0.16)
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from score_jax import sampling
from score_jax.runner import run_sampler
from score_jax.sde import batch_mul

Array = jax.Array

# The samplers that accept the replacement hook.
SAMPLERS = tuple(m for m, fn in sampling.METHODS.items()
                 if "project" in inspect.signature(fn).parameters)


def _to_basis(x: Array, M: Array | None) -> Array:
    return x if M is None else jnp.einsum("...i,ij->...j", x, M.astype(x.dtype))


def _from_basis(x: Array, M: Array | None) -> Array:
    return x if M is None else jnp.einsum("...j,ij->...i", x, M.astype(x.dtype))


def replace_known(key: Array, sde, x: Array, x_mean: Array, t: Array, known: Array, mask: Array,
                  basis: Array | None = None) -> tuple[Array, Array]:
    """Replace the known coordinates (in ``basis``) of the state at time t (shape (B,)):

        x      <- B^T [(1 - m) B x      + m (a_t k + s_t z)]
        x_mean <- B^T [(1 - m) B x_mean + m  a_t k]

    with k = ``known`` (data already in the basis) and m = ``mask`` (1 = known, broadcastable).
    """
    mean, std = sde.marginal_prob(known, t)
    z = jax.random.normal(key, x.shape, x.dtype)
    noisy = mean + batch_mul(std, z)
    xb, xmb = _to_basis(x, basis), _to_basis(x_mean, basis)
    x = _from_basis(xb * (1.0 - mask) + noisy * mask, basis)
    x_mean = _from_basis(xmb * (1.0 - mask) + mean * mask, basis)
    return x, x_mean


def impose_known(x: Array, known: Array, mask: Array, basis: Array | None = None) -> Array:
    """The final output: known coordinates exactly, the sample's own elsewhere."""
    return _from_basis(_to_basis(x, basis) * (1.0 - mask) + known * mask, basis)


def _check_inputs(x_init: Array, known: Array, mask: Array, what: str):
    if known.shape != x_init.shape:
        raise ValueError(f"{what} must have the sample shape {x_init.shape}; got {known.shape}")
    try:
        jnp.broadcast_shapes(mask.shape, x_init.shape)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to the sample shape "
                         f"{x_init.shape}") from None


def check_sampler(sde, sampler: str, options: dict) -> None:
    """ValueError for a sampler without the replacement hook, or options it does not take / out of
    range (``sampling.validate_options``)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r} for controllable generation; valid choices: "
                         f"{list(SAMPLERS)}")
    sampling.validate_options(sampler, sde, options)


def run_with_replacement(key: Array, sde, score_fn: Callable, x_init: Array, known: Array,
                         mask: Array, *, basis: Array | None = None, sampler: str = "pc",
                         **options) -> tuple[Array, Any]:
    """Run ``sampling.METHODS[sampler]`` with known-part replacement after every update; returns
    ``(x, nfe)`` with the known coordinates exact and the unknown ones the sampler's denoised
    output. ``options`` are the sampler's (``sampling.method_options(sampler)``)."""
    check_sampler(sde, sampler, options)
    mask = jnp.asarray(mask, x_init.dtype)
    known = jnp.asarray(known, x_init.dtype) * mask
    project = functools.partial(_project, sde=sde, known=known, mask=mask, basis=basis)
    k_init, k_run = jax.random.split(key)
    # The prior draw's known part is already a sample of p_0T(known data).
    t_T = jnp.full((x_init.shape[0],), sde.T, jnp.promote_types(x_init.dtype, jnp.float32))
    dtype = x_init.dtype  # the state's (float32 times may promote the replaced values)
    x_init = replace_known(k_init, sde, x_init, x_init, t_T, known, mask, basis)[0].astype(dtype)
    x, nfe = sampling.METHODS[sampler](k_run, sde, score_fn, x_init, project=project, **options)
    return impose_known(x, known, mask, basis).astype(dtype), nfe


def _project(key, x, x_mean, t, i, *, sde, known, mask, basis):
    return replace_known(key, sde, x, x_mean, t, known, mask, basis)


def inpaint_method(key: Array, sde, score_fn: Callable, x_init: Array, *, inputs: dict,
                   sampler: str = "pc", **options) -> tuple[Array, Any]:
    """The inpainting sampler (contract of ``runner.run_sampler``): ``inputs = {"data": (B, ...),
    "mask": broadcastable to (B, ...), 1 = known}``; see ``run_with_replacement``."""
    data, mask = jnp.asarray(inputs["data"]), jnp.asarray(inputs["mask"])
    return run_with_replacement(key, sde, score_fn, x_init, data, mask, sampler=sampler, **options)


def inpaint(key: Array, sde, score_fn: Callable, data: Array, mask: Array, *, sampler: str = "pc",
            sharding=None, **options) -> tuple[Array, int]:
    """Inpaint ``data`` (B, ...) where ``mask`` (broadcastable to data, 1 = known) is 0.

    ``sampler`` in ``SAMPLERS`` with its options (``sampling.method_options``), validated before
    compiling; the sampler runs in ``runner.run_sampler`` with data and mask traced. Returns
    ``(x, nfe)``: x's known part equals data exactly; nfe a Python int.
    Raises ValueError for a sampler without the hook, a bad option, or a mask that does not
    broadcast to data.
    """
    data, mask = jnp.asarray(data), jnp.asarray(mask)
    _check_inputs(data, data, mask, "data")
    check_sampler(sde, sampler, options)
    return run_sampler(inpaint_method, key, sde, score_fn, data.shape, dtype=data.dtype,
                       sharding=sharding, inputs={"data": data, "mask": mask},
                       options=dict(options, sampler=sampler))
