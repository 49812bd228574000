"""Config -> plain objects: the SDE, the network, the optimiser, the data pipeline, labels."""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import optax

from score_jax import captions  # noqa: F401  (registers the caption datasets)
from score_jax import data as data_lib
from score_jax import sde as sde_lib
from score_jax import train_step as ts
from score_jax.config.schema import DEFAULT_LABEL_DROPOUT, NO_DATASET


def sde_parameter_keys(name: str) -> tuple[str, ...]:
    """The ``config.model`` keys the SDE ``name`` reads: its declared float parameters
    (``sde.sde_parameters``, e.g. beta_min / beta_max for "vpsde"); ``N`` comes from
    ``model.num_scales``."""
    return sde_lib.sde_parameters(name)


def sde_from_config(config):
    """The forward SDE ``sde.SDES[config.training.sde]`` built from its declared parameters
    (``sde.sde_parameters``), each read from ``config.model.<parameter>`` as a float, and
    ``N = model.num_scales`` when the class has an ``N`` field. Generic over ``SDES``: a
    registered user SDE builds from a config with no change here.

    Raises:
      ValueError: unknown SDE name (the valid names listed), or a parameter missing from
        ``config.model`` (its name and the SDE's parameters listed).
    """
    m = config.model
    name = config.training.sde.lower()
    if name not in sde_lib.SDES:
        raise ValueError(f"training.sde={config.training.sde!r} unknown; valid: "
                         f"{sorted(sde_lib.SDES)}")
    params = sde_parameter_keys(name)
    missing = [p for p in params if m.get(p) is None]
    if missing:
        raise ValueError(f"training.sde={name!r} needs config.model.{missing[0]} (its parameters: "
                         f"{list(params)}); missing: {missing}")
    kwargs = {p: float(m[p]) for p in params}
    if "N" in {f.name for f in dataclasses.fields(sde_lib.SDES[name])}:
        kwargs["N"] = int(m.num_scales)
    return sde_lib.get_sde(name, **kwargs)


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
    ``training``. ``uniform_dequantization`` defaults to ``data.uniform_dequantization``.
    Training pipelines of random-access data run on grain (`data_loader.GrainPipeline`, with
    ``data.num_workers`` worker processes; the same batches for any count); the host shard is
    `data_loader.shard_options`' (``ShardByJaxProcess``). A text-conditional model
    (``model.name="text_conditioned"``) gets its batches' captions as ``"tokens"``
    (``captions.TokenizedPipeline``, on the host, after grain)."""
    from score_jax import data_loader

    d = config.data
    if str(d.dataset).upper() == NO_DATASET:
        raise ValueError(f"config.data.dataset={d.dataset!r} has no data: such a config samples "
                         f"a converted checkpoint only (sample.py); training, bits/dim and "
                         f"evaluate.py need a dataset; valid: {data_lib.dataset_names()}")
    deq = d.uniform_dequantization if uniform_dequantization is None else uniform_dequantization
    shard = data_loader.shard_options()
    ds = data_lib.get_dataset(d.dataset, split=split,
                                batch_size=int(batch_size) // jax.process_count(),
                                image_size=d.image_size, training=training,
                                random_flip=bool(d.random_flip) and training,
                                uniform_dequantization=bool(deq), seed=int(config.seed),
                                category=d.get("category"), data_dir=d.get("data_dir"),
                                tfrecords_path=d.get("tfrecords_path"),
                                num_channels=d.num_channels, path=d.get("path"),
                                process_index=shard.shard_index, process_count=shard.shard_count)
    if training and isinstance(ds, data_lib.RandomAccessPipeline):
        ds = data_loader.GrainPipeline(ds, num_workers=int(d.get("num_workers", 0)))
    if config.model.get("name") == "text_conditioned":  # captions -> tokens, host side
        from score_jax.models.text_conditioned import text_encoder_settings

        s = text_encoder_settings(config.model.get("text_encoder"))
        ds = captions.TokenizedPipeline(ds, captions.get_tokenizer(s["tokenizer"], s["max_length"]))
    return ds


def eval_split(config) -> str:
    """The evaluation split of ``config.data.dataset``: "validation" for CelebA, a registered
    recipe's ``eval_split``, else "test"."""
    key = config.data.dataset.upper()
    if key in data_lib.DATASET_RECIPES:
        return data_lib.DATASET_RECIPES[key].eval_split
    return "validation" if key == "CELEBA" else "test"



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


