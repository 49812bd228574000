"""Latent diffusion (score_jax.latent): stage 1 (objective "autoencoder") and stage 2 (diffusion
on the latents of a frozen autoencoder) end to end on tiny digits, the scale factor's storage
and reuse, the encoded loss and the bits/dim refusal."""
import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import apply_overrides

from score_jax import checkpoint as ckpt_lib
from score_jax import config as config_lib
from score_jax import latent as latent_lib
from score_jax import models, sample_lib, train_lib
from score_jax import train_step as ts
from score_jax.models import autoencoder as ae_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage1_config():
    from configs.latent.digits_autoencoder import get_config

    return get_config("smoke")


def _stage2_config(ae_dir, arg="smoke"):
    from configs.latent.digits_ldm import get_config

    config = get_config(arg)
    config.latent.autoencoder_checkpoint = ae_dir
    config.sampling.num_steps = 3
    return config


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("latent") / "ae")
    losses = []
    state = train_lib.train_and_evaluate(_stage1_config(), wd,
                                         callbacks=[lambda s, m: losses.append(float(m["loss"]))])
    return wd, state, losses


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_stage1_autoencoder_training(stage1):
    wd, state, losses = stage1
    assert int(state.step) == 4 and len(losses) == 4 and all(np.isfinite(losses))
    # L1 of a 16 x 16 image in [-1, 1] summed per image: between 0 and 2 * 256
    assert 1.0 < losses[0] < 512.0
    d = os.path.join(wd, "samples", "iter_4")
    assert os.path.getsize(os.path.join(d, "reconstructions.png")) > 100
    rec = np.load(os.path.join(d, "reconstructions.npz"))
    assert rec["inputs"].shape == rec["reconstructions"].shape == (8, 16, 16, 1)
    assert ckpt_lib.TrainCheckpointer(wd, read_only=True).all_steps() == [4]
    # the exported EMA autoencoder is the checkpoint's EMA
    exported = ckpt_lib.load_variables(os.path.join(wd, latent_lib.AUTOENCODER_FILE))["params"]
    for a, b in zip(jax.tree_util.tree_leaves(exported),
                    jax.tree_util.tree_leaves(jax.device_get(state.ema_params)), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no sampler"):
        sample_lib.sample_from_checkpoint(_stage1_config(), workdir=wd)


@pytest.mark.slow  # ~3 min on a loaded 2-core CPU: stage 2 training + sampling
def test_stage2_on_stage1_checkpoint_then_decode(stage1, tmp_path):
    ae_dir = stage1[0]
    config = _stage2_config(ae_dir)
    wd = str(tmp_path / "ldm")
    losses = []
    state = train_lib.train_and_evaluate(config, wd,
                                         callbacks=[lambda s, m: losses.append(float(m["loss"]))])
    assert int(state.step) == 4 and all(np.isfinite(losses))
    # the scale factor: 1 / std (ddof 1) of the posterior means of the first training batch
    stored = json.load(open(os.path.join(wd, latent_lib.LATENT_FILE)))
    model, variables, _ = config_lib.load_autoencoder_from_config(config)
    first = next(config_lib.dataset_from_config(config, "train", training=True,
                                                batch_size=config.training.batch_size
                                                ).iterate(0))["image"]
    mean, _ = model.apply(variables, 2.0 * jnp.asarray(first) - 1.0, method="encode")
    np.testing.assert_allclose(stored["scale_factor"], 1.0 / np.std(np.asarray(mean), ddof=1),
                               rtol=1e-5)
    assert stored["latent_shape"] == [8, 8, 2]
    # the diffusion network sees latents: its parameters were initialised on (8, 8, 2)
    built = config_lib.build(config_lib.resolve_latent_config(config, wd))
    assert built.image_shape == (8, 8, 2) and built.latent.scale_factor == stored["scale_factor"]
    # snapshot samples and sample.py's function decode to images in [0, 1]
    snap = np.load(os.path.join(wd, "samples", "iter_4", "samples.npz"))["samples"]
    assert snap.shape == (8, 16, 16, 1)
    out = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=5,
                                            output_dir=str(tmp_path / "s"))
    assert out["images"].shape == (5, 16, 16, 1) and out["num_nonfinite"] == 0
    assert 0.0 <= out["images"].min() and out["images"].max() <= 1.0
    assert os.path.getsize(out["png"]) > 100
    # the stored scale factor is reused (a different config value is overridden, with a warning)
    config.latent.scale_factor = 123.0
    assert config_lib.resolve_latent_config(config, wd).latent.scale_factor == stored["scale_factor"]
    # bits/dim are refused
    with pytest.raises(ValueError, match="bits/dim do not apply to a latent diffusion model"):
        sample_lib.bpd_from_checkpoint(config, workdir=wd)
    with pytest.raises(ValueError, match="bits/dim do not apply"):
        sample_lib.make_bpd_fn(built, rtol=1e-2, atol=1e-2)
    # evaluate.py's function on the latent workdir: eval loss on encoded test digits, decoded
    # samples scored by the digits metric (the same as the pixel models')
    from score_jax.evaluation.workdir import evaluate_workdir

    config.latent.scale_factor = None
    config.eval.enable_sampling = True
    config.eval.batch_size = 8
    out = evaluate_workdir(config_lib.resolve_latent_config(config, wd), wd, num_samples=8,
                           begin_step=1, end_step=4, progress=False)
    report = out["reports"][4]
    assert np.isfinite(report["eval_loss"]) and report["eval_loss"] > 0
    assert report["num_samples_drawn"] == 8 and "bpd" not in report
    assert np.isfinite(report["digits_fd"]) and report["digits_fd"] > 0


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
@pytest.mark.parametrize("variant", ["flow", "cfg", "dit", "dit,cfg"])
def test_stage2_variants_train_and_decode(stage1, tmp_path, variant):
    """Every documented stage-2 variant (flow matching, class-conditional with CFG, a DiT
    backbone) trains on the stage-1 latents and samples decoded digits."""
    config = _stage2_config(stage1[0], "smoke," + variant)
    config.training.n_iters = 2
    config.training.snapshot_sampling = False
    wd = str(tmp_path / variant)
    losses = []
    state = train_lib.train_and_evaluate(config, wd,
                                         callbacks=[lambda s, m: losses.append(float(m["loss"]))])
    assert int(state.step) == 2 and len(losses) == 2 and all(np.isfinite(losses))
    built = config_lib.build(config_lib.resolve_latent_config(config, wd))
    assert built.image_shape == (8, 8, 2)
    out = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=3,
                                            output_dir=str(tmp_path / (variant + "_s")))
    assert out["images"].shape == (3, 16, 16, 1) and out["num_nonfinite"] == 0
    assert 0.0 <= out["images"].min() and out["images"].max() <= 1.0


