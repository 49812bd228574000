"""Asynchronous training checkpoints (orbax ``enable_async_checkpointing``): only finished steps
count, an unfinished save (killed process) is ignored on restore, SIGKILL mid-save resumes bit
for bit; and the profiler window / TensorBoard sample image of the training loop."""
import glob
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import ROOT, TinyNet, tiny_config

from score_jax import checkpoint as ckpt_lib
from score_jax import config as config_lib
from score_jax import train_lib

TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _state(v):
    return {"w": jnp.full((64, 64), float(v)), "b": jnp.arange(5.0) + v}


def test_async_save_returns_before_the_write_and_counts_only_finished_steps(tmp_path):
    wd = str(tmp_path)
    ck = ckpt_lib.TrainCheckpointer(wd, asynchronous=True)
    ck.save(1, _state(1), {"step": 1}, wait=False)
    ck.wait_until_finished()
    assert ck.latest_step() == 1 and ck.all_steps() == [1]
    state2 = _state(2)
    ck.save(2, state2, {"step": 2}, wait=False)
    # the arrays were copied to host before save returned: the loop may donate them now
    for x in jax.tree_util.tree_leaves(state2):
        x.delete()
    # while the write of step 2 is in flight, orbax already lists it; the checkpointer does not
    real = ck.manager.is_saving_in_progress
    ck.manager.is_saving_in_progress = lambda: True
    assert ck.manager.latest_step() == 2  # orbax's own view (the reason for the filter)
    assert ck.latest_step() == 1 and ck.all_steps() == [1]
    ck.manager.is_saving_in_progress = real
    ck.wait_until_finished()
    assert ck.latest_step() == 2
    abstract = jax.eval_shape(lambda: _state(0))
    restored, meta = ck.restore(abstract)
    np.testing.assert_array_equal(restored["w"], np.full((64, 64), 2.0))
    assert meta == {"step": 2}
    ck.close()
    # max_to_keep=1: step 1 was deleted only after step 2 was complete
    assert sorted(os.listdir(ck.directory)) == ["2"]


def test_unfinished_save_is_ignored_on_restore(tmp_path):
    """What a kill -9 mid-save leaves: ``<step>.orbax-checkpoint-tmp`` beside the finished step.
    A new checkpointer (the resumed run) resumes from the finished step and can save over it."""
    wd = str(tmp_path)
    ck = ckpt_lib.TrainCheckpointer(wd, asynchronous=True)
    ck.save(2, _state(2), {"step": 2})
    ck.close()
    d = ckpt_lib.checkpoint_dir(wd)
    partial = os.path.join(d, "3" + TMP_SUFFIX)
    shutil.copytree(os.path.join(d, "2"), partial)  # a half-written step 3: some files missing
    for f in glob.glob(os.path.join(partial, "state", "*")):
        if os.path.isfile(f):
            os.remove(f)
    ck = ckpt_lib.TrainCheckpointer(wd, asynchronous=True)
    assert ck.latest_step() == 2 and ck.all_steps() == [2]
    restored, meta = ck.restore(jax.eval_shape(lambda: _state(0)))
    assert meta["step"] == 2 and float(restored["b"][0]) == 2.0
    ck.save(3, _state(3), {"step": 3})  # the leftover does not block a new save of that step
    ck.close()
    assert ckpt_lib.TrainCheckpointer(wd, read_only=True).latest_step() == 3


_CHILD = r"""
import asyncio, sys
sys.path[:0] = [{root!r}, {tests!r}]
from orbax.checkpoint._src.path import atomicity
from test_train_helpers import TinyNet, tiny_config
from score_jax import train_lib

_finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def slow_finalize(self, *a, **k):  # a slow disk: every save stays in flight ~1 s
    await asyncio.sleep(1.0)
    return await _finalize(self, *a, **k)

atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize
config = tiny_config(training__n_iters={n_iters}, training__snapshot_freq_for_preemption=1)
train_lib.train_and_evaluate(config, {wd!r}, model=TinyNet())
"""


