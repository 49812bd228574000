"""Test configuration: CPU backend with 8 fake devices, set before jax is imported."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Enable float64 for closed-form comparisons, restoring the previous setting afterwards."""
    prev = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        # The thread-local override as well: code under test that uses the ``jax.enable_x64``
        # context manager (evaluation.metrics) must not leave a test running in float32.
        with jax.enable_x64(True):
            yield
    finally:
        jax.config.update("jax_enable_x64", prev)
