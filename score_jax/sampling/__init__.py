"""Sampling: one entry point for every sampler.

    samples, nfe = sampling.sample(key, sde, score_fn, shape, method="pc", **options)

``score_fn(x, t)`` returns the score for x of shape (B, ...) and t of shape (B,): a network wrapped
by ``score.get_score_fn``, an analytic score, any callable. The whole sampler runs inside one
``jax.jit`` (a ``lax.scan`` or a diffrax solve): no Python loop over steps, no host round trip.
A pytree ``score_fn`` (``ModelScoreFn``, ``jax.tree_util.Partial``, an equinox module) is traced, so
new weights do not recompile; a plain function is static (compiled once per function object).

Methods and their options (defaults in brackets):
- ``"pc"``: predictor [reverse_diffusion] in PREDICTORS, corrector [langevin] in CORRECTORS,
  snr [0.16], n_steps [1], num_steps [sde.N], eps [sde.sampling_eps], denoise [True],
  probability_flow [False].
- ``"ode"``: probability-flow ODE; solver [tsit5] in ODE_SOLVERS, rtol/atol [1e-5], num_steps
  [None: adaptive], eps, denoise [True].
- ``"sde"``: reverse SDE through diffrax; solver [euler] in SDE_SOLVERS, num_steps [sde.N], eps,
  denoise [True].
- ``"ddim"``: DDIM; num_steps (required), eta [0.0], schedule [time_uniform] in SCHEDULES, eps,
  denoise [True]. NFE = num_steps.
- ``"dpm_solver"``: multistep DPM-Solver++; num_steps (required), order [2] in 1..3, schedule
  [logSNR], lower_order_final [True], solver_type [midpoint], eps, denoise [True]. NFE = num_steps.
- ``"heun"``: EDM's Heun sampler; num_steps (required), schedule [edm], rho [7], s_churn [0],
  s_tmin, s_tmax, s_noise [1], eps, denoise [True]. NFE = 2 num_steps - 1 (2 num_steps without
  denoise).
  (see ``sampling/fast.py``)
- ``"inpaint"``: inputs={"data", "mask" (1 = known)}; ``"colorize"``: inputs={"gray"}; option
  sampler [pc] in (pc, ode, ddim, dpm_solver, heun) plus that sampler's options (see
  ``guidance/inpainting.py``, ``guidance/colorization.py``).
Further methods register in ``METHODS`` (name -> function(key, sde, score_fn, x_init, **options)).

Multi-device: pass ``sharding=NamedSharding(mesh, P("data"))``; the batch is laid out over the mesh
and the result is identical to one device (the random draws do not depend on the layout).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from score_jax.guidance.colorization import colorize_method
from score_jax.guidance.inpainting import inpaint_method
from score_jax.sampling.diffeq import (
    ODE_SOLVERS,
    SDE_SOLVERS,
    ode_sample,
    probability_flow_velocity,
    sde_sample,
    solve_ode,
)
from score_jax.sampling.fast import (
    SCHEDULES,
    ddim_sample,
    dpm_solver_sample,
    get_timesteps,
    heun_sample,
    inverse_log_snr,
)
from score_jax.sampling.pc import (
    CORRECTORS,
    PREDICTORS,
    AnnealedLangevinDynamics,
    AncestralSamplingPredictor,
    EulerMaruyamaPredictor,
    LangevinCorrector,
    NoneCorrector,
    NonePredictor,
    ReverseDiffusionPredictor,
    get_corrector,
    get_predictor,
    pc_sample,
)

Array = jax.Array


def _pc_method(key, sde, score_fn, x_init, *, predictor="reverse_diffusion", corrector="langevin",
               snr=0.16, n_steps=1, num_steps=None, eps=None, denoise=True, probability_flow=False,
               project=None):
    pred = get_predictor(predictor, probability_flow)
    corr = get_corrector(corrector, snr, n_steps)
    eps = sde.sampling_eps if eps is None else eps
    return pc_sample(key, sde, score_fn, x_init, predictor=pred, corrector=corr, eps=eps,
                     denoise=denoise, num_steps=num_steps, project=project)


def _ode_method(key, sde, score_fn, x_init, *, solver="tsit5", rtol=1e-5, atol=1e-5, num_steps=None,
                eps=None, denoise=True):
    eps = sde.sampling_eps if eps is None else eps
    return ode_sample(sde, score_fn, x_init, eps=eps, solver=solver, rtol=rtol, atol=atol,
                      num_steps=num_steps, denoise=denoise)


def _sde_method(key, sde, score_fn, x_init, *, solver="euler", num_steps=None, eps=None, denoise=True):
    eps = sde.sampling_eps if eps is None else eps
    num_steps = sde.N if num_steps is None else num_steps
    return sde_sample(key, sde, score_fn, x_init, eps=eps, num_steps=num_steps, solver=solver,
                      denoise=denoise)


METHODS: dict[str, Callable] = {
    "pc": _pc_method, "ode": _ode_method, "sde": _sde_method,
    "ddim": ddim_sample, "dpm_solver": dpm_solver_sample, "heun": heun_sample,
    "inpaint": inpaint_method, "colorize": colorize_method,
}

_CACHE: dict[Any, Callable] = {}


def _as_pytree_fn(fn: Callable) -> Any:
    """Plain functions become static ``Partial`` wrappers; pytrees are passed through (traced)."""
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    if len(leaves) == 1 and leaves[0] is fn:  # not a pytree node: a plain callable
        return jax.tree_util.Partial(fn)
    return fn


def auto_sharding(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding | None:
    """The same layout on a mesh with Auto axes.

    ``jax.make_mesh`` defaults to Explicit axes, under which every op must be sharding-annotated
    (diffrax's norms are not); samplers only need the batch laid out over devices and let the
    compiler propagate the rest, so Explicit meshes are converted to Auto ones.
    """
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return sharding
    mesh = sharding.mesh
    if all(a == jax.sharding.AxisType.Auto for a in mesh.axis_types):
        return sharding
    auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    return jax.sharding.NamedSharding(auto, sharding.spec)


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _check_score_shape(score_fn, sde, shape, dtype):
    x = jax.ShapeDtypeStruct(shape, dtype)
    t = jax.ShapeDtypeStruct(shape[:1], dtype)
    out = jax.eval_shape(score_fn, x, t)
    if not hasattr(out, "shape") or out.shape != tuple(shape):
        raise ValueError(
            f"score_fn(x, t) must return an array of x's shape {tuple(shape)}; got "
            f"{getattr(out, 'shape', type(out))} for x {tuple(shape)} and t {shape[:1]}"
        )
    if out.dtype != dtype:
        raise ValueError(f"score_fn returned dtype {out.dtype} for x of dtype {jnp.dtype(dtype)}")


def sample(
    key: Array,
    sde,
    score_fn: Callable[[Array, Array], Array],
    shape: tuple[int, ...],
    method: str = "pc",
    *,
    x_init: Array | None = None,
    dtype=jnp.float32,
    sharding: jax.sharding.Sharding | None = None,
    inputs: Any = None,
    **options,
) -> tuple[Array, Array]:
    """Draw samples by ``method``; returns ``(samples, nfe)``, nfe the true number of score
    evaluations (per sample batch). ``x_init`` replaces the prior draw (e.g. to decode latents).
    ``options`` are static (hashable) method options; ``inputs`` is a pytree of arrays passed traced
    to the method as ``inputs=`` (e.g. known pixels and mask for inpainting).

    Raises ValueError for an unknown method / predictor / corrector / solver, or a ``score_fn`` whose
    output shape or dtype does not match ``x``.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown sampling method {method!r}; valid choices: {list(METHODS)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (batch, ...) with at least 2 dims; got {shape}")
    dtype = jnp.dtype(dtype)
    score_fn = _as_pytree_fn(score_fn)
    sharding = auto_sharding(sharding)
    _check_score_shape(score_fn, sde, shape, dtype)
    cache_key = (method, shape, dtype, sharding, x_init is None, inputs is None, _freeze(options))
    fn = _CACHE.get(cache_key)
    if fn is None:
        impl = METHODS[method]
        opts = dict(options)

        def run(key, sde, score_fn, x_init, inputs):
            k_prior, k_run = jax.random.split(key)
            if x_init is None:
                x_init = sde.prior_sampling(k_prior, shape, dtype)
            if sharding is not None:
                x_init = jax.lax.with_sharding_constraint(x_init, sharding)
            kw = {} if inputs is None else {"inputs": inputs}
            x, nfe = impl(k_run, sde, score_fn, x_init, **kw, **opts)
            return x, jnp.asarray(nfe, jnp.int32)

        out_shardings = None if sharding is None else (sharding, None)
        fn = jax.jit(run, out_shardings=out_shardings)
        _CACHE[cache_key] = fn
    return fn(key, sde, score_fn, x_init, inputs)


__all__ = [
    "sample", "METHODS", "PREDICTORS", "CORRECTORS", "ODE_SOLVERS", "SDE_SOLVERS",
    "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector",
    "get_predictor", "get_corrector", "pc_sample", "ode_sample", "sde_sample", "solve_ode",
    "probability_flow_velocity", "ddim_sample", "dpm_solver_sample", "heun_sample", "get_timesteps",
    "inverse_log_snr", "SCHEDULES",
]
