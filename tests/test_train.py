"""End-to-end training tests: smoke run + sampling, kill-and-resume exactness, non-finite loss,
1-device vs 8-device step equality, config validation before compilation."""
import json
import logging
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import TinyNet, tiny_config

from score_jax import checkpoint as ckpt_lib
from score_jax import config as config_lib
from score_jax import data as data_lib
from score_jax import parallel, preemption, sample_lib, train_lib, train_step  # noqa: F401


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_smoke_training_then_sampling(tmp_path):
    """The real digits DDPM++ smoke config: train 4 steps, snapshot samples, then sample.py's
    function from the workdir with the ODE sampler."""
    from configs.default_digits import get_config

    config = get_config("dsm_smoke")
    config.sampling.num_steps = 3
    wd = str(tmp_path / "wd")
    losses = []
    state = train_lib.train_and_evaluate(config, wd,
                                         callbacks=[lambda s, m: losses.append(float(m["loss"]))])
    assert int(state.step) == 4
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert 0.05 < losses[0] < 5.0  # reduce-mean eps loss starts near E|eps|^2 = 1
    png = os.path.join(wd, "samples", "iter_4", "samples.png")
    assert os.path.getsize(png) > 100
    npz = np.load(os.path.join(wd, "samples", "iter_4", "samples.npz"))["samples"]
    assert npz.shape == (8, 16, 16, 1) and npz.dtype == np.uint8
    assert os.listdir(os.path.join(wd, "tensorboard"))
    assert ckpt_lib.TrainCheckpointer(wd, read_only=True).all_steps() == [4]

    # sample.py's path: the config's PC sampler (compiled once, shared with the snapshot)
    out = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=8,
                                           output_dir=str(tmp_path / "s"))
    assert out["images"].shape == (8, 16, 16, 1)
    assert out["nfe"] == 3  # 3 Euler-Maruyama steps, no corrector
    assert out["images"].std() > 0.05  # not a constant image
    assert 0.0 <= out["images"].min() and out["images"].max() <= 1.0
    assert os.path.getsize(out["png"]) > 100

    # Default folders: one per setting (another seed never overwrites), settings.json beside.
    a = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=8)
    b = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=8, seed=1)
    da, db = os.path.dirname(a["png"]), os.path.dirname(b["png"])
    assert os.path.basename(da).startswith(f"{config.sampling.method}_step4_seed0_n8_")
    assert da != db
    np.testing.assert_array_equal(a["images"], out["images"])
    assert not np.array_equal(a["images"], b["images"])
    with open(os.path.join(db, "settings.json")) as f:
        settings = json.load(f)
    assert settings["seed"] == 1 and settings["step"] == 4 and settings["num_samples"] == 8
    assert settings["sampling"]["options"]["num_steps"] == 3 and settings["use_ema"] is True
    assert np.load(os.path.join(da, "samples.npz"))["samples"].shape == (8, 16, 16, 1)

    # the same EMA weights as a converted-checkpoint file give the same samples
    from score_jax.checkpoint import save_variables

    params, _ = sample_lib.load_params(config, workdir=wd)
    save_variables({"params": jax.device_get(params)}, str(tmp_path / "conv.msgpack"))
    out2 = sample_lib.sample_from_checkpoint(config, checkpoint=str(tmp_path / "conv.msgpack"),
                                            num_samples=8, output_dir=str(tmp_path / "s2"))
    np.testing.assert_allclose(out2["images"], out["images"], atol=1e-6)
    with pytest.raises(ValueError, match=r"give exactly one of --workdir"):
        sample_lib.load_params(config, workdir=wd, checkpoint=str(tmp_path / "conv.msgpack"))


def _run(config, wd, stop_at=None):
    def cb(step, m):
        if stop_at is not None and step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the real preemption signal

    with preemption.sigterm() as stop:  # what train.py does
        return train_lib.train_and_evaluate(config, wd, model=TinyNet(), callbacks=[cb],
                                            should_stop=stop.is_set)


