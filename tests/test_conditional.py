"""Class-conditional training and classifier-free guided sampling through the config / CLI layer
(issue #13 items 1-2): pred_w = (1 - w) pred(x | null) + w pred(x | y), null label num_classes."""
import importlib.util
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import config as config_lib
from score_jax import sample_lib
from score_jax.sde import VPSDE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NC = 4
SHAPE = (8, 4, 4, 1)


def load(arg=None):
    spec = importlib.util.spec_from_file_location("cfg_digits_cond",
                                                  os.path.join(ROOT, "configs/digits_cond.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


CALLS = []  # batch sizes of the executed network calls of _CountingNet(count=True)


class _CountingNet(nn.Module):
    """A tiny label-conditional network; with ``count`` every executed call appends its batch
    size to CALLS (jax.debug.callback: counts calls inside scans / while loops, not traces)."""

    num_classes: int
    count: bool = False

    @nn.compact
    def __call__(self, x, labels, *, train=False, y=None):
        if self.count:
            jax.debug.callback(lambda b: CALLS.append(int(b)), jnp.asarray(x.shape[0]))
        h = nn.Dense(16)(x.reshape(x.shape[0], -1)) + nn.Dense(16)(labels[:, None] / 999.0)
        h = h + nn.Embed(self.num_classes + 1, 16)(y)
        return nn.Dense(int(np.prod(x.shape[1:])))(nn.silu(h)).reshape(x.shape)


def _params(model):
    x = jnp.zeros(SHAPE)
    return model.init(jax.random.key(1), x, jnp.ones(SHAPE[0]), y=jnp.zeros(SHAPE[0], jnp.int32)
                      )["params"]


def _draw(model, params, method, options, **kw):
    return sample_lib.sample_images(jax.random.key(3), VPSDE(), model, params, continuous=True,
                                    shape=SHAPE, method=method, options=options, centered=True,
                                    num_classes=NC, **kw)


@pytest.mark.parametrize("method,options", [("ddim", {"num_steps": 3}),
                                            ("flow", {"solver": "euler", "num_steps": 3})])
def test_w1_is_conditional_and_w0_is_unconditional(method, options):
    model = _CountingNet(NC)
    params = _params(model)
    labels = np.asarray([0, 1, 2, 3, 3, 2, 1, 0])
    cond, _ = _draw(model, params, method, options, labels=labels)
    w1, _ = _draw(model, params, method, options, labels=labels, guidance_scale=1.0)
    np.testing.assert_allclose(w1, cond, atol=1e-5)
    null, _ = _draw(model, params, method, options, class_label=NC)  # the null label
    w0, _ = _draw(model, params, method, options, labels=labels, guidance_scale=0.0)
    np.testing.assert_allclose(w0, null, atol=1e-5)
    w3, _ = _draw(model, params, method, options, labels=labels, guidance_scale=3.0)
    assert np.abs(w3 - cond).max() > 1e-3  # guidance changes the samples


def test_one_batched_call_of_2b_per_step():
    sink = CALLS
    sink.clear()
    model = _CountingNet(NC, count=True)
    params = _params(model)
    jax.effects_barrier()
    sink.clear()  # the init call
    labels = np.arange(SHAPE[0]) % NC
    _, nfe = _draw(model, params, "ddim", {"num_steps": 5}, labels=labels, guidance_scale=2.0)
    jax.effects_barrier()
    assert nfe == 5
    assert sink == [2 * SHAPE[0]] * 5
    sink.clear()
    _, nfe = _draw(model, params, "ddim", {"num_steps": 5}, labels=labels)
    jax.effects_barrier()
    assert sink == [SHAPE[0]] * 5  # plain conditional: B per step


def test_edm_guidance_through_built_score_factory():
    """EDM (and DSM) models guide through Built.make_score_fn; w = 1 equals conditional."""
    spec = importlib.util.spec_from_file_location("cfg_edm",
                                                  os.path.join(ROOT, "configs/edm/digits_edm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("smoke")
    config.model.num_classes = 10
    config.data.image_size = 4
    config.sampling.method = "heun"
    config.sampling.num_steps = 3
    model = _CountingNet(10)
    built = config_lib.build(config, model=model)
    assert config_lib.label_dropout_from_config(config) == 0.1  # default when conditional
    params = model.init(jax.random.key(1), jnp.zeros(SHAPE), jnp.ones(8),
                        y=jnp.zeros(8, jnp.int32))["params"]
    labels = np.arange(8) % 10
    kw = dict(labels=labels, mesh=None)
    cond, _ = sample_lib.sample_built(jax.random.key(0), built, params, 8, guidance_scale=None,
                                      **kw)
    w1, _ = sample_lib.sample_built(jax.random.key(0), built, params, 8, guidance_scale=1.0, **kw)
    np.testing.assert_allclose(w1, cond, atol=1e-5)


def test_config_defaults_and_validation():
    config = load()
    assert config.model.num_classes == 10 and config.sampling.guidance_scale == 2.0
    config_lib.validate_config(config, num_devices=8)
    assert config_lib.label_dropout_from_config(config) == 0.1
    config.training.label_dropout = None
    assert config_lib.label_dropout_from_config(config) == 0.1
    config.training.label_dropout = 0.0  # explicit 0 is kept
    assert config_lib.label_dropout_from_config(config) == 0.0
    config.model.num_classes = None
    config.training.label_dropout = None
    assert config_lib.label_dropout_from_config(config) == 0.0
    with pytest.raises(ValueError, match=r"guidance_scale=2.0 needs a class-conditional"):
        config_lib.validate_config(config, num_devices=8)
    dit = load("dit")
    config_lib.validate_config(dit, num_devices=8)
    assert config_lib.model_from_config(dit).__class__.__name__ == "DiT"
    with pytest.raises(ValueError, match="unknown config variant 'x'"):
        load("x")


def test_labels_parsing_and_grid():
    np.testing.assert_array_equal(sample_lib.parse_labels("3,3,7", 10), [3, 3, 7])
    with pytest.raises(ValueError, match=r"labels \[10, 12\] out of range; valid labels: 0..9"):
        sample_lib.parse_labels("3,10,12", 10)
    with pytest.raises(ValueError, match="comma-separated integers"):
        sample_lib.parse_labels("3,a", 10)
    with pytest.raises(ValueError, match="not class-conditional"):
        sample_lib.parse_labels("3", None)
    np.testing.assert_array_equal(sample_lib.grid_labels(3, 2), [0, 0, 1, 1, 2, 2])
    config = load()
    labels, nrow, n = sample_lib.resolve_labels(config, per_class=4)
    assert n == 40 and nrow == 4 and list(labels[:5]) == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="either --labels or --per_class"):
        sample_lib.resolve_labels(config, labels="1", per_class=2)
    # --num_samples=0 is an error, not "the config's default" (0 is falsy)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"num_samples={bad} must be positive"):
            sample_lib.resolve_labels(config, num_samples=bad)
    assert sample_lib.resolve_labels(config)[2] == config.sampling.num_samples


def test_sample_cli_rejects_out_of_range_labels_before_compiling(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"),
                        f"--config={ROOT}/configs/digits_cond.py:smoke", f"--workdir={tmp_path}",
                        "--labels=3,3,11"], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "labels [11] out of range; valid labels: 0..9" in r.stderr


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_smoke_training_snapshot_rows_are_classes(tmp_path, monkeypatch):
    from score_jax import train_lib

    seen = {}
    real = sample_lib.sample_built

    def spy(*a, **kw):
        seen["labels"] = kw.get("labels")
        return real(*a, **kw)

    monkeypatch.setattr(sample_lib, "sample_built", spy)
    config = load("smoke")
    config.training.n_iters = 2
    config.training.snapshot_freq = 2
    config.sampling.num_steps = 2
    train_lib.train_and_evaluate(config, str(tmp_path), model=_CountingNet(10))  # tiny network
    np.testing.assert_array_equal(seen["labels"], np.repeat(np.arange(10), 2))
    from PIL import Image

    png = Image.open(tmp_path / "samples" / "iter_2" / "samples.png")
    scale = 64 // 8
    assert png.size == ((2 * 10 + 2) * scale, (10 * 10 + 2) * scale)  # 2 columns, 10 rows
