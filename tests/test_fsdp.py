"""Parameter sharding (FSDP over a data x fsdp mesh) and gradient accumulation, on 8 fake CPU
devices: the sharded / accumulated step gives the replicated full-batch update, the state holds
~1/F of its bytes per device, checkpoints move between meshes, and bad values are refused."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_train_helpers import TinyNet, tiny_config

from score_jax import checkpoint as ckpt_lib
from score_jax import config as config_lib
from score_jax import data as data_lib
from score_jax import parallel, train_lib, train_step


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _rel_l2(a, b):
    a = np.concatenate([x.ravel() for x in _leaves(a)])
    b = np.concatenate([x.ravel() for x in _leaves(b)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _config(fsdp=1, grad_accum_steps=1, batch_size=16):
    config = tiny_config(parallel__fsdp=fsdp, parallel__fsdp_min_size=1,
                         training__grad_accum_steps=grad_accum_steps,
                         training__batch_size=batch_size)
    config.optim.warmup = 0
    return config


def _batches(n, batch_size=16):
    ds = data_lib.get_dataset("DIGITS", split="train", batch_size=batch_size, image_size=8,
                              training=True)
    return [ds.batch(i) for i in range(n)]


def _train(config, mesh=None, model=None, steps=3):
    b = config_lib.build(config, mesh=mesh, model=model or TinyNet(features=16))
    state = b.init(jax.random.key(0))
    key = jax.random.key(1)
    for host in _batches(steps, config.training.batch_size):
        state, metrics = b.train_step(state, parallel.to_global(host, b.mesh), key)
    return b, state, metrics


def test_fsdp_spec_rule():
    """big_vision's rule: the largest axis divisible by F (first among equals), else replicated;
    leaves under min_size replicated."""
    assert parallel.fsdp_spec((3, 3, 16, 32), 8, 1) == P(None, None, None, "fsdp")
    assert parallel.fsdp_spec((3, 3, 32, 32), 8, 1) == P(None, None, "fsdp", None)
    assert parallel.fsdp_spec((12, 40), 8, 1) == P(None, "fsdp")  # 40 % 8 == 0, 12 % 8 != 0
    assert parallel.fsdp_spec((12, 20), 8, 1) == P()  # no divisible axis
    assert parallel.fsdp_spec((64,), 8, 65) == P()  # under min_size
    assert parallel.fsdp_spec((64,), 8, 64) == P("fsdp")
    assert parallel.fsdp_spec((), 8, 1) == P()
    assert parallel.fsdp_spec((64, 64), 1, 1) == P()
    mesh = parallel.make_mesh(fsdp=4)
    assert mesh.axis_names == ("data", "fsdp") and dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert parallel.data_sharding(mesh).spec == P(("data", "fsdp"))


@pytest.mark.parametrize("fsdp", [3, 16])
def test_bad_fsdp_refused_before_compilation(fsdp, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before validating"))
    with pytest.raises(ValueError, match=rf"config.parallel.fsdp={fsdp!r} does not divide the "
                                         rf"number of devices 8; valid choices: \[1, 2, 4, 8\]"):
        train_lib.train_and_evaluate(_config(fsdp=fsdp), str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"parallel.fsdp=3 does not divide"):
        parallel.make_mesh(8, fsdp=3)


@pytest.mark.parametrize("fsdp", [0, -2, True, 2.0, "2"])
def test_non_positive_or_non_integer_fsdp_is_not_a_divisor_question(fsdp):
    """``--config.parallel.fsdp=0`` (or -2, True, 2.0, "2") is not "a value that does not divide
    the device count" (0 divides nothing; the others are not group sizes): the error says it must
    be a positive integer, and lists the valid choices as for a non-divisor."""
    with pytest.raises(ValueError) as e:
        parallel.check_fsdp(fsdp, 8)
    assert str(e.value) == (f"config.parallel.fsdp={fsdp!r} must be a positive integer dividing "
                            f"the number of devices 8; valid choices: [1, 2, 4, 8]")
    if type(fsdp) is int:  # the config's fsdp field is an int: the others cannot be set there
        with pytest.raises(ValueError, match=rf"fsdp={fsdp} must be a positive integer dividing "
                                             rf"the number of devices 8; valid choices: \[1, 2"):
            config_lib.validate_config(_config(fsdp=fsdp), num_devices=8)


def test_bad_grad_accum_refused():
    with pytest.raises(ValueError, match=r"grad_accum_steps=4: the micro-batch batch_size / "
                                         r"grad_accum_steps = 16 / 4 must be a multiple of the "
                                         r"number of devices 8; valid choices: \[1, 2\]"):
        config_lib.build(_config(grad_accum_steps=4), model=TinyNet())
    with pytest.raises(ValueError, match=r"training.grad_accum_steps=0 must be a positive"):
        config_lib.build(_config(grad_accum_steps=0), model=TinyNet())


@pytest.mark.slow  # 2-3 compilations of an 8-device step: ~1 min on this CPU
def test_fsdp_8_and_2x4_equal_replicated_training():
    """3 steps with the state sharded over 8 devices (1 x 8) and over a 2 x 4 mesh give the
    parameters, EMA and Adam moments of the replicated run (relative L2 <= 1e-5)."""
    _, ref, m_ref = _train(_config(fsdp=1))
    for fsdp in (8, 4):
        b, state, m = _train(_config(fsdp=fsdp))
        assert dict(b.mesh.shape) == {"data": 8 // fsdp, "fsdp": fsdp}
        kernel = state.params["Conv_0"]["kernel"]  # (3, 3, 1, 16): features split
        assert kernel.sharding.spec == P(None, None, None, "fsdp")
        assert kernel.addressable_shards[0].data.shape == (3, 3, 1, 16 // fsdp)
        mu = state.opt_state[-1][0].mu["Conv_0"]["kernel"]
        assert mu.sharding.spec == P(None, None, None, "fsdp")
        for part in ("params", "ema_params", "opt_state"):
            assert _rel_l2(getattr(state, part), getattr(ref, part)) <= 1e-5, (fsdp, part)
        np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)


@pytest.mark.parametrize("fsdp,expect", [(8, 1 / 8), (1, 1.0)])
def test_fsdp_state_holds_one_eighth_per_device(fsdp, expect):
    """The built train state (params + EMA + Adam mu, nu) at fsdp = 8: device 0 holds ~1/8 of
    the bytes (only the 1-element bias, the step and Adam's counts stay replicated);
    replicated: all of them."""
    b = config_lib.build(_config(fsdp=fsdp), model=TinyNet(features=64))
    state = b.init(jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(state)
    total = sum(x.nbytes for x in leaves)
    dev0 = jax.devices()[0]
    on_dev0 = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == dev0)
    assert expect <= on_dev0 / total < expect * 1.01, on_dev0 / total


@pytest.mark.slow  # 2-3 compilations of an 8-device step: ~1 min on this CPU
def test_fsdp_step_all_gathers_weights():
    """The compiled fsdp = 8 step all-gathers the sharded weights (XLA's HLO); the replicated
    step does not, it all-reduces the gradients. (The gradients' reduce-scatter is formed by
    XLA's ReduceScatterCreator pass of the GPU / TPU pipelines; the CPU backend keeps it as an
    all-reduce + dynamic-slice, so it is not asserted here.)"""
    texts = {}
    for fsdp in (1, 8):
        b = config_lib.build(_config(fsdp=fsdp), model=TinyNet(features=16))
        abstract_batch = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                           sharding=parallel.data_sharding(b.mesh)),
            _batches(1)[0])
        texts[fsdp] = b.train_step.lower(b.abstract_state, abstract_batch,
                                         jax.random.key(1)).compile().as_text()
    assert "all-gather" in texts[8]
    assert "all-gather" not in texts[1] and "reduce-scatter" not in texts[1]
    assert "all-reduce" in texts[1]


@pytest.mark.slow  # 2-3 compilations of an 8-device step: ~1 min on this CPU
@pytest.mark.parametrize("save_fsdp,restore_fsdp,restore_devices", [(8, 1, 1), (1, 8, 8)])
def test_checkpoint_moves_between_meshes(save_fsdp, restore_fsdp, restore_devices, tmp_path):
    """A checkpoint written under fsdp = 8 restores on a 1-device mesh, and a 1-device one under
    fsdp = 8 (orbax restores into the target shardings), with equal values."""
    save_config = _config(fsdp=save_fsdp)
    save_mesh = parallel.make_mesh(8 if save_fsdp > 1 else 1, fsdp=save_fsdp)
    _, state, _ = _train(save_config, mesh=save_mesh, steps=1)
    ck = ckpt_lib.TrainCheckpointer(str(tmp_path))
    ck.save(1, state, {"step": 1})
    ck.close()
    config = _config(fsdp=restore_fsdp)
    mesh = parallel.make_mesh(restore_devices, fsdp=restore_fsdp)
    b = config_lib.build(config, mesh=mesh, model=TinyNet(features=16))
    ck = ckpt_lib.TrainCheckpointer(str(tmp_path), read_only=True)
    restored, _ = ck.restore(b.abstract_state)
    ck.close()
    kernel = restored.params["Conv_0"]["kernel"]
    assert len(kernel.sharding.device_set) == restore_devices
    assert kernel.sharding.spec == (P(None, None, None, "fsdp") if restore_fsdp > 1 else P())
    for a, c in zip(_leaves(restored), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, c)
    # and it trains on: one more step on the new mesh
    nxt, _ = b.train_step(restored, parallel.to_global(_batches(1)[0], mesh), jax.random.key(1))
    assert int(nxt.step) == 2


@pytest.mark.slow  # 2-3 compilations of an 8-device step: ~1 min on this CPU
@pytest.mark.parametrize("fsdp", [1, 8])
def test_grad_accumulation_equals_full_batch(fsdp):
    """grad_accum_steps = 2 (micro-batches of 16 over 8 devices) gives the full-batch update of
    grad_accum_steps = 1 with per-example noise to round-off: every example keeps its noise and
    dropout key."""
    config = _config(fsdp=fsdp, batch_size=32)
    config.training.per_example_noise = True
    _, ref, m_ref = _train(config, steps=2)
    _, acc, m = _train(_config(fsdp=fsdp, grad_accum_steps=2, batch_size=32), steps=2)
    assert _rel_l2(acc.params, ref.params) <= 1e-6
    assert _rel_l2(acc.opt_state, ref.opt_state) <= 1e-5
    np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(m["grad_norm"], m_ref["grad_norm"], rtol=1e-5)


def test_accumulated_gradient_is_the_full_batch_gradient():
    """The accumulated (loss, gradient) of 4 micro-batches == the full-batch one, and differs
    when the examples' keys are permuted (the noise really is per example)."""
    model = TinyNet(features=8)
    config = _config()
    b = config_lib.build(config, mesh=parallel.make_mesh(1), model=model)
    params = b.init(jax.random.key(0)).params
    batch = jax.tree_util.tree_map(jnp.asarray, _batches(1)[0])
    keys = train_step.example_keys(jax.random.key(3), 16)
    # the keys are an argument: the permuted keys reuse the full-batch program (one compile less)
    loss_and_grad = jax.jit(lambda p, k: train_step.loss_and_grad(b.train_loss, p, batch, k))
    full = loss_and_grad(params, keys)
    acc = jax.jit(lambda p, k: train_step.accumulated_loss_and_grad(b.train_loss, p, batch, k,
                                                                    4))(params, keys)
    np.testing.assert_allclose(acc[0], full[0], rtol=1e-6)
    assert _rel_l2(acc[1], full[1]) <= 1e-6
    other = loss_and_grad(params, keys[::-1])
    assert abs(float(other[0]) - float(full[0])) > 1e-4
    with pytest.raises(ValueError, match=r"grad_accum_steps=3 does not divide the batch size 16"):
        train_step.accumulated_loss_and_grad(b.train_loss, params, batch, keys, 3)


def _shrink(config, n_iters):
    config.training.n_iters = n_iters
    config.training.batch_size = config.eval.batch_size = 16
    config.training.log_freq = config.training.eval_freq = 1
    config.training.snapshot_freq = config.training.snapshot_freq_for_preemption = 2
    config.training.snapshot_sampling = True
    config.sampling.num_samples = 8
    if config.sampling.get("num_steps") is None or config.sampling.num_steps > 3:
        config.sampling.num_steps = 3
    return config


@pytest.mark.slow  # end to end with snapshot sampling: minutes on the shared CPU
@pytest.mark.parametrize("arg", ["smoke", "dit_smoke"])
def test_conditional_and_dit_train_sample_resume_across_meshes(arg, tmp_path):
    """The class-conditional U-Net and DiT configs train under fsdp = 8 with gradient
    accumulation (init, train / eval steps, EMA, snapshot sampling, checkpoints), then the run
    resumes replicated on one device and goes on."""
    from configs.digits_cond import get_config

    wd = str(tmp_path / arg)
    config = _shrink(get_config(arg), 2)
    config.parallel.fsdp = 8
    config.parallel.fsdp_min_size = 256
    config.training.grad_accum_steps = 2
    state = train_lib.train_and_evaluate(config, wd)
    assert int(state.step) == 2
    assert any(not x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(state.params))
    assert os.path.getsize(os.path.join(wd, "samples", "iter_2", "samples.png")) > 100
    config = _shrink(get_config(arg), 4)
    config.training.num_devices = 1
    state = train_lib.train_and_evaluate(config, wd)
    assert int(state.step) == 4 and all(np.isfinite(x).all() for x in _leaves(state.params))


@pytest.mark.slow  # stage 1 + stage 2 end to end: minutes on the shared CPU
def test_latent_stage1_and_stage2_under_fsdp(tmp_path):
    """Stage 1 (autoencoder) under fsdp = 8 exports its EMA parameters gathered from the shards
    (equal to the sharded state's), and stage 2 trains and samples on it under fsdp = 4."""
    from configs.latent.digits_autoencoder import get_config as ae_config
    from configs.latent.digits_ldm import get_config as ldm_config
    from score_jax import latent as latent_lib

    ae_dir = str(tmp_path / "ae")
    config = ae_config("smoke")
    config.parallel.fsdp, config.parallel.fsdp_min_size = 8, 256
    state = train_lib.train_and_evaluate(config, ae_dir)
    exported = ckpt_lib.load_variables(os.path.join(ae_dir, latent_lib.AUTOENCODER_FILE))
    for a, c in zip(jax.tree_util.tree_leaves(exported["params"]), _leaves(state.ema_params),
                    strict=True):
        np.testing.assert_array_equal(a, c)
    config = ldm_config("smoke")
    config.latent.autoencoder_checkpoint = ae_dir
    config.sampling.num_steps = 3
    config.parallel.fsdp, config.parallel.fsdp_min_size = 4, 256
    state = train_lib.train_and_evaluate(config, str(tmp_path / "ldm"))
    assert int(state.step) == config.training.n_iters
    assert all(np.isfinite(x).all() for x in _leaves(state.params))
