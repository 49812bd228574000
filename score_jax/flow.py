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
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from score_jax import pytree
from score_jax import score as score_lib
from score_jax.likelihood import ode_log_likelihood
from score_jax.losses import conditioning
from score_jax.ode import ODE_SOLVERS, check_solve_options, solve_ode
from score_jax.runner import run_sampler
from score_jax.sde import GaussianPrior, batch_mul, gaussian_perturb, sde_solve

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]


class GaussianPathMethods(GaussianPrior, abc.ABC):
    """The formulas shared by every Gaussian path (``GaussianPath``, ``CondOTPath``, ``SDEPath``),
    written in terms of ``marginal_coeffs(t) -> (alpha_t, beta_t)``; see ``GaussianPath``."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha_t, beta_t) at flow time t (any shape)."""

    def coeffs_and_derivs(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """(alpha_t, beta_t, alpha'_t, beta'_t) at flow time t, derivatives by forward-mode AD."""
        return score_lib.marginal_coeffs_and_derivs(self, jnp.asarray(t))

    def sample_conditional(self, key: Array, z: Array, t: Array) -> Array:
        """x ~ p_t(. | z) = N(alpha_t z, beta_t^2 I), z of shape (B, ...), t of shape (B,)."""
        a, b = self.marginal_coeffs(t)
        return gaussian_perturb(a, b, z, jax.random.normal(key, z.shape, z.dtype))

    def conditional_velocity(self, x: Array, z: Array, t: Array) -> Array:
        """u_t(x | z) = (alpha'_t - beta'_t / beta_t alpha_t) z + beta'_t / beta_t x; x, z of
        shape (B, ...), t (B,). Singular where beta_t = 0."""
        a, b, da, db = self.coeffs_and_derivs(t)
        return batch_mul(da - db / b * a, z) + batch_mul(db / b, x)

    def conditional_score(self, x: Array, z: Array, t: Array) -> Array:
        """grad_x log N(x; alpha_t z, beta_t^2 I) = -(x - alpha_t z) / beta_t^2."""
        a, b = self.marginal_coeffs(t)
        return batch_mul(-1.0 / jnp.square(b), x - batch_mul(a, z))

    def velocity_from_score(self, score: Array, x: Array, t: Array) -> Array:
        """u = (alpha'_t / alpha_t) x + (beta_t^2 alpha'_t / alpha_t - beta'_t beta_t) score
        (singular at alpha_t = 0)."""
        a, b, da, db = self.coeffs_and_derivs(t)
        return batch_mul(da / a, x) + batch_mul(b**2 * da / a - db * b, score)

    def score_from_velocity(self, u: Array, x: Array, t: Array) -> Array:
        """The inverse: score = (u - (alpha'_t / alpha_t) x) / (beta_t^2 alpha'_t / alpha_t -
        beta'_t beta_t) = (alpha_t u - alpha'_t x) / (beta_t (alpha'_t beta_t - alpha_t beta'_t))
        (finite at alpha_t = 0, singular at beta_t = 0)."""
        a, b, da, db = self.coeffs_and_derivs(t)
        return batch_mul(1.0 / (b * (da * b - a * db)), batch_mul(a, u) - batch_mul(da, x))


@pytree.dataclass
class GaussianPath(GaussianPathMethods):
    """A Gaussian probability path from two callables of flow time t (MIT 6.S184 lecture 2):

        x_t = alpha_t z + beta_t eps,   z ~ data, eps ~ N(0, I),   alpha_0 = 0, beta_0 = 1,
        alpha_1 = 1, beta_1 = 0 (not checked: e.g. beta_t = sqrt(1 - t) is fine),

    ``GaussianPath(alpha=lambda t: t, beta=lambda t: jnp.sqrt(1 - t))``. ``alpha`` / ``beta`` map
    an array of t to an array of its shape and must be differentiable (alpha'_t, beta'_t by
    forward-mode autodiff, ``score.marginal_coeffs_and_derivs``); they are static pytree fields
    (hashed by identity: a new lambda recompiles the samplers). Prior N(0, prior_std^2 I) at t = 0
    (``prior_std`` = 1 for a path with beta_0 = 1). The course's formulas (eq. numbers of the
    6.S184 notes, Sec. 3):

        conditional velocity  u_t(x | z) = (alpha'_t - beta'_t / beta_t alpha_t) z + beta'_t / beta_t x,
        conditional score     grad log p_t(x | z) = -(x - alpha_t z) / beta_t^2,
        marginal conversion   u_t(x) = (alpha'_t / alpha_t) x
                                       + (beta_t^2 alpha'_t / alpha_t - beta'_t beta_t) score_t(x).

    ``CondOTPath`` and ``SDEPath`` are registered (virtual) subclasses with closed-form
    ``marginal_coeffs`` and the same methods (``GaussianPathMethods``): every flow function takes
    any of them.
    """

    alpha: Callable | None = struct.field(pytree_node=False, default=None)
    beta: Callable | None = struct.field(pytree_node=False, default=None)
    prior_std = 1.0
    name = "gaussian"

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha_t, beta_t) at flow time t (any shape)."""
        if self.alpha is None or self.beta is None:
            raise ValueError("GaussianPath needs alpha and beta: callables of t, e.g. "
                             "GaussianPath(alpha=lambda t: t, beta=lambda t: 1 - t)")
        t = jnp.asarray(t)
        return jnp.asarray(self.alpha(t)), jnp.asarray(self.beta(t))


@pytree.dataclass
class CondOTPath(GaussianPathMethods):
    """Conditional optimal-transport path (Lipman et al. 2023, eq. 20 - 23):

        x_t = t x1 + (1 - (1 - sigma_min) t) eps,   u = x1 - (1 - sigma_min) eps,   t in [0, 1].

    Prior N(0, I) at t = 0; with sigma_min = 0 the data are reached exactly at t = 1.
    A ``GaussianPath`` with alpha_t = t, beta_t = 1 - (1 - sigma_min) t.
    """

    sigma_min: float = 0.0
    prior_std = 1.0
    name = "condot"

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha_t, sigma_t) = (t, 1 - (1 - sigma_min) t)."""
        t = jnp.asarray(t)
        return t, 1.0 - (1.0 - self.sigma_min) * t


