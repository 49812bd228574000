"""Mesh / sharding helpers, and a real 2-process jax.distributed run on localhost (gloo)."""
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import ROOT, TinyNet, tiny_config

from score_jax import data, parallel, train_lib


def test_mesh_and_global_batch():
    mesh = parallel.make_mesh()
    assert mesh.devices.size == jax.device_count() == 8 and mesh.axis_names == ("data",)
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = parallel.to_global({"image": x}, mesh)["image"]
    assert g.shape == (16, 3) and len(g.sharding.device_set) == 8
    assert g.addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(parallel.to_host(g), x)
    r = parallel.replicate(jnp.ones(3), mesh)
    assert r.sharding.is_fully_replicated
    assert parallel.check_batch_size(16, mesh) == 16
    with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the number of "
                                         r"devices 8; valid choices are multiples of 8"):
        parallel.check_batch_size(12, mesh)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer"):
        parallel.check_batch_size(0, mesh)
    with pytest.raises(ValueError, match=r"num_devices=9 is invalid; valid: 1..8"):
        parallel.make_mesh(9)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_training_equals_one_process(tmp_path):
    """2 processes x 1 CPU device (jax.distributed + gloo) == 1 process x 2 devices."""
    worker = os.path.join(ROOT, "tests", "_multiprocess_worker.py")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, worker, str(port), str(i), str(tmp_path / "mp")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=540)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    sums = [line.split()[1:] for out in outs for line in out.splitlines()
            if line.startswith("CHECKSUM")]
    assert len(sums) == 2 and sums[0] == sums[1] and sums[0][0] == "4"
    # one process, two devices, fed the global batches the two processes assembled
    config = tiny_config()
    parts = [data.get_dataset("DIGITS", split="train", batch_size=4, image_size=8, training=True,
                              seed=config.seed, process_index=i, process_count=2)
             for i in range(2)]

    class Both:
        def iterate(self, start_step=0):
            for a, b in zip(parts[0].iterate(start_step), parts[1].iterate(start_step),
                            strict=False):
                yield {k: np.concatenate([a[k], b[k]]) for k in a}

    state = train_lib.train_and_evaluate(config, str(tmp_path / "sp"), model=TinyNet(),
                                         mesh=parallel.make_mesh(2), train_ds=Both())
    ref = sum(float(np.sum(np.asarray(x))) for x in jax.tree_util.tree_leaves(state.params))
    assert float(sums[0][1]) == pytest.approx(ref, rel=1e-5, abs=1e-5)