def test_kill_and_resume_is_bit_exact(tmp_path):
    config = tiny_config()
    full = _run(config, str(tmp_path / "a"))
    part = _run(config, str(tmp_path / "b"), stop_at=2)
    assert int(part.step) == 2
    assert ckpt_lib.TrainCheckpointer(str(tmp_path / "b"), read_only=True).latest_step() == 2
    # the default input: grain in-process, batches prefetched to the device; the checkpoint's
    # record holds the data iterator's state at its step
    assert (config.data.num_workers, config.data.prefetch) == (0, 2)
    _, meta = ckpt_lib.TrainCheckpointer(str(tmp_path / "b"), read_only=True).restore(part, 2)
    assert meta["data_iterator"]["next_index"] == 2
    resumed = _run(config, str(tmp_path / "b"))
    assert int(resumed.step) == int(full.step) == 4
    for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    # and the run did move: parameters differ from the step-2 checkpoint
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(full.params), _leaves(part.params),
                                                          strict=True))


@pytest.mark.slow  # ~30 s; the default suite's test_kill_and_resume_is_bit_exact runs grain in-process
def test_kill_and_resume_is_bit_exact_on_grain_workers_with_prefetch(tmp_path):
    """Issue 22.4: the grain input (one worker process, 3 batches prefetched to the 8 devices of a
    2 x 4 fsdp mesh) trained N = 4 steps equals k = 2, a SIGTERM, a restart and N - k = 2 more;
    the resumed run changes the worker count (the stream does not depend on it), and each
    checkpoint's JSON record holds the data iterator's state at its step."""
    config = tiny_config(data__num_workers=1, data__prefetch=3)
    config.parallel.fsdp = 4
    full = _run(config, str(tmp_path / "a"))
    part = _run(config, str(tmp_path / "b"), stop_at=2)
    assert int(part.step) == 2
    ckpt = ckpt_lib.TrainCheckpointer(str(tmp_path / "b"), read_only=True)
    _, meta = ckpt.restore(part, 2)
    assert meta["data_iterator"]["next_index"] == 2 and meta["data_iterator"]["seed"] == config.seed
    config.data.num_workers = 0
    resumed = _run(config, str(tmp_path / "b"))
    assert int(resumed.step) == int(full.step) == 4
    for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    _, meta = ckpt_lib.TrainCheckpointer(str(tmp_path / "b"), read_only=True).restore(resumed, 4)
    assert meta["data_iterator"]["next_index"] == 4


class _NaNAt:
    """Wrap a pipeline so that the batch of one step is NaN."""

    def __init__(self, ds, bad_step):
        self.ds, self.bad_step = ds, bad_step

    def iterate(self, start_step=0):
        for i, b in enumerate(self.ds.iterate(start_step), start=start_step):
            if i == self.bad_step:
                b = dict(b, image=np.full_like(b["image"], np.nan))
            yield b


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    config = tiny_config()
    ds = data_lib.get_dataset("DIGITS", split="train", batch_size=8, image_size=8, training=True,
                              seed=config.seed)
    wd = str(tmp_path / "nan")
    with pytest.raises(train_lib.NonFiniteLossError, match=r"non-finite training loss at step 3"):
        train_lib.train_and_evaluate(config, wd, model=TinyNet(), train_ds=_NaNAt(ds, 2))
    ck = ckpt_lib.TrainCheckpointer(wd, read_only=True)
    assert ck.latest_step() == 2
    b = config_lib.build(config, model=TinyNet())
    state, meta = ck.restore(b.abstract_state)
    assert int(state.step) == 2 and meta["step"] == 2
    assert all(np.isfinite(x).all() for x in _leaves(state.params))


def test_train_step_8_devices_equals_1_device():
    assert jax.device_count() >= 8
    config = tiny_config()
    model = TinyNet()
    ds = data_lib.get_dataset("DIGITS", split="train", batch_size=16, image_size=8, training=True)
    host_batch = ds.batch(0)
    results = []
    for n in (1, 8):
        mesh = parallel.make_mesh(n)
        b = config_lib.build(config, mesh=mesh, model=model)
        state = b.init(jax.random.key(0))
        loss_fn = config_lib.loss_fn_from_config(config, b.sde, model, train=True)
        step = train_step.jit_train_step(loss_fn, b.tx, b.schedule, 0.9, mesh)
        key = jax.random.key(1)
        for _ in range(2):
            state, metrics = step(state, parallel.to_global(host_batch, mesh), key)
        assert len(state.params["Conv_0"]["kernel"].sharding.device_set) == n
        results.append((jax.device_get(state), jax.device_get(metrics)))
    (s1, m1), (s8, m8) = results
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-6)
    for a, b in zip(_leaves(s1), _leaves(s8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key,value,match", [
    ("training__batch_size", -8, r"training.batch_size=-8 must be a positive integer"),
    ("training__batch_size", 12, r"batch_size=12 is not divisible by the number of devices 8"),
    ("training__sde", "foo", r"training.sde='foo' unknown; valid choices: \['subvpsde'"),
    ("sampling__predictor", "bar", r"predictor 'bar'; valid choices"),
    ("data__dataset", "MNIST", r"data.dataset='MNIST' unknown; valid choices: \['DIGITS'"),
    ("model__name", "unet", r"model.name='unet' unknown; valid choices"),
])
def test_validation_fails_before_compilation(key, value, match, tmp_path, monkeypatch):
    config = tiny_config(**{key: value})
    if key == "sampling__predictor":  # a pc option (the DSM recipe samples with dpm_solver)
        config.sampling.method = "pc"
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before validating"))
    with pytest.raises(ValueError, match=match):
        train_lib.train_and_evaluate(config, str(tmp_path / "v"))


