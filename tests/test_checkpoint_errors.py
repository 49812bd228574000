"""A checkpoint restored into a model of another shape: the CheckpointError names the parameter
path and both shapes, and the failed restore leaves no asyncio "Event loop is closed" tracebacks
at exit (issue 26 item 4)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from score_jax import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(width, layers=1):
    params = {"Conv_0": {"kernel": np.ones((3, 3, 1, width), np.float32),
                         "bias": np.ones((width,), np.float32)}}
    for i in range(layers):
        params[f"Dense_{i}"] = {"kernel": np.ones((64, 64), np.float32)}
    return {"step": np.zeros((), np.int32), "params": params}


def _abstract(tree):
    """Shape, dtype and sharding: what ``train_step.jit_init`` gives orbax to restore into."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                                 sharding=sharding), tree)


def test_tree_mismatches_names_paths_and_shapes():
    saved, model = _state(8), _state(4)
    model["params"]["Extra"] = {"w": np.zeros(2)}
    del model["params"]["Dense_0"]
    got = ckpt_lib.tree_mismatches(saved, _abstract(model))
    assert got == ["params/Conv_0/bias: checkpoint shape (8,), model (4,)",
                   "params/Conv_0/kernel: checkpoint shape (3, 3, 1, 8), model (3, 3, 1, 4)",
                   "params/Extra/w: in the model, not in the checkpoint",
                   "params/Dense_0/kernel: in the checkpoint, not in the model"]
    assert ckpt_lib.tree_mismatches(saved, _abstract(_state(8))) == []


def test_restore_into_another_shape_names_the_parameter(tmp_path):
    wd = str(tmp_path / "wd")
    ckpt_lib.TrainCheckpointer(wd).save(1, _state(8))
    reader = ckpt_lib.TrainCheckpointer(wd, read_only=True)
    with pytest.raises(ckpt_lib.CheckpointError) as err:
        reader.restore(_abstract(_state(4)))
    msg = str(err.value)
    assert "params/Conv_0/kernel: checkpoint shape (3, 3, 1, 8), model (3, 3, 1, 4)" in msg
    assert "params/Conv_0/bias" in msg and "step 1" in msg
    state, _ = reader.restore(_abstract(_state(8)))  # the right shapes still restore
    np.testing.assert_array_equal(state["params"]["Conv_0"]["kernel"], np.ones((3, 3, 1, 8)))


_LAYERS = 60  # many arrays: reads still pending when the first mismatch fails the restore
_FAILED_RESTORES = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_checkpoint_errors import _abstract, _state
from score_jax import checkpoint as ckpt_lib
reader = ckpt_lib.TrainCheckpointer({wd!r}, read_only=True)
for _ in range(4):
    try:
        reader.restore(_abstract(_state(4, {layers})))
    except ckpt_lib.CheckpointError:
        pass
print("done")
"""


def test_failed_restores_leave_no_event_loop_tracebacks(tmp_path):
    wd = str(tmp_path / "wd")
    ckpt_lib.TrainCheckpointer(wd).save(1, _state(8, _LAYERS))
    code = _FAILED_RESTORES.format(root=ROOT, tests=os.path.join(ROOT, "tests"), wd=wd,
                                   layers=_LAYERS)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-2000:]
    assert "Event loop is closed" not in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
