"""Prediction heads, their conversions, and the wiring of a network output to a score: in ONE place.

Every SDE here has a Gaussian path x_t = a_t x_0 + s_t eps, eps ~ N(0, I). The quantities a network
may predict are related by (Song et al. 2021; Salimans & Ho 2022 for v; Lipman et al. 2023 for u):

    score    = -eps / s_t = -(x_t - a_t x0) / s_t^2
    v        = a_t eps - s_t x0
    x0       = (a_t x_t - s_t v) / (a_t^2 + s_t^2),     eps = (s_t x_t + a_t v) / (a_t^2 + s_t^2)
    velocity = u = a'_t x0 + s'_t eps           (the probability-flow / flow-matching velocity)
    x0       = (s'_t x_t - s_t u) / (a_t s'_t - s_t a'_t),  eps = (a_t u - a'_t x_t) / (a_t s'_t - s_t a'_t)

(for VP, a^2 + s^2 = 1 and the v formulas reduce to x0 = a x - s v, eps = s x + a v).
``convert`` maps any head to any other through (x0, eps).

``get_score_fn`` wires a network to a score function exactly as the reference
(``models/utils.py::get_score_fn``) does, through the SDE's declared methods
``AbstractSDE.network_labels`` and ``AbstractSDE.output_to_score`` (``sde.py``):
- VP / sub-VP, continuous (and sub-VP always): labels = 999 t, score = -out / s_t.
- VP, discrete (DDPM): labels = (N-1) t, score = -out / sqrt(1 - alphabar)[floor(labels)].
- VE, continuous: labels = sigma(t); VE discrete: labels = round((T - t)(N - 1)) (int);
  the network divides by sigma inside (``scale_by_sigma``) so score = out.

Time variable of the "velocity" head: ``u`` is the derivative along the path in the time ``t`` that
``sde.marginal_coeffs`` takes. For an SDE that is SDE time (data at t = 0), u = dx_t/dt; for a
flow path (``flow.py``, data at t = 1) it is flow time. ``flow.SDEPath`` runs the SDE backwards
in flow time s, so its velocity is d x / ds = -(T - eps) d x / dt.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from score_jax import pytree
from score_jax.sde import batch_mul

Array = jax.Array

HEADS = ("eps", "x0", "v", "score", "velocity")
PREDICTIONS = ("auto",) + HEADS


def _check_head(name: str, valid=HEADS) -> str:
    if name not in valid:
        raise ValueError(f"Unknown prediction head {name!r}; valid choices: {list(valid)}")
    return name


def marginal_coeffs_and_derivs(sde, t: Array) -> tuple[Array, Array, Array, Array]:
    """(a_t, s_t, da/dt, ds/dt), the derivatives by forward-mode autodiff of ``sde.marginal_coeffs``."""
    (a, s), (da, ds) = jax.jvp(sde.marginal_coeffs, (t,), (jnp.ones_like(t),))
    return a, s, da, ds


def to_x0_eps(pred: Array, x: Array, t: Array, sde, head: str) -> tuple[Array, Array]:
    """Recover (x0, eps) from the prediction ``pred`` of head ``head`` at (x_t = x, t)."""
    _check_head(head)
    a, s, da, ds = marginal_coeffs_and_derivs(sde, t)
    if head == "eps":
        eps = pred
        x0 = batch_mul(1.0 / a, x - batch_mul(s, eps))
    elif head == "score":
        eps = batch_mul(-s, pred)
        x0 = batch_mul(1.0 / a, x - batch_mul(s, eps))
    elif head == "x0":
        x0 = pred
        eps = batch_mul(1.0 / s, x - batch_mul(a, x0))
    elif head == "v":
        n = a**2 + s**2
        x0 = batch_mul(1.0 / n, batch_mul(a, x) - batch_mul(s, pred))
        eps = batch_mul(1.0 / n, batch_mul(s, x) + batch_mul(a, pred))
    else:  # velocity
        det = a * ds - s * da
        x0 = batch_mul(1.0 / det, batch_mul(ds, x) - batch_mul(s, pred))
        eps = batch_mul(1.0 / det, batch_mul(a, pred) - batch_mul(da, x))
    return x0, eps


def from_x0_eps(x0: Array, eps: Array, t: Array, sde, head: str) -> Array:
    """Express (x0, eps) at time t as the prediction of head ``head`` (the x_t they define is
    a_t x0 + s_t eps, so it is not an argument)."""
    _check_head(head)
    a, s, da, ds = marginal_coeffs_and_derivs(sde, t)
    if head == "eps":
        return eps
    if head == "score":
        return batch_mul(-1.0 / s, eps)
    if head == "x0":
        return x0
    if head == "v":
        return batch_mul(a, eps) - batch_mul(s, x0)
    return batch_mul(da, x0) + batch_mul(ds, eps)


def convert(pred: Array, x: Array, t: Array, sde, *, source: str, target: str) -> Array:
    """Convert a prediction from head ``source`` to head ``target`` (heads: eps, x0, v, score, velocity).

    ``sde`` is anything with ``marginal_coeffs(t) -> (a_t, s_t)`` (an SDE or a ``flow`` path);
    ``pred`` and ``x`` have shape (B, ...), ``t`` shape (B,). The "velocity" head is
    u = a'_t x0 + s'_t eps with derivatives in the time ``t`` of ``sde.marginal_coeffs``: SDE time
    for an SDE (so u = dx/dt of the probability-flow ODE, Song et al. eq. 13), flow time for a flow
    path. Unknown heads raise ``ValueError``."""
    if source == target:
        _check_head(source)
        return pred
    x0, eps = to_x0_eps(pred, x, t, sde, source)
    return from_x0_eps(x0, eps, t, sde, target)


def ode_velocity_from_score(sde, x: Array, t: Array, score: Array) -> Array:
    """Probability-flow velocity dx/dt = f(x,t) - g(t)^2 score / 2 (Song et al. eq. 13)."""
    drift, diffusion = sde.sde(x, t)
    return drift - batch_mul(0.5 * diffusion**2, score)


# ----------------------------------------------------------------------------------------------
# Reference wiring of networks: time labels and output -> score.
# ----------------------------------------------------------------------------------------------
def time_labels(sde, t: Array, continuous: bool) -> Array:
    """The time label the reference feeds the network at SDE time t: ``sde.network_labels``."""
    return sde.network_labels(t, continuous)


def output_to_score(sde, out: Array, t: Array, labels: Array, continuous: bool) -> Array:
    """The reference's network output -> score (VP: -out / std; VE: out): ``sde.output_to_score``."""
    return sde.output_to_score(out, t, labels, continuous)


