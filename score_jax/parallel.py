"""Device mesh, shardings, and host-local batch -> global array.

One code path serves one device, N devices on one host and N hosts (JAX docs "Distributed arrays
and automatic parallelization"; flax lm1b, big_vision): a 1-D ``Mesh`` over all devices with the
axis ``"data"``; batches are sharded ``P("data")`` and the train state is replicated ``P()``. Each
process holds ``global_batch / process_count`` examples and assembles the global array with
``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` for multi-host runs (call before any other JAX call).

    With no arguments JAX auto-detects the cluster (TPU pods, SLURM, Open MPI, ...); on CPU pass the
    coordinator ``host:port``, the number of processes and this process's id. On the CPU backend the
    gloo collectives are enabled so that cross-process all-reduces work.
    """
    import os

    platforms = os.environ.get("JAX_PLATFORMS", "") or ""
    if platforms.startswith("cpu") or (coordinator_address or "").startswith(("127.", "localhost")):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator_address is not None:
        kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)


DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "score_jax", "xla")


def compilation_cache_dir(value: str | None) -> str | None:
    """The persistent XLA compilation cache folder of the CLIs' ``--compilation_cache`` flag:
    None -> ``$SCORE_JAX_CACHE`` or ``~/.cache/score_jax/xla``; "" / "none" -> None (off); any
    other value is the folder (user-expanded). Does not touch jax.config: the entry points do."""
    if value is None:
        value = os.environ.get("SCORE_JAX_CACHE", DEFAULT_COMPILATION_CACHE)
    if value.strip().lower() in ("", "none", "off"):
        return None
    return os.path.abspath(os.path.expanduser(value))


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``num_devices`` devices (default: all of them).

    The axis type is ``Auto`` so that ``jit`` propagates shardings from the in/out shardings we
    give it (``jax.make_mesh`` defaults to ``Explicit`` axes in JAX >= 0.8).
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else int(num_devices)
    if n < 1 or n > len(devices):
        raise ValueError(f"num_devices={num_devices} is invalid; valid: 1..{len(devices)} "
                         f"(devices: {[d.platform for d in devices[:1]]} x {len(devices)})")
    if n == len(devices):
        return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    if jax.process_count() > 1:
        raise ValueError("a mesh over a subset of devices is only supported with one process")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,),
                axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``: ``P("data")``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Replicated on every device of the mesh: ``P()``."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "training.batch_size") -> int:
    """Validate a global batch size for ``mesh``; returns the per-process batch size.

    Raises:
      ValueError: naming the value when it is not positive, or not divisible by the number of
        devices (every device gets the same share) and processes.
    """
    n_dev = mesh.devices.size
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"{what}={batch_size!r} must be a positive integer")
    if batch_size % n_dev:
        valid = [m * n_dev for m in range(1, 5)]
        raise ValueError(f"{what}={batch_size} is not divisible by the number of devices {n_dev}; "
                         f"valid choices are multiples of {n_dev}, e.g. {valid}")
    return batch_size // jax.process_count()


def to_global(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble a pytree of host-local numpy batches (leading axis = this process's share) into
    global ``jax.Array`` s sharded ``P("data")`` over ``mesh``."""
    sharding = data_sharding(mesh)

    def one(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map(one, local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (identical on every process) replicated over ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def to_host(x: Any) -> Any:
    """Fetch a (possibly multi-process) global array to numpy on every process."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(one, x)
