"""EDM: preconditioned denoisers and their training losses (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Table 1 and Sec. 5; NVlabs/edm
``training/networks.py`` (EDMPrecond / VPPrecond / VEPrecond) and ``training/loss.py``).

A denoiser D(y; sigma) estimates E[x0 | y], y = x0 + sigma n, n ~ N(0, I). Any backbone F of the
project (DDPM++, NCSN++, DDPM, DiT: a flax module ``F(x, labels, *, train)``) becomes one through
a preconditioning (EDM eq. 7)

    D(y; sigma) = c_skip(sigma) y + c_out(sigma) F(c_in(sigma) y; c_noise(sigma)),

with (EDM Table 1; sd = ``sigma_data``):

    precond  c_skip              c_out                     c_in                c_noise
    "edm"    sd^2/(sigma^2+sd^2) sigma sd/sqrt(sigma^2+sd^2) 1/sqrt(sigma^2+sd^2) ln(sigma)/4
    "vp"     1                   -sigma                    1/sqrt(sigma^2+1)    (M-1) t_VP(sigma)
    "ve"     1                   sigma                     1                    ln(sigma/2)

where VP's sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) and
t_VP(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d: the VP
preconditioning is exactly the continuous VP SDE's eps-prediction with label 999 t (Score SDE), and
"ve" the VE SDE's sigma-scaled score network, so the same trainer reproduces the Score SDE
parameterisations in EDM form.

Losses (EDM Table 1 "Training"; ``training/loss.py``), per example

    lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2,

    "edm": ln sigma ~ N(P_mean, P_std^2),                     lambda = (sigma^2 + sd^2)/(sigma sd)^2
    "vp":  sigma = sigma_VP(t), t ~ U(epsilon_t, 1),          lambda = 1 / sigma^2
    "ve":  ln sigma ~ U(ln sigma_min, ln sigma_max),          lambda = 1 / sigma^2

summed over the dimensions of an example (EDM's ``loss.sum()``; ``reduce_mean=True`` takes the mean
instead) and averaged over the batch.

Samplers: a denoiser defines the score of every Gaussian path x_t = a_t x0 + s_t z of the project
(``sde.marginal_coeffs``): with sigma = s_t / a_t and y = x_t / a_t,

    score(x_t, t) = (a_t D(x_t / a_t; s_t / a_t) - x_t) / s_t^2         (``edm_score_fn``)

(Tweedie: D(y; sigma) = y + sigma^2 grad_y log p(y; sigma)), so every sampler, likelihood and
guidance function of the package works with an EDM model. The natural pairing for "edm" is
``VESDE(sigma_min=0.002, sigma_max=80)`` (a_t = 1, s_t = sigma: the EDM sampler's sigma range; the
``heun`` sampler on the ``"edm"`` grid is then EDM's Algorithm 1); ``sampling_sde`` returns it.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from score_jax import pytree
from score_jax.sde import VESDE, VPSDE, batch_mul

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Preconditionings (EDM Table 1)
# ----------------------------------------------------------------------------------------------
@pytree.dataclass
class EDMPrecond:
    """EDM's preconditioning (Table 1, "Ours"; ``training/networks.py::EDMPrecond``):

        c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,     sd = sigma_data.

    These make the network's input and training target unit-variance for data of std sigma_data
    (EDM App. B.6). ``sigma_min`` / ``sigma_max`` are the sampling range (EDM: 0.002, 80).
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    name = "edm"

    def coeffs(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape, > 0)."""
        sd2 = jnp.square(self.sigma_data)
        r = jnp.sqrt(jnp.square(sigma) + sd2)
        return sd2 / jnp.square(r), sigma * self.sigma_data / r, 1.0 / r, jnp.log(sigma) / 4.0

    def sampling_sde(self) -> VESDE:
        """VESDE(sigma_min, sigma_max): a_t = 1, s_t = sigma (EDM's sampling range)."""
        return VESDE(sigma_min=self.sigma_min, sigma_max=self.sigma_max)


@pytree.dataclass
class VPPrecond:
    """EDM's VP preconditioning (Table 1, "VP"; ``training/networks.py::VPPrecond``):

        c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma),
        sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1),
        t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d.

    With beta_d = beta_max - beta_min this is the continuous VPSDE(beta_min, beta_max): sigma(t) =
    s_t / a_t, c_in y = x_t, F predicts eps, and c_noise = 999 t is the Score SDE label.
    """

    beta_d: float = 19.9
    beta_min: float = 0.1
    epsilon_t: float = 1e-5
    M: int = struct.field(pytree_node=False, default=1000)

    name = "vp"

    def sigma(self, t: Array) -> Array:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        return jnp.sqrt(jnp.expm1(0.5 * self.beta_d * jnp.square(t) + self.beta_min * t))

    def sigma_inv(self, sigma: Array) -> Array:
        """t(sigma), the inverse of ``sigma``."""
        return (jnp.sqrt(self.beta_min**2 + 2 * self.beta_d * jnp.log1p(jnp.square(sigma)))
                - self.beta_min) / self.beta_d

    def coeffs(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma``."""
        return (jnp.ones_like(sigma), -sigma, 1.0 / jnp.sqrt(jnp.square(sigma) + 1.0),
                (self.M - 1) * self.sigma_inv(sigma))

    def sampling_sde(self) -> VPSDE:
        """VPSDE(beta_min, beta_min + beta_d): the same path (s_t / a_t = sigma(t))."""
        return VPSDE(beta_min=self.beta_min, beta_max=self.beta_min + self.beta_d)


@pytree.dataclass
class VEPrecond:
    """EDM's VE preconditioning (Table 1, "VE"; ``training/networks.py::VEPrecond``):

        c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2).
    """

    sigma_min: float = 0.02
    sigma_max: float = 100.0

    name = "ve"

    def coeffs(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma``."""
        return jnp.ones_like(sigma), sigma, jnp.ones_like(sigma), jnp.log(0.5 * sigma)

    def sampling_sde(self) -> VESDE:
        """VESDE(sigma_min, sigma_max)."""
        return VESDE(sigma_min=self.sigma_min, sigma_max=self.sigma_max)


PRECONDS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}


