"""Flow matching and conditional score matching on a Gaussian path, and the network velocity
wiring (``ModelVelocityFn``, ``get_velocity_fn``, ``get_flow_loss_fn``).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from score_jax import pytree
from score_jax import score as score_lib
from score_jax.flow.paths import CondOTPath
from score_jax.losses import conditioning
from score_jax.sde import batch_mul, gaussian_perturb

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]


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
