"""score_jax: score-based diffusion and flow generative models in JAX/Flax.

Public API (see README.md):
- ``score_jax.sde``: VPSDE, subVPSDE, VESDE, ReverseSDE, get_sde
- ``score_jax.score``: prediction-head conversions and network -> score wiring (get_score_fn)
- ``score_jax.losses``: dsm_loss, smld_loss, ddpm_loss, get_loss_fn
- ``score_jax.ode``: probability-flow drift, diffrax ODE solve with NFE counting
- ``score_jax.runner``: run_sampler, the one jitted sampler runner
- ``score_jax.sampling``: sample(key, sde, score_fn, shape, method=...), METHODS, method_options
- ``score_jax.likelihood``: log_likelihood, bits_per_dim, dequantize, encode, decode, DEFAULT_EPS

This file only re-exports; the modules import one another in one direction
(sde -> score -> ode -> runner -> sampling -> likelihood / flow -> guidance).
"""
from score_jax import likelihood, losses, ode, runner, sampling, score, sde, toy
from score_jax.sde import SDES, VESDE, VPSDE, ReverseSDE, get_sde, subVPSDE

__version__ = "0.1.0"

__all__ = [
    "sde", "score", "losses", "ode", "runner", "sampling", "likelihood", "toy",
    "VPSDE", "subVPSDE", "VESDE", "ReverseSDE", "SDES", "get_sde",
]