def get_precond(name: str, **kwargs):
    """Build a preconditioning by name ("edm", "vp", "ve"); ``kwargs`` are its fields.

    Raises ValueError for an unknown name.
    """
    if name not in PRECONDS:
        raise ValueError(f"Unknown EDM preconditioning {name!r}; valid choices: {list(PRECONDS)}")
    return PRECONDS[name](**kwargs)


def precond_for_sde(name: str, sde, *, sigma_data: float = 0.5):
    """The preconditioning ``name`` matched to the sampling SDE (the trainer's one-line boundary):
    "edm" -> EDMPrecond(sigma_data, sigma range of a VESDE, else EDM's 0.002 / 80);
    "vp" -> VPPrecond(beta_d = beta_max - beta_min, beta_min) of a VPSDE;
    "ve" -> VEPrecond(sigma_min, sigma_max) of a VESDE.

    Raises ValueError for an unknown name or an SDE of the wrong family for "vp" / "ve".
    """
    if name not in PRECONDS:
        raise ValueError(f"Unknown EDM preconditioning {name!r}; valid choices: {list(PRECONDS)}")
    if name == "edm":
        if isinstance(sde, VESDE):
            return EDMPrecond(sigma_data=sigma_data, sigma_min=sde.sigma_min,
                              sigma_max=sde.sigma_max)
        return EDMPrecond(sigma_data=sigma_data)
    if name == "vp":
        if not isinstance(sde, VPSDE) or type(sde).__name__ != "VPSDE":
            raise ValueError(f"precond 'vp' needs a VPSDE; got {type(sde).__name__}")
        return VPPrecond(beta_d=sde.beta_max - sde.beta_min, beta_min=sde.beta_min)
    if not isinstance(sde, VESDE):
        raise ValueError(f"precond 've' needs a VESDE; got {type(sde).__name__}")
    return VEPrecond(sigma_min=sde.sigma_min, sigma_max=sde.sigma_max)


