"""Worker for the 2-process test (run as a script): ``python WORKER PORT PROCESS_ID WORKDIR``.

Not a test module; it trains the tiny config for 4 steps on a jax.distributed CPU cluster of two
processes (one device each) and prints a parameter checksum.
"""
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"

if __name__ == "__main__":
    port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from score_jax import parallel

    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
    import jax
    import numpy as np
    from test_train_helpers import TinyNet, tiny_config

    from score_jax import train_lib

    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(),
                                                                   jax.device_count())
    state = train_lib.train_and_evaluate(tiny_config(), workdir, model=TinyNet())
    leaves = [np.asarray(parallel.to_host(x)) for x in jax.tree_util.tree_leaves(state.params)]
    print("CHECKSUM", int(state.step), repr(float(sum(float(np.sum(x)) for x in leaves))))
    jax.distributed.shutdown()