@pytree.dataclass
class ModelScoreFn:
    """``score_fn(x, t)`` for a Flax network: a pytree whose leaves are the SDE and the parameters,
    so that samplers and likelihoods jit over it without baking the weights in as constants, and
    recompile only when the model or the wiring changes.

    prediction:
      - ``"auto"``: the reference wiring (``time_labels`` / ``output_to_score``);
      - ``"eps" | "x0" | "v" | "score" | "velocity"``: the network predicts that head, fed the
        continuous label ``time_labels(sde, t, continuous)``; converted by ``convert``.
    """

    sde: Any
    variables: Any
    model: nn.Module = struct.field(pytree_node=False)
    continuous: bool = struct.field(pytree_node=False, default=True)
    prediction: str = struct.field(pytree_node=False, default="auto")
    train: bool = struct.field(pytree_node=False, default=False)
    dropout_key: Any = None
    model_kwargs: Any = None  # e.g. {"y": class labels}; leaves are traced

    def network(self, x: Array, labels: Array) -> Array:
        rngs = {"dropout": self.dropout_key} if (self.train and self.dropout_key is not None) else None
        kwargs = dict(self.model_kwargs or {})
        return self.model.apply(self.variables, x, labels, train=self.train, rngs=rngs, **kwargs)

    def __call__(self, x: Array, t: Array) -> Array:
        labels = time_labels(self.sde, t, self.continuous)
        out = self.network(x, labels)
        if out.shape != x.shape:
            raise ValueError(f"network output shape {out.shape} does not match input shape {x.shape}")
        if self.prediction == "auto":
            return output_to_score(self.sde, out, t, labels, self.continuous)
        return convert(out, x, t, self.sde, source=self.prediction, target="score")


