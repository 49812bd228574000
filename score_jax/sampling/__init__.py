"""Sampling: one entry point for every sampler.

    samples, nfe = sampling.sample(key, sde, score_fn, shape, method="pc", **options)

``score_fn(x, t)`` returns the score for x of shape (B, ...) and t of shape (B,): a network wrapped
by ``score.get_score_fn``, an analytic score, any callable. The whole sampler runs inside one
``jax.jit`` (a ``lax.scan`` or a diffrax solve): no Python loop over steps, no host round trip.
A pytree ``score_fn`` (``ModelScoreFn``, ``jax.tree_util.Partial``, an equinox module) is traced, so
new weights do not recompile; a plain function is static (compiled once per function object).

Methods (``METHODS``: name -> sampler function) and their options (defaults in brackets; the
function's keyword-only signature is the list, ``method_options(method)`` returns it):
- ``"pc"``: predictor [reverse_diffusion] in PREDICTORS, corrector [langevin] in CORRECTORS,
  snr [0.16], n_steps [1], probability_flow [False], num_steps [sde.N], eps, denoise.
- ``"ode"``: probability-flow ODE; solver [tsit5] in ODE_SOLVERS, rtol / atol [1e-5], num_steps
  [None: adaptive], eps, denoise.
- ``"sde"``: reverse SDE through diffrax; solver [euler] in SDE_SOLVERS, num_steps [sde.N], eps,
  denoise.
- ``"ddim"``: num_steps (required), eta [0.0], schedule [logSNR] in SCHEDULES (continuous grids,
  or diffusers' "leading" / "trailing" / "linspace" on ``sde.DiscreteVPSDE``), eps, denoise.
- ``"euler"``: Euler on the probability-flow ODE in sigma (= DDIM with eta 0 on its grid;
  diffusers' EulerDiscreteScheduler with the spacings); num_steps (required), schedule, eps, denoise.
- ``"dpm_solver"``: multistep DPM-Solver++; num_steps (required), order [2] in 1..3, schedule
  [logSNR], lower_order_final [True], solver_type [midpoint], eps, denoise.
- ``"heun"``: EDM's Heun sampler; num_steps (required), schedule [edm], rho [7], s_churn [0],
  s_tmin, s_tmax, s_noise [1], eps, denoise.
- ``"learned_variance"``: ancestral DDPM with a learned variance (Improved DDPM; DiT's official
  sampler, ``sampling/ddpm.py``); num_steps [250] respaced DDPM steps, respacing [None],
  clip_denoised [False]. Needs ``score.LearnedVarianceScoreFn`` on a VPSDE.
- ``"consistency"``: multistep consistency sampling of a consistency model
  (``score_jax.distill``); num_steps [1], sigmas [None: EDM's rho grid], rho [7], eps,
  sigma_mid [None; the first intermediate level, e.g. ECT's 0.821].

Every sampler has the contract ``fn(key, sde, score_fn, x_init, **options) -> (x, nfe)`` and the
same meaning of the shared options:
- ``eps`` [None: ``sde.sampling_eps``]: the last time of the grid, in (0, T);
- ``denoise`` [True]: the last step is the Tweedie jump from eps to t = 0,
  x0_hat = (x + s_eps^2 score(x, eps)) / a_eps (``sampling/common.py``);
- ``num_steps``: grid steps, the jump included;
- ``project`` (inpainting / colorization, not a user option): called after every update with the
  time the state has reached;
- ``nfe``: the true number of score evaluations, a Python int from ``sample``.
Inpainting and colorization are ``guidance.inpaint`` / ``guidance.colorize`` (the guidance layer
sits above this package).

Multi-device: pass ``sharding=NamedSharding(mesh, P("data"))``; the batch is laid out over the mesh
and the result is identical to one device (the random draws do not depend on the layout).

How to add a sampler: write ``fn(key, sde, score_fn, x_init, *, <options with defaults>)`` in one
file of this package (the keyword-only signature is its option list; check numeric options with the
helpers of ``common.py`` and ``validate_options``' rules by name), and add ``"name": fn`` to
``METHODS``. ``sample``, ``method_options``, ``validate_options`` and the training config pick it up.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from score_jax.ode import ODE_SOLVERS, probability_flow_drift, probability_flow_velocity, solve_ode
from score_jax.runner import auto_sharding, run_sampler
from score_jax.sampling import options as opts
from score_jax.sampling.common import check_eps, tweedie_denoise
from score_jax.sampling.consistency import consistency_sample, parse_sigmas
from score_jax.sampling.ddpm import learned_variance_sample, space_timesteps
from score_jax.sampling.diffeq import SDE_SOLVERS, ode_sample, sde_sample
from score_jax.sampling.fast import (
    DPM_SOLVER_TYPES,
    LOWER_ORDER_COUNTS,
    SCHEDULES,
    ddim_sample,
    dpm_solver_sample,
    euler_sample,
    get_timesteps,
    heun_sample,
    inverse_log_snr,
)
from score_jax.sampling.pc import (
    CORRECTORS,
    PREDICTORS,
    AncestralSamplingPredictor,
    AnnealedLangevinDynamics,
    EulerMaruyamaPredictor,
    LangevinCorrector,
    NoneCorrector,
    NonePredictor,
    ReverseDiffusionPredictor,
    get_corrector,
    get_predictor,
    pc_sample,
)
from score_jax.sampling.simulate import SIMULATE_SOLVERS, langevin, simulate_sde
from score_jax.sampling.unipc import UNIPC_VARIANTS, unipc_sample

Array = jax.Array

METHODS: dict[str, Callable] = {
    "pc": pc_sample, "ode": ode_sample, "sde": sde_sample,
    "ddim": ddim_sample, "euler": euler_sample, "dpm_solver": dpm_solver_sample, "heun": heun_sample,
    "unipc": unipc_sample, "consistency": consistency_sample,
    "learned_variance": learned_variance_sample,
}
# Samplers that need the network's raw output, not only a score: ``score_fn.ddpm_output(x, t)
# -> (eps, v)`` of a learned-variance network (``score.LearnedVarianceScoreFn``). They take no
# ``eps`` / ``denoise`` (they run the discrete DDPM chain to its step 0).
MODEL_OUTPUT_METHODS = ("learned_variance",)
# Methods that moved to the guidance layer (it imports this package, not the other way round).
MOVED = {"inpaint": "score_jax.guidance.inpaint", "colorize": "score_jax.guidance.colorize"}


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()
"""``method_options`` value of an option without a default (e.g. ``num_steps`` of "ddim")."""

# Keyword-only parameters of a sampler that are hooks for other layers, not user options.
HOOKS = ("project",)


def _method(method: str) -> Callable:
    if method in MOVED:
        raise ValueError(f"sampling method {method!r} moved to the guidance layer: call "
                         f"{MOVED[method]}(...); valid sampling methods: {list(METHODS)}")
    if method not in METHODS:
        raise ValueError(f"Unknown sampling method {method!r}; valid choices: {list(METHODS)}")
    return METHODS[method]


def method_options(method: str) -> dict[str, Any]:
    """The options of ``method``: name -> default (``REQUIRED`` when it has none), read from the
    keyword-only signature of ``METHODS[method]`` (hooks such as ``project`` excluded).
    Raises ValueError for an unknown method."""
    sig = inspect.signature(_method(method))
    return {n: (REQUIRED if p.default is inspect.Parameter.empty else p.default)
            for n, p in sig.parameters.items()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and n not in HOOKS}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Name-valued options: name -> (label in the error, valid choices); None: depends on the method.
_CHOICES = {
    "predictor": ("predictor", PREDICTORS),
    "corrector": ("corrector", CORRECTORS),
    "schedule": ("time schedule", SCHEDULES),
    "solver_type": ("DPM-Solver solver_type", DPM_SOLVER_TYPES),
    "variant": ("UniPC variant", UNIPC_VARIANTS),
    "lower_order_count": ("lower_order_count", LOWER_ORDER_COUNTS),
}


def _check_option(method: str, name: str, v, sde, options: dict) -> None:
    """Range checks by option name (the rules of ``sampling/options.py``, which the samplers apply
    too), plus the name-valued options against their families."""
    if v is None:
        return
    if name == "num_steps":
        denoise = options.get("denoise", method_options(method).get("denoise", False))
        opts.check_num_steps(v, bool(denoise), method)
    elif name == "eps":
        check_eps(sde, v)
    elif name in _CHOICES:
        if isinstance(v, str):  # objects (a predictor instance) pass through
            label, valid = _CHOICES[name]
            opts.check_choice(label, v, valid)
    elif name == "solver" and method in ("ode", "sde"):
        opts.check_choice(f"{method.upper()} solver", v, ODE_SOLVERS if method == "ode" else SDE_SOLVERS)
    else:
        opts.check_range(name, v, method)


def _chain_finite(sde, N: int, discrete: bool, langevin: bool) -> bool:
    """The discrete chain of ``sde`` with N steps is usable: its step at t = T (the largest beta_i
    of VP: beta_max / N) is finite with G^2 < 1 for VP-like chains (``discrete``: the
    reverse-diffusion / ancestral predictors use it), and the Langevin step factor alpha there
    is positive (``langevin``)."""
    s = sde.replace(N=N)
    x = jnp.ones((1, 1), jnp.float32)
    t = jnp.full((1,), s.T, jnp.float32)
    ok = True
    if discrete:
        f, G = s.discretize(x, t)
        _, std = s.marginal_coeffs(t)
        ok &= bool(jnp.all(jnp.isfinite(f)) & jnp.all(jnp.isfinite(G)))
        ok &= bool(jnp.all((1.0 + f[0, 0]) > 0))  # VP: sqrt(1 - beta_i) > 0
    if langevin:
        ok &= bool(jnp.all(s.langevin_alpha(t) > 0))
    return ok


def _check_pc_chain(sde, options: dict) -> None:
    """PC with ``num_steps`` != sde.N re-discretises the SDE with N = num_steps; VP's DDPM chain
    has beta_i up to beta_max / N, so N <= beta_max gives sqrt(1 - beta_i) of a negative number
    (NaN samples). Refuse such N before compiling, naming the smallest valid one."""
    N = options.get("num_steps")
    if N is None or N == sde.N or not _is_int(N) or N < 1:
        return
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(sde)):
        return  # called while tracing (the SDE's parameters are not concrete): checked outside
    defaults = method_options("pc")
    predictor = options.get("predictor", defaults["predictor"])
    corrector = options.get("corrector", defaults["corrector"])
    check = functools.partial(_chain_finite, sde,
                              discrete=predictor in ("reverse_diffusion", "ancestral_sampling"),
                              langevin=corrector == "langevin")
    with jax.ensure_compile_time_eval():
        if check(N):
            return
        lo, hi = N, max(sde.N, N + 1)
        while not check(hi) and hi < 1 << 20:
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # smallest valid N by bisection (the chain is valid for all larger N)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if check(mid) else (mid, hi)
    raise ValueError(f"num_steps={N} is too few for PC on {type(sde).__name__}: its discrete "
                     f"chain with N = {N} steps is not a valid Markov chain (e.g. VP's beta_i "
                     f"reaches beta_max / N > 1); valid: num_steps >= {hi}, or a sampler without a "
                     f"discrete chain (ode, sde, ddim, dpm_solver, unipc, heun)")


def _check_respacing(sde, options: dict) -> None:
    """learned_variance: the kept steps (``space_timesteps(sde.N, respacing or num_steps)``) must
    exist and number at least 2 (step 0 borrows the posterior variance of step 1)."""
    spec = options.get("respacing")
    spec = options.get("num_steps", method_options("learned_variance")["num_steps"]) \
        if spec is None else spec
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ValueError(f"learned_variance: num_steps must be an int and respacing a string "
                         f"such as '250', '10,15,20' or 'ddim50'; got {spec!r}")
    try:
        kept = space_timesteps(sde.N, spec)
    except ValueError as e:
        raise ValueError(f"learned_variance: {e}") from None
    if len(kept) < 2:
        raise ValueError(f"learned_variance keeps {len(kept)} step(s) of the SDE's N={sde.N} for "
                         f"{spec!r}; valid: 2..{sde.N} steps")


def validate_options(method: str, sde, options: dict) -> None:
    """Check ``options`` for ``METHODS[method]`` before anything is traced or compiled.

    Raises ValueError naming the bad value and the valid choices / range: an unknown method, an
    option the sampler does not take (listing the valid ones), a required option missing, eps
    outside (0, T), tolerances <= 0, step counts below 1 (2 with ``denoise``), unknown
    predictor / corrector / solver / schedule names, negative eta / snr / churn.
    """
    valid = method_options(method)
    for name in options:
        if name not in valid:
            raise ValueError(f"Unknown option {name!r} for sampling method {method!r}; valid "
                             f"options: {sorted(valid)}")
    for name, default in valid.items():
        if default is REQUIRED and options.get(name) is None:
            raise ValueError(f"sampling method {method!r} needs option {name!r} (no default)")
    for name, v in options.items():
        _check_option(method, name, v, sde, options)
    if method == "pc" and sde is not None:
        _check_pc_chain(sde, options)
    if method == "consistency" and options.get("sigmas") is not None:
        parse_sigmas(options["sigmas"], options.get("num_steps", valid["num_steps"]))
    if method == "consistency" and options.get("sigma_mid") is not None and sde is not None:
        from score_jax.sampling.consistency import check_sigma_mid

        check_sigma_mid(sde, options["sigma_mid"], options.get("eps"))
    if method == "learned_variance" and sde is not None:
        _check_respacing(sde, options)
    if method == "ode" and options.get("num_steps") is None and options.get("solver") == "euler":
        raise ValueError("solver 'euler' has no error estimate: give num_steps for a fixed-step "
                         "solve, or an adaptive solver")


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
    **options,
) -> tuple[Array, int]:
    """Draw samples of ``shape`` (B, ...) by ``method`` (a name in ``METHODS``).

    ``options`` are the method's (``method_options``), validated by ``validate_options`` before
    compiling and static under jit; ``x_init`` replaces the prior draw (e.g. to decode latents);
    ``sharding`` lays the batch out over a mesh. The sampler runs in the one cached jit of
    ``runner.run_sampler``: a pytree ``score_fn`` with new weights of the same shapes is neither
    re-traced nor recompiled.

    Returns ``(samples, nfe)``, nfe the true number of score evaluations per batch (a Python int).
    Raises ValueError for an unknown method or option, an option out of range, or a ``score_fn``
    whose output shape / dtype does not match x.
    """
    fn = _method(method)
    validate_options(method, sde, options)
    return run_sampler(fn, key, sde, score_fn, shape, x_init=x_init, dtype=dtype,
                       sharding=sharding, options=options)


__all__ = [
    "sample", "unipc_sample", "METHODS", "MODEL_OUTPUT_METHODS", "method_options", "validate_options",
    "REQUIRED", "run_sampler",
    "auto_sharding", "tweedie_denoise", "probability_flow_drift", "DPM_SOLVER_TYPES", "MOVED",
    "PREDICTORS", "CORRECTORS", "ODE_SOLVERS", "SDE_SOLVERS",
    "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector",
    "get_predictor", "get_corrector", "pc_sample", "ode_sample", "sde_sample", "solve_ode",
    "probability_flow_velocity", "consistency_sample", "ddim_sample", "dpm_solver_sample",
    "heun_sample", "get_timesteps", "euler_sample", "learned_variance_sample", "space_timesteps",
    "inverse_log_snr", "SCHEDULES",
    "simulate_sde", "langevin", "SIMULATE_SOLVERS",
]
