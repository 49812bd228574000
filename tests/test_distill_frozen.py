"""The distillation teacher's weights as an argument of the jitted train step (``frozen``), not
constants compiled into it: on 8 fake CPU devices with ``parallel.fsdp = 8`` the teacher is
FSDP-sharded like the student, the step equals the 1-device one and the one with the teacher's
weights baked in, and the compiled step carries no teacher-sized constants."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_train_helpers import TinyNet

from score_jax import config as config_lib
from score_jax import data as data_lib
from score_jax import distill, parallel

FEATURES = 64  # teacher kernel (3, 3, 64, 1) + (3, 3, 1, 64) + Dense: ~1.5k floats


def _config(fsdp):
    from configs import digits_distill

    config = digits_distill.get_config("cd_smoke")
    config.parallel.fsdp = fsdp
    config.parallel.fsdp_min_size = 1
    config.training.batch_size = 16
    config.optim.warmup = 0
    return config


def _teacher(config):
    """A random EDM teacher of the same network: its params and ``denoiser_of(params)``."""
    tconfig = config.copy_and_resolve_references()
    tconfig.training.objective = "edm"
    tconfig.parallel.fsdp = 1
    tb = config_lib.build(tconfig, mesh=parallel.make_mesh(1), model=TinyNet(features=FEATURES))
    params = jax.device_get(tb.init(jax.random.key(7)).params)

    def denoiser_of(p):
        return distill.teacher_denoiser(tb.make_score_fn(p), tb.sde)

    return params, denoiser_of


def _batches(n, batch_size=16):
    ds = data_lib.get_dataset("DIGITS", split="train", batch_size=batch_size, image_size=8,
                              training=True)
    return [ds.batch(i) for i in range(n)]


def _run(config, *, mesh=None, frozen_teacher=True, steps=2):
    params, denoiser_of = _teacher(config)
    if frozen_teacher:
        b = config_lib.build(config, mesh=mesh, model=TinyNet(features=FEATURES),
                             teacher=distill.FrozenTeacher(denoiser_of), frozen={"teacher": params})
    else:  # the teacher's weights closed over: constants of the compiled step
        b = config_lib.build(config, mesh=mesh, model=TinyNet(features=FEATURES),
                             teacher=denoiser_of(params))
    state = b.init(jax.random.key(0))
    key = jax.random.key(1)
    batches = [parallel.to_global(h, b.mesh) for h in _batches(steps)]
    lowered = b.train_step.lower(state, batches[0], key)
    for batch in batches:
        state, metrics = b.train_step(state, batch, key)
    eval_loss = b.eval_step(state, batches[0], key)
    return b, state, metrics, float(eval_loss), lowered, params


def _close(a, b, rtol=1e-5, atol=1e-7):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol),
                           jax.device_get(a), jax.device_get(b))


@pytest.mark.slow  # 3 builds, 5 compilations: ~40 s CPU
def test_frozen_teacher_fsdp8_equals_one_device_and_constant_teacher():
    """fsdp = 8 with the teacher as ``frozen`` == 1 device == the teacher baked in (same loss,
    parameters and evaluation loss after 2 steps); the teacher's kernel is FSDP-sharded (1/8 per
    device); the fsdp = 8 step's HLO is smaller than the teacher's bytes while the baked-in
    step's carries them, and its per-device argument bytes include 1/8 of the teacher."""
    b8, s8, m8, e8, low8, tparams = _run(_config(8))
    b1, s1, m1, e1, low1, _ = _run(_config(1), mesh=parallel.make_mesh(1))
    bc, sc, mc, ec, lowc, _ = _run(_config(1), mesh=parallel.make_mesh(1), frozen_teacher=False)
    assert dict(b8.mesh.shape) == {"data": 1, "fsdp": 8}
    for other_m, other_s, other_e in ((m1, s1, e1), (mc, sc, ec)):
        np.testing.assert_allclose(m8["loss"], other_m["loss"], rtol=1e-5)
        _close(s8.params, other_s.params, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(e8, other_e, rtol=1e-5)
    assert np.isfinite(float(m8["loss"])) and float(m8["loss"]) > 0
    # the teacher is sharded like the student's parameters
    kernel = b8.train_step.frozen["teacher"]["Conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 1, FEATURES) and kernel.sharding.spec == P(None, None, None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (3, 3, 1, FEATURES // 8)
    # no teacher-sized constants: the baked-in step's text grows by >= the teacher's bytes
    teacher_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(tparams))
    assert teacher_bytes > 5000
    t8, t1, tc = (len(low.as_text()) for low in (low8, low1, lowc))
    assert tc - t1 >= teacher_bytes, (tc, t1, teacher_bytes)
    assert abs(t8 - t1) < teacher_bytes / 4, (t8, t1, teacher_bytes)
    # the teacher is an argument of the compiled step: per device, 1/8 of it (fsdp) / all of it
    arg1 = low1.compile().memory_analysis().argument_size_in_bytes
    argc = lowc.compile().memory_analysis().argument_size_in_bytes
    assert arg1 - argc == teacher_bytes, (arg1, argc, teacher_bytes)


def test_frozen_teacher_missing_is_named():
    """A loss with a FrozenTeacher called without ``frozen`` names what to pass."""
    config = _config(1)
    _, denoiser_of = _teacher(config)
    b = config_lib.build(config, mesh=parallel.make_mesh(1), model=TinyNet(features=FEATURES),
                         teacher=distill.FrozenTeacher(denoiser_of))
    state = b.init(jax.random.key(0))
    batch = parallel.to_global(_batches(1)[0], b.mesh)
    with pytest.raises(ValueError, match=r"variables\['frozen'\]\['teacher'\]"):
        b.train_step(state, batch, jax.random.key(1))