# ----------------------------------------------------------------------------------------------
# The denoiser and its score
# ----------------------------------------------------------------------------------------------
@pytree.dataclass
class EDMDenoiser:
    """D(y; sigma) = c_skip y + c_out F(c_in y; c_noise) for a flax backbone F (EDM eq. 7).

    A pytree (preconditioning parameters and network variables are leaves), so samplers jit over it.
    ``model.apply(variables, x, labels, train=..., **model_kwargs)`` is called with
    labels = c_noise, or exp(c_noise) when ``log_label`` (for backbones that embed log(label), as
    NCSN++ with ``embedding_type="fourier"`` does: it then sees c_noise, as in EDM). Set the
    backbone's ``scale_by_sigma`` off: the preconditioning does the scaling.

    Call: ``D(y, sigma)`` with y (B, ...) and sigma (B,) or scalar; returns y's shape and dtype.
    """

    precond: Any
    variables: Any
    model: nn.Module = struct.field(pytree_node=False)
    train: bool = struct.field(pytree_node=False, default=False)
    log_label: bool = struct.field(pytree_node=False, default=False)
    dropout_key: Any = None
    model_kwargs: Any = None  # e.g. {"y": class labels}; leaves are traced

    def __call__(self, y: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, y.dtype), y.shape[:1])
        c_skip, c_out, c_in, c_noise = self.precond.coeffs(sigma)
        labels = jnp.exp(c_noise) if self.log_label else c_noise
        rngs = {"dropout": self.dropout_key} if (self.train and self.dropout_key is not None) else None
        out = self.model.apply(self.variables, batch_mul(c_in, y), labels, train=self.train,
                               rngs=rngs, **dict(self.model_kwargs or {}))
        if out.shape != y.shape:
            raise ValueError(f"network output shape {out.shape} does not match input shape {y.shape}")
        return (batch_mul(c_skip, y) + batch_mul(c_out, out.astype(y.dtype))).astype(y.dtype)


def _as_pytree(fn: Callable) -> Any:
    leaves = jax.tree_util.tree_leaves(fn)
    if len(leaves) == 1 and leaves[0] is fn:  # a plain function, not a pytree node
        return jax.tree_util.Partial(fn)
    return fn


@pytree.dataclass
class DenoiserScoreFn:
    """``score_fn(x, t)`` of a denoiser D(y; sigma) on the Gaussian path of ``sde``:

        score(x, t) = (a_t D(x / a_t; s_t / a_t) - x) / s_t^2,   (a_t, s_t) = sde.marginal_coeffs(t).
    """

    sde: Any
    denoiser: Any

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        a, s = self.sde.marginal_coeffs(t)
        d = self.denoiser(batch_mul(1.0 / a, x), s / a)
        return batch_mul(1.0 / jnp.square(s), batch_mul(a, d) - x)


def edm_score_fn(denoiser: Callable[[Array, Array], Array], sde) -> DenoiserScoreFn:
    """Turn a denoiser ``D(y, sigma)`` into the pytree ``score_fn(x, t)`` of ``sde``'s path.

    Works for VPSDE, subVPSDE, VESDE (any object with ``marginal_coeffs``). For an "edm" model the
    recommended ``sde`` is ``EDMPrecond().sampling_sde()`` = VESDE(0.002, 80). A plain function is
    wrapped as a static ``jax.tree_util.Partial``; a pytree denoiser (``EDMDenoiser``) stays traced.
    """
    return DenoiserScoreFn(sde, _as_pytree(denoiser))


def get_edm_score_fn(sde, model: nn.Module, variables: Any, precond: Any, *,
                     log_label: bool = False, model_kwargs: dict | None = None) -> DenoiserScoreFn:
    """``score_fn(x, t)`` of a trained EDM backbone on ``sde``'s path: ``edm_score_fn`` of
    ``EDMDenoiser(precond, variables, model)`` (the counterpart of ``score.get_score_fn``)."""
    den = EDMDenoiser(precond, variables, model, False, log_label, None, model_kwargs)
    return edm_score_fn(den, sde)


def denoiser_from_score(score_fn: Callable[[Array, Array], Array], sde) -> Callable:
    """The inverse map: D(y; sigma) = (x + s^2 score(x, t)) / a at x = a y, t = lambda^{-1}(-ln sigma)
    (bisection, ``sampling.fast.inverse_log_snr``); for checks and for using a score model where
    a denoiser is expected."""
    from score_jax.sampling.fast import inverse_log_snr

    def D(y, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, y.dtype), y.shape[:1])
        t = inverse_log_snr(sde, -jnp.log(sigma))
        a, s = sde.marginal_coeffs(t)
        x = batch_mul(a, y)
        return batch_mul(1.0 / a, x + batch_mul(jnp.square(s), score_fn(x, t)))

    return D