@pytree.dataclass
class SDEPath(GaussianPathMethods):
    """The Gaussian path of a linear SDE in flow time: SDE time s(t) = T + t (eps - T), so t = 0 is
    the SDE's prior end and t = 1 its data end s = eps. The prior is the SDE's
    (N(0, sigma_max^2 I) for VE). Flow matching on this path is diffusion training with a
    velocity head (Lipman et al. Sec. 4.1 for VP and VE). Its velocity is d x / dt in flow time t:
    -(T - eps) times the velocity d x / ds in SDE time s. A model trained on it runs in the SDE
    samplers through ``score_fn_from_velocity(velocity_fn, path)`` (which maps SDE time to flow
    time), NOT through ``score.convert(..., sde, source="velocity")`` (SDE-time velocity)."""

    sde: Any
    eps: float = 1e-5
    name = "sde"

    @property
    def prior_std(self):
        return self.sde.prior_std

    def sde_time(self, t: Array) -> Array:
        """s(t) = T + t (eps - T)."""
        return self.sde.T + t * (self.eps - self.sde.T)

    def flow_time(self, s: Array) -> Array:
        """t(s) = (T - s) / (T - eps), the inverse of ``sde_time``."""
        return (self.sde.T - s) / (self.sde.T - self.eps)

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        return self.sde.marginal_coeffs(self.sde_time(jnp.asarray(t)))


# CondOTPath and SDEPath are GaussianPaths with closed-form coefficients (virtual subclasses:
# ``isinstance(CondOTPath(), GaussianPath)`` holds; they keep their own constructors).
GaussianPath.register(CondOTPath)
GaussianPath.register(SDEPath)

PATHS = {"condot": CondOTPath, "sde": SDEPath}