def test_unknown_key_and_missing_checkpoint(tmp_path):
    config = tiny_config()
    with config.unlocked():
        config.training.continuouse = False
    with pytest.raises(ValueError, match=r"config.training.continuouse is not a known key"):
        config_lib.validate_config(config)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"has no checkpoint"):
        sample_lib.load_params(tiny_config(), workdir=str(tmp_path / "empty"))


def test_incompatible_checkpoint_is_reported(tmp_path):
    wd = str(tmp_path / "c")
    config = tiny_config()
    _run(config, wd, stop_at=2)
    b = config_lib.build(config, model=TinyNet(features=4))
    with pytest.raises(ckpt_lib.CheckpointError, match=r"cannot be restored"):
        ckpt_lib.TrainCheckpointer(wd, read_only=True).restore(b.abstract_state)


def test_sampling_options_from_config():
    from configs.vp.cifar10_ddpmpp_continuous import get_config

    c = get_config()
    assert config_lib.sampling_options_from_config(c.sampling) == (
        "pc", {"predictor": "euler_maruyama", "corrector": "none", "snr": 0.16, "n_steps": 1,
               "denoise": True, "probability_flow": False})
    c.sampling.method = "ode"
    c.sampling.num_steps = 50
    method, opts = config_lib.sampling_options_from_config(c.sampling)
    assert method == "ode" and opts == {"num_steps": 50, "denoise": True, "rtol": 1e-5,
                                        "atol": 1e-5}


def test_optimizer_warmup_and_clip():
    tx, schedule = train_step.make_optimizer(lr=2e-4, warmup=5000, grad_clip=1.0)
    assert float(schedule(0)) == 0.0
    assert float(schedule(2500)) == pytest.approx(1e-4)
    assert float(schedule(10000)) == pytest.approx(2e-4)
    params = {"w": jnp.zeros(3)}
    st = tx.init(params)
    upd, _ = tx.update({"w": jnp.array([300.0, 400.0, 0.0])}, st, params)
    assert np.all(np.asarray(upd["w"]) == 0.0)  # lr(0) = 0, the reference's first step


def test_optimizer_lr_decay_closed_forms():
    lr, warm, n = 1e-3, 100, 1100
    _, cos = train_step.make_optimizer(lr=lr, warmup=warm, lr_decay="cosine", decay_steps=n)
    _, lin = train_step.make_optimizer(lr=lr, warmup=warm, lr_decay="linear", decay_steps=n)
    for sched in (cos, lin):
        assert float(sched(50)) == pytest.approx(lr / 2)  # the same linear warmup
        assert float(sched(warm)) == pytest.approx(lr)
        assert float(sched(n)) == pytest.approx(0.0, abs=1e-12)
        assert float(sched(n + 500)) == pytest.approx(0.0, abs=1e-12)
    for step in (350, 600, 850):
        u = (step - warm) / (n - warm)
        assert float(cos(step)) == pytest.approx(lr * (1 + np.cos(np.pi * u)) / 2, rel=1e-5)
        assert float(lin(step)) == pytest.approx(lr * (1 - u), rel=1e-5)


