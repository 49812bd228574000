"""Shared helpers for the training tests: a tiny score network and tiny configs."""
import os
import sys

import flax.linen as nn
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


class TinyNet(nn.Module):
    """A two-conv network with a time embedding and dropout, called like the real networks:
    ``apply(variables, x, labels, train=..., rngs={"dropout": k})``."""

    features: int = 8

    @nn.compact
    def __call__(self, x, labels, *, train=False, y=None):
        temb = nn.Dense(self.features)(jnp.sin(labels[:, None] / 100.0 * jnp.arange(1, 5)))
        h = nn.Conv(self.features, (3, 3))(x) + temb[:, None, None, :]
        h = nn.Dropout(0.1, deterministic=not train)(nn.swish(h))
        return nn.Conv(x.shape[-1], (3, 3))(h)


def tiny_config(**overrides):
    """The digits smoke config at 8 x 8, with a few steps and no snapshot sampling."""
    from configs.default_digits import get_config

    config = get_config("dsm_smoke")
    config.data.image_size = 8
    config.model.ch_mult = (1, 2)
    config.model.attn_resolutions = (4,)
    config.training.n_iters = 4
    config.training.snapshot_sampling = False
    config.training.log_freq = 1
    config.training.eval_freq = 2
    config.training.snapshot_freq = 4
    config.training.snapshot_freq_for_preemption = 2
    return apply_overrides(config, overrides)


def apply_overrides(config, overrides: dict):
    """``{"section__key": value}`` -> ``config.section.key = value`` (in place); returns config."""
    for k, v in overrides.items():
        sec, key = k.split("__")
        config[sec][key] = v
    return config
