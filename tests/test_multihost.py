"""4 processes x 1 CPU device (jax.distributed + gloo) training with ``parallel.fsdp = 4``: the
parameters, EMA and Adam moments are sharded across the processes. One run is preempted (SIGTERM
to process 0 only, mid-run), saves at the step all processes agree on, and a fresh 4-process
launch resumes from that checkpoint; its final state must be bit-identical to an uninterrupted
4-process run. Worker: ``tests/_multihost_worker.py``."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_multihost_worker.py")
NPROC = 4
TIMEOUT = 600


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, out, wait_at=None):
    """Start the 4 workers; each writes its output to ``<out>.<i>.log``."""
    port, env = _free_port(), dict(os.environ, PYTHONPATH=ROOT)
    extra = [] if wait_at is None else [str(wait_at)]
    procs = []
    for i in range(NPROC):
        log = open(f"{out}.{i}.log", "w")  # noqa: SIM115 - closed in _finish
        procs.append((subprocess.Popen([sys.executable, WORKER, str(port), str(i), str(NPROC),
                                        str(workdir), str(out)] + extra, stdout=log,
                                       stderr=subprocess.STDOUT, text=True, env=env), log))
    return procs


def _output(log):
    with open(log.name) as f:
        return f.read()


def _finish(procs):
    outs = []
    for i, (p, log) in enumerate(procs):
        p.wait(timeout=TIMEOUT)
        log.close()
        outs.append(_output(log))
        assert p.returncode == 0, f"process {i} (exit {p.returncode}):\n{outs[-1][-4000:]}"
    return outs


def _done_steps(outs):
    return [int(line.split()[1]) for out in outs for line in out.splitlines()
            if line.startswith("DONE")]


@pytest.mark.slow
def test_four_process_fsdp_preempted_resume_is_bit_identical(tmp_path):
    full = _finish(_launch(tmp_path / "full", tmp_path / "full.npz"))
    assert _done_steps(full) == [10] * NPROC

    procs = _launch(tmp_path / "run", tmp_path / "stopped.npz", wait_at=6)
    deadline = time.monotonic() + TIMEOUT
    while "READY 6" not in _output(procs[0][1]):  # process 0 holds after logged step 6
        assert procs[0][0].poll() is None and time.monotonic() < deadline, (
            f"process 0 ended or hung before step 6:\n{_output(procs[0][1])[-4000:]}")
        time.sleep(0.2)
    procs[0][0].send_signal(signal.SIGTERM)  # to process 0 only, like one host's notice
    stopped = _finish(procs)
    assert _done_steps(stopped) == [6] * NPROC  # every process returned at the agreed step
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["6"]  # the preemption save

    resumed = _finish(_launch(tmp_path / "run", tmp_path / "resumed.npz"))
    assert _done_steps(resumed) == [10] * NPROC
    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files)
    assert any(k.startswith("opt_state") for k in a.files) and "step" in a.files
    assert any(k.startswith("ema_params") for k in a.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the interrupted run really differs from the uninterrupted one (step 6 vs 10)
    s = np.load(tmp_path / "stopped.npz")
    assert int(s["step"]) == 6 and not np.array_equal(s["params/Conv_0/kernel"], a["params/Conv_0/kernel"])
