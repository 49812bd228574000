"""EDM training (Karras et al. 2022) on the embedded 8 x 8 digits: the default digits network
(``default_digits``: DDPM++ nf 32, EMA 0.99) wrapped in EDM's preconditioning and trained with EDM's loss.

Objective (``score_jax.edm.get_edm_loss_fn``): ln sigma ~ N(p_mean, p_std^2), y = x0 + sigma n,
loss = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 |D(y; sigma) - x0|^2 with
D(y; sigma) = c_skip y + c_out F(c_in y; c_noise) (EDM Table 1). Sampling: the denoiser's score on
VESDE(sigma_min=0.002, sigma_max=80) (``edm.edm_score_fn``; EDM's sigma range) with EDM's Heun
sampler, 18 steps on the rho = 7 grid (35 NFE).

Keys new with the EDM objective (read at the trainer's config boundary):
  training.objective = "edm"
  training.precond   = "edm" | "vp" | "ve"     (edm.PRECONDS; "vp" / "ve" = Score SDE in EDM form)
  training.sigma_data = 0.5                    (EDMPrecond.sigma_data)
  training.p_mean = -1.2, training.p_std = 1.2 (edm_loss)
The sampling SDE is the usual ``training.sde`` with ``model.sigma_min`` / ``model.sigma_max``
(here "vesde", 0.002, 80 = ``EDMPrecond().sampling_sde()``). The network's ``scale_by_sigma`` must
be off (the preconditioning scales).
"""
from configs import default_digits
from configs.common import apply_variant
from score_jax import config as config_lib


def edm_recipe(config, *, precond="edm", sigma_data=0.5, p_mean=-1.2, p_std=1.2):
    """Set the EDM objective keys and EDM's sampling SDE / sampler on ``config`` (in place)."""
    t = config.training
    t.objective = "edm"
    t.precond = precond
    t.sigma_data = sigma_data
    t.p_mean = p_mean
    t.p_std = p_std
    t.sde = "vesde"
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80.0
    config.model.scale_by_sigma = False
    config_lib.set_sampler(config, "heun", num_steps=18, schedule="edm", rho=7.0)
    return config


def get_config(arg=None):
    """Digits + EDM with EDM's 18 Heun steps (35 NFE); ``arg="smoke"`` gives the CPU-seconds
    variant. (The digits default, ``default_digits``, is this recipe: the same 18 Heun steps.)"""
    config = default_digits.get_config(None)
    edm_recipe(config)
    return apply_variant(config, arg)
