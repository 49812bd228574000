"""Denoising score-matching objectives (Song et al. 2021, eq. 7; Song & Ermon 2019; Ho et al. 2020).

All losses are pure functions ``(key, fn, sde, x0, ...) -> (loss, aux)``:
- ``dsm_loss`` takes a ``score_fn(x, t)`` (continuous time);
- ``discrete_loss`` (and its named forms ``smld_loss`` for VE, ``ddpm_loss`` for VP) takes the raw
  network ``model_fn(x, labels)`` with integer labels, as the reference's discrete objectives do;
  the chain (perturbation, target, weight) is the SDE's ``discrete_perturbation``.
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
from score_jax.sde import SDECore, batch_mul

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
    if not isinstance(sde, SDECore):
        raise ValueError(f"dsm_loss needs an SDE (VPSDE, subVPSDE, VESDE, ...); got "
                         f"{type(sde).__name__}. For a flow path (CondOTPath, GaussianPath, ...) "
                         f"use flow.score_matching_loss(key, score_fn, path, x1, weighting=...)")
    t = jax.random.uniform(key_t, (B,), x0.dtype, minval=eps, maxval=sde.T)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    x_t = sde.perturb(x0, t, z)
    s = sde.marginal_coeffs(t)[1]
    score = score_fn(x_t, t)
    if score.shape != x0.shape:
        raise ValueError(f"score_fn output shape {score.shape} does not match x shape {x0.shape}")
    if likelihood_weighting:
        g2 = jnp.square(sde.diffusion_coeff(t))
        losses = _reduce(jnp.square(score + batch_mul(1.0 / s, z)), reduce_mean) * g2
    else:
        losses = _reduce(jnp.square(batch_mul(s, score) + z), reduce_mean)
    return jnp.mean(losses), {"losses": losses, "t": t}


def discrete_loss(
    key: Array, model_fn: Callable[[Array, Array], Array], sde, x0: Array, *, reduce_mean: bool = False
) -> tuple[Array, dict]:
    """The SDE's discrete objective (``sde.discrete_objective()``: SMLD for VE, DDPM for VP).

    label ~ U{0..N-1}, z ~ N(0, I), ``(x_i, target, w) = sde.discrete_perturbation(label, x0, z)``,
    per-example loss w |model_fn(x_i, label) - target|^2 reduced over dimensions by
    ``reduce_mean``; the loss is the batch mean. Returns ``(loss, {"losses": (B,), "labels": (B,)})``.
    Raises ``ValueError`` for an SDE without a discrete chain (sub-VP).
    """
    sde.discrete_objective()  # raises for an SDE without a discrete chain
    key_l, key_z = jax.random.split(key)
    B = x0.shape[0]
    labels = jax.random.randint(key_l, (B,), 0, sde.N)
    noise = jax.random.normal(key_z, x0.shape, x0.dtype)
    x_i, target, weight = sde.discrete_perturbation(labels, x0, noise)
    out = model_fn(x_i, labels)
    losses = _reduce(jnp.square(out - target), reduce_mean) * weight
    return jnp.mean(losses), {"losses": losses, "labels": labels}


def _check_objective(sde, name: str, sde_name: str) -> None:
    got = sde.discrete_objective()
    if got != name:
        raise ValueError(f"{name.upper()} training needs a {sde_name} (discrete objective {name!r}); "
                         f"got {type(sde).__name__}, whose discrete objective is {got!r}")


def smld_loss(
    key: Array, model_fn: Callable[[Array, Array], Array], sde, x0: Array, *, reduce_mean: bool = False
) -> tuple[Array, dict]:
    """SMLD / NCSN objective (Song & Ermon 2019) on the N discrete VE noise levels.

    label ~ U{0..N-1}, sigma = flip(discrete_sigmas)[label] (label 0 is sigma_max, the reference
    convention), x~ = x0 + sigma z, target = -(x~ - x0) / sigma^2,
    loss = sigma^2 |model_fn(x~, label) - target|^2 (the network output is the score).
    Raises ``ValueError`` unless ``sde.discrete_objective() == "smld"`` (VESDE).
    """
    _check_objective(sde, "smld", "VESDE")
    return discrete_loss(key, model_fn, sde, x0, reduce_mean=reduce_mean)


def ddpm_loss(
    key: Array, model_fn: Callable[[Array, Array], Array], sde, x0: Array, *, reduce_mean: bool = True
) -> tuple[Array, dict]:
    """DDPM objective (Ho et al. 2020, L_simple): label i ~ U{0..N-1},
    x_i = sqrt(alphabar_i) x0 + sqrt(1 - alphabar_i) eps, loss = |model_fn(x_i, i) - eps|^2.
    Raises ``ValueError`` unless ``sde.discrete_objective() == "ddpm"`` (VPSDE)."""
    _check_objective(sde, "ddpm", "VPSDE")
    return discrete_loss(key, model_fn, sde, x0, reduce_mean=reduce_mean)


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


def conditioning(batch: Any, key: Array, *, num_classes: int | None,
                 label_dropout: float = 0.0) -> tuple[Array, dict | None]:
    """The data and the network's class conditioning of a training batch: ``(x, model_kwargs)``
    with ``model_kwargs = {"y": labels}`` for a class-conditional model (``num_classes`` set;
    labels dropped to the null label ``num_classes`` with probability ``label_dropout``,
    `drop_labels`), None otherwise. Shared by every objective's ``loss_fn``.

    Raises ValueError when the model is conditional and the batch has no "label"."""
    x, labels = split_batch(batch)
    if num_classes is None:
        return x, None
    if labels is None:
        raise ValueError("the model is class-conditional (num_classes set) but the batch has no "
                         "'label'")
    if label_dropout > 0:
        labels = drop_labels(key, labels, label_dropout, num_classes)
    return x, {"y": labels}


def get_loss_fn(
    sde,
    model: nn.Module,
    *,
    train: bool = True,
    continuous: bool = True,
    reduce_mean: bool = False,
    likelihood_weighting: bool = False,
    eps: float | None = None,
    prediction: str = "auto",
    num_classes: int | None = None,
    label_dropout: float = 0.0,
) -> Callable[[Any, Any, Array], tuple[Array, dict]]:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` for a Flax network.

    continuous=True: ``dsm_loss`` through ``score.get_score_fn`` (the reference wiring, or the
    head ``prediction``) with t ~ U(eps, T), ``eps`` defaulting to 1e-5 (the reference).
    continuous=False: ``discrete_loss``, the SDE's discrete objective (SMLD for VE, DDPM for VP,
    the reference's ``get_smld_loss_fn`` / ``get_ddpm_loss_fn``). As the reference asserts, these
    have no likelihood weighting, no time range and use the reference wiring only: with
    continuous=False, ``likelihood_weighting=True``, ``prediction`` other than "auto" or any
    ``eps`` raise ``ValueError``, and so does an SDE without a discrete chain (sub-VP).
    With ``num_classes`` set, ``batch["label"]`` conditions the network
    (keyword ``y``) and is dropped to the null label ``num_classes`` with probability
    ``label_dropout`` (classifier-free guidance training).
    """
    if not continuous:
        sde.discrete_objective()  # raises for an SDE without a discrete chain (sub-VP)
        if likelihood_weighting:
            raise ValueError("likelihood_weighting=True is not supported by the discrete (SMLD / DDPM) "
                             "objectives: set continuous=True or likelihood_weighting=False")
        if prediction != "auto":
            raise ValueError(f"prediction={prediction!r} is not supported by the discrete (SMLD / DDPM) "
                             "objectives, which train the reference wiring: valid choices ['auto'] "
                             "(or set continuous=True)")
        if eps is not None:
            raise ValueError(f"eps={eps!r} is not used by the discrete (SMLD / DDPM) objectives, which "
                             "sample integer labels: leave eps=None (or set continuous=True)")
    eps = 1e-5 if eps is None else eps

    def loss_fn(variables, batch, key):
        key_loss, key_drop, key_lab = jax.random.split(key, 3)
        x0, kwargs = conditioning(batch, key_lab, num_classes=num_classes,
                                  label_dropout=label_dropout)
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
        return discrete_loss(key_loss, net, sde, x0, reduce_mean=reduce_mean)

    return loss_fn