def get_path(name: str, **kwargs):
    """Build a path by name ("condot", or "sde" with ``sde=``); unknown names raise ValueError."""
    if name not in PATHS:
        raise ValueError(f"Unknown probability path {name!r}; valid choices: {sorted(PATHS)}")
    return PATHS[name](**kwargs)


# ----------------------------------------------------------------------------------------------
# Conditional path, target and loss
# ----------------------------------------------------------------------------------------------
def interpolate(path, x1: Array, noise: Array, t: Array) -> tuple[Array, Array]:
    """(x_t, u_t) = (alpha_t x1 + sigma_t eps, alpha'_t x1 + sigma'_t eps) for t of shape (B,),
    ' = d/dt in flow time (``sde.gaussian_perturb`` on the path's coefficients and their
    derivatives)."""
    a, s, da, ds = score_lib.marginal_coeffs_and_derivs(path, t)
    return gaussian_perturb(a, s, x1, noise), gaussian_perturb(da, ds, x1, noise)


def _reduce(x: Array, reduce_mean: bool) -> Array:
    x = x.reshape(x.shape[0], -1)
    return jnp.mean(x, axis=-1) if reduce_mean else 0.5 * jnp.sum(x, axis=-1)


def flow_matching_loss(
    key: Array,
    velocity_fn: VelocityFn,
    path,
    x1: Array,
    *,
    reduce_mean: bool = True,
    t_min: float = 0.0,
    t_max: float = 1.0,
    x0: Array | None = None,
) -> tuple[Array, dict]:
    """Conditional flow matching (Lipman et al. 2023, eq. 9):

        t ~ U(t_min, t_max), eps ~ N(0, I), x_t = alpha_t x1 + sigma_t eps,
        loss = | v(x_t, t) - (alpha'_t x1 + sigma'_t eps) |^2,

    (for ``CondOTPath()``: x_t = t x1 + (1 - t) eps, target x1 - eps), reduced over dimensions by
    mean (``reduce_mean``) or 0.5 * sum, then averaged over the batch. ``x0`` (x1's shape)
    replaces the Gaussian source draws eps by a batch of any source distribution (independent
    coupling, Tong et al. 2023 / Liu et al. 2023): the flow then bridges the source data set to the
    target one; sample it with ``flow_sample(..., x_init=<source batch>)``.
    Returns ``(loss, {"losses": (B,), "t": (B,)})``.
    """
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1; got t_min={t_min}, t_max={t_max}")
    key_t, key_z = jax.random.split(key)
    B = x1.shape[0]
    t = jax.random.uniform(key_t, (B,), x1.dtype, minval=t_min, maxval=t_max)
    if x0 is None:
        noise = jax.random.normal(key_z, x1.shape, x1.dtype)
    elif x0.shape != x1.shape:
        raise ValueError(f"source batch x0 of shape {x0.shape} must have x1's shape {x1.shape}")
    else:
        noise = x0.astype(x1.dtype)
    x_t, target = interpolate(path, x1, noise, t)
    v = velocity_fn(x_t, t)
    if v.shape != x1.shape:
        raise ValueError(f"velocity_fn output shape {v.shape} does not match x shape {x1.shape}")
    losses = _reduce(jnp.square(v - target), reduce_mean)
    return jnp.mean(losses), {"losses": losses, "t": t}


