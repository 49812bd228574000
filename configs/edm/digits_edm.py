"""EDM training (Karras et al. 2022) on the embedded 8 x 8 digits: the digits default
(``configs/default_digits.py``, which IS this recipe: DDPM++ nf 32, EMA 0.99, EDM's
preconditioning and loss, EDM's Heun sampler with 18 steps on the rho = 7 grid, 35 NFE). This
file keeps the name ``configs/edm/digits_edm.py`` working; it adds nothing.

Objective (``score_jax.edm.get_edm_loss_fn``): ln sigma ~ N(p_mean, p_std^2), y = x0 + sigma n,
loss = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 |D(y; sigma) - x0|^2 with
D(y; sigma) = c_skip y + c_out F(c_in y; c_noise) (EDM Table 1). Sampling: the denoiser's score on
VESDE(sigma_min=0.002, sigma_max=80) (``edm.edm_score_fn``; EDM's sigma range).

Keys of the EDM objective (read at the config boundary, ``configs/models.edm_recipe`` sets them):
  training.objective = "edm"
  training.precond   = "edm" | "vp" | "ve"     (edm.PRECONDS; "vp" / "ve" = Score SDE in EDM form)
  training.sigma_data = 0.5                    (EDMPrecond.sigma_data)
  training.p_mean = -1.2, training.p_std = 1.2 (edm_loss)
The sampling SDE is the usual ``training.sde`` with ``model.sigma_min`` / ``model.sigma_max``.
The network's ``scale_by_sigma`` must be off (the preconditioning scales).
"""
from configs.default_digits import get_config
from configs.models import edm_recipe  # the recipe's old home: ``digits_edm.edm_recipe``

__all__ = ["get_config", "edm_recipe"]
