"""Shared config pieces: the base fields every config has (the package schema,
``score_jax.config.base_config``) and the variants of ``get_config(arg)``.

``arg`` (the part after ``:`` in ``--config=configs/vp/cifar10_ddpmpp_continuous.py:smoke``):
- None: the configuration as published;
- "smoke": the same objective, SDE and network family shrunk to run on a CPU in seconds on the
  embedded digits data (no download): tiny network, 16 x 16 images, a few steps.
"""
from score_jax import models
from score_jax.config import base_config as _schema

VARIANTS = (None, "smoke")


def base_config():
    """The fields shared by all configs, with the reference defaults: the package's schema
    (``score_jax.config.base_config``), so the repository's configs and validation agree."""
    return _schema()


def smoke(config):
    """Shrink ``config`` to CPU seconds, keeping its SDE, objective, sampler and network family."""
    config.data.dataset = "DIGITS"
    config.data.image_size = 16
    config.data.category = None
    config.data.tfrecords_path = None
    t = config.training
    t.batch_size = 8
    t.n_iters = 4
    t.snapshot_freq = 4
    t.snapshot_freq_for_preemption = 2
    t.log_freq = 1
    t.eval_freq = 2
    t.snapshot_metric_samples = 8  # the digits metric of the snapshot grid only
    config.eval.batch_size = 8
    config.eval.bpd_max_batches = 1
    config.eval.bpd_num_repeats = 1
    s = config.sampling
    s.num_samples = 8
    # PC walks the SDE's discrete chain: VP's needs N > beta_max = 20 steps (fewer give beta_i >= 1,
    # refused by validation); the other samplers run 4 steps
    s.num_steps = 24 if s.method == "pc" else 4
    s.n_steps_each = 1
    s.rtol = s.atol = 1e-2
    models.smoke_model_config(config.model)  # each network declares its own shrink
    config.optim.warmup = 2
    return config


def apply_variant(config, arg):
    """Apply the variant named ``arg`` (see module doc); unknown names raise ValueError."""
    if arg in (None, "", "None"):
        return config
    if arg == "smoke":
        return smoke(config)
    raise ValueError(f"unknown config variant {arg!r}; valid choices: {list(VARIANTS)}")