def score_matching_loss(
    key: Array,
    score_fn: VelocityFn,
    path,
    x1: Array,
    *,
    weighting: Callable[[Array], Array] | None = None,
    reduce_mean: bool = True,
    t_min: float = 0.0,
    t_max: float = 0.99,
) -> tuple[Array, dict]:
    """Conditional (denoising) score matching on a Gaussian path in flow time (Vincent 2011;
    MIT 6.S184 lecture 3):

        t ~ U(t_min, t_max), eps ~ N(0, I), x_t = alpha_t x1 + beta_t eps,
        loss = w(t) | s(x_t, t) - grad log p_t(x_t | x1) |^2,  grad log p_t(x | x1) = -eps / beta_t,

    minimised by the marginal score s(x, t) = grad log p_t(x). ``score_fn(x, t)`` takes x (B, ...)
    and flow time t (B,); ``weighting`` maps t (B,) to w (B,) (None: 1, the unweighted loss; e.g.
    ``lambda t: path.marginal_coeffs(t)[1] ** 2`` for the eps-prediction weighting). ``t_max`` < 1
    because the target -eps / beta_t blows up where beta_t -> 0 (data end). Reduced over
    dimensions by mean or 0.5 * sum, then averaged over the batch.
    Returns ``(loss, {"losses": (B,), "t": (B,)})``. Raises ValueError unless
    0 <= t_min < t_max <= 1 or for a score_fn output of the wrong shape.
    """
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1; got t_min={t_min}, t_max={t_max}")
    key_t, key_z = jax.random.split(key)
    B = x1.shape[0]
    t = jax.random.uniform(key_t, (B,), x1.dtype, minval=t_min, maxval=t_max)
    noise = jax.random.normal(key_z, x1.shape, x1.dtype)
    a, b = path.marginal_coeffs(t)
    x_t = gaussian_perturb(a, b, x1, noise)
    target = batch_mul(-1.0 / b, noise)
    s = score_fn(x_t, t)
    if s.shape != x1.shape:
        raise ValueError(f"score_fn output shape {s.shape} does not match x shape {x1.shape}")
    losses = _reduce(jnp.square(s - target), reduce_mean)
    if weighting is not None:
        losses = losses * jnp.asarray(weighting(t), losses.dtype)
    return jnp.mean(losses), {"losses": losses, "t": t}


@pytree.dataclass
class ModelVelocityFn:
    """``velocity_fn(x, t)`` for a Flax network ``model(x, labels, train=..., **model_kwargs)`` fed
    the time label ``time_scale * t`` (999 t: the range the score_sde networks embed). A pytree
    whose leaves are the parameters, so samplers jit over it without baking the weights in."""

    variables: Any
    model: nn.Module = struct.field(pytree_node=False)
    time_scale: float = struct.field(pytree_node=False, default=999.0)
    train: bool = struct.field(pytree_node=False, default=False)
    dropout_key: Any = None
    model_kwargs: Any = None

    def __call__(self, x: Array, t: Array) -> Array:
        use_rng = self.train and self.dropout_key is not None
        rngs = {"dropout": self.dropout_key} if use_rng else None
        kwargs = dict(self.model_kwargs or {})
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        return self.model.apply(self.variables, x, self.time_scale * t, train=self.train, rngs=rngs,
                                **kwargs)


def get_velocity_fn(model: nn.Module, variables: Any, *, time_scale: float = 999.0,
                    train: bool = False, dropout_key: Array | None = None,
                    model_kwargs: dict | None = None) -> ModelVelocityFn:
    """Wrap a Flax network as ``velocity_fn(x, t)`` (t in flow time, shape (B,))."""
    return ModelVelocityFn(variables, model, time_scale, train, dropout_key, model_kwargs)


def get_flow_loss_fn(
    model: nn.Module,
    path=None,
    *,
    train: bool = True,
    reduce_mean: bool = True,
    time_scale: float = 999.0,
    t_min: float = 0.0,
    t_max: float = 1.0,
    num_classes: int | None = None,
    label_dropout: float = 0.0,
) -> Callable[[Any, Any, Array], tuple[Array, dict]]:
    """``loss_fn(variables, batch, key) -> (loss, aux)``: ``flow_matching_loss`` for a Flax network,
    with the contract of ``losses.get_loss_fn`` (batch = images or {"image", "label"}; with
    ``num_classes`` the label conditions the network as ``y`` and is dropped to the null label
    ``num_classes`` with probability ``label_dropout``, for classifier-free guidance).
    ``path`` defaults to ``CondOTPath()``.
    """
    path = CondOTPath() if path is None else path

    def loss_fn(variables, batch, key):
        key_loss, key_drop, key_lab = jax.random.split(key, 3)
        x1, kwargs = conditioning(batch, key_lab, num_classes=num_classes,
                                  label_dropout=label_dropout)
        vf = get_velocity_fn(model, variables, time_scale=time_scale, train=train,
                             dropout_key=key_drop, model_kwargs=kwargs)
        return flow_matching_loss(key_loss, vf, path, x1, reduce_mean=reduce_mean, t_min=t_min,
                                  t_max=t_max)

    return loss_fn