@pytest.mark.slow  # a subprocess importing jax
def test_sample_cli_refuses_bpd(stage1, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"),
           "--config=" + os.path.join(ROOT, "configs/latent/digits_ldm.py") + ":smoke",
           f"--config.latent.autoencoder_checkpoint={stage1[0]}", "--mode=bpd",
           f"--workdir={tmp_path}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0
    assert "bits/dim do not apply to a latent diffusion model" in r.stderr


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_scale_factor_from_config_or_stored(stage1, tmp_path):
    config = _stage2_config(stage1[0])
    config.latent.scale_factor = 0.5
    out = config_lib.resolve_latent_scale_factor(config, str(tmp_path), lambda: pytest.fail("no batch"))
    assert out.latent.scale_factor == 0.5
    config.latent.scale_factor = None  # a resumed run reads latent.json, never a new batch
    out = config_lib.resolve_latent_scale_factor(config, str(tmp_path), lambda: pytest.fail("no batch"))
    assert out.latent.scale_factor == 0.5


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_encoded_loss_and_eval_reconstruction_error():
    """The stage-2 loss is the inner loss of scale * mean(q(z | 2x - 1)); the stage-1 eval loss
    is sum |x - D(mean)| averaged over the batch (independent numpy computation)."""
    model = ae_lib.AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1,
                                 latent_channels=2, norm_num_groups=4, num_channels=1)
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    variables = model.init(jax.random.key(1), x)
    space = latent_lib.latent_space(model, variables, 0.7, 8)
    seen = {}

    def inner(v, batch, key):
        seen["z"], seen["v"] = batch["image"], v
        return jnp.sum(batch["image"] ** 2), {}

    # the weights are read from variables["frozen"]["autoencoder"]; the inner loss sees the rest
    fn = latent_lib.encoded_loss_fn(inner, space)
    fn({"params": 1, "frozen": {"autoencoder": variables}}, {"image": x}, jax.random.key(2))
    assert seen["v"] == {"params": 1}
    loss, _ = fn({"params": 1, "frozen": {"autoencoder": variables, "other": 2}}, {"image": x},
                 jax.random.key(2))
    assert seen["v"] == {"params": 1, "frozen": {"other": 2}}
    mean, _ = model.apply(variables, 2 * x - 1, method="encode")
    np.testing.assert_allclose(np.asarray(seen["z"]), 0.7 * np.asarray(mean), rtol=1e-6)
    np.testing.assert_allclose(float(loss), np.sum((0.7 * np.asarray(mean)) ** 2), rtol=1e-5)
    assert space.latent_shape == (4, 4, 2)
    np.testing.assert_allclose(np.asarray(space.decode(seen["z"])),
                               np.asarray(model.apply(variables, mean, method="decode")),
                               rtol=1e-5, atol=1e-6)

    xs = 2 * x - 1
    ev = latent_lib.autoencoder_objective(model, kl_weight=1.0, reconstruction="l1", train=False)
    rec, aux = ev(variables, {"image": xs}, None)
    x_rec = np.asarray(model.apply(variables, mean, method="decode"))
    want = np.mean(np.sum(np.abs(x_rec - np.asarray(xs)), axis=(1, 2, 3)))
    np.testing.assert_allclose(float(rec), want, rtol=1e-5)
    ev2 = latent_lib.autoencoder_objective(model, kl_weight=1.0, reconstruction="l2", train=False)
    want2 = np.mean(np.sum((x_rec - np.asarray(xs)) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(float(ev2(variables, xs, None)[0]), want2, rtol=1e-5)
    sf = latent_lib.compute_scale_factor(model, variables, np.asarray(x))
    np.testing.assert_allclose(sf, 1.0 / np.std(np.asarray(mean), ddof=1), rtol=1e-5)


def test_validation_errors(tmp_path):
    config = _stage1_config()
    config.model.name = "ncsnpp"
    with pytest.raises(ValueError, match="autoencoder objective trains model"):
        config_lib.validate_config(config)
    config = _stage1_config()
    config.training.reconstruction = "l3"
    with pytest.raises(ValueError, match="reconstruction='l3'"):
        config_lib.validate_config(config)
    config = _stage2_config(str(tmp_path / "missing"))
    config_lib.validate_config(config)  # the path is checked when the autoencoder is loaded
    with pytest.raises(ValueError, match="does not exist"):
        config_lib.build(config)
    config = _stage2_config(str(tmp_path))
    with pytest.raises(ValueError, match="has no autoencoder_ema.msgpack"):
        config_lib.load_autoencoder_from_config(config)
    config.latent.scale_factor = -1.0
    with pytest.raises(ValueError, match="scale_factor=-1.0 must be > 0"):
        config_lib.validate_config(config)
    from configs.latent.digits_ldm import get_config
    with pytest.raises(ValueError, match="unknown digits_ldm variant"):
        get_config("bogus")


# ----------------------------------------------------------------------------------------------
# The frozen autoencoder is the steps' frozen argument (issue 22 item 1), on a random stage 1
# ----------------------------------------------------------------------------------------------
def _random_stage2(folder, **overrides):
    """A stage-2 smoke config on a stage-1 workdir (config.json + autoencoder_ema.msgpack) of the
    smoke autoencoder with random weights (no stage-1 training); ``overrides`` "a__b" -> a.b."""
    stage1 = _stage1_config()
    ae_dir = os.path.join(str(folder), "ae")
    if not os.path.isdir(ae_dir):
        os.makedirs(ae_dir)
        with open(os.path.join(ae_dir, "config.json"), "w") as f:
            f.write(stage1.to_json_best_effort())
        model = models.get_model(stage1.model, image_size=stage1.data.image_size,
                                 num_channels=stage1.data.num_channels)
        x = np.zeros((1, stage1.data.image_size, stage1.data.image_size, 1), np.float32)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
        rng = np.random.default_rng(0)
        params = jax.tree_util.tree_map(
            lambda s: (0.2 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
        latent_lib.export_autoencoder(ae_dir, params)
    config = _stage2_config(ae_dir)
    config.latent.scale_factor = 0.5
    config.training.batch_size = 8
    return apply_overrides(config, overrides)


_BYTES = {"f64": 8, "i64": 8, "ui64": 8, "f32": 4, "i32": 4, "ui32": 4, "bf16": 2, "f16": 2,
          "i16": 2, "i8": 1, "ui8": 1, "i1": 1}


def constant_sizes(lowered) -> list[int]:
    """Bytes of each ``stablehlo.constant`` of a lowered program (its baked-in arrays), as
    tests/test_captions.py."""
    return [int(np.prod([int(d) for d in dims.split("x") if d], dtype=np.int64)) * _BYTES[dtype]
            for dims, dtype in re.findall(
                r"stablehlo\.constant dense<.*?> : tensor<((?:\d+x)*)(\w+)>", lowered.as_text())]


class _TinyNet(nn.Module):
    """A network of the project's call signature (x, labels, *, train) in a few hundred
    parameters: the default tests compile the autoencoder's encoder, not DDPM++."""

    @nn.compact
    def __call__(self, x, labels, *, train=False):
        del train
        c = x.shape[-1]
        return nn.Conv(c, (3, 3))(x) + nn.Dense(c)(jnp.asarray(labels, x.dtype)[:, None])[:, None,
                                                                                          None]


def _closed_over(b, weights):
    """Stage 2 before the frozen argument: the same losses with the autoencoder's weights closed
    over (constants of the compiled programs)."""
    def train_loss(variables, batch, key):
        return b.train_loss({**variables, "frozen": {latent_lib.FROZEN_KEY: weights}}, batch, key)

    step = ts.jit_train_step(train_loss, b.tx, b.schedule, b.ema_rate, b.mesh,
                             state_sharding=ts.state_sharding_of(b.abstract_state))
    return step


def _train(b, step, batches, key):
    state = b.init(jax.random.key(0))
    for batch in batches:
        state, metrics = step(state, batch, key)
    return state, metrics


def test_frozen_autoencoder_is_a_step_argument(tmp_path):
    """Stage 2: the autoencoder's weights are the steps' ``frozen`` input ("autoencoder"), not
    constants: the lowered train step's and sampling decoder's largest constants are <= 64 bytes
    (the closed-over step carries all of the encoder's bytes as constants); nothing of the
    autoencoder is in the train state; the jitted train loss equals the closed-over one (rtol
    1e-6); ``Built.latent`` reads the same placed weights; missing or clashing weights are named.
    (2 train steps and the decoded values: the slow test below.)"""
    from score_jax import parallel

    config = _random_stage2(tmp_path)
    b = config_lib.build(config, mesh=parallel.make_mesh(1), model=_TinyNet())
    _, weights, _ = config_lib.load_autoencoder_from_config(config)
    assert set(b.train_step.frozen) == {latent_lib.FROZEN_KEY}
    placed = b.train_step.frozen[latent_lib.FROZEN_KEY]
    assert b.latent.variables is placed and b.eval_step.frozen[latent_lib.FROZEN_KEY] is placed
    encoder_bytes = sum(a.nbytes for k in ("encoder", "quant_conv")
                        for a in jax.tree_util.tree_leaves(weights["params"][k]))
    assert encoder_bytes > 50_000
    state = b.abstract_state  # shapes and shardings: lowering needs no initialised state
    assert set(state.params) == {"Conv_0", "Dense_0"}  # the network's only
    params = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, 0.1, a.dtype), state.params)
    batch = {"image": jax.random.uniform(jax.random.key(3), (8, 16, 16, 1))}  # images in [0, 1]
    key = jax.random.key(1)
    closed = _closed_over(b, weights)
    frozen_consts = constant_sizes(b.train_step.lower(state, batch, key))
    closed_consts = constant_sizes(closed.lower(state, batch, key))
    assert max(frozen_consts) <= 64, sorted(frozen_consts)[-5:]
    # the train step reads the encoder (and the quant conv): the closed-over step bakes them in
    assert sum(closed_consts) - sum(frozen_consts) >= encoder_bytes, (closed_consts, encoder_bytes)
    z = jnp.zeros((2,) + b.image_shape)
    assert max(constant_sizes(b.latent.decode.lower(z)), default=0) <= 64
    # the loss with the weights an argument == with them closed over (today's constants)
    frozen_loss = jax.jit(lambda v, p: b.train_loss({"params": p, "frozen": v}, batch, key)[0])
    closed_loss = jax.jit(lambda p: b.train_loss(
        {"params": p, "frozen": {latent_lib.FROZEN_KEY: weights}}, batch, key)[0])
    # (XLA may fold the constants' arithmetic differently: 1 ulp was seen)
    np.testing.assert_allclose(frozen_loss(b.train_step.frozen, params), closed_loss(params),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"variables\['frozen'\]\['autoencoder'\]"):
        jax.eval_shape(b.train_loss, {"params": params}, batch, key)
    with pytest.raises(ValueError, match=r"frozen keys \['autoencoder'\]"):
        config_lib.build(config, mesh=parallel.make_mesh(1), frozen={"autoencoder": {}})


def _relative_close(got, want, rtol):
    for u, v in zip(jax.tree_util.tree_leaves(jax.device_get(got)),
                    jax.tree_util.tree_leaves(jax.device_get(want)), strict=True):
        assert np.linalg.norm(u - v) <= rtol * np.linalg.norm(v)


@pytest.mark.slow  # 5 train-step compilations on 1 and 8 devices: ~40 s on a loaded 2-core CPU
def test_frozen_autoencoder_fsdp8_equals_replicated_and_closed_over(tmp_path):
    """Stage 2 with the autoencoder as the steps' frozen argument: on 1 device 2 train steps give
    the same loss and state as the weights closed over (relative L2 <= 1e-6; bit for bit when
    measured), and sampling's decoder is
    D(z / s); on 8 devices with parallel.fsdp = 8 the autoencoder's largest leaf holds 1/8 of its
    bytes per device, and the parameters and the evaluation loss after 2 steps equal the
    replicated 8-device run's (relative L2 <= 1e-5), the decoder's images too."""
    from jax.sharding import PartitionSpec as P

    from score_jax import parallel

    config = _random_stage2(tmp_path)
    model, weights, _ = config_lib.load_autoencoder_from_config(config)
    ds = config_lib.dataset_from_config(config, "train", training=True, batch_size=8)
    key = jax.random.key(1)

    def run(config, mesh, closed=False):
        b = config_lib.build(config, mesh=mesh, model=_TinyNet())
        batches = [parallel.to_global(ds.batch(i), b.mesh) for i in range(2)]
        step = _closed_over(b, weights) if closed else b.train_step
        state, metrics = _train(b, step, batches, key)
        return b, state, metrics, b.eval_step(state, batches[0], key)

    b1, s_frozen, m_frozen, _ = run(config, parallel.make_mesh(1))
    _, s_closed, m_closed, _ = run(config, parallel.make_mesh(1), closed=True)
    # bit for bit when measured (XLA may fold the constants' arithmetic differently: 1e-6)
    np.testing.assert_allclose(m_frozen["loss"], m_closed["loss"], rtol=1e-6)
    _relative_close(s_frozen, s_closed, 1e-6)
    z = jax.random.normal(jax.random.key(4), (8,) + b1.image_shape)
    want = model.apply(weights, z / 0.5, method="decode")
    np.testing.assert_allclose(b1.latent.decode(z), want, rtol=1e-5, atol=1e-6)

    b8, s8, _, e8 = run(config, parallel.make_mesh(8))
    fconfig = _random_stage2(tmp_path, parallel__fsdp=8, parallel__fsdp_min_size=1)
    bf, sf, _, ef = run(fconfig, parallel.make_mesh(8, fsdp=8))
    leaves = jax.tree_util.tree_leaves(bf.train_step.frozen[latent_lib.FROZEN_KEY])
    big = max(leaves, key=lambda a: a.nbytes)
    assert "fsdp" in tuple(big.sharding.spec) and big.sharding.spec != P()
    assert {s.data.nbytes for s in big.addressable_shards} == {big.nbytes // 8}
    assert bf.latent.variables is bf.train_step.frozen[latent_lib.FROZEN_KEY]
    _relative_close(sf.params, s8.params, 1e-5)
    _relative_close(s8.params, s_frozen.params, 1e-5)  # 8 replicated == 1 device
    np.testing.assert_allclose(ef, e8, rtol=1e-5)
    zs = parallel.to_global(np.asarray(z), bf.mesh)
    np.testing.assert_allclose(bf.latent.decode(zs), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # 3 train_and_evaluate runs with snapshots: ~1 min on a loaded 2-core CPU
def test_frozen_autoencoder_not_checkpointed_and_resume_exact(tmp_path):
    """Stage 2: the autoencoder's weights are not in the stage-2 checkpoint (the network's are;
    a resumed run loads the recorded autoencoder again), 2 steps + a resume to 4 equal 4 steps
    bit for bit, and the snapshots decode samples (uint8 pixel images) with the placed weights."""
    def run(wd, n_iters):
        config = _random_stage2(tmp_path, training__n_iters=n_iters, training__snapshot_freq=2,
                                training__eval_freq=2)
        return train_lib.train_and_evaluate(config, str(wd), model=_TinyNet())

    full = run(tmp_path / "a", 4)
    part = run(tmp_path / "b", 2)
    text = "".join(open(os.path.join(d, f), errors="ignore").read()
                   for d, _, files in os.walk(tmp_path / "b" / "checkpoints") for f in files)
    # leaf paths are stored as ('params', 'Conv_0', 'bias'): the autoencoder's modules are
    # 'encoder', 'decoder', 'quant_conv', 'post_quant_conv'
    assert "'Conv_0'" in text and "'Dense_0'" in text
    assert not [m for m in ("'encoder'", "'decoder'", "'quant_conv'") if m in text]
    resumed = run(tmp_path / "b", 4)
    assert int(part.step) == 2 and int(resumed.step) == int(full.step) == 4
    for u, v in zip(jax.tree_util.tree_leaves(jax.device_get(full)),
                    jax.tree_util.tree_leaves(jax.device_get(resumed)), strict=True):
        np.testing.assert_array_equal(u, v)
    snap = np.load(os.path.join(tmp_path, "b", "samples", "iter_4", "samples.npz"))["samples"]
    assert snap.shape == (8, 16, 16, 1) and snap.dtype == np.uint8 and snap.std() > 0
