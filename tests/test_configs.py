"""Every config file loads, validates, and builds its network shape-only (jax.eval_shape)."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import ROOT

from score_jax import config as config_lib
from score_jax import train_step

CONFIG_FILES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                                                recursive=True)
    if not os.path.basename(p).startswith("__") and os.path.basename(p) not in ("common.py",
                                                                                "models.py"))

# Every configuration of the reference (score_sde configs/) must be present.
REFERENCE = [
    "ve/cifar10_ncsnpp", "ve/cifar10_ncsnpp_continuous", "ve/cifar10_ncsnpp_deep_continuous",
    "ve/cifar10_ddpm", "ve/celeba_ncsnpp", "ve/bedroom_ncsnpp_continuous",
    "ve/church_ncsnpp_continuous", "ve/ffhq_256_ncsnpp_continuous",
    "ve/celebahq_256_ncsnpp_continuous", "ve/celebahq_ncsnpp_continuous",
    "ve/ffhq_ncsnpp_continuous", "ve/ncsn/cifar10", "ve/ncsn/cifar10_124", "ve/ncsn/cifar10_1245",
    "ve/ncsn/cifar10_5", "ve/ncsn/celeba", "ve/ncsn/celeba_124", "ve/ncsn/celeba_1245",
    "ve/ncsn/celeba_5", "ve/ncsnv2/cifar10", "ve/ncsnv2/celeba", "ve/ncsnv2/bedroom",
    "vp/cifar10_ddpmpp", "vp/cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_deep_continuous",
    "vp/cifar10_ncsnpp", "vp/cifar10_ncsnpp_continuous", "vp/cifar10_ncsnpp_deep_continuous",
    "vp/ddpm/cifar10", "vp/ddpm/cifar10_continuous", "vp/ddpm/celebahq", "vp/ddpm/church",
    "vp/ddpm/bedroom", "subvp/cifar10_ddpm_continuous", "subvp/cifar10_ddpmpp_continuous",
    "subvp/cifar10_ddpmpp_deep_continuous", "subvp/cifar10_ncsnpp_continuous",
    "subvp/cifar10_ncsnpp_deep_continuous",
]


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location("cfg_" + path.replace("/", "_")[:-3],
                                                  os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg is not None else mod.get_config()


def test_all_reference_configs_present():
    have = {p[len("configs/"):-3] for p in CONFIG_FILES}
    missing = [r for r in REFERENCE if r not in have]
    assert not missing, missing
    assert len(CONFIG_FILES) >= len(REFERENCE) + 4  # + default_{cifar10,celeba,lsun,digits}


_SEEN: dict = {}
_WITH_GET_CONFIG = [p for p in CONFIG_FILES if "get_config" in open(os.path.join(ROOT, p)).read()]


def _build_shape_only(cfg):
    model = config_lib.model_from_config(cfg)
    shape = (cfg.data.image_size, cfg.data.image_size, cfg.data.num_channels)
    key = (repr(model), shape)
    if key not in _SEEN:  # many configs share a network: trace each one once
        tx, _ = config_lib.optimizer_from_config(cfg)
        state = jax.eval_shape(lambda k: train_step.init_state(k, model, tx, shape),
                               jax.random.key(0))
        out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2,) + shape),
                                                   jnp.ones((2,)), train=False), state.params)
        n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
        _SEEN[key] = (out.shape, n)
    out_shape, n_params = _SEEN[key]
    assert out_shape == (2,) + shape
    assert n_params > 1000
    return n_params


@pytest.mark.parametrize("path", _WITH_GET_CONFIG)
def test_config_loads_validates_and_smoke_builds(path):
    """Full and smoke variants load and validate; the smoke network builds shape-only."""
    config = load(path)
    config_lib.validate_config(config, num_devices=8)
    smoke = load(path, "smoke")
    config_lib.validate_config(smoke, num_devices=8)
    assert smoke.training.n_iters <= 10 and smoke.data.dataset == "DIGITS"
    assert smoke.model.name == config.model.name and smoke.training.sde == config.training.sde
    _build_shape_only(smoke)


@pytest.mark.slow
@pytest.mark.parametrize("path", _WITH_GET_CONFIG)
def test_config_full_model_builds_shape_only(path):
    """The published network of every config builds shape-only (slow: ~3 min on 2 cores)."""
    _build_shape_only(load(path))


def test_cifar10_ddpmpp_full_model_builds_shape_only():
    n = _build_shape_only(load("configs/vp/cifar10_ddpmpp_continuous.py"))
    assert 65e6 > n > 55e6  # DDPM++ cont. (VP) on CIFAR-10: 61.8M parameters


def test_reference_hyperparameters():
    c = load("configs/ve/cifar10_ncsnpp_continuous.py")
    assert (c.training.batch_size, c.training.n_iters, c.optim.lr, c.optim.warmup,
            c.optim.grad_clip, c.model.ema_rate, c.sampling.snr) == (128, 1300001, 2e-4, 5000, 1.0,
                                                                     0.999, 0.16)
    c = load("configs/vp/cifar10_ddpmpp_deep_continuous.py")
    assert (c.training.n_iters, c.model.num_res_blocks, c.model.ema_rate, c.data.centered,
            c.training.reduce_mean) == (950001, 8, 0.9999, True, True)
    c = load("configs/ve/ffhq_ncsnpp_continuous.py")
    assert (c.model.sigma_max, c.model.num_scales, c.data.image_size, c.model.nf) == (
        1348.0, 2000, 1024, 16)
    c = load("configs/ve/ncsnv2/cifar10.py")
    assert (c.model.name, c.model.num_scales, c.optim.lr, c.optim.grad_clip,
            c.sampling.corrector) == ("ncsnv2_64", 232, 1e-4, -1.0, "ald")


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown config variant 'tiny'; valid choices"):
        load("configs/vp/cifar10_ddpmpp_continuous.py", "tiny")
