"""Denoising score-matching objectives (Song et al. 2021, eq. 7; Song & Ermon 2019; Ho et al. 2020).

All losses are pure functions ``(key, fn, sde, x0, ...) -> (loss, aux)``:
- ``dsm_loss`` takes a ``score_fn(x, t)`` (continuous time);
- ``smld_loss`` / ``ddpm_loss`` take the raw network ``model_fn(x, labels)`` with integer labels,
  as the reference's discrete objectives do.
``get_loss_fn`` builds ``loss_fn(params, batch, key) -> (loss, aux)`` for a Flax network: the form
the training step differentiates.

Reduction (reference ``reduce_mean``): mean over the dimensions of each example, else
0.5 * sum over them; the loss is then the mean over the batch.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.score import ModelScoreFn, get_score_fn
from score_jax.sde import VESDE, VPSDE, batch_mul, subVPSDE

Array = jax.Array


def _reduce(x: Array, reduce_mean: bool) -> Array:
    x = x.reshape(x.shape[0], -1)
    return jnp.mean(x, axis=-1) if reduce_mean else 0.5 * jnp.sum(x, axis=-1)


def dsm_loss(
    key: Array,
    score_fn: Callable[[Array, Array], Array],
    sde,
    x0: Array,
    *,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
) -> tuple[Array, dict]:
    """Continuous denoising score matching (Song et al. eq. 7).

    t ~ U(eps, T), z ~ N(0, I), x_t = a_t x0 + s_t z, and per example
        lambda(t) = s_t^2:  |s_t score(x_t, t) + z|^2           (default weighting)
        lambda(t) = g(t)^2: g(t)^2 |score(x_t, t) + z / s_t|^2  (likelihood weighting, Song et al. 2021b)
    reduced over dimensions by ``reduce_mean``; the loss is the batch mean.
    Returns ``(loss, {"losses": per-example losses (B,), "t": t})``.
    """
    key_t, key_z = jax.random.split(key)
    B = x0.shape[0]
    t = jax.random.uniform(key_t, (B,), x0.dtype, minval=eps, maxval=sde.T)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    a, s = sde.marginal_coeffs(t)
    x_t = batch_mul(a, x0) + batch_mul(s, z)
    score = score_fn(x_t, t)
    if score.shape != x0.shape:
        raise ValueError(f"score_fn output shape {score.shape} does not match x shape {x0.shape}")
    if likelihood_weighting:
        g2 = jnp.square(sde.diffusion_coeff(t))
        losses = _reduce(jnp.square(score + batch_mul(1.0 / s, z)), reduce_mean) * g2
    else:
        losses = _reduce(jnp.square(batch_mul(s, score) + z), reduce_mean)
    return jnp.mean(losses), {"losses": losses, "t": t}


def smld_loss(
    key: Array, model_fn: Callable[[Array, Array], Array], sde: VESDE, x0: Array, *, reduce_mean: bool = False
) -> tuple[Array, dict]:
    """SMLD / NCSN objective (Song & Ermon 2019) on the N discrete VE noise levels.

    label ~ U{0..N-1}, sigma = flip(discrete_sigmas)[label] (label 0 is sigma_max, the reference
    convention), x~ = x0 + sigma z, target = -(x~ - x0) / sigma^2,
    loss = sigma^2 |model_fn(x~, label) - target|^2 (the network output is the score).
    """
    if not isinstance(sde, VESDE):
        raise ValueError(f"SMLD training needs a VESDE, got {type(sde).__name__}")
    key_l, key_z = jax.random.split(key)
    B = x0.shape[0]
    labels = jax.random.randint(key_l, (B,), 0, sde.N)
    sigmas = jnp.flip(sde.discrete_sigmas)[labels].astype(x0.dtype)
    noise = batch_mul(sigmas, jax.random.normal(key_z, x0.shape, x0.dtype))
    score = model_fn(x0 + noise, labels)
    target = batch_mul(-1.0 / sigmas**2, noise)
    losses = _reduce(jnp.square(score - target), reduce_mean) * sigmas**2
    return jnp.mean(losses), {"losses": losses, "labels": labels}


def ddpm_loss(
    key: Array, model_fn: Callable[[Array, Array], Array], sde: VPSDE, x0: Array, *, reduce_mean: bool = True
) -> tuple[Array, dict]:
    """DDPM objective (Ho et al. 2020, L_simple): label i ~ U{0..N-1},
    x_i = sqrt(alphabar_i) x0 + sqrt(1 - alphabar_i) eps, loss = |model_fn(x_i, i) - eps|^2."""
    if not isinstance(sde, VPSDE) or isinstance(sde, subVPSDE):
        raise ValueError(f"DDPM training needs a VPSDE, got {type(sde).__name__}")
    key_l, key_z = jax.random.split(key)
    B = x0.shape[0]
    labels = jax.random.randint(key_l, (B,), 0, sde.N)
    noise = jax.random.normal(key_z, x0.shape, x0.dtype)
    x_t = batch_mul(sde.sqrt_alphas_cumprod[labels].astype(x0.dtype), x0) + batch_mul(
        sde.sqrt_1m_alphas_cumprod[labels].astype(x0.dtype), noise
    )
    out = model_fn(x_t, labels)
    losses = _reduce(jnp.square(out - noise), reduce_mean)
    return jnp.mean(losses), {"losses": losses, "labels": labels}


def split_batch(batch: Any) -> tuple[Array, Array | None]:
    """A batch is an image array or a dict with "image" and optionally "label"."""
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ValueError(f"batch dict needs an 'image' entry; got keys {sorted(batch)}")
        return batch["image"], batch.get("label")
    return batch, None


def drop_labels(key: Array, labels: Array, p: float, null_label: int) -> Array:
    """Classifier-free guidance training (Ho & Salimans 2022): replace each label by the null
    label with probability p."""
    drop = jax.random.uniform(key, labels.shape) < p
    return jnp.where(drop, null_label, labels)


def get_loss_fn(
    sde,
    model: nn.Module,
    *,
    train: bool = True,
    continuous: bool = True,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    eps: float = 1e-5,
    prediction: str = "auto",
    num_classes: int | None = None,
    label_dropout: float = 0.0,
) -> Callable[[Any, Any, Array], tuple[Array, dict]]:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` for a Flax network.

    continuous=True: ``dsm_loss`` through the reference wiring (``score.get_score_fn``).
    continuous=False: ``smld_loss`` for VE, ``ddpm_loss`` for VP (the reference's discrete
    objectives; sub-VP has none). With ``num_classes`` set, ``batch["label"]`` conditions the network
    (keyword ``y``) and is dropped to the null label ``num_classes`` with probability
    ``label_dropout`` (classifier-free guidance training).
    """
    if not continuous and isinstance(sde, subVPSDE):
        raise ValueError("sub-VP has no discrete objective: set continuous=True")
    if not continuous and not isinstance(sde, (VESDE, VPSDE)):
        raise ValueError(f"discrete training supports VESDE (SMLD) and VPSDE (DDPM); got {type(sde).__name__}")

    def loss_fn(variables, batch, key):
        x0, labels = split_batch(batch)
        key_loss, key_drop, key_lab = jax.random.split(key, 3)
        kwargs = None
        if num_classes is not None:
            if labels is None:
                raise ValueError("the model is class-conditional (num_classes set) but the batch has no 'label'")
            if label_dropout > 0:
                labels = drop_labels(key_lab, labels, label_dropout, num_classes)
            kwargs = {"y": labels}
        if continuous:
            score_fn = get_score_fn(
                sde, model, variables, continuous=True, prediction=prediction, train=train,
                dropout_key=key_drop, model_kwargs=kwargs,
            )
            return dsm_loss(
                key_loss, score_fn, sde, x0, reduce_mean=reduce_mean,
                likelihood_weighting=likelihood_weighting, eps=eps,
            )
        net = ModelScoreFn(sde, variables, model, False, prediction, train, key_drop, kwargs).network
        if isinstance(sde, VESDE):
            return smld_loss(key_loss, net, sde, x0, reduce_mean=reduce_mean)
        return ddpm_loss(key_loss, net, sde, x0, reduce_mean=reduce_mean)

    return loss_fn
