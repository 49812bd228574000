"""Flow matching on Gaussian probability paths (Lipman et al. 2023; Liu et al. 2023; MIT 6.S184).

Flow convention (opposite to the SDE modules): time t runs from noise (t = 0) to data (t = 1), and a
Gaussian path interpolates data x1 and noise eps ~ N(0, I),

    x_t = alpha_t x1 + sigma_t eps,      u_t(x_t | x1, eps) = alpha'_t x1 + sigma'_t eps.

Paths (``marginal_coeffs(t) -> (alpha_t, sigma_t)``, the interface of the SDEs, so that
``score.convert`` turns velocities into scores, eps or x1 on any of them; all are
``GaussianPath``s with conditional velocity / score and score <-> velocity methods):
- ``GaussianPath(alpha, beta)``: any path from two callables of t (MIT 6.S184 notation
  alpha_t = data coefficient, beta_t = noise coefficient; e.g. beta_t = sqrt(1 - t));
- ``CondOTPath``: alpha_t = t, sigma_t = 1 - (1 - sigma_min) t (conditional optimal transport;
  sigma_min = 0 gives the rectified-flow line x_t = t x1 + (1 - t) eps with target u = x1 - eps);
- ``SDEPath(sde)``: the Gaussian path of a VP / sub-VP / VE SDE run backwards,
  (alpha_t, sigma_t) = sde.marginal_coeffs(T + t (eps - T)); its flow-matching velocity is
  -(T - eps) times the SDE's probability-flow drift (Song et al. 2021 eq. 13).

The flow-matching loss (Lipman et al. eq. 9 / 23) regresses a network v(x, t) on the conditional
velocity; its minimiser is the marginal velocity u(x, t) = E[alpha'_t x1 + sigma'_t eps | x_t = x].
On a Gaussian path, u is an affine function of x and the score (``score.py``):

    x1_hat = (sigma'_t x - sigma_t u) / (alpha_t sigma'_t - sigma_t alpha'_t),
    eps_hat = (alpha_t u - alpha'_t x) / (alpha_t sigma'_t - sigma_t alpha'_t),
    score  = -eps_hat / sigma_t.

Samples are drawn by integrating dx/dt = v(x, t) from the prior at t = 0 to t = 1 (``flow_sample``:
Euler, Heun, or adaptive diffrax solvers; or the SDE extension dX = [v + sigma_t^2 / 2 score] dt +
sigma_t dW with Euler-Maruyama / diffrax SDE solvers), conditional score matching is
``score_matching_loss``, a flow model's score for the SDE samplers is ``score_fn_from_velocity``
(SDE time on ``SDEPath``), and log-likelihoods by the instantaneous change of
variables run from data to noise (``flow_log_likelihood``, the machinery of ``likelihood.py``).

Modules (everything is re-exported here: ``from score_jax import flow; flow.X``): ``paths``
(Gaussian paths), ``losses`` (flow / score matching, the network velocity), ``conversions``
(velocity <-> score / eps / x1), ``sampling`` (ODE / SDE sampling, likelihood); the exact
mixture velocity ``MixtureVelocity`` lives with the other ground truths in ``score_jax.toy``.
"""
from score_jax.flow.conversions import (
    ScoreVelocityFn,
    VelocityScoreFn,
    eps_to_velocity,
    score_fn_from_velocity,
    score_to_velocity,
    velocity_fn_from_score,
    velocity_to_eps,
    velocity_to_score,
    velocity_to_x1,
)
from score_jax.flow.losses import (
    ModelVelocityFn,
    flow_matching_loss,
    get_flow_loss_fn,
    get_velocity_fn,
    interpolate,
    score_matching_loss,
)
from score_jax.flow.paths import (
    PATHS,
    CondOTPath,
    GaussianPath,
    GaussianPathMethods,
    SDEPath,
    get_path,
)
from score_jax.flow.sampling import (
    FLOW_SDE_SOLVERS,
    FLOW_SOLVERS,
    flow_log_likelihood,
    flow_ode_sampler,
    flow_ode_solve,
    flow_sample,
    flow_sde_sampler,
)
from score_jax.toy import MixtureVelocity

__all__ = [
    "GaussianPath", "GaussianPathMethods", "score_matching_loss", "VelocityScoreFn",
    "ScoreVelocityFn", "score_fn_from_velocity", "velocity_fn_from_score", "FLOW_SDE_SOLVERS",
    "flow_sde_sampler",
    "CondOTPath", "SDEPath", "PATHS", "get_path", "interpolate", "flow_matching_loss",
    "ModelVelocityFn", "get_velocity_fn", "get_flow_loss_fn", "velocity_to_score",
    "score_to_velocity", "velocity_to_eps", "eps_to_velocity", "velocity_to_x1",
    "MixtureVelocity", "FLOW_SOLVERS", "flow_ode_solve", "flow_ode_sampler", "flow_sample",
    "flow_log_likelihood",
]