# ----------------------------------------------------------------------------------------------
# Conversions on Gaussian paths
#
# The velocity u here is always d x / dt in FLOW time t of ``path`` (noise at t = 0, data at
# t = 1), and t is flow time. For ``SDEPath(sde, eps)`` (SDE time s = T + t (eps - T)) this is
# u = dx/dt = -(T - eps) dx/ds, with dx/ds the SDE's probability-flow drift
# f - g^2 score / 2 (Song et al. eq. 13): pass ``sde`` itself instead of the path to
# ``score.convert`` to get velocities in SDE time s.
# ----------------------------------------------------------------------------------------------
def velocity_to_score(u: Array, x: Array, t: Array, path) -> Array:
    """The score at (x, flow time t) from the flow-time velocity u = dx/dt of ``path``
    (for ``SDEPath``: dx/dt = -(T - eps) dx/ds in SDE time s, see the note above).

    score = -eps_hat / sigma_t with eps_hat = (alpha_t u - alpha'_t x) / (alpha_t sigma'_t -
    sigma_t alpha'_t); for CondOT: score = (t u - x) / (1 - t). Singular at sigma_t = 0."""
    return score_lib.convert(u, x, t, path, source="velocity", target="score")


def score_to_velocity(score: Array, x: Array, t: Array, path) -> Array:
    """The flow-time velocity u = dx/dt of ``path`` at (x, flow time t) from the score:
    u = alpha'_t x1_hat + sigma'_t eps_hat with eps_hat = -sigma_t score,
    x1_hat = (x - sigma_t eps_hat) / alpha_t; for CondOT: u = (x + (1 - t) score) / t. Singular
    at alpha_t = 0 (the velocity at pure noise depends on E[x1], which the score there lacks)."""
    return score_lib.convert(score, x, t, path, source="score", target="velocity")


def velocity_to_eps(u: Array, x: Array, t: Array, path) -> Array:
    """eps_hat = (alpha_t u - alpha'_t x) / (alpha_t sigma'_t - sigma_t alpha'_t);
    CondOT: x - t u."""
    return score_lib.convert(u, x, t, path, source="velocity", target="eps")


def eps_to_velocity(eps: Array, x: Array, t: Array, path) -> Array:
    """u = alpha'_t (x - sigma_t eps) / alpha_t + sigma'_t eps; CondOT: (x - eps) / t."""
    return score_lib.convert(eps, x, t, path, source="eps", target="velocity")


def velocity_to_x1(u: Array, x: Array, t: Array, path) -> Array:
    """x1_hat = (sigma'_t x - sigma_t u) / (alpha_t sigma'_t - sigma_t alpha'_t); CondOT:
    x + (1 - t) u."""
    return score_lib.convert(u, x, t, path, source="velocity", target="x0")


@pytree.dataclass
class VelocityScoreFn:
    """``score_fn(x, time)`` from a flow-time ``velocity_fn(x, t)`` on ``path``; see
    ``score_fn_from_velocity``."""

    velocity_fn: Any
    path: Any
    sde_time: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x: Array, time: Array) -> Array:
        t = self.path.flow_time(time) if self.sde_time else time
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        return velocity_to_score(self.velocity_fn(x, t), x, t, self.path).astype(x.dtype)


@pytree.dataclass
class ScoreVelocityFn:
    """Flow-time ``velocity_fn(x, t)`` from ``score_fn(x, time)``; see ``velocity_fn_from_score``."""

    score_fn: Any
    path: Any
    sde_time: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        time = self.path.sde_time(t) if self.sde_time else t
        return score_to_velocity(self.score_fn(x, time), x, t, self.path).astype(x.dtype)


def _default_sde_time(path, sde_time):
    if sde_time is None:
        return isinstance(path, SDEPath)
    if sde_time and not isinstance(path, SDEPath):
        raise ValueError(f"sde_time=True needs an SDEPath (the only path with an SDE time); "
                         f"got {type(path).__name__}")
    return bool(sde_time)


