"""Stage-2 sampling decodes with the autoencoder recorded in ``<workdir>/latent.json`` at
training time, whatever the config's (relative) path names in the current folder (issue 26 item
0b: from a folder whose ``workdirs/digits_ae`` held another autoencoder, sample.py exited 0 with
noise), or refuses naming both paths."""
import json
import os

import jax
import numpy as np
import pytest

from score_jax import config as config_lib
from score_jax import latent as latent_lib
from score_jax import models


def _stage2_config():
    from configs.latent.digits_ldm import get_config

    config = get_config("smoke")
    config.latent.autoencoder_checkpoint = "workdirs/digits_ae"  # relative: the configs' default
    config.latent.scale_factor = 0.5  # no first batch to encode
    return config


def _write_autoencoder(folder, seed):
    """A stage-1 workdir (config.json + autoencoder_ema.msgpack) of the smoke autoencoder with
    random weights; returns the parameters."""
    from configs.latent.digits_autoencoder import get_config

    stage1 = get_config("smoke")
    ae_dir = os.path.join(folder, "workdirs", "digits_ae")
    os.makedirs(ae_dir)
    with open(os.path.join(ae_dir, "config.json"), "w") as f:
        f.write(stage1.to_json_best_effort())
    model = models.get_model(stage1.model, image_size=stage1.data.image_size,
                             num_channels=stage1.data.num_channels)
    x = np.zeros((1, stage1.data.image_size, stage1.data.image_size, stage1.data.num_channels))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    latent_lib.export_autoencoder(ae_dir, params)
    return params


def _assert_params_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stage2_sampling_uses_the_recorded_autoencoder(tmp_path, monkeypatch):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    trained_with = _write_autoencoder(a, 0)
    other = _write_autoencoder(b, 1)
    wd = str(tmp_path / "ldm")
    config = _stage2_config()

    monkeypatch.chdir(a)  # "training" from folder a: latent.json records a's autoencoder
    config_lib.resolve_latent_scale_factor(config, wd, lambda: pytest.fail("no batch"))
    monkeypatch.chdir(b)  # sampling from folder b, whose workdirs/digits_ae is another one
    resolved = config_lib.resolve_latent_config(config, wd)
    _, variables, file = config_lib.load_autoencoder_from_config(resolved)
    assert os.path.samefile(file, os.path.join(a, "workdirs", "digits_ae",
                                               latent_lib.AUTOENCODER_FILE))
    _assert_params_equal(variables["params"], trained_with)
    stored = json.load(open(os.path.join(wd, latent_lib.LATENT_FILE)))
    assert stored["autoencoder_checkpoint"] == os.path.join(os.path.realpath(a), "workdirs",
                                                            "digits_ae") or \
        os.path.samefile(stored["autoencoder_checkpoint"], os.path.join(a, "workdirs", "digits_ae"))

    # the config naming the recorded one (absolute) is kept as it is
    config.latent.autoencoder_checkpoint = stored["autoencoder_checkpoint"]
    assert config_lib.resolve_latent_config(config, wd).latent.autoencoder_checkpoint == \
        stored["autoencoder_checkpoint"]
    config.latent.autoencoder_checkpoint = "workdirs/digits_ae"

    # the recorded autoencoder changed (stage 1 retrained): refused, naming both paths
    latent_lib.export_autoencoder(os.path.join(a, "workdirs", "digits_ae"), other)
    with pytest.raises(ValueError, match="trained with") as err:
        config_lib.resolve_latent_config(config, wd)
    assert stored["autoencoder_checkpoint"] in str(err.value)
    assert os.path.join(os.path.realpath(b), "workdirs", "digits_ae") in str(err.value) or \
        os.path.join(b, "workdirs", "digits_ae") in str(err.value)

    # a record without a fingerprint (older latent.json): paths must agree, else refused
    del stored["autoencoder_sha256"]
    with open(os.path.join(wd, latent_lib.LATENT_FILE), "w") as f:
        json.dump(stored, f)
    with pytest.raises(ValueError, match="recorded in"):
        config_lib.resolve_latent_config(config, wd)
