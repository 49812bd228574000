"""Flow matching on the embedded 8 x 8 digits: the default digits network (``default_digits``,
DDPM++ nf 32, EMA 0.99) trained with the conditional-OT flow-matching loss instead of denoising
score matching.

Objective (``score_jax.flow.get_flow_loss_fn``): t ~ U(0, 1), eps ~ N(0, I),
x_t = t x1 + (1 - t) eps, loss = mean |v(x_t, 999 t) - (x1 - eps)|^2 (Lipman et al. 2023). The
network is the same DDPM++ as the digits default, fed the label 999 t, predicting the velocity.
Sampling integrates dx/dt = v from N(0, I) at t = 0 to t = 1 with Heun's method (25 steps, 50
NFE; ``flow.flow_sample``); bits/dim come from ``flow.flow_log_likelihood``.

Keys read by ``train_lib``: ``training.objective`` ("score" | "flow_matching"),
``training.flow_path`` ("condot" | "sde": the SDE's own Gaussian path), ``training.flow_t_max``
(upper end of U(0, t_max); 1.0), and ``sampling.method = "flow"`` with ``sampling.solver`` in
``flow.FLOW_SOLVERS`` (euler, heun, midpoint, tsit5, ...) and ``sampling.num_steps`` (None:
adaptive with ``sampling.rtol`` / ``atol``). ``training.sde`` is unused by the CondOT objective.
"""
from configs import default_digits
from configs.common import apply_variant
from score_jax import config as config_lib


def get_config(arg=None):
    """Digits + flow matching; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = default_digits.dsm_config()
    t = config.training
    t.objective = "flow_matching"
    t.flow_path = "condot"
    t.flow_t_max = 1.0
    config_lib.set_sampler(config, "flow", solver="heun", num_steps=25, rtol=1e-5, atol=1e-5)
    return apply_variant(config, arg)