def get_score_fn(
    sde,
    model: nn.Module,
    variables: Any,
    *,
    continuous: bool = True,
    prediction: str = "auto",
    train: bool = False,
    dropout_key: Array | None = None,
    model_kwargs: dict | None = None,
) -> ModelScoreFn:
    """Wrap a Flax network as ``score_fn(x, t)``; see ``ModelScoreFn``."""
    _check_head(prediction, PREDICTIONS)
    return ModelScoreFn(sde, variables, model, continuous, prediction, train, dropout_key, model_kwargs)


@pytree.dataclass
class HeadScoreFn:
    """``score_fn(x, t)`` from any ``head_fn(x, t)`` predicting ``head`` (eps, x0, v, velocity)."""

    sde: Any
    head_fn: Callable = struct.field(pytree_node=False)
    head: str = struct.field(pytree_node=False, default="eps")

    def __call__(self, x: Array, t: Array) -> Array:
        return convert(self.head_fn(x, t), x, t, self.sde, source=self.head, target="score")


def score_fn_from_head(sde, head_fn: Callable[[Array, Array], Array], head: str) -> Callable:
    """Turn any ``head_fn(x, t)`` predicting ``head`` into ``score_fn(x, t)``."""
    _check_head(head)
    if head == "score":
        return head_fn
    return HeadScoreFn(sde, head_fn, head)


@pytree.dataclass
class LearnedVarianceScoreFn:
    """A network with a learned-variance output on the discrete VP (DDPM) chain: DiT with
    ``learn_sigma`` (2C channels: eps, then v in [-1, 1]; Nichol & Dhariwal 2021).

    - ``ddpm_output(x, timesteps) -> (eps, v)``: the network at the DDPM step indices
      ``timesteps`` (B,), called with ``full_output=True``; what
      ``sampling.ddpm.learned_variance_sample`` needs.
    - ``__call__(x, t)``: the score of the eps half with the discrete VP wiring (labels (N-1) t,
      score = -eps / sqrt(1 - alphabar)[floor(labels)]), so every other sampler runs on it.

    Classifier-free guidance (``guidance_scale`` w not None; ``model_kwargs["y"]`` the labels,
    ``num_classes`` the null label) is DiT's ``forward_with_cfg``: one network call on [x; x] with
    labels [y; null], eps_w = eps(null) + w (eps(y) - eps(null)) on the first
    ``guided_channels`` output channels (DiT: 3, "for exact reproducibility", of the 4 latent
    eps channels; None: all C eps channels, the standard form); the other channels, variance
    included, are the conditional ones.
    """

    sde: Any
    variables: Any
    model: nn.Module = struct.field(pytree_node=False)
    model_kwargs: Any = None
    guidance_scale: Any = None
    num_classes: int | None = struct.field(pytree_node=False, default=None)
    guided_channels: int | None = struct.field(pytree_node=False, default=3)

    def ddpm_output(self, x: Array, timesteps: Array) -> tuple[Array, Array]:
        c = x.shape[-1]
        kwargs = dict(self.model_kwargs or {})
        if self.guidance_scale is None:
            out = self.model.apply(self.variables, x, timesteps, train=False, full_output=True,
                                   **kwargs)
        else:
            y = kwargs.pop("y")
            null = jnp.full_like(y, self.num_classes)
            both = self.model.apply(self.variables, jnp.concatenate([x, x]),
                                    jnp.concatenate([timesteps, timesteps]), train=False,
                                    full_output=True, y=jnp.concatenate([y, null]), **kwargs)
            cond, uncond = jnp.split(both, 2)
            g = c if self.guided_channels is None else int(self.guided_channels)
            w = jnp.asarray(self.guidance_scale, cond.dtype)
            guided = uncond[..., :g] + w * (cond[..., :g] - uncond[..., :g])
            out = jnp.concatenate([guided, cond[..., g:]], axis=-1)
        if out.shape[-1] != 2 * c:
            raise ValueError(f"a learned-variance network must output 2C = {2 * c} channels "
                             f"(eps, v); got {out.shape[-1]} (DiT: model.learn_sigma=True)")
        return out[..., :c], out[..., c:]

    def __call__(self, x: Array, t: Array) -> Array:
        labels = time_labels(self.sde, t, False)
        eps, _ = self.ddpm_output(x, labels)
        return output_to_score(self.sde, eps, t, labels, False)