def test_optimizer_lr_decay_bad_values_are_named():
    with pytest.raises(ValueError, match="'exp'.*valid choices.*cosine"):
        train_step.make_optimizer(lr=1e-3, lr_decay="exp", decay_steps=10)
    with pytest.raises(ValueError, match="decay_steps.*warmup"):
        train_step.make_optimizer(lr=1e-3, warmup=100, lr_decay="cosine", decay_steps=50)
    from configs.default_digits import get_config

    c = get_config("dsm_smoke")
    c.optim.lr_decay = "step"
    with pytest.raises(ValueError, match="lr_decay='step'.*valid choices"):
        config_lib.validate_config(c)


@pytest.mark.slow
def test_train_py_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
    """The command line: SIGTERM mid-run -> preemption checkpoint, exit status 0; rerun resumes."""
    import time

    from test_train_helpers import ROOT

    wd = str(tmp_path / "cli")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={wd}",
           f"--config={os.path.join(ROOT, 'configs', 'default_digits.py')}:dsm_smoke",
           "--config.training.n_iters=100000", "--config.training.snapshot_sampling=False",
           "--config.data.image_size=8", "--config.model.ch_mult=(1,2)",
           "--config.model.attn_resolutions=(4,)"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ck = os.path.join(wd, "checkpoints")
    t0 = time.time()
    while time.time() - t0 < 400:  # wait for the first periodic checkpoint (step 2)
        if os.path.isdir(os.path.join(ck, "2")):
            break
        time.sleep(1)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert "preempted: checkpoint saved at step" in err + out
    steps = ckpt_lib.TrainCheckpointer(wd, read_only=True).all_steps()
    stopped = max(steps)
    assert stopped >= 2
    cmd[4] = f"--config.training.n_iters={stopped + 2}"
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ckpt_lib.TrainCheckpointer(wd, read_only=True).latest_step() == stopped + 2


def test_loss_sees_data_in_the_model_range():
    """Batches arrive in [0, 1]; a centred config trains on 2x - 1 (reference scaler)."""
    seen = {}

    def fake_loss(variables, batch, key):
        seen["image"] = batch["image"]
        return jnp.mean(batch["image"]), {}

    x = {"image": jnp.array([[0.0, 0.5, 1.0]])}
    config_lib.scaled_loss_fn(fake_loss, True)(None, x, None)
    np.testing.assert_allclose(seen["image"], [[-1.0, 0.0, 1.0]])
    config_lib.scaled_loss_fn(fake_loss, False)(None, x, None)
    np.testing.assert_allclose(seen["image"], [[0.0, 0.5, 1.0]])


@pytest.mark.slow
def test_bits_per_dim_mode(tmp_path):
    """sample.py --mode=bpd: probability-flow bits/dim of the digits test split."""
    config = tiny_config()
    config.model.update(dict(nf=16, ch_mult=(1, 2), attn_resolutions=(4,)))
    wd = str(tmp_path / "bpd")
    train_lib.train_and_evaluate(config, wd)
    config.sampling.rtol = config.sampling.atol = 1e-3
    out = sample_lib.bpd_from_checkpoint(config, workdir=wd, output_dir=str(tmp_path / "o"))
    assert out["num_examples"] == 8 and out["split"] == "test" and out["step"] == 4
    assert 0.0 < out["bpd"] < 30.0 and out["mean_nfe"] > 0
    assert os.path.isfile(str(tmp_path / "o" / "bpd.json"))
    # Default folders: one per setting, settings.json beside bpd.json.
    a = sample_lib.bpd_from_checkpoint(config, workdir=wd)
    b = sample_lib.bpd_from_checkpoint(config, workdir=wd, seed=1)
    assert os.path.basename(a["output_dir"]).startswith("bpd_step4_seed0_")
    assert a["output_dir"] != b["output_dir"] and a["bpd"] == out["bpd"]
    with open(os.path.join(b["output_dir"], "settings.json")) as f:
        assert json.load(f)["seed"] == 1


# ----------------------------------------------------------------------------------------------
# Regression tests of issues #9, #11, #12
# ----------------------------------------------------------------------------------------------
class _Relabel:
    """Wrap a pipeline so that every label is ``label``."""

    def __init__(self, ds, label):
        self.ds, self.label = ds, label

    def iterate(self, start_step=0):
        for b in self.ds.iterate(start_step):
            yield dict(b, label=np.full_like(b["label"], self.label))


