"""Worker of the 4-process FSDP preemption test (run as a script, not a test module)::

    python WORKER PORT PROCESS_ID NUM_PROCESSES WORKDIR OUT_NPZ [WAIT_AT_STEP]

Trains `fsdp_config` (the tiny config, ``parallel.fsdp = NUM_PROCESSES``: every sharded leaf is
split across the processes, one CPU device each) on a jax.distributed + gloo cluster under
``preemption.sigterm()``, like train.py. With ``WAIT_AT_STEP`` process 0 prints ``READY <step>``
after that logged step and waits for SIGTERM (the test sends it to process 0 only: the others must
agree to save at the same step). Every process gathers the final state; process 0 writes its
leaves (params, EMA, optimiser state, step) to ``OUT_NPZ`` and prints ``DONE <step>``.
"""
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"


def fsdp_config(num_processes):
    from test_train_helpers import tiny_config

    config = tiny_config()
    config.training.batch_size = 8
    config.eval.batch_size = 8
    config.training.n_iters = 10
    config.training.log_freq = 2
    config.training.eval_freq = 4
    config.training.snapshot_freq = 10
    config.training.snapshot_freq_for_preemption = 4
    config.parallel.fsdp = num_processes
    config.parallel.fsdp_min_size = 16  # TinyNet's leaves are small: shard all but the biases
    return config


if __name__ == "__main__":
    port, pid, nproc, workdir, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    wait_at = int(sys.argv[6]) if len(sys.argv) > 6 else None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from score_jax import parallel

    parallel.initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
    import jax
    import numpy as np
    from test_train_helpers import TinyNet

    from score_jax import preemption, train_lib
    from score_jax.checkpoint import _path_name

    assert jax.process_count() == nproc and jax.device_count() == nproc
    with preemption.sigterm() as stop:
        def hold(step, _metrics):  # process 0 only (callbacks run there)
            if step == wait_at:
                print("READY", step, flush=True)
                if not stop.wait(300):
                    raise TimeoutError("no SIGTERM arrived")

        state = train_lib.train_and_evaluate(fsdp_config(nproc), workdir, model=TinyNet(),
                                             callbacks=[hold], should_stop=stop.is_set)
    sharded = [p for p in jax.tree_util.tree_leaves(state.params)
               if not p.sharding.is_fully_replicated]
    assert sharded, "no parameter is sharded across processes"
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    host = parallel.to_host([leaf for _, leaf in flat])  # collective: every process
    if pid == 0:
        np.savez(out, **{_path_name(p): np.asarray(x) for (p, _), x in zip(flat, host, strict=True)})
    print("DONE", int(state.step), flush=True)
    jax.distributed.shutdown()
