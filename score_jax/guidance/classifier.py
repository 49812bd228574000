"""Classifier guidance with a noise-conditional classifier (Song et al. 2021, Sec. 5 and App. I.1;
Dhariwal & Nichol 2021, Algorithm 1 and eq. 10 in score form).

A classifier p_phi(y | x_t, t) trained on noised data (t ~ U(eps, T), x_t = a_t x_0 + s_t z,
cross-entropy) turns an unconditional score into a class-conditional one by Bayes' rule:

    grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x),

and guidance scale w: score_w(x, t) = score(x, t) + w grad_x log p_phi(y | x, t) (w = 1 is the exact
conditional score when the classifier is exact). The classifier is conditioned on the noise level by
the half log-SNR lambda_t = log(a_t / s_t), which means the same for VP, sub-VP and VE.

    logits_fn = ClassifierLogitsFn(sde, clf_variables, NoiseConditionalClassifier(num_classes=10))
    score_fn = classifier_guided_score(score_fn, logits_fn, labels, w=1.0)
    x, nfe = sampling.sample(key, sde, score_fn, shape, "pc")
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from score_jax import pytree
from score_jax.guidance.cfg import as_pytree_callable, check_guidance_scale
from score_jax.losses import split_batch
from score_jax.sde import batch_mul

Array = jax.Array


def noise_level_embedding(lam: Array, dim: int, max_freq: float = 8.0) -> Array:
    """Sinusoidal features of lambda / 4 at geometric frequencies 1 .. max_freq: (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(max_freq), half, dtype=lam.dtype))
    arg = (lam / 4.0)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class NoiseConditionalClassifier(nn.Module):
    """A small classifier p(y | x_t, lambda_t) for any input rank.

    Images (B, H, W, C): ``len(features)`` stages of [3x3 conv, + noise embedding, SiLU, 2x2 average
    pooling], global mean pooling, a dense layer to ``num_classes`` logits. Other shapes are
    flattened and pass through dense layers of widths ``features`` with the embedding added.
    Call as ``apply(variables, x, lam, train=False)`` with lam = sde.log_snr(t) of shape (B,).
    """

    num_classes: int
    features: Sequence[int] = (32, 64)
    embed_dim: int = 64

    @nn.compact
    def __call__(self, x: Array, lam: Array, *, train: bool = False) -> Array:
        emb = nn.silu(nn.Dense(self.embed_dim)(noise_level_embedding(lam.astype(x.dtype),
                                                                      self.embed_dim)))
        h = x
        if x.ndim == 4:
            for f in self.features:
                h = nn.Conv(f, (3, 3))(h)
                h = h + nn.Dense(f)(emb)[:, None, None, :]
                h = nn.silu(h)
                if h.shape[1] > 1 and h.shape[2] > 1:
                    h = nn.avg_pool(h, (2, 2), (2, 2))
            h = jnp.mean(h, axis=(1, 2))
        else:
            h = h.reshape(h.shape[0], -1)
            for f in self.features:
                h = nn.silu(nn.Dense(f)(h) + nn.Dense(f)(emb))
        return nn.Dense(self.num_classes)(h)


@pytree.dataclass
class ClassifierLogitsFn:
    """``logits_fn(x, t)`` of a noise-conditional Flax classifier fed lambda_t = sde.log_snr(t)."""

    sde: Any
    variables: Any
    classifier: nn.Module = struct.field(pytree_node=False)
    train: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        return self.classifier.apply(self.variables, x, self.sde.log_snr(t), train=self.train)


def classifier_loss(key: Array, logits_fn: Callable[[Array, Array], Array], sde, x0: Array,
                    labels: Array, *, eps: float = 1e-5) -> tuple[Array, dict]:
    """Cross-entropy of a noise-conditional classifier on noised data (Song et al. App. I.1):
    t ~ U(eps, T), x_t = a_t x0 + s_t z, loss = mean_B[-log p(y | x_t, t)].
    Returns ``(loss, {"losses": (B,), "accuracy": (), "t": (B,)})``."""
    key_t, key_z = jax.random.split(key)
    B = x0.shape[0]
    t = jax.random.uniform(key_t, (B,), x0.dtype, minval=eps, maxval=sde.T)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    a, s = sde.marginal_coeffs(t)
    x_t = batch_mul(a, x0) + batch_mul(s, z)
    logits = logits_fn(x_t, t)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    acc = jnp.mean(jnp.argmax(logits, -1) == labels)
    return jnp.mean(losses), {"losses": losses, "accuracy": acc, "t": t}


def get_classifier_loss_fn(sde, classifier: nn.Module, *, train: bool = True,
                           eps: float = 1e-5) -> Callable[[Any, Any, Array], tuple[Array, dict]]:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` (the contract of ``losses.get_loss_fn``)
    for a noise-conditional classifier; batch = {"image": x0, "label": y}."""

    def loss_fn(variables, batch, key):
        x0, labels = split_batch(batch)
        if labels is None:
            raise ValueError("classifier training needs batches {'image': ..., 'label': ...}")
        return classifier_loss(key, ClassifierLogitsFn(sde, variables, classifier, train), sde,
                               x0, labels, eps=eps)

    return loss_fn


def log_prob_grad(logits_fn: Callable[[Array, Array], Array], x: Array, t: Array,
                  labels: Array) -> Array:
    """grad_x log p(y | x, t) per example (examples are independent: the gradient of the batch
    sum is the per-example gradient)."""

    def total(x):
        logp = jax.nn.log_softmax(logits_fn(x, t), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return jax.grad(total)(x)


@pytree.dataclass
class ClassifierGuidedScore:
    """``score_w(x, t) = score(x, t) + w grad_x log p(y | x, t)``; ``labels`` and ``w`` traced."""

    score_fn: Any
    logits_fn: Any
    labels: Array
    w: Array

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32)), x.shape[:1])
        labels = jnp.broadcast_to(jnp.asarray(self.labels), x.shape[:1])
        g = log_prob_grad(self.logits_fn, x, t, labels)
        return self.score_fn(x, t) + jnp.asarray(self.w, x.dtype) * g.astype(x.dtype)


def classifier_guided_score(score_fn: Callable, logits_fn: Callable, labels: Array, *,
                            w: float = 1.0) -> ClassifierGuidedScore:
    """Guide ``score_fn(x, t)`` towards ``labels`` with ``logits_fn(x, t)`` (a
    ``ClassifierLogitsFn`` or any function of (x, t) returning (B, num_classes) logits).
    Raises ValueError for a non-finite ``w``."""
    check_guidance_scale(w)
    return ClassifierGuidedScore(as_pytree_callable(score_fn), as_pytree_callable(logits_fn),
                                 jnp.asarray(labels), jnp.asarray(w))