def score_fn_from_velocity(velocity_fn: VelocityFn, path, *, sde_time: bool | None = None):
    """The score of a flow model: ``score_fn(x, time)`` = ``velocity_to_score(v(x, t), x, t, path)``.

    ``velocity_fn(x, t)`` predicts the FLOW-time velocity dx/dt of ``path`` (what
    ``flow_matching_loss`` trains). For an ``SDEPath(sde, eps)`` (default ``sde_time=True``) the
    returned ``score_fn`` takes SDE time s (data at s = 0) and maps it to flow time
    t = (T - s) / (T - eps), so it runs in every SDE sampler of ``sampling.sample(key, sde, ...)``
    (at s < eps it extrapolates the path linearly in t). For other paths (or ``sde_time=False``) it
    takes flow time t. Do not feed such a model to ``score.convert(..., sde,
    source="velocity")``: that head is dx/ds in SDE time, -1 / (T - eps) times this velocity.
    Raises ValueError for ``sde_time=True`` on a path that is not an ``SDEPath``.
    """
    return VelocityScoreFn(velocity_fn, path, _default_sde_time(path, sde_time))


def velocity_fn_from_score(score_fn, path, *, sde_time: bool | None = None):
    """The inverse of ``score_fn_from_velocity``: the flow-time ``velocity_fn(x, t)`` of ``path``
    from ``score_fn`` (taking SDE time for an ``SDEPath`` by default, flow time otherwise);
    u = (alpha'_t / alpha_t) x + (beta_t^2 alpha'_t / alpha_t - beta'_t beta_t) score, singular at
    alpha_t = 0 (t = 0)."""
    return ScoreVelocityFn(score_fn, path, _default_sde_time(path, sde_time))


@pytree.dataclass
class MixtureVelocity:
    """The exact marginal velocity of Gaussian-mixture data (``toy.GaussianMixture``) on ``path``:

        u(x, t) = alpha'_t E[x1 | x_t = x] + sigma'_t E[eps | x_t = x],
        E[x1 | x] = sum_k r_k (mu_k + alpha_t sd_k^2 (x - alpha_t mu_k) / v_k),
        E[eps | x] = sum_k r_k sigma_t (x - alpha_t mu_k) / v_k,
        v_k = alpha_t^2 sd_k^2 + sigma_t^2,

    r_k the posterior component probabilities. Finite at both ends of the path (no division by
    alpha_t or sigma_t): the ground truth for flow-matching tests and benchmarks.
    """

    mixture: Any
    path: Any

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        a, s, da, ds = score_lib.marginal_coeffs_and_derivs(self.path, t)
        m = self.mixture
        B = x.shape[0]
        xf = x.reshape(B, 1, -1)
        mu = m.means.reshape(1, m.means.shape[0], -1)
        sd2 = jnp.square(m.stds).reshape(1, -1)
        v = a.reshape(B, 1) ** 2 * sd2 + s.reshape(B, 1) ** 2  # (B, K)
        resid = xf - a.reshape(B, 1, 1) * mu  # (B, K, D)
        D = xf.shape[-1]
        logits = (jnp.log(m.weights)[None] - 0.5 * D * jnp.log(2 * jnp.pi * v)
                  - 0.5 * jnp.sum(jnp.square(resid), -1) / v)
        r = jax.nn.softmax(logits, axis=-1)[..., None]  # (B, K, 1)
        x1_hat = jnp.sum(r * (mu + (a.reshape(B, 1, 1) * sd2[..., None] / v[..., None]) * resid), 1)
        eps_hat = jnp.sum(r * (s.reshape(B, 1, 1) / v[..., None]) * resid, 1)
        u = da.reshape(B, 1) * x1_hat + ds.reshape(B, 1) * eps_hat
        return u.reshape(x.shape).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Sampling and likelihood
# ----------------------------------------------------------------------------------------------
FLOW_SOLVERS = tuple(ODE_SOLVERS)