# ----------------------------------------------------------------------------------------------
# Losses (EDM Table 1 "Training"; training/loss.py)
# ----------------------------------------------------------------------------------------------
def weighted_denoising_loss(key: Array, denoiser_fn: Callable[[Array, Array], Array], x0: Array,
                            sigma: Array, weight: Array, *, reduce_mean: bool = False
                            ) -> tuple[Array, dict]:
    """lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2 per example, n ~ N(0, I) drawn from ``key``.

    Args: x0 (B, ...); sigma, weight (B,). Reduced over dimensions by sum (EDM) or mean
    (``reduce_mean``), then averaged over the batch.
    Returns ``(loss, {"losses": (B,), "sigma": (B,)})``.
    """
    n = jax.random.normal(key, x0.shape, x0.dtype)
    d = denoiser_fn(x0 + batch_mul(sigma, n), sigma)
    if d.shape != x0.shape:
        raise ValueError(f"denoiser output shape {d.shape} does not match x shape {x0.shape}")
    sq = jnp.square(d - x0).reshape(x0.shape[0], -1)
    per = jnp.mean(sq, -1) if reduce_mean else jnp.sum(sq, -1)
    losses = weight * per
    return jnp.mean(losses), {"losses": losses, "sigma": sigma}


def edm_loss(key: Array, denoiser_fn: Callable[[Array, Array], Array], x0: Array, *,
             p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5,
             reduce_mean: bool = False) -> tuple[Array, dict]:
    """EDM's loss (Sec. 5, Table 1; ``EDMLoss``): ln sigma ~ N(p_mean, p_std^2),
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2; see
    ``weighted_denoising_loss``. For N(0, sigma_data^2 I) data the exact denoiser gives loss 1 per
    dimension at every sigma."""
    if not p_std >= 0 or not sigma_data > 0:
        raise ValueError(f"need p_std >= 0 and sigma_data > 0; got p_std={p_std}, "
                         f"sigma_data={sigma_data}")
    k_s, k_n = jax.random.split(key)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_s, x0.shape[:1], x0.dtype))
    weight = (jnp.square(sigma) + sigma_data**2) / jnp.square(sigma * sigma_data)
    return weighted_denoising_loss(k_n, denoiser_fn, x0, sigma, weight, reduce_mean=reduce_mean)


def vp_loss(key: Array, denoiser_fn: Callable[[Array, Array], Array], x0: Array, *,
            beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5,
            reduce_mean: bool = False) -> tuple[Array, dict]:
    """EDM's VP loss (``VPLoss``): t ~ U(epsilon_t, 1), sigma = sigma_VP(t), lambda = 1 / sigma^2
    (with ``VPPrecond`` this is the continuous VP DSM loss |eps_hat - eps|^2)."""
    k_s, k_n = jax.random.split(key)
    t = 1.0 + jax.random.uniform(k_s, x0.shape[:1], x0.dtype) * (epsilon_t - 1.0)
    sigma = VPPrecond(beta_d, beta_min, epsilon_t).sigma(t)
    return weighted_denoising_loss(k_n, denoiser_fn, x0, sigma, 1.0 / jnp.square(sigma),
                                   reduce_mean=reduce_mean)


def ve_loss(key: Array, denoiser_fn: Callable[[Array, Array], Array], x0: Array, *,
            sigma_min: float = 0.02, sigma_max: float = 100.0,
            reduce_mean: bool = False) -> tuple[Array, dict]:
    """EDM's VE loss (``VELoss``): sigma = sigma_min (sigma_max / sigma_min)^u, u ~ U(0, 1),
    lambda = 1 / sigma^2."""
    k_s, k_n = jax.random.split(key)
    u = jax.random.uniform(k_s, x0.shape[:1], x0.dtype)
    sigma = sigma_min * (sigma_max / sigma_min) ** u
    return weighted_denoising_loss(k_n, denoiser_fn, x0, sigma, 1.0 / jnp.square(sigma),
                                   reduce_mean=reduce_mean)