def test_labels_outside_num_classes_refused_before_the_first_step(tmp_path):
    """Issue #11.2: out-of-range labels stopped with a NaN loss or trained the null row."""
    config = tiny_config(model__num_classes=10)
    ds = data_lib.get_dataset("DIGITS", split="train", batch_size=8, image_size=8, training=True)
    wd = str(tmp_path / "lab")
    with pytest.raises(ValueError, match=r"labels \[12\] outside \[0, 10\) for "
                                         r"config.model.num_classes=10"):
        train_lib.train_and_evaluate(config, wd, model=TinyNet(), train_ds=_Relabel(ds, 12))
    assert ckpt_lib.TrainCheckpointer(wd, read_only=True).latest_step() is None


def test_conditional_sampling_never_draws_the_null_label():
    """Issue #11.2: sampling a conditional model used the never-trained null row."""
    y = sample_lib.class_labels(jax.random.key(0), 4096, 10)
    y = np.asarray(y)
    assert y.min() == 0 and y.max() == 9 and len(np.unique(y)) == 10
    np.testing.assert_array_equal(sample_lib.class_labels(jax.random.key(0), 3, 10, 10), [10] * 3)
    assert sample_lib.class_labels(jax.random.key(0), 3, None) is None


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 6.2 s)
def test_any_sample_count_on_any_device_count(tmp_path):
    """Issue #11.3: 12 samples on 8 devices died with IndivisibleError after training."""
    assert sample_lib.padded_batch_size(12, None, 8) == 16
    assert sample_lib.padded_batch_size(12, 5, 8) == 8
    assert sample_lib.padded_batch_size(3, None, 1) == 3
    config = tiny_config()
    b = config_lib.build(config, model=TinyNet())
    state = b.init(jax.random.key(0))
    for n in (12, 5):
        images, _ = sample_lib.sample_built(jax.random.key(1), b, state.ema_params, n)
        assert images.shape == (n, 8, 8, 1) and np.isfinite(images).all()


def test_nonfinite_samples_are_counted_and_not_hidden(tmp_path):
    """Issue #11.4: non-finite samples were saved silently (sample.py exits 2 on a count > 0)."""
    x = np.full((4, 2, 2, 1), 0.5, np.float32)
    x[1, 0, 0, 0] = np.nan
    x[3] = np.inf
    assert sample_lib.count_nonfinite(x) == 2
    sample_lib.save_samples(x, str(tmp_path))
    saved = np.load(str(tmp_path / "samples.npz"))["samples"]
    assert saved.dtype == np.uint8 and saved[1, 0, 0, 0] == 0


def test_bits_per_dim_eps_is_one_definition(monkeypatch):
    """Issue #11.6: evaluate.py integrated from sampling.eps, sample.py --mode=bpd from 1e-5;
    both now use sample_lib.make_logp_fn with config.LIKELIHOOD_EPS, whatever sampling.eps."""
    from score_jax import likelihood

    seen = []

    def fake(key, sde, score_fn, y, *, eps, **kw):
        seen.append(eps)
        return jnp.zeros(y.shape[:1]), y, jnp.zeros((), jnp.int32)

    monkeypatch.setattr(likelihood, "log_likelihood", fake)
    config = tiny_config(sampling__eps=1e-3)
    b = config_lib.build(config, model=TinyNet())
    params = b.init(jax.random.key(0)).params
    bpd_fn = sample_lib.make_bpd_fn(b, rtol=1e-3, atol=1e-3)
    bpd, _ = bpd_fn(jax.random.key(0), params, jnp.full((8, 8, 8, 1), 0.5))
    assert seen == [config_lib.LIKELIHOOD_EPS] == [1e-5]
    np.testing.assert_allclose(np.asarray(bpd), 7.0)  # log p = 0 -> the centred offset


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_library_installs_no_signal_handler(tmp_path):
    """Issue #9: train_and_evaluate installed a SIGTERM handler from library code."""
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    stop = {"now": False}

    def cb(step, m):
        seen.append(signal.getsignal(signal.SIGTERM))
        stop["now"] = step == 2

    state = train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "h"), model=TinyNet(),
                                         callbacks=[cb], should_stop=lambda: stop["now"])
    assert int(state.step) == 2  # should_stop saved and returned
    assert all(h is before for h in seen)


