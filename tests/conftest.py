"""The test configuration (CPU backend with 8 fake devices set before jax is imported, the run's
private XLA compilation cache, the ``x64`` fixture) is the repository root's ``conftest.py``,
which pytest loads for every test under ``tests/``."""
