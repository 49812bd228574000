"""score_jax: score-based diffusion and flow generative models in JAX/Flax.

Public API (see README.md):
- ``score_jax.sde``: VPSDE, subVPSDE, VESDE, ReverseSDE, get_sde
- ``score_jax.score``: prediction-head conversions and network -> score wiring (get_score_fn)
- ``score_jax.losses``: dsm_loss, smld_loss, ddpm_loss, get_loss_fn
- ``score_jax.sampling``: sample(key, sde, score_fn, shape, method=...)
- ``score_jax.likelihood``: log_likelihood, bits_per_dim, encode, decode
"""
from score_jax import likelihood, losses, sampling, score, sde, toy
from score_jax.sde import SDES, ReverseSDE, VESDE, VPSDE, get_sde, subVPSDE

__version__ = "0.1.0"

__all__ = [
    "sde", "score", "losses", "sampling", "likelihood", "toy",
    "VPSDE", "subVPSDE", "VESDE", "ReverseSDE", "SDES", "get_sde",
]
