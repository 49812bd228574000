"""Config -> plain objects: the SDE, the network, the optimiser, the data pipeline, labels."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import optax

from score_jax import data as data_lib
from score_jax import sde as sde_lib
from score_jax import train_step as ts
from score_jax.config.schema import DEFAULT_LABEL_DROPOUT


def sde_from_config(config):
    """The forward SDE of ``config.training.sde`` with the model's noise parameters."""
    m = config.model
    name = config.training.sde.lower()
    if name in ("vpsde", "subvpsde"):
        return sde_lib.get_sde(name, beta_min=float(m.beta_min), beta_max=float(m.beta_max),
                               N=int(m.num_scales))
    if name == "vesde":
        return sde_lib.get_sde(name, sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max),
                               N=int(m.num_scales))
    raise ValueError(f"training.sde={config.training.sde!r} unknown; valid: {sorted(sde_lib.SDES)}")


def model_from_config(config) -> nn.Module:
    """``models.get_model(config.model, image_size, num_channels, centered)``."""
    from score_jax import models

    return models.get_model(config.model, image_size=config.data.image_size,
                            num_channels=config.data.num_channels,
                            centered=config.data.centered)


def optimizer_from_config(config) -> tuple[optax.GradientTransformation, Callable]:
    """``train_step.make_optimizer`` with ``config.optim``; returns ``(tx, schedule)``."""
    o = config.optim
    return ts.make_optimizer(lr=float(o.lr), beta1=float(o.beta1), eps=float(o.eps),
                             warmup=int(o.warmup), grad_clip=float(o.grad_clip),
                             weight_decay=float(o.weight_decay), optimizer=o.optimizer,
                             lr_decay=o.get("lr_decay", "constant"),
                             decay_steps=int(config.training.n_iters))


def scaled_loss_fn(loss_fn: Callable, centered: bool) -> Callable:
    """``loss_fn`` on batches in [0, 1], scaled to the model's range first (2x - 1 if
    ``centered``; reference ``scaler`` in ``train_step``)."""
    scaler = data_lib.get_data_scaler(centered)

    def fn(variables, batch, key):
        if isinstance(batch, dict):
            batch = dict(batch, image=scaler(batch["image"]))
        else:
            batch = scaler(batch)
        return loss_fn(variables, batch, key)

    return fn


def dataset_from_config(config, split: str, *, batch_size: int, training: bool,
                        uniform_dequantization: bool | None = None):
    """The pipeline of ``split`` of ``config.data`` with this process's share
    (``batch_size // process_count``) of the global ``batch_size``; random flips only when
    ``training``. ``uniform_dequantization`` defaults to ``data.uniform_dequantization``."""
    d = config.data
    deq = d.uniform_dequantization if uniform_dequantization is None else uniform_dequantization
    return data_lib.get_dataset(d.dataset, split=split,
                                batch_size=int(batch_size) // jax.process_count(),
                                image_size=d.image_size, training=training,
                                random_flip=bool(d.random_flip) and training,
                                uniform_dequantization=bool(deq), seed=int(config.seed),
                                category=d.get("category"), data_dir=d.get("data_dir"),
                                tfrecords_path=d.get("tfrecords_path"),
                                num_channels=d.num_channels)


def eval_split(config) -> str:
    """The evaluation split of ``config.data.dataset``: "validation" for CelebA, else "test"."""
    return "validation" if config.data.dataset.upper() == "CELEBA" else "test"



def label_dropout_from_config(config) -> float:
    """``training.label_dropout``; None (unset) means `DEFAULT_LABEL_DROPOUT` (0.1) for a
    class-conditional model (``model.num_classes`` set) and 0 otherwise. An explicit 0.0 is
    kept (a conditional model that cannot be guided)."""
    value = config.training.get("label_dropout")
    if value is None:
        return DEFAULT_LABEL_DROPOUT if config.model.get("num_classes") is not None else 0.0
    return float(value)


def guidance_scale_from_config(config) -> float | None:
    """``sampling.guidance_scale`` w of classifier-free guidance (None: plain conditional)."""
    w = config.sampling.get("guidance_scale")
    return None if w is None else float(w)