def test_progress_rates_are_measured_between_synchronised_points(monkeypatch):
    """Issue #12.4: steps/s and images/s over the interval between two synchronised points."""
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr(train_lib.time, "perf_counter", lambda: next(clock))
    bar = train_lib._Progress(total=100, start=0, batch_size=64, enabled=False)
    assert bar.synced(10, 1.0) == pytest.approx(5.0)  # 10 steps in 2 s
    assert bar.synced(20, 1.0) == pytest.approx(10.0)  # 10 steps in 1 s
    bar.close()


def test_compilation_cache_folder(monkeypatch):
    """Issue #12.3: --compilation_cache resolution (default, env override, off)."""
    monkeypatch.delenv("SCORE_JAX_CACHE", raising=False)
    assert parallel.compilation_cache_dir(None) == os.path.expanduser("~/.cache/score_jax/xla")
    monkeypatch.setenv("SCORE_JAX_CACHE", "/tmp/sj")
    assert parallel.compilation_cache_dir(None) == "/tmp/sj"
    assert parallel.compilation_cache_dir("none") is None
    assert parallel.compilation_cache_dir("") is None


@pytest.mark.slow
def test_compilation_cache_is_reused_by_a_resumed_run(tmp_path):
    """Issue #12.3: the second (resumed) train.py run hits the persistent cache: it adds no new
    train-step entry and logs cache hits."""
    from test_train_helpers import ROOT

    cache, wd = str(tmp_path / "xla"), str(tmp_path / "wd")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={wd}",
           f"--config={os.path.join(ROOT, 'configs', 'default_digits.py')}:dsm_smoke",
           f"--compilation_cache={cache}", "--config.training.snapshot_sampling=False",
           "--config.data.image_size=8", "--config.model.ch_mult=(1,2)",
           "--config.model.attn_resolutions=(4,)", "--config.training.n_iters=2"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    first = set(os.listdir(cache))
    assert first
    cmd[-1] = "--config.training.n_iters=4"
    env["JAX_DEBUG_LOG_MODULES"] = "jax._src.compiler,jax._src.compilation_cache"
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cache hit" in (r.stderr + r.stdout).lower()


def test_sample_folder_name_is_one_per_setting():
    """sample.py's default folder: the same settings give the same name; any other sampling
    option, step, seed, count, labels or EMA choice gives another (nothing is overwritten)."""
    from configs.default_digits import get_config
    from score_jax import sample_lib

    config = get_config()
    base = dict(step=3000, seed=0, num_samples=1000)
    name = sample_lib.sample_folder_name("heun", sample_lib.sample_settings(config, **base))
    assert name.startswith("heun_step3000_seed0_n1000_") and len(name.split("_")[-1]) == 8
    assert name == sample_lib.sample_folder_name("heun", sample_lib.sample_settings(config, **base))
    other = get_config()
    other.sampling.num_steps = 36
    variants = [sample_lib.sample_settings(other, **base),
                sample_lib.sample_settings(config, **dict(base, seed=1)),
                sample_lib.sample_settings(config, **dict(base, step=1500)),
                sample_lib.sample_settings(config, **base, labels=[3, 3, 7]),
                sample_lib.sample_settings(config, **base, use_ema=False)]
    names = {sample_lib.sample_folder_name("heun", v) for v in variants}
    assert len(names) == len(variants) and name not in names
    ignored = get_config()
    ignored.sampling.rtol = 1e-3  # not an option of heun: the samples do not change, nor the name
    assert sample_lib.sample_folder_name("heun", sample_lib.sample_settings(ignored, **base)) == name
    assert sample_lib.sample_folder_name("ode", sample_lib.sample_settings(
        config, step=None, seed=0, num_samples=4)).startswith("ode_seed0_n4_")


def test_read_only_checkpointer_is_quiet(tmp_path, caplog):
    """sample.py / evaluate.py open workdirs read-only: orbax's per-option and "directory is
    read only" notices are not printed, the steps and the state are read as written."""
    wd = str(tmp_path / "wd")
    state = {"w": np.arange(3.0, dtype=np.float32)}
    ckpt_lib.TrainCheckpointer(wd).save(7, state, {"note": "x"})
    with caplog.at_level(logging.WARNING):
        reader = ckpt_lib.TrainCheckpointer(wd, read_only=True)
        steps = reader.all_steps()
        restored, meta = reader.restore(jax.eval_shape(lambda: state))
    assert steps == [7] and meta == {"note": "x"}
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert not [r for r in caplog.records if "read only" in r.getMessage()
                or "read_only" in r.getMessage()], [r.getMessage() for r in caplog.records]