@pytest.mark.slow  # a subprocess that compiles, then ~10 s of slow saves
def test_sigkill_while_an_async_save_is_in_flight_resumes_bit_exact(tmp_path):
    n_iters = 8
    config = tiny_config(training__n_iters=n_iters, training__snapshot_freq_for_preemption=1)
    full = train_lib.train_and_evaluate(config, str(tmp_path / "full"), model=TinyNet())

    wd = str(tmp_path / "killed")
    d = ckpt_lib.checkpoint_dir(wd)
    code = _CHILD.format(root=ROOT, tests=os.path.join(ROOT, "tests"), n_iters=n_iters, wd=wd)
    env = dict(os.environ)  # the same (conftest's) device count as the runs in this process
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    t0, killed_mid_save = time.time(), False
    while time.time() - t0 < 300 and p.poll() is None:
        names = os.listdir(d) if os.path.isdir(d) else []
        finished = [n for n in names if n.isdigit()]
        if finished and any(n.endswith(TMP_SUFFIX) for n in names):
            p.send_signal(signal.SIGKILL)
            killed_mid_save = True
            break
        time.sleep(0.05)
    p.wait(timeout=60)
    assert killed_mid_save, f"the child ended before a save was in flight: {p.stderr.read()[-2000:]}"
    names = os.listdir(d)
    assert any(n.endswith(TMP_SUFFIX) for n in names), names  # the unfinished save is left
    latest = ckpt_lib.TrainCheckpointer(wd, read_only=True).latest_step()
    assert latest is not None and 1 <= latest < n_iters
    resumed = train_lib.train_and_evaluate(config, wd, model=TinyNet())
    assert int(resumed.step) == int(full.step) == n_iters
    for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ckpt_lib.TrainCheckpointer(wd, read_only=True).latest_step() == n_iters


# ----------------------------------------------------------------------------------------------
# profiler window and the TensorBoard sample image
# ----------------------------------------------------------------------------------------------
def _event_images(directory):
    """(tag, step, png bytes) of every image summary in the TensorBoard event files under
    ``directory`` (TFRecord framing: uint64 length, uint32 crc, data, uint32 crc)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("image"):
                    out.append((v.tag, ev.step, v.image))
    return out


@pytest.mark.slow  # jax.profiler start / stop on 2 shared cores: ~45 s
def test_profile_window_writes_a_trace(tmp_path):
    config = tiny_config(training__n_iters=3, training__profile_steps=(1, 3))
    wd = str(tmp_path / "wd")
    train_lib.train_and_evaluate(config, wd, model=TinyNet())
    traces = glob.glob(os.path.join(wd, "tensorboard", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


@pytest.mark.slow  # snapshot sampling + the digits metric: ~45 s on 2 shared cores
def test_snapshot_samples_go_to_tensorboard_as_an_image(tmp_path):
    config = tiny_config(training__n_iters=3, training__snapshot_sampling=True,
                         training__snapshot_freq=3)
    config.sampling.num_samples = 4
    config.sampling.num_steps = 2
    wd = str(tmp_path / "wd")
    train_lib.train_and_evaluate(config, wd, model=TinyNet())
    images = _event_images(os.path.join(wd, "tensorboard"))
    assert [(tag, step) for tag, step, _ in images] == [("samples", 3)]
    img = images[0][2]
    # the grid of the 4 snapshot samples (8 x 8, 2 per row, 2 px padding), unscaled
    assert (img.height, img.width) == (22, 22)
    assert img.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("window", [(3, 3), (-1, 2), (1, 2, 3), (1.0, 2), (2, 1)])
def test_bad_profile_steps_are_refused(window):
    config = tiny_config()
    config.training.profile_steps = window
    with pytest.raises(ValueError, match=r"profile_steps=.*valid choices: None"):
        config_lib.validate_config(config)