def precond_loss(key: Array, denoiser_fn: Callable, x0: Array, precond, *, p_mean: float = -1.2,
                 p_std: float = 1.2, reduce_mean: bool = False) -> tuple[Array, dict]:
    """The loss EDM pairs with ``precond``: ``edm_loss`` (sigma_data of the preconditioning),
    ``vp_loss`` or ``ve_loss`` (their parameters)."""
    if isinstance(precond, EDMPrecond):
        return edm_loss(key, denoiser_fn, x0, p_mean=p_mean, p_std=p_std,
                        sigma_data=precond.sigma_data, reduce_mean=reduce_mean)
    if isinstance(precond, VPPrecond):
        return vp_loss(key, denoiser_fn, x0, beta_d=precond.beta_d, beta_min=precond.beta_min,
                       epsilon_t=precond.epsilon_t, reduce_mean=reduce_mean)
    if isinstance(precond, VEPrecond):
        return ve_loss(key, denoiser_fn, x0, sigma_min=precond.sigma_min,
                       sigma_max=precond.sigma_max, reduce_mean=reduce_mean)
    raise ValueError(f"Unknown preconditioning {type(precond).__name__}; valid: "
                     f"{[c.__name__ for c in PRECONDS.values()]}")


def get_edm_loss_fn(
    model: nn.Module,
    precond: Any = "edm",
    *,
    train: bool = True,
    reduce_mean: bool = False,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    log_label: bool = False,
    num_classes: int | None = None,
    label_dropout: float = 0.0,
) -> Callable[[Any, Any, Array], tuple[Array, dict]]:
    """``loss_fn(variables, batch, key) -> (loss, aux)`` for a flax backbone trained in EDM form,
    the contract of ``losses.get_loss_fn``.

    ``precond``: a preconditioning object or its name ("edm", "vp", "ve"; default fields).
    ``batch``: images (B, H, W, C) or a dict with "image" and optionally "label". With
    ``num_classes`` the labels condition the network (keyword ``y``) and are replaced by the null
    label ``num_classes`` with probability ``label_dropout`` (classifier-free guidance training).
    aux: {"losses": (B,), "sigma": (B,)}.
    Raises ValueError for an unknown preconditioning, or a conditional model without labels.
    """
    from score_jax.losses import conditioning

    if isinstance(precond, str):
        precond = get_precond(precond)
    if not isinstance(precond, tuple(PRECONDS.values())):
        raise ValueError(f"Unknown preconditioning {precond!r}; valid choices: {list(PRECONDS)}")
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1]; got {label_dropout}")

    def loss_fn(variables, batch, key):
        key_loss, key_drop, key_lab = jax.random.split(key, 3)
        x0, kwargs = conditioning(batch, key_lab, num_classes=num_classes,
                                  label_dropout=label_dropout)
        den = EDMDenoiser(precond, variables, model, train, log_label, key_drop, kwargs)
        return precond_loss(key_loss, den, x0, precond, p_mean=p_mean, p_std=p_std,
                            reduce_mean=reduce_mean)

    return loss_fn


def gaussian_optimal_loss(sigma: Array, data_std: float, weight: Array) -> Array:
    """Closed form of the loss per dimension at the optimum for N(mu, data_std^2 I) data:
    weight * data_std^2 sigma^2 / (data_std^2 + sigma^2) (the posterior variance of x0 given y)."""
    v = data_std**2
    return weight * v * jnp.square(sigma) / (v + jnp.square(sigma))


def gaussian_denoiser(mean: Array, data_std: float) -> Callable[[Array, Array], Array]:
    """The exact denoiser of N(mean, data_std^2 I) data:
    D*(y; sigma) = mean + data_std^2 / (data_std^2 + sigma^2) (y - mean)."""
    mean = jnp.asarray(mean)

    def D(y, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, y.dtype), y.shape[:1])
        c = data_std**2 / (data_std**2 + jnp.square(sigma))
        return mean.astype(y.dtype) + batch_mul(c, y - mean.astype(y.dtype))

    return D


__all__ = [
    "EDMPrecond", "VPPrecond", "VEPrecond", "PRECONDS", "get_precond", "precond_for_sde",
    "EDMDenoiser", "get_edm_score_fn",
    "DenoiserScoreFn", "edm_score_fn", "denoiser_from_score", "weighted_denoising_loss",
    "edm_loss", "vp_loss", "ve_loss", "precond_loss", "get_edm_loss_fn", "gaussian_denoiser",
    "gaussian_optimal_loss",
]