def flow_ode_solve(velocity_fn: VelocityFn, x_init: Array, *, solver: str = "heun",
                   num_steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                   t0: float = 0.0, t1: float = 1.0) -> tuple[Array, Array]:
    """Integrate dx/dt = v(x, t) from t0 to t1 with diffrax (``ode.solve_ode``): fixed steps
    when ``num_steps`` is given (euler: NFE = num_steps, heun / midpoint: 2 num_steps, ...), else
    adaptive with rtol / atol (tsit5, dopri5, bosh3, heun, ...). Returns ``(x, nfe)``."""
    check_solve_options(solver, rtol, atol, num_steps)

    def vf(t, x):
        return velocity_fn(x, jnp.full((x.shape[0],), t, jnp.promote_types(x.dtype, jnp.float32)))

    return solve_ode(vf, x_init, t0, t1, solver=solver, rtol=rtol, atol=atol, num_steps=num_steps)


def flow_ode_sampler(key: Array, path, velocity_fn: VelocityFn, x_init: Array, *,
                     solver: str = "heun", num_steps: int | None = None, rtol: float = 1e-5,
                     atol: float = 1e-5, t0: float = 0.0, t1: float = 1.0) -> tuple[Array, Array]:
    """The flow sampler in the sampler contract ``fn(key, sde, score_fn, x_init, **options)`` of
    ``runner.run_sampler`` (``path`` in the SDE's place, the velocity in the score's): the ODE from
    t0 (prior, default 0) to t1 (data, default 1). Deterministic: ``key`` is unused."""
    return flow_ode_solve(velocity_fn, x_init, solver=solver, num_steps=num_steps, rtol=rtol,
                          atol=atol, t0=t0, t1=t1)


# Stochastic flow solvers: flow_sample name -> sampling.simulate solver name.
FLOW_SDE_SOLVERS = {"euler_maruyama": "euler_maruyama", "sde_heun": "heun", "sea": "sea",
                    "sra1": "sra1", "shark": "shark"}


def _sigma_t(sigma, t: Array) -> Array:
    return jnp.asarray(sigma(t) if callable(sigma) else sigma, t.dtype) * jnp.ones_like(t)


def flow_sde_sampler(key: Array, path, velocity_fn: VelocityFn, x_init: Array, *,
                     solver: str = "euler_maruyama", num_steps: int = 100, sigma=1.0,
                     t0: float = 0.0, t1: float = 1.0) -> tuple[Array, int]:
    """The SDE extension of a flow (MIT 6.S184 lecture 3, Theorem "SDE extension trick"): for any
    sigma_t >= 0,

        dX_t = [u_t(X_t) + sigma_t^2 / 2 score_t(X_t)] dt + sigma_t dW_t,   X_0 ~ prior,

    has the marginals p_t of the flow dX = u_t(X) dt; the score comes from the velocity on the
    Gaussian path (``velocity_to_score``; singular at beta_t = 0, so Euler-Maruyama, which never
    evaluates the drift at t1, reaches t1 = 1 on CondOT; solvers evaluating at t1 need t1 < 1).
    ``sigma``: a float or a callable of t (shape (B,) -> (B,)). One velocity evaluation per
    drift evaluation. Returns ``(x, nfe)``."""
    def drift(x, t):
        u = velocity_fn(x, t)
        g2 = jnp.square(_sigma_t(sigma, t))
        return u + batch_mul(0.5 * g2, velocity_to_score(u, x, t, path))

    def diffusion(x, t):
        return _sigma_t(sigma, t)

    return sde_solve(key, jax.tree_util.Partial(drift), jax.tree_util.Partial(diffusion), x_init,
                     t0, t1, num_steps, solver=FLOW_SDE_SOLVERS[solver])


