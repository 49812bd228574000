"""score_jax.xla_flags: how XLA_FLAGS is extended, and that this jaxlib accepts the flags and
computes the same numbers (to float32 round-off) with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from score_jax import xla_flags


def test_apply_appends_and_keeps_user_flags():
    env = {}
    assert xla_flags.apply_default_cpu_flags(env) == xla_flags.default_cpu_flags()
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    # idempotent
    assert xla_flags.apply_default_cpu_flags(env) == xla_flags.default_cpu_flags()
    # the user's own value of the same flag wins; other user flags are kept
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                        "--xla_cpu_experimental_ynn_fusion_type=reduce"}
    assert xla_flags.apply_default_cpu_flags(env) == env["XLA_FLAGS"]
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_flags.apply_default_cpu_flags(env).split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"]
    env = {"SCORE_JAX_NO_XLA_FLAGS": "1"}
    assert xla_flags.apply_default_cpu_flags(env) == ""
    assert "XLA_FLAGS" not in env


_PROG = """
import json
import jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.float32)
ws = [jnp.asarray(rng.standard_normal((3, 3, 16, 16)) / 12.0, jnp.float32) for _ in range(3)]
def f(x):
    for w in ws:
        x = jax.nn.silu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                        dimension_numbers=("NHWC", "HWIO", "NHWC")))
    # a dot with a constant operand: NaN under --xla_cpu_experimental_ynn_fusion_type=dot
    return (x.reshape(2, -1) @ jnp.ones((x[0].size, 4))).ravel(), x.mean()
y = jax.jit(f)(x)
print(json.dumps({"y": np.asarray(y[0]).tolist(), "m": float(y[1])}))
"""


def _run(flags: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _PROG], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]  # XLA aborts on a flag it does not know
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_flags_accepted_and_same_numbers():
    base = _run("")
    assert np.all(np.isfinite(base["y"]))
    tuned = _run(xla_flags.default_cpu_flags())
    np.testing.assert_allclose(tuned["y"], base["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tuned["m"], base["m"], rtol=1e-5, atol=1e-6)
