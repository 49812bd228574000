"""Test configuration: CPU backend with 8 fake devices, set before jax is imported, and a
persistent XLA compilation cache private to this test run."""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# The persistent compilation cache the CLIs use (_cli.setup_process: every compiled function, no
# minimum compile time), in a fresh folder for this run that the pytest-xdist workers share: a
# program compiled once (the same tiny train step in several tests, the repeated runs of a
# resume test) is loaded, not compiled again. A cache hit is the same XLA executable, so no number
# changes. The folder is made by the first process (the xdist controller, whose environment the
# workers inherit) and removed by it at the end. SCORE_JAX_TEST_XLA_CACHE=off turns it off; a
# folder given there is used (and kept).
_CACHE_ENV = "SCORE_JAX_TEST_XLA_CACHE"
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="score_jax_test_xla_")
if os.environ[_CACHE_ENV].strip().lower() not in ("", "off", "none"):
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)


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