def flow_sample(
    key: Array,
    velocity_fn: VelocityFn,
    shape: tuple[int, ...],
    *,
    path=None,
    solver: str = "heun",
    num_steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    sigma=None,
    t0: float = 0.0,
    t1: float = 1.0,
    x_init: Array | None = None,
    dtype=jnp.float32,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[Array, int]:
    """Draw samples by integrating the flow from the prior of ``path`` (default ``CondOTPath()``)
    at t0 (default 0) to the data at t1 (default 1), in the one jitted runner
    (``runner.run_sampler``); returns ``(x, nfe)`` with the true number of velocity evaluations (a
    Python int).

    ``solver``: an ODE solver of ``FLOW_SOLVERS`` ("euler", "heun", "midpoint" with ``num_steps``,
    or an adaptive solver "tsit5", "dopri5", ... with ``num_steps=None``), or a stochastic solver
    of ``FLOW_SDE_SOLVERS`` ("euler_maruyama", "sde_heun", "sea", "sra1", "shark"; fixed
    ``num_steps``, default 100) for the SDE extension with noise level ``sigma`` (a float >= 0 or
    a callable of t; default 1.0; see ``flow_sde_sampler``). ``t1 < 1`` stops short of a singular
    end point (e.g. beta_t = sqrt(1 - t), whose velocity is infinite at t = 1). ``x_init`` replaces
    the prior draw (e.g. a batch of a source data set for a bridge). ``sharding`` lays the batch
    out over a device mesh (the result does not depend on it).

    Raises ValueError for an unknown solver (listing both families), tolerances <= 0,
    num_steps < 1, an adaptive "euler", ``sigma`` with an ODE solver, a negative ``sigma``, or
    not 0 <= t0 < t1 <= 1, before compiling."""
    path = CondOTPath() if path is None else path
    if not (isinstance(t0, (int, float)) and isinstance(t1, (int, float)) and 0.0 <= t0 < t1 <= 1.0):
        raise ValueError(f"need 0 <= t0 < t1 <= 1; got t0={t0!r}, t1={t1!r}")
    if solver in FLOW_SDE_SOLVERS:
        sigma = 1.0 if sigma is None else sigma
        if not callable(sigma) and not (isinstance(sigma, (int, float)) and sigma >= 0):
            raise ValueError(f"sigma must be a float >= 0 or a callable of t; got {sigma!r}")
        num_steps = 100 if num_steps is None else num_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1; got {num_steps!r}")
        return run_sampler(flow_sde_sampler, key, path, velocity_fn, shape, x_init=x_init,
                           dtype=dtype, sharding=sharding,
                           options=dict(solver=solver, num_steps=num_steps, sigma=sigma,
                                        t0=float(t0), t1=float(t1)))
    if solver not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE solver {solver!r} (flow_sample); valid choices: ODE "
                         f"{list(ODE_SOLVERS)}, "
                         f"SDE {list(FLOW_SDE_SOLVERS)}")
    if sigma is not None:
        raise ValueError(f"sigma={sigma!r} is an option of the stochastic solvers "
                         f"{list(FLOW_SDE_SOLVERS)}; solver {solver!r} is an ODE solver")
    check_solve_options(solver, rtol, atol, num_steps)
    return run_sampler(flow_ode_sampler, key, path, velocity_fn, shape, x_init=x_init,
                       dtype=dtype, sharding=sharding,
                       options=dict(solver=solver, num_steps=num_steps, rtol=rtol, atol=atol,
                                    t0=float(t0), t1=float(t1)))


def flow_log_likelihood(
    key: Array,
    velocity_fn: VelocityFn,
    x: Array,
    *,
    path=None,
    hutchinson: str = "rademacher",
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: int | None = None,
) -> tuple[Array, Array, Array]:
    """log p_1(x) in nats per example under the flow (instantaneous change of variables, Chen et
    al. 2018): log p_1(x) = log p_0(z) - int_0^1 div v(x_t, t) dt, integrated from data (t = 1) to
    noise (t = 0) by ``likelihood.ode_log_likelihood`` (exact or Hutchinson divergence).
    Returns ``(logp, z, nfe)``. Jit-able."""
    path = CondOTPath() if path is None else path

    def vf(t, y):
        return velocity_fn(y, jnp.full((y.shape[0],), t, jnp.promote_types(y.dtype, jnp.float32)))

    return ode_log_likelihood(key, vf, x, 1.0, 0.0, path.prior_logp, hutchinson=hutchinson,
                              solver=solver, rtol=rtol, atol=atol, num_steps=num_steps)


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
